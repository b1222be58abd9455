"""Small MACE models for the tests, built with mace-torch's own classes (untrained: the adapter
tests compare llpr with MACE on the same weights, which need not be accurate)."""

import numpy as np
import torch

import mace  # noqa: F401  (before e3nn)
from e3nn import o3
from mace import modules

# element energies that look like a DFT code's (eV), by atomic number
E0 = {6: -8.1, 7: -3.1, 14: -5.4, 31: -2.9}


def make_mace(species, seed=0, pair_repulsion=False, heads=None, dtype=torch.float64, hidden="8x0e+8x1o",
              interactions=2, r_max=4.0, scale_shift=True):
    """An initialised (Scale-Shift) MACE on ``species`` with 2 interactions, in ``dtype``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(seed)
        z = sorted(int(s) for s in species)
        n_heads = len(heads) if heads else 1
        energies = np.array([[E0[s] + 0.1 * h for s in z] for h in range(n_heads)])
        block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
        kwargs = dict(
            r_max=r_max, num_bessel=6, num_polynomial_cutoff=5, max_ell=2, interaction_cls=block,
            interaction_cls_first=block, num_interactions=interactions, num_elements=len(z),
            hidden_irreps=o3.Irreps(hidden), MLP_irreps=o3.Irreps(f"{8 * n_heads}x0e"),
            atomic_energies=energies if heads else energies[0], avg_num_neighbors=10.0, atomic_numbers=z,
            correlation=2, gate=torch.nn.functional.silu, pair_repulsion=pair_repulsion, heads=heads,
        )
        if scale_shift:
            scale = [1.3 + 0.2 * h for h in range(n_heads)] if heads else 1.3
            shift = [-0.2 + 0.05 * h for h in range(n_heads)] if heads else -0.2
            model = modules.ScaleShiftMACE(atomic_inter_scale=scale, atomic_inter_shift=shift, **kwargs)
        else:
            model = modules.MACE(**kwargs)
        return model.eval()
    finally:
        torch.set_default_dtype(previous)


def save_mace(model, folder, name="mace"):
    """Write the two files `mace_run_train` writes: NAME.model (a pickle) and
    NAME_compiled.model (TorchScript); returns their paths."""
    from e3nn.util import jit

    pickled = str(folder / f"{name}.model")
    compiled = str(folder / f"{name}_compiled.model")
    torch.save(model, pickled)
    torch.jit.save(jit.compile(model), compiled)
    return pickled, compiled
