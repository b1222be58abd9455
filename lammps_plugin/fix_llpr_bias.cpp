// fix llpr/bias (see fix_llpr_bias.h)

#include "fix_llpr_bias.h"

#include "pair_llpr.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "group.h"
#include "update.h"
#include "utils.h"

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstring>

using namespace LAMMPS_NS;
using namespace FixConst;

namespace {

const char *const kUsage =
    "fix ID group llpr/bias tau T [sigma_cap C], or fix ID group llpr/bias tau relative R [hist N] "
    "[delay D] [every M] [sigma_cap C]";

}  // namespace

FixLLPRBias::FixLLPRBias(LAMMPS *lmp, int narg, char **arg) : Fix(lmp, narg, arg)
{
  bool have_tau = false, have_controller_keyword = false;
  int iarg = 3;
  auto value = [&](const char *keyword) -> const char * {
    if (iarg + 1 >= narg)
      error->all(FLERR, "Illegal fix llpr/bias command: {} needs a value (expected {})", keyword, kUsage);
    return arg[iarg + 1];
  };
  while (iarg < narg) {
    if (strcmp(arg[iarg], "tau") == 0) {
      have_tau = true;
      if (strcmp(value("tau"), "relative") == 0) {
        relative_ = true;
        iarg++;
        tau_relative_ = utils::numeric(FLERR, value("tau relative"), false, lmp);
        if (!(tau_relative_ > 0.0))
          error->all(FLERR,
                     "fix llpr/bias: tau relative R sets the bias force to R times the mean force, so R must be "
                     "positive, got {}",
                     tau_relative_);
        tau_ = 0.0;  // unbiased until the first averages are in (the delay)
      } else {
        relative_ = false;
        tau_ = utils::numeric(FLERR, value("tau"), false, lmp);
        if (!(tau_ >= 0.0))
          error->all(FLERR,
                     "fix llpr/bias: tau must be zero or positive, got {}: E_b = E - tau sigma_E rewards "
                     "uncertainty for tau > 0, a negative tau would push the system towards what the model "
                     "knows (use tau 0 for no bias)",
                     tau_);
      }
    } else if (strcmp(arg[iarg], "sigma_cap") == 0) {
      sigma_cap_ = utils::numeric(FLERR, value("sigma_cap"), false, lmp);
      if (!(sigma_cap_ > 0.0))
        error->all(FLERR, "fix llpr/bias: sigma_cap must be a positive energy, got {} (leave it out for no cap)",
                   sigma_cap_);
    } else if (strcmp(arg[iarg], "hist") == 0) {
      hist_ = utils::inumeric(FLERR, value("hist"), false, lmp);
      have_controller_keyword = true;
      if (hist_ < 1) error->all(FLERR, "fix llpr/bias: hist must be at least 1 step, got {}", hist_);
    } else if (strcmp(arg[iarg], "delay") == 0) {
      delay_ = utils::inumeric(FLERR, value("delay"), false, lmp);
      have_controller_keyword = true;
      if (delay_ < 0) error->all(FLERR, "fix llpr/bias: delay must be zero or positive, got {}", delay_);
    } else if (strcmp(arg[iarg], "every") == 0) {
      every_ = utils::inumeric(FLERR, value("every"), false, lmp);
      have_controller_keyword = true;
      if (every_ < 1) error->all(FLERR, "fix llpr/bias: every must be at least 1 step, got {}", every_);
    } else {
      error->all(FLERR, "Illegal fix llpr/bias command: unknown keyword {} (expected {})", arg[iarg], kUsage);
    }
    iarg += 2;
  }
  if (!have_tau) error->all(FLERR, "Illegal fix llpr/bias command: tau is required (expected {})", kUsage);
  if (have_controller_keyword && !relative_)
    error->all(FLERR, "fix llpr/bias: hist, delay and every set how `tau relative R` adapts tau; with a fixed tau "
                      "they would do nothing: leave them out, or use tau relative R");
  if (delay_ < 0) delay_ = hist_;
  // an empty dynamic group would otherwise be reported as "no atoms" at init
  if (group->dynamic[igroup])
    error->all(FLERR, "fix llpr/bias: group {} is dynamic; dynamic groups are not supported (the bias is the "
                      "uncertainty of a fixed set of atoms): use a static group",
               group->names[igroup]);

  scalar_flag = 1;  // E_bias
  extscalar = 1;
  vector_flag = 1;
  size_vector = relative_ ? 5 : 3;
  extvector = 0;
  global_freq = 1;
  energy_global_flag = 1;  // fix_modify energy yes adds E_bias to pe
  // the bias virial comes out of pair_style llpr's backward pass with the model's and is part of
  // the pair style's virial; this fix's own contribution is zero (see init())
  virial_global_flag = 1;
  thermo_virial = 1;
  for (double &v : virial) v = 0.0;
  comm_reverse = relative_ ? 6 : 0;
  restart_global = relative_ ? 1 : 0;  // the controller's state goes into restart files
}

FixLLPRBias::~FixLLPRBias()
{
  // the pair style must not call a deleted fix
  if (force && force->pair) {
    auto pair = dynamic_cast<PairLLPR *>(force->pair_match("llpr", 1, 0));
    if (pair && pair->bias() == this) pair->set_bias(nullptr);
  }
}

int FixLLPRBias::setmask()
{
  return POST_FORCE;
}

PairLLPR *FixLLPRBias::find_pair() const
{
  auto pair = dynamic_cast<PairLLPR *>(force->pair_match("llpr", 1, 0));
  if (!pair)
    error->all(FLERR, "fix llpr/bias requires pair_style llpr (alone, or as the only llpr sub-style of pair_style "
                      "hybrid): the bias is the uncertainty of that model's energy");
  return pair;
}

void FixLLPRBias::init()
{
  PairLLPR *pair = find_pair();
  if (pair->bias() && pair->bias() != this)
    error->all(FLERR, "fix llpr/bias {}: fix llpr/bias {} already biases pair_style llpr; use one fix llpr/bias "
                      "(its group can hold all the atoms to bias)",
               id, pair->bias()->id);
  if (group->dynamic[igroup])
    error->all(FLERR, "fix llpr/bias: group {} is dynamic; dynamic groups are not supported (the bias is the "
                      "uncertainty of a fixed set of atoms): use a static group",
               group->names[igroup]);
  if (update->whichflag == 1 && utils::strmatch(update->integrate_style, "^respa"))
    error->all(FLERR, "fix llpr/bias: run_style {} is not supported (the bias is added in pair_style llpr's "
                      "evaluation and the tau relative controller runs in post_force, which rRESPA does not "
                      "call); use run_style verlet",
               update->integrate_style);
  if (group->count(igroup) == 0)
    error->all(FLERR, "fix llpr/bias: group {} has no atoms; the bias is the uncertainty of that group's energy",
               group->names[igroup]);
  if (!thermo_virial)
    error->all(FLERR, "fix llpr/bias: fix_modify virial no is not available: the bias virial comes out of the "
                      "same backward pass as the model's and is part of pair_style llpr's virial, so the "
                      "pressure always includes it");
  // the minimizer takes the energy from pe: without E_bias in it, the energy a line search sees
  // does not decrease along the biased forces, and it stops at its first step
  if (update->whichflag == 2 && tau_ != 0.0 && !thermo_energy)
    error->all(FLERR, "fix llpr/bias {}: minimize with a bias (tau {}) needs `fix_modify {} energy yes`: the "
                      "minimizer's energy is pe, which without E_bias is not the energy whose gradient the biased "
                      "forces are (a line search would stop at once, and every style would test convergence on "
                      "the wrong energy); add fix_modify {} energy yes (or unfix {} to minimize the model's own "
                      "energy)",
               id, tau_, id, id, id);
  pair->set_bias(this);
}

void FixLLPRBias::setup(int vflag)
{
  post_force(vflag);
}

/* ----------------------------------------------------------------------
   called by pair_style llpr between its forward and backward passes, on every rank
------------------------------------------------------------------------- */

void FixLLPRBias::add_bias(PairLLPR *pair)
{
  // S: the group's features summed on each rank, then over the ranks (with the number of the
  // group's atoms that the model evaluated, in the same reduction)
  const int F = pair->n_features();
  pair->group_feature_sum(groupbit, local_sum_);
  local_sum_.push_back(static_cast<double>(pair->group_centres(groupbit)));
  total_sum_.assign(F + 1, 0.0);
  MPI_Allreduce(local_sum_.data(), total_sum_.data(), F + 1, MPI_DOUBLE, MPI_SUM, world);
  if (total_sum_[F] == 0.0)
    error->all(FLERR,
               "fix llpr/bias: none of the atoms of group {} is evaluated by pair_style llpr on timestep {} (the "
               "group is empty, or its atoms' types are NULL in pair_coeff); the bias needs the uncertainty of "
               "their energy",
               group->names[igroup], update->ntimestep);
  total_sum_.resize(F);

  const double conv = pair->energy_conversion();
  double sigma = 0.0, capped = 0.0;
  pair->bias_sigma("fix llpr/bias", total_sum_, sigma_cap_ / conv, sigma, capped, gradient_);
  sigma_ = conv * sigma;
  capped_ = conv * capped;

  // the controller's clock advances by the MD steps since the latest evaluation (only in the
  // steps of a run, never in a setup: a timestep that went back leaves the clock where it is).
  // A run's setup re-evaluates the latest step, with that step's tau and without measuring it
  // again, unless the controller has not measured at all: `run 50; run 50` is `run 100`.
  const bool in_run = update->whichflag == 1, in_setup = update->setupflag != 0;
  bool new_step = false;
  if (in_run && !in_setup && update->ntimestep != last_step_) {
    // a step of the run: one step on from the latest evaluation (a timestep behind it can only
    // follow a reset_timestep whose run skipped its setup, `run N pre no`: still one step)
    clock_ += (last_step_ >= 0 && update->ntimestep > last_step_) ? update->ntimestep - last_step_ : 1;
    new_step = true;
  }
  last_step_ = update->ntimestep;
  const double tau = (in_run && in_setup && continued_) ? tau_used_ : tau_;
  const bool measure = relative_ && in_run && (in_setup ? !measured_ : (new_step && clock_ % every_ == 0));

  energy_ = -tau * capped_;
  tau_used_ = tau;
  // E_b = E - tau s(S): the group's read-out shifts by d(-tau s)/dS (model units)
  cotangent_.resize(F);
  for (int k = 0; k < F; k++) cotangent_[k] = -tau * gradient_[k];
  if (measure) {
    unscaled_.resize(F);
    for (int k = 0; k < F; k++) unscaled_[k] = -gradient_[k];
  }
  pair->biased_backward(groupbit, cotangent_, measure ? &unscaled_ : nullptr, total_forces_, bias_forces_);
  pending_average_ = measure;
  evaluated_step_ = update->ntimestep;
  continued_ = true;
}

/* ----------------------------------------------------------------------
   tau relative: after the reverse communication of the forces
------------------------------------------------------------------------- */

void FixLLPRBias::post_force(int /*vflag*/)
{
  // each measurement is averaged once (the setup of a run calls this again)
  if (!relative_ || !pending_average_) return;
  pending_average_ = false;
  // the ghosts' parts of both force arrays onto their owners
  comm->reverse_comm(this);
  update_tau();
}

void FixLLPRBias::update_tau()
{
  // mean magnitudes over the group's atoms of the model's own force and of the bias force per
  // unit tau (ACEHAL's TauRelController: exponential running averages over `hist` steps)
  const int *mask = atom->mask;
  double local[3] = {0.0, 0.0, 0.0}, total[3] = {0.0, 0.0, 0.0};
  for (int i = 0; i < atom->nlocal; i++) {
    if (!(mask[i] & groupbit)) continue;
    const double *f = &total_forces_[3 * static_cast<size_t>(i)];
    const double *g = &bias_forces_[3 * static_cast<size_t>(i)];
    const double m[3] = {f[0] - tau_used_ * g[0], f[1] - tau_used_ * g[1], f[2] - tau_used_ * g[2]};
    local[0] += std::sqrt(m[0] * m[0] + m[1] * m[1] + m[2] * m[2]);
    local[1] += std::sqrt(g[0] * g[0] + g[1] * g[1] + g[2] * g[2]);
    local[2] += 1.0;
  }
  MPI_Allreduce(local, total, 3, MPI_DOUBLE, MPI_SUM, world);
  if (total[2] == 0.0) return;  // no atom of the group left: nothing to average
  const double force = total[0] / total[2], bias = total[1] / total[2];
  if (!measured_) {
    mean_force_ = force;
    mean_bias_force_ = bias;
    measured_ = true;
  } else {
    const double mixing = std::min(1.0, static_cast<double>(every_) / hist_);
    mean_force_ = (1.0 - mixing) * mean_force_ + mixing * force;
    mean_bias_force_ = (1.0 - mixing) * mean_bias_force_ + mixing * bias;
  }
  // a group whose sigma does not change with the positions has no bias force to scale
  if (clock_ >= delay_ && mean_bias_force_ > 0.0)
    tau_ = tau_relative_ * mean_force_ / mean_bias_force_;
}

int FixLLPRBias::pack_reverse_comm(int n, int first, double *buf)
{
  int m = 0;
  for (int i = first; i < first + n; i++) {
    const size_t k = 3 * static_cast<size_t>(i);
    for (int c = 0; c < 3; c++) buf[m++] = total_forces_[k + c];
    for (int c = 0; c < 3; c++) buf[m++] = bias_forces_[k + c];
  }
  return m;
}

void FixLLPRBias::unpack_reverse_comm(int n, int *list, double *buf)
{
  int m = 0;
  for (int i = 0; i < n; i++) {
    const size_t k = 3 * static_cast<size_t>(list[i]);
    for (int c = 0; c < 3; c++) total_forces_[k + c] += buf[m++];
    for (int c = 0; c < 3; c++) bias_forces_[k + c] += buf[m++];
  }
}

/* ---------------------------------------------------------------------- */

double FixLLPRBias::compute_scalar()
{
  if (evaluated_step_ < 0)
    error->all(FLERR, "fix llpr/bias {}: no biased force evaluation yet; its values exist during a run (or after "
                      "`run 0`)",
               id);
  return energy_;
}

double FixLLPRBias::compute_vector(int n)
{
  if (evaluated_step_ < 0)
    error->all(FLERR, "fix llpr/bias {}: no biased force evaluation yet; its values exist during a run (or after "
                      "`run 0`)",
               id);
  switch (n) {
    case 0: return sigma_;
    case 1: return tau_used_;
    case 2: return capped_;
    case 3: return mean_force_;
    case 4: return mean_bias_force_;
    default: return 0.0;
  }
}

double FixLLPRBias::memory_usage()
{
  const size_t n = total_forces_.capacity() + bias_forces_.capacity() + local_sum_.capacity() +
                   total_sum_.capacity() + gradient_.capacity() + cotangent_.capacity() + unscaled_.capacity();
  return static_cast<double>(n) * sizeof(double);
}

/* ----------------------------------------------------------------------
   restart files: the controller's state, so that a restarted run goes on as the run that wrote
   the file (positions and velocities are in the file already)
------------------------------------------------------------------------- */

namespace {
constexpr double kRestartFormat = 1.0;
constexpr int kRestartSize = 9;
}  // namespace

void FixLLPRBias::write_restart(FILE *fp)
{
  const double list[kRestartSize] = {kRestartFormat,
                                     relative_ ? 1.0 : 0.0,
                                     tau_,
                                     tau_used_,
                                     mean_force_,
                                     mean_bias_force_,
                                     static_cast<double>(clock_),
                                     measured_ ? 1.0 : 0.0,
                                     continued_ ? 1.0 : 0.0};
  if (comm->me == 0) {
    const int size = kRestartSize * sizeof(double);
    fwrite(&size, sizeof(int), 1, fp);
    fwrite(list, sizeof(double), kRestartSize, fp);
  }
}

void FixLLPRBias::restart(char *buf)
{
  const auto *list = reinterpret_cast<const double *>(buf);
  if (list[0] != kRestartFormat)
    error->all(FLERR, "fix llpr/bias {}: the restart file holds its state in an unknown format ({}); it was "
                      "written by another version of the llpr plugin",
               id, list[0]);
  // a fixed tau has no state: the new command's tau holds
  if (!relative_ || list[1] != 1.0) {
    if (comm->me == 0)
      error->warning(FLERR, "fix llpr/bias {}: the restart file holds the state of a tau relative controller, "
                            "which a fixed tau does not use",
                     id);
    return;
  }
  tau_ = list[2];
  tau_used_ = list[3];
  mean_force_ = list[4];
  mean_bias_force_ = list[5];
  clock_ = static_cast<bigint>(list[6]);
  measured_ = list[7] != 0.0;
  continued_ = list[8] != 0.0;
}
