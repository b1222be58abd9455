// llpr core: the only translation unit that includes libtorch.

#include "llpr/core.h"
#include "llpr/integrity.h"
#include "native_head.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/cuda.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>
#include <torch/version.h>

#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <vector>

namespace llpr {

namespace {

const char *const kElements[] = {
    "X",  "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si",
    "P",  "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu",
    "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru",
    "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr",
    "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",
    "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac",
    "Th", "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf",
    "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};
constexpr int kNumElements = sizeof(kElements) / sizeof(kElements[0]);  // 119 (0 = "X")

// names of forward()'s arguments, in order, after `self`
const char *const kForwardArgs[] = {"positions", "atomic_numbers", "edge_index", "edge_shifts",
                                    "n_centers", "compute_forces", "compute_virial"};

std::string first_line(const std::string &text)
{
  auto pos = text.find('\n');
  std::string line = pos == std::string::npos ? text : text.substr(0, pos);
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  return line;
}

std::string squote(const std::string &s) { return "'" + s + "'"; }

std::string join(const std::vector<std::string> &items, const std::string &sep)
{
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::string fmt_double(double x)
{
  std::ostringstream os;
  os.precision(17);
  os << x;
  return os.str();
}

torch::Device parse_device(const std::string &device)
{
  std::string d = device.empty() ? "cpu" : device;
  if (d == "cpu") return torch::Device(torch::kCPU);
  if (!is_device_name(d)) throw Error("unknown device '" + device + "': use 'cpu', 'cuda' or 'cuda:N'");
  if (!torch::cuda::is_available())
    throw Error("device '" + device + "' requested, but no CUDA GPU is usable by this libtorch: " +
                cuda_unavailable_reason() + "; or use device cpu");
  try {
    torch::Device dev(d);
    if (dev.has_index() && dev.index() >= static_cast<int>(torch::cuda::device_count()))
      throw Error("device '" + device + "' requested, but only " +
                  std::to_string(torch::cuda::device_count()) + " CUDA device(s) are visible");
    return dev;
  } catch (const c10::Error &e) {
    throw Error("invalid device '" + device + "': " + first_line(e.what()));
  }
}

// Read and check every item of the contract; collect all problems into one message.
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
        if (meta.species[i] < 1 || meta.species[i] >= kNumElements) ok = false;
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
  // strictly_local came after the first files of this format: without it, the receptive field decides
  meta.strictly_local = !(meta.receptive_field > meta.cutoff * (1.0 + 1e-12));
  if (module.hasattr("strictly_local")) {
    auto v = module.attr("strictly_local");
    if (!v.isBool()) wrong.push_back(std::string("strictly_local is a ") + v.tagKind() + ", expected bool");
    else if (v.toBool() && !meta.strictly_local)
      wrong.push_back("strictly_local is True but receptive_field (" + fmt_double(meta.receptive_field) +
                      ") exceeds cutoff (" + fmt_double(meta.cutoff) + ")");
    else meta.strictly_local = v.toBool();
  }
  expect_string("energy_unit", meta.energy_unit, {"eV"});
  expect_string("length_unit", meta.length_unit, {"Angstrom"});
  expect_string("dtype", meta.dtype, {"float32", "float64"});
  expect_string("feature_reduction", meta.feature_reduction, {"sum"});
  if (get_int("n_features", meta.n_features) && meta.n_features < 1)
    wrong.push_back("n_features is " + std::to_string(meta.n_features) + ", expected >= 1");
  get_string("calibration", meta.calibration);
  if (module.hasattr("llpr_package_version") && module.attr("llpr_package_version").isString())
    meta.package_version = module.attr("llpr_package_version").toStringRef();
  // optional (what the wrapped model is, e.g. MACE with its layers): shown by llpr check
  if (module.hasattr("model_info") && module.attr("model_info").isString())
    meta.model_info = module.attr("model_info").toStringRef();

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
  // optional within format 2: NaN = not recorded; otherwise a positive number and the method
  if (head && head->hasattr("max_train_q")) {
    auto v = head->attr("max_train_q");
    if (!v.isTensor() || v.toTensor().scalar_type() != torch::kFloat64 || v.toTensor().dim() != 0) {
      wrong.push_back("head.max_train_q is not a float64 scalar tensor");
    } else {
      const double q = v.toTensor().item<double>();
      if (!std::isnan(q)) {
        if (!(q > 0.0) || !std::isfinite(q))
          wrong.push_back("head.max_train_q is " + fmt_double(q) + ", expected a positive number (or NaN: not recorded)");
        else if (!head->find_method("extrapolation_grade"))
          missing.emplace_back("head.extrapolation_grade");
        else {
          meta.has_extrapolation_grade = true;
          meta.max_train_q = q;
        }
      }
    }
  }
  if (head)
    for (const char *name : {"quadratic_form", "local_uncertainty", "energy_variance", "ensemble_size"})
      if (!head->find_method(name)) missing.push_back(std::string("head.") + name);
  // optional: what fix llpr/bias runs (files written before it existed lack these)
  meta.bias = head && head->find_method("bias_sigma") && module.find_method("forward_graph") &&
              module.find_method("backward_graph");

  // forward, evaluate (forward without per-atom sigma/lpr, what the pair style runs) and
  // ensemble_forward, all (positions, atomic_numbers, edge_index, edge_shifts, n_centers,
  // compute_forces, compute_virial)
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

}  // namespace

// ------------------------------------------------------------------------------------------

struct Model::Impl {
  torch::jit::Module module;
  Metadata meta;
  torch::Device device{torch::kCPU};
  torch::Dtype dtype = torch::kFloat64;
  torch::jit::Module head;  // the LLPR head (submodule `head`), on device
  torch::Tensor features;  // cached (n_centers, F), model dtype, on device (set by set_features)
  int64_t features_generation = 0;
  void set_features(torch::Tensor f)
  {
    features = std::move(f);
    ++features_generation;
  }
  // autograd graph of the latest forward() (forward_graph's second output) until backward()
  c10::IValue graph;
  bool has_graph = false;
  int64_t graph_atoms = 0, graph_centers = 0;
  Request graph_request;

  // The uncertainty formulas are those of the file's LLPR head (llpr.uncertainty.llpr_head.LLPRHead), run
  // through TorchScript: one implementation, in Python, for Python and C++. On the CPU the
  // per-step ones run natively instead (native_head.h), for a file whose head they were
  // checked to reproduce on load.
  std::unique_ptr<NativeHead> native_head;  // null: the head's TorchScript methods throughout
  std::string uncertainty_path;             // Metadata::uncertainty_evaluation

  bool native(const torch::Tensor &f) const
  {
    return native_head && f.device().is_cpu() &&
           (f.scalar_type() == torch::kFloat64 || f.scalar_type() == torch::kFloat32);
  }
  // q of the rows of CPU features `f` (n x F) by the native kernel into `q` (n values), the
  // rows split between torch's intra-op threads as the head's matrix product would be
  void native_qform(const torch::Tensor &f, double *q) const
  {
    auto rows = f.dim() == 1 ? f.reshape({1, -1}).contiguous() : f.contiguous();
    const int64_t n = rows.size(0), F = meta.n_features;
    const bool f64 = rows.scalar_type() == torch::kFloat64;
    at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
      if (f64) native_head->quadratic_form(rows.data_ptr<double>() + begin * F, end - begin, q + begin);
      else native_head->quadratic_form(rows.data_ptr<float>() + begin * F, end - begin, q + begin);
    });
  }
  // native_qform of the rows of `f` into a buffer that holds them until the next call
  mutable std::vector<double> q_buffer;
  const double *native_q(const torch::Tensor &f) const
  {
    q_buffer.resize(static_cast<size_t>(f.size(0)));
    native_qform(f, q_buffer.data());
    return q_buffer.data();
  }
  // q = f^T C^-1 f per row (float64), by LLPRHead.quadratic_form; copied to `out` (n values)
  void qform(const torch::Tensor &f, double *out) const
  {
    if (native(f)) return native_qform(f, out);
    auto q = head.get_method("quadratic_form")({f}).toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
    std::memcpy(out, q.data_ptr<double>(), sizeof(double) * q.numel());
  }
  // sigma = alpha sqrt(q), lpr = 1 / q by LLPRHead.local_uncertainty, copied to the host
  // (either pointer may be null)
  void uncertainty(const torch::Tensor &f, double *sigma, double *lpr) const
  {
    const int64_t n = f.size(0);
    if (native(f)) return native_head->local_uncertainty(native_q(f), n, sigma, lpr);
    auto result = head.get_method("local_uncertainty")({f}).toTuple();
    if (sigma) {
      auto s = result->elements()[0].toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
      std::memcpy(sigma, s.data_ptr<double>(), sizeof(double) * n);
    }
    if (lpr) {
      auto r = result->elements()[1].toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
      std::memcpy(lpr, r.data_ptr<double>(), sizeof(double) * n);
    }
  }
  // gamma = q / max_train_q by LLPRHead.extrapolation_grade, copied to the host
  void grade(const torch::Tensor &f, double *gamma) const
  {
    const int64_t n = f.size(0);
    if (native(f)) return native_head->extrapolation_grade(native_q(f), n, gamma);
    auto g = head.get_method("extrapolation_grade")({f}).toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
    std::memcpy(gamma, g.data_ptr<double>(), sizeof(double) * n);
  }
  // alpha^2 s^T C^-1 s by LLPRHead.energy_variance, of one summed feature vector on the host
  double variance(const torch::Tensor &s) const
  {
    if (native(s)) {
      double q = 0.0;
      native_qform(s, &q);
      return native_head->energy_variance(q);
    }
    return head.get_method("energy_variance")({s}).toTensor().to(torch::kCPU).item<double>();
  }
  // q of the cached features on the native path, computed once per evaluation (sigma_i and
  // gamma_i of one step share it)
  mutable std::vector<double> q_cached;
  mutable int64_t q_cached_generation = -1;
  const double *cached_q() const
  {
    if (q_cached_generation != features_generation) {
      q_cached.resize(static_cast<size_t>(features.size(0)));
      native_qform(features, q_cached.data());
      q_cached_generation = features_generation;
    }
    return q_cached.data();
  }
  // float64 sum of cached feature rows on the CPU (`rows` null: rows 0 .. n - 1), without
  // the temporaries of a torch reduction
  void sum_rows(const int64_t *rows, int64_t n, double *out) const
  {
    const int64_t F = meta.n_features;
    std::fill(out, out + F, 0.0);
    auto f = features.contiguous();
    auto add = [&](auto *data) {
      for (int64_t r = 0; r < n; r++) {
        const auto *row = data + (rows ? rows[r] : r) * F;
        for (int64_t j = 0; j < F; j++) out[j] += static_cast<double>(row[j]);
      }
    };
    if (f.scalar_type() == torch::kFloat64) add(f.data_ptr<double>());
    else if (f.scalar_type() == torch::kFloat32) add(f.data_ptr<float>());
    else {
      auto g = f.to(torch::kFloat64);
      add(g.data_ptr<double>());
    }
  }
  // the native formulas, if this CPU runs them and they reproduce the file's head
  void choose_uncertainty();
  // forward()/ensemble_forward() arguments, on the device, in the model's dtype
  std::vector<torch::jit::IValue> arguments(const Inputs &in, const Request &req) const
  {
    const int64_t N = in.n_atoms, C = in.n_centers, E = in.n_edges;
    auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    auto opts = torch::TensorOptions().dtype(dtype).device(device);
    auto positions = torch::from_blob(const_cast<double *>(in.positions), {N, 3}, f64).to(opts);
    auto numbers = torch::from_blob(const_cast<int64_t *>(in.atomic_numbers), {N}, i64).to(device);
    auto edges = torch::from_blob(const_cast<int64_t *>(in.edge_index), {2, E}, i64).to(device);
    torch::Tensor shifts;
    if (in.edge_shifts) shifts = torch::from_blob(const_cast<double *>(in.edge_shifts), {E, 3}, f64).to(opts);
    else shifts = torch::zeros({E, 3}, opts);
    return {positions, numbers, edges, shifts, C, req.forces, req.virial};
  }
  // run `method` on `args`, with its failure as an Error naming the method
  c10::IValue call(const char *method, std::vector<torch::jit::IValue> args)
  {
    try {
      return module.get_method(method)(std::move(args));
    } catch (const std::exception &e) {
      throw Error(std::string("the model's ") + method + "() failed: " + first_line(e.what()));
    }
  }
  static c10::Dict<c10::IValue, c10::IValue> as_dict(const c10::IValue &output, const char *method)
  {
    if (!output.isGenericDict()) throw Error(std::string("the model's ") + method + "() did not return a dict");
    return output.toGenericDict();
  }
  // run `method` (evaluate or ensemble_forward) on the inputs; its dict of outputs
  c10::Dict<c10::IValue, c10::IValue> run(const char *method, const Inputs &in, const Request &req)
  {
    return as_dict(call(method, arguments(in, req)), method);
  }
  // the centres' energies and features of an evaluate() or forward_graph() result, into `out`
  // and the feature cache (after the finiteness checks)
  void take_energies_features(const c10::Dict<c10::IValue, c10::IValue> &result, const char *method, int64_t N,
                              const Request &req, Outputs &out);
  // output `key` of `method`'s dict as float64 on the host; an error unless it has n values
  static torch::Tensor take(const c10::Dict<c10::IValue, c10::IValue> &result, const char *method,
                            const char *key, int64_t n)
  {
    auto it = result.find(key);
    if (it == result.end()) throw Error(std::string("the model's ") + method + "() returned no '" + key + "'");
    auto t = it->value().toTensor().detach().to(torch::kCPU, torch::kFloat64).contiguous();
    if (n >= 0 && t.numel() != n)
      throw Error(std::string("the model's output '") + key + "' has " + std::to_string(t.numel()) +
                  " values, expected " + std::to_string(n));
    return t;
  }
  static void copy(const c10::Dict<c10::IValue, c10::IValue> &result, const char *method, const char *key,
                   std::vector<double> &v)
  {
    auto t = take(result, method, key, static_cast<int64_t>(v.size()));
    if (!v.empty()) std::memcpy(v.data(), t.data_ptr<double>(), sizeof(double) * v.size());
  }
  torch::Tensor host_features(const double *features, int64_t n) const
  {
    if (n < 0) throw Error("negative number of feature rows");
    auto t = torch::from_blob(const_cast<double *>(features), {n, meta.n_features},
                              torch::TensorOptions().dtype(torch::kFloat64));
    return t.to(device);
  }
};

// The file starts like a zip archive (a local file header). Anything else is not an archive
// at all and gets torch::jit::load's own message.
static bool is_zip(const std::string &path)
{
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {0, 0, 0, 0};
  in.read(magic, 4);
  return in.gcount() == 4 && std::memcmp(magic, "PK\x03\x04", 4) == 0;
}

// A torch.save archive (a zip with data.pkl) that is not TorchScript (no constants.pkl): the
// file names stand in plain text in the zip directory.
static bool is_torch_checkpoint(const std::string &path)
{
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return bytes.rfind("PK", 0) == 0 && bytes.find("data.pkl") != std::string::npos &&
         bytes.find("constants.pkl") == std::string::npos;
}

// Throws NonFiniteOutput naming the atoms (model indices) with NaN/inf energies, forces or
// per-atom virials; a non-finite total alone (overflowing sum) names no atom.
static void check_finite(const Outputs &out, int64_t N, int64_t C, const Request &req)
{
  auto finite_rows = [](const std::vector<double> &v, int64_t rows, int64_t width, std::vector<int64_t> &bad) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < width; ++k)
        if (!std::isfinite(v[static_cast<size_t>(r * width + k)])) {
          bad.push_back(r);
          break;
        }
  };
  std::vector<int64_t> bad;
  finite_rows(out.energies, C, 1, bad);
  if (!bad.empty() || !std::isfinite(out.energy))
    throw NonFiniteOutput("the model gave a non-finite energy (NaN or inf)", "energies", bad);
  if (req.forces) {
    finite_rows(out.forces, N, 3, bad);
    if (!bad.empty()) throw NonFiniteOutput("the model gave non-finite forces (NaN or inf)", "forces", bad);
  }
  if (req.virial) {
    finite_rows(out.virial_atom, N, 9, bad);
    bool total = true;
    for (double v : out.virial) total = total && std::isfinite(v);
    if (!bad.empty() || !total)
      throw NonFiniteOutput("the model gave a non-finite virial (NaN or inf)", "virial", bad);
  }
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
  // sizes of a message-passing graph (local + ghost atoms, their edges) change every step: for
  // MACE's e3nn code that re-optimisation made a step about 10x slower than running the graph
  // unoptimised (benchmarks/results/mace_lammps.md). The switch is process-wide.
  if (impl_->meta.passes_messages()) torch::jit::setGraphExecutorOptimize(false);
  impl_->meta.integrity = integrity.summary;
  impl_->meta.sealed = integrity.sealed;
  impl_->meta.seal = integrity.seal;
  impl_->module.eval();
  if (dev.type() != torch::kCPU) impl_->module.to(dev);
  impl_->device = dev;
  impl_->dtype = impl_->meta.dtype == "float64" ? torch::kFloat64 : torch::kFloat32;
  impl_->head = impl_->module.attr("head").toModule();
  impl_->set_features(torch::zeros({0, impl_->meta.n_features},
                                    torch::TensorOptions().dtype(impl_->dtype).device(dev)));
  impl_->choose_uncertainty();
  impl_->meta.uncertainty_evaluation = impl_->uncertainty_path;
}

// largest relative difference between a and b (equal infinities count as equal)
static double worst_relative(const std::vector<double> &a, const torch::Tensor &b)
{
  auto r = b.to(torch::kCPU, torch::kFloat64).contiguous().view({-1});
  if (r.numel() != static_cast<int64_t>(a.size())) return INFINITY;
  const double *bp = r.data_ptr<double>();
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); i++) {
    if (a[i] == bp[i]) continue;
    const double d = std::fabs(a[i] - bp[i]) / std::max(std::fabs(a[i]), std::fabs(bp[i]));
    if (std::isnan(d)) return d;  // one value a number, the other NaN (or both NaN)
    worst = std::max(worst, d);
  }
  return worst;
}

void Model::Impl::choose_uncertainty()
{
  const char *env = std::getenv("LLPR_NATIVE_UNCERTAINTY");
  if (!device.is_cpu()) {
    uncertainty_path = "LLPR head's TorchScript methods (on " + device.str() + ")";
    return;
  }
  if (env && std::string(env) == "0") {
    uncertainty_path = "LLPR head's TorchScript methods (LLPR_NATIVE_UNCERTAINTY=0)";
    return;
  }
  auto scalar = [&](const char *name, double fallback) {
    if (!head.hasattr(name) || !head.attr(name).isTensor()) return fallback;
    return head.attr(name).toTensor().to(torch::kCPU, torch::kFloat64).item<double>();
  };
  SigmaLaw law;
  law.alpha = meta.alpha;
  law.sigma_scale = scalar("sigma_scale", meta.alpha);
  law.sigma_power = scalar("sigma_power", 1.0);
  law.power_law = head.hasattr("power_law") && head.attr("power_law").isBool() && head.attr("power_law").toBool();
  law.max_train_q = meta.has_extrapolation_grade ? meta.max_train_q : 0.0;
  auto u = head.attr("inverse_factor_t").toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
  auto candidate = std::make_unique<NativeHead>(u.data_ptr<double>(), u.size(0), law);
  if (!candidate->usable()) {
    uncertainty_path = "LLPR head's TorchScript methods (" + candidate->reason() + ")";
    return;
  }
  // The native formulas must give what the file's head gives, on this CPU, for every method
  // they replace: 13 rows (two full tiles of the kernel and a partial one) spread over many
  // orders of magnitude, in both feature dtypes.
  const int64_t F = meta.n_features, n = 13;
  std::mt19937_64 rng(20261201);
  std::normal_distribution<double> normal;
  std::vector<double> values(static_cast<size_t>(n * F));
  for (int64_t r = 0; r < n; r++)
    for (int64_t j = 0; j < F; j++) values[r * F + j] = normal(rng) * std::pow(10.0, static_cast<double>(r % 7) - 3.0);
  auto probe = torch::from_blob(values.data(), {n, F}, torch::TensorOptions().dtype(torch::kFloat64)).clone();
  native_head = std::move(candidate);
  double worst = 0.0;
  auto note = [&](double d) {
    if (std::isnan(d) || std::isnan(worst)) worst = NAN;
    else worst = std::max(worst, d);
  };
  try {
    for (auto dt : {torch::kFloat64, torch::kFloat32}) {
      auto rows = probe.to(dt);
      std::vector<double> q(n), sigma(n), lpr(n), gamma(n), var(1);
      native_qform(rows, q.data());
      native_head->local_uncertainty(q.data(), n, sigma.data(), lpr.data());
      note(worst_relative(q, head.get_method("quadratic_form")({rows}).toTensor()));
      auto ref = head.get_method("local_uncertainty")({rows}).toTuple();
      note(worst_relative(sigma, ref->elements().at(0).toTensor()));
      note(worst_relative(lpr, ref->elements().at(1).toTensor()));
      if (meta.has_extrapolation_grade) {
        native_head->extrapolation_grade(q.data(), n, gamma.data());
        note(worst_relative(gamma, head.get_method("extrapolation_grade")({rows}).toTensor()));
      }
      auto sum = rows.sum(0);
      var[0] = variance(sum);
      note(worst_relative(var, head.get_method("energy_variance")({sum}).toTensor()));
    }
  } catch (const std::exception &e) {
    // the head's own methods fail on the probe rows: they are left to report it where used
    native_head.reset();
    // a TorchScript error ends with the exception raised in the method ("RuntimeError: ...")
    std::string text = e.what(), last;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);)
      if (line.find_first_not_of(" \t") != std::string::npos) last = line;
    uncertainty_path = "LLPR head's TorchScript methods (they failed on probe rows: " + last + ")";
    return;
  }
  if (!(worst <= 1e-12)) {
    native_head.reset();
    uncertainty_path = "LLPR head's TorchScript methods (the native formulas differed from them by " +
                       fmt_double(worst) + " relative)";
    return;
  }
  uncertainty_path = "native CPU kernels (AVX2), checked against the file's LLPR head on load";
}

Model::~Model() = default;

const Metadata &Model::metadata() const { return impl_->meta; }
std::string Model::device() const { return impl_->device.str(); }
bool Model::is_cuda() const { return impl_->device.is_cuda(); }

// forces and virials of N atoms zeroed at their sizes where `req` asks for them, else empty
static void size_gradients(Outputs &out, int64_t N, const Request &req)
{
  if (req.forces) out.forces.assign(3 * N, 0.0);
  else out.forces.clear();
  if (req.virial) {
    out.virial.assign(9, 0.0);
    out.virial_atom.assign(9 * N, 0.0);
  } else {
    out.virial.clear();
    out.virial_atom.clear();
  }
}

void Model::compute(const Inputs &in, const Request &req, Outputs &out)
{
  auto &I = *impl_;
  const int64_t N = in.n_atoms, C = in.n_centers, E = in.n_edges;
  if (N < 0 || C < 0 || E < 0 || C > N) throw Error("invalid sizes: need 0 <= n_centers <= n_atoms");
  out.energies.assign(C, 0.0);
  size_gradients(out, N, req);
  out.energy = 0.0;
  I.graph = c10::IValue();  // a biased evaluation's graph is stale now
  I.has_graph = false;
  if (C == 0) {  // nothing to evaluate (e.g. an MPI rank that owns no atoms)
    I.set_features(torch::zeros({0, I.meta.n_features}, torch::TensorOptions().dtype(I.dtype).device(I.device)));
    return;
  }
  // evaluate() skips the per-atom sigma/lpr of forward(): the computes derive them from the
  // cached features, and only on the steps they are invoked
  const auto result = I.run("evaluate", in, req);
  if (req.forces) Impl::copy(result, "evaluate", "forces", out.forces);
  if (req.virial) {
    Impl::copy(result, "evaluate", "virial", out.virial);
    Impl::copy(result, "evaluate", "virial_atom", out.virial_atom);
  }
  I.take_energies_features(result, "evaluate", N, req, out);
}

void Model::Impl::take_energies_features(const c10::Dict<c10::IValue, c10::IValue> &result, const char *method,
                                         int64_t N, const Request &req, Outputs &out)
{
  const int64_t C = static_cast<int64_t>(out.energies.size());
  out.energy = take(result, method, "energy", 1).item<double>();
  copy(result, method, "energies", out.energies);
  auto it = result.find("features");
  if (it == result.end()) throw Error(std::string("the model's ") + method + "() returned no 'features'");
  auto feats = it->value().toTensor().detach();
  if (feats.dim() != 2 || feats.size(0) != C || feats.size(1) != meta.n_features)
    throw Error("the model's features have the wrong shape");
  // a NaN must never pass for a number: the uncertainty of a broken evaluation is not zero
  set_features(torch::zeros({0, meta.n_features}, torch::TensorOptions().dtype(dtype).device(device)));
  check_finite(out, N, C, req);
  // one pass without a temporary (cheaper than isfinite().all()): any NaN or inf makes the
  // sum non-finite; the rows are looked for only then
  if (!std::isfinite(feats.sum().item<double>())) {
    auto rows = (~torch::isfinite(feats)).any(1).nonzero().flatten().to(torch::kCPU).contiguous();
    std::vector<int64_t> bad(rows.data_ptr<int64_t>(), rows.data_ptr<int64_t>() + rows.numel());
    throw NonFiniteOutput("the model gave non-finite last-layer features (NaN or inf)", "features", bad);
  }
  set_features(feats);
}

void Model::forward(const Inputs &in, const Request &req, Outputs &out)
{
  auto &I = *impl_;
  if (!I.meta.bias)
    throw Error("'" + I.meta.path + "' has no forward_graph/backward_graph (it was exported by an llpr without "
                "biased evaluations); re-export it with `llpr export llpr.ckpt -o model.pt`");
  I.graph = c10::IValue();  // the previous step's graph, if a backward() never came
  I.has_graph = false;
  const int64_t N = in.n_atoms, C = in.n_centers, E = in.n_edges;
  if (N < 0 || C < 0 || E < 0 || C > N) throw Error("invalid sizes: need 0 <= n_centers <= n_atoms");
  // forces and virials come from backward(): check_finite below sees only the energies
  Request energies_only;
  energies_only.forces = false;
  out.energies.assign(C, 0.0);
  out.forces.clear();
  out.virial.clear();
  out.virial_atom.clear();
  out.energy = 0.0;
  I.graph_atoms = N;
  I.graph_centers = C;
  I.graph_request = req;
  I.graph_request.forces = true;  // the bias acts through the forces
  if (C == 0) {  // no centres on this rank: backward() gives zeros
    I.set_features(torch::zeros({0, I.meta.n_features}, torch::TensorOptions().dtype(I.dtype).device(I.device)));
    I.has_graph = true;
    return;
  }
  auto output = I.call("forward_graph", I.arguments(in, I.graph_request));
  if (!output.isTuple() || output.toTupleRef().elements().size() != 2)
    throw Error("the model's forward_graph() did not return (outputs, graph)");
  const auto &parts = output.toTupleRef().elements();
  I.take_energies_features(Impl::as_dict(parts[0], "forward_graph"), "forward_graph", N, energies_only, out);
  I.graph = parts[1];
  I.has_graph = true;
}

void Model::backward(const double *center_weights, const double *cotangent, bool with_energy, bool keep_graph,
                     Outputs &out)
{
  auto &I = *impl_;
  if (!I.has_graph) throw Error("Model::backward() without a preceding forward()");
  const int64_t N = I.graph_atoms, C = I.graph_centers, F = I.meta.n_features;
  const Request &req = I.graph_request;
  size_gradients(out, N, req);
  if (!keep_graph) I.has_graph = false;
  if (C == 0) return;
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto weights = torch::from_blob(const_cast<double *>(center_weights), {C}, f64).to(I.device);
  auto c = torch::from_blob(const_cast<double *>(cotangent), {F}, f64).to(I.device);
  auto graph = I.graph;
  if (!keep_graph) I.graph = c10::IValue();
  const auto result = Impl::as_dict(
      I.call("backward_graph", {graph, N, weights, c, with_energy, req.forces, req.virial, keep_graph}),
      "backward_graph");
  Impl::copy(result, "backward_graph", "forces", out.forces);
  if (req.virial) {
    Impl::copy(result, "backward_graph", "virial", out.virial);
    Impl::copy(result, "backward_graph", "virial_atom", out.virial_atom);
  }
  // the energies were checked by forward(): no centre rows here, only forces and virials
  check_finite(out, N, 0, req);
}

void Model::bias_sigma(const double *feature_sum, double sigma_cap, double &sigma, double &value,
                       double *gradient) const
{
  auto &I = *impl_;
  if (!I.meta.bias) throw Error("'" + I.meta.path + "' has no head.bias_sigma; re-export it with `llpr export`");
  auto s = I.host_features(feature_sum, 1).view({-1});
  c10::IValue result;
  try {
    result = I.head.get_method("bias_sigma")({s, sigma_cap});
  } catch (const std::exception &e) {
    throw Error(std::string("the model's head.bias_sigma() failed: ") + first_line(e.what()));
  }
  const auto &parts = result.toTupleRef().elements();
  sigma = parts[0].toTensor().to(torch::kCPU, torch::kFloat64).item<double>();
  value = parts[1].toTensor().to(torch::kCPU, torch::kFloat64).item<double>();
  auto g = parts[2].toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
  if (g.numel() != I.meta.n_features)
    throw Error("the model's head.bias_sigma() gave a gradient of " + std::to_string(g.numel()) + " values, expected " +
                std::to_string(I.meta.n_features));
  std::memcpy(gradient, g.data_ptr<double>(), sizeof(double) * g.numel());
  bool finite = std::isfinite(sigma) && std::isfinite(value);
  for (int64_t k = 0; k < g.numel(); ++k) finite = finite && std::isfinite(gradient[k]);
  if (!finite)
    throw NonFiniteOutput("the energy sigma of the biased group or its gradient is not finite (NaN or inf)", "bias", {});
}

void Model::compute_ensemble(const Inputs &in, const Request &req, EnsembleOutputs &out)
{
  auto &I = *impl_;
  const int64_t K = I.meta.ensemble_size;
  if (K == 0)
    throw Error(no_ensemble_message("'" + I.meta.path + "'"));
  const int64_t N = in.n_atoms, C = in.n_centers, E = in.n_edges;
  if (N < 0 || C < 0 || E < 0 || C > N) throw Error("invalid sizes: need 0 <= n_centers <= n_atoms");
  out.size = K;
  out.energy_deviations.assign(K, 0.0);
  if (req.forces) out.force_deviations.assign(K * 3 * N, 0.0);
  else out.force_deviations.clear();
  if (req.virial) out.virial_deviations.assign(K * 9, 0.0);
  else out.virial_deviations.clear();
  if (req.forces) out.force_sigma.assign(N, 0.0);
  if (C == 0) return;  // no centres: every deviation is zero

  const auto result = I.run("ensemble_forward", in, req);
  Impl::copy(result, "ensemble_forward", "energy_deviations", out.energy_deviations);
  if (req.forces) {
    Impl::copy(result, "ensemble_forward", "force_deviations", out.force_deviations);
    Impl::copy(result, "ensemble_forward", "force_sigma", out.force_sigma);
  } else {
    out.force_sigma.clear();
  }
  if (req.virial) Impl::copy(result, "ensemble_forward", "virial_deviations", out.virial_deviations);
  std::vector<int64_t> bad;
  for (int64_t a = 0; req.forces && a < N; ++a)
    for (int64_t k = 0; k < K; ++k) {
      const double *d = &out.force_deviations[static_cast<size_t>((k * N + a) * 3)];
      if (!std::isfinite(d[0]) || !std::isfinite(d[1]) || !std::isfinite(d[2])) {
        bad.push_back(a);
        break;
      }
    }
  bool finite = true;
  for (double v : out.energy_deviations) finite = finite && std::isfinite(v);
  for (double v : out.virial_deviations) finite = finite && std::isfinite(v);
  if (!bad.empty() || !finite)
    throw NonFiniteOutput("the last-layer ensemble gave non-finite deviations (NaN or inf)", "ensemble", bad);
}

int64_t Model::n_cached() const { return impl_->features.size(0); }

void Model::cached_local_uncertainty(double *sigma, double *lpr) const
{
  auto &I = *impl_;
  if (I.features.size(0) == 0) return;
  if (I.native(I.features)) return I.native_head->local_uncertainty(I.cached_q(), I.features.size(0), sigma, lpr);
  I.uncertainty(I.features, sigma, lpr);
}

void Model::cached_extrapolation_grade(double *gamma) const
{
  if (!impl_->meta.has_extrapolation_grade)
    throw Error(no_extrapolation_grade_message("'" + impl_->meta.path + "'"));
  auto &I = *impl_;
  if (I.features.size(0) == 0) return;
  if (I.native(I.features)) return I.native_head->extrapolation_grade(I.cached_q(), I.features.size(0), gamma);
  I.grade(I.features, gamma);
}

void Model::cached_features(double *out) const
{
  auto f = impl_->features.to(torch::kCPU, torch::kFloat64).contiguous();
  if (f.numel()) std::memcpy(out, f.data_ptr<double>(), sizeof(double) * f.numel());
}

void Model::cached_feature_sum_all(double *out) const
{
  auto &I = *impl_;
  if (I.features.device().is_cpu()) return I.sum_rows(nullptr, I.features.size(0), out);
  auto sum = I.features.to(torch::kFloat64).sum(0).to(torch::kCPU).contiguous();
  std::memcpy(out, sum.data_ptr<double>(), sizeof(double) * I.meta.n_features);
}

void Model::cached_feature_sum_rows(const int64_t *rows, int64_t n_rows, double *out) const
{
  auto &I = *impl_;
  const int64_t F = I.meta.n_features;
  if (n_rows < 0) throw Error("negative number of feature rows");
  if (n_rows == 0) {  // an empty selection sums to zero, whatever `rows` points to
    std::fill(out, out + F, 0.0);
    return;
  }
  if (rows == nullptr) throw Error("cached_feature_sum_rows: no rows given");
  const int64_t n_cached = I.features.size(0);
  for (int64_t k = 0; k < n_rows; ++k)
    if (rows[k] < 0 || rows[k] >= n_cached)
      throw Error("cached_feature_sum_rows: row " + std::to_string(rows[k]) + " outside 0.." +
                  std::to_string(n_cached - 1));
  if (I.features.device().is_cpu()) return I.sum_rows(rows, n_rows, out);
  auto idx = torch::from_blob(const_cast<int64_t *>(rows), {n_rows}, torch::TensorOptions().dtype(torch::kInt64))
                 .to(I.device);
  auto sum = I.features.index_select(0, idx).to(torch::kFloat64).sum(0).to(torch::kCPU).contiguous();
  std::memcpy(out, sum.data_ptr<double>(), sizeof(double) * F);
}

void Model::quadratic_form(const double *features, int64_t n, double *out) const
{
  if (n == 0) return;
  impl_->qform(impl_->host_features(features, n), out);
}

void Model::local_uncertainty(const double *features, int64_t n, double *sigma, double *lpr) const
{
  if (n == 0) return;
  impl_->uncertainty(impl_->host_features(features, n), sigma, lpr);
}

void Model::extrapolation_grade(const double *features, int64_t n, double *gamma) const
{
  if (!impl_->meta.has_extrapolation_grade)
    throw Error(no_extrapolation_grade_message("'" + impl_->meta.path + "'"));
  if (n == 0) return;
  impl_->grade(impl_->host_features(features, n), gamma);
}

double Model::energy_variance(const double *feature_sum) const
{
  return impl_->variance(impl_->host_features(feature_sum, 1));
}

void Model::ensemble_energy_deviations(const double *feature_sum, double *out) const
{
  const int64_t K = impl_->meta.ensemble_size;
  if (K == 0) return;
  auto s = impl_->host_features(feature_sum, 1).view({-1});
  auto d = impl_->head.get_method("ensemble_energy_deviations")({s}).toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
  if (d.numel() != K)
    throw Error("the model's ensemble_energy_deviations() gave " + std::to_string(d.numel()) + " values, expected " +
                std::to_string(K));
  std::memcpy(out, d.data_ptr<double>(), sizeof(double) * K);
  for (int64_t k = 0; k < K; ++k)
    if (!std::isfinite(out[k]))
      throw NonFiniteOutput("the last-layer ensemble gave non-finite energy deviations (NaN or inf)", "ensemble", {});
}

// ------------------------------------------------------------------------------------------

bool is_device_name(const std::string &d)
{
  if (d == "cpu" || d == "cuda") return true;
  if (d.rfind("cuda:", 0) != 0 || d.size() == 5 || d.size() > 9) return false;
  for (size_t k = 5; k < d.size(); ++k)
    if (d[k] < '0' || d[k] > '9') return false;
  return true;
}

void check_device(const std::string &device) { parse_device(device); }

std::string no_extrapolation_grade_message(const std::string &path)
{
  return path + " has no training-set reference for the extrapolation grade gamma (head.max_train_q: the file "
                "was exported before llpr recorded it, or from a checkpoint calibrated without the training set); "
                "calibrate again with `llpr calibrate` (it records max q over the training atoms) and re-export "
                "with `llpr export`";
}

std::string no_ensemble_message(const std::string &path, const std::string &need)
{
  return path + " has no last-layer ensemble, which " + need + " need; export it with "
                "`llpr export llpr.ckpt --ensemble 32 -o model.pt` (or export_model(..., ensemble=32))";
}

Metadata check_file(const std::string &path)
{
  Model model(path, "cpu");
  return model.metadata();
}

void native_quadratic_form(const double *inverse_factor_t, int64_t n_features, const double *features, int64_t n,
                           double *q)
{
  NativeHead kernel(inverse_factor_t, n_features, SigmaLaw{});
  if (!kernel.usable()) throw Error("no native quadratic form: " + kernel.reason());
  kernel.quadratic_form(features, n, q);
}

std::string native_kernels_unsupported_reason()
{
  std::string why;
  return native_kernels_supported(&why) ? std::string() : why;
}

void set_num_threads(int n)
{
  if (n >= 1 && at::get_num_threads() != n) at::set_num_threads(n);
}
int get_num_threads() { return at::get_num_threads(); }

bool cuda_available() { return torch::cuda::is_available(); }
int cuda_device_count() { return static_cast<int>(torch::cuda::device_count()); }

std::string torch_version_compiled() { return TORCH_VERSION; }

// KEY=value of the build settings in at::show_config(), which is compiled into the libtorch
// that is actually loaded ("" when absent)
static std::string build_setting(const std::string &key)
{
  const std::string config = at::show_config();
  const std::string pattern = key + "=";
  for (auto pos = config.find(pattern); pos != std::string::npos; pos = config.find(pattern, pos + 1)) {
    if (pos > 0 && config[pos - 1] != ' ' && config[pos - 1] != ',') continue;  // e.g. X_KEY=
    const auto start = pos + pattern.size();
    const auto end = config.find_first_of(", \n", start);
    return config.substr(start, end == std::string::npos ? std::string::npos : end - start);
  }
  return "";
}

std::string torch_version_runtime()
{
  const std::string version = build_setting("TORCH_VERSION");
  return version.empty() ? "unknown" : version;
}

std::string cuda_unavailable_reason()
{
  const std::string torch = "torch " + torch_version_runtime();
  const std::string cuda = build_setting("CUDA_VERSION");
  const std::string rebuild = "pip install --no-build-isolation --force-reinstall --no-deps . in the llpr sources";
  if (cuda.empty())
    return torch + " is a CPU-only build; to use a GPU, install the CUDA build of torch and rebuild llpr "
           "against it with " + rebuild;
  // the CUDA part of libtorch registers itself when libtorch_cuda.so is loaded (libtorch.so depends on it)
  void *handle = dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_NOLOAD);
  if (handle == nullptr)
    return torch + " is a CUDA " + cuda + " build but its libtorch_cuda.so is not loaded in this process; "
           "rebuild llpr against this torch with " + rebuild;
  dlclose(handle);
  return torch + ", a CUDA " + cuda + " build, sees " + std::to_string(torch::cuda::device_count()) +
         " CUDA devices: no NVIDIA GPU or driver is visible; check nvidia-smi and CUDA_VISIBLE_DEVICES";
}

// standard atomic weights (g/mol) by atomic number, index 0 unused (IUPAC values as in ASE)
const double kAtomicMasses[] = {1.0000, 1.0080, 4.0026, 6.9400, 9.0122, 10.8100, 12.0110, 14.0070, 15.9990, 18.9984, 20.1797, 22.9898, 24.3050, 26.9815, 28.0850, 30.9738, 32.0600, 35.4500, 39.9480, 39.0983, 40.0780, 44.9559, 47.8670, 50.9415, 51.9961, 54.9380, 55.8450, 58.9332, 58.6934, 63.5460, 65.3800, 69.7230, 72.6300, 74.9216, 78.9710, 79.9040, 83.7980, 85.4678, 87.6200, 88.9058, 91.2240, 92.9064, 95.9500, 97.9072, 101.0700, 102.9055, 106.4200, 107.8682, 112.4140, 114.8180, 118.7100, 121.7600, 127.6000, 126.9045, 131.2930, 132.9055, 137.3270, 138.9055, 140.1160, 140.9077, 144.2420, 144.9128, 150.3600, 151.9640, 157.2500, 158.9254, 162.5000, 164.9303, 167.2590, 168.9342, 173.0540, 174.9668, 178.4900, 180.9479, 183.8400, 186.2070, 190.2300, 192.2170, 195.0840, 196.9666, 200.5920, 204.3800, 207.2000, 208.9804, 208.9824, 209.9872, 222.0176, 223.0197, 226.0254, 227.0277, 232.0377, 231.0359, 238.0289, 237.0482, 244.0642, 243.0614, 247.0703, 247.0703, 251.0796, 252.0830, 257.0951, 258.0984, 259.1010, 262.1100, 267.1220, 268.1260, 271.1340, 270.1330, 269.1338, 278.1560, 281.1650, 281.1660, 285.1770, 286.1820, 289.1900, 289.1940, 293.2040, 293.2080, 294.2140};

int atomic_number(const std::string &symbol)
{
  for (int z = 1; z < kNumElements; ++z)
    if (symbol == kElements[z]) return z;
  return -1;
}

std::string element_symbol(int64_t z)
{
  if (z < 1 || z >= kNumElements) return "";
  return kElements[z];
}

double atomic_mass(int64_t z)
{
  if (z < 1 || z > 118) return 0.0;
  return kAtomicMasses[z];
}

}  // namespace llpr
