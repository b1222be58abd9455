// Entry points of libllpr_lammps.so, looked up by name by loader.cpp (libllpr_lammpsplugin.so,
// the torch-free file LAMMPS loads): one factory per style, as in the registration files of
// LAMMPS's examples/plugins, and the check that the libtorch loaded in this process is the one
// llpr was compiled against.

#include "compute_llpr.h"
#include "fix_llpr_bias.h"
#include "fix_llpr_record.h"
#include "pair_llpr.h"

#include "llpr/core.h"

#include <string>

using namespace LAMMPS_NS;

#define LLPR_EXPORT extern "C" __attribute__((visibility("default")))

LLPR_EXPORT void *llpr_lammps_create_pair(void *lmp)
{
  Pair *pair = new PairLLPR(static_cast<LAMMPS *>(lmp));
  return static_cast<void *>(pair);
}

LLPR_EXPORT void *llpr_lammps_create_compute_atom(void *lmp, int narg, char **arg)
{
  Compute *compute = new ComputeLLPRAtom(static_cast<LAMMPS *>(lmp), narg, arg);
  return static_cast<void *>(compute);
}

LLPR_EXPORT void *llpr_lammps_create_compute_global(void *lmp, int narg, char **arg)
{
  Compute *compute = new ComputeLLPR(static_cast<LAMMPS *>(lmp), narg, arg);
  return static_cast<void *>(compute);
}

LLPR_EXPORT void *llpr_lammps_create_fix_bias(void *lmp, int narg, char **arg)
{
  Fix *fix = new FixLLPRBias(static_cast<LAMMPS *>(lmp), narg, arg);
  return static_cast<void *>(fix);
}

LLPR_EXPORT void *llpr_lammps_create_fix_record(void *lmp, int narg, char **arg)
{
  Fix *fix = new FixLLPRRecord(static_cast<LAMMPS *>(lmp), narg, arg);
  return static_cast<void *>(fix);
}

// "" when the libtorch loaded in this process is the one llpr was compiled against
LLPR_EXPORT const char *llpr_lammps_runtime_problem()
{
  static std::string problem;
  const std::string compiled = llpr::torch_version_compiled();
  const std::string running = llpr::torch_version_runtime();
  problem.clear();
  if (running != "unknown" && running.rfind(compiled, 0) != 0)
    problem = "llpr was compiled against torch " + compiled + " but torch " + running +
              " is loaded in this process";
  return problem.c_str();
}
