"""The plugin's two computes on groups, under MPI, against the Python reference: a property test
over random systems, rank counts and groups, and the cases of a bug report.

`compute llpr/atom` on a group is [sigma_i, LPR_i] for its atoms and 0 elsewhere; `compute llpr`
is [1] alpha sqrt(S^T C^-1 S) with S the group's summed features, [2] the largest sigma_i in the
group and [3] the ID of its atom (lowest on ties), [0, 0, 0] for an empty group. A rank that owns
none of a group's atoms must add nothing to S: the group's sigma may not depend on the number of
ranks or on the order the computes are evaluated in, and an empty group's is exactly 0. Hence
the groups: atoms of one rank's subdomain only (none on the other ranks), one atom, an empty
group, random masks and `all`, on systems where some ranks own no atoms at all (vacuum along
the split axis)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from lammps_helpers import (
    lammps_module_marks,
    lammps_script,
    make_model,
    MPIRUN,
    reference,
    run_lmp,
    si_diamond,
    sic_zincblende,
    write_data,
)

pytestmark = lammps_module_marks(mpi=True)

TOL = 1e-10
# random systems: a rattled Si diamond supercell and random Si/C on a zincblende one (periodic),
# a Si slab in the lower third of its box (one non-periodic direction) and a Si/C cluster in a
# corner of a box three times its size (f f f); the last two leave ranks without atoms
KINDS = ("si_bulk", "sic_bulk", "si_slab", "sic_cluster")
VACUUM_KINDS = ("si_slab", "sic_cluster")
# chosen so that together they cover every kind and 1, 2, 3 and 4 ranks (test_seeds_cover_...)
SEEDS = (6, 11, 13, 19)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (path, loaded module): the Si-only and the C/Si model, exported once; the module
    gives the reference sigma of a group's energy."""
    from llpr.modelfile import load_exported

    folder = tmp_path_factory.mktemp("group_models")
    paths = {"si": make_model(folder / "si.pt", species=(14,), seed=0),
             "sic": make_model(folder / "sic.pt", species=(6, 14), seed=1)}
    return {name: (path, load_exported(path)) for name, path in paths.items()}


# ------------------------------------------------------------------------------- random cases
def random_case(seed):
    """A random system for `seed`: dict with the kind, model name, atoms (created here, never by
    LAMMPS, so that every rank count sees the same atoms), the element order of the types, the
    boundary, the rank count and the axis the ranks split (`processors`)."""
    rng = np.random.default_rng(seed)
    kind = KINDS[rng.integers(len(KINDS))]
    nprocs = int(rng.integers(1, 5))
    axis = int(rng.integers(3))
    structure_seed = int(rng.integers(2**31))
    pbc = [True, True, True]
    if kind == "si_bulk":
        repeat = [(2, 2, 2), (3, 2, 2), (3, 3, 2), (3, 3, 3)][rng.integers(4)]
        atoms = si_diamond(repeat, rattle=0.1, seed=structure_seed)
    elif kind == "sic_bulk":
        repeat = tuple(int(r) for r in rng.integers(2, 4, size=3))
        atoms = sic_zincblende(repeat, rattle=0.1, seed=structure_seed)
    elif kind == "si_slab":
        atoms = si_diamond((2, 2, 2), rattle=0.1, seed=structure_seed)
        pbc[axis] = False
        cell = atoms.cell.array.copy()
        cell[axis, axis] *= 3
        atoms.set_cell(cell)
        atoms.positions[:, axis] += 1.0  # inside the fixed boundary, rattled atoms included
    else:
        atoms = sic_zincblende((2, 2, 2), rattle=0.1, seed=structure_seed)
        pbc = [False, False, False]
        atoms.set_cell(3 * atoms.cell.array)
        atoms.positions += 1.5
    if kind.startswith("sic"):
        atoms.numbers = rng.choice([6, 14], size=len(atoms))
    atoms.pbc = pbc
    atoms.wrap()  # periodic directions only: positions inside the box, as LAMMPS keeps them
    elements = ["Si"] if kind.startswith("si_") else [str(e) for e in rng.permutation(["Si", "C"])]
    boundary = " ".join("p" if p else "f" for p in pbc)
    return dict(kind=kind, model="si" if kind.startswith("si_") else "sic", atoms=atoms, elements=elements,
                boundary=boundary, nprocs=nprocs, axis=axis, rng=rng)


def subdomain_group(atoms, axis, nprocs, rng, margin=0.05):
    """Atoms (0-based indices) of one rank's subdomain only, `margin` inside its faces: with
    `processors` splitting `axis` evenly, the group is empty on every other rank."""
    x = atoms.positions[:, axis]
    width = atoms.cell[axis, axis] / nprocs
    owner = np.floor(x / width)
    inner = (x - owner * width > margin) & ((owner + 1) * width - x > margin)
    members = np.nonzero(inner & (owner == rng.choice(np.unique(owner[inner]))))[0]
    keep = rng.random(len(members)) < 0.7
    keep[rng.integers(len(members))] = True
    return members[keep]


def random_groups(atoms, axis, nprocs, rng):
    """name -> 0-based atom indices, in a random order (the order the computes are evaluated
    in): random masks, one atom, one rank's subdomain, an empty group and `all`."""
    n = len(atoms)
    groups = {
        "all": np.arange(n),
        "sparse": np.nonzero(rng.random(n) < rng.uniform(0.05, 0.3))[0],
        "dense": np.nonzero(rng.random(n) < rng.uniform(0.5, 0.9))[0],
        "single": rng.integers(n, size=1),
        "subdomain": subdomain_group(atoms, axis, nprocs, rng),
        "nobody": np.zeros(0, dtype=int),
    }
    order = rng.permutation(list(groups))
    return {str(name): groups[name] for name in order}


# ------------------------------------------------------------------------ LAMMPS and checks
def group_command(name, indices, empty_style):
    """`group` by atom IDs; an empty group as `group NAME empty` or by an ID no atom has."""
    if len(indices) == 0:
        return f"group {name} empty" if empty_style == "empty" else f"group {name} id 100000"
    return f"group {name} id " + " ".join(str(i + 1) for i in indices)


def run_groups(folder, model, atoms, elements, boundary, nprocs, axis, groups, empty_style="empty"):
    """`run 0` with `compute llpr/atom` and `compute llpr` on each of `groups` (name -> 0-based
    indices; `all` is LAMMPS' own); returns {"thermo" | "print": {name: [1], [2], [3]}}, the
    dump's columns by name and stdout. Thermo evaluates the global computes first, in the dict's
    order (what the results may not depend on); `print` after the run evaluates them again."""
    grid = ["1", "1", "1"]
    grid[axis] = str(nprocs)
    data = write_data(atoms, folder / "data.lmp", elements)
    lines = []
    for name, indices in groups.items():
        if name != "all":
            lines.append(group_command(name, indices, empty_style))
        lines += [f"compute a_{name} {name} llpr/atom", f"compute g_{name} {name} llpr"]
    lines += [
        "thermo_style custom step " + " ".join(f"c_g_{name}[{j}]" for name in groups for j in (1, 2, 3)),
        "dump d all custom 1 groups.dump id " + " ".join(f"c_a_{name}[1] c_a_{name}[2]" for name in groups),
        "dump_modify d sort id format float %.17g",
        "thermo_modify format float %.17g",
        "run 0",
    ]
    lines += [f'print "GROUP {name} ' + " ".join(f"$(c_g_{name}[{j}]:%.17g)" for j in (1, 2, 3)) + '"'
              for name in groups]
    script = lammps_script(model, data, elements, boundary=boundary, pre="processors " + " ".join(grid),
                           post="\n".join(lines) + "\n")
    proc = run_lmp(script, folder, nprocs=nprocs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{' by '.join(grid)} MPI processor grid" in proc.stdout
    out = proc.stdout.splitlines()
    header = [k for k, ln in enumerate(out) if ln.split()[:1] == ["Step"]][-1]
    thermo = [float(v) for v in out[header + 1].split()[1:]]
    vectors = {"thermo": {name: np.array(thermo[3 * k:3 * k + 3]) for k, name in enumerate(groups)},
               "print": {ln.split()[1]: np.array([float(v) for v in ln.split()[2:]])
                         for ln in out if ln.startswith("GROUP ")}}
    dump = (folder / "groups.dump").read_text().splitlines()
    start = [k for k, ln in enumerate(dump) if ln.startswith("ITEM: ATOMS")][0]
    table = np.array([[float(v) for v in ln.split()] for ln in dump[start + 1:]])
    columns = dict(zip(dump[start].split()[2:], table.T))
    return vectors, columns, proc.stdout


def ranks_without_atoms(stdout):
    """Whether some rank owned no atoms (the minimum of LAMMPS' Nlocal statistics is 0)."""
    nlocal = [ln.split() for ln in stdout.splitlines() if ln.startswith("Nlocal:")][-1]
    return nlocal[-2:] == ["0", "min"]


def close(got, want):
    return abs(got - want) <= TOL * max(1.0, abs(want))


def group_problems(vectors, columns, ref, module, groups):
    """Every disagreement of the computes (the global vectors as thermo and as `print` evaluated
    them) with the Python reference, as readable lines."""
    n = len(ref["sigma"])
    if list(columns["id"].astype(int)) != list(range(1, n + 1)):
        return ["dump: atom IDs are not 1..N"]
    problems = []
    for name, indices in groups.items():
        mask = np.zeros(n, dtype=bool)
        mask[indices] = True
        label = f"{name} ({mask.sum()} atoms)"
        for col, key in ((1, "sigma"), (2, "lpr")):
            got, want = columns[f"c_a_{name}[{col}]"], np.where(mask, ref[key], 0.0)
            dev = float(np.max(np.abs(got - want)))
            if dev > TOL * max(1.0, float(np.max(np.abs(want)))):
                problems.append(f"{label} llpr/atom [{col}] {key}: max deviation {dev:.3g}")
        for source, by_name in vectors.items():
            found = vector_problems(by_name[name], mask, columns[f"c_a_{name}[1]"], ref, module)
            problems += [f"{label} llpr by {source}: {p}" for p in found]
    return problems


def vector_problems(got, mask, dumped_sigma, ref, module):
    """How `compute llpr` [1], [2], [3] of the group `mask` differ from the Python reference."""
    got = [float(v) for v in got]
    if not mask.any():
        return [] if got == [0.0, 0.0, 0.0] else [f"{got}, not exactly [0, 0, 0]"]
    problems = []
    s = torch.from_numpy(ref["features"][mask].sum(0))
    want = float(torch.sqrt(module.energy_variance(s)))
    if not close(got[0], want):
        problems.append(f"[1] {got[0]!r}, Python {want!r} (ratio {got[0] / want:.4g})")
    group_sigma = ref["sigma"][mask]
    if not close(got[1], group_sigma.max()):
        problems.append(f"[2] {got[1]!r}, Python {float(group_sigma.max())!r}")
    # [3]: Python's atom exactly, unless atoms tie to round-off (a perfect crystal), then any of
    # the tied; and LAMMPS' own: the lowest ID whose dumped sigma equals [2] bit for bit
    ids = np.nonzero(mask)[0] + 1
    tied = ids[[close(v, group_sigma.max()) for v in group_sigma]]
    if got[2] not in tied:
        problems.append(f"[3] atom {got[2]:g}, Python {list(tied)}")
    dumped = dumped_sigma[mask]
    if dumped.max() != got[1] or ids[np.argmax(dumped)] != got[2]:
        problems.append(f"[2], [3] = {got[1]!r}, {got[2]:g}: not the group's largest dumped sigma "
                        f"{float(dumped.max())!r} and its lowest ID {ids[np.argmax(dumped)]}")
    return problems


# -------------------------------------------------------------------------------------- tests
def test_seeds_cover_kinds_and_rank_counts():
    """The random cases below reach every kind of system, 1-4 ranks and ranks without atoms."""
    cases = [random_case(seed) for seed in SEEDS]
    assert {c["kind"] for c in cases} == set(KINDS)
    assert {c["nprocs"] for c in cases} == {1, 2, 3, 4}
    assert any(c["kind"] in VACUUM_KINDS and c["nprocs"] > 1 for c in cases)
    assert any(c["kind"] not in VACUUM_KINDS and c["nprocs"] > 1 for c in cases)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_groups_match_python(models, tmp_path, seed):
    """Both computes on random groups (evaluated in a random order) of a random system on a
    random rank count equal the Python reference."""
    case = random_case(seed)
    rng, atoms = case["rng"], case["atoms"]
    model, module = models[case["model"]]
    groups = random_groups(atoms, case["axis"], case["nprocs"], rng)
    empty_style = str(rng.choice(["empty", "unknown id"]))
    ref = reference(model, atoms)
    vectors, columns, stdout = run_groups(tmp_path, model, atoms, case["elements"], case["boundary"],
                                          case["nprocs"], case["axis"], groups, empty_style)
    if case["kind"] in VACUUM_KINDS and case["nprocs"] > 1:
        assert ranks_without_atoms(stdout)
    summary = (f"seed {seed}: {case['kind']}, {len(atoms)} atoms, boundary {case['boundary']}, "
               f"{case['nprocs']} ranks along axis {case['axis']}, empty group by {empty_style}, "
               "groups (in order) " + ", ".join(f"{name} {len(idx)}" for name, idx in groups.items()))
    print(summary)
    problems = group_problems(vectors, columns, ref, module, groups)
    assert not problems, summary + "\n" + "\n".join(problems)


def top_layers_crystal():
    """The bug report's system: a perfect 512-atom Si diamond crystal (4x4x4 cubic cells,
    a = 5.431 A, (001) layers every a/4) and its two top layers (z = 19.01, 20.37 A), which lie
    inside the top subdomain of `processors 1 1 *` on 1, 2 and 4 ranks."""
    atoms = si_diamond((4, 4, 4), rattle=0.0)
    top = np.nonzero(atoms.positions[:, 2] > 19.0)[0]
    assert len(top) == 64
    return atoms, top


@pytest.mark.parametrize("nprocs", [1, 2, 4])
def test_top_layers_sigma_independent_of_rank_count(models, tmp_path, nprocs):
    """Bug report: the group of the top layers, evaluated first, had a larger sigma on more ranks
    (the ranks without any of its atoms added all theirs); it equals the Python value (1e-10) on
    1, 2 and 4 ranks, hence also the same on all of them."""
    model, module = models["si"]
    atoms, top = top_layers_crystal()
    groups = {"top": top, "all": np.arange(len(atoms))}
    vectors, columns, _ = run_groups(tmp_path, model, atoms, ["Si"], "p p p", nprocs, 2, groups)
    problems = group_problems(vectors, columns, reference(model, atoms), module, groups)
    assert not problems, f"{nprocs} ranks:\n" + "\n".join(problems)


@pytest.mark.parametrize("nprocs", [1, 2])
def test_empty_group_evaluated_first_is_zero(models, tmp_path, nprocs):
    """Bug report: an empty group, its compute evaluated before any other, returned the whole
    system's sigma; it is exactly [0, 0, 0] (and `all` evaluated after it is still right)."""
    model, module = models["si"]
    atoms, top = top_layers_crystal()
    groups = {"nobody": np.zeros(0, dtype=int), "all": np.arange(len(atoms)), "top": top}
    vectors, columns, _ = run_groups(tmp_path, model, atoms, ["Si"], "p p p", nprocs, 2, groups)
    problems = group_problems(vectors, columns, reference(model, atoms), module, groups)
    assert not problems, f"{nprocs} ranks:\n" + "\n".join(problems)
