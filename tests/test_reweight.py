"""The reweighting estimators against closed forms (jointly Gaussian observable and energy
deviations; an exponential distribution where the cumulant expansion is wrong), the block
analysis against the known error of a correlated series, the effective-sample-size warning,
and the readers of LAMMPS output on hand-written files."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from llpr.reweight import (
    BOLTZMANN,
    ReweightWarning,
    block_length,
    format_report,
    read_ave_time,
    read_log,
    reweight,
    reweight_lammps,
    reweight_observable,
)

T_K = 1000.0
BETA = 1.0 / (BOLTZMANN["metal"] * T_K)


def gaussian_case(n=40000, k=12, seed=0):
    """A ~ N(1, 2^2) and dE_k ~ N(0.3, s_k^2) with correlation rho_k: the member average is
    <A>_k = <A> - beta rho_k s_k sA exactly, and the weights' ESS fraction tends to
    exp(-beta^2 s_k^2)."""
    rng = np.random.default_rng(seed)
    s = np.linspace(0.2, 1.4, k) / BETA
    rho = np.linspace(-0.9, 0.9, k)
    za = rng.normal(size=n)
    a = 1.0 + 2.0 * za
    de = 0.3 + s * (rho * za[:, None] + np.sqrt(1 - rho ** 2) * rng.normal(size=(n, k)))
    return a, de, 1.0 - BETA * rho * s * 2.0, np.exp(-(BETA * s) ** 2)


def test_gaussian_closed_form():
    a, de, exact, ess_fraction = gaussian_case()
    r = reweight_observable(de, a, T_K)
    assert block_length([a, de]) == 1 and r.blocks == 200  # independent frames; at most 200 blocks
    for est in ("direct", "cea"):
        z = (r.members[est][:, 0] - exact) / r.members_error[est][:, 0]
        assert np.abs(z).max() < 4.0, (est, z)
    # Kish's ESS is itself noisy where the weights are uneven (large beta s)
    wide = ess_fraction > 0.3
    np.testing.assert_allclose((r.ess / r.frames)[wide], ess_fraction[wide], rtol=0.03)
    np.testing.assert_allclose(r.ess / r.frames, ess_fraction, rtol=0.15)
    # the model uncertainty is the spread of the exact member averages
    np.testing.assert_allclose(r.model_sigma["cea"][0], exact.std(ddof=1), rtol=0.05)
    # where every ESS is large, the two estimators agree within their difference's noise
    assert np.abs(r.members["direct"] - r.members["cea"]).max() < 4 * r.members_error["direct"].max()
    assert not r.warnings


def test_cumulant_expansion_fails_where_it_should():
    """dE ~ Exp(rate beta) and A = dE: the reweighted mean is 1 / (2 beta), direct
    reweighting finds it, the first-order cumulant expansion gives 1/beta - beta/beta^2 = 0."""
    rng = np.random.default_rng(1)
    de = rng.exponential(1.0 / BETA, size=(200000, 2)) * [1.0, 1e-3]
    r = reweight_observable(de, de[:, 0], T_K)
    exact = 1.0 / (2.0 * BETA)
    assert abs(r.members["direct"][0, 0] - exact) < 4 * r.members_error["direct"][0, 0]
    assert abs(r.members["cea"][0, 0] - 0.0) < 4 * r.members_error["cea"][0, 0]
    assert abs(r.members["direct"][0, 0] - r.members["cea"][0, 0]) > 0.4 * exact
    # and says so: where the ESS is fine, the two estimators should not disagree like this
    assert r.ess[0] > 0.7 * r.frames
    assert any("the cumulant expansion differs from direct reweighting for 1 member(s)" in w for w in r.warnings)


def test_block_error_of_a_correlated_series():
    """AR(1) with phi = 0.95: the blocked jackknife error of the mean matches
    sigma sqrt((1 + phi) / ((1 - phi) n)) within 25%, and the block length exceeds the
    correlation time."""
    rng = np.random.default_rng(2)
    n, phi = 2 ** 16, 0.95
    x = np.empty(n)
    x[0] = 0.0
    noise = rng.normal(size=n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    sigma = 1.0 / math.sqrt(1 - phi ** 2)
    expected = sigma * math.sqrt((1 + phi) / ((1 - phi) * n))
    de = rng.normal(size=(n, 2)) * 1e-3 / BETA
    r = reweight_observable(de, x, T_K)
    assert r.block_length >= 32 and r.blocks >= 10
    assert abs(r.mean_model_error[0] / expected - 1) < 0.25, (r.mean_model_error[0], expected)
    assert block_length([rng.normal(size=4096)]) == 1


def test_low_ess_warns_with_what_to_do():
    a, de, _, _ = gaussian_case(n=4000, k=4)
    with pytest.warns(ReweightWarning) as caught:
        result = reweight(de * 3.0, {"A": a, "B": -a}, T_K)
    ess_notes = [str(w.message) for w in caught if "effective sample size" in str(w.message)]
    assert len(ess_notes) == 1  # one warning for the weights, not one per observable
    for part in ("direct reweighting is not to be trusted for", "The cumulant-expansion (CEA) values are no way out",
                 "smaller system", "higher temperature", "export_member"):
        assert part in ess_notes[0], ess_notes[0]
    assert "warnings:" in format_report(result) and result.ess.min() < 0.1 * 4000


def test_member_values_of_an_explicit_observable():
    """For the energy itself the members' values are E + dE_k: with dE_k independent of the
    configuration (a constant per member) the weights are flat and <E>_k = <E> + dE_k."""
    rng = np.random.default_rng(3)
    e = rng.normal(size=1000)
    shift = np.linspace(-0.01, 0.01, 5)
    de = np.tile(shift, (1000, 1))
    r = reweight_observable(de, e, T_K, member_deviations=de)
    np.testing.assert_allclose(r.members["direct"][:, 0], e.mean() + shift, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.members["cea"][:, 0], e.mean() + shift, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.ess, 1000.0)
    assert r.member_values == "member values"


def test_bad_inputs_are_refused():
    de = np.zeros((10, 3))
    with pytest.raises(ValueError, match="non-finite"):
        reweight_observable(np.full((10, 3), np.nan), np.zeros(10), T_K)
    with pytest.raises(ValueError, match="K >= 2 members"):
        reweight_observable(np.zeros((10, 1)), np.zeros(10), T_K)
    with pytest.raises(ValueError, match="frames"):
        reweight_observable(de, np.zeros(9), T_K)
    with pytest.raises(ValueError, match="units 'lj'"):
        reweight_observable(de, np.zeros(10), T_K, units="lj")
    with pytest.raises(ValueError, match="positive number of kelvin"):
        reweight_observable(de, np.zeros(10), 0.0)


LOG = """LAMMPS (22 Jul 2025 - Update 4)
units metal
{norm}
llpr: compute e (group {group}): 2 members; dE_k in c_e[4]..c_e[5]
thermo_style custom step pe vol c_e[4] c_e[5]
   Step         PotEng          Volume         c_e[4]         c_e[5]
{rows}
WARNING: something in the middle (src/thing.cpp:1)
Loop time of 0.1 on 1 procs for 9 steps with 4 atoms
"""


def _log(tmp_path, group="all", norm="", n=10):
    rng = np.random.default_rng(4)
    rows = "\n".join(f"{t} {rng.normal():.10f} {100 + rng.normal():.10f} {0.01 * rng.normal():.10f} "
                     f"{0.01 * rng.normal():.10f}" for t in range(n))
    path = tmp_path / "log.lammps"
    path.write_text(LOG.format(norm=norm, group=group, rows=rows))
    return str(path)


def test_log_reader_and_normalised_thermo(tmp_path):
    tables, info = read_log(_log(tmp_path))
    assert len(tables) == 1 and list(tables[0].steps) == list(range(10)) and info.units == "metal"
    assert info.computes["e"]["members"] == 2 and info.atoms == [4]
    plain = reweight_lammps(T_K, log=_log(tmp_path), warn=False)
    assert set(plain.observables) == {"PotEng", "Volume"}  # the default: every observable column
    both = reweight_lammps(T_K, log=_log(tmp_path), observables=["PotEng", "pe"], warn=False).observables
    # PotEng is the header LAMMPS writes for the keyword pe: the members' own energies either way
    assert both["PotEng"].member_values == both["pe"].member_values == "member values (PotEng + dE_k, from c_e[...])" \
        or both["pe"].member_values.startswith("member values (pe + dE_k")
    np.testing.assert_array_equal(both["PotEng"].members["direct"], both["pe"].members["direct"])
    assert both["pe"].member_values.startswith("member values")
    normed = reweight_lammps(T_K, log=_log(tmp_path, norm="thermo_modify norm yes"), warn=False)
    assert any("per atom; the weights use dE_k x 4 atoms" in w for w in normed.warnings)
    # per-atom deviations times 4 atoms: the same weights as total deviations
    tables[0].columns["c_e[4]"] *= 4
    tables[0].columns["c_e[5]"] *= 4
    direct = reweight_observable(np.stack([tables[0].columns["c_e[4]"], tables[0].columns["c_e[5]"]], 1),
                                 tables[0].columns["Volume"], T_K, blocks=normed.observables["Volume"].blocks)
    np.testing.assert_allclose(normed.observables["Volume"].members["direct"], direct.members["direct"], rtol=1e-12)


def test_log_refusals(tmp_path):
    with pytest.raises(ValueError, match="energy deviations of group top, but reweighting needs those of the whole"):
        reweight_lammps(T_K, log=_log(tmp_path, group="top"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reweight_lammps(T_K, log=str(tmp_path / "nothing.log"))
    (tmp_path / "bad.dat").write_text("1 2 3\n")
    with pytest.raises(ValueError, match="does not look like a fix ave/time file"):
        read_ave_time(str(tmp_path / "bad.dat"))


def test_ave_time_vector_file(tmp_path):
    text = ["# Time-averaged data for fix rdf", "# TimeStep Number-of-rows", "# Row c_rdf[1] c_rdf[2]"]
    for step in (0, 10, 20):
        text.append(f"{step} 3")
        text += [f"{r + 1} {0.5 * (r + 1)} {step + r}" for r in range(3)]
    (tmp_path / "rdf.dat").write_text("\n".join(text) + "\n")
    table = read_ave_time(str(tmp_path / "rdf.dat"))
    assert table.kind == "vector" and list(table.steps) == [0, 10, 20]
    np.testing.assert_array_equal(table.columns["c_rdf[2]"], [[0, 1, 2], [10, 11, 12], [20, 21, 22]])
    np.testing.assert_array_equal(table.columns["c_rdf[1]"][0], [0.5, 1.0, 1.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert table.column("c_rdf[2]").shape == (3, 3)
