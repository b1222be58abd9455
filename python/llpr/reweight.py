"""Model uncertainty of thermodynamic averages from one MD run: reweighting the mean model's
trajectory to every member of the last-layer ensemble.

Member ``k`` of the ensemble is the network with read-out ``w_k = w + dw_k``; its energy is
``E_k = E + dE_k`` with ``dE_k = dw_k . s`` (``s``: the summed last-layer features of the
system), which ``compute ID all llpr ensemble yes`` gives every step. A trajectory sampled
with the mean model (canonical or isothermal-isobaric, temperature ``T``) is a sample of
member ``k``'s ensemble with the weights

    w_k(t) = exp(-beta dE_k(t)) / sum_t' exp(-beta dE_k(t')),    beta = 1 / (k_B T)

(the ``P V`` term is the same for every member, so the weights hold in NPT too). For an
observable ``A`` (``A_k`` for one that depends on the model itself, e.g. ``pe + dE_k``):

* direct (exponential) reweighting: ``<A>_k = sum_t w_k(t) A_k(t)``;
* cumulant expansion (CEA, first order in beta): ``<A>_k = <A_k> - beta cov(A_k, dE_k)``,
  exact when ``A`` and ``dE_k`` are jointly Gaussian, and much less noisy than direct
  reweighting when the weights are uneven;
* model uncertainty: the spread over the members, ``std_k <A>_k`` (Bessel);
* sampling error: block jackknife, with a block length from the automated blocking test of
  Jonsson (Phys. Rev. E 98, 043304 (2018)) on the observable and on every ``dE_k``;
* effective sample size of member ``k``'s weights (Kish): ``1 / sum_t w_k(t)^2`` frames.

References: Imbalzano, Zhuang, Kapil, Rossi, Engel, Grasselli & Ceriotti, J. Chem. Phys. 154,
074102 (2021); Kellner & Ceriotti, arXiv:2402.16621 (2024). The method, its assumptions and
its limits: docs/method.md; the LAMMPS side: docs/compute_llpr.md.

Readers for LAMMPS output (the log's thermo tables, ``fix ave/time`` files in scalar and
vector mode) are here too, and :func:`export_member` writes member ``k`` as a model file of
its own (to check the reweighting against MD run with that member directly).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

# LAMMPS' own Boltzmann constants (update.cpp), so that beta matches the thermostat's
BOLTZMANN = {"metal": 8.617343e-5, "real": 0.0019872067}

# thermo keywords whose value depends on the model: member k's value is the mean model's plus
# its energy deviation (energies) or its pressure deviation (pressures, tensor index or None)
ENERGY_KEYWORDS = ("pe", "etotal", "evdwl", "epair", "c_thermo_pe")
PRESSURE_KEYWORDS = {"press": None, "c_thermo_press": None, "pxx": 0, "pyy": 1, "pzz": 2, "pxy": 3, "pxz": 4,
                     "pyz": 5}
# thermo keywords that depend on the model but that this module does not rebuild per member
MODEL_DEPENDENT_OTHER = ("enthalpy", "ecoul", "elong", "emol", "ebond", "eangle", "edihed", "eimp", "etail")
# thermo keywords that are not observables (bookkeeping, timings)
NOT_OBSERVABLES = ("step", "elapsed", "elaplong", "dt", "time", "cpu", "tpcpu", "spcpu", "cpuremain", "part",
                   "timeremain", "atoms")
# the column headers LAMMPS writes for thermo keywords (thermo.cpp)
THERMO_HEADERS = {
    "step": "Step", "elapsed": "Elapsed", "elaplong": "Elaplong", "dt": "Dt", "time": "Time", "cpu": "CPU",
    "tpcpu": "T/CPU", "spcpu": "S/CPU", "cpuremain": "CPULeft", "part": "Part", "timeremain": "TimeoutLeft",
    "atoms": "Atoms", "temp": "Temp", "press": "Press", "pe": "PotEng", "ke": "KinEng", "etotal": "TotEng",
    "enthalpy": "Enthalpy", "evdwl": "E_vdwl", "ecoul": "E_coul", "epair": "E_pair", "ebond": "E_bond",
    "eangle": "E_angle", "edihed": "E_dihed", "eimp": "E_impro", "emol": "E_mol", "elong": "E_long",
    "etail": "E_tail", "vol": "Volume", "density": "Density", "lx": "Lx", "ly": "Ly", "lz": "Lz",
    "pxx": "Pxx", "pyy": "Pyy", "pzz": "Pzz", "pxy": "Pxy", "pxz": "Pxz", "pyz": "Pyz",
}
_KEYWORD_OF_HEADER = {header: key for key, header in THERMO_HEADERS.items()}


def thermo_keyword(name: str) -> str:
    """The thermo keyword of a column name given as keyword (``pe``) or header (``PotEng``)."""
    return _KEYWORD_OF_HEADER.get(name, name.lower())


MAX_BLOCKS = 200
DEFAULT_MIN_ESS_FRACTION = 0.1
DEFAULT_MIN_ESS_FRAMES = 20


class ReweightWarning(UserWarning):
    """Emitted (and stored in the result) when an estimate is not to be trusted."""


# -------------------------------------------------------------------------------- LAMMPS files
@dataclass
class Table:
    """Per-frame data read from LAMMPS output: ``steps`` (T,) and ``columns``, each (T,) for a
    scalar column or (T, R) for a column of a ``fix ave/time ... mode vector`` file (R rows)."""

    path: str
    steps: np.ndarray
    columns: dict
    kind: str = "scalar"  # or "vector"

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise ValueError(
                f"{self.path} has no column {name!r}; its columns are: {', '.join(self.columns) or '(none)'}"
            )
        return self.columns[name]


@dataclass
class LogInfo:
    """What the log says besides its thermo tables."""

    units: str | None = None
    norm: bool = False  # thermo_modify norm yes: extensive values are divided by the atom count
    atoms: list = field(default_factory=list)  # atom count of each run ("... with N atoms")
    computes: dict = field(default_factory=dict)  # llpr ensemble computes: id -> layout
    ave_time: dict = field(default_factory=dict)  # output file -> (nevery, nrepeat, nfreq, ave mode)


_LAYOUT = re.compile(
    r"^llpr: compute (\S+) \(group (\S+)\): (\d+) members; dE_k in c_\S+\[(\d+)\]\.\.c_\S+\[(\d+)\]"
    r"(?:; dP_k in c_\S+\[(\d+)\]\.\.c_\S+\[(\d+)\]; pressure tensor deviations \([^)]*\) in "
    r"c_\S+\[(\d+)\]\.\.c_\S+\[(\d+)\])?"
)


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def read_log(path: str):
    """Thermo tables of a LAMMPS log (one per run, ``thermo_style custom`` one line per step)
    and what the log says about units, normalisation and llpr ensemble computes.
    Returns ``(tables, info)``: a list of :class:`Table` and a :class:`LogInfo`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LAMMPS log {path!r} does not exist")
    with open(path, errors="replace") as fh:
        lines = fh.read().splitlines()
    info = LogInfo()
    tables, header, rows = [], None, []

    def close():
        nonlocal header, rows
        if header is not None:
            data = np.array(rows, dtype=float).reshape(len(rows), len(header))
            steps_col = [k for k, name in enumerate(header) if name.lower() == "step"]
            if not steps_col:
                raise ValueError(f"{path}: a thermo table without a Step column; add step to thermo_style custom")
            columns = {name: data[:, k] for k, name in enumerate(header)}
            tables.append(Table(path, data[:, steps_col[0]].astype(np.int64), columns))
        header, rows = None, []

    for line in lines:
        words = line.split()
        if header is not None:
            if len(words) == len(header) and all(_is_number(w) for w in words):
                rows.append([float(w) for w in words])
                continue
            if line.startswith("Loop time of"):
                m = re.search(r"with (\d+) atoms", line)
                if m:
                    info.atoms.append(int(m.group(1)))
                close()
            continue  # warnings and other output inside a run
        if words and words[0] == "Step" and len(words) > 1 and not any(_is_number(w) for w in words):
            header = words
            continue
        if words[:1] == ["units"] and len(words) > 1:
            info.units = words[1]
        elif words[:1] == ["thermo_modify"] and "norm" in words:
            k = words.index("norm")
            if k + 1 < len(words):
                info.norm = words[k + 1] in ("yes", "1", "on", "true")
        elif words[:1] == ["thermo_style"] and len(words) > 1 and words[1] in ("multi", "yaml"):
            raise ValueError(
                f"{path}: thermo_style {words[1]} is not read here; use thermo_style custom (one line per step)"
            )
        elif line.startswith("llpr: compute"):
            m = _LAYOUT.match(line)
            if m:
                g = [int(x) if x is not None else None for x in m.groups()[2:]]
                info.computes[m.group(1)] = {"group": m.group(2), "members": g[0], "dE": (g[1], g[2]),
                                             "dP": (g[3], g[4]) if g[3] else None,
                                             "dP_tensor": (g[5], g[6]) if g[5] else None}
        elif len(words) >= 8 and words[0] == "fix" and words[3] == "ave/time" and "file" in words:
            try:
                nums = (int(words[4]), int(words[5]), int(words[6]))
            except ValueError:
                continue  # variables in the command; nothing to check
            ave = words[words.index("ave") + 1] if "ave" in words[:-1] else "one"
            info.ave_time[os.path.basename(words[words.index("file") + 1])] = nums + (ave,)
    close()
    if not tables:
        raise ValueError(f"{path}: no thermo table found (a line starting with 'Step' and rows of numbers)")
    return tables, info


def read_ave_time(path: str) -> Table:
    """A ``fix ave/time`` output file: scalar mode (one line per output step, one column per
    value) or vector mode (per output step a line ``step nrows`` and ``nrows`` rows)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"fix ave/time file {path!r} does not exist")
    with open(path) as fh:
        lines = fh.read().splitlines()
    comments = [ln[1:].split() for ln in lines if ln.startswith("#")]
    body = [ln.split() for ln in lines if ln.strip() and not ln.startswith("#")]
    if len(comments) < 2 or not comments[1] or comments[1][0] != "TimeStep":
        raise ValueError(f"{path} does not look like a fix ave/time file (no '# TimeStep ...' header line)")
    if len(comments[1]) >= 2 and comments[1][1] == "Number-of-rows":
        names = comments[2][1:] if len(comments) > 2 and comments[2][:1] == ["Row"] else []
        steps, frames, k = [], [], 0
        while k < len(body):
            step, nrows = int(body[k][0]), int(body[k][1])
            block = np.array([[float(x) for x in row[1:]] for row in body[k + 1:k + 1 + nrows]])
            if block.shape[0] != nrows:
                raise ValueError(f"{path}: the block of step {step} is cut short (file still being written?)")
            steps.append(step)
            frames.append(block)
            k += 1 + nrows
        if not frames:
            raise ValueError(f"{path} holds no data")
        data = np.stack(frames)  # (T, R, C)
        names = names or [f"column{c + 1}" for c in range(data.shape[2])]
        return Table(path, np.array(steps, dtype=np.int64), {n: data[:, :, c] for c, n in enumerate(names)}, "vector")
    names = comments[1][1:]
    rows = [r for r in body if len(r) == len(names) + 1]
    if not rows:
        raise ValueError(f"{path} holds no data")
    data = np.array(rows, dtype=float)
    return Table(path, data[:, 0].astype(np.int64), {n: data[:, c + 1] for c, n in enumerate(names)})


# ------------------------------------------------------------------------------ the estimators
def _blocking_level(x: np.ndarray) -> int:
    """Blocking level j (block length 2^j) at which the blocked series of ``x`` is
    uncorrelated, by the chi-square test of Jonsson, Phys. Rev. E 98, 043304 (2018)."""
    from scipy.stats import chi2

    x = np.asarray(x, dtype=float)
    gammas, variances, sizes = [], [], []
    while x.size >= 2:
        n = x.size
        mu = x.mean()
        gammas.append(float(np.sum((x[:-1] - mu) * (x[1:] - mu)) / n))
        variances.append(float(np.var(x)))
        sizes.append(n)
        x = 0.5 * (x[0:2 * (n // 2):2] + x[1:2 * (n // 2):2])
    d = len(sizes)
    if d == 0 or variances[0] == 0.0:
        return 0
    terms = []
    for n, g, s in zip(sizes, gammas, variances):
        terms.append(n * ((n - 1) * s / n ** 2 + g) ** 2 / s ** 2 if s > 0 else 0.0)
    tail = np.cumsum(terms[::-1])[::-1]
    for j in range(d):
        if tail[j] < chi2.ppf(0.99, d - j):
            return j
    return d - 1


def block_length(series) -> int:
    """Block length (frames) after which every series in ``series`` (arrays (T,) or (T, M),
    columns tested one by one) is uncorrelated."""
    level = 0
    for s in series:
        s = np.asarray(s, dtype=float)
        cols = s.reshape(s.shape[0], -1)
        for c in range(cols.shape[1]):
            if np.ptp(cols[:, c]) > 0:
                level = max(level, _blocking_level(cols[:, c]))
    return 2 ** level


def block_average(values, blocks="auto") -> tuple:
    """Mean of a time series (T,) or (T, M) of equally spaced frames and its sampling error
    (block jackknife, block length from the blocking test unless ``blocks`` gives the number
    of blocks): ``(mean, error, block_length)``."""
    x = np.asarray(values, dtype=np.float64)
    T = x.shape[0]
    length = block_length([x]) if blocks == "auto" else T // int(blocks)
    n_blocks = max(2, T // max(1, length))
    length = T // n_blocks
    xb = x[T - n_blocks * length:].reshape((n_blocks, length) + x.shape[1:]).mean(axis=1)
    loo = (xb.sum(axis=0) - xb) / (n_blocks - 1)
    return xb.mean(axis=0), _jackknife(xb.mean(axis=0), loo), length


def _jackknife(full: np.ndarray, loo: np.ndarray) -> np.ndarray:
    """Block-jackknife standard error from the leave-one-block-out estimates ``loo`` (B, ...);
    infinite where an estimate rests on a single block (its weights vanish without it)."""
    n = loo.shape[0]
    with np.errstate(invalid="ignore"):
        err = np.sqrt((n - 1) / n * np.sum((loo - loo.mean(axis=0)) ** 2, axis=0))
    return np.where(np.isfinite(loo).all(axis=0), err, np.inf)


def _estimates(s: dict, beta: float) -> dict:
    """Mean-model, direct and CEA estimates from (block) sums (last axes: K members, M values)."""
    n = s["n"]
    mean = s["A"] / n[..., None]  # (..., M)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 where all weight was in the block left out
        direct = s["uA"] / s["u"][..., None]  # (..., K, M)
    mean_k = s["Ak"] / n[..., None, None]
    mean_dE = s["dE"] / n[..., None]
    cov = s["AkdE"] / n[..., None, None] - mean_k * mean_dE[..., None]
    return {"mean_model": mean, "direct": direct, "cea": mean_k - beta * cov}


def _ess(u: np.ndarray) -> np.ndarray:
    """Kish effective sample size of unnormalised weights u (T, K)."""
    return u.sum(axis=0) ** 2 / np.sum(u * u, axis=0)


def _ess_note(ess, beta_dE, min_fraction, min_frames, prefix=""):
    """The warning for members whose weights are too uneven for direct reweighting (or None)."""
    frames, K = beta_dE.shape
    threshold = max(min_fraction * frames, min_frames)
    low = np.nonzero(ess < threshold)[0]
    if not low.size:
        return None
    worst = int(low[np.argmin(ess[low])])
    spread = float(np.std(beta_dE[:, worst]))
    return (
        f"{prefix}direct reweighting is not to be trusted for {low.size} of {K} members: the effective sample size "
        f"of their weights is below {threshold:.0f} of {frames} frames (smallest: {ess[worst]:.1f} frames, member "
        f"{worst + 1}, whose beta*dE_k varies by {spread:.2f} (std) along the trajectory). The cumulant-expansion "
        "(CEA) values are no way out: the expansion is first order in beta*dE_k and has been seen off by up to a "
        "model sigma where the ESS was still 12% (benchmarks/results/reweighting_physics.md). Reweight a smaller "
        "system (the spread of dE_k grows with the square root of the number of atoms) or a higher temperature, or "
        "run the flagged members directly (llpr.reweight.export_member). A longer run raises the number of "
        "effective frames but not their fraction"
    )


def _cea_note(name, direct, cea, diff_error, model_sigma, trusted):
    """A note where the cumulant expansion and direct reweighting differ beyond noise and by a
    sizeable part of the model uncertainty, for members whose direct estimate is trusted."""
    gap = np.abs(direct - cea)  # (K, M)
    scale = np.where(model_sigma > 0, model_sigma, np.inf)
    off = (gap > 3 * diff_error) & (gap > 0.25 * scale) & trusted[:, None]
    if not off.any():
        return None
    members = np.nonzero(off.any(axis=1))[0]
    worst = float(np.max(np.where(off, gap / scale, 0.0)))
    return (f"{name}: the cumulant expansion differs from direct reweighting for {members.size} member(s) by up to "
            f"{worst:.2f} model sigma, beyond the sampling noise: the energy deviations are not Gaussian enough for "
            "the first-order expansion; the direct values are the ones to use where their ESS is not flagged")


@dataclass
class ObservableResult:
    """Reweighting of one observable (values ``M`` = 1 for a scalar, R for a vector such as an
    RDF). ``members[estimator]`` (K, M) are the members' averages, ``model_sigma[estimator]``
    (M,) their spread (the model uncertainty); ``*_error`` the block-jackknife sampling errors
    (``members_error["direct-cea"]``: that of the difference of the two estimators).
    ``member_values`` says whether the members' own values of a model-dependent observable were
    used (``"pe + dE_k"``, ``"press + dP_k"``) or the mean model's (``"mean model"``)."""

    name: str
    frames: int
    block_length: int
    blocks: int
    mean_model: np.ndarray
    mean_model_error: np.ndarray
    members: dict
    members_error: dict
    model_sigma: dict
    model_sigma_error: dict
    ess: np.ndarray
    member_values: str
    axis: np.ndarray | None = None
    axis_name: str | None = None
    warnings: list = field(default_factory=list)

    @property
    def is_scalar(self) -> bool:
        return self.mean_model.size == 1 and self.axis is None

    def to_dict(self) -> dict:
        def arr(x):
            return None if x is None else np.asarray(x).tolist()

        return {
            "name": self.name, "frames": self.frames, "block_length": self.block_length, "blocks": self.blocks,
            "mean_model": arr(self.mean_model), "mean_model_error": arr(self.mean_model_error),
            "members": {k: arr(v) for k, v in self.members.items()},
            "members_error": {k: arr(v) for k, v in self.members_error.items()},
            "model_sigma": {k: arr(v) for k, v in self.model_sigma.items()},
            "model_sigma_error": {k: arr(v) for k, v in self.model_sigma_error.items()},
            "ess": arr(self.ess), "member_values": self.member_values, "axis": arr(self.axis),
            "axis_name": self.axis_name, "warnings": list(self.warnings),
        }


def reweight_observable(
    energy_deviations,
    values,
    temperature: float,
    units: str = "metal",
    member_deviations=None,
    blocks="auto",
    name: str = "observable",
    member_values: str | None = None,
    min_ess_fraction: float = DEFAULT_MIN_ESS_FRACTION,
    min_ess_frames: int = DEFAULT_MIN_ESS_FRAMES,
    axis=None,
    axis_name: str | None = None,
    ess_warning: bool = True,
) -> ObservableResult:
    """Reweight one observable of a trajectory sampled with the mean model.

    ``energy_deviations`` (T, K): the members' deviations ``dE_k`` of the whole system's
    potential energy per frame (LAMMPS energy units of ``units``); ``values`` (T,) or (T, M):
    the observable per frame, as the mean model gives it; ``member_deviations`` (T, K) or
    (T, K, M), optional: for an observable that depends on the model, member ``k``'s value minus
    the mean model's (e.g. ``dE_k`` for the potential energy, ``dP_k`` for the pressure);
    ``blocks``: ``"auto"`` (block length from the blocking test) or a number of blocks.
    Frames must be equally spaced in time and equilibrated.
    """
    if units not in BOLTZMANN:
        raise ValueError(f"units {units!r} is not supported: use metal or real (as pair_style llpr)")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"the temperature must be a positive number of kelvin, got {temperature}")
    beta = 1.0 / (BOLTZMANN[units] * float(temperature))
    dE = np.asarray(energy_deviations, dtype=np.float64)
    A = np.asarray(values, dtype=np.float64)
    if dE.ndim != 2 or dE.shape[1] < 2:
        raise ValueError(f"energy_deviations must have shape (frames, K >= 2 members), got {dE.shape}")
    T, K = dE.shape
    A = A.reshape(A.shape[0], -1)
    if A.shape[0] != T:
        raise ValueError(f"{name}: {A.shape[0]} frames, but the energy deviations have {T}")
    M = A.shape[1]
    delta = None
    if member_deviations is not None:
        delta = np.asarray(member_deviations, dtype=np.float64).reshape(T, K, -1)
        if delta.shape[2] != M:
            raise ValueError(f"{name}: member_deviations must have shape ({T}, {K}) or ({T}, {K}, {M})")
    for what, x in (("energy deviations", dE), (name, A), (f"{name} member deviations", delta)):
        if x is not None and not np.isfinite(x).all():
            raise ValueError(f"{what}: non-finite values (NaN or inf) in the input; a broken frame has no weight")
    if T < 4:
        raise ValueError(f"{name}: {T} frames are too few to reweight and to estimate a sampling error (need >= 4)")

    notes = []
    if blocks == "auto":
        length = block_length([A, dE] + ([delta.reshape(T, -1)] if delta is not None else []))
        # more than MAX_BLOCKS blocks add nothing to the jackknife but memory (B x K x M)
        length = max(length, -(-T // MAX_BLOCKS))
        n_blocks = T // length
        if n_blocks < 2:
            n_blocks = 2
            length = T // 2
        if n_blocks < 10:
            notes.append(
                f"{name}: its sampling error rests on {n_blocks} blocks of {length} frame(s) (blocks must outlast the "
                f"correlation time), so it is itself uncertain by ~{100 / math.sqrt(2 * (n_blocks - 1)):.0f}%: run "
                "longer"
            )
    else:
        n_blocks = int(blocks)
        if n_blocks < 2 or n_blocks > T:
            raise ValueError(f"blocks must be 'auto' or a number between 2 and the number of frames ({T})")
        length = T // n_blocks
    first = T - n_blocks * length  # leading frames that do not fill a block are left out
    used = n_blocks * length

    def blocked(x):
        return None if x is None else x[first:].reshape((n_blocks, length) + x.shape[1:])

    A_b, dE_b, delta_b = blocked(A), blocked(dE), blocked(delta)
    # weights exp(-beta dE_k) with a per-member shift (only ratios matter)
    logw = -beta * dE_b
    u_b = np.exp(logw - logw.reshape(used, K).max(axis=0))
    # per-block sums of everything the estimators need; member values A_k = A (+ delta_k)
    per_block = {
        "n": np.full(n_blocks, float(length)), "A": A_b.sum(1), "u": u_b.sum(1), "dE": dE_b.sum(1),
        "uA": np.einsum("blk,blm->bkm", u_b, A_b), "Ak": np.broadcast_to(A_b.sum(1)[:, None, :], (n_blocks, K, M)),
        "AkdE": np.einsum("blk,blm->bkm", dE_b, A_b),
    }
    if delta_b is not None:
        per_block["uA"] = per_block["uA"] + np.einsum("blk,blkm->bkm", u_b, delta_b)
        per_block["Ak"] = per_block["Ak"] + delta_b.sum(1)
        per_block["AkdE"] = per_block["AkdE"] + np.einsum("blk,blkm->bkm", dE_b, delta_b)
    total = {key: v.sum(0) for key, v in per_block.items()}
    loo = {key: total[key] - v for key, v in per_block.items()}
    u = u_b.reshape(used, K)
    full, jack = _estimates(total, beta), _estimates(loo, beta)

    members = {e: full[e] for e in ("direct", "cea")}
    members_error = {e: _jackknife(full[e], jack[e]) for e in ("direct", "cea")}
    # how far apart the two estimators are beyond their (correlated) sampling noise
    members_error["direct-cea"] = _jackknife(full["direct"] - full["cea"], jack["direct"] - jack["cea"])
    model_sigma = {e: full[e].std(axis=0, ddof=1) for e in ("direct", "cea")}
    with np.errstate(invalid="ignore"):  # NaN leave-one-out estimates make an infinite error
        model_sigma_error = {e: _jackknife(model_sigma[e], jack[e].std(axis=1, ddof=1)) for e in ("direct", "cea")}
    ess = _ess(u)
    trusted = ess >= max(min_ess_fraction * used, min_ess_frames)
    cea_note = _cea_note(name, members["direct"], members["cea"], members_error["direct-cea"], model_sigma["direct"],
                         trusted)
    if cea_note:
        notes.append(cea_note)
    if ess_warning:
        note = _ess_note(ess, beta * dE_b.reshape(used, K), min_ess_fraction, min_ess_frames, f"{name}: ")
        if note:
            notes.append(note)
    if member_values is None:
        member_values = "member values" if delta is not None else "mean model"
    return ObservableResult(
        name=name, frames=used, block_length=length, blocks=n_blocks,
        mean_model=full["mean_model"],
        mean_model_error=_jackknife(full["mean_model"], jack["mean_model"]),
        members=members, members_error=members_error, model_sigma=model_sigma, model_sigma_error=model_sigma_error,
        ess=ess, member_values=member_values, axis=None if axis is None else np.asarray(axis, dtype=float),
        axis_name=axis_name, warnings=notes,
    )


@dataclass
class ReweightResult:
    temperature: float
    units: str
    members: int
    frames: int
    ess: np.ndarray  # (K,) of the weights on every frame with energy deviations
    observables: dict
    sources: list = field(default_factory=list)  # what was read, and which columns were used
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "units": self.units, "members": self.members,
                "frames": self.frames, "ess": self.ess.tolist(), "sources": list(self.sources),
                "warnings": list(self.warnings),
                "observables": {k: v.to_dict() for k, v in self.observables.items()}}


def reweight(
    energy_deviations,
    observables: dict,
    temperature: float,
    units: str = "metal",
    member_deviations: dict | None = None,
    blocks="auto",
    min_ess_fraction: float = DEFAULT_MIN_ESS_FRACTION,
    min_ess_frames: int = DEFAULT_MIN_ESS_FRAMES,
    warn: bool = True,
) -> ReweightResult:
    """Reweight several observables (arrays of the same frames): ``observables`` maps a name
    to (T,) or (T, M) values, ``member_deviations`` a name to its members' deviations (see
    :func:`reweight_observable`). Warnings (:class:`ReweightWarning`) are emitted and kept in
    the result."""
    dE = np.asarray(energy_deviations, dtype=np.float64)
    results = {}
    for name, values in observables.items():
        extra = (member_deviations or {}).get(name)
        results[name] = reweight_observable(dE, values, temperature, units, extra, blocks, name,
                                            min_ess_fraction=min_ess_fraction, min_ess_frames=min_ess_frames,
                                            ess_warning=False)
    return _finish(dE, results, temperature, units, [], [], warn, min_ess_fraction, min_ess_frames)


def _finish(dE, results, temperature, units, sources, notes, warn, min_ess_fraction, min_ess_frames):
    beta = 1.0 / (BOLTZMANN[units] * float(temperature))
    logw = -beta * dE
    ess = _ess(np.exp(logw - logw.max(axis=0)))
    # the weights are the same for every observable: one warning, on all their frames
    ess_note = _ess_note(ess, beta * dE, min_ess_fraction, min_ess_frames)
    all_notes = list(notes) + ([ess_note] if ess_note else []) + [w for r in results.values() for w in r.warnings]
    if warn:
        for text in all_notes:
            warnings.warn(text, ReweightWarning, stacklevel=3)
    return ReweightResult(float(temperature), units, dE.shape[1], dE.shape[0], ess, results, sources, all_notes)


# ------------------------------------------------------------------------ from LAMMPS output
def _select_run(tables, run):
    if run is None or run == -1:
        return tables[-1]
    if run == 0:
        steps = np.concatenate([t.steps for t in tables])
        names = [n for n in tables[-1].columns if all(n in t.columns for t in tables)]
        cols = {n: np.concatenate([t.columns[n] for t in tables]) for n in names}
        return Table(tables[-1].path, steps, cols)
    if not 1 <= run <= len(tables):
        raise ValueError(f"run {run} does not exist: the log holds {len(tables)} thermo table(s)")
    return tables[run - 1]


def _unique(table: Table) -> Table:
    """The first frame of every step (a step can be written twice, e.g. at the end of one run
    and the start of the next)."""
    _, first = np.unique(table.steps, return_index=True)
    first = np.sort(first)
    if first.size == table.steps.size:
        return table
    return Table(table.path, table.steps[first], {k: v[first] for k, v in table.columns.items()}, table.kind)


def _columns(compute: str, start: int, end: int):
    return [f"c_{compute}[{k}]" for k in range(start, end + 1)]


def reweight_lammps(
    temperature: float,
    log: str | None = None,
    deviations=None,
    observables=None,
    compute: str | None = None,
    members: int | None = None,
    units: str | None = None,
    start: int | None = None,
    run: int | None = None,
    blocks="auto",
    min_ess_fraction: float = DEFAULT_MIN_ESS_FRACTION,
    min_ess_frames: int = DEFAULT_MIN_ESS_FRAMES,
    warn: bool = True,
) -> ReweightResult:
    """Reweight observables from LAMMPS output.

    ``log``: a LAMMPS log whose thermo table (the last run by default; ``run`` = N for the
    N-th, 0 for all) holds scalar observables and, unless ``deviations`` does, the members'
    energy deviations (the vector of ``compute ID all llpr ensemble yes``, whose layout the log
    states); ``deviations``: ``fix ave/time`` file(s) holding the energy deviations and/or the
    members' pressure deviations (``virial yes``). ``observables``: thermo column names
    (keywords such as ``pe`` or headers such as ``PotEng``), or ``"FILE:COLUMN"`` for a column
    of a ``fix ave/time`` file (vector mode: one value per row, e.g. ``"rdf.dat:c_rdf[2]"``; its
    first column is the axis, or ``"FILE:COLUMN@AXIS"``). Default: every thermo column that is
    an observable. ``compute``/``members``: the compute's ID and K, read from the log when it
    has the compute's layout line. ``start``: the first time step to use (equilibration before
    it is left out). Each observable is evaluated on the steps that have its values, the
    energy deviations and, for a pressure, the members' pressure deviations.
    """
    notes, sources = [], []
    info = LogInfo()
    thermo = None
    if log is not None:
        tables, info = read_log(log)
        thermo = _unique(_select_run(tables, run))
        which = "all runs" if run == 0 else f"run {run or len(tables)} of {len(tables)}"
        sources.append(f"thermo table of {log} ({len(thermo.steps)} lines, {which})")
    if units is None:
        units = info.units or "metal"
    if units not in BOLTZMANN:
        raise ValueError(f"units {units!r}: pair_style llpr runs with units metal or real only")
    paths = [deviations] if isinstance(deviations, (str, os.PathLike)) else list(deviations or [])
    for path in paths:
        _check_instantaneous(info, path)
    files = [_unique(read_ave_time(path)) for path in paths]
    searched = files + ([thermo] if thermo is not None else [])
    if not searched:
        raise ValueError("nothing to read: give a LAMMPS log (thermo table) and/or a fix ave/time file with the "
                         "energy deviations of compute ID all llpr ensemble yes")

    compute, layout = _energy_compute(info.computes, searched, compute, members)
    K = layout["members"]
    if layout["group"] is None:
        notes.append(f"the group and layout of compute {compute} are not known (no layout line in a log): assumed "
                     "the default layout (dE_k in c_ID[4]..c_ID[3+K]); the weights need the energy deviations of the "
                     "whole system, i.e. compute ID all llpr ensemble yes")
    elif layout["group"] != "all":
        raise ValueError(
            f"compute {compute} gives the energy deviations of group {layout['group']}, but reweighting needs those "
            f"of the whole system: add `compute ID all llpr ensemble yes` and reweight with it")
    dE_names = _columns(compute, *layout["dE"])
    dev_table = next((t for t in searched if dE_names[0] in t.columns), None)
    missing = [n for n in dE_names if dev_table is None or n not in dev_table.columns]
    if missing:
        raise ValueError(f"the output lacks {len(missing)} of the {K} energy deviations of compute {compute} "
                         f"(first missing: {missing[0]}); output all of them, e.g. c_{compute}[*]")
    dE_steps = dev_table.steps
    dE = np.stack([dev_table.columns[n] for n in dE_names], axis=1)
    atoms = None  # thermo_modify norm yes: the thermo table's extensive values are per atom
    if info.norm:
        if not info.atoms or (run == 0 and len(set(info.atoms)) > 1):
            raise ValueError("thermo_modify norm yes divides the thermo energies by the atom count, which the log "
                             "does not give for this run; use thermo_modify norm no")
        atoms = float(info.atoms[-1] if run in (None, -1, 0) else info.atoms[run - 1])
        if dev_table is thermo:
            dE = dE * atoms
            notes.append(f"thermo_modify norm yes: energies in the thermo table are per atom; the weights use "
                         f"dE_k x {atoms:.0f} atoms")
    if start is not None:
        keep = dE_steps >= int(start)
        dE_steps, dE = dE_steps[keep], dE[keep]
    sources.append(f"energy deviations: {dE_names[0]}..{dE_names[-1]} of {dev_table.path} ({K} members, group "
                   f"{layout['group'] or 'not checked'}), {len(dE_steps)} frames")
    dP_source = _pressure_source(info.computes, searched, compute, layout)

    if observables is None:
        if thermo is None:
            raise ValueError("name the observables (--observable NAME or FILE:COLUMN)")
        own = [f"c_{c}[" for c in set(info.computes) | {compute}]
        observables = [n for n in thermo.columns
                       if thermo_keyword(n) not in NOT_OBSERVABLES and not any(n.startswith(o) for o in own)]
    results = {}
    for spec in observables:
        name, values, steps, axis, axis_name, table = _observable(spec, thermo, info)
        extra, used = _member_deviations(name, table is thermo, dP_source, compute, atoms)
        common = np.intersect1d(steps, dE_steps)
        if extra is not None and extra[0] is not None:
            common = np.intersect1d(common, extra[0])
        if common.size < 4:
            raise ValueError(f"{name}: only {common.size} of its steps have energy deviations (and member values); "
                             "write them on the same steps (thermo and fix ave/time with a common period)")
        ia, ib = _rows(steps, common), _rows(dE_steps, common)
        if extra is None:
            delta = None
        elif extra[1] is None:  # an energy: its members' values are its own plus dE_k
            delta = dE[ib] / (atoms or 1.0)
        else:
            delta = extra[1][_rows(extra[0], common)]
        results[name] = reweight_observable(dE[ib], values[ia], temperature, units, delta, blocks, name, used,
                                            min_ess_fraction, min_ess_frames, axis, axis_name, ess_warning=False)
    return _finish(dE, results, temperature, units, sources, notes, warn, min_ess_fraction, min_ess_frames)


def _rows(steps: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Indices of the time steps ``wanted`` in ``steps`` (each present once)."""
    index = {int(t): i for i, t in enumerate(steps)}
    return np.array([index[int(t)] for t in wanted], dtype=np.int64)


def _energy_compute(layouts: dict, tables: list, compute, members):
    """(ID, layout) of the compute whose energy deviations weight the frames."""
    def frames(cid, lay):
        return max([len(t.steps) for t in tables if f"c_{cid}[{lay['dE'][0]}]" in t.columns] or [0])

    if compute is None:
        found = [c for c, lay in layouts.items() if frames(c, lay)]
        candidates = [c for c in found if layouts[c]["group"] == "all"] or found
        # the one written most often (e.g. in the thermo output rather than every 100 steps)
        most = max([frames(c, layouts[c]) for c in candidates] or [0])
        candidates = [c for c in candidates if frames(c, layouts[c]) == most]
        if len(candidates) > 1:
            raise ValueError(f"several llpr ensemble computes in the output ({', '.join(candidates)}); choose one "
                             "with --compute ID (Python: compute='ID')")
        if candidates:
            compute = candidates[0]
        else:
            ids = sorted({m.group(1) for t in tables for n in t.columns for m in [re.match(r"c_(\w+)\[\d+\]$", n)] if m})
            if members is None or len(ids) != 1:
                raise ValueError(
                    "no energy deviations found: output the vector of `compute ID all llpr ensemble yes` (thermo_style "
                    "custom ... c_ID[*], or fix ave/time 10 1 10 c_ID[*] file ...) and give the log (which states its "
                    "layout), or --compute ID and --members K")
            compute = ids[0]
    layout = layouts.get(compute)
    if layout is None:
        if members is None:
            raise ValueError(f"the log does not give the layout of compute {compute} (the line 'llpr: compute "
                             f"{compute} (group ...): K members ...'); give --members K")
        m = int(members)
        layout = {"group": None, "members": m, "dE": (4, 3 + m), "dP": None, "dP_tensor": None}
        if any(f"c_{compute}[{4 + 2 * m}]" in t.columns for t in tables):
            layout["dP"], layout["dP_tensor"] = (4 + m, 3 + 2 * m), (4 + 2 * m, 3 + 8 * m)
    elif members is not None and int(members) != layout["members"]:
        raise ValueError(f"--members {members}, but the log says compute {compute} has {layout['members']}")
    return compute, layout


def _pressure_source(layouts: dict, tables: list, compute: str, layout: dict):
    """(ID, layout, table) of the members' pressure deviations (virial yes): of the energy
    compute, or of any other llpr ensemble compute of group all; None if the output has none."""
    for cid in [compute] + [c for c in layouts if c != compute]:
        lay = layout if cid == compute else layouts[cid]
        if lay.get("dP") and (cid == compute or lay["group"] == "all"):
            for table in tables:
                if f"c_{cid}[{lay['dP'][0]}]" in table.columns:
                    return cid, lay, table
    return None


def _check_instantaneous(info: LogInfo, path):
    """Reweighting needs per-frame values: a fix ave/time that averages (Nrepeat > 1, or ave
    running/window) hands over averages, whose weights are not exp(-beta dE_k)."""
    if path is None:
        return
    entry = info.ave_time.get(os.path.basename(path))
    if entry and (entry[1] != 1 or entry[3] != "one"):
        raise ValueError(
            f"{path} holds averages (fix ave/time Nevery {entry[0]} Nrepeat {entry[1]} Nfreq {entry[2]}, ave "
            f"{entry[3]}); reweighting needs instantaneous values: use Nrepeat 1 (e.g. fix ave/time 10 1 10 ...) "
            "and ave one")


def _observable(spec: str, thermo: Table | None, info: LogInfo):
    """(name, values (T,) or (T, R), steps, axis, axis name, table) of an observable spec."""
    axis_name = None
    if ":" in spec:
        path, column = spec.rsplit(":", 1)
        if "@" in column:
            column, axis_name = column.split("@", 1)
        _check_instantaneous(info, path)
        table = _unique(read_ave_time(path))
        values = table.column(column)
        axis = None
        if table.kind == "vector":
            axis_name = axis_name or next(iter(table.columns))
            axis = table.column(axis_name)[0]
        elif axis_name:
            raise ValueError(f"{spec}: an axis (@{axis_name}) is only for vector-mode files")
        return f"{os.path.basename(path)}:{column}", values, table.steps, axis, axis_name, table
    if thermo is None:
        raise ValueError(f"observable {spec!r}: a thermo column needs the log (or give FILE:COLUMN)")
    column = spec if spec in thermo.columns else THERMO_HEADERS.get(spec.lower(), spec)
    return spec, thermo.column(column), thermo.steps, None, None, thermo


def _member_deviations(name, from_thermo, dP_source, compute, atoms):
    """What the members' values of a thermo observable are: ``(None, note)`` for one that does
    not depend on the model (or whose member values are not in the output), ``((steps, None),
    note)`` for an energy (its own value plus dE_k), ``((steps, dP (T, K)), note)`` for a
    pressure (plus the members' pressure deviations on those steps)."""
    key = thermo_keyword(name)
    if not from_thermo:
        return None, "mean model (a configuration observable)"
    if key in ENERGY_KEYWORDS:
        per_atom = f" / {atoms:.0f} atoms" if atoms else ""
        return (None, None), f"member values ({name} + dE_k{per_atom}, from c_{compute}[...])"
    if key in PRESSURE_KEYWORDS:
        if dP_source is None:
            return None, ("mean model (the output carries no member pressures: use compute ID all llpr ensemble yes "
                          "virial yes to get them)")
        cid, lay, src = dP_source
        comp = PRESSURE_KEYWORDS[key]
        if comp is None:
            cols = _columns(cid, *lay["dP"])
        else:
            cols = [f"c_{cid}[{lay['dP_tensor'][0] + 6 * k + comp}]" for k in range(lay["members"])]
        if any(c not in src.columns for c in cols):
            return None, f"mean model (the member pressures c_{cid}[...] for {name} are not all in the output)"
        dP = np.stack([src.columns[c] for c in cols], axis=1)
        return (src.steps, dP), f"member values ({name} + dP_k, from c_{cid}[...])"
    if key in MODEL_DEPENDENT_OTHER:
        return None, (f"mean model ({name} depends on the model, but its member values are not rebuilt here: "
                      "reweight pe and press instead)")
    return None, "mean model (a configuration observable)"


# ---------------------------------------------------------------------------------- reporting
def _fmt(x: float, err: float | None = None) -> str:
    """``x +- err`` with x rounded to err's second significant digit."""
    if err is None or not np.isfinite(err) or err <= 0:
        return f"{x:.6g}"
    digits = 1 - int(math.floor(math.log10(err)))
    if not 0 <= digits <= 8:
        return f"{x:.4g} +- {err:.2g}"
    return f"{x:.{digits}f} +- {err:.2g}"


def format_report(result: ReweightResult) -> str:
    """A plain-text summary: per observable the mean-model value with its sampling error, the
    model uncertainty (direct and CEA) with theirs, the members' values used, and the ESS."""
    K = result.members
    ess = result.ess
    lines = [
        f"reweighting to {K} ensemble members at T = {result.temperature:g} K ({result.units} units, "
        f"{result.frames} frames with energy deviations)",
        *[f"  read: {s}" for s in result.sources],
        f"  effective sample size of the members' weights: min {ess.min():.1f}, median {np.median(ess):.1f}, "
        f"max {ess.max():.1f} of {result.frames} frames",
        "",
        f"{'observable':28s} {'frames':>7s} {'blocks':>6s}  {'mean model +- sampling':>26s}  "
        f"{'model sigma (direct)':>22s}  {'model sigma (CEA)':>22s}  members' values",
    ]
    for r in result.observables.values():
        if r.is_scalar:
            lines.append(
                f"{r.name:28s} {r.frames:7d} {r.blocks:6d}  {_fmt(r.mean_model[0], r.mean_model_error[0]):>26s}  "
                f"{_fmt(r.model_sigma['direct'][0], r.model_sigma_error['direct'][0]):>22s}  "
                f"{_fmt(r.model_sigma['cea'][0], r.model_sigma_error['cea'][0]):>22s}  {r.member_values}")
        else:
            j = int(np.argmax(r.model_sigma["cea"]))
            where = f"{r.axis_name} = {r.axis[j]:.4g}" if r.axis is not None else f"row {j + 1}"
            lines.append(
                f"{r.name:28s} {r.frames:7d} {r.blocks:6d}  {r.mean_model.size} values; largest model sigma at "
                f"{where}: value {_fmt(r.mean_model[j], r.mean_model_error[j])}, model sigma direct "
                f"{_fmt(r.model_sigma['direct'][j], r.model_sigma_error['direct'][j])}, CEA "
                f"{_fmt(r.model_sigma['cea'][j], r.model_sigma_error['cea'][j])}  {r.member_values}")
    if result.warnings:
        lines += ["", "warnings:"] + [f"  - {w}" for w in result.warnings]
    return "\n".join(lines)


def plot_result(result: ReweightResult, path: str, names=None) -> str:
    """One panel per scalar observable: the members' reweighted values around the mean-model
    value; two per vector observable (e.g. an RDF): the values with their model-uncertainty
    band, and below them the model uncertainty (CEA and direct) and the sampling error along
    the axis. Writes a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [result.observables[n] for n in (names or result.observables)]
    if not items:
        raise ValueError("nothing to plot")
    heights = [r for item in items for r in ((1.0,) if item.is_scalar else (1.0, 0.6))]
    fig, axes = plt.subplots(len(heights), 1, figsize=(6.4, 2.9 * sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    panels = iter(axes[:, 0])
    for r in items:
        ax = next(panels)
        if r.is_scalar:
            for k, est in enumerate(("direct", "cea")):
                vals = r.members[est][:, 0]
                ax.errorbar(np.arange(1, vals.size + 1) + (0.15 * k), vals, yerr=r.members_error[est][:, 0], fmt="o",
                            ms=3, lw=0.8, label=f"members ({est})")
            ax.axhline(r.mean_model[0], color="k", lw=1, label="mean model")
            for sign in (-1, 1):
                ax.axhline(r.mean_model[0] + sign * r.model_sigma["cea"][0], color="k", ls=":", lw=1)
            ax.set_xlabel("member")
            ax.set_ylabel(r.name)
            ax.set_title(f"{r.name}: mean model and members (dotted: +-1 model sigma, CEA)", fontsize=9)
            ax.legend(fontsize=7)
            continue
        x = r.axis if r.axis is not None else np.arange(1, r.mean_model.size + 1)
        y, s = r.mean_model, r.model_sigma["cea"]
        ax.plot(x, y, color="k", lw=1.2, label="mean model")
        ax.fill_between(x, y - 2 * s, y + 2 * s, color="C0", alpha=0.35, lw=0, label="+-2 model sigma (CEA)")
        ax.set_ylabel(r.name)
        ax.legend(fontsize=7)
        below = next(panels)
        below.plot(x, s, color="C0", lw=1.2, label="model sigma (CEA)")
        below.plot(x, r.model_sigma["direct"], color="C1", ls="--", lw=1, label="model sigma (direct)")
        below.plot(x, r.mean_model_error, color="C3", lw=1, label="sampling error")
        below.set_xlabel(r.axis_name or "row")
        below.set_ylabel("1 sigma")
        below.legend(fontsize=7)
    fig.suptitle(f"model uncertainty from {result.members} members, T = {result.temperature:g} K", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_json(result: ReweightResult, path: str) -> str:
    with open(path, "w") as fh:
        json.dump(result.to_dict(), fh, indent=1)
    return path


# ------------------------------------------------------------------------------ member export
def export_member(llpr, path: str, member: int, ensemble: int, seed: int = 0, dtype=None) -> str:
    """Write member ``member`` (1-based, as in ``c_ID[3+member]``) of the ``ensemble``-member
    last-layer ensemble drawn with ``seed`` (the one ``llpr export --ensemble K --seed S``
    stores) as a model file of its own: the network with read-out ``w_k = w + dw_k``, with the
    same LLPR head and no ensemble. Running MD with it directly checks the reweighting."""
    import torch

    from .modelfile import export_model
    from .protocol import readout_weights

    if not 1 <= int(member) <= int(ensemble):
        raise ValueError(f"member must be between 1 and {ensemble}, got {member}")
    dw = llpr.ensemble_deviations(int(ensemble), int(seed))[int(member) - 1]
    twin = copy.copy(llpr)
    twin.model = copy.deepcopy(llpr.model)
    w = readout_weights(twin.model)
    target = w.to(torch.float64) + dw
    with torch.no_grad():
        w.copy_(target.to(w.dtype))  # a view of the read-out parameter for models that expose it
    if not torch.allclose(readout_weights(twin.model).to(torch.float64), target, rtol=0, atol=1e-12):
        raise TypeError(f"cannot set the read-out weights of {type(llpr.model).__name__}: readout_weights() is not a "
                        "view of its parameter; add dw_k to the read-out by hand before export_model")
    return export_model(twin, path, dtype=dtype)
