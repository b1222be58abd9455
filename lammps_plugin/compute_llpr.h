// compute ID group llpr/atom : per-atom array [sigma_i (energy units), LPR_i]
// compute ID group llpr      : global vector [sigma of the group's total energy,
//                                             max sigma_i in the group, atom ID of that atom]
// Both use the features that pair_style llpr cached during the force evaluation of the
// current timestep (no extra model evaluation).
#pragma once

#include "compute.h"

#include <vector>

namespace LAMMPS_NS {

class PairLLPR;

class ComputeLLPRAtom : public Compute {
 public:
  ComputeLLPRAtom(class LAMMPS *, int, char **);
  ~ComputeLLPRAtom() override;
  void init() override;
  void compute_peratom() override;
  double memory_usage() override;

 private:
  int nmax_ = 0;
  double **values_ = nullptr;
};

class ComputeLLPR : public Compute {
 public:
  ComputeLLPR(class LAMMPS *, int, char **);
  ~ComputeLLPR() override;
  void init() override;
  void compute_vector() override;

 private:
  std::vector<double> local_sum_, total_sum_;
};

}  // namespace LAMMPS_NS
