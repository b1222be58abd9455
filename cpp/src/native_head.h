// The per-step uncertainty formulas of the LLPR head, native on the CPU. Python twin and
// reference: llpr.uncertainty.llpr_head.LLPRHead (quadratic_form, local_uncertainty, extrapolation_grade,
// energy_variance). The core evaluates the head's TorchScript methods everywhere except on
// the CPU, where these run instead: a matrix product cannot skip the zero half of the
// triangular factor, and each small TorchScript call after a model step has an interpreter
// overhead of its own (docs/performance.md). The core only uses them for a file after checking
// on load that they reproduce that file's head (Model::Impl::choose_uncertainty, uncertainty.cpp).
//
// Internal to libllpr_core (no torch types here).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llpr {

// whether this build and CPU run the native kernels (x86-64 with AVX2 and FMA); why not otherwise
bool native_kernels_supported(std::string *why = nullptr);

// The sigma law of LLPRHead: sigma = alpha sqrt(q) or, after a power-law recalibration,
// sigma_scale q^(sigma_power / 2); gamma = q / max_train_q.
struct SigmaLaw {
  double alpha = 0.0;
  bool power_law = false;
  double sigma_scale = 0.0;
  double sigma_power = 1.0;
  double max_train_q = 0.0;  // <= 0 or NaN: not recorded
};

class NativeHead {
 public:
  // `u`: U = (L^-1)^T of LLPRHead (its buffer inverse_factor_t), row-major (F x F). Usable
  // only if this CPU runs the kernel and U is upper triangular; reason() says why not.
  NativeHead(const double *u, int64_t n_features, const SigmaLaw &law);
  bool usable() const { return usable_; }
  const std::string &reason() const { return reason_; }

  // q_i = f_i^T C^-1 f_i = |f_i U|^2 of the n rows of `features` (n x F, row-major), float64
  // whatever the features' dtype; single-threaded (callers split the rows between threads)
  void quadratic_form(const double *features, int64_t n, double *q) const;
  void quadratic_form(const float *features, int64_t n, double *q) const;
  // from q: sigma_i and LPR_i = 1 / q_i (either output may be null), gamma_i, a group's
  // energy variance
  void local_uncertainty(const double *q, int64_t n, double *sigma, double *lpr) const;
  void extrapolation_grade(const double *q, int64_t n, double *gamma) const;
  double energy_variance(double q) const;

 private:
  int64_t F_ = 0, Fp_ = 0;  // Fp_: F rounded up to the kernel's column tile
  std::vector<double> u_;   // U, rows padded with zeros to Fp_ columns
  SigmaLaw law_;
  bool usable_ = false;
  std::string reason_;
};

}  // namespace llpr
