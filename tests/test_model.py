"""The reference potential: scriptable, float32/float64, smooth, local, species-aware."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from llpr.models.checkpoint import load_model, save_model
from llpr.graphs import graph_tensors
from llpr.models.potential import LocalPotential, edge_vectors_from_positions


def _energy(model, atoms, dtype=torch.float64):
    g = graph_tensors(atoms, model.cutoff, dtype)
    ev = edge_vectors_from_positions(g["positions"], g["edge_index"], g["edge_shifts"])
    e, f = model(g["atomic_numbers"], g["edge_index"], ev, len(atoms))
    return e, f


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scripted_model_matches_eager(dtype):
    torch.manual_seed(0)
    model = LocalPotential([6, 14]).to(dtype)
    scripted = torch.jit.script(model)
    atoms = bulk("SiC", "zincblende", 4.36, cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=0)
    e1, f1 = _energy(model, atoms, dtype)
    e2, f2 = _energy(scripted, atoms, dtype)
    assert e1.dtype == dtype and f1.dtype == dtype
    assert f1.shape == (len(atoms), model.n_features)
    tol = {"rtol": 1e-13, "atol": 1e-13} if dtype == torch.float64 else {}
    torch.testing.assert_close(e1, e2, **tol)
    torch.testing.assert_close(f1, f2, **tol)


def test_energy_and_forces_vanish_smoothly_at_cutoff():
    torch.manual_seed(1)
    model = LocalPotential([14]).double()
    rc = model.cutoff

    def dimer(r):
        atoms = Atoms("Si2", positions=[[0, 0, 0], [r, 0, 0]], pbc=False)
        pos = torch.tensor(atoms.positions, requires_grad=True)
        g = graph_tensors(atoms, rc + 1.0)  # list pairs beyond the cutoff too
        ev = edge_vectors_from_positions(pos, g["edge_index"], g["edge_shifts"])
        e, _ = model(g["atomic_numbers"], g["edge_index"], ev, 2)
        e0 = model.energy_shift[0] * 2
        (grad,) = torch.autograd.grad(e.sum(), pos)
        return float((e.sum() - e0).detach()), float(grad[1, 0])

    e_in, f_in = dimer(rc - 1e-4)
    e_out, f_out = dimer(rc + 1e-4)
    isolated, _ = dimer(10.0)
    assert abs(e_in - isolated) < 1e-9 and abs(f_in) < 1e-6
    assert e_out == isolated and f_out == 0.0


def test_strictly_local_receptive_field():
    """Moving an atom beyond the cutoff of atom 0 leaves atom 0's energy unchanged."""
    torch.manual_seed(2)
    model = LocalPotential([14]).double()
    atoms = Atoms("Si3", positions=[[0, 0, 0], [2.3, 0, 0], [2.3 + 3.0, 0.5, 0]], pbc=False)
    e1, _ = _energy(model, atoms)
    atoms.positions[2] += [0.3, 0.4, 0.1]  # atom 2 stays > cutoff from atom 0
    e2, _ = _energy(model, atoms)
    assert float(e1[0]) == float(e2[0])
    assert float(e1[2]) != float(e2[2])


def test_angular_information():
    """Two structures with identical distance lists to the centre but different angles
    get different energies (three-body term)."""
    torch.manual_seed(3)
    model = LocalPotential([14]).double()
    r = 2.35
    straight = Atoms("Si3", positions=[[0, 0, 0], [r, 0, 0], [-r, 0, 0]])
    bent = Atoms("Si3", positions=[[0, 0, 0], [r, 0, 0], [0, r, 0]])
    e1, _ = _energy(model, straight)
    e2, _ = _energy(model, bent)
    assert abs(float(e1[0] - e2[0])) > 1e-6


def test_species_awareness():
    torch.manual_seed(4)
    model = LocalPotential([6, 14]).double()
    a = Atoms("SiC", positions=[[0, 0, 0], [1.9, 0, 0]])
    b = Atoms("SiSi", positions=[[0, 0, 0], [1.9, 0, 0]])
    ea, _ = _energy(model, a)
    eb, _ = _energy(model, b)
    assert abs(float(ea[0] - eb[0])) > 1e-6


def test_invalid_construction():
    with pytest.raises(ValueError, match="at least one species"):
        LocalPotential([])
    with pytest.raises(ValueError, match="distinct atomic numbers"):
        LocalPotential([14, 14])
    with pytest.raises(ValueError, match="cutoff"):
        LocalPotential([14], cutoff=-1.0)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(5)
    model = LocalPotential([14], hidden=(8, 8)).double()
    path = str(tmp_path / "m.ckpt")
    save_model(model, path)
    loaded = load_model(path)
    atoms = bulk("Si", "diamond", 5.431, cubic=True)
    atoms.rattle(0.05, seed=1)
    torch.testing.assert_close(_energy(model, atoms)[0], _energy(loaded, atoms)[0], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "missing.ckpt"))
    (tmp_path / "bad.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable llpr checkpoint"):
        load_model(str(tmp_path / "bad.ckpt"))


@pytest.mark.parametrize("l_max", [0, 1, 3])
def test_invariants_match_their_definition(l_max):
    """The batched (padded) moment contraction equals the definition written out pair by pair:
    two-body ``sum_j R_n(r_ij)`` and three-body ``sum_{j,k} R_n(r_ij) R_n'(r_ik) cos^L(theta_jik)``
    for n <= n', on a two-species cell whose edges come unsorted (shuffled)."""
    torch.manual_seed(3)
    model = LocalPotential([6, 14], l_max=l_max, n_channels=3, n_basis=5).double()
    atoms = bulk("SiC", "zincblende", 4.36, cubic=True)
    atoms.rattle(0.1, seed=2)
    g = graph_tensors(atoms, model.cutoff, torch.float64)
    perm = torch.randperm(g["edge_index"].shape[1], generator=torch.Generator().manual_seed(0))
    edge_index = g["edge_index"][:, perm]
    vectors = edge_vectors_from_positions(g["positions"], edge_index, g["edge_shifts"][perm])
    species = model.species_index(g["atomic_numbers"])
    got = model.invariants(species, edge_index, vectors, len(atoms)).detach().numpy()

    r = vectors.norm(dim=1)
    x = (r / model.cutoff).clamp(max=1.0)
    fc = 1 - x**3 * (10 - 15 * x + 6 * x**2)
    basis = torch.exp(-(((r[:, None] - model.basis_centers) / model.basis_width) ** 2)) * fc[:, None]
    S, C = model.n_species, model.n_channels
    W = model.radial_mixing.detach().view(-1, S * S, C)
    pair = species[edge_index[0]] * S + species[edge_index[1]]
    R = torch.einsum("ek,ekc->ec", basis, W[:, pair].permute(1, 0, 2)).detach().numpy()
    u = (vectors / r[:, None]).numpy()
    rows, cols = model.pair_rows.numpy(), model.pair_cols.numpy()
    for i in range(len(atoms)):
        mine = np.flatnonzero(edge_index[0].numpy() == i)
        expected = [R[mine].sum(axis=0)]
        cos = u[mine] @ u[mine].T
        for L in range(l_max + 1):
            gram = np.einsum("jn,km,jk->nm", R[mine], R[mine], cos**L)
            expected.append(gram[rows, cols])
        np.testing.assert_allclose(got[i], np.concatenate(expected), rtol=1e-12, atol=1e-12)
