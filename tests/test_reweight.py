"""The reweighting estimators against closed forms (jointly Gaussian observable and energy
deviations; an exponential distribution where the cumulant expansion is wrong), the block
analysis against the known error of a correlated series, the effective-sample-size warning,
and the reader of fix llpr/record files on hand-written records (runs that differ are
not mixed; anything that is not a record is refused)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from llpr.lammps.reweight import (
    BOLTZMANN,
    ReweightWarning,
    block_length,
    format_report,
    read_record,
    reweight,
    reweight_observable,
    reweight_record,
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


def _header(members=2, units="metal", every=1, model="m.pt", seal="llpr-integrity crc64-xz=00000000000000aa bytes=9",
            values=(("v_rho", 1, False),), **extra):
    builtins = ["step", "atoms", "temp", "pe", "press", "vol", "pxx", "pyy", "pzz", "pxy", "pxz", "pyz"]
    columns = [{"name": n, "size": 1} for n in builtins] + [{"name": "dE", "size": members}]
    columns += [{"name": n, "size": size, "vector": vec} for n, size, vec in values]
    header = {"format": "llpr-record", "version": 1, "model": model, "seal": seal, "members": members,
              "compute": "e", "group": "all", "virial": False, "units": units, "timestep": 0.001, "every": every,
              "sampling": "instantaneous", "energies": "total", "columns": columns}
    header.update(extra)
    return "# " + json.dumps(header)


def _rows(n, members=2, first=0, every=1, seed=4, width=1):
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        vals = [first + every * t, 64, 900 + rng.normal(), rng.normal(), rng.normal(), 1280.0] + list(rng.normal(size=6))
        vals += list(0.01 * rng.normal(size=members)) + list(2.3 + 0.01 * rng.normal(size=width))
        out.append(" ".join(str(int(v)) if k < 2 else repr(float(v)) for k, v in enumerate(vals)))
    return out


def _write(path, *parts):
    path.write_text("\n".join(line for part in parts for line in ([part] if isinstance(part, str) else part)) + "\n")
    return str(path)


def test_record_is_read_as_written(tmp_path):
    """The record's values are what reweighting uses: a hand-written record reweights exactly as
    its arrays do; the default observables are pe, press and the fix's values."""
    rows = _rows(12)
    path = _write(tmp_path / "md.rec", _header(), rows)
    (seg,) = read_record(path)
    data = np.array([[float(x) for x in r.split()] for r in rows])
    np.testing.assert_array_equal(seg.column("dE"), data[:, 12:14])
    res = reweight_record(T_K, path, warn=False)
    assert list(res.observables) == ["pe", "press", "v_rho"]
    assert res.observables["pe"].member_values == "member values (pe + dE_k)"
    assert res.observables["press"].member_values.startswith("mean model (press depends on the model")
    direct = reweight_observable(data[:, 12:14], data[:, 3], T_K, member_deviations=data[:, 12:14])
    np.testing.assert_array_equal(res.observables["pe"].members["direct"], direct.members["direct"])
    # units real: the record's units give beta (never assumed)
    real = reweight_record(T_K, _write(tmp_path / "real.rec", _header(units="real"), rows), warn=False)
    beta_ratio = BOLTZMANN["metal"] / BOLTZMANN["real"]
    assert real.units == "real"
    direct_real = reweight_observable(data[:, 12:14], data[:, 14], T_K, units="real")
    np.testing.assert_array_equal(real.observables["v_rho"].members["cea"], direct_real.members["cea"])
    assert beta_ratio != 1.0


@pytest.mark.parametrize("case, match", [
    ("members", r"run 1\) has K \(ensemble members\) 2, .*run 2\) has 3"),
    ("units", r"has units 'metal', .*has 'real'"),
    ("model", r"was run with m.pt .*, .*run 2\) with other.pt"),
    ("every", r"recording period N 1, .* has 5"),
    ("values", r"the layouts differ"),
])
def test_runs_that_differ_are_not_mixed(tmp_path, case, match):
    """Two runs of one record (or two records) that differ in K, units, model, period or
    layout are refused together, naming both sides; each alone is reweighted."""
    second = {"members": dict(members=3), "units": dict(units="real"),
              "model": dict(model="other.pt", seal="llpr-integrity crc64-xz=00000000000000bb bytes=9"),
              "every": dict(every=5), "values": dict(values=(("v_x", 1, False),))}[case]
    members = second.get("members", 2)
    path = _write(tmp_path / "md.rec", _header(), _rows(10), _header(**second),
                  _rows(10, members=members, first=20, every=second.get("every", 1)))
    with pytest.raises(ValueError, match=match):
        reweight_record(T_K, path, warn=False)
    assert reweight_record(T_K, path, run=2, warn=False).members == members
    assert reweight_record(T_K, path, run=1, warn=False).members == 2
    # the same as two files
    a = _write(tmp_path / "a.rec", _header(), _rows(10))
    b = _write(tmp_path / "b.rec", _header(**second), _rows(10, members=members, first=20))
    with pytest.raises(ValueError, match="reweight one"):
        reweight_record(T_K, [a, b], warn=False)


def test_record_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_record(tmp_path / "nothing.rec")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_record(tmp_path)
    log = _write(tmp_path / "log.lammps", "LAMMPS (22 Jul 2025 - Update 4)", "units metal", "Step PotEng c_e[4]")
    with pytest.raises(ValueError, match="a line before any llpr-record header.*fix llpr/record"):
        read_record(log)
    ave = _write(tmp_path / "ens.dat", "# Time-averaged data for fix ens", "# TimeStep c_e[4] c_e[5]", "0 1 2")
    with pytest.raises(ValueError, match="not a header of llpr-record"):
        read_record(ave)
    newer = _write(tmp_path / "new.rec", _header(version=2), _rows(5))
    with pytest.raises(ValueError, match="version 2 was written by a newer llpr"):
        read_record(newer)
    averaged = _write(tmp_path / "avg.rec", _header(sampling="average of 5"), _rows(5))
    with pytest.raises(ValueError, match="reweighting needs instantaneous total values"):
        read_record(averaged)
    rows = _rows(6)
    cut = _write(tmp_path / "cut.rec", _header(), rows[:-1], rows[-1][:20])
    with pytest.raises(ValueError, match="line 7: .* values where the header of run 1 lays out 15"):
        read_record(cut)
    bad = rows[:3] + [rows[3].replace(rows[3].split()[12], "nan", 1)] + rows[4:]
    with pytest.raises(ValueError, match="line 5: step 3: dE is nan"):
        read_record(_write(tmp_path / "nan.rec", _header(), bad))
    path = _write(tmp_path / "md.rec", _header(), _rows(10))
    with pytest.raises(ValueError, match="run 2 does not exist: the record holds 1 run"):
        reweight_record(T_K, path, run=2)
    with pytest.raises(ValueError, match="records no 'c_rdf\\[2\\]'"):
        reweight_record(T_K, path, observables=["c_rdf[2]"])
    with pytest.raises(ValueError, match="dE is not an observable"):
        reweight_record(T_K, path, observables=["dE"])
    with pytest.raises(ValueError, match="no frame of the record is at or after step 100"):
        reweight_record(T_K, path, start=100)


def test_vector_values_and_their_axis(tmp_path):
    values = (("c_rdf[1]", 3, True), ("c_rdf[2]", 3, True))
    rows = []
    for t, r in enumerate(_rows(8)):
        rows.append(" ".join(r.split()[:14]) + " 0.5 1.0 1.5 " + " ".join(str(t + k) for k in range(3)))
    path = _write(tmp_path / "rdf.rec", _header(values=values), rows)
    res = reweight_record(T_K, path, warn=False)
    assert list(res.observables) == ["pe", "press", "c_rdf[2]"]  # c_rdf[1] is the axis of c_rdf[2]
    rdf = res.observables["c_rdf[2]"]
    assert rdf.axis_name == "c_rdf[1]"
    np.testing.assert_array_equal(rdf.axis, [0.5, 1.0, 1.5])
    np.testing.assert_allclose(rdf.mean_model, [3.5, 4.5, 5.5])
    with pytest.raises(ValueError, match="an axis is only for vector values"):
        reweight_record(T_K, path, observables=["pe@c_rdf[1]"])
