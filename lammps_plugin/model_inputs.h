// The model's view of the atoms LAMMPS holds on this rank: which local and ghost atoms it sees,
// in which order (centres first), their pairs within the cutoff, and how to put per-model-atom
// results back at LAMMPS indices. Kept from one force evaluation to the next, because the
// features cached in the model (and the ensemble's re-run) refer to this ordering.
#pragma once

#include "lmptype.h"

#include "llpr/core.h"

#include <cstdint>
#include <vector>

namespace LAMMPS_NS {

class Atom;
class NeighList;

class ModelInputs {
 public:
  // which atoms must still sit where they did at the build (see holds_built_atoms)
  enum Extent {
    CENTRES,  // the local atoms that were centres (nlocal must not have changed)
    ALL       // every atom the model saw, ghosts included (nlocal + nghost must not have changed)
  };

  // Which atoms carry edges, i.e. which graph the model is given.
  enum Graph {
    OWN_EDGES,    // a strictly local model: the centres' edges only; the other model atoms are
                  // the centres' neighbours
    GHOST_GRAPH   // a model that passes messages: every local and ghost atom of the list (which
                  // must hold the ghosts' neighbours too) is a model atom with its own edges
  };

  // Centres: the local atoms of `list` whose type has an element (type_z[type] > 0), in list
  // order; then the other model atoms: with OWN_EDGES the centres' neighbours of mapped types
  // closer than `cutoff`, in order of first appearance; with GHOST_GRAPH the ghost atoms of
  // mapped types, in list order. Edges: every pair closer than `cutoff` of an atom that carries
  // edges (see Graph) with an atom of a mapped type. Ghost atoms are explicit periodic images,
  // so the edges need no shifts.
  void build(const NeighList *list, const Atom *atom, const std::vector<int64_t> &type_z, double cutoff,
             Graph graph);

  llpr::Inputs inputs() const;
  int n_atoms() const { return static_cast<int>(lammps_index_.size()); }
  int n_centers() const { return n_centers_; }
  // LAMMPS index (local or ghost) of model atom a; centres are a < n_centers() (local atoms)
  int lammps_index(int a) const { return lammps_index_[a]; }
  tagint tag(int a) const { return tags_[a]; }

  // Whether `atom` still holds the atoms of the build at the same indices: the same count and the
  // same IDs. Cached results are indexed like the build, so after create_atoms, delete_atoms, a
  // re-sort or a migration they would land on the wrong atoms.
  bool holds_built_atoms(const Atom *atom, Extent extent) const;

  // dest[lammps_index(a)][0..2] += scale * values[3a .. 3a+2] for every model atom
  void add_vectors(const double *values, double scale, double **dest) const;
  // dest[3 lammps_index(a) + 0..2] = scale * values[3a .. 3a+2] for every model atom
  void set_vectors(const double *values, double scale, double *dest) const;
  // dest[lammps_index(c)] = scale * values[c] for every centre
  void set_centres(const double *values, double scale, double *dest) const;

  // The shortest pair of the build, by atom IDs (first < second) and distance (< 0: no pair).
  // With `only_flagged`, only pairs with at least one atom a with flagged[a] != 0 count.
  struct Contact {
    tagint first = 0, second = 0;
    double distance = -1.0;
  };
  Contact closest_pair(const std::vector<char> &flagged, bool only_flagged) const;

  double memory_usage() const;

 private:
  std::vector<int> model_index_;   // LAMMPS index (local + ghost) -> model index, -1 if unused
  std::vector<int> lammps_index_;  // model index -> LAMMPS index (centres first)
  std::vector<double> positions_;
  std::vector<int64_t> numbers_;
  std::vector<int64_t> edges_;     // row 0 (atoms with edges) then row 1 (their neighbours)
  std::vector<int64_t> neighbors_tmp_;
  std::vector<tagint> tags_;       // atom IDs of lammps_index_ (0 without atom IDs)
  int n_centers_ = 0;
  int64_t n_edges_ = 0;
  int nlocal_ = -1;                // nlocal at the build
  int nall_ = 0;                   // nlocal + nghost at the build
};

}  // namespace LAMMPS_NS
