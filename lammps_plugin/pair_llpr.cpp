// pair_style llpr (see pair_llpr.h)

#include "pair_llpr.h"
#include "elements.h"

#include "fix_llpr_bias.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>

using namespace LAMMPS_NS;

namespace {

// Raise the same LAMMPS error on all ranks when any rank failed; the message is the one of
// the lowest failing rank.
void collective_check(LAMMPS *lmp, MPI_Comm world, bool ok, const std::string &message)
{
  int me, nprocs;
  MPI_Comm_rank(world, &me);
  MPI_Comm_size(world, &nprocs);
  int mine = ok ? nprocs : me, first = nprocs;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, world);
  if (first == nprocs) return;
  int length = (me == first) ? static_cast<int>(message.size()) : 0;
  MPI_Bcast(&length, 1, MPI_INT, first, world);
  std::string text = (me == first) ? message : std::string(length, ' ');
  MPI_Bcast(&text[0], length, MPI_CHAR, first, world);
  lmp->error->all(FLERR, text);
}

// at most `limit` atom IDs, space-separated, with "..." when there are more
std::string id_list(const std::vector<tagint> &ids, size_t limit = 10)
{
  std::string out;
  for (size_t k = 0; k < ids.size() && k < limit; k++) out += (k ? " " : "") + std::to_string(ids[k]);
  if (ids.size() > limit) out += " ...";
  return out;
}

std::string symbols_of(const std::vector<int64_t> &species)
{
  std::string out;
  for (auto z : species) out += (out.empty() ? "" : " ") + llpr::element_symbol(z);
  return out;
}

}  // namespace

/* ---------------------------------------------------------------------- */

PairLLPR::PairLLPR(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairLLPR::~PairLLPR()
{
  if (copymode) return;
  release_ghost_shell();
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
  memory->destroy(sigma_atom_);
  memory->destroy(lpr_atom_);
  memory->destroy(gamma_atom_);
}

/* ---------------------------------------------------------------------- */

void PairLLPR::allocate()
{
  allocated = 1;
  const int n = atom->ntypes;
  memory->create(setflag, n + 1, n + 1, "pair:setflag");
  for (int i = 1; i <= n; i++)
    for (int j = i; j <= n; j++) setflag[i][j] = 0;
  memory->create(cutsq, n + 1, n + 1, "pair:cutsq");
  type_z_.assign(n + 1, 0);
}

/* ----------------------------------------------------------------------
   pair_style llpr model.pt [device auto|cpu|cuda|cuda:N]
------------------------------------------------------------------------- */

static double unit_conversion(LAMMPS *lmp)
{
  const std::string units = lmp->update->unit_style;
  if (units == "metal") return 1.0;
  if (units == "real") return utils::get_conversion_factor(utils::ENERGY, utils::METAL2REAL);
  lmp->error->all(FLERR,
                  "pair_style llpr: the model works in eV and Angstrom; use `units metal` "
                  "(native) or `units real` (energies converted to kcal/mol); `units {}` is not "
                  "supported",
                  units);
}

void PairLLPR::settings(int narg, char **arg)
{
  if (narg < 1)
    error->all(FLERR, "Illegal pair_style llpr command: expected pair_style llpr <model.pt> "
                      "[device auto|cpu|cuda] [mass_check yes|no]");
  model_path_ = arg[0];
  device_request_ = "auto";
  mass_check_ = true;
  for (int iarg = 1; iarg < narg; iarg += 2) {
    if (strcmp(arg[iarg], "mass_check") == 0) {
      if (iarg + 1 >= narg || (strcmp(arg[iarg + 1], "yes") != 0 && strcmp(arg[iarg + 1], "no") != 0))
        error->all(FLERR, "Illegal pair_style llpr command: mass_check needs yes or no");
      mass_check_ = strcmp(arg[iarg + 1], "yes") == 0;
      continue;
    }
    if (strcmp(arg[iarg], "device") == 0) {
      if (iarg + 1 >= narg)
        error->all(FLERR, "Illegal pair_style llpr command: device needs auto, cpu or cuda");
      device_request_ = arg[iarg + 1];
      if (device_request_ != "auto" && !llpr::is_device_name(device_request_))
        error->all(FLERR, "Illegal pair_style llpr command: device must be auto, cpu, cuda or cuda:N "
                          "(N = 0, 1, ...), got {}",
                   device_request_);
    } else {
      error->all(FLERR, "Illegal pair_style llpr command: unknown keyword {} (expected "
                        "pair_style llpr <model.pt> [device auto|cpu|cuda] [mass_check yes|no])",
                 arg[iarg]);
    }
  }
  energy_conversion_ = unit_conversion(lmp);
  load_model();
  // a (re)loaded model may know other elements: pair_coeff must map the types again
  if (allocated) {
    for (int i = 1; i <= atom->ntypes; i++)
      for (int j = i; j <= atom->ntypes; j++) setflag[i][j] = 0;
    std::fill(type_z_.begin(), type_z_.end(), 0);
  }
}

std::string PairLLPR::resolve_device()
{
  if (device_request_ == "cpu") return "cpu";
  const bool have_cuda = llpr::cuda_available();
  if (!have_cuda) {
    if (device_request_ == "auto") return "cpu";
    error->all(FLERR,
               "pair_style llpr: device {} requested but no CUDA GPU is usable here: {}; or run "
               "on the CPU with device cpu or device auto",
               device_request_, llpr::cuda_unavailable_reason());
  }
  if (device_request_.rfind("cuda:", 0) == 0) return device_request_;
  // one GPU per MPI rank: node-local rank modulo the number of visible GPUs
  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node);
  int local_rank = 0;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_free(&node);
  const int count = llpr::cuda_device_count();
  return "cuda:" + std::to_string(local_rank % (count > 0 ? count : 1));
}

void PairLLPR::load_model()
{
  const std::string device = resolve_device();
  model_.reset();
  std::string message;
  try {
    model_.reset(new llpr::Model(model_path_, device));
  } catch (const std::exception &e) {
    message = std::string("pair_style llpr: ") + e.what();
  }
  collective_check(lmp, world, model_ != nullptr, message);

  const auto &meta = model_->metadata();
  cutoff_ = meta.cutoff;
  message_passing_ = meta.passes_messages();
  if (comm->me == 0)
    utils::logmesg(lmp,
                   "llpr: loaded {} (format {}, elements {}, cutoff {} A, {}, {} features, "
                   "alpha {:.6g}) on {}\n",
                   model_path_, meta.format_version, symbols_of(meta.species), meta.cutoff,
                   meta.dtype, meta.n_features, meta.alpha, model_->device());
  if (comm->me == 0) utils::logmesg(lmp, "llpr: per-atom and group uncertainties evaluated by the {}\n",
                                    meta.uncertainty_evaluation);
  if (comm->me == 0 && message_passing_)
    utils::logmesg(lmp,
                   "llpr: the model passes messages (receptive field {} A, {}strictly local): it is "
                   "evaluated on the graph of local and ghost atoms, with ghost atoms out to the "
                   "receptive field plus the neighbor skin\n",
                   meta.receptive_field, meta.strictly_local ? "" : "not ");
  features_step_ = -1;
  uncertainty_step_ = -1;
  gamma_step_ = -1;

  // CPU threads: several MPI ranks on one node share its cores (unless OMP_NUM_THREADS,
  // which libtorch honours by itself, says otherwise)
  if (!model_->is_cuda()) {
    MPI_Comm node;
    MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node);
    int local_size = 1;
    MPI_Comm_size(node, &local_size);
    MPI_Comm_free(&node);
    if (local_size > 1 && std::getenv("OMP_NUM_THREADS") == nullptr) {
      const int cores = static_cast<int>(std::thread::hardware_concurrency());
      llpr::set_num_threads(cores / local_size > 1 ? cores / local_size : 1);
    }
  }
}

/* ----------------------------------------------------------------------
   pair_coeff * * El1 El2 ... (one element symbol per LAMMPS type, NULL = not handled here)
------------------------------------------------------------------------- */

void PairLLPR::coeff(int narg, char **arg)
{
  if (!model_) error->all(FLERR, "pair_coeff for llpr needs a model: use pair_style llpr <model.pt> first");
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  const auto &species = model_->metadata().species;
  if (narg < 2 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for llpr must read: pair_coeff * * <element of type 1> ... "
                      "<element of type N> (e.g. pair_coeff * * {})",
               symbols_of(species));
  if (narg - 2 != ntypes)
    error->all(FLERR,
               "pair_coeff * * for llpr needs one element symbol per atom type: {} atom type(s) "
               "but {} symbol(s) given; every LAMMPS type must be mapped to an element of the "
               "model ({}), or to NULL under pair_style hybrid",
               ntypes, narg - 2, symbols_of(species));
  for (int t = 1; t <= ntypes; t++) {
    const std::string symbol = arg[1 + t];
    if (symbol == "NULL") {
      // a sub-style of pair_style hybrid: another style handles this type
      if (force->pair == this)
        error->all(FLERR,
                   "pair_coeff for llpr: atom type {} is NULL (left unmapped); every atom type "
                   "needs an element of the model ({}). NULL is only allowed when llpr is a "
                   "sub-style of pair_style hybrid and another style handles that type",
                   t, symbols_of(species));
      type_z_[t] = 0;
      continue;
    }
    const int z = llpr::atomic_number(symbol);
    if (z < 0)
      error->all(FLERR,
                 "pair_coeff for llpr: '{}' (atom type {}) is not an element symbol (symbols are "
                 "case-sensitive, e.g. Si; the model knows: {})",
                 symbol, t, symbols_of(species));
    bool known = false;
    for (auto s : species) known = known || s == z;
    if (!known)
      error->all(FLERR,
                 "pair_coeff for llpr: element {} (Z = {}, atom type {}) is not known to the "
                 "model, which was trained for: {}",
                 symbol, z, t, symbols_of(species));
    type_z_[t] = z;
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = (type_z_[i] > 0 && type_z_[j] > 0) ? 1 : 0;
}

/* ---------------------------------------------------------------------- */

void PairLLPR::init_style()
{
  if (!model_) error->all(FLERR, "pair_style llpr has no model loaded");
  if (force->newton_pair == 0)
    error->all(FLERR,
               "pair_style llpr requires newton pair on: forces on ghost atoms are sent back to "
               "their owners. Use `newton on` (the default) in the input script");
  energy_conversion_ = unit_conversion(lmp);
  // a model that passes messages needs the ghost atoms' own neighbours as well
  neighbor->add_request(this, message_passing_ ? NeighConst::REQ_FULL | NeighConst::REQ_GHOST : NeighConst::REQ_FULL);
  if (message_passing_) request_ghost_shell();
  else release_ghost_shell();
  // pairs removed from the neighbor list are invisible to the model (see check_special_neighbors)
  for (int k = 0; k < neighbor->nex_type; k++) {
    const int a = neighbor->ex1_type[k], b = neighbor->ex2_type[k];
    if (a >= 1 && b >= 1 && a <= atom->ntypes && b <= atom->ntypes && type_z_[a] > 0 && type_z_[b] > 0)
      error->all(FLERR,
                 "pair_style llpr: `neigh_modify exclude type {} {}` removes pairs of atoms that the "
                 "model handles from the neighbor list; the model needs every pair within its cutoff: "
                 "remove the exclusion",
                 a, b);
  }
  if ((neighbor->nex_group > 0 || neighbor->nex_mol > 0) && comm->me == 0)
    error->warning(FLERR, "pair_style llpr: neigh_modify exclude (group or molecule) removes pairs from "
                          "the neighbor list; if any of them joins two atoms the model handles, the model "
                          "sees those atoms without that neighbor");
  if (atom->molecular == Atom::TEMPLATE) {
    for (int level = 1; level <= 3; level++)
      if (force->special_lj[level] == 0.0 && force->special_coul[level] == 0.0)
        error->all(FLERR,
                   "pair_style llpr: special_bonds gives weight 0 to bonded pairs, which LAMMPS then "
                   "removes from the neighbor list; the model needs every pair. Use `special_bonds "
                   "lj/coul 1 1 1`");
  }
  if (mass_check_) check_masses();
}

/* ----------------------------------------------------------------------
   A type whose mass (g/mol in units metal and real) is far from its element's: most likely
   pair_coeff lists the elements in another order than the atom types. When every mapped
   type has the mass of another element of the model, the order is swapped: an error (on
   every rank: masses are global). Otherwise a warning per such type (rank 0).
------------------------------------------------------------------------- */

void PairLLPR::check_masses()
{
  if (atom->mass == nullptr || atom->mass_setflag == nullptr) return;  // per-atom masses
  const auto &species = model_->metadata().species;
  auto fits = [](double mass, int64_t z) {
    const double m = llpr::atomic_mass(z);
    return m > 0.0 && std::fabs(mass - m) <= 0.05 * m;
  };
  int mapped = 0;
  bool all_fit_another = true;
  std::vector<std::string> warnings, swaps, order;  // order: the elements the masses fit, per type
  for (int t = 1; t <= atom->ntypes; t++) {
    if (type_z_[t] <= 0) {
      order.push_back("NULL");
      continue;
    }
    const std::string mapped_to = llpr::element_symbol(type_z_[t]);
    const double expected = llpr::atomic_mass(type_z_[t]);
    if (!atom->mass_setflag[t] || expected <= 0.0 || fits(atom->mass[t], type_z_[t])) {
      if (atom->mass_setflag[t]) mapped++;
      all_fit_another = false;
      order.push_back(mapped_to);
      continue;
    }
    mapped++;
    const double mass = atom->mass[t];
    int64_t other = 0;  // the model's element whose mass this type has, if any
    for (auto z : species)
      if (z != type_z_[t] && fits(mass, z)) other = z;
    if (other == 0) all_fit_another = false;
    const std::string other_symbol = other ? llpr::element_symbol(other) : "";
    order.push_back(other ? other_symbol : mapped_to);
    warnings.push_back(fmt::format("atom type {} has mass {:.4g}{} but is mapped to {} ({:.4g})", t, mass,
                                   other ? " (the mass of " + other_symbol + ")" : "", mapped_to, expected));
    swaps.push_back(fmt::format("type {} has the mass of {} ({:.4g}) and is mapped to {}", t, other_symbol, mass,
                                mapped_to));
  }
  if (mapped >= 2 && all_fit_another)
    error->all(FLERR,
               "pair_coeff for llpr: every atom type has the mass of another element of the model than "
               "the one it is mapped to ({}), so pair_coeff most likely lists the elements in another "
               "order than the atom types: the masses fit the element order {}. If the masses are "
               "meant (isotopes, a changed mass), add mass_check no to pair_style llpr",
               utils::join_words(swaps, "; "), utils::join_words(order, " "));
  if (comm->me == 0)
    for (const auto &message : warnings)
      error->warning(FLERR, "pair_coeff for llpr: {}; pair_coeff * * must list one element per atom type, in "
                            "type order (mass_check no in pair_style llpr turns this check off)",
                     message);
}

double PairLLPR::init_one(int i, int j)
{
  if (setflag[i][j] == 0)
    error->all(FLERR,
               "pair_style llpr: atom type {} has no element (pair_coeff * * must name one "
               "element per type; NULL is only allowed under pair_style hybrid, with another "
               "style for that type)",
               type_z_[i] > 0 ? j : i);
  return cutoff_;
}

/* ---------------------------------------------------------------------- */

void PairLLPR::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);

  // the cache is invalid from here until this evaluation has succeeded on every rank: the
  // inputs that describe it are about to be replaced
  features_step_ = -1;
  uncertainty_step_ = -1;
  gamma_step_ = -1;
  inputs_.build(list, atom, type_z_, cutoff_, message_passing_ ? ModelInputs::GHOST_GRAPH : ModelInputs::OWN_EDGES);
  if (neighbor->ago == 0) check_special_neighbors();

  llpr::Request request;
  request.forces = true;
  request.virial = vflag_global || vflag_atom;
  std::string message;
  try {
    if (bias_) model_->forward(inputs_.inputs(), request, out_);  // fix llpr/bias: backward below
    else model_->compute(inputs_.inputs(), request, out_);
  } catch (const llpr::NonFiniteOutput &e) {
    message = non_finite_message(e);
  } catch (const std::exception &e) {
    message = std::string("pair_style llpr: ") + e.what();
  }
  collective_check(lmp, world, message.empty(), message);
  // the group's features summed over all ranks, then one backward pass (fix_llpr_bias.cpp)
  if (bias_) bias_->add_bias(this);
  features_step_ = update->ntimestep;
  evaluations_++;

  const double conv = energy_conversion_;
  inputs_.add_vectors(out_.forces.data(), conv, atom->f);
  if (eflag_global) eng_vdwl += conv * out_.energy;
  if (eflag_atom)
    for (int c = 0; c < inputs_.n_centers(); c++) eatom[inputs_.lammps_index(c)] += conv * out_.energies[c];
  // virial tensors from the model are row-major 3x3: W[a][b] = sum r_a F_b
  // LAMMPS order: xx, yy, zz, xy, xz, yz
  static const int vidx[6] = {0, 4, 8, 1, 2, 5};
  if (vflag_global)
    for (int k = 0; k < 6; k++) virial[k] += conv * out_.virial[vidx[k]];
  if (vflag_atom)
    for (int a = 0; a < inputs_.n_atoms(); a++) {
      const double *w = &out_.virial_atom[9 * static_cast<size_t>(a)];
      double *v = vatom[inputs_.lammps_index(a)];
      for (int k = 0; k < 6; k++) v[k] += conv * w[vidx[k]];
    }
  if (vflag_fdotr) virial_fdotr_compute();

  if (sigma_flag_ || lpr_flag_) update_uncertainty();
  if (gamma_flag_) update_extrapolation_grade("fix pair ... llpr gamma 1");
}

/* ----------------------------------------------------------------------
   NaN or inf from the model: name the step, the atoms and their closest pair
------------------------------------------------------------------------- */

std::string PairLLPR::non_finite_message(const llpr::NonFiniteOutput &e) const
{
  const int n_atoms = inputs_.n_atoms();
  std::vector<char> bad(n_atoms, 0);
  std::vector<tagint> ids;
  for (auto a : e.atoms)
    if (a >= 0 && a < n_atoms && !bad[a]) {
      bad[a] = 1;
      ids.push_back(inputs_.tag(a));
    }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::string text = fmt::format("pair_style llpr: {} on timestep {}", e.what(), update->ntimestep);
  if (!ids.empty()) text += fmt::format(" for {} atom(s), IDs {}", ids.size(), id_list(ids));
  // the usual cause: atoms on top of each other (or nearly)
  const ModelInputs::Contact closest = inputs_.closest_pair(bad, !ids.empty());
  if (closest.distance >= 0.0)
    text += fmt::format("; closest pair: atoms {} and {}, {:.4g} A apart", closest.first, closest.second,
                        closest.distance);
  text += ". No uncertainty is defined for a broken evaluation; check the structure for overlapping "
          "atoms (e.g. `delete_atoms overlap 0.5 all all`) and the time step";
  return text;
}

/* ----------------------------------------------------------------------
   special_bonds with weight 0 removes bonded pairs from the neighbor list; the model needs them
------------------------------------------------------------------------- */

void PairLLPR::check_special_neighbors()
{
  if (atom->molecular != Atom::MOLECULAR || !atom->nspecial || !atom->special) return;
  int excluded[4] = {0, 0, 0, 0};
  bool any = false;
  for (int level = 1; level <= 3; level++) any |= (excluded[level] = neighbor->special_flag[level] == 0);
  if (!any) return;
  double **x = atom->x;
  const int *type = atom->type;
  const double cutsq_model = cutoff_ * cutoff_;
  std::string message;
  static const char *const kLevel[4] = {"", "1-2", "1-3", "1-4"};
  for (int c = 0; c < inputs_.n_centers() && message.empty(); c++) {
    const int i = inputs_.lammps_index(c);
    const int *ns = atom->nspecial[i];
    for (int k = 0; k < ns[2] && message.empty(); k++) {
      const int level = k < ns[0] ? 1 : (k < ns[1] ? 2 : 3);
      if (!excluded[level]) continue;
      int j = atom->map(atom->special[i][k]);
      if (j < 0) continue;  // farther than the ghost cutoff, so not a pair the model sees
      j = domain->closest_image(i, j);
      if (type_z_[type[j]] <= 0) continue;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz >= cutsq_model) continue;
      message = fmt::format(
          "pair_style llpr: atoms {} and {} are {} special neighbors (bonded) within the model's cutoff, "
          "and special_bonds gives {} pairs weight 0, so LAMMPS removed them from the neighbor list: "
          "the model would see these atoms without their neighbors and give wrong energies and "
          "forces. Use `special_bonds lj/coul 1 1 1` (the model needs every pair), or put the bonded "
          "atoms under another style with pair_style hybrid",
          atom->tag[i], atom->special[i][k], kLevel[level], kLevel[level]);
    }
  }
  collective_check(lmp, world, message.empty(), message);
}

/* ----------------------------------------------------------------------
   the ghost shell of a model that passes messages
------------------------------------------------------------------------- */

// Atoms move by at most half the skin between neighbor list builds, so an atom within the
// receptive field of a local atom at any step of that interval was within receptive field + skin
// of it when the ghosts were made.
double PairLLPR::ghost_shell() const
{
  return model_ ? model_->metadata().receptive_field + neighbor->skin : 0.0;
}

void PairLLPR::request_ghost_shell()
{
  const double shell = ghost_shell();
  const auto &meta = model_->metadata();
  // LAMMPS has no stencils for neighbor lists of ghost atoms in neighbor style multi (whose
  // comm_modify mode multi would also ignore the communication cutoff)
  if (neighbor->style == Neighbor::MULTI || neighbor->style == Neighbor::MULTI_OLD)
    error->all(FLERR,
               "pair_style llpr: the model passes messages (receptive field {} A) and needs the neighbor "
               "lists of ghost atoms, which LAMMPS does not build with neighbor style {}; use `neighbor {} "
               "bin` (the default style) or nsq, with comm_modify mode single",
               meta.receptive_field, neighbor->style == Neighbor::MULTI ? "multi" : "multi/old", neighbor->skin);
  // comm_style tiled sends each ghost atom once: it cannot repeat a periodic image to fill a shell
  // wider than the box (comm_style brick can)
  if (comm->style == Comm::TILED) {
    const char *axis = "xyz";
    for (int d = 0; d < domain->dimension; d++) {
      if (!domain->periodicity[d]) continue;
      // the box's width across its faces (the distance between the periodic images' planes)
      double width = domain->prd[d];
      if (domain->triclinic) {
        const double *h = domain->h_inv;
        const double norm = d == 0 ? std::sqrt(h[0] * h[0] + h[5] * h[5] + h[4] * h[4])
                            : d == 1 ? std::sqrt(h[1] * h[1] + h[3] * h[3])
                                     : h[2];
        width = 1.0 / norm;
      }
      if (shell > width)
        error->all(FLERR,
                   "pair_style llpr: the model passes messages and needs ghost atoms out to {} A "
                   "(receptive field {} A + neighbor skin {} A), more than the periodic box is wide "
                   "along {} ({} A); comm_style tiled cannot repeat periodic images to fill that: use "
                   "comm_style brick (the default), or a larger box (replicate)",
                   shell, meta.receptive_field, neighbor->skin, axis[d], width);
    }
  }
  // start from the user's value (comm_modify cutoff): the one replaced earlier, unless the user
  // has set another since
  const double user = (cutghost_raised_ >= 0.0 && comm->cutghostuser == cutghost_raised_) ? cutghost_before_
                                                                                           : comm->cutghostuser;
  if (user >= shell) {
    comm->cutghostuser = user;
    cutghost_raised_ = -1.0;
    return;
  }
  if (comm->me == 0 && comm->cutghostuser != shell)
    utils::logmesg(lmp,
                   "llpr: ghost atoms out to {} A (receptive field {} A + neighbor skin {} A), with "
                   "their own neighbor lists: communication cutoff raised to {} A (comm_modify cutoff "
                   "{} A)\n",
                   shell, meta.receptive_field, neighbor->skin, shell, user);
  cutghost_before_ = user;
  comm->cutghostuser = shell;
  cutghost_raised_ = shell;
}

void PairLLPR::release_ghost_shell()
{
  if (cutghost_raised_ < 0.0) return;
  // unless someone set another value since (comm_modify cutoff)
  if (comm && comm->cutghostuser == cutghost_raised_) comm->cutghostuser = cutghost_before_;
  cutghost_raised_ = -1.0;
}

/* ---------------------------------------------------------------------- */

void PairLLPR::require_current_features(const char *who)
{
  if (!model_) error->all(FLERR, "{}: pair_style llpr has no model loaded", who);
  if (features_step_ != update->ntimestep) {
    if (features_step_ < 0)
      error->all(FLERR,
                 "{}: pair_style llpr has not evaluated forces yet, so there are no features "
                 "for timestep {}; use it during a run (or after `run 0`)",
                 who, update->ntimestep);
    error->all(FLERR,
               "{}: pair_style llpr has features of timestep {} only, not of the current "
               "timestep {}; it can only be evaluated on steps where forces were computed",
               who, features_step_, update->ntimestep);
  }
  if (!all_ranks_hold_evaluated_atoms(ModelInputs::CENTRES))
    error->all(FLERR,
               "{}: atoms were added, deleted or re-ordered since pair_style llpr evaluated forces "
               "on timestep {} (e.g. by create_atoms or delete_atoms); evaluate them again with "
               "`run 0` first",
               who, features_step_);
}

void PairLLPR::check_all_ranks(bool ok, const std::string &message) { collective_check(lmp, world, ok, message); }

// the same answer on every rank, so that the callers' error->all() is collective
bool PairLLPR::all_ranks_hold_evaluated_atoms(ModelInputs::Extent extent)
{
  int same = inputs_.holds_built_atoms(atom, extent) ? 1 : 0, all_same = 0;
  MPI_Allreduce(&same, &all_same, 1, MPI_INT, MPI_MIN, world);
  return all_same != 0;
}

void PairLLPR::grow_peratom(int n)
{
  if (n <= nmax_peratom_) return;
  memory->destroy(sigma_atom_);
  memory->destroy(lpr_atom_);
  memory->destroy(gamma_atom_);
  nmax_peratom_ = n;
  memory->create(sigma_atom_, nmax_peratom_, "pair:llpr:sigma");
  memory->create(lpr_atom_, nmax_peratom_, "pair:llpr:lpr");
  memory->create(gamma_atom_, nmax_peratom_, "pair:llpr:gamma");
  std::fill(sigma_atom_, sigma_atom_ + nmax_peratom_, 0.0);
  std::fill(lpr_atom_, lpr_atom_ + nmax_peratom_, 0.0);
  std::fill(gamma_atom_, gamma_atom_ + nmax_peratom_, 0.0);
  gamma_step_ = -1;  // the old values are gone with the old array
}

void PairLLPR::update_uncertainty()
{
  if (uncertainty_step_ == features_step_ && features_step_ >= 0) return;
  grow_peratom(atom->nmax > 1 ? atom->nmax : 1);
  const int nlocal = atom->nlocal;
  std::fill(sigma_atom_, sigma_atom_ + nlocal, 0.0);
  std::fill(lpr_atom_, lpr_atom_ + nlocal, 0.0);
  if (!model_ || features_step_ < 0) return;
  sigma_tmp_.resize(inputs_.n_centers());
  lpr_tmp_.resize(inputs_.n_centers());
  model_->cached_local_uncertainty(sigma_tmp_.data(), lpr_tmp_.data());
  inputs_.set_centres(sigma_tmp_.data(), energy_conversion_, sigma_atom_);
  inputs_.set_centres(lpr_tmp_.data(), 1.0, lpr_atom_);
  uncertainty_step_ = features_step_;
}

void PairLLPR::require_extrapolation_grade(const char *who)
{
  if (!model_ || !model_->metadata().has_extrapolation_grade)
    error->all(FLERR, "{}: the model file {}", who,
               llpr::no_extrapolation_grade_message(model_ ? model_path_ : std::string("(none loaded)")));
}

void PairLLPR::update_extrapolation_grade(const char *who)
{
  require_extrapolation_grade(who);
  grow_peratom(atom->nmax > 1 ? atom->nmax : 1);
  if (gamma_step_ == features_step_ && features_step_ >= 0) return;
  std::fill(gamma_atom_, gamma_atom_ + atom->nlocal, 0.0);
  if (features_step_ < 0) return;
  sigma_tmp_.resize(inputs_.n_centers());
  model_->cached_extrapolation_grade(sigma_tmp_.data());
  inputs_.set_centres(sigma_tmp_.data(), 1.0, gamma_atom_);
  gamma_step_ = features_step_;
}

void PairLLPR::check_sigma(double value, const char *what) const
{
  // finite features give a finite, non-negative quadratic form; anything else is a bug to report
  if (!std::isfinite(value) || value < 0.0)
    error->all(FLERR, "pair_style llpr: {} is {} on timestep {}, not a valid uncertainty", what, value,
               update->ntimestep);
}

void PairLLPR::group_feature_sum(int groupbit, std::vector<double> &sum)
{
  const int *mask = atom->mask;
  rows_tmp_.clear();
  for (int c = 0; c < inputs_.n_centers(); c++)
    if (mask[inputs_.lammps_index(c)] & groupbit) rows_tmp_.push_back(c);
  sum.assign(n_features(), 0.0);
  if (rows_tmp_.empty()) return;  // no centre of the group on this rank: adds nothing
  // every centre in the group (e.g. group all): sum in place, without gathering the rows
  if (static_cast<int>(rows_tmp_.size()) == inputs_.n_centers()) model_->cached_feature_sum_all(sum.data());
  else model_->cached_feature_sum_rows(rows_tmp_.data(), static_cast<int64_t>(rows_tmp_.size()), sum.data());
}

double PairLLPR::energy_sigma(const std::vector<double> &sum)
{
  // LLPRHead.energy_variance of the all-reduced sum; only the square root is taken here
  const double var = model_->energy_variance(sum.data());
  check_sigma(var, "the variance of a group's energy");
  return energy_conversion_ * std::sqrt(var);
}

int PairLLPR::n_features() const
{
  return model_ ? static_cast<int>(model_->metadata().n_features) : 0;
}

std::string PairLLPR::model_seal() const
{
  return model_ ? model_->metadata().seal : std::string();
}

int PairLLPR::ensemble_size() const
{
  return model_ ? static_cast<int>(model_->metadata().ensemble_size) : 0;
}

void PairLLPR::run_ensemble(const char *who, bool forces, bool virial)
{
  require_current_features(who);
  if (ensemble_size() == 0)
    error->all(FLERR, "{}: the model file {}", who, llpr::no_ensemble_message(model_path_));
  // the cached inputs must still describe every atom (ghosts too) LAMMPS holds now
  if (!all_ranks_hold_evaluated_atoms(ModelInputs::ALL))
    error->all(FLERR,
               "{}: atoms were moved between processors or re-sorted since pair_style llpr "
               "evaluated forces on timestep {}; evaluate the step again (e.g. `run 0`) first",
               who, update->ntimestep);

  llpr::Request request;
  request.forces = forces;
  request.virial = virial;
  std::string message;
  try {
    model_->compute_ensemble(inputs_.inputs(), request, ensemble_out_);
  } catch (const std::exception &e) {
    message = std::string(who) + ": " + e.what();
  }
  collective_check(lmp, world, message.empty(), message);
}

void PairLLPR::ensemble_virial_deviations(const char *who, std::vector<double> &out)
{
  run_ensemble(who, false, true);
  out.resize(ensemble_out_.virial_deviations.size());
  for (size_t k = 0; k < out.size(); k++) out[k] = energy_conversion_ * ensemble_out_.virial_deviations[k];
}

void PairLLPR::ensemble_energy_deviations(const char *who, const std::vector<double> &sum, std::vector<double> &out)
{
  out.assign(ensemble_size(), 0.0);
  std::string message;
  try {
    model_->ensemble_energy_deviations(sum.data(), out.data());
  } catch (const std::exception &e) {
    message = fmt::format("{}: {} on timestep {}", who, e.what(), update->ntimestep);
  }
  // the same all-reduced sum on every rank: the same outcome everywhere
  if (!message.empty()) error->all(FLERR, message);
  for (double &d : out) d *= energy_conversion_;
}

void PairLLPR::ensemble_force_deviations(const char *who, std::vector<double> &out)
{
  run_ensemble(who, true, false);
  const int K = ensemble_size();
  const size_t nall = static_cast<size_t>(atom->nlocal + atom->nghost);
  const size_t n_atoms = static_cast<size_t>(inputs_.n_atoms());
  out.assign(static_cast<size_t>(K) * 3 * nall, 0.0);
  for (int k = 0; k < K; k++)
    inputs_.set_vectors(ensemble_out_.force_deviations.data() + k * n_atoms * 3, energy_conversion_,
                        out.data() + k * nall * 3);
}

/* ----------------------------------------------------------------------
   fix pair support: `fix pair N llpr sigma 1` / `lpr 1`
------------------------------------------------------------------------- */

void *PairLLPR::extract(const char *name, int &dim)
{
  dim = 0;
  if (strcmp(name, "sigma_flag") == 0) return (void *) &sigma_flag_;
  if (strcmp(name, "lpr_flag") == 0) return (void *) &lpr_flag_;
  if (strcmp(name, "gamma_flag") == 0) {
    // fix pair asks for it when it is defined: refuse a file without the reference there
    require_extrapolation_grade("fix pair ... llpr gamma 1");
    return (void *) &gamma_flag_;
  }
  if (strcmp(name, "cutoff") == 0) return (void *) &cutoff_;
  return nullptr;
}

void *PairLLPR::extract_peratom(const char *name, int &ncol)
{
  const bool is_sigma = strcmp(name, "sigma") == 0;
  const bool is_lpr = strcmp(name, "lpr") == 0;
  if (strcmp(name, "gamma") == 0) {
    ncol = 0;
    if (features_step_ >= 0 && features_step_ == update->ntimestep) update_extrapolation_grade("fix pair ... llpr gamma 1");
    else grow_peratom(atom->nmax > 1 ? atom->nmax : 1);
    return (void *) gamma_atom_;
  }
  if (!is_sigma && !is_lpr) return nullptr;
  ncol = 0;
  if (features_step_ >= 0 && features_step_ == update->ntimestep) update_uncertainty();
  else grow_peratom(atom->nmax > 1 ? atom->nmax : 1);
  return is_sigma ? (void *) sigma_atom_ : (void *) lpr_atom_;
}

double PairLLPR::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += 3.0 * nmax_peratom_ * sizeof(double);
  bytes += inputs_.memory_usage();
  bytes += (double) (out_.forces.capacity() + out_.virial_atom.capacity()) * sizeof(double);
  return bytes;
}
