// Running the model: evaluate() with forces and virials, the last-layer ensemble, and a biased
// evaluation in two halves (forward_graph, backward_graph); the outputs copied to the host and
// checked for NaN and inf, the centres' last-layer features cached on the device.

#include "model_impl.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace llpr {

namespace {

// Throws NonFiniteOutput naming the atoms (model indices) with NaN/inf energies, forces or
// per-atom virials; a non-finite total alone (overflowing sum) names no atom.
void check_finite(const Outputs &out, int64_t N, int64_t C, const Request &req)
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

// forces and virials of N atoms zeroed at their sizes where `req` asks for them, else empty
void size_gradients(Outputs &out, int64_t N, const Request &req)
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

void check_sizes(const Inputs &in)
{
  if (in.n_atoms < 0 || in.n_centers < 0 || in.n_edges < 0 || in.n_centers > in.n_atoms)
    throw Error("invalid sizes: need 0 <= n_centers <= n_atoms");
}

}  // namespace

std::vector<torch::jit::IValue> Model::Impl::arguments(const Inputs &in, const Request &req) const
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

c10::IValue Model::Impl::call(const char *method, std::vector<torch::jit::IValue> args)
{
  try {
    return module.get_method(method)(std::move(args));
  } catch (const std::exception &e) {
    throw Error(std::string("the model's ") + method + "() failed: " + first_line(e.what()));
  }
}

OutputDict Model::Impl::as_dict(const c10::IValue &output, const char *method)
{
  if (!output.isGenericDict()) throw Error(std::string("the model's ") + method + "() did not return a dict");
  return output.toGenericDict();
}

OutputDict Model::Impl::run(const char *method, const Inputs &in, const Request &req)
{
  return as_dict(call(method, arguments(in, req)), method);
}

torch::Tensor Model::Impl::take(const OutputDict &result, const char *method, const char *key, int64_t n)
{
  auto it = result.find(key);
  if (it == result.end()) throw Error(std::string("the model's ") + method + "() returned no '" + key + "'");
  auto t = it->value().toTensor().detach().to(torch::kCPU, torch::kFloat64).contiguous();
  if (n >= 0 && t.numel() != n)
    throw Error(std::string("the model's output '") + key + "' has " + std::to_string(t.numel()) +
                " values, expected " + std::to_string(n));
  return t;
}

void Model::Impl::copy(const OutputDict &result, const char *method, const char *key, std::vector<double> &v)
{
  auto t = take(result, method, key, static_cast<int64_t>(v.size()));
  if (!v.empty()) std::memcpy(v.data(), t.data_ptr<double>(), sizeof(double) * v.size());
}

void Model::Impl::take_energies_features(const OutputDict &result, const char *method, int64_t N,
                                         const Request &req, Outputs &out)
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
  clear_features();
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

void Model::compute(const Inputs &in, const Request &req, Outputs &out)
{
  auto &I = *impl_;
  const int64_t N = in.n_atoms, C = in.n_centers;
  check_sizes(in);
  out.energies.assign(C, 0.0);
  size_gradients(out, N, req);
  out.energy = 0.0;
  I.graph = c10::IValue();  // a biased evaluation's graph is stale now
  I.has_graph = false;
  if (C == 0) {  // nothing to evaluate (e.g. an MPI rank that owns no atoms)
    I.clear_features();
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

void Model::forward(const Inputs &in, const Request &req, Outputs &out)
{
  auto &I = *impl_;
  I.graph = c10::IValue();  // the previous step's graph, if a backward() never came
  I.has_graph = false;
  const int64_t N = in.n_atoms, C = in.n_centers;
  check_sizes(in);
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
    I.clear_features();
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

void Model::compute_ensemble(const Inputs &in, const Request &req, EnsembleOutputs &out)
{
  auto &I = *impl_;
  const int64_t K = I.meta.ensemble_size;
  if (K == 0)
    throw Error(no_ensemble_message("'" + I.meta.path + "'"));
  const int64_t N = in.n_atoms, C = in.n_centers;
  check_sizes(in);
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

// --- the cached features ---

void Model::Impl::sum_rows(const int64_t *rows, int64_t n, double *out) const
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

}  // namespace llpr
