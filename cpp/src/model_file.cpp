// The file contract: open an exported model file, verify its integrity, validate every item of
// format version 2 (docs/model-format.md) and say what is wrong in words a user can act on.

#include "llpr/integrity.h"
#include "model_impl.h"

#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

namespace llpr {

namespace {

constexpr int64_t kMaxAtomicNumber = 118;

// names of forward()'s arguments, in order, after `self`
const char *const kForwardArgs[] = {"positions", "atomic_numbers", "edge_index", "edge_shifts",
                                    "n_centers", "compute_forces", "compute_virial"};

// Items of format version 2 that `llpr export` did not always write: a file that lacks only
// some of these is a format-2 file from an older llpr, and re-exporting it is the whole fix.
const char *const kLaterItems[] = {"strictly_local",      "model_info",       "head.max_train_q",
                                   "head.extrapolation_grade", "head.sigma_scale", "head.sigma_power",
                                   "head.power_law",      "head.bias_sigma",  "forward_graph",
                                   "backward_graph"};

std::string squote(const std::string &s) { return "'" + s + "'"; }

std::string join(const std::vector<std::string> &items, const std::string &sep)
{
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

bool is_later_item(const std::string &name)
{
  for (const char *item : kLaterItems)
    if (name == item) return true;
  return false;
}

// Whether `method` takes (self, positions, atomic_numbers, edge_index, edge_shifts, n_centers,
// compute_forces, compute_virial), by argument name.
bool takes_forward_arguments(const torch::jit::Method &method)
{
  const auto &args = method.function().getSchema().arguments();
  bool ok = args.size() == 8;
  for (size_t k = 0; ok && k < 7; ++k)
    if (args[k + 1].name() != kForwardArgs[k]) ok = false;
  return ok;
}

// The file starts like a zip archive (a local file header). Anything else is not an archive
// at all and gets torch::jit::load's own message.
bool is_zip(const std::string &path)
{
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {0, 0, 0, 0};
  in.read(magic, 4);
  return in.gcount() == 4 && std::memcmp(magic, "PK\x03\x04", 4) == 0;
}

// A torch.save archive (a zip with data.pkl) that is not TorchScript (no constants.pkl): the
// file names stand in plain text in the zip directory.
bool is_torch_checkpoint(const std::string &path)
{
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return bytes.rfind("PK", 0) == 0 && bytes.find("data.pkl") != std::string::npos &&
         bytes.find("constants.pkl") == std::string::npos;
}

}  // namespace

std::string first_line(const std::string &text)
{
  auto pos = text.find('\n');
  std::string line = pos == std::string::npos ? text : text.substr(0, pos);
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  return line;
}

std::string fmt_double(double x)
{
  std::ostringstream os;
  os.precision(17);
  os << x;
  return os.str();
}

Metadata validate(torch::jit::Module &module, const std::string &path)
{
  Metadata meta;
  meta.path = path;
  std::vector<std::string> missing;
  std::vector<std::string> wrong;

  auto get = [&](const char *name) -> c10::optional<c10::IValue> {
    if (!module.hasattr(name)) {
      missing.emplace_back(name);
      return c10::nullopt;
    }
    return module.attr(name);
  };
  auto get_int = [&](const char *name, int64_t &out) {
    auto v = get(name);
    if (!v) return false;
    if (!v->isInt()) {
      wrong.push_back(std::string(name) + " is a " + v->tagKind() + ", expected int");
      return false;
    }
    out = v->toInt();
    return true;
  };
  auto get_double = [&](const char *name, double &out) {
    auto v = get(name);
    if (!v) return false;
    if (!v->isDouble() && !v->isInt()) {
      wrong.push_back(std::string(name) + " is a " + v->tagKind() + ", expected float");
      return false;
    }
    out = v->isDouble() ? v->toDouble() : static_cast<double>(v->toInt());
    return true;
  };
  auto get_string = [&](const char *name, std::string &out) {
    auto v = get(name);
    if (!v) return false;
    if (!v->isString()) {
      wrong.push_back(std::string(name) + " is a " + v->tagKind() + ", expected str");
      return false;
    }
    out = v->toStringRef();
    return true;
  };
  auto expect_string = [&](const char *name, std::string &out,
                           const std::vector<std::string> &allowed) {
    if (!get_string(name, out)) return;
    for (const auto &a : allowed)
      if (out == a) return;
    std::vector<std::string> q;
    for (const auto &a : allowed) q.push_back(squote(a));
    wrong.push_back(std::string(name) + " is " + squote(out) + ", expected " + join(q, " or "));
  };

  // a file of another version is not read further: its layout is not this version's
  if (get_int("llpr_format_version", meta.format_version) && meta.format_version != kFormatVersion)
    throw Error("'" + path + "' is an llpr model file of format version " + std::to_string(meta.format_version) +
                ", but this llpr reads version " + std::to_string(kFormatVersion) +
                "; re-export it with `llpr export llpr.ckpt -o model.pt` (from the checkpoint of "
                "`llpr calibrate`) with this llpr");

  if (auto v = get("species")) {
    if (!v->isIntList()) {
      wrong.push_back(std::string("species is a ") + v->tagKind() + ", expected List[int]");
    } else {
      meta.species = v->toIntVector();
      bool ok = !meta.species.empty();
      for (size_t i = 0; i < meta.species.size(); ++i) {
        if (meta.species[i] < 1 || meta.species[i] > kMaxAtomicNumber) ok = false;
        for (size_t k = 0; k < i; ++k)
          if (meta.species[k] == meta.species[i]) ok = false;
      }
      if (!ok) {
        std::vector<std::string> s;
        for (auto z : meta.species) s.push_back(std::to_string(z));
        wrong.push_back("species is [" + join(s, ", ") +
                        "], expected distinct atomic numbers in 1..118 (at least one)");
      }
    }
  }
  if (get_double("cutoff", meta.cutoff) && !(meta.cutoff > 0.0 && std::isfinite(meta.cutoff)))
    wrong.push_back("cutoff is " + fmt_double(meta.cutoff) + ", expected a positive number");
  if (get_double("receptive_field", meta.receptive_field) &&
      !(meta.receptive_field > 0.0 && std::isfinite(meta.receptive_field)))
    wrong.push_back("receptive_field is " + fmt_double(meta.receptive_field) +
                    ", expected a positive number");
  if (auto v = get("strictly_local")) {
    if (!v->isBool())
      wrong.push_back(std::string("strictly_local is a ") + v->tagKind() + ", expected bool");
    else if (v->toBool() && meta.receptive_field > meta.cutoff * (1.0 + 1e-12))
      wrong.push_back("strictly_local is True but receptive_field (" + fmt_double(meta.receptive_field) +
                      ") exceeds cutoff (" + fmt_double(meta.cutoff) + ")");
    else
      meta.strictly_local = v->toBool();
  }
  expect_string("energy_unit", meta.energy_unit, {"eV"});
  expect_string("length_unit", meta.length_unit, {"Angstrom"});
  expect_string("dtype", meta.dtype, {"float32", "float64"});
  expect_string("feature_reduction", meta.feature_reduction, {"sum"});
  if (get_int("n_features", meta.n_features) && meta.n_features < 1)
    wrong.push_back("n_features is " + std::to_string(meta.n_features) + ", expected >= 1");
  get_string("calibration", meta.calibration);
  get_string("llpr_package_version", meta.package_version);
  // what the wrapped model is (e.g. MACE with its layers): shown by llpr check
  get_string("model_info", meta.model_info);

  // the LLPR head (submodule `head`, llpr.uncertainty.llpr_head.LLPRHead): float64 buffers
  c10::optional<torch::jit::Module> head;
  if (!module.hasattr("head")) {
    missing.emplace_back("head");
  } else if (!module.attr("head").isModule()) {
    wrong.push_back(std::string("head is a ") + module.attr("head").tagKind() + ", expected the LLPR head module");
  } else {
    head = module.attr("head").toModule();
  }
  const int64_t F = meta.n_features > 0 ? meta.n_features : -1;
  auto get_buffer = [&](const char *name, std::vector<int64_t> shape) -> c10::optional<torch::Tensor> {
    const std::string full = std::string("head.") + name;
    if (!head) return c10::nullopt;
    if (!head->hasattr(name)) {
      missing.push_back(full);
      return c10::nullopt;
    }
    auto v = head->attr(name);
    if (!v.isTensor()) {
      wrong.push_back(full + " is a " + v.tagKind() + ", expected a tensor");
      return c10::nullopt;
    }
    auto t = v.toTensor();
    bool shape_ok = static_cast<size_t>(t.dim()) == shape.size();
    for (size_t k = 0; shape_ok && k < shape.size(); ++k)
      if (shape[k] >= 0 && t.size(k) != shape[k]) shape_ok = false;
    if (t.scalar_type() != torch::kFloat64 || !shape_ok) {
      std::ostringstream os;
      os << full << " has dtype " << c10::toString(t.scalar_type()) << " and shape " << t.sizes()
         << ", expected float64 ";
      if (shape.empty()) os << "scalar";
      else if (shape[0] < 0) os << "(K, " << meta.n_features << ")";
      else os << "(" << meta.n_features << ", " << meta.n_features << ") (n_features)";
      wrong.push_back(os.str());
      return c10::nullopt;
    }
    if (t.numel() > 0 && !torch::isfinite(t).all().item<bool>()) {
      wrong.push_back(full + " is not finite");
      return c10::nullopt;
    }
    return t.detach().to(torch::kCPU);
  };
  if (auto L = get_buffer("cholesky", {F, F})) {
    bool lower = torch::equal(*L, torch::tril(*L));
    bool diag = L->numel() == 0 || (L->diagonal() > 0).all().item<bool>();
    if (!lower || !diag)
      wrong.push_back("head.cholesky is not a lower-triangular factor with a positive diagonal");
    // the quadratic form uses the stored inverse: it must be that factor's
    if (auto U = get_buffer("inverse_factor_t", {F, F})) {
      auto I = torch::eye(L->size(0), torch::TensorOptions().dtype(torch::kFloat64));
      if (lower && diag && !torch::allclose(torch::matmul(*L, U->t()), I, 1e-8, 1e-8))
        wrong.push_back("head.inverse_factor_t is not the inverse of head.cholesky (transposed)");
    }
  }
  if (auto a = get_buffer("alpha", {})) {
    meta.alpha = a->item<double>();
    if (!(meta.alpha > 0.0)) wrong.push_back("head.alpha is " + fmt_double(meta.alpha) + ", expected a positive number");
  }
  if (auto v = get_buffer("varsigma", {})) meta.varsigma = v->item<double>();
  if (auto dw = get_buffer("ensemble_deviations", {-1, F})) meta.ensemble_size = dw->size(0);
  // the sigma law (sigma = sigma_scale q^(sigma_power / 2) when power_law, else alpha sqrt(q))
  get_buffer("sigma_scale", {});
  get_buffer("sigma_power", {});
  if (head) {
    if (!head->hasattr("power_law")) missing.emplace_back("head.power_law");
    else if (!head->attr("power_law").isBool())
      wrong.push_back(std::string("head.power_law is a ") + head->attr("power_law").tagKind() + ", expected bool");
  }
  // the extrapolation grade's reference: a positive number, or NaN when the checkpoint was
  // calibrated without the training set (then the file gives everything but gamma)
  if (head) {
    if (!head->hasattr("max_train_q")) {
      missing.emplace_back("head.max_train_q");
    } else {
      auto v = head->attr("max_train_q");
      if (!v.isTensor() || v.toTensor().scalar_type() != torch::kFloat64 || v.toTensor().dim() != 0) {
        wrong.push_back("head.max_train_q is not a float64 scalar tensor");
      } else {
        const double q = v.toTensor().item<double>();
        if (!std::isnan(q)) {
          if (!(q > 0.0) || !std::isfinite(q)) {
            wrong.push_back("head.max_train_q is " + fmt_double(q) +
                            ", expected a positive number (or NaN: not recorded)");
          } else {
            meta.has_extrapolation_grade = true;
            meta.max_train_q = q;
          }
        }
      }
    }
    for (const char *name : {"quadratic_form", "local_uncertainty", "energy_variance", "ensemble_size",
                             "extrapolation_grade", "bias_sigma"})
      if (!head->find_method(name)) missing.push_back(std::string("head.") + name);
  }

  // forward, evaluate (forward without per-atom sigma/lpr, what the pair style runs) and
  // ensemble_forward, all (positions, atomic_numbers, edge_index, edge_shifts, n_centers,
  // compute_forces, compute_virial); forward_graph and backward_graph: a biased evaluation
  for (const char *name : {"forward", "evaluate", "ensemble_forward"}) {
    auto method = module.find_method(name);
    if (!method) {
      missing.emplace_back(name);
    } else if (!takes_forward_arguments(*method)) {
      const auto &args = method->function().getSchema().arguments();
      std::vector<std::string> names;
      for (size_t k = 1; k < args.size(); ++k) names.push_back(args[k].name());
      wrong.push_back(std::string(name) + " takes (" + join(names, ", ") +
                      "), expected (positions, atomic_numbers, edge_index, edge_shifts, "
                      "n_centers, compute_forces, compute_virial)");
    }
  }
  for (const char *name : {"forward_graph", "backward_graph"})
    if (!module.find_method(name)) missing.emplace_back(name);

  // parameters must have the declared dtype
  if (meta.dtype == "float32" || meta.dtype == "float64") {
    auto want = meta.dtype == "float64" ? torch::kFloat64 : torch::kFloat32;
    for (const auto &p : module.named_parameters(true)) {
      if (p.value.is_floating_point() && p.value.scalar_type() != want) {
        wrong.push_back("dtype is '" + meta.dtype + "' but parameter " + p.name + " is " +
                        std::string(c10::toString(p.value.scalar_type())));
        break;
      }
    }
  }

  bool only_later_items = !missing.empty() && wrong.empty();
  for (const auto &name : missing) only_later_items = only_later_items && is_later_item(name);
  if (only_later_items)
    throw Error("'" + path + "' is an llpr model file of format version " + std::to_string(kFormatVersion) +
                " written by an older llpr: it lacks " + join(missing, ", ") +
                ", which this llpr requires; re-export it with `llpr export llpr.ckpt -o model.pt` (from the "
                "checkpoint of `llpr calibrate`) with this llpr");
  if (!missing.empty()) {
    std::string msg = "'" + path + "' is a TorchScript file but not a valid llpr model: missing " +
                      join(missing, ", ");
    if (!wrong.empty()) msg += "; " + join(wrong, "; ");
    msg += ". Export the model with `llpr export` (which adds the LLPR covariance factor and "
           "metadata).";
    throw Error(msg);
  }
  if (!wrong.empty())
    throw Error("'" + path + "' is not a valid llpr model (format version " +
                std::to_string(kFormatVersion) + "): " + join(wrong, "; "));
  return meta;
}

Model::Model(const std::string &path, const std::string &device) : impl_(new Impl)
{
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    throw FileNotFound("model file '" + path + "' does not exist; check the path");
  if (S_ISDIR(st.st_mode)) throw Error("model file '" + path + "' is a directory, not a file");
  torch::Device dev = parse_device(device);
  // libtorch does not check the archive's CRCs: a damaged copy would load and run
  IntegrityReport integrity;
  const bool zip = is_zip(path);
  if (zip) integrity = verify_file(path);
  try {
    impl_->module = torch::jit::load(path, torch::Device(torch::kCPU));
  } catch (const std::exception &e) {
    if (is_torch_checkpoint(path))
      throw Error("'" + path + "' is not a readable TorchScript file: it is a PyTorch checkpoint "
                  "(torch.save, as written by `llpr train` and `llpr calibrate`), not an exported "
                  "model; run `llpr export llpr.ckpt -o model.pt` and give model.pt to pair_style llpr");
    throw Error("'" + path + "' is not a readable TorchScript file (" + first_line(e.what()) +
                "); export a model with `llpr export` or llpr.export_model()");
  }
  impl_->meta = validate(impl_->module, path);
  // The profiling graph executor re-specialises a graph to the tensor sizes it sees, and the
  // sizes of a message-passing graph (local + ghost atoms, their edges) change every step, so
  // it would re-optimise on every step (docs/performance.md). The switch is process-wide.
  if (impl_->meta.passes_messages()) torch::jit::setGraphExecutorOptimize(false);
  impl_->meta.integrity = integrity.summary;
  impl_->meta.sealed = integrity.sealed;
  impl_->meta.seal = integrity.seal;
  impl_->module.eval();
  if (dev.type() != torch::kCPU) impl_->module.to(dev);
  impl_->device = dev;
  impl_->dtype = impl_->meta.dtype == "float64" ? torch::kFloat64 : torch::kFloat32;
  impl_->head = impl_->module.attr("head").toModule();
  impl_->clear_features();
  impl_->choose_uncertainty();
  impl_->meta.uncertainty_evaluation = impl_->uncertainty_path;
}

Model::~Model() = default;

const Metadata &Model::metadata() const { return impl_->meta; }

Metadata check_file(const std::string &path)
{
  Model model(path, "cpu");
  return model.metadata();
}

std::string no_extrapolation_grade_message(const std::string &path)
{
  return path + " has no training-set reference for the extrapolation grade gamma (head.max_train_q is NaN: "
                "the checkpoint was calibrated without the training set); calibrate again with `llpr calibrate` "
                "(it records max q over the training atoms) and re-export with `llpr export`";
}

std::string no_ensemble_message(const std::string &path, const std::string &need)
{
  return path + " has no last-layer ensemble, which " + need + " need; export it with "
                "`llpr export llpr.ckpt --ensemble 32 -o model.pt` (or export_model(..., ensemble=32))";
}

}  // namespace llpr
