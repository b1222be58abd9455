// The per-step uncertainty formulas (quadratic form, sigma_i, LPR_i, gamma_i, a group's energy
// variance, the ensemble's energy deviations, the bias sigma). They are the file's LLPR head's
// methods; on the CPU the per-step ones run on the native kernel (native_head.h) instead, for a
// file whose head the kernel reproduces: choose_uncertainty() decides on load with a probe.

#include "model_impl.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>

namespace llpr {

namespace {

// largest relative difference between a and b (equal infinities count as equal)
double worst_relative(const std::vector<double> &a, const torch::Tensor &b)
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

double head_scalar(const torch::jit::Module &head, const char *name)
{
  return head.attr(name).toTensor().to(torch::kCPU, torch::kFloat64).item<double>();
}

}  // namespace

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
  // the sigma law of the head (its items were checked by validate())
  SigmaLaw law;
  law.alpha = meta.alpha;
  law.sigma_scale = head_scalar(head, "sigma_scale");
  law.sigma_power = head_scalar(head, "sigma_power");
  law.power_law = head.attr("power_law").toBool();
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

bool Model::Impl::native(const torch::Tensor &f) const
{
  return native_head && f.device().is_cpu() &&
         (f.scalar_type() == torch::kFloat64 || f.scalar_type() == torch::kFloat32);
}

void Model::Impl::native_qform(const torch::Tensor &f, double *q) const
{
  auto rows = f.dim() == 1 ? f.reshape({1, -1}).contiguous() : f.contiguous();
  const int64_t n = rows.size(0), F = meta.n_features;
  const bool f64 = rows.scalar_type() == torch::kFloat64;
  at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
    if (f64) native_head->quadratic_form(rows.data_ptr<double>() + begin * F, end - begin, q + begin);
    else native_head->quadratic_form(rows.data_ptr<float>() + begin * F, end - begin, q + begin);
  });
}

const double *Model::Impl::native_q(const torch::Tensor &f) const
{
  q_buffer.resize(static_cast<size_t>(f.size(0)));
  native_qform(f, q_buffer.data());
  return q_buffer.data();
}

void Model::Impl::qform(const torch::Tensor &f, double *out) const
{
  if (native(f)) return native_qform(f, out);
  auto q = head.get_method("quadratic_form")({f}).toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
  std::memcpy(out, q.data_ptr<double>(), sizeof(double) * q.numel());
}

void Model::Impl::uncertainty(const torch::Tensor &f, double *sigma, double *lpr) const
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

void Model::Impl::grade(const torch::Tensor &f, double *gamma) const
{
  const int64_t n = f.size(0);
  if (native(f)) return native_head->extrapolation_grade(native_q(f), n, gamma);
  auto g = head.get_method("extrapolation_grade")({f}).toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
  std::memcpy(gamma, g.data_ptr<double>(), sizeof(double) * n);
}

double Model::Impl::variance(const torch::Tensor &s) const
{
  if (native(s)) {
    double q = 0.0;
    native_qform(s, &q);
    return native_head->energy_variance(q);
  }
  return head.get_method("energy_variance")({s}).toTensor().to(torch::kCPU).item<double>();
}

const double *Model::Impl::cached_q() const
{
  if (q_cached_generation != features_generation) {
    q_cached.resize(static_cast<size_t>(features.size(0)));
    native_qform(features, q_cached.data());
    q_cached_generation = features_generation;
  }
  return q_cached.data();
}

torch::Tensor Model::Impl::host_features(const double *features, int64_t n) const
{
  if (n < 0) throw Error("negative number of feature rows");
  auto t = torch::from_blob(const_cast<double *>(features), {n, meta.n_features},
                            torch::TensorOptions().dtype(torch::kFloat64));
  return t.to(device);
}

// --- on the cached features ---

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

// --- on host features ---

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

void Model::bias_sigma(const double *feature_sum, double sigma_cap, double &sigma, double &value,
                       double *gradient) const
{
  auto &I = *impl_;
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

// --- the native kernel alone (tests, benchmarks) ---

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

}  // namespace llpr
