"""Plain LAMMPS output for the benchmarks' own bookkeeping: the thermo tables of a log and a
``fix ave/time`` file. Not for reweighting: ``llpr reweight`` reads only the self-describing
record of ``fix llpr/record`` (llpr.lammps.reweight.read_record), since a log states neither the
units, the normalisation nor the layout of its columns. The benchmarks write their own inputs,
so here the column names are known: ``thermo_style custom`` one line per step, ``thermo_modify
norm no``, ``fix ave/time`` with ``Nrepeat 1``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass
class Table:
    """Per-frame data: ``steps`` (T,) and ``columns``, each (T,) for a thermo column or (T, R)
    for a column of a ``fix ave/time ... mode vector`` file (R rows)."""

    path: str
    steps: np.ndarray
    columns: dict

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise ValueError(f"{self.path} has no column {name!r}; its columns are: {', '.join(self.columns) or '(none)'}")
        return self.columns[name]


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def read_thermo(path: str) -> list:
    """The thermo tables of a LAMMPS log, one :class:`Table` per run, columns named by their
    headers (``Step``, ``PotEng``, ``c_g[2]``, ...)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LAMMPS log {path!r} does not exist")
    tables, header, rows = [], None, []

    def close():
        if header is not None:
            if "Step" not in header:
                raise ValueError(f"{path}: a thermo table without a Step column; add step to thermo_style custom")
            data = np.array(rows, dtype=float).reshape(len(rows), len(header))
            tables.append(Table(path, data[:, header.index("Step")].astype(np.int64),
                                {name: data[:, k] for k, name in enumerate(header)}))

    with open(path, errors="replace") as fh:
        for line in fh:
            words = line.split()
            if header is not None:
                if len(words) == len(header) and all(_is_number(w) for w in words):
                    rows.append([float(w) for w in words])
                elif line.startswith("Loop time of"):
                    close()
                    header, rows = None, []
                continue  # warnings and other output inside a run
            if words[:1] == ["Step"] and len(words) > 1 and not any(_is_number(w) for w in words):
                header, rows = words, []
    if header is not None:
        raise ValueError(f"{path}: the last run has no 'Loop time' line: it did not finish")
    if not tables:
        raise ValueError(f"{path}: no thermo table (a line starting with 'Step' and rows of numbers)")
    return tables


def read_ave_time_vector(path: str) -> Table:
    """A ``fix ave/time ... mode vector`` file: per output step a line ``step nrows`` and
    ``nrows`` rows; the columns are named as in its third header line (``c_rdf[1]``, ...)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"fix ave/time file {path!r} does not exist")
    with open(path) as fh:
        lines = fh.read().splitlines()
    comments = [ln[1:].split() for ln in lines if ln.startswith("#")]
    body = [ln.split() for ln in lines if ln.strip() and not ln.startswith("#")]
    if len(comments) < 3 or comments[1][:2] != ["TimeStep", "Number-of-rows"] or comments[2][:1] != ["Row"]:
        raise ValueError(f"{path} is not a fix ave/time file in vector mode (no '# TimeStep Number-of-rows' and "
                         "'# Row ...' header lines)")
    names = comments[2][1:]
    steps, frames, k = [], [], 0
    while k < len(body):
        step, nrows = int(body[k][0]), int(body[k][1])
        block = [row[1:] for row in body[k + 1:k + 1 + nrows]]
        if len(block) != nrows or any(len(row) != len(names) for row in block):
            raise ValueError(f"{path}: the block of step {step} is cut short (file still being written?)")
        steps.append(step)
        frames.append(np.array(block, dtype=float))
        k += 1 + nrows
    if not frames:
        raise ValueError(f"{path} holds no data")
    data = np.stack(frames)  # (T, R, C)
    return Table(path, np.array(steps, dtype=np.int64), {n: data[:, :, c] for c, n in enumerate(names)})
