// compute llpr/atom and compute llpr (see compute_llpr.h)

#include "compute_llpr.h"

#include "pair_llpr.h"

#include "llpr/core.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "group.h"
#include "memory.h"
#include "update.h"
#include "utils.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <mpi.h>

using namespace LAMMPS_NS;

namespace {

PairLLPR *find_pair(LAMMPS *lmp, const char *who)
{
  auto pair = dynamic_cast<PairLLPR *>(lmp->force->pair_match("llpr", 1, 0));
  if (!pair)
    lmp->error->all(FLERR,
                    "compute {} requires pair_style llpr (alone, or as the only llpr sub-style "
                    "of pair_style hybrid)",
                    who);
  return pair;
}

}  // namespace

/* ---------------------------------------------------------------------- */

ComputeLLPRAtom::ComputeLLPRAtom(LAMMPS *lmp, int narg, char **arg) : Compute(lmp, narg, arg)
{
  const char *usage = "compute ID group llpr/atom [forces yes|no] [gamma yes|no]";
  for (int iarg = 3; iarg < narg; iarg += 2) {
    bool *flag = strcmp(arg[iarg], "forces") == 0 ? &forces_ : strcmp(arg[iarg], "gamma") == 0 ? &gamma_ : nullptr;
    if (flag) {
      if (iarg + 1 >= narg)
        error->all(FLERR, "Illegal compute llpr/atom command: {} needs yes or no (expected {})", arg[iarg], usage);
      *flag = utils::logical(FLERR, arg[iarg + 1], false, lmp) == 1;
    } else {
      error->all(FLERR, "Illegal compute llpr/atom command: unknown keyword {} (expected {})", arg[iarg],
                 usage);
    }
  }
  peratom_flag = 1;
  // appended columns keep the earlier ones where they were: [3] force sigma (forces yes), then gamma
  ncols_ = 2 + (forces_ ? 1 : 0) + (gamma_ ? 1 : 0);
  gamma_col_ = gamma_ ? ncols_ - 1 : -1;
  size_peratom_cols = ncols_;
  comm_reverse = forces_ ? 3 : 0;
}

ComputeLLPRAtom::~ComputeLLPRAtom()
{
  memory->destroy(values_);
}

void ComputeLLPRAtom::init()
{
  PairLLPR *pair = find_pair(lmp, "llpr/atom");
  if (forces_ && pair->ensemble_size() == 0)
    error->all(FLERR, "compute llpr/atom forces yes: the model file {}",
               llpr::no_ensemble_message(pair->model_path()));
  if (gamma_) pair->require_extrapolation_grade("compute llpr/atom gamma yes");
}

void ComputeLLPRAtom::compute_peratom()
{
  invoked_peratom = update->ntimestep;
  PairLLPR *pair = find_pair(lmp, "llpr/atom");
  pair->require_current_features("compute llpr/atom");
  pair->update_uncertainty();

  if (atom->nmax > nmax_ || !values_) {
    memory->destroy(values_);
    nmax_ = atom->nmax > 1 ? atom->nmax : 1;
    memory->create(values_, nmax_, ncols_, "llpr/atom:values");
    // rows of atoms that appear later (create_atoms) must never show uninitialised memory
    std::fill(&values_[0][0], &values_[0][0] + static_cast<size_t>(nmax_) * ncols_, 0.0);
    forces_evaluation_ = -1;  // column [3] is gone with the old array
  }
  array_atom = values_;
  const int nlocal = atom->nlocal;
  const int *mask = atom->mask;
  const double *sigma = pair->sigma_atom();
  const double *lpr = pair->lpr_atom();
  for (int i = 0; i < nlocal; i++) {
    if (mask[i] & groupbit) {
      values_[i][0] = sigma[i];
      values_[i][1] = lpr[i];
    } else {
      values_[i][0] = 0.0;
      values_[i][1] = 0.0;
    }
  }
  if (gamma_) {
    pair->update_extrapolation_grade("compute llpr/atom gamma yes");
    const double *gamma = pair->gamma_atom();
    for (int i = 0; i < nlocal; i++) values_[i][gamma_col_] = (mask[i] & groupbit) ? gamma[i] : 0.0;
  }
  if (!forces_) return;
  // several outputs on one step (each dump, the thermo output) call this compute again: the
  // force sigma of the same force evaluation is still in column [3]
  // (decided together: the recomputation communicates)
  int fresh = (forces_evaluation_ == pair->evaluations() && forces_nlocal_ == nlocal) ? 1 : 0, all_fresh = 0;
  MPI_Allreduce(&fresh, &all_fresh, 1, MPI_INT, MPI_MIN, world);
  if (all_fresh) return;

  // force sigma_i = sqrt(sum_k |F_k,i - F_i|^2 / (3 (K - 1))): member force deviations on local
  // and ghost atoms, the ghosts' parts summed onto their owners (reverse communication, one
  // member at a time), then the spread over the members. This is the one uncertainty formula
  // written in C++, because it must run after the reverse communication; its Python twin is
  // llpr.uncertainty.propagation.force_sigma (LLPRHead.force_sigma), which tests compare it with.
  pair->ensemble_force_deviations("compute llpr/atom forces yes", dforce_);
  const int K = pair->ensemble_size();
  nall_ = atom->nlocal + atom->nghost;
  for (member_ = 0; member_ < K; member_++) comm->reverse_comm(this);
  for (int i = 0; i < nlocal; i++) {
    if (!(mask[i] & groupbit) || K < 2) {
      values_[i][2] = 0.0;
      continue;
    }
    double acc = 0.0;
    for (int k = 0; k < K; k++) {
      const double *d = &dforce_[(static_cast<size_t>(k) * nall_ + i) * 3];
      acc += d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
    }
    values_[i][2] = std::sqrt(acc / (3.0 * (K - 1)));
  }
  forces_evaluation_ = pair->evaluations();
  forces_nlocal_ = nlocal;
}

int ComputeLLPRAtom::pack_reverse_comm(int n, int first, double *buf)
{
  const double *d = &dforce_[static_cast<size_t>(member_) * nall_ * 3];
  int m = 0;
  for (int i = first; i < first + n; i++) {
    buf[m++] = d[3 * i + 0];
    buf[m++] = d[3 * i + 1];
    buf[m++] = d[3 * i + 2];
  }
  return m;
}

void ComputeLLPRAtom::unpack_reverse_comm(int n, int *list, double *buf)
{
  double *d = &dforce_[static_cast<size_t>(member_) * nall_ * 3];
  int m = 0;
  for (int i = 0; i < n; i++) {
    const int j = list[i];
    d[3 * j + 0] += buf[m++];
    d[3 * j + 1] += buf[m++];
    d[3 * j + 2] += buf[m++];
  }
}

double ComputeLLPRAtom::memory_usage()
{
  return static_cast<double>(ncols_) * nmax_ * sizeof(double) + dforce_.capacity() * sizeof(double);
}

/* ---------------------------------------------------------------------- */

ComputeLLPR::ComputeLLPR(LAMMPS *lmp, int narg, char **arg) : Compute(lmp, narg, arg)
{
  const char *usage = "compute ID group llpr [ensemble yes|no] [virial yes|no] [max yes|no]";
  for (int iarg = 3; iarg < narg; iarg += 2) {
    bool *flag = strcmp(arg[iarg], "ensemble") == 0 ? &ensemble_
                 : strcmp(arg[iarg], "virial") == 0 ? &virial_
                 : strcmp(arg[iarg], "max") == 0    ? &max_
                                                    : nullptr;
    if (!flag) error->all(FLERR, "Illegal compute llpr command: unknown keyword {} (expected {})", arg[iarg], usage);
    if (iarg + 1 >= narg)
      error->all(FLERR, "Illegal compute llpr command: {} needs yes or no (expected {})", arg[iarg], usage);
    *flag = utils::logical(FLERR, arg[iarg + 1], false, lmp) == 1;
  }
  offset_ = max_ ? 3 : 1;
  if (atom->tag_enable == 0) error->all(FLERR, "compute llpr requires atom IDs");
  if (virial_ && !ensemble_)
    error->all(FLERR, "compute llpr: virial yes adds the ensemble members' pressures next to their energies; "
                      "use ensemble yes virial yes");
  if (virial_ && igroup != 0)
    error->all(FLERR, "compute llpr virial yes: the members' virial is that of the whole system (as in compute "
                      "pressure), not of group {}; use group all for it (the energy deviations of a group need "
                      "only ensemble yes)",
               group->names[igroup]);
  if (ensemble_) {
    // the vector's length is K: it must be known now, for thermo_style and fix ave/time
    auto pair = dynamic_cast<PairLLPR *>(force->pair_match("llpr", 1, 0));
    if (!pair)
      error->all(FLERR, "compute llpr ensemble yes needs pair_style llpr defined first: its vector holds one "
                        "value per member of the model file's ensemble; put the compute after pair_style");
    members_ = pair->ensemble_size();
    model_path_ = pair->model_path();
    if (members_ == 0)
      error->all(FLERR, "compute llpr ensemble yes: the model file {}",
                 llpr::no_ensemble_message(model_path_, "member energy deviations"));
  }
  const int K = members_, o = offset_;
  vector_flag = 1;
  size_vector = o + K + (virial_ ? 7 * K : 0);
  vector = new double[size_vector];
  std::fill(vector, vector + size_vector, 0.0);
  // the members' energy deviations are extensive like pe (thermo_modify norm yes divides both)
  extvector = -1;
  extlist = new int[size_vector];
  std::fill(extlist, extlist + size_vector, 0);
  std::fill(extlist + o, extlist + o + K, 1);
  if (ensemble_ && comm->me == 0) {
    // the layout, in the log for the reader (fix llpr/record takes it from the compute itself)
    std::string text = fmt::format("llpr: compute {} (group {}): {} members; dE_k in c_{}[{}]..c_{}[{}]", id,
                                   group->names[igroup], K, id, o + 1, id, o + K);
    if (virial_)
      text += fmt::format("; dP_k in c_{}[{}]..c_{}[{}]; pressure tensor deviations (xx yy zz xy xz yz per member) "
                          "in c_{}[{}]..c_{}[{}]",
                          id, o + K + 1, id, o + 2 * K, id, o + 2 * K + 1, id, o + 8 * K);
    utils::logmesg(lmp, text + "\n");
  }
}

ComputeLLPR::~ComputeLLPR()
{
  delete[] vector;
  delete[] extlist;
}

void ComputeLLPR::init()
{
  PairLLPR *pair = find_pair(lmp, "llpr");
  if (ensemble_ && pair->ensemble_size() != members_)
    error->all(FLERR,
               "compute {} llpr ensemble yes: its vector was laid out for the {} members of {}, but pair_style "
               "llpr now runs {} with {} members; define the compute again after pair_style (uncompute {}, then "
               "compute)",
               id, members_, model_path_, pair->model_path(), pair->ensemble_size(), id);
  virial_evaluation_ = -1;
}

double ComputeLLPR::memory_usage()
{
  const size_t n = local_sum_.capacity() + total_sum_.capacity() + energy_dev_.capacity() +
                   virial_local_.capacity() + virial_total_.capacity() + pressure_dev_.capacity();
  return static_cast<double>(n + 2 * static_cast<size_t>(size_vector)) * sizeof(double);
}

void ComputeLLPR::compute_virial_deviations(PairLLPR *pair)
{
  const int K = members_;
  // several consumers on one step (thermo, fix ave/time) share one re-run of the model
  if (virial_evaluation_ != pair->evaluations()) {
    pair->ensemble_virial_deviations("compute llpr virial yes", virial_local_);
    virial_total_.assign(virial_local_.size(), 0.0);
    MPI_Allreduce(virial_local_.data(), virial_total_.data(), static_cast<int>(virial_local_.size()), MPI_DOUBLE,
                  MPI_SUM, world);
    // as compute pressure: P_ab = nktv2p W_ab / V; the kinetic part is the same for every member
    const bool two_d = domain->dimension == 2;
    const double volume = two_d ? domain->xprd * domain->yprd : domain->xprd * domain->yprd * domain->zprd;
    const double scale = force->nktv2p / volume;
    static const int vidx[6] = {0, 4, 8, 1, 2, 5};  // LAMMPS order xx, yy, zz, xy, xz, yz
    pressure_dev_.assign(static_cast<size_t>(7) * K, 0.0);
    for (int k = 0; k < K; k++) {
      const double *w = &virial_total_[static_cast<size_t>(9) * k];
      double *t = &pressure_dev_[static_cast<size_t>(K) + 6 * k];
      for (int c = 0; c < 6; c++) t[c] = scale * w[vidx[c]];
      pressure_dev_[k] = two_d ? (t[0] + t[1]) / 2.0 : (t[0] + t[1] + t[2]) / 3.0;
    }
    virial_evaluation_ = pair->evaluations();
  }
  std::copy(pressure_dev_.begin(), pressure_dev_.end(), vector + offset_ + K);
}

void ComputeLLPR::compute_vector()
{
  invoked_vector = update->ntimestep;
  PairLLPR *pair = find_pair(lmp, "llpr");
  pair->require_current_features("compute llpr");

  // [1] sigma of the group's total energy: sum the features over the group on every rank,
  //     add them up over all ranks, then take the quadratic form once
  pair->group_feature_sum(groupbit, local_sum_);
  total_sum_.assign(local_sum_.size(), 0.0);
  MPI_Allreduce(local_sum_.data(), total_sum_.data(), static_cast<int>(local_sum_.size()), MPI_DOUBLE,
                MPI_SUM, world);
  vector[0] = pair->energy_sigma(total_sum_);
  if (max_) max_sigma(pair);
  if (!ensemble_) return;

  // [o+1 .. o+K] member energy deviations dE_k = dw_k . s of the same all-reduced sum (an
  // empty group's s is 0, so are its dE_k); one (K x F) product, by the model file's LLPR head
  pair->ensemble_energy_deviations("compute llpr ensemble yes", total_sum_, energy_dev_);
  std::copy(energy_dev_.begin(), energy_dev_.end(), vector + offset_);
  if (virial_) compute_virial_deviations(pair);
}

void ComputeLLPR::max_sigma(PairLLPR *pair)
{
  // [2], [3] largest sigma_i in the group and the ID of its atom (lowest ID on ties)
  pair->update_uncertainty();
  const double *sigma = pair->sigma_atom();
  const int *mask = atom->mask;
  const tagint *tag = atom->tag;
  struct {
    double value;
    int id;
  } mine{-1.0, 0}, best{-1.0, 0};
  for (int i = 0; i < atom->nlocal; i++) {
    if (!(mask[i] & groupbit)) continue;
    const int id = static_cast<int>(tag[i]);
    if (sigma[i] > mine.value || (sigma[i] == mine.value && id < mine.id)) {
      mine.value = sigma[i];
      mine.id = id;
    }
  }
  MPI_Allreduce(&mine, &best, 1, MPI_DOUBLE_INT, MPI_MAXLOC, world);
  vector[1] = best.value < 0.0 ? 0.0 : best.value;
  vector[2] = best.value < 0.0 ? 0.0 : static_cast<double>(best.id);
}
