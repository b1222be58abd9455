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
its limits: docs/method.md; the LAMMPS side: docs/compute_llpr.md and docs/fix_llpr_record.md.

The run comes from a ``fix llpr/record`` file (:func:`read_record`, :func:`reweight_record`),
whose header states the model file, K, units and layout: nothing is inferred from a log.
:func:`export_member` writes member ``k`` as a model file of its own (to check the reweighting
against MD run with that member directly).
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

MAX_BLOCKS = 200
DEFAULT_MIN_ESS_FRACTION = 0.1
DEFAULT_MIN_ESS_FRAMES = 20


class ReweightWarning(UserWarning):
    """Emitted (and stored in the result) when an estimate is not to be trusted."""


# ----------------------------------------------------------------------- the record of a run
RECORD_FORMAT = "llpr-record"
RECORD_VERSION = 1
# values of the record that depend on the model: member k's value is the mean model's plus a
# recorded deviation (None: dE_k; a name: that deviation block, with a component for tensors)
MODEL_DEPENDENT = {"pe": ("dE", None), "press": ("dP", None), "pxx": ("dP_tensor", 0), "pyy": ("dP_tensor", 1),
                   "pzz": ("dP_tensor", 2), "pxy": ("dP_tensor", 3), "pxz": ("dP_tensor", 4),
                   "pyz": ("dP_tensor", 5)}
# the columns fix llpr/record always writes, then the members' deviations (before the fix's values)
_BUILTINS = ("step", "atoms", "temp", "pe", "press", "vol", "pxx", "pyy", "pzz", "pxy", "pxz", "pyz")
_DEVIATIONS = ("dE", "dP", "dP_tensor")
# what a segment must share with the others to be reweighted with them
_SAME = (("members", "K (ensemble members)"), ("units", "units"), ("every", "recording period N"),
         ("virial", "virial"), ("compute", "compute"))
_NOT_RECORD = (
    "reweighting reads the record of fix llpr/record, which states the model, K, units and column layout: add "
    "`compute ens all llpr ensemble yes` and `fix rec all llpr/record N md.rec ens [observables]` to the input and "
    "give md.rec (a LAMMPS log or fix ave/time file is not read: its units, normalisation, layout and averaging "
    "would have to be guessed)"
)


@dataclass
class RecordSegment:
    """One run's part of a ``fix llpr/record`` file: its ``header`` (model, seal, K, units,
    layout, sampling) and its ``data`` (frames x values). ``path`` and ``index`` (1-based, in
    the file) say where it was read."""

    path: str
    index: int
    header: dict
    data: np.ndarray

    @property
    def columns(self) -> dict:
        """Column name -> slice of ``data``'s columns."""
        return _column_slices(self.header["columns"])

    def column(self, name: str) -> np.ndarray:
        """(frames,) for a scalar value, (frames, size) for the deviations and vector values."""
        cols = self.columns
        if name not in cols:
            raise ValueError(f"{self.where} records no {name!r}; it records: {', '.join(cols)}")
        block = self.data[:, cols[name]]
        vector = next(c.get("vector", False) for c in self.header["columns"] if c["name"] == name)
        return block if vector or name in _DEVIATIONS else block[:, 0]

    @property
    def steps(self) -> np.ndarray:
        return self.data[:, 0].astype(np.int64)

    @property
    def where(self) -> str:
        return f"{self.path} (run {self.index})"


def _column_slices(columns: list) -> dict:
    """Column name -> slice of a record line's values, from a header's ``columns``."""
    out, start = {}, 0
    for col in columns:
        out[col["name"]] = slice(start, start + int(col["size"]))
        start += int(col["size"])
    return out


def _segment_error(path, lineno, text):
    return ValueError(f"{path}, line {lineno}: {text}")


def read_record(path) -> list:
    """The segments (:class:`RecordSegment`, one per run) of a ``fix llpr/record`` file.

    Refuses anything that is not such a record, a newer format, a line with the wrong number of
    values or a value that is not a finite number (naming the line)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; give the file written by fix llpr/record")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"record {path!r} does not exist")
    segments, header, rows, width = [], None, [], 0

    def close():
        if header is not None:
            data = np.array(rows, dtype=np.float64).reshape(len(rows), width)
            segments.append(RecordSegment(path, len(segments) + 1, header, data))

    with open(path, errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.strip()
            if not text:
                continue
            if text.startswith("#"):
                try:
                    new = json.loads(text[1:])
                except json.JSONDecodeError:
                    new = None
                if not isinstance(new, dict) or new.get("format") != RECORD_FORMAT:
                    raise _segment_error(path, lineno, f"not a header of {RECORD_FORMAT}; {_NOT_RECORD}")
                if int(new.get("version", 0)) > RECORD_VERSION:
                    raise _segment_error(path, lineno, f"{RECORD_FORMAT} version {new.get('version')} was written by "
                                         f"a newer llpr (this one reads version {RECORD_VERSION}); upgrade llpr")
                missing = [k for k in ("members", "units", "every", "columns", "sampling", "energies") if k not in new]
                if missing:
                    raise _segment_error(path, lineno, f"the header lacks {', '.join(missing)}: the file is damaged")
                if new["sampling"] != "instantaneous" or new["energies"] != "total":
                    raise _segment_error(path, lineno, f"sampling {new['sampling']!r}, energies {new['energies']!r}: "
                                         "reweighting needs instantaneous total values")
                close()
                header, rows = new, []
                width = sum(int(c["size"]) for c in new["columns"])
                continue
            if header is None:
                raise _segment_error(path, lineno, f"a line before any {RECORD_FORMAT} header; {_NOT_RECORD}")
            words = text.split()
            if len(words) != width:
                raise _segment_error(path, lineno, f"{len(words)} values where the header of run {len(segments) + 1} "
                                     f"lays out {width} (a line cut short, e.g. by a run that was killed?)")
            try:
                values = [float(w) for w in words]
            except ValueError:
                raise _segment_error(path, lineno, "a value that is not a number") from None
            if not all(math.isfinite(v) for v in values):
                bad = next(i for i, v in enumerate(values) if not math.isfinite(v))
                name = next(n for n, cols in _column_slices(header["columns"]).items() if bad < cols.stop)
                raise _segment_error(path, lineno, f"step {words[0]}: {name} is {words[bad]}; a frame with a "
                                     "non-finite value has no weight: fix the run (or start after it with --start)")
            rows.append(values)
    close()
    if not segments:
        raise ValueError(f"{path} holds no {RECORD_FORMAT} header; {_NOT_RECORD}")
    return segments


def _model_seal(model: str):
    """The seal (whole-file checksum text) of an exported model file, or None if unsealed."""
    import zipfile

    if not os.path.isfile(model):
        raise FileNotFoundError(f"model file {model!r} does not exist")
    try:
        with zipfile.ZipFile(model) as zf:
            comment = zf.comment.decode(errors="replace")
    except zipfile.BadZipFile:
        raise ValueError(f"{model} is not an exported llpr model file (not a zip archive)") from None
    return comment or None


def select_segments(records, run: int | None = None, model: str | None = None) -> list:
    """The segments of one or more records (files in the order given, e.g. a run and its
    continuation from a restart file) to be reweighted together: all of them, or the ``run``-th
    (1-based, counted over all files). Refuses segments that differ in what reweighting needs
    to be the same (the model file, K, units, period, layout), naming both sides, and a
    ``model`` file other than the one recorded."""
    paths = [records] if isinstance(records, (str, os.PathLike)) else list(records)
    if not paths:
        raise ValueError(f"no record given; {_NOT_RECORD}")
    segments = [s for p in paths for s in read_record(p)]
    if run is not None:
        if not 1 <= int(run) <= len(segments):
            raise ValueError(f"run {run} does not exist: the record holds {len(segments)} run(s) "
                             f"({', '.join(s.where for s in segments)})")
        segments = [segments[int(run) - 1]]
    first = segments[0]
    for seg in segments[1:]:
        a, b = first.header, seg.header
        if (a.get("seal") or a.get("model")) != (b.get("seal") or b.get("model")):
            raise ValueError(f"{first.where} was run with {a.get('model')} (seal {a.get('seal')}), {seg.where} with "
                             f"{b.get('model')} (seal {b.get('seal')}): different models are different ensembles; "
                             "reweight one run at a time (--run N)")
        for key, what in _SAME:
            if a.get(key) != b.get(key):
                raise ValueError(f"{first.where} has {what} {a.get(key)!r}, {seg.where} has {b.get(key)!r}: these "
                                 "runs cannot be reweighted together; reweight one at a time (--run N)")
        if [(c["name"], c["size"]) for c in a["columns"]] != [(c["name"], c["size"]) for c in b["columns"]]:
            names = lambda h: " ".join(f"{c['name']}({c['size']})" for c in h["columns"])  # noqa: E731
            raise ValueError(f"{first.where} records [{names(a)}], {seg.where} records [{names(b)}]: the layouts "
                             "differ; reweight one run at a time (--run N)")
    if model is not None:
        seal = _model_seal(os.fspath(model))
        recorded = first.header.get("seal")
        if seal is None or recorded is None:
            raise ValueError(f"{model} or the model recorded in {first.where} ({first.header.get('model')}) carries no "
                             "seal (whole-file checksum), so they cannot be matched; export the model with llpr export")
        if seal != recorded:
            raise ValueError(f"{first.where} was written with {first.header.get('model')} ({recorded}), not with "
                             f"{model} ({seal})")
    return segments

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
        "model sigma where the ESS was still above this warning's threshold (docs/method.md). Reweight a smaller "
        "system (the spread of dE_k grows with the square root of the number of atoms) or a higher temperature, or "
        "run the flagged members directly (llpr.lammps.reweight.export_member). A longer run raises the number of "
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


# ----------------------------------------------------------------------- from a LAMMPS record
def _axis_of(name: str, columns: dict):
    """The default axis of a vector value c_ID[j]: c_ID[1] when it is recorded (as the bins of
    compute rdf), else None."""
    m = re.fullmatch(r"([cf]_[^\[]+)\[(\d+)\]", name)
    if m and m.group(2) != "1" and f"{m.group(1)}[1]" in columns:
        return f"{m.group(1)}[1]"
    return None


def reweight_record(
    temperature: float,
    records,
    observables=None,
    run: int | None = None,
    start: int | None = None,
    model: str | None = None,
    blocks="auto",
    min_ess_fraction: float = DEFAULT_MIN_ESS_FRACTION,
    min_ess_frames: int = DEFAULT_MIN_ESS_FRAMES,
    warn: bool = True,
) -> ReweightResult:
    """Reweight the observables of a ``fix llpr/record`` file (or several: a run and its
    continuations, reweighted as one trajectory) to the members of the last-layer ensemble.

    ``observables``: names of recorded values — ``pe``, ``press``, ``pxx`` ... ``pyz`` (with the
    members' own values: ``pe + dE_k``, and ``press + dP_k`` when the compute has ``virial yes``),
    ``temp``, ``vol``, and the values given to the fix (``v_rho``, ``c_rdf[2]``; a vector value
    takes ``@AXIS``, another recorded vector, default ``c_ID[1]``). Default: ``pe``, ``press``
    and every value given to the fix. ``run``: reweight only the ``run``-th run of the record;
    ``start``: the first time step used; ``model``: the exported file the run must have used
    (checked against the recorded seal). Runs that differ in model, K, units, period or layout
    are refused (reweight them one at a time)."""
    segments = select_segments(records, run, model)
    head = segments[0].header
    units = head["units"]
    if units not in BOLTZMANN:
        raise ValueError(f"{segments[0].where}: units {units!r}; pair_style llpr runs with units metal or real only")
    data = np.concatenate([s.data for s in segments])
    if start is not None:
        data = data[data[:, 0] >= int(start)]
    proto = segments[0]
    frames = RecordSegment(proto.path, proto.index, head, data)
    if frames.data.shape[0] == 0:
        raise ValueError(f"no frame of the record is at or after step {start}")
    cols = frames.columns
    dE = frames.column("dE")
    K = int(head["members"])
    if dE.shape[1] != K or K < 2:
        raise ValueError(f"{proto.where}: {dE.shape[1]} energy deviations for K = {K}: the file is damaged")
    sources = [f"{s.where}: model {s.header.get('model')} ({s.header.get('seal') or 'unsealed'}), {K} members, "
               f"units {units}, every {s.header['every']} steps, {s.data.shape[0]} frames" for s in segments]
    if start is not None:
        sources.append(f"from step {start}: {frames.data.shape[0]} frames")
    values = [c["name"] for c in head["columns"] if c["name"] not in _BUILTINS + _DEVIATIONS]
    if observables is None:
        axes = {_axis_of(v, cols) for v in values}
        observables = ["pe", "press"] + [v for v in values if v not in axes]
    results = {}
    for spec in observables:
        name, _, axis_name = spec.partition("@")
        axis_name = axis_name or None
        if name in ("step", "atoms") + _DEVIATIONS:
            raise ValueError(f"{name} is not an observable; name one of: temp, pe, press, vol, pxx..pyz, "
                             f"{', '.join(values) or '(no values given to the fix)'}")
        if name not in cols:
            raise ValueError(f"{proto.path} records no {name!r}: give it to fix llpr/record (it records "
                             f"{', '.join(c for c in cols if c not in ('step', 'atoms') + _DEVIATIONS)})")
        A = frames.column(name)
        axis = None
        if A.ndim == 2:
            axis_name = axis_name or _axis_of(name, cols)
            if axis_name is not None:
                if axis_name not in cols:
                    raise ValueError(f"{spec}: the axis {axis_name} is not recorded")
                axis_values = frames.column(axis_name)
                if axis_values.ndim != 2 or axis_values.shape[1] != A.shape[1]:
                    raise ValueError(f"{spec}: the axis {axis_name} does not have the {A.shape[1]} rows of {name}")
                axis = axis_values[0]
        elif axis_name:
            raise ValueError(f"{spec}: an axis is only for vector values")
        delta, used = None, "mean model (a configuration observable)"
        if name in MODEL_DEPENDENT:
            block, comp = MODEL_DEPENDENT[name]
            if block in cols:
                dev = frames.column(block)
                delta = dev if comp is None else dev[:, comp::6]
                used = f"member values ({name} + {'dE_k' if block == 'dE' else 'dP_k'})"
            else:
                used = (f"mean model ({name} depends on the model, but the record has no member pressures: use "
                        f"compute {head.get('compute')} all llpr ensemble yes virial yes)")
        results[name] = reweight_observable(dE, A, temperature, units, delta, blocks, name, used, min_ess_fraction,
                                            min_ess_frames, axis, axis_name, ess_warning=False)
    return _finish(dE, results, temperature, units, sources, [], warn, min_ess_fraction, min_ess_frames)


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

    from llpr.modelfile import export_model
    from llpr.models.protocol import readout_weights

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
