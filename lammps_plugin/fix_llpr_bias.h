// fix llpr/bias: molecular dynamics biased towards configurations the model is unsure of.
//
//   fix ID group llpr/bias tau T [sigma_cap C]
//   fix ID group llpr/bias tau relative R [hist N] [delay D] [every M] [sigma_cap C]
//
// The biased energy is E_b = E - tau s(sigma_E), sigma_E the LLPR uncertainty of the group's
// energy and s(sigma) = sigma, or C tanh(sigma / C) with a cap. Its forces need no extra
// backward pass: with S the group's summed features, d s / d S is F numbers, so pair_style
// llpr runs its backward pass with the read-out of the group's atoms shifted by
// -tau d s / d S. The fix sums S over the ranks between the forward and the backward pass
// (add_bias, called by the pair style), so the result does not depend on the decomposition.
// With `tau relative R`, tau follows R <|F|> / <|F_bias / tau|> (running averages over the
// group's atoms, measured every M steps with one extra backward pass), as ACEHAL's
// TauRelController does.
#pragma once

#include "fix.h"

#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairLLPR;

class FixLLPRBias : public Fix {
 public:
  FixLLPRBias(class LAMMPS *, int, char **);
  ~FixLLPRBias() override;
  int setmask() override;
  void init() override;
  void setup(int) override;
  void post_force(int) override;
  double compute_scalar() override;
  double compute_vector(int) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  double memory_usage() override;

  // Called by pair_style llpr on every rank after its forward pass: all-reduce the group's
  // features, take the energy sigma and its gradient from the model's head, run the backward
  // pass with the bias (plus, on measuring steps of `tau relative`, the unscaled one).
  void add_bias(PairLLPR *pair);

 private:
  PairLLPR *find_pair() const;
  void update_tau();

  double tau_ = 0.0;          // for the next evaluation (dimensionless)
  double tau_used_ = 0.0;     // in the latest evaluation
  double sigma_cap_ = 0.0;    // energy units; 0: no cap
  bool relative_ = false;     // tau relative R
  double tau_relative_ = 0.0;
  int hist_ = 100, delay_ = -1, every_ = 10;

  // the latest biased evaluation (energy units)
  double sigma_ = 0.0, capped_ = 0.0, energy_ = 0.0;
  bigint evaluated_step_ = -1;

  // tau relative: the forces of the latest measuring step (total, and of the unscaled bias:
  // 3 values per local and ghost atom each, summed onto their owners by reverse communication)
  // and the running averages of their magnitudes over the group
  std::vector<double> total_forces_, bias_forces_;
  bigint measured_step_ = -1;
  bigint averaged_step_ = -1;  // a step measured once is averaged once (setup of a second run)
  bigint first_measure_ = -1;
  double mean_force_ = 0.0, mean_bias_force_ = 0.0;

  std::vector<double> local_sum_, total_sum_, gradient_, cotangent_, unscaled_;
};

}  // namespace LAMMPS_NS
