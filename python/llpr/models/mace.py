"""Pretrained MACE models (mace-torch) as llpr atomistic models.

:class:`MACEModel` wraps a trained MACE (``MACE`` or ``ScaleShiftMACE``) so that it follows
:class:`llpr.models.protocol.AtomisticModel`: per-atom energies and last-layer features from
(numbers, edges, edge vectors, centres). It can then be fitted, calibrated and exported like
llpr's own potential, and the exported file runs in ``pair_style llpr`` (a message-passing
model: LAMMPS gives it ghost atoms out to its receptive field) and in the ASE calculator.

The feature convention: MACE's atomic energy is

    E_i = E0[Z_i] + shift + scale * (pair_i + sum_layers readout_l(h_i^l))

where the read-outs of all layers but the last are linear maps of the scalar (0e) channels of
the layer's node features, and the last one is ``linear_2(act(linear_1(h)))``. The last-layer
features are the inputs of those final linear maps, times ``scale``: the scalar channels of
each layer with a linear read-out, then the hidden activations of the last read-out (of the
chosen head). With ``w`` the concatenated weights of those linear maps (e3nn's normalisation
folded in), ``E_i = w . f_i + b[Z_i] + scale * pair_i`` with ``b = E0 + shift`` per element.
The ZBL pair repulsion (if the model has one) is part of the energy, not of the features.

A ``*.model`` file from ``mace_run_train`` is a Python pickle: loading it runs code from the
file, so it is only read with ``allow_pickle=True`` (``--allow-pickle`` on the command line).
The ``*_compiled.model`` TorchScript file needs no such trust and is preferred.
"""


import io
import warnings
import zipfile
from typing import List, Optional, Tuple

import torch
from torch import nn

from llpr.integrity import verify_zip

_INSTALL_HINT = "install it with `pip install llpr[mace]` (mace-torch 0.3.x)"


def _import_mace():
    """Import mace (before e3nn: e3nn alone fails to load its constants under torch >= 2.6)."""
    try:
        with warnings.catch_warnings():
            # e3nn and mace warn about torch.load defaults and TorchScript annotations at import
            warnings.simplefilter("ignore")
            import mace  # noqa: F401
            from e3nn.util import jit
    except ImportError as exc:
        raise ImportError(f"reading a MACE model needs the mace-torch package, which is not installed: "
                          f"{_INSTALL_HINT} ({exc})") from None
    return jit


def is_torchscript(path: str) -> bool:
    """A TorchScript archive has a code/ folder; a ``torch.save`` pickle does not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _archive_names(path: str) -> List[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _pickle_globals(path: str) -> List[str]:
    """Module names the pickle inside a ``torch.save`` archive refers to, read without
    unpickling (so without running any of its code)."""
    import pickletools

    names: List[str] = []
    try:
        with zipfile.ZipFile(path) as archive:
            entry = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            if entry is None:
                return names
            data = archive.read(entry)
        strings: List[str] = []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                names.append(str(arg).split(" ")[0])
            elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(strings[-2])
    except Exception:
        pass
    return names


def mace_file_kind(path: str) -> Optional[str]:
    """``"torchscript"`` for a scripted MACE model, ``"pickle"`` for a pickled one (both
    recognised without loading them), None for anything else."""
    names = _archive_names(path)
    if any("/code/__torch__/mace/" in n for n in names):
        return "torchscript"
    if names and not any("/code/" in n for n in names):
        if any(m == "mace" or m.startswith("mace.") for m in _pickle_globals(path)):
            return "pickle"
    return None


def _scalar_ranges(irreps) -> List[List[int]]:
    """[start, length] of the scalar (0e) blocks of e3nn irreps given as ((mul, (l, p)), ...)."""
    ranges, start = [], 0
    for mul, (l, p) in irreps:
        size = int(mul) * (2 * int(l) + 1)
        if int(l) == 0 and int(p) == 1:
            ranges.append([start, size])
        start += size
    return ranges


def _irreps_dim(irreps) -> int:
    return sum(int(mul) * (2 * int(l) + 1) for mul, (l, p) in irreps)


def _as_tuples(irreps):
    """e3nn Irreps (eager) or the tuple TorchScript keeps, as ((mul, (l, p)), ...)."""
    return tuple((int(mul), (int(ir[0]), int(ir[1]))) for mul, ir in irreps)


def _named(source: str) -> str:
    return f"MACE model '{source}'" if source else "the MACE model"


def _children(module) -> list:
    """The entries of a ModuleList, eager or scripted (a scripted one cannot be indexed)."""
    return [child for _, child in module.named_children()]


def verify_mace_file(path: str) -> int:
    """Check the CRC-32 of every record of a MACE file (both kinds are zip archives): libtorch
    loads a damaged one without a word, and its wrong weights would be calibrated, exported and
    sealed as sound. :class:`llpr.integrity.DamagedInputError` names the file and the damage.
    Returns the number of records checked."""
    return verify_zip(path, "mace-torch", "save the model again with mace-torch")


def read_mace(path: str, allow_pickle: bool = False) -> torch.jit.ScriptModule:
    """A MACE model file as TorchScript: a ``*_compiled.model`` (TorchScript) as it is, a
    ``*.model`` pickle (only with ``allow_pickle``) compiled with e3nn."""
    jit = _import_mace()
    import os

    if not os.path.exists(path):
        raise FileNotFoundError(f"MACE model '{path}' does not exist; check the path")
    verify_mace_file(path)
    if is_torchscript(path):
        if mace_file_kind(path) != "torchscript":
            raise ValueError(f"'{path}' is a TorchScript file but not a MACE model"
                             + (" (it is an exported llpr model: it is calibrated already)"
                                if any("/code/__torch__/llpr/" in n for n in _archive_names(path)) else ""))
        return torch.jit.load(path, map_location="cpu")
    if not allow_pickle:
        raise ValueError(
            f"'{path}' is a Python pickle (a `mace_run_train` *.model file): loading it runs code stored in "
            "the file. Use the TorchScript file `mace_run_train` writes beside it (*_compiled.model), or, "
            "if you trust this file, pass allow_pickle=True (--allow-pickle on the command line)"
        )
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"'{path}' is not a readable MACE model ({str(exc).splitlines()[0]})") from None
    if not isinstance(model, nn.Module) or not hasattr(model, "interactions"):
        raise ValueError(f"'{path}' holds a {type(model).__name__}, not a MACE model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e3nn's TorchScript annotation notes
        return jit.compile(model.eval())


class MACEModel(nn.Module):
    """A trained MACE model as an llpr atomistic model (see the module docstring).

    ``torchscript``: the MACE model, scripted (what :func:`read_mace` returns, or its bytes);
    ``head``: the head to use for a multi-head model (required there). Use
    :meth:`from_file` to read a MACE file."""

    species: List[int]
    cutoff: float
    receptive_field: float
    strictly_local: bool
    n_features: int
    n_species: int
    head_index: int
    n_heads: int
    readout_ranges: List[List[List[int]]]
    hidden_ranges: List[int]
    has_pair_repulsion: bool
    n_layers: int
    # the MACE file's bytes, for checkpoints; TorchScript has no type for them
    __jit_ignored_attributes__ = ["init_kwargs"]

    def __init__(self, torchscript, head: Optional[str] = None, source: str = "") -> None:
        super().__init__()
        _import_mace()
        if isinstance(torchscript, (bytes, bytearray)):
            data = bytes(torchscript)
            mace = torch.jit.load(io.BytesIO(data), map_location="cpu")
        else:
            mace = torchscript
            buffer = io.BytesIO()
            torch.jit.save(mace, buffer)
            data = buffer.getvalue()
        missing = [name for name in ("interactions", "products", "readouts", "atomic_energies_fn", "r_max",
                                     "atomic_numbers", "node_embedding", "radial_embedding")
                   if not hasattr(mace, name)]
        if missing:
            raise ValueError(f"{source or 'the model'} is not a MACE model (it lacks {', '.join(missing)})")
        if hasattr(mace, "joint_embedding") or hasattr(mace, "embedding_readout"):
            raise ValueError(f"{source or 'the model'} uses MACE's extra embeddings (joint_embedding), which take "
                             "inputs other than the structure; llpr supports MACE models without them")
        self.init_kwargs = {"torchscript": data, "head": head, "source": source}
        # NaN or inf weights give NaN for every structure, which the fit would blame on the data
        broken = [name for name, t in list(mace.named_parameters()) + list(mace.named_buffers())
                  if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if broken:
            raise ValueError(
                f"{_named(source)} holds non-finite (NaN or inf) weights ({', '.join(broken[:5])}"
                f"{', ...' if len(broken) > 5 else ''}): the model file is damaged or the model diverged in "
                "training. Use a copy of the file as mace-torch wrote it, or a checkpoint from before the divergence"
            )
        # MACE's blocks as this module's own (a scripted ModuleList cannot be iterated eagerly)
        self.node_embedding = mace.node_embedding
        self.spherical_harmonics = mace.spherical_harmonics
        self.radial_embedding = mace.radial_embedding
        self.interactions = nn.ModuleList(_children(mace.interactions))
        self.products = nn.ModuleList(_children(mace.products))
        self.readouts = nn.ModuleList(_children(mace.readouts))
        self.register_buffer("mace_atomic_numbers", mace.atomic_numbers.clone())
        heads = [str(h) for h in getattr(mace, "heads", ["Default"])]
        if head is None:
            if len(heads) > 1:
                raise ValueError(f"{source or 'the model'} is a multi-head MACE model (heads {', '.join(heads)}); "
                                 "choose one with head=... (--head on the command line)")
            head = heads[0]
        if head not in heads:
            raise ValueError(f"{source or 'the model'} has no head {head!r}; its heads are {', '.join(heads)}")
        self.head = head
        self.head_index = heads.index(head)
        self.n_heads = len(heads)

        param = next(mace.parameters())
        dtype = param.dtype
        self.species = [int(z) for z in mace.atomic_numbers.tolist()]
        if sorted(self.species) != self.species:
            raise ValueError(f"{source or 'the model'} lists its elements out of order ({self.species})")
        self.n_species = len(self.species)
        self.cutoff = float(mace.r_max)
        n_layers = int(mace.num_interactions)
        self.n_layers = n_layers
        self.receptive_field = n_layers * self.cutoff
        self.strictly_local = n_layers == 1
        self.has_pair_repulsion = hasattr(mace, "pair_repulsion_fn")
        if self.has_pair_repulsion:
            self.pair_repulsion_fn = mace.pair_repulsion_fn

        lookup = torch.full((119,), -1, dtype=torch.long)
        for k, z in enumerate(self.species):
            lookup[z] = k
        self.register_buffer("species_to_index", lookup)

        weights, ranges = [], []
        readouts = list(self.readouts)
        for k, readout in enumerate(readouts):
            last = k == len(readouts) - 1
            if hasattr(readout, "linear_1"):
                if not last:
                    raise ValueError("a non-linear MACE read-out before the last layer is not supported")
                if hasattr(readout, "linear_mid"):
                    raise ValueError("MACE read-outs with biases (NonLinearBiasReadoutBlock) are not supported")
                weights.append(self._hidden_weights(readout, dtype))
            else:
                w, r = self._linear_weights(readout, dtype)
                weights.append(w)
                ranges.append(r)
        if not hasattr(readouts[-1], "linear_1"):
            raise ValueError("the last MACE read-out is linear; llpr expects MACE's non-linear last read-out")
        self.readout_ranges = ranges
        w = torch.cat(weights)
        self.n_features = int(w.numel())

        scale = torch.atleast_1d(mace.scale_shift.scale).to(dtype) if hasattr(mace, "scale_shift") else None
        shift = torch.atleast_1d(mace.scale_shift.shift).to(dtype) if hasattr(mace, "scale_shift") else None
        s = float(scale[self.head_index if scale.numel() > 1 else 0]) if scale is not None else 1.0
        t = float(shift[self.head_index if shift.numel() > 1 else 0]) if shift is not None else 0.0
        e0 = torch.atleast_2d(mace.atomic_energies_fn.atomic_energies).to(dtype)  # (heads, species)
        e0 = e0[self.head_index if e0.shape[0] > 1 else 0]
        self.register_buffer("weights", w.to(dtype))
        self.register_buffer("element_energies", (e0 + t).to(dtype))
        self.register_buffer("scale", torch.tensor(s, dtype=dtype))

    def _linear_weights(self, readout, dtype) -> Tuple[torch.Tensor, List[List[int]]]:
        """w of a linear read-out over its input's scalar channels, by applying it to unit vectors."""
        irreps = _as_tuples(readout.linear.irreps_in)
        ranges = _scalar_ranges(irreps)
        dim = _irreps_dim(irreps)
        columns = [c for start, size in ranges for c in range(start, start + size)]
        with torch.no_grad():
            probe = torch.zeros((len(columns) + 1, dim), dtype=dtype)
            probe[torch.arange(len(columns)), torch.tensor(columns, dtype=torch.long)] = 1.0
            out = readout.linear(probe)
        if out.shape[1] != self.n_heads or float(out[-1].abs().max()) != 0.0:
            raise ValueError("a MACE read-out is not a bias-free linear map to one energy per head")
        return out[:-1, self.head_index].clone(), ranges

    def _hidden_weights(self, readout, dtype) -> torch.Tensor:
        """w of the last read-out's final linear map, over the chosen head's hidden channels."""
        hidden = _irreps_dim(_as_tuples(readout.linear_2.irreps_in))
        if hidden % self.n_heads:
            raise ValueError("the last MACE read-out's hidden width is not a multiple of its number of heads")
        per_head = hidden // self.n_heads
        start = self.head_index * per_head if self.n_heads > 1 else 0
        self.hidden_ranges = [start, per_head if self.n_heads > 1 else hidden]
        with torch.no_grad():
            out = readout.linear_2(torch.cat([torch.eye(hidden, dtype=dtype), torch.zeros((1, hidden), dtype=dtype)]))
        if out.shape[1] != self.n_heads or float(out[-1].abs().max()) != 0.0:
            raise ValueError("the last MACE read-out's final map is not a bias-free linear map")
        return out[start:start + self.hidden_ranges[1], self.head_index].clone()

    @classmethod
    def from_file(cls, path: str, head: Optional[str] = None, allow_pickle: bool = False,
                  dtype: Optional[str] = None) -> "MACEModel":
        """Read a MACE model file (see :func:`read_mace`). ``dtype`` ("float32"/"float64"), when
        given, must be the model's own: a model is used in the precision it was trained in."""
        model = cls(read_mace(path, allow_pickle=allow_pickle), head=head, source=path)
        own = "float64" if model.weights.dtype == torch.float64 else "float32"
        if dtype is not None and dtype != own:
            raise ValueError(
                f"'{path}' is a {own} MACE model but {dtype} was asked for; use it in {own}, or save the MACE "
                f"model in {dtype} with mace-torch (e.g. train with --default_dtype {dtype})"
            )
        return model

    def __deepcopy__(self, memo):
        # scripted blocks do not deep-copy into usable parameters: rebuild from the file's bytes
        copy = type(self)(**self.init_kwargs)
        copy.load_state_dict(self.state_dict())
        return copy.to(self.weights.dtype).train(self.training)

    def describe(self) -> dict:
        """What the wrapped model is, for ``llpr check`` and logs."""
        return {"architecture": "MACE", "layers": self.n_layers, "r_max": self.cutoff,
                "receptive_field": self.receptive_field, "head": self.head, "n_features": self.n_features}

    def forward(self, atomic_numbers: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                n_centers: int) -> Tuple[torch.Tensor, torch.Tensor]:
        index = self.species_to_index[atomic_numbers]
        if index.numel() > 0 and int(index.min()) < 0:
            raise ValueError("structure contains an element the MACE model does not know; it knows "
                             + str(self.species))
        dtype = edge_vectors.dtype
        if n_centers == 0:
            # MACE's blocks cannot take zero nodes; no centres (an empty structure) give no
            # energies, as llpr's own models do. Empty slices of the edge vectors: the callers'
            # backward passes need outputs in the autograd graph
            none = edge_vectors[:0, 0]
            return none, none.unsqueeze(1).repeat(1, self.n_features)
        n_atoms = atomic_numbers.shape[0]
        n_layers = self.n_layers
        centre, neighbour = edge_index[0], edge_index[1]
        # Which atoms each layer must update: the centres at the last layer, and at each layer
        # before it also the neighbours of the atoms the next one updates. `level` is the
        # number of hops from the nearest centre (n_layers + 1: farther than any layer needs).
        # Beside a structure given whole (every atom a centre), LAMMPS gives the centres with
        # ghost atoms out to the receptive field; most of those only feed the first layer.
        level = torch.full((n_atoms,), n_layers + 1, dtype=torch.long, device=atomic_numbers.device)
        level[:n_centers] = 0
        for hop in range(1, n_layers):
            reached = neighbour[level[centre] == hop - 1]
            level[reached] = torch.clamp(level[reached], max=hop)
        # atoms in order of level (centres first, as they came), so that each layer works on a
        # prefix of the atoms
        order = torch.argsort(level, stable=True)
        position = torch.empty_like(order)
        position[order] = torch.arange(n_atoms, dtype=order.dtype, device=order.device)
        counts: List[int] = [int((level <= n_layers - 1 - i).sum()) for i in range(n_layers)]
        used = level[centre] <= n_layers - 1
        receiver_level = level[centre[used]]
        # MACE sends messages from edge_index[0] to edge_index[1] along pos[1] - pos[0]; llpr's
        # edges point from the centre (row 0) to the neighbour (row 1)
        edges = torch.stack([position[neighbour[used]], position[centre[used]]])
        vectors = -edge_vectors[used]
        node_attrs = torch.nn.functional.one_hot(index[order], self.n_species).to(dtype)
        lengths = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
        node_feats = self.node_embedding(node_attrs)
        edge_attrs = self.spherical_harmonics(vectors)
        edge_feats, cutoff = self.radial_embedding(lengths, node_attrs, edges, self.mace_atomic_numbers)
        layers: List[torch.Tensor] = []
        n_inputs = n_atoms
        for i, (interaction, product) in enumerate(zip(self.interactions, self.products)):
            keep = receiver_level <= n_layers - 1 - i
            layer_cutoff = cutoff
            if cutoff is not None:
                layer_cutoff = cutoff[keep]
            node_feats, sc = interaction(node_attrs=node_attrs[:n_inputs], node_feats=node_feats,
                                         edge_attrs=edge_attrs[keep], edge_feats=edge_feats[keep],
                                         edge_index=edges[:, keep], cutoff=layer_cutoff, first_layer=(i == 0))
            n_inputs = counts[i]
            node_feats = product(node_feats=node_feats[:n_inputs], sc=sc[:n_inputs] if sc is not None else sc,
                                 node_attrs=node_attrs[:n_inputs])
            layers.append(node_feats[:n_centers])
        parts: List[torch.Tensor] = []
        n_linear = len(self.readout_ranges)
        for k in range(n_linear):
            for r in self.readout_ranges[k]:
                parts.append(layers[k].narrow(1, r[0], r[1]))
        for readout in self.readouts:
            if hasattr(readout, "linear_1"):
                hidden = readout.non_linearity(readout.linear_1(layers[-1]))
                parts.append(hidden.narrow(1, self.hidden_ranges[0], self.hidden_ranges[1]))
        features = torch.cat(parts, dim=1) * self.scale
        energies = features @ self.weights + self.element_energies[index[:n_centers]]
        if hasattr(self, "pair_repulsion_fn"):  # decided when scripted
            own = receiver_level == 0
            pair = self.pair_repulsion_fn(lengths[own], node_attrs, edges[:, own], self.mace_atomic_numbers)
            energies = energies + self.scale * pair[:n_centers]
        if not torch.jit.is_scripting():
            # in Python (fit, calibrate); the exported file's callers check its outputs themselves
            self._check_outputs(energies, features, lengths)
        return energies, features

    @torch.jit.unused
    def _check_outputs(self, energies: torch.Tensor, features: torch.Tensor, lengths: torch.Tensor) -> None:
        """NaN or inf from finite, non-overlapping inputs is the model's fault, not the data's:
        name the model file (non-finite or overlapping inputs are left to the caller's checks)."""
        if bool(torch.isfinite(energies).all()) and bool(torch.isfinite(features).all()):
            return
        if not bool(torch.isfinite(lengths).all()) or (lengths.numel() > 0 and float(lengths.min()) == 0.0):
            return
        closest = f"{float(lengths.min()):.3g} A" if lengths.numel() > 0 else "no neighbours"
        raise ValueError(
            f"{_named(self.init_kwargs.get('source', ''))} gave non-finite (NaN or inf) energies or features for a "
            f"structure with finite positions (closest pair: {closest}): the model file is damaged or the model "
            "diverged in training. Check it with mace-torch on a structure it was trained on, and use a sound copy "
            "of the file or a checkpoint from before the divergence"
        )

    @torch.jit.export
    def readout_weights(self) -> torch.Tensor:
        return self.weights

    @torch.jit.export
    def species_energies(self) -> torch.Tensor:
        return self.element_energies
