"""Neighbour lists for ASE structures, computed with vesin (periodic or not)."""

from __future__ import annotations

import numpy as np
import torch
from vesin import NeighborList

from llpr.data import check_structure, stress_label, structure_name


def neighbor_list(atoms, cutoff: float, where: str = "structure") -> tuple[np.ndarray, np.ndarray]:
    """Full neighbour list of ``atoms`` within ``cutoff`` (``where`` names the structure in
    messages, e.g. "structure 3 in 'test.xyz'").

    Returns ``edge_index`` (2, E) int64 with centre atoms in row 0 and neighbours in row 1
    (every pair appears in both directions) and ``edge_shifts`` (E, 3) float64, the
    Cartesian periodic-image offsets so that ``r_j - r_i + shift`` is the pair vector.
    """
    positions = np.ascontiguousarray(atoms.positions, dtype=np.float64)
    if not np.all(np.isfinite(positions)):
        raise ValueError(f"{where} has non-finite (NaN or inf) positions; fix the input structure")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if pbc.any():
        if not np.all(pbc):
            if np.abs(np.linalg.det(cell)) < 1e-12:
                raise ValueError(
                    f"{where} is periodic only along {pbc.tolist()} and needs a full, non-degenerate cell "
                    f"(three independent vectors, also along the non-periodic directions; cell {cell.tolist()})"
                )
        elif np.abs(np.linalg.det(cell)) < 1e-12:
            raise ValueError(
                f"{where} is periodic but its cell is degenerate (a zero-length or linearly dependent cell "
                f"vector, cell {cell.tolist()}); give three independent cell vectors (Lattice=)"
            )
    calculator = NeighborList(cutoff=float(cutoff), full_list=True)
    if pbc.any():
        i, j, S = calculator.compute(points=positions, box=cell, periodic=pbc, quantities="ijS")
    else:
        i, j, S = calculator.compute(points=positions, box=np.zeros((3, 3)), periodic=False, quantities="ijS")
    edge_index = np.stack([np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)])
    edge_shifts = np.asarray(S, dtype=np.float64) @ cell
    return edge_index, edge_shifts


def graph_tensors(atoms, cutoff: float, dtype=torch.float64, device=None, where: str = "structure"
                  ) -> dict[str, torch.Tensor]:
    """The model inputs of one ASE structure: ``positions``, ``atomic_numbers``, ``edge_index``
    and ``edge_shifts`` (see :func:`neighbor_list`), in the order an exported model takes them.

    ``dtype`` (of positions and shifts) is a torch dtype or its name as an exported file stores
    it (``module.dtype``: ``"float32"`` or ``"float64"``); ``device`` is where the tensors go;
    ``where`` names the structure in messages.
    """
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    edge_index, edge_shifts = neighbor_list(atoms, cutoff, where)
    return {
        "positions": torch.tensor(atoms.positions, dtype=dtype, device=device),
        "atomic_numbers": torch.tensor(atoms.numbers, dtype=torch.long, device=device),
        "edge_index": torch.as_tensor(edge_index, device=device),
        "edge_shifts": torch.tensor(edge_shifts, dtype=dtype, device=device),
    }


class AtomisticDataset(torch.utils.data.Dataset):
    """Labelled structures turned into graphs once (neighbour lists are computed up front).

    Each item is a dict of tensors for one structure; :func:`collate` joins items into a
    batch. Labels follow the convention of :mod:`llpr.data`: ``atoms.info["energy"]`` (eV),
    ``atoms.arrays["forces"]`` (eV/A) and, where present, ``atoms.info["stress"]`` (eV/A^3,
    fully periodic cells only; items then also hold the cell ``volume``); unlabelled
    structures are allowed when ``require_labels`` is False. Structures no model can take (no
    atoms, a zero-length periodic cell vector, a NaN or inf label: :func:`llpr.data.check_structure`)
    are refused, named by their index and ``source`` (e.g. "the training set" or a file name).
    """

    def __init__(self, atoms_list, cutoff: float, dtype=torch.float32, require_labels: bool = True,
                 source: str | None = None):
        atoms_list = list(atoms_list)
        if len(atoms_list) == 0:
            raise ValueError("the dataset is empty: give at least one structure")
        self.items = []
        for k, atoms in enumerate(atoms_list):
            check_structure(atoms, k, source)
            where = structure_name(k, source)
            item = graph_tensors(atoms, cutoff, dtype, where=where)
            energy = atoms.info.get("energy")
            forces = atoms.arrays.get("forces")
            if require_labels and (energy is None or forces is None):
                raise ValueError(
                    f"{where} has no energy/forces labels (atoms.info['energy'], "
                    "atoms.arrays['forces']); label it first, e.g. with llpr.lammps.labelling.label_structures"
                )
            if energy is not None:
                item["energy"] = torch.tensor(float(energy), dtype=torch.float64)
            if forces is not None:
                item["forces"] = torch.tensor(np.asarray(forces), dtype=dtype)
            stress = stress_label(atoms, k, source)
            if stress is not None:
                item["stress"] = torch.tensor(stress, dtype=torch.float64)
                item["volume"] = torch.tensor(float(atoms.get_volume()), dtype=torch.float64)
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class StreamingDataset(torch.utils.data.IterableDataset):
    """The structures of an extended-XYZ file, read and turned into graphs one at a time, so
    that a training set of any size is fitted in bounded memory.

    With ``rank`` / ``world_size`` (default: from ``torch.distributed`` when it is initialised)
    each process takes every ``world_size``-th structure, starting at ``rank``. Labels are kept
    when present (``energy_key`` / ``forces_key`` name them, see :func:`llpr.data.rename_labels`);
    fitting the covariance needs none."""

    def __init__(self, path: str, cutoff: float, dtype=torch.float32, energy_key: str = "energy",
                 forces_key: str = "forces", rank: int | None = None, world_size: int | None = None):
        import os

        if not os.path.exists(path):
            raise FileNotFoundError(f"dataset file '{path}' does not exist; check the path")
        if rank is None or world_size is None:
            dist = torch.distributed
            initialised = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if initialised else 0
            world_size = dist.get_world_size() if initialised else 1
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.path, self.cutoff, self.dtype = path, cutoff, dtype
        self.energy_key, self.forces_key = energy_key, forces_key
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        from ase.io import iread

        from llpr.data import rename_labels

        for k, atoms in enumerate(iread(self.path, index=":", format="extxyz")):
            if k % self.world_size != self.rank:
                continue
            atoms = rename_labels(atoms, self.energy_key, self.forces_key)
            check_structure(atoms, k, self.path)
            item = graph_tensors(atoms, self.cutoff, self.dtype, where=structure_name(k, self.path))
            if "energy" in atoms.info:
                item["energy"] = torch.tensor(float(atoms.info["energy"]), dtype=torch.float64)
            if "forces" in atoms.arrays:
                item["forces"] = torch.tensor(np.asarray(atoms.arrays["forces"]), dtype=self.dtype)
            yield item


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Join per-structure graphs into one disconnected graph with a ``batch`` index.

    When any item has a stress label, the batch holds ``stress`` (n_structures, 6) and
    ``volume`` (n_structures,) for every structure (zeros where there is no label) and
    ``has_stress`` (n_structures,), which says where there is."""
    offsets = 0
    positions, numbers, edges, shifts, batch, forces, energies, n_atoms = [], [], [], [], [], [], [], []
    for k, item in enumerate(items):
        n = item["positions"].shape[0]
        positions.append(item["positions"])
        numbers.append(item["atomic_numbers"])
        edges.append(item["edge_index"] + offsets)
        shifts.append(item["edge_shifts"])
        batch.append(torch.full((n,), k, dtype=torch.long))
        n_atoms.append(n)
        if "forces" in item:
            forces.append(item["forces"])
        if "energy" in item:
            energies.append(item["energy"])
        offsets += n
    out = {
        "positions": torch.cat(positions),
        "atomic_numbers": torch.cat(numbers),
        "edge_index": torch.cat(edges, dim=1),
        "edge_shifts": torch.cat(shifts),
        "batch": torch.cat(batch),
        "n_atoms": torch.tensor(n_atoms, dtype=torch.long),
        "n_structures": torch.tensor(len(items)),
    }
    if len(forces) == len(items):
        out["forces"] = torch.cat(forces)
    if len(energies) == len(items):
        out["energy"] = torch.stack(energies)
    if any("stress" in item for item in items):
        out["has_stress"] = torch.tensor(["stress" in item for item in items])
        out["stress"] = torch.stack([item.get("stress", torch.zeros(6, dtype=torch.float64)) for item in items])
        out["volume"] = torch.stack([item.get("volume", torch.zeros((), dtype=torch.float64)) for item in items])
    return out


def make_loader(dataset: AtomisticDataset, batch_size: int = 8, shuffle: bool = False, seed: int = 0):
    """A torch DataLoader over ``dataset`` with :func:`collate` (deterministic shuffling)."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator
    )
