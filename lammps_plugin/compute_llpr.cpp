// compute llpr/atom and compute llpr (see compute_llpr.h)

#include "compute_llpr.h"

#include "pair_llpr.h"

#include "atom.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "update.h"

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
  if (narg != 3) error->all(FLERR, "Illegal compute llpr/atom command: expected compute ID group llpr/atom");
  peratom_flag = 1;
  size_peratom_cols = 2;
}

ComputeLLPRAtom::~ComputeLLPRAtom()
{
  memory->destroy(values_);
}

void ComputeLLPRAtom::init()
{
  find_pair(lmp, "llpr/atom");
}

void ComputeLLPRAtom::compute_peratom()
{
  invoked_peratom = update->ntimestep;
  PairLLPR *pair = find_pair(lmp, "llpr/atom");
  pair->require_current_features("compute llpr/atom");
  pair->update_uncertainty();

  if (atom->nmax > nmax_) {
    memory->destroy(values_);
    nmax_ = atom->nmax;
    memory->create(values_, nmax_, 2, "llpr/atom:values");
    array_atom = values_;
  }
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
}

double ComputeLLPRAtom::memory_usage()
{
  return 2.0 * nmax_ * sizeof(double);
}

/* ---------------------------------------------------------------------- */

ComputeLLPR::ComputeLLPR(LAMMPS *lmp, int narg, char **arg) : Compute(lmp, narg, arg)
{
  if (narg != 3) error->all(FLERR, "Illegal compute llpr command: expected compute ID group llpr");
  if (atom->tag_enable == 0) error->all(FLERR, "compute llpr requires atom IDs");
  vector_flag = 1;
  size_vector = 3;
  extvector = 0;
  vector = new double[3];
  vector[0] = vector[1] = vector[2] = 0.0;
}

ComputeLLPR::~ComputeLLPR()
{
  delete[] vector;
}

void ComputeLLPR::init()
{
  find_pair(lmp, "llpr");
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
