#include "native_head.h"

#include <algorithm>
#include <cmath>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LLPR_X86_KERNELS 1
#include <immintrin.h>
#endif

namespace llpr {

namespace {
constexpr int64_t kTileColumns = 8;  // two AVX2 registers of float64
constexpr int kTileRows = 6;         // rows (atoms) per tile: 12 accumulators + 2 loads + 1 broadcast = 15 of 16 registers
}  // namespace

bool native_kernels_supported(std::string *why)
{
#ifdef LLPR_X86_KERNELS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return true;
  if (why) *why = "this CPU lacks AVX2 or FMA";
  return false;
#else
  if (why) *why = "llpr has no native kernel for this CPU architecture";
  return false;
#endif
}

#ifdef LLPR_X86_KERNELS
// One tile: R rows of `f`, all columns of U in blocks of 8. For the block of columns
// [j0, j0 + 8), z = f U[:, j0:j0+8] only needs rows k < j0 + 8 of U (it is upper triangular),
// so the loop over k stops there: about F^2 / 2 multiply-adds per row instead of F^2.
template <int R, typename T>
__attribute__((target("avx2,fma"))) static inline void tile(const double *u, int64_t F, int64_t Fp, const T *f,
                                                            double *q)
{
  __m256d sq[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++) sq[r] = _mm256_setzero_pd();
  for (int64_t j0 = 0; j0 < Fp; j0 += kTileColumns) {
    const int64_t kend = std::min(F, j0 + kTileColumns);
    __m256d z0[R], z1[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) z0[r] = z1[r] = _mm256_setzero_pd();
    const double *uk = u + j0;
    for (int64_t k = 0; k < kend; k++, uk += Fp) {
      const __m256d u0 = _mm256_loadu_pd(uk), u1 = _mm256_loadu_pd(uk + 4);
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) {
        const __m256d x = _mm256_set1_pd(static_cast<double>(f[r * F + k]));
        z0[r] = _mm256_fmadd_pd(x, u0, z0[r]);
        z1[r] = _mm256_fmadd_pd(x, u1, z1[r]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      sq[r] = _mm256_fmadd_pd(z0[r], z0[r], sq[r]);
      sq[r] = _mm256_fmadd_pd(z1[r], z1[r], sq[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++) {
    alignas(32) double s[4];
    _mm256_store_pd(s, sq[r]);
    q[r] = (s[0] + s[1]) + (s[2] + s[3]);
  }
}

template <typename T>
__attribute__((target("avx2,fma"))) static void run(const double *u, int64_t F, int64_t Fp, const T *f, int64_t n,
                                                    double *q)
{
  int64_t i = 0;
  for (; i + kTileRows <= n; i += kTileRows) tile<kTileRows>(u, F, Fp, f + i * F, q + i);
  switch (n - i) {
    case 5: tile<5>(u, F, Fp, f + i * F, q + i); break;
    case 4: tile<4>(u, F, Fp, f + i * F, q + i); break;
    case 3: tile<3>(u, F, Fp, f + i * F, q + i); break;
    case 2: tile<2>(u, F, Fp, f + i * F, q + i); break;
    case 1: tile<1>(u, F, Fp, f + i * F, q + i); break;
    default: break;
  }
}
#endif

NativeHead::NativeHead(const double *u, int64_t n_features, const SigmaLaw &law) : F_(n_features), law_(law)
{
  Fp_ = (F_ + kTileColumns - 1) / kTileColumns * kTileColumns;
  if (!native_kernels_supported(&reason_)) return;
  if (F_ < 1 || u == nullptr) {
    reason_ = "no features";
    return;
  }
  // the kernel skips U's strict lower triangle: it must hold zeros only
  for (int64_t k = 1; k < F_; k++)
    for (int64_t j = 0; j < k; j++)
      if (u[k * F_ + j] != 0.0) {
        reason_ = "head.inverse_factor_t is not upper triangular";
        return;
      }
  u_.assign(static_cast<size_t>(F_ * Fp_), 0.0);
  for (int64_t k = 0; k < F_; k++) std::copy(u + k * F_, u + (k + 1) * F_, u_.begin() + k * Fp_);
  usable_ = true;
}

void NativeHead::quadratic_form(const double *features, int64_t n, double *q) const
{
#ifdef LLPR_X86_KERNELS
  if (usable_ && n > 0) run(u_.data(), F_, Fp_, features, n, q);
#endif
}

void NativeHead::quadratic_form(const float *features, int64_t n, double *q) const
{
#ifdef LLPR_X86_KERNELS
  if (usable_ && n > 0) run(u_.data(), F_, Fp_, features, n, q);
#endif
}

void NativeHead::local_uncertainty(const double *q, int64_t n, double *sigma, double *lpr) const
{
  if (sigma) {
    if (law_.power_law) {
      const double half = 0.5 * law_.sigma_power;
      for (int64_t i = 0; i < n; i++) sigma[i] = law_.sigma_scale * std::pow(q[i], half);
    } else {
      for (int64_t i = 0; i < n; i++) sigma[i] = law_.alpha * std::sqrt(q[i]);
    }
  }
  if (lpr)
    for (int64_t i = 0; i < n; i++) lpr[i] = 1.0 / q[i];
}

void NativeHead::extrapolation_grade(const double *q, int64_t n, double *gamma) const
{
  for (int64_t i = 0; i < n; i++) gamma[i] = q[i] / law_.max_train_q;
}

double NativeHead::energy_variance(double q) const
{
  if (law_.power_law) return law_.sigma_scale * law_.sigma_scale * std::pow(q, law_.sigma_power);
  return law_.alpha * law_.alpha * q;
}

}  // namespace llpr
