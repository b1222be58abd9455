"""Render one frame of a LAMMPS `dump custom` file with the atoms coloured by a per-atom
column (by default `sigma`, the llpr uncertainty sigma_i written by in.silicon).

    python render.py dump.llpr -o sigma.png                  # last frame, OVITO if it can render
    python render.py dump.llpr -o sigma.png --frame 0 --renderer matplotlib
    python render.py dump.llpr -o lpr.png --property lpr --label "LPR"

The column must be named in the dump, e.g. with
`dump_modify ID colname c_unc[1] sigma colname c_unc[2] lpr`; without colname it is called
`c_unc[1]` (use --property 'c_unc[1]').

Renderers: `ovito` (OVITO's Tachyon ray tracer, offscreen; needs `pip install ovito` and a
Vulkan loader, on Debian/Ubuntu `apt-get install libvulkan1 mesa-vulkan-drivers`),
`matplotlib` (a 2D projection, always available), or `auto` (default): OVITO when it renders
here, else matplotlib.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np

AXES = {"x": 0, "y": 1, "z": 2}


# ----------------------------------------------------------------------------- reading
def read_frame(path: str, frame: int = -1) -> dict:
    """One frame of a text `dump custom` file: {'step', 'box' (3, 2), column name: array}.

    ``frame`` counts from 0; negative values count from the end (-1: the last frame)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"dump file '{path}' does not exist; check the path")
    with open(path) as fh:
        lines = fh.read().splitlines()
    starts = [k for k, line in enumerate(lines) if line.startswith("ITEM: TIMESTEP")]
    if not starts:
        raise ValueError(f"'{path}' holds no dump frames (is it a LAMMPS text dump?)")
    try:
        k = starts[frame]
    except IndexError:
        raise ValueError(f"'{path}' has {len(starts)} frames; frame {frame} does not exist") from None
    n = int(lines[k + 3])
    box = np.array([[float(v) for v in lines[k + 5 + d].split()[:2]] for d in range(3)])
    header = lines[k + 8]
    if not header.startswith("ITEM: ATOMS"):
        raise ValueError(f"'{path}' is not a `dump custom`/`dump atom` file (no ITEM: ATOMS line)")
    names = header.split()[2:]
    data = np.array([line.split() for line in lines[k + 9 : k + 9 + n]], dtype=float).reshape(n, len(names))
    out = {"step": int(lines[k + 1]), "box": box, "frame_index": starts.index(k), "n_frames": len(starts)}
    out.update({name: data[:, c] for c, name in enumerate(names)})
    return out


def _column(frame: dict, name: str, path: str) -> np.ndarray:
    if name not in frame:
        columns = [c for c in frame if c not in ("step", "box", "frame_index", "n_frames")]
        raise ValueError(
            f"'{path}' has no column '{name}' (columns: {' '.join(columns)}); name it with "
            f"`dump_modify ID colname c_unc[1] {name}` or pass --property with one of these"
        )
    return frame[name]


def vacuum_shift(positions: np.ndarray, box: np.ndarray, min_gap: float = 3.0) -> np.ndarray:
    """Per-axis translation that moves the widest empty layer (a slab's vacuum, at least
    ``min_gap`` wide) to the cell boundary, so that a slab cut by the periodic boundary is
    drawn in one piece; zero along axes without such a layer."""
    shift = np.zeros(3)
    for d in range(3):
        lo, length = box[d, 0], box[d, 1] - box[d, 0]
        c = np.sort((positions[:, d] - lo) % length)
        if len(c) < 2:
            continue
        gaps = np.diff(c)
        k = int(np.argmax(gaps))
        if gaps[k] > max(min_gap, c[0] + length - c[-1]):
            shift[d] = -(c[k] + 0.5 * gaps[k])
    return shift


def _wrap(positions: np.ndarray, box: np.ndarray, shift: np.ndarray) -> np.ndarray:
    lo, length = box[:, 0], box[:, 1] - box[:, 0]
    return (positions - lo + shift) % length + lo


# ----------------------------------------------------------------------------- OVITO
def ovito_can_render() -> tuple[bool, str]:
    """Whether OVITO is installed and its offscreen renderer works here (tried in a
    subprocess, so a missing Vulkan driver cannot take this process down)."""
    try:
        import ovito  # noqa: F401
    except ImportError as exc:
        return False, f"OVITO is not installed ({exc}); pip install ovito"
    probe = (
        "from ovito.pipeline import Pipeline, StaticSource\n"
        "from ovito.data import DataCollection\n"
        "from ovito.vis import Viewport, TachyonRenderer\n"
        "d = DataCollection(); d.create_cell([[5,0,0,0],[0,5,0,0],[0,0,5,0]], pbc=(True,)*3)\n"
        "d.create_particles(count=1).create_property('Position', data=[[1.,1.,1.]])\n"
        "p = Pipeline(source=StaticSource(data=d)); p.add_to_scene()\n"
        "vp = Viewport(); vp.zoom_all()\n"
        "vp.render_image(size=(16, 16), renderer=TachyonRenderer())\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1]
        return False, (
            f"OVITO cannot render offscreen here ({last}); it needs a Vulkan loader and driver: "
            "apt-get install libvulkan1 mesa-vulkan-drivers"
        )
    return True, ""


def render_ovito(path, output, frame_index, prop, value_range, label, size, view_axis, slab, shift, show_cell,
                 caption):
    from ovito.io import import_file
    from ovito.modifiers import (AffineTransformationModifier, ColorCodingModifier, DeleteSelectedModifier,
                                 ExpressionSelectionModifier, WrapPeriodicImagesModifier)
    from ovito.qt_compat import QtCore
    from ovito.vis import ColorLegendOverlay, TachyonRenderer, TextLabelOverlay, Viewport

    pipeline = import_file(path)
    n_frames = pipeline.source.num_frames
    frame = frame_index if frame_index >= 0 else n_frames + frame_index
    if slab is not None:
        axis, lo, hi = slab
        pipeline.modifiers.append(ExpressionSelectionModifier(expression=f"Position.{axis.upper()} < {lo} || Position.{axis.upper()} > {hi}"))
        pipeline.modifiers.append(DeleteSelectedModifier())
    if np.any(shift != 0.0):
        pipeline.modifiers.append(AffineTransformationModifier(
            operate_on={"particles"},
            transformation=[[1, 0, 0, shift[0]], [0, 1, 0, shift[1]], [0, 0, 1, shift[2]]]))
        pipeline.modifiers.append(WrapPeriodicImagesModifier())
    coding = ColorCodingModifier(property=prop, gradient=ColorCodingModifier.Viridis())
    if value_range is not None:
        coding.auto_adjust_range = False
        coding.start_value, coding.end_value = value_range
    pipeline.modifiers.append(coding)
    source = pipeline.source.data
    source.particles.vis.radius = 1.0
    if source.cell is not None:
        source.cell.vis.enabled = show_cell
        source.cell.vis.line_width = 0.08
        source.cell.vis.rendering_color = (0.55, 0.55, 0.55)
    pipeline.add_to_scene()
    try:
        direction = {"x": (1, 0, 0), "y": (0, 1, 0), "z": (0, 0, -1)}[view_axis]
        up = (0, 0, 1) if view_axis != "z" else (0, 1, 0)
        if view_axis in ("x", "y"):
            vp = Viewport(type=Viewport.Type.Ortho, camera_dir=direction, camera_up=up)
        else:
            vp = Viewport(type=Viewport.Type.Ortho, camera_dir=direction)
        vp.overlays.append(
            ColorLegendOverlay(
                modifier=coding,
                title=label,
                alignment=QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter,
                orientation=QtCore.Qt.Orientation.Vertical,
                format_string="%.3g",
                font_size=0.08,
                legend_size=0.6,
                offset_x=-0.02,
            )
        )
        vp.overlays.append(TextLabelOverlay(text=caption, font_size=0.045, text_color=(0.1, 0.1, 0.1),
                                            alignment=QtCore.Qt.AlignmentFlag.AlignLeft | QtCore.Qt.AlignmentFlag.AlignTop,
                                            offset_x=0.01, offset_y=-0.01))
        vp.zoom_all(size=size)
        vp.fov *= 1.12  # a margin for the caption and the legend
        vp.render_image(size=size, filename=output, background=(1.0, 1.0, 1.0), frame=frame,
                        renderer=TachyonRenderer(ambient_occlusion=True, shadows=False))
    finally:
        pipeline.remove_from_scene()
    return output


# ----------------------------------------------------------------------------- matplotlib
def render_matplotlib(frame, output, prop, value_range, label, size, view_axis, slab, title, shift, show_cell):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = np.stack([frame["x"], frame["y"], frame["z"]], axis=1)
    values = frame[prop]
    if slab is not None:
        axis, lo, hi = slab
        keep = (pos[:, AXES[axis]] >= lo) & (pos[:, AXES[axis]] <= hi)
        pos, values = pos[keep], values[keep]
    pos = _wrap(pos, frame["box"], shift)
    depth = AXES[view_axis]
    h, v = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[view_axis]
    # the camera looks along +x, +y or -z (as in the OVITO view): far atoms are drawn first
    order = np.argsort(pos[:, depth]) if view_axis == "z" else np.argsort(-pos[:, depth])
    vmin, vmax = value_range if value_range is not None else (float(values.min()), float(values.max()))
    dpi = 100
    fig, ax = plt.subplots(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    box = frame["box"]
    if show_cell:
        ax.add_patch(plt.Rectangle((box[h, 0], box[v, 0]), box[h, 1] - box[h, 0], box[v, 1] - box[v, 0],
                                   fill=False, lw=0.8, color="0.4"))
    sc = ax.scatter(pos[order, h], pos[order, v], c=values[order], cmap="viridis", vmin=vmin, vmax=vmax,
                    s=60, edgecolors="k", linewidths=0.4)
    ax.set_aspect("equal")
    names = "xyz"
    ax.set_xlabel(f"{names[h]} (Å)")
    ax.set_ylabel(f"{names[v]} (Å)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(sc, ax=ax, label=label, shrink=0.8)
    fig.tight_layout()
    fig.savefig(output, dpi=dpi)
    plt.close(fig)
    return output


# ----------------------------------------------------------------------------- entry point
def render(path, output="sigma.png", frame=-1, prop="sigma", value_range=None, label=None,
           size=(800, 600), renderer="auto", view_axis="y", slab=None, show_cell=True) -> str:
    """Render frame ``frame`` of the dump ``path`` to ``output`` (PNG) with atoms coloured by
    column ``prop``; returns the renderer used ('ovito' or 'matplotlib').

    ``slab = (axis, min, max)`` keeps only the atoms in that range (a cross-section, in the
    dump's coordinates). A slab cut by the periodic boundary is drawn in one piece."""
    data = read_frame(path, frame)
    _column(data, prop, path)
    for c in ("x", "y", "z"):
        if c not in data:
            raise ValueError(f"'{path}' has no '{c}' column; dump the unscaled positions x y z")
    if renderer not in ("auto", "ovito", "matplotlib"):
        raise ValueError(f"renderer must be auto, ovito or matplotlib, not {renderer!r}")
    label = label or ("σᵢ (eV)" if prop == "sigma" else prop)
    positions = np.stack([data["x"], data["y"], data["z"]], axis=1)
    shift = vacuum_shift(positions, data["box"])
    caption = f"{os.path.basename(path)}, step {data['step']}"
    use = renderer
    if renderer in ("auto", "ovito"):
        ok, why = ovito_can_render()
        if not ok:
            if renderer == "ovito":
                raise RuntimeError(why)
            print(f"render.py: {why}; using matplotlib instead", file=sys.stderr)
            use = "matplotlib"
        else:
            use = "ovito"
    if use == "ovito":
        render_ovito(path, output, data["frame_index"], prop, value_range, label, size, view_axis, slab, shift,
                     show_cell, caption)
    else:
        render_matplotlib(data, output, prop, value_range, label, size, view_axis, slab,
                          f"{caption}: atoms coloured by {prop}", shift, show_cell)
    return use


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump", help="LAMMPS text dump (dump custom with x y z and the property)")
    parser.add_argument("-o", "--output", default="sigma.png", help="PNG to write (default sigma.png)")
    parser.add_argument("--frame", type=int, default=-1, help="frame index, from 0; -1 = last (default)")
    parser.add_argument("--property", default="sigma", help="column to colour by (default sigma)")
    parser.add_argument("--range", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                        help="colour scale limits (default: the frame's min and max)")
    parser.add_argument("--label", default=None, help="colour bar title (default 'σᵢ (eV)' for sigma)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=(800, 600))
    parser.add_argument("--view", choices=("x", "y", "z"), default="y",
                        help="look along this axis (default y: a side view of a slab normal to z)")
    parser.add_argument("--slab", nargs=3, metavar=("AXIS", "MIN", "MAX"), default=None,
                        help="show only atoms with MIN <= position along AXIS <= MAX (a cross-section)")
    parser.add_argument("--no-cell", action="store_true", help="do not draw the simulation cell")
    parser.add_argument("--renderer", choices=("auto", "ovito", "matplotlib"), default="auto")
    args = parser.parse_args(argv)
    slab = None
    if args.slab:
        if args.slab[0] not in AXES:
            parser.error("--slab AXIS must be x, y or z")
        slab = (args.slab[0], float(args.slab[1]), float(args.slab[2]))
    try:
        used = render(args.dump, args.output, args.frame, args.property, args.range, args.label,
                      tuple(args.size), args.renderer, args.view, slab, not args.no_cell)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"render.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({used})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
