// fix llpr/record (see fix_llpr_record.h)

#include "fix_llpr_record.h"

#include "compute_llpr.h"
#include "pair_llpr.h"

#include "atom.h"
#include "comm.h"
#include "compute.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "group.h"
#include "input.h"
#include "json.h"
#include "lammps.h"
#include "modify.h"
#include "update.h"
#include "utils.h"
#include "variable.h"
#include "platform.h"

#include <cmath>
#include <cstring>

using namespace LAMMPS_NS;
using namespace FixConst;

namespace {

const char *kUsage = "fix ID all llpr/record N FILE COMPUTE-ID [c_ID|c_ID[i]|f_ID|f_ID[i]|v_name ...] [append yes|no]";
constexpr int kFormatVersion = 1;
// built-in columns before the members' deviations: their values are whole-system, instantaneous
const char *kBuiltins[] = {"step", "atoms", "temp", "pe", "press", "vol", "pxx", "pyy", "pzz", "pxy", "pxz", "pyz"};
constexpr int kNumBuiltins = sizeof(kBuiltins) / sizeof(kBuiltins[0]);

Compute *invoked_scalar(Compute *c)
{
  if (!(c->invoked_flag & Compute::INVOKED_SCALAR)) {
    c->compute_scalar();
    c->invoked_flag |= Compute::INVOKED_SCALAR;
  }
  return c;
}

Compute *invoked_vector(Compute *c)
{
  if (!(c->invoked_flag & Compute::INVOKED_VECTOR)) {
    c->compute_vector();
    c->invoked_flag |= Compute::INVOKED_VECTOR;
  }
  return c;
}

}  // namespace

FixLLPRRecord::FixLLPRRecord(LAMMPS *lmp, int narg, char **arg) : Fix(lmp, narg, arg)
{
  if (narg < 6) error->all(FLERR, "Illegal fix llpr/record command: expected {}", kUsage);
  if (igroup != 0)
    error->all(FLERR, "fix llpr/record records whole-system values (the weights of reweighting need the energy "
                      "deviations of all atoms); use group all, not {}",
               group->names[igroup]);
  nevery = utils::inumeric(FLERR, arg[3], false, lmp);
  if (nevery <= 0) error->all(FLERR, "fix llpr/record: N must be a positive number of steps, not {}", arg[3]);
  path_ = arg[4];
  compute_id_ = arg[5];
  for (int iarg = 6; iarg < narg; iarg++) {
    const std::string word = arg[iarg];
    if (word == "append") {
      if (iarg + 1 >= narg) error->all(FLERR, "fix llpr/record: append needs yes or no (expected {})", kUsage);
      append_ = utils::logical(FLERR, arg[iarg + 1], false, lmp) == 1;
      iarg++;
      continue;
    }
    Value v;
    v.name = word;
    if (utils::strmatch(word, "^c_")) v.source = COMPUTE;
    else if (utils::strmatch(word, "^f_")) v.source = FIX;
    else if (utils::strmatch(word, "^v_")) v.source = VARIABLE;
    else
      error->all(FLERR, "fix llpr/record: {} is not a value (c_ID, c_ID[i], f_ID, f_ID[i] or v_name) nor a keyword "
                        "(append); the step, atoms, temp, pe, press, vol and the pressure tensor are always recorded "
                        "(expected {})",
                 word, kUsage);
    if (word.find('*') != std::string::npos)
      error->all(FLERR, "fix llpr/record: {}: wildcards are not expanded; name the value (c_ID for a compute's whole "
                        "vector, c_ID[i] for element i or column i of an array)",
                 word);
    std::string rest = word.substr(2);
    const size_t bracket = rest.find('[');
    if (bracket != std::string::npos) {
      if (rest.back() != ']')
        error->all(FLERR, "fix llpr/record: {} is not a value (expected ID[i] with a closing bracket)", word);
      v.index = utils::inumeric(FLERR, rest.substr(bracket + 1, rest.size() - bracket - 2), false, lmp);
      if (v.index <= 0) error->all(FLERR, "fix llpr/record: {}: indices start at 1", word);
      if (v.source == VARIABLE)
        error->all(FLERR, "fix llpr/record: {}: give the vector-style variable whole (v_name)", word);
      rest = rest.substr(0, bracket);
    }
    v.id = rest;
    for (const auto &other : values_)
      if (other.name == v.name) error->all(FLERR, "fix llpr/record: {} is given twice", word);
    values_.push_back(v);
  }
  restart_global = 1;
  global_freq = nevery;
}

FixLLPRRecord::~FixLLPRRecord()
{
  if (fp_) fclose(fp_);
}

int FixLLPRRecord::setmask()
{
  return END_OF_STEP;
}

ComputeLLPR *FixLLPRRecord::ensemble_compute()
{
  Compute *c = modify->get_compute_by_id(compute_id_);
  if (!c)
    error->all(FLERR, "fix llpr/record: compute {} does not exist; define `compute {} all llpr ensemble yes` (add "
                      "virial yes for the members' pressures) before the fix",
               compute_id_, compute_id_);
  auto llpr = dynamic_cast<ComputeLLPR *>(c);
  if (!llpr || !llpr->ensemble())
    error->all(FLERR, "fix llpr/record: compute {} is a compute {}, not a compute llpr with ensemble yes; the "
                      "record needs the members' energy deviations: compute {} all llpr ensemble yes",
               compute_id_, c->style, compute_id_);
  if (c->igroup != 0)
    error->all(FLERR, "fix llpr/record: compute {} gives the energy deviations of group {}, but the weights of "
                      "reweighting need those of the whole system; use a compute llpr ensemble yes of group all",
               compute_id_, group->names[c->igroup]);
  return llpr;
}

// Whether the global value of a compute or fix that `v` names is a vector (a whole vector, or a
// column of an array) or a scalar (the scalar, or one element of a vector); size_vector < 0: the
// vector's length is only known when it is computed
bool FixLLPRRecord::value_is_vector(const Value &v, const char *kind, int scalar_flag, int vector_flag,
                                    int array_flag, int size_vector, int size_array_cols)
{
  if (v.index == 0) {
    if (!scalar_flag && !vector_flag)
      error->all(FLERR, "fix llpr/record: {} {} gives no global scalar or vector for {}", kind, v.id, v.name);
    return !scalar_flag;
  }
  if (vector_flag) {
    if (size_vector >= 0 && v.index > size_vector)
      error->all(FLERR, "fix llpr/record: {}: {} {} has {} elements", v.name, kind, v.id, size_vector);
    return false;
  }
  if (!array_flag)
    error->all(FLERR, "fix llpr/record: {} {} gives no global vector or array for {}", kind, v.id, v.name);
  if (v.index > size_array_cols)
    error->all(FLERR, "fix llpr/record: {}: {} {} has {} columns", v.name, kind, v.id, size_array_cols);
  return true;
}

void FixLLPRRecord::init()
{
  ensemble_compute();
  if (!force->pair_match("llpr", 1, 0)) error->all(FLERR, "fix llpr/record requires pair_style llpr");
  // a biased run samples exp(-beta (E - tau s)), not the mean model's ensemble: its frames
  // reweighted with exp(-beta dE_k) alone would give plausible, wrong averages
  for (const auto &fix : modify->get_fix_list())
    if (utils::strmatch(fix->style, "^llpr/bias"))
      error->all(FLERR, "fix llpr/record: fix {} (llpr/bias) biases the dynamics, so the frames are not a sample "
                        "of the mean model's ensemble and cannot be reweighted to its members; unfix {} for the run "
                        "you record",
                 fix->id, fix->id);
  for (const char *id : {"thermo_temp", "thermo_pe", "thermo_press"})
    if (!modify->get_compute_by_id(id))
      error->all(FLERR, "fix llpr/record: the thermo compute {} is gone; it is needed for the built-in columns", id);
  for (auto &v : values_) {
    if (v.source == COMPUTE) {
      Compute *c = modify->get_compute_by_id(v.id);
      if (!c) error->all(FLERR, "fix llpr/record: compute {} of {} does not exist", v.id, v.name);
      v.vector = value_is_vector(v, "compute", c->scalar_flag, c->vector_flag, c->array_flag,
                                 c->size_vector_variable ? -1 : c->size_vector, c->size_array_cols);
    } else if (v.source == FIX) {
      Fix *f = modify->get_fix_by_id(v.id);
      if (!f) error->all(FLERR, "fix llpr/record: fix {} of {} does not exist", v.id, v.name);
      if (utils::strmatch(f->style, "^ave/"))
        error->all(FLERR, "fix llpr/record: {} comes from fix {} (style {}), which averages over time; reweighting "
                          "needs instantaneous values: record the compute or variable it averages instead",
                   v.name, v.id, f->style);
      if (nevery % f->global_freq)
        error->all(FLERR, "fix llpr/record: fix {} gives its values every {} steps, which does not divide N = {}",
                   v.id, f->global_freq, nevery);
      v.vector = value_is_vector(v, "fix", f->scalar_flag, f->vector_flag, f->array_flag, f->size_vector,
                                 f->size_array_cols);
    } else {
      const int ivar = input->variable->find(v.id.c_str());
      if (ivar < 0) error->all(FLERR, "fix llpr/record: variable {} of {} does not exist", v.id, v.name);
      if (input->variable->equalstyle(ivar)) v.vector = false;
      else if (input->variable->vectorstyle(ivar)) v.vector = true;
      else error->all(FLERR, "fix llpr/record: variable {} is neither equal-style nor vector-style", v.id);
    }
  }
  // every run opens a segment: its header states what holds for it (K, model, units, layout)
  header_written_ = false;
  modify->addstep_compute_all(next_step(update->ntimestep));
}

bigint FixLLPRRecord::next_step(bigint step) const
{
  return ((step + nevery - 1) / nevery) * nevery;
}

void FixLLPRRecord::setup(int)
{
  // a step is recorded once: the last step of one run is the first of the next (and of a run
  // continued from a restart file); after reset_timestep to an earlier step, steps repeat
  if (update->ntimestep % nevery == 0 && update->ntimestep != last_step_) record();
  else modify->addstep_compute(next_step(update->ntimestep + 1));
}

void FixLLPRRecord::end_of_step()
{
  if (update->ntimestep == last_step_) return;
  record();
}

void FixLLPRRecord::collect(std::vector<double> &row, std::vector<int> &sizes)
{
  ComputeLLPR *ens = ensemble_compute();
  Compute *temp = modify->get_compute_by_id("thermo_temp");
  Compute *pe = modify->get_compute_by_id("thermo_pe");
  Compute *press = modify->get_compute_by_id("thermo_press");
  const double volume = domain->dimension == 2 ? domain->xprd * domain->yprd : domain->xprd * domain->yprd * domain->zprd;
  row.push_back(static_cast<double>(update->ntimestep));
  row.push_back(static_cast<double>(atom->natoms));
  row.push_back(invoked_scalar(temp)->scalar);
  row.push_back(invoked_scalar(pe)->scalar);
  row.push_back(invoked_scalar(press)->scalar);
  row.push_back(volume);
  invoked_vector(press);
  for (int c = 0; c < 6; c++) row.push_back(press->vector[c]);

  invoked_vector(ens);
  const int K = ens->members(), o = ens->deviation_offset();
  const int ndev = K + (ens->virial() ? 7 * K : 0);
  for (int k = 0; k < ndev; k++) row.push_back(ens->vector[o + k]);

  for (auto &v : values_) {
    const size_t before = row.size();
    if (v.source == COMPUTE) {
      Compute *c = modify->get_compute_by_id(v.id);
      if (!v.vector && v.index == 0) {
        row.push_back(invoked_scalar(c)->scalar);
      } else if (c->vector_flag) {
        invoked_vector(c);
        if (v.index > 0) {
          if (v.index > c->size_vector)
            error->all(FLERR, "fix llpr/record: {}: compute {} now has {} elements", v.name, v.id, c->size_vector);
          row.push_back(c->vector[v.index - 1]);
        } else {
          for (int i = 0; i < c->size_vector; i++) row.push_back(c->vector[i]);
        }
      } else {
        if (!(c->invoked_flag & Compute::INVOKED_ARRAY)) {
          c->compute_array();
          c->invoked_flag |= Compute::INVOKED_ARRAY;
        }
        for (int r = 0; r < c->size_array_rows; r++) row.push_back(c->array[r][v.index - 1]);
      }
    } else if (v.source == FIX) {
      Fix *f = modify->get_fix_by_id(v.id);
      if (!v.vector && v.index == 0) row.push_back(f->compute_scalar());
      else if (!v.vector) row.push_back(f->compute_vector(v.index - 1));
      else if (f->vector_flag)
        for (int i = 0; i < f->size_vector; i++) row.push_back(f->compute_vector(i));
      else
        for (int r = 0; r < f->size_array_rows; r++) row.push_back(f->compute_array(r, v.index - 1));
    } else {
      const int ivar = input->variable->find(v.id.c_str());
      if (ivar < 0) error->all(FLERR, "fix llpr/record: variable {} of {} was deleted", v.id, v.name);
      if (!v.vector) {
        row.push_back(input->variable->compute_equal(ivar));
      } else {
        double *data = nullptr;
        const int n = input->variable->compute_vector(ivar, &data);
        for (int i = 0; i < n; i++) row.push_back(data[i]);
      }
    }
    sizes.push_back(static_cast<int>(row.size() - before));
  }
}

void FixLLPRRecord::record()
{
  modify->clearstep_compute();
  std::vector<double> row;
  std::vector<int> sizes;
  collect(row, sizes);
  modify->addstep_compute(next_step(update->ntimestep + 1));

  if (header_written_ && sizes != segment_sizes_) {
    for (size_t i = 0; i < sizes.size(); i++)
      if (sizes[i] != segment_sizes_[i])
        error->all(FLERR, "fix llpr/record: {} had {} values at the start of this run and has {} at step {}; a "
                          "recorded vector must keep its length within a run",
                   values_[i].name, segment_sizes_[i], sizes[i], update->ntimestep);
  }
  if (comm->me == 0) {
    if (!fp_) {
      // a run continued from a restart file: its earlier runs were recorded, most likely into
      // this file, which "w" would empty without a word
      if (restored_ && !append_ && !platform::path_is_directory(path_) && platform::file_is_readable(path_))
        error->one(FLERR, "fix llpr/record: this run continues one recorded ({} run(s) up to step {}) before the "
                          "restart file was written, and {} exists: add append yes to continue that record, or "
                          "record into a new file",
                   segments_, last_step_, path_);
      fp_ = fopen(path_.c_str(), append_ ? "a" : "w");
      if (!fp_)
        error->one(FLERR, "fix llpr/record: cannot open {} for writing: {}", path_, utils::getsyserror());
    }
    if (!header_written_) write_header(sizes);
    std::string line;
    for (size_t i = 0; i < row.size(); i++) {
      if (i) line += ' ';
      line += i < 2 ? fmt::format("{}", static_cast<bigint>(row[i])) : fmt::format("{:.17g}", row[i]);
    }
    line += '\n';
    fputs(line.c_str(), fp_);
    fflush(fp_);
  }
  if (!header_written_) {
    segments_++;
    header_written_ = true;
    segment_sizes_ = sizes;
  }
  last_step_ = update->ntimestep;
}

void FixLLPRRecord::write_header(const std::vector<int> &sizes)
{
  ComputeLLPR *ens = ensemble_compute();
  auto pair = dynamic_cast<PairLLPR *>(force->pair_match("llpr", 1, 0));
  const int K = ens->members();
  json columns = json::array();
  for (int i = 0; i < kNumBuiltins; i++) columns.push_back({{"name", kBuiltins[i]}, {"size", 1}});
  columns.push_back({{"name", "dE"}, {"size", K}});
  if (ens->virial()) {
    columns.push_back({{"name", "dP"}, {"size", K}});
    columns.push_back({{"name", "dP_tensor"}, {"size", 6 * K}});
  }
  for (size_t i = 0; i < values_.size(); i++)
    columns.push_back({{"name", values_[i].name}, {"size", sizes[i]}, {"vector", values_[i].vector}});
  const std::string seal = pair ? pair->model_seal() : std::string();
  json header = {
      {"format", "llpr-record"},
      {"version", kFormatVersion},
      {"segment", segments_ + 1},
      {"model", pair ? pair->model_path() : std::string()},
      {"seal", seal.empty() ? json(nullptr) : json(seal)},
      {"members", K},
      {"compute", compute_id_},
      {"group", "all"},
      {"virial", ens->virial()},
      {"units", update->unit_style},
      {"timestep", update->dt},
      {"every", nevery},
      {"first_step", update->ntimestep},
      {"continues", last_step_ >= 0 && update->ntimestep > last_step_},
      {"sampling", "instantaneous"},
      {"energies", "total"},
      {"dP_tensor_order", "per member: xx yy zz xy xz yz"},
      {"columns", columns},
  };
  fputs(("# " + header.dump() + "\n").c_str(), fp_);
}

void FixLLPRRecord::write_restart(FILE *fp)
{
  if (comm->me != 0) return;
  double list[2] = {static_cast<double>(last_step_), static_cast<double>(segments_)};
  int size = sizeof(list);
  fwrite(&size, sizeof(int), 1, fp);
  fwrite(list, sizeof(double), 2, fp);
}

void FixLLPRRecord::restart(char *buf)
{
  auto list = reinterpret_cast<double *>(buf);
  last_step_ = static_cast<bigint>(list[0]);
  segments_ = static_cast<int>(list[1]);
  restored_ = true;
}
