// fix ID all llpr/record N FILE COMPUTE-ID [value ...] [append yes|no]
//
// Writes, every N steps, one line of instantaneous values: the step, the atom count, the
// temperature, the potential energy (total, never divided by the atom count), the pressure and
// its tensor, the volume, the last-layer ensemble members' energy deviations dE_k (and, with
// virial yes, their pressure deviations) from `compute COMPUTE-ID all llpr ensemble yes`, then
// the values named (c_ID, c_ID[i], f_ID, f_ID[i], v_name; a global vector or an array column is
// recorded as one vector value). Each run opens a segment with a one-line JSON header naming the
// model file and its seal, K, units, group, the column layout and the sampling, so that
// `llpr reweight` reads the record without inferring anything from a log.
#pragma once

#include "fix.h"

#include <cstdio>
#include <string>
#include <vector>

namespace LAMMPS_NS {

class ComputeLLPR;

class FixLLPRRecord : public Fix {
 public:
  FixLLPRRecord(class LAMMPS *, int, char **);
  ~FixLLPRRecord() override;
  int setmask() override;
  void init() override;
  void setup(int) override;
  void end_of_step() override;
  void write_restart(FILE *) override;
  void restart(char *) override;

 private:
  enum Source { COMPUTE, FIX, VARIABLE };
  struct Value {
    std::string name;  // as given (c_rdf[2])
    Source source;
    std::string id;    // compute/fix ID or variable name
    int index = 0;     // 1-based element/column, 0 for the whole scalar/vector
    bool vector = false;
    int size = 1;      // values in the current segment (vector: its length)
  };

  bool value_is_vector(const Value &v, const char *kind, int scalar_flag, int vector_flag, int array_flag,
                       int size_vector, int size_array_cols);
  void record();
  void collect(std::vector<double> &row, std::vector<int> &sizes);
  void write_header(const std::vector<int> &sizes);
  ComputeLLPR *ensemble_compute();
  bigint next_step(bigint step) const;

  std::string path_, compute_id_;
  bool append_ = false;
  std::vector<Value> values_;
  FILE *fp_ = nullptr;
  bool header_written_ = false;   // in the current segment (one segment per run)
  std::vector<int> segment_sizes_;
  bigint last_step_ = -1;         // the last step recorded (kept through restarts)
  int segments_ = 0;              // segments written by this fix (kept through restarts)
  bool restored_ = false;         // state read from a restart file
};

}  // namespace LAMMPS_NS
