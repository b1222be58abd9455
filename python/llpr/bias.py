"""The uncertainty bias of uncertainty-biased molecular dynamics (LAMMPS ``fix llpr/bias``).

The biased energy of a group of atoms is ``E_b = E - tau * s(sigma_E)``, with ``sigma_E =
alpha sqrt(S^T C^-1 S)`` the LLPR uncertainty of the group's energy (``S`` its summed
last-layer features) and ``s`` either ``sigma_E`` itself or, with a cap ``c > 0``, ``c
tanh(sigma_E / c)``: equal to ``sigma_E`` for small values and bounded by ``c``, so that the
bias energy stays finite and its force fades where the model is already very unsure.

Its gradient needs no extra backward pass: ``d s / d S = s'(sigma_E) alpha^2 C^-1 S /
sigma_E`` is a vector of ``F`` numbers, so the biased forces are one backward pass of the
energies with the read-out ``w`` of each group atom replaced by ``w - tau d s / d S``. The
LLPR head (:meth:`llpr.head.LLPRHead.bias_sigma`) computes ``sigma_E``, ``s`` and ``d s / d
S``; the exported module's ``forward_graph`` / ``backward_graph`` run the two halves of the
evaluation around it (the group's features are summed, over MPI ranks in LAMMPS, in between).
"""

from typing import Tuple

import torch


def capped_sigma(sigma: torch.Tensor, sigma_cap: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``s(sigma)`` and ``ds / dsigma``: ``sigma`` and 1 when ``sigma_cap <= 0`` (no cap),
    otherwise ``sigma_cap tanh(sigma / sigma_cap)`` and ``1 - tanh^2``."""
    if sigma_cap <= 0.0:
        return sigma, torch.ones_like(sigma)
    t = torch.tanh(sigma / sigma_cap)
    return sigma_cap * t, 1.0 - t * t
