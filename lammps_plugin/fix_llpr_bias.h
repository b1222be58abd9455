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
// TauRelController does. The controller counts the MD steps it has seen itself (not the
// timestep number), so it carries over between runs, through reset_timestep and, stored in
// the restart file, through write_restart / read_restart: `run 50; run 50` is `run 100`.
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
  void write_restart(FILE *) override;
  void restart(char *) override;

  // Called by pair_style llpr on every rank after its forward pass: all-reduce the group's
  // features, take the energy sigma and its gradient from the model's head, run the backward
  // pass with the bias (plus, on measuring steps of `tau relative`, the unscaled one).
  void add_bias(PairLLPR *pair);

 private:
  PairLLPR *find_pair() const;
  void update_tau();

  double tau_ = 0.0;          // for the next MD step (dimensionless)
  double tau_used_ = 0.0;     // in the latest evaluation
  double sigma_cap_ = 0.0;    // energy units; 0: no cap
  bool relative_ = false;     // tau relative R
  double tau_relative_ = 0.0;
  int hist_ = 100, delay_ = -1, every_ = 10;

  // the latest biased evaluation (energy units)
  double sigma_ = 0.0, capped_ = 0.0, energy_ = 0.0;
  bigint evaluated_step_ = -1;  // -1: no evaluation by this fix yet (its outputs do not exist)

  // tau relative: the forces of the latest measuring step (total, and of the unscaled bias:
  // 3 values per local and ghost atom each, summed onto their owners by reverse communication)
  // and the running averages of their magnitudes over the group
  std::vector<double> total_forces_, bias_forces_;
  bool pending_average_ = false;  // the latest evaluation measured; post_force averages it
  double mean_force_ = 0.0, mean_bias_force_ = 0.0;

  // the controller's clock and the rest of its state (in the restart file): MD steps seen in
  // runs since the fix's first evaluation, counted from timestep differences so that a
  // timestep that goes back (reset_timestep) neither stops nor repeats the schedule
  bigint clock_ = 0;
  bigint last_step_ = -1;      // timestep of the latest evaluation (not stored: setup sets it)
  bool measured_ = false;      // the first measurement (at clock 0) is in
  bool continued_ = false;     // evaluated before: a run's setup re-evaluates the latest step

  std::vector<double> local_sum_, total_sum_, gradient_, cotangent_, unscaled_;
};

}  // namespace LAMMPS_NS
