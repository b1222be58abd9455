// compute ID group llpr/atom [forces yes|no] [gamma yes|no]
//                            : per-atom array [sigma_i (energy units), LPR_i] and, with
//                              forces yes, [force sigma_i (force units)] from the model
//                              file's last-layer ensemble, then, with gamma yes, [gamma_i]
//                              (extrapolation grade q_i / max_train_q)
// compute ID group llpr [ensemble yes|no] [virial yes|no] [max yes|no]
//                            : global vector [sigma of the group's total energy,
//                                             max sigma_i in the group, atom ID of that atom
//                                             (these two not with max no)]
//                              and, with ensemble yes, the K members' energy deviations dE_k of
//                              the group; with virial yes (group all), the members' pressure
//                              deviations dP_k and pressure tensor deviations (6 per member)
// Both use the features that pair_style llpr cached during the force evaluation of the
// current timestep (no extra model evaluation), except the force sigma: on the steps where
// compute llpr/atom forces yes is invoked, the model is run once more on the inputs cached by
// that force evaluation, with the ensemble's member gradients.
#pragma once

#include "compute.h"

#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairLLPR;

class ComputeLLPRAtom : public Compute {
 public:
  ComputeLLPRAtom(class LAMMPS *, int, char **);
  ~ComputeLLPRAtom() override;
  void init() override;
  void compute_peratom() override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  double memory_usage() override;

 private:
  int nmax_ = 0;
  double **values_ = nullptr;
  int ncols_ = 2;
  bool forces_ = false;
  bool gamma_ = false;
  int gamma_col_ = -1;  // column index of gamma_i (gamma yes)
  // force sigma: member force deviations (K x nall x 3), reverse-communicated one member at a
  // time (3 values per atom, which every LAMMPS communication buffer holds)
  std::vector<double> dforce_;
  int nall_ = 0;
  int member_ = 0;
  // the force evaluation (PairLLPR::evaluations()) and nlocal column [3] was computed for
  bigint forces_evaluation_ = -1;
  int forces_nlocal_ = -1;
};

class ComputeLLPR : public Compute {
 public:
  ComputeLLPR(class LAMMPS *, int, char **);
  ~ComputeLLPR() override;
  void init() override;
  void compute_vector() override;
  double memory_usage() override;

  // the vector's layout, for fix llpr/record: K members' dE_k from element deviation_offset()
  // (0-based), then with virial yes K dP_k and 6 K pressure tensor deviations
  bool ensemble() const { return ensemble_; }
  bool virial() const { return virial_; }
  int members() const { return members_; }
  int deviation_offset() const { return offset_; }

 private:
  void compute_virial_deviations(PairLLPR *pair);
  void max_sigma(PairLLPR *pair);

  bool ensemble_ = false;
  bool virial_ = false;
  bool max_ = true;         // elements [2], [3]: they need every atom's sigma_i
  int offset_ = 3;          // elements before the members' values
  int members_ = 0;         // K of the model file the vector was laid out for
  std::string model_path_;  // that file
  std::vector<double> local_sum_, total_sum_, energy_dev_;
  // virial yes: this rank's and all ranks' member virial deviations (K x 9), the pressure
  // deviations (K scalars, then K x 6) and the force evaluation they belong to
  std::vector<double> virial_local_, virial_total_, pressure_dev_;
  bigint virial_evaluation_ = -1;
};

}  // namespace LAMMPS_NS
