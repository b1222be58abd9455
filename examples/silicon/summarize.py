"""Compare the llpr uncertainty of surface, vacancy-neighbour and bulk atoms in a LAMMPS
`dump custom` file written by in.silicon (columns id type x y z sigma lpr).

    python summarize.py dump.llpr [--vacancy X Y Z]
"""

from __future__ import annotations

import argparse

import numpy as np


def read_dump(path: str) -> list[dict]:
    """Frames of a text `dump custom` file: {'box': (3, 2) bounds, column name: array}."""
    frames = []
    with open(path) as fh:
        lines = fh.read().splitlines()
    k = 0
    while k < len(lines):
        if not lines[k].startswith("ITEM: TIMESTEP"):
            k += 1
            continue
        step = int(lines[k + 1])
        n = int(lines[k + 3])
        box = np.array([[float(v) for v in lines[k + 5 + d].split()[:2]] for d in range(3)])
        names = lines[k + 8].split()[2:]
        data = np.array([line.split() for line in lines[k + 9 : k + 9 + n]], dtype=float)
        frame = {"step": step, "box": box}
        frame.update({name: data[:, c] for c, name in enumerate(names)})
        frames.append(frame)
        k += 9 + n
    if not frames:
        raise ValueError(f"{path} holds no dump frames")
    return frames


def classify(frame: dict, vacancy: np.ndarray, surface_depth: float = 2.0, vacancy_radius: float = 2.6) -> np.ndarray:
    """'surface' (within surface_depth of the slab's top or bottom), 'vacancy' (first
    neighbours of the vacant site, periodic in x and y), else 'bulk'."""
    pos = np.stack([frame["x"], frame["y"], frame["z"]], axis=1)
    z = pos[:, 2]
    surface = (z < z.min() + surface_depth) | (z > z.max() - surface_depth)
    lengths = frame["box"][:, 1] - frame["box"][:, 0]
    delta = pos - vacancy
    delta[:, :2] -= lengths[:2] * np.round(delta[:, :2] / lengths[:2])
    near_vacancy = (np.linalg.norm(delta, axis=1) < vacancy_radius) & ~surface
    return np.where(surface, "surface", np.where(near_vacancy, "vacancy", "bulk"))


def summarize(path: str, vacancy) -> dict:
    frames = read_dump(path)[1:]  # skip the initial perfect-lattice frame
    if not frames:
        raise ValueError(f"{path} has only the initial frame; run longer than one dump interval")
    sigma = {"bulk": [], "surface": [], "vacancy": []}
    for frame in frames:
        labels = classify(frame, np.asarray(vacancy, dtype=float))
        for name in sigma:
            sigma[name].append(frame["sigma"][labels == name])
    return {name: np.concatenate(values) for name, values in sigma.items()} | {"n_frames": len(frames)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dump")
    parser.add_argument("--vacancy", type=float, nargs=3, default=(1.5 * 5.431, 1.5 * 5.431, 2.0 * 5.431))
    args = parser.parse_args()
    result = summarize(args.dump, args.vacancy)
    bulk = result["bulk"].mean()
    print(f"llpr per-atom sigma, averaged over {result['n_frames']} frames of {args.dump}:")
    print(f"  {'atoms':10s} {'samples':>8s} {'mean sigma (meV)':>17s} {'ratio to bulk':>14s}")
    for name in ("bulk", "surface", "vacancy"):
        values = result[name]
        print(f"  {name:10s} {len(values):8d} {1000 * values.mean():17.3f} {values.mean() / bulk:14.2f}")


if __name__ == "__main__":
    main()
