// pair_style llpr: an exported llpr model (TorchScript) evaluated through libllpr_core.
//
//   pair_style llpr model.pt [device auto|cpu|cuda] [mass_check yes|no]
//   pair_coeff * * Si C            (one element symbol per atom type, NULL under hybrid)
#pragma once

#include "pair.h"

#include "llpr/core.h"
#include "model_inputs.h"

#include <memory>
#include <string>
#include <vector>

namespace LAMMPS_NS {

class FixLLPRBias;

class PairLLPR : public Pair {
 public:
  PairLLPR(class LAMMPS *);
  ~PairLLPR() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void *extract(const char *, int &) override;
  void *extract_peratom(const char *, int &) override;
  double memory_usage() override;

  // --- used by compute llpr/atom and compute llpr ---
  // error (naming `who`) unless the features of the current timestep are cached
  void require_current_features(const char *who);
  // per-atom sigma_i (energy units) and LPR_i of the cached step, indexed by local atom
  // (0 for atoms that are not centres); computed once per step, on the model's device
  void update_uncertainty();
  const double *sigma_atom() const { return sigma_atom_; }
  const double *lpr_atom() const { return lpr_atom_; }
  // per-atom extrapolation grade gamma_i = q_i / max_train_q of the cached step (0 for atoms
  // that are not centres), computed once per step when asked; a LAMMPS error naming `who` if
  // the model file has no max_train_q
  void update_extrapolation_grade(const char *who);
  const double *gamma_atom() const { return gamma_atom_; }
  // error naming `who` unless the model file carries the extrapolation grade's reference
  void require_extrapolation_grade(const char *who);
  // summed float64 features (n_features values) of the cached centres whose local index has
  // `groupbit` set in atom->mask
  void group_feature_sum(int groupbit, std::vector<double> &sum);
  // sigma (energy units) of a total energy whose summed features (all ranks) are `sum`
  double energy_sigma(const std::vector<double> &sum);
  int n_features() const;
  double energy_conversion() const { return energy_conversion_; }
  // members K of the model file's last-layer ensemble (0: none) and the file's path
  int ensemble_size() const;
  // counts force evaluations: equal values mean the same cached inputs and features (even
  // when the timestep number repeats, e.g. `run 0` after `displace_atoms`)
  bigint evaluations() const { return evaluations_; }
  const std::string &model_path() const { return model_path_; }
  // the model file's whole-file checksum text ("" for an unsealed file): names the file in records
  std::string model_seal() const;
  // Member force deviations dF_k = F_k - F (LAMMPS force units) of the current step, on local
  // and ghost atoms before reverse communication: out[(k * nall + i) * 3 + c] for LAMMPS index
  // i < nall = nlocal + nghost (0 for atoms the model did not see). Re-runs the model on the
  // inputs cached by the force evaluation of this step (ensemble_forward); errors (naming
  // `who`) if there is no such step or the file has no ensemble.
  void ensemble_force_deviations(const char *who, std::vector<double> &out);
  // Member virial deviations dW_k = W_k - W (LAMMPS energy units), out[k * 9 + 3 a + b] in the
  // model's row-major order, of this rank's centres (their sum over ranks is the total), from
  // the same kind of re-run as ensemble_force_deviations (virial only)
  void ensemble_virial_deviations(const char *who, std::vector<double> &out);
  // Member energy deviations dE_k = dw_k . s (LAMMPS energy units, K values) of an energy whose
  // summed features (over all ranks) are `sum`, by the core (LLPRHead.ensemble_energy_deviations);
  // a LAMMPS error naming `who` if the result is not finite (call it on every rank)
  void ensemble_energy_deviations(const char *who, const std::vector<double> &sum, std::vector<double> &out);
  // LAMMPS error unless `value` is a finite, non-negative variance or sigma (call it on every
  // rank with the same value, e.g. one computed from all-reduced sums)
  void check_sigma(double value, const char *what) const;

  // --- used by fix llpr/bias (pair_llpr_bias.cpp) ---
  // the fix whose uncertainty bias the force evaluations add (nullptr: none); while one is set,
  // compute() runs the model's forward pass, lets the fix sum the group's features over all
  // ranks, and finishes with biased_backward()
  void set_bias(FixLLPRBias *fix) { bias_ = fix; }
  FixLLPRBias *bias() const { return bias_; }
  // number of this rank's centres (of the latest evaluation) in the group `groupbit`
  int group_centres(int groupbit) const;
  // LLPRHead.bias_sigma of the all-reduced sum (model units: eV): energy sigma, its capped value
  // and gradient (n_features values); a LAMMPS error naming `who` if not finite (call it on
  // every rank with the same sum)
  void bias_sigma(const char *who, const std::vector<double> &sum, double sigma_cap, double &sigma, double &value,
                  std::vector<double> &gradient);
  // The backward pass of this step's forward pass, on every rank: forces and virials of
  // E + sum over the group's centres of cotangent . f_i (model units), into the pair's outputs.
  // With `unscaled`, a second pass gives the forces of unscaled . (group's features) alone, and
  // both per-atom results are returned, before reverse communication, in LAMMPS force units:
  // `total` and `partial` (3 (nlocal + nghost) values each)
  void biased_backward(int groupbit, const std::vector<double> &cotangent, const std::vector<double> *unscaled,
                       std::vector<double> &total, std::vector<double> &partial);

 protected:
  // the same LAMMPS error on every rank when any rank failed (the lowest failing rank's message)
  void check_all_ranks(bool ok, const std::string &message);
  void allocate();
  bool all_ranks_hold_evaluated_atoms(ModelInputs::Extent extent);
  void load_model();
  std::string resolve_device();
  void grow_peratom(int n);
  std::string non_finite_message(const llpr::NonFiniteOutput &e) const;
  void check_special_neighbors();
  // a model that passes messages needs ghost atoms out to its receptive field (plus the skin):
  // raise the communication cutoff for it (or refuse a setup that cannot give that shell); a
  // strictly local model gives back what an earlier one raised
  void request_ghost_shell();
  void release_ghost_shell();
  double ghost_shell() const;
  // the types' masses against their elements' (init_style): an error when every mapped type
  // has the mass of another element of the model (a swapped pair_coeff order), else a warning
  // per type whose mass fits no element it could be
  void check_masses();
  // the checks of the ensemble re-runs, then compute_ensemble on the cached inputs
  void run_ensemble(const char *who, bool forces, bool virial);

  std::string model_path_;
  std::string device_request_ = "auto";
  bool mass_check_ = true;  // compare each type's mass with its element's (keyword mass_check)
  std::unique_ptr<llpr::Model> model_;
  double cutoff_ = 0.0;
  double energy_conversion_ = 1.0;  // eV -> LAMMPS energy unit
  std::vector<int64_t> type_z_;     // atomic number of each LAMMPS type (0 = NULL)
  // the model passes messages (llpr::Metadata::passes_messages): graph over local + ghost atoms
  bool message_passing_ = false;
  double cutghost_raised_ = -1.0;   // comm->cutghostuser as set for it (< 0: not raised)
  double cutghost_before_ = 0.0;    // the value it replaced

  ModelInputs inputs_;  // of the latest force evaluation (reused from step to step)
  llpr::Outputs out_;
  llpr::EnsembleOutputs ensemble_out_;

  // features cache bookkeeping
  bigint features_step_ = -1;       // timestep of the cached features (-1: none)
  bigint evaluations_ = 0;          // number of force evaluations so far (identifies the cache)
  bigint uncertainty_step_ = -1;    // timestep of sigma_atom_/lpr_atom_
  int nmax_peratom_ = 0;
  double *sigma_atom_ = nullptr;
  double *lpr_atom_ = nullptr;
  double *gamma_atom_ = nullptr;
  bigint gamma_step_ = -1;          // timestep of gamma_atom_
  std::vector<double> sigma_tmp_, lpr_tmp_;
  std::vector<int64_t> rows_tmp_;

  FixLLPRBias *bias_ = nullptr;       // fix llpr/bias, if one is active
  llpr::Outputs bias_out_;            // its second (unscaled) backward pass
  std::vector<double> bias_weights_;  // 1 for the centres in its group, else 0

  // fix pair triggers: set to 1 by `fix pair ... sigma 1` before the force evaluation
  int sigma_flag_ = 0;
  int lpr_flag_ = 0;
  int gamma_flag_ = 0;
};

}  // namespace LAMMPS_NS
