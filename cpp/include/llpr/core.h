// llpr core: load, validate and run an exported LLPR model (format version 2).
//
// This header is deliberately free of torch and LAMMPS includes: the LAMMPS plugin and the
// Python binding only see plain C++ types, and all libtorch code lives in cpp/src. The
// last-layer features of the latest evaluation stay inside the Model (on its device); the
// uncertainty helpers work on them without copying them back to the host.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace llpr {

// format version this code reads (ExportedLLPRModel.llpr_format_version)
constexpr int64_t kFormatVersion = 2;

// Any problem with a model file or an evaluation. Messages are meant for end users.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The model file does not exist.
class FileNotFound : public Error {
 public:
  using Error::Error;
};

// The model file's bytes are not those that were exported (see integrity.h).
class DamagedFile : public Error {
 public:
  using Error::Error;
};

// An evaluation gave NaN or infinite values. `atoms` are the model-side indices (Inputs order)
// of the atoms involved, `quantity` names what was non-finite ("energies", "forces", ...).
class NonFiniteOutput : public Error {
 public:
  NonFiniteOutput(const std::string &message, std::string quantity_, std::vector<int64_t> atoms_)
      : Error(message), quantity(std::move(quantity_)), atoms(std::move(atoms_)) {}
  std::string quantity;
  std::vector<int64_t> atoms;
};

// Metadata of a validated model file.
struct Metadata {
  std::string path;
  int64_t format_version = 0;
  std::vector<int64_t> species;  // atomic numbers
  double cutoff = 0.0;           // Angstrom
  double receptive_field = 0.0;  // Angstrom
  // a centre's energy and features depend only on its own edges (the file's `strictly_local`)
  bool strictly_local = true;
  std::string energy_unit;       // "eV"
  std::string length_unit;       // "Angstrom"
  std::string dtype;             // "float32" or "float64"
  std::string feature_reduction; // "sum"
  int64_t n_features = 0;
  std::string calibration;       // JSON text
  std::string package_version;   // llpr version that wrote the file ("" if absent)
  std::string model_info;        // JSON describing the wrapped model ("" if absent)
  double alpha = 0.0;
  double varsigma = 0.0;
  // members K of the last-layer ensemble (buffer head.ensemble_deviations, K x F; 0: none)
  int64_t ensemble_size = 0;
  // the training set's largest per-atom quadratic form (buffer head.max_train_q), the reference
  // of the extrapolation grade gamma_i = q_i / max_train_q; NaN in the file (then false here)
  // when the checkpoint was calibrated without the training set
  bool has_extrapolation_grade = false;
  double max_train_q = 0.0;
  // how the per-step uncertainties (quadratic form, sigma_i, LPR_i, gamma_i, a group's energy
  // variance) are evaluated: "native CPU kernels ..." or "LLPR head's TorchScript methods (why)"
  std::string uncertainty_evaluation;
  // how the file's integrity was verified on load (IntegrityReport::summary)
  std::string integrity;
  bool sealed = false;
  std::string seal;  // the whole-file checksum text of a sealed file (identifies the file), "" if unsealed

  // The model passes messages: a centre's energy depends on its neighbours' edges, so it needs
  // the graph over centres and ghost atoms out to the receptive field, not only its own edges.
  bool passes_messages() const { return !strictly_local || receptive_field > cutoff * (1.0 + 1e-12); }
};

// Host-side inputs of one evaluation (see ExportedLLPRModel.forward).
struct Inputs {
  int64_t n_atoms = 0;                      // centres first, then neighbours/ghosts
  int64_t n_centers = 0;
  int64_t n_edges = 0;
  const double *positions = nullptr;        // n_atoms x 3
  const int64_t *atomic_numbers = nullptr;  // n_atoms
  // 2 x n_edges: row 0 = the atom, row 1 = its neighbour; row 0 holds centres only for a
  // strictly local model, any atom (centre or not) for one that passes messages
  const int64_t *edge_index = nullptr;
  const double *edge_shifts = nullptr;      // n_edges x 3, or nullptr for zero shifts
};

struct Request {
  bool forces = true;  // forces on all n_atoms
  bool virial = false; // global (3x3) and per-atom (n_atoms x 3 x 3) virial
};

// Host-side outputs, float64, in the model's units (eV, Angstrom).
struct Outputs {
  double energy = 0.0;
  std::vector<double> energies;     // n_centers
  std::vector<double> forces;       // n_atoms x 3 (if requested)
  std::vector<double> virial;       // 3 x 3, row-major: sum_i r_i (x) F_i (if requested)
  std::vector<double> virial_atom;  // n_atoms x 3 x 3 (if requested)
};

// Host-side outputs of the last-layer ensemble (ExportedLLPRModel.ensemble_forward), float64:
// deviations of each member k from the model's own prediction (w_k - w propagated).
struct EnsembleOutputs {
  int64_t size = 0;                       // K
  std::vector<double> energy_deviations;  // K: dE_k = (w_k - w) . sum of the centres' features
  std::vector<double> force_deviations;   // K x n_atoms x 3: F_k - F, ghosts included (if forces)
  std::vector<double> virial_deviations;  // K x 3 x 3 (if virial)
  std::vector<double> force_sigma;        // n_atoms (if forces): LLPRHead.force_sigma of the deviations
};

class Model {
 public:
  // Load and validate `path` and move it to `device` ("cpu", "cuda", "cuda:N").
  // Throws FileNotFound or Error with a message naming each problem.
  explicit Model(const std::string &path, const std::string &device = "cpu");
  ~Model();
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;

  const Metadata &metadata() const;
  std::string device() const;
  bool is_cuda() const;

  // Run the model. The last-layer features of the centres are cached on the device. Throws
  // NonFiniteOutput when the energies, forces, virials or features hold NaN or inf (never a
  // silent NaN).
  void compute(const Inputs &inputs, const Request &request, Outputs &outputs);

  // Run the last-layer ensemble on the same kind of inputs (one extra model evaluation plus
  // min(K - 1, n_features) backward passes). Throws Error if the file has no ensemble. Does not
  // touch the cached features.
  void compute_ensemble(const Inputs &inputs, const Request &request, EnsembleOutputs &outputs);

  // --- a biased evaluation in two halves (fix llpr/bias) ---
  // forward(): energies and features as compute() gives them (the features are cached the same
  // way), keeping the model's autograd graph instead of differentiating it; no forces yet.
  void forward(const Inputs &inputs, const Request &request, Outputs &outputs);
  // backward(): the forces (and virials, when forward's request asked for them) of
  //   [sum_i E_i, with_energy] + sum_i center_weights[i] cotangent . f_i
  // over the centres of the latest forward(), into `outputs` (energies left as forward() set
  // them): one backward pass with the read-out of each weighted centre shifted by
  // center_weights[i] cotangent. center_weights: n_centers values; cotangent: n_features values,
  // model units. keep_graph: another backward() of the same forward() follows. Throws Error
  // without a preceding forward() and NonFiniteOutput for NaN or inf.
  void backward(const double *center_weights, const double *cotangent, bool with_energy, bool keep_graph,
                Outputs &outputs);
  // LLPRHead.bias_sigma of one summed feature vector (n_features): the energy sigma, its
  // capped value s (sigma itself for sigma_cap <= 0) and ds / d(feature sum) (n_features values
  // into `gradient`), model units. Throws NonFiniteOutput for a non-finite result.
  void bias_sigma(const double *feature_sum, double sigma_cap, double &sigma, double &value, double *gradient) const;

  // --- on the features cached by the latest compute() (centre order) ---
  // sigma_i = alpha sqrt(f_i^T C^-1 f_i) (eV) and LPR_i = 1 / (f_i^T C^-1 f_i); either may be null
  void cached_local_uncertainty(double *sigma, double *lpr) const;
  // gamma_i = f_i^T C^-1 f_i / max_train_q by LLPRHead.extrapolation_grade; Error (with
  // no_extrapolation_grade_message) if the file has no max_train_q
  void cached_extrapolation_grade(double *gamma) const;
  // the cached features, n_centers x n_features, float64 (copied to the host)
  void cached_features(double *out) const;
  // sum (float64) of the cached features of every centre
  void cached_feature_sum_all(double *out) const;
  // sum (float64) of the cached features of the centre rows `rows[0 .. n_rows - 1]` (zero for
  // n_rows == 0; rows may then be null)
  void cached_feature_sum_rows(const int64_t *rows, int64_t n_rows, double *out) const;

  // --- on host features (float64, row-major n x n_features) ---
  void quadratic_form(const double *features, int64_t n, double *out) const;
  void local_uncertainty(const double *features, int64_t n, double *sigma, double *lpr) const;
  void extrapolation_grade(const double *features, int64_t n, double *gamma) const;
  // alpha^2 s^T C^-1 s for one summed feature vector s (n_features)
  double energy_variance(const double *feature_sum) const;
  // the K members' energy deviations dE_k = dw_k . s (eV) of one summed feature vector s
  // (n_features) by LLPRHead.ensemble_energy_deviations; writes K = metadata().ensemble_size
  // values to `out` (nothing when the file has no ensemble). Throws NonFiniteOutput for a
  // non-finite result.
  void ensemble_energy_deviations(const double *feature_sum, double *out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// "cpu", "cuda" or "cuda:N" (N a non-negative integer): the device names the core accepts
bool is_device_name(const std::string &device);

// Error (the message every loader gives) unless `device` is "cpu", or "cuda" / "cuda:N" with
// that GPU usable by this libtorch.
void check_device(const std::string &device);

// The message for a file without a last-layer ensemble where one is needed for `need`
// (force uncertainties, member energy deviations, ...).
std::string no_ensemble_message(const std::string &path, const std::string &need = "force uncertainties");

// The message for a file without the extrapolation grade's reference (head.max_train_q) where
// `who` needs it.
std::string no_extrapolation_grade_message(const std::string &path);

// Load `path` on the CPU exactly as the LAMMPS plugin does and return its metadata (the file's
// integrity is verified first, as on every load).
Metadata check_file(const std::string &path);

// The native CPU kernel of the per-atom quadratic form (what Model uses for features on the
// CPU, see Metadata::quadratic_form): q_i = |f_i U|^2 for the n rows of `features` (n x F,
// row-major) and U = (L^-1)^T (F x F, row-major, upper triangular: LLPRHead's
// inverse_factor_t). Error if this CPU has no native kernel or U is not upper triangular.
void native_quadratic_form(const double *inverse_factor_t, int64_t n_features, const double *features, int64_t n,
                           double *q);
// "" if this CPU runs llpr's native kernels, else why not
std::string native_kernels_unsupported_reason();

// Number of intra-op threads libtorch uses in this process.
void set_num_threads(int n);
int get_num_threads();

bool cuda_available();
int cuda_device_count();
// Why cuda_available() is false, for error messages: a CPU-only torch, a CUDA torch whose CUDA
// library is not loaded, or no GPU / driver visible
std::string cuda_unavailable_reason();

// torch version this library was compiled against, and the one found at run time
std::string torch_version_compiled();
std::string torch_version_runtime();

}  // namespace llpr
