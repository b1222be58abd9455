// ModelInputs (see model_inputs.h)

#include "model_inputs.h"

#include "atom.h"
#include "neigh_list.h"

#include <algorithm>
#include <cmath>

using namespace LAMMPS_NS;

void ModelInputs::build(const NeighList *list, const Atom *atom, const std::vector<int64_t> &type_z,
                        double cutoff, Graph graph)
{
  double **x = atom->x;
  const int *type = atom->type;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int inum = list->inum;
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const double cutsq = cutoff * cutoff;

  model_index_.assign(nall, -1);
  lammps_index_.clear();
  auto add = [&](int i) {
    model_index_[i] = static_cast<int>(lammps_index_.size());
    lammps_index_.push_back(i);
  };
  for (int ii = 0; ii < inum; ii++)
    if (type_z[type[ilist[ii]]] > 0) add(ilist[ii]);
  n_centers_ = static_cast<int>(lammps_index_.size());
  if (graph == GHOST_GRAPH)
    for (int ii = inum; ii < inum + list->gnum; ii++)
      if (type_z[type[ilist[ii]]] > 0) add(ilist[ii]);
  // atoms 0 .. with_edges - 1 carry edges; neighbours not yet seen join after them
  const int with_edges = graph == GHOST_GRAPH ? static_cast<int>(lammps_index_.size()) : n_centers_;
  edges_.clear();
  neighbors_tmp_.clear();
  for (int a = 0; a < with_edges; a++) {
    const int i = lammps_index_[a];
    const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
    const int *jlist = firstneigh[i];
    const int jnum = numneigh[i];
    for (int jj = 0; jj < jnum; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      if (type_z[type[j]] <= 0) continue;
      const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
      if (dx * dx + dy * dy + dz * dz >= cutsq) continue;
      if (model_index_[j] < 0) add(j);
      edges_.push_back(a);
      neighbors_tmp_.push_back(model_index_[j]);
    }
  }
  n_edges_ = static_cast<int64_t>(edges_.size());
  edges_.insert(edges_.end(), neighbors_tmp_.begin(), neighbors_tmp_.end());
  nlocal_ = nlocal;
  nall_ = nall;

  const int n = n_atoms();
  positions_.resize(3 * static_cast<size_t>(n));
  numbers_.resize(n);
  tags_.resize(n);
  const tagint *tag = atom->tag;
  for (int a = 0; a < n; a++) {
    const int i = lammps_index_[a];
    positions_[3 * a + 0] = x[i][0];
    positions_[3 * a + 1] = x[i][1];
    positions_[3 * a + 2] = x[i][2];
    numbers_[a] = type_z[type[i]];
    tags_[a] = tag ? tag[i] : 0;
  }
}

llpr::Inputs ModelInputs::inputs() const
{
  llpr::Inputs in;
  in.n_atoms = n_atoms();
  in.n_centers = n_centers_;
  in.n_edges = n_edges_;
  in.positions = positions_.data();
  in.atomic_numbers = numbers_.data();
  in.edge_index = edges_.data();
  in.edge_shifts = nullptr;
  return in;
}

bool ModelInputs::holds_built_atoms(const Atom *atom, Extent extent) const
{
  const bool all = extent == ALL;
  const int held = all ? atom->nlocal + atom->nghost : atom->nlocal;
  if (held != (all ? nall_ : nlocal_)) return false;
  const int count = all ? n_atoms() : n_centers_;
  const tagint *tag = atom->tag;
  for (int a = 0; a < count; a++) {
    const int i = lammps_index_[a];
    if (i >= held || (tag && tag[i] != tags_[a])) return false;
  }
  return true;
}

void ModelInputs::add_vectors(const double *values, double scale, double **dest) const
{
  for (int a = 0; a < n_atoms(); a++) {
    double *d = dest[lammps_index_[a]];
    d[0] += scale * values[3 * a + 0];
    d[1] += scale * values[3 * a + 1];
    d[2] += scale * values[3 * a + 2];
  }
}

void ModelInputs::set_vectors(const double *values, double scale, double *dest) const
{
  for (int a = 0; a < n_atoms(); a++) {
    double *d = dest + 3 * static_cast<size_t>(lammps_index_[a]);
    d[0] = scale * values[3 * a + 0];
    d[1] = scale * values[3 * a + 1];
    d[2] = scale * values[3 * a + 2];
  }
}

void ModelInputs::set_centres(const double *values, double scale, double *dest) const
{
  for (int c = 0; c < n_centers_; c++) dest[lammps_index_[c]] = scale * values[c];
}

ModelInputs::Contact ModelInputs::closest_pair(const std::vector<char> &flagged, bool only_flagged) const
{
  Contact best;
  tagint bi = 0, bj = 0;
  for (int64_t k = 0; k < n_edges_; k++) {
    const int64_t c = edges_[k], j = edges_[n_edges_ + k];
    if (only_flagged && !flagged[c] && !flagged[j]) continue;
    const double *xc = &positions_[3 * c], *xj = &positions_[3 * j];
    const double d = std::sqrt((xj[0] - xc[0]) * (xj[0] - xc[0]) + (xj[1] - xc[1]) * (xj[1] - xc[1]) +
                               (xj[2] - xc[2]) * (xj[2] - xc[2]));
    if (best.distance < 0.0 || d < best.distance) {
      best.distance = d;
      bi = tags_[c];
      bj = tags_[j];
    }
  }
  best.first = std::min(bi, bj);
  best.second = std::max(bi, bj);
  return best;
}

double ModelInputs::memory_usage() const
{
  return (double) model_index_.capacity() * sizeof(int) + lammps_index_.capacity() * sizeof(int) +
         (double) positions_.capacity() * sizeof(double) + (double) edges_.capacity() * sizeof(int64_t);
}
