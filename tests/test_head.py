"""The LLPR head's formulas against their definitions, on synthetic covariances (no LAMMPS).

The head evaluates f^T C^-1 f as |f (L^-1)^T|^2 with a stored triangular inverse; it must agree
with a triangular solve to 1e-12 relative on well- and ill-conditioned covariances, in one
block and in blocks of rows, scripted or not."""

from __future__ import annotations

import pytest
import torch

from llpr.uncertainty.llpr_head import LLPRHead


def _covariance(n, condition, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, torch.log10(torch.tensor(condition)).item(), n, dtype=torch.float64)
    return (q * eig) @ q.t()


@pytest.mark.parametrize("condition", [1e2, 1e12])
@pytest.mark.parametrize("n_features", [8, 64])
def test_quadratic_form_equals_triangular_solve(condition, n_features):
    C = _covariance(n_features, condition, seed=n_features)
    L = torch.linalg.cholesky(C)
    head = LLPRHead(L, 1.7, 0.3)
    head.block_rows = 97  # several blocks, one of them partial
    scripted = torch.jit.script(head)
    f = torch.randn(1000, n_features, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = torch.linalg.solve_triangular(L, f.t(), upper=False)
    want = (z * z).sum(0)
    for h in (head, scripted):
        got = h.quadratic_form(f)
        assert float(((got - want).abs() / want).max()) < 1e-12
        sigma, lpr = h.local_uncertainty(f)
        torch.testing.assert_close(sigma, 1.7 * want.sqrt(), rtol=1e-12, atol=0)
        torch.testing.assert_close(lpr, 1.0 / want, rtol=1e-12, atol=0)
    # float32 features are promoted, not computed in float32
    got32 = head.quadratic_form(f.float())
    z32 = torch.linalg.solve_triangular(L, f.float().double().t(), upper=False)
    assert got32.dtype == torch.float64
    assert float(((got32 - (z32 * z32).sum(0)).abs() / want).max()) < 1e-12


def test_energy_variance_and_ensemble_formulas():
    n = 6
    C = _covariance(n, 1e3, seed=3)
    L = torch.linalg.cholesky(C)
    dw = torch.randn(5, n, dtype=torch.float64)
    head = LLPRHead(L, 2.0, 0.1, dw)
    s = torch.randn(3, n, dtype=torch.float64)
    torch.testing.assert_close(head.energy_variance(s), 4.0 * torch.einsum("bi,ij,bj->b", s, torch.linalg.inv(C), s),
                               rtol=1e-10, atol=0)
    assert head.energy_variance(s[0]).shape == (1,)
    torch.testing.assert_close(head.ensemble_energy_deviations(s), s @ dw.t(), rtol=1e-14, atol=0)
    torch.testing.assert_close(head.ensemble_energy_deviations(s[1]), dw @ s[1], rtol=1e-14, atol=0)
    dF = torch.randn(5, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(head.force_sigma(dF), torch.sqrt((dF**2).sum(dim=(0, 2)) / (3 * 4)), rtol=1e-14, atol=0)
    assert head.ensemble_size() == 5 and head.n_features() == n


@pytest.mark.parametrize("sigma_cap", [0.0, 0.8])
def test_bias_sigma_gradient_is_the_derivative(sigma_cap):
    """bias_sigma's sigma_E = alpha sqrt(s^T C^-1 s), its capped value (cap tanh(sigma / cap))
    and gradient (alpha^2 C^-1 s / sigma_E times the cap's slope) against autograd of the
    definitions, scripted and not; zero gradient at s = 0."""
    n = 7
    C = _covariance(n, 1e4, seed=4)
    head = LLPRHead(torch.linalg.cholesky(C), 0.3, 0.1)
    s = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    sigma = 0.3 * torch.sqrt(s @ torch.linalg.solve(C, s))
    value = sigma if sigma_cap <= 0 else sigma_cap * torch.tanh(sigma / sigma_cap)
    (want_grad,) = torch.autograd.grad(value, [s])
    assert float(sigma) > 0.5 * sigma_cap  # the cap bends the slope here
    for h in (head, torch.jit.script(head)):
        got_sigma, got_value, got_grad = h.bias_sigma(s.detach(), sigma_cap)
        torch.testing.assert_close(got_sigma, sigma.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(got_value, value.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12 * float(want_grad.abs().max()))
        zero_sigma, zero_value, zero_grad = h.bias_sigma(torch.zeros(n, dtype=torch.float64), sigma_cap)
        assert float(zero_sigma) == 0.0 and float(zero_value) == 0.0 and bool((zero_grad == 0).all())
        # the same sigma as energy_variance gives (compute llpr reports that one)
        assert float(got_sigma) == float(torch.sqrt(h.energy_variance(s.detach()))[0])


def test_bad_factor_is_refused():
    with pytest.raises(ValueError, match="square matrix"):
        LLPRHead(torch.ones(2, 3, dtype=torch.float64), 1.0, 0.0)
    with pytest.raises(ValueError, match="positive diagonal"):
        LLPRHead(-torch.eye(3, dtype=torch.float64), 1.0, 0.0)
    with pytest.raises(ValueError, match=r"shape \(K, 3\)"):
        LLPRHead(torch.eye(3, dtype=torch.float64), 1.0, 0.0, torch.zeros(2, 4, dtype=torch.float64))
