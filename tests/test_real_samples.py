"""Measured-like spectra (issue 17): axis convention, broadening, file readers, ``match``."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from sim_iocs.physics import Spectrum, measured_like
from xas_bluesky.apps.cli import main
from xas_bluesky.science.compare import Comparator
from xas_bluesky.science.compare.axis import (
    AXIS_CONVENTIONS,
    AXIS_REFERENCES,
    convention,
    derive_convention,
    first_peak_energy,
    offset_prior,
    to_feff_axis,
)
from xas_bluesky.science.compare.broadening import (
    BroadenedComparator,
    gaussian_broaden,
)
from xas_bluesky.science.spectra import SpectrumError
from xas_bluesky.science.xasfiles import XASData, read_measured, write_athena, write_xdi

GRID = np.arange(526.0, 575.001, 0.25)


# ------------------------------------------------------------------ axis convention
def test_axis_conventions_are_the_documented_derivation():
    """The constants: mean FEFF-minus-literature of the reference resonances, rounded."""
    for edge, conv in AXIS_CONVENTIONS.items():
        assert derive_convention(edge) == conv
        refs = [r for r in AXIS_REFERENCES if r.edge == edge]
        assert len(refs) >= 2
        # a molecular NEXAFS axis sits within a few eV of FEFF's, never ~10 eV (atomic K edges)
        assert abs(conv.offset_ev) < 3.0 and conv.sigma_ev >= 0.5


def test_axis_references_feff_peaks_reproduce():
    """Each reference's FEFF peak is first_peak_energy of its committed FEFF site spectrum."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "axis_references" / "feff_sites.jsonl.gz"
    with gzip.open(path, "rt") as fh:
        recs = {(r["qm9_index"], r["element"], r["site"]): r for r in map(json.loads, fh)}
    for ref in AXIS_REFERENCES:
        rec = recs[(ref.qm9_index, ref.edge, ref.site)]
        assert rec["ok"] and rec["symbols"][ref.site] == ref.edge
        assert first_peak_energy(rec["omega"], rec["mu"]) == pytest.approx(
            ref.feff_peak_ev, abs=1e-3
        )


def test_first_peak_energy():
    e = np.arange(10.0)
    mu = np.array([0.0, 0.05, 0.1, 0.0, 1.0, 2.0, 2.0, 1.5, 3.0, 2.0])
    assert first_peak_energy(e, mu) == 6.0  # the 0.1 wiggle is below 20 % of max; flat top: last
    assert first_peak_energy(e[::-1], mu[::-1]) == 6.0  # any order
    assert first_peak_energy(e, mu, floor=0.0) == 2.0
    with pytest.raises(ValueError):
        first_peak_energy(e, e)  # rising: no maximum


def test_to_feff_axis_and_prior():
    e = np.array([540.0, 545.0])
    np.testing.assert_array_equal(to_feff_axis(e, "O", "feff"), e)
    np.testing.assert_allclose(to_feff_axis(e, "O", "experiment"), e - 0.55)
    c = convention("N", offset_ev=-9.0, sigma_ev=2.0)
    np.testing.assert_allclose(to_feff_axis(e, "N", "experiment", c), e - 9.0)
    assert offset_prior("O", "feff") == {"offset_sigma": 1.0, "offset_max": 3.0}
    wide = offset_prior("O", "experiment")
    assert wide["offset_sigma"] == pytest.approx(np.hypot(1.0, 1.0))
    assert wide["offset_max"] == pytest.approx(5.0)
    with pytest.raises(ValueError):
        to_feff_axis(e, "O", "kinetic")
    with pytest.raises(ValueError):
        convention("C")


# ------------------------------------------------------------------ broadening
def test_gaussian_broaden_width_and_plateaus():
    e = np.arange(500.0, 560.0, 0.05)
    spike = np.where(np.abs(e - 530.0) < 0.01, 1.0, 0.0)
    b = gaussian_broaden(e, spike, 1.0)
    sigma = np.sqrt((b * (e - 530.0) ** 2).sum() / b.sum())
    assert sigma * 2.0 * np.sqrt(2.0 * np.log(2.0)) == pytest.approx(1.0, rel=0.02)
    assert b.sum() == pytest.approx(spike.sum(), rel=1e-6)
    step = (e > 530).astype(float)
    s = gaussian_broaden(e[::5], step[::5], 0.8)  # a coarse grid (0.25 eV) is resampled
    assert s[0] == pytest.approx(0.0, abs=1e-9) and s[-1] == pytest.approx(1.0)
    np.testing.assert_array_equal(gaussian_broaden(e, step, 0.0), step)
    rows = gaussian_broaden(e, np.stack([spike, step]), 0.5)
    assert rows.shape == (2, e.size)


def test_measured_like_shifts_and_broadens():
    mu = np.exp(-0.5 * ((GRID - 531.0) / 0.2) ** 2) + (GRID > 535)
    s = measured_like(Spectrum(GRID, mu), 1.0, 2.0)
    peak = s.energy[np.argmax(np.where(s.energy < 534, s.mu, 0))]
    assert peak == pytest.approx(533.0, abs=0.1)
    assert s.mu[s.energy < 534].max() < 0.9 * mu[GRID < 532].max()
    assert measured_like(s) is s


def _synthetic(n=12, seed=1):
    """Sharp synthetic spectra: an edge and three resonances each."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y = 1.0 / (1 + np.exp(-(GRID - 538.0) / 0.7))
        for c, h in zip(rng.uniform(529, 550, 3), rng.uniform(0.5, 2.0, 3), strict=True):
            y = y + h * np.exp(-0.5 * ((GRID - c) / 0.25) ** 2)
        out.append(y)
    return np.array(out)


def test_broadened_comparator_marginalises_widths():
    spectra = _synthetic()
    names = [f"m{i}" for i in range(len(spectra))]
    truth = 4
    rng = np.random.default_rng(0)
    measured = gaussian_broaden(GRID, spectra[truth], 1.0)
    e = GRID[::2] + 0.1
    y = 3.0 * np.interp(e, GRID, measured) + 0.2 + rng.normal(0, 0.01, e.size)
    std = np.full(spectra.shape, 0.02)
    bc = BroadenedComparator(GRID, spectra, std, names, widths_ev=(0.0, 0.5, 1.0),
                             temperature=1.0, temperature_exponent=0.0)  # fmt: skip
    bc.add_points(e, y, 0.01)
    res = bc.result()
    assert res.probabilities.shape == (len(names),)
    assert res.probabilities.sum() == pytest.approx(1.0)
    assert res.best_name == names[truth]
    assert bc.best_width_ev == 1.0 and bc.width_posterior.sum() == pytest.approx(1.0)
    assert bc.joint is not None and bc.joint.shape == (3, len(names))
    # what the live analysis and the joint read from a result, per molecule
    assert np.isfinite(res.next_gain) and res.next_energy is not None
    assert res.model_log_probabilities is not None
    assert np.exp(res.model_log_probabilities).sum() == pytest.approx(1.0)
    assert int(np.argmax(res.model_log_probabilities)) == truth
    # a plain comparator is the single-width case
    plain = Comparator(GRID, spectra, std, names, temperature=1.0, temperature_exponent=0.0)
    plain.add_points(e, y, 0.01)
    one = BroadenedComparator(GRID, spectra, std, names, widths_ev=(0.0,),
                              temperature=1.0, temperature_exponent=0.0)  # fmt: skip
    one.add_points(e, y, 0.01)
    np.testing.assert_allclose(one.result().probabilities, plain.result().probabilities)
    # the run's final word does not depend on how the points were batched
    once = BroadenedComparator(GRID, spectra, std, names, widths_ev=(0.0, 0.5, 1.0),
                               temperature=1.0, temperature_exponent=0.0)  # fmt: skip
    once.add_points(e, y, 0.01)
    bc.reset()
    for k in range(0, e.size, 5):
        bc.add_points(e[k : k + 5], y[k : k + 5], 0.01)
        bc.result()
    settled, reference = bc.settled_result(), once.settled_result()
    np.testing.assert_array_equal(settled.probabilities, reference.probabilities)
    np.testing.assert_array_equal(bc.width_posterior, once.width_posterior)
    assert settled.best_name == names[truth]
    bc.reset()
    assert bc.n_points == 0


# ------------------------------------------------------------------ file readers
def _xasdata(e, mu, label="s1"):
    return XASData(e, np.full(e.size, 1e6), mu * 1e6, mu, "TEY", "O", label=label)


def test_read_measured_formats(tmp_path):
    e = np.linspace(526, 575, 60)
    mu = 1 / (1 + np.exp(-(e - 531)))
    write_xdi(tmp_path / "a.xdi", _xasdata(e, mu))
    write_athena(tmp_path / "a.prj", [_xasdata(e, mu, "first"), _xasdata(e, 2 * mu, "second")])
    csv = tmp_path / "a.csv"
    csv.write_text("energy_eV,mu\n" + "".join(f"{a},{b}\n" for a, b in zip(e, mu, strict=True)))
    for name, column in (("a.xdi", "mutey"), ("a.prj", "y"), ("a.csv", "mu")):
        r = read_measured(tmp_path / name)
        assert r.column == column
        np.testing.assert_allclose(r.mu, mu, rtol=1e-6)
        np.testing.assert_allclose(r.energy, e, atol=1e-4)
    assert read_measured(tmp_path / "a.prj").label == "first"
    # an uncompressed project and repeated, unsorted energies (two passes)
    (tmp_path / "b.prj").write_text(gzip.decompress((tmp_path / "a.prj").read_bytes()).decode())
    assert read_measured(tmp_path / "b.prj").energy.size == e.size
    two = "# XDI/1.0 x\n# Column.1: energy eV\n# Column.2: i0\n# Column.3: itey\n# ---\n"
    rows = [(x, 2.0, 2 * y) for x, y in zip(e, mu, strict=True)]
    text = two + "".join(f"{a} {b} {c}\n" for a, b, c in rows[::-1] + rows)
    (tmp_path / "c.xdi").write_text(text)
    r = read_measured(tmp_path / "c.xdi")
    assert r.column == "itey/i0" and r.energy.size == e.size
    np.testing.assert_allclose(r.mu, mu, rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.xdi", "# XDI/1.0\n# Column.1: energy\n1 2\n3\n", "same number"),
        ("y.xdi", "hello\n", "not XDI"),
        ("z.prj", "# Athena project file\n@journal = ();\n", "no group"),
        ("w.csv", "energy,mu\n1,2\n", "header must be"),
        ("v.csv", "energy_eV,mu\n530,1\n531,nan-ish\n", "not two numbers"),
        ("u.xdi", "# XDI/1.0\n# Column.1: energy\n# Column.2: i0\n1 2\n2 3\n", "no mu column"),
    ],
)
def test_read_measured_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SpectrumError, match=message):
        read_measured(path)
    with pytest.raises(SpectrumError, match="no such file"):
        read_measured(tmp_path / "missing.csv")


# ------------------------------------------------------------------ the match command
@pytest.fixture(scope="module")
def measured_sample(tmp_path_factory):
    """A held-out FEFF spectrum broadened 0.5 eV, on the experiment axis with a +1 eV error,
    as CSV and XDI; candidates (the sample and 29 others) as XYZ; a small model library."""
    from xas_bluesky.resources import candidates_file, heldout_samples, library_file
    from xas_bluesky.science.groups import load_library_structures, predicted_library
    from xas_bluesky.science.model.predictor import Predictor

    edge = "O"
    d = tmp_path_factory.mktemp("match")
    grid, samples = heldout_samples(edge)
    s = samples[5]
    shift = -convention(edge).offset_ev + 1.0
    sp = measured_like(Spectrum(np.asarray(grid), np.asarray(s["mu"])), 0.5, shift)
    rng = np.random.default_rng(0)
    keep = slice(None, None, 4)
    e, mu = sp.energy[keep], 0.7 * sp.mu[keep] + 0.05 + rng.normal(0, 0.004, sp.energy[keep].size)
    (d / "m.csv").write_text(
        "energy_eV,mu\n" + "".join(f"{a:.4f},{b:.6f}\n" for a, b in zip(e, mu, strict=True))
    )
    write_xdi(d / "m.xdi", _xasdata(e, mu, "m"))
    lines = candidates_file(edge).read_text().splitlines()
    out, k = [], 0
    while len(out) < 29:
        n = int(lines[k])
        if lines[k + 1].strip() != s["name"]:
            out.append("\n".join(lines[k : k + 2 + n]))
        k += 2 + n
    atoms = [
        f"{a} {x:.6f} {y:.6f} {z:.6f}" for a, (x, y, z) in zip(s["symbols"], s["xyz"], strict=True)
    ]
    out.append("\n".join([str(len(s["symbols"])), s["name"], *atoms]))
    (d / "c.xyz").write_text("\n".join(out) + "\n")
    predictor = Predictor.load(edge)
    lib = predicted_library(
        edge, load_library_structures(library_file(edge), edge)[:300], predictor
    )
    cache = d / "libs"
    cache.mkdir()
    lib.save(cache / f"library_{edge}_{predictor.model_version}.npz")
    return d, s["name"]


@pytest.mark.system
@pytest.mark.parametrize("fmt", ["csv", "xdi"])
def test_match_experiment_axis(measured_sample, fmt, capsys):
    d, truth = measured_sample
    args = ["match", "--spectrum", str(d / f"m.{fmt}"), "--candidates", str(d / "c.xyz"),
            "--edge", "O", "--axis", "experiment", "--library-cache", str(d / "libs")]  # fmt: skip
    if fmt == "xdi":
        assert main([*args, "--json", str(d / "out.json")]) == 0
        out = json.loads((d / "out.json").read_text())
    else:
        assert main(args) == 0
        out = json.loads(capsys.readouterr().out)  # JSON only on stdout
    ranking = out["ranking"]
    assert len(ranking) == 30 and set(ranking[0]) == {"name", "smiles", "probability"}
    assert sum(r["probability"] for r in ranking) == pytest.approx(1.0)
    assert [r["probability"] for r in ranking] == sorted(
        (r["probability"] for r in ranking), reverse=True
    )
    assert truth in [r["name"] for r in ranking[:3]]
    assert out["offset_ev"] == pytest.approx(-1.0, abs=0.5)  # the +1 eV error of the axis
    assert out["axis_offset_ev"] == AXIS_CONVENTIONS["O"].offset_ev
    groups = out["groups"]
    assert groups and set(groups[0]) == {"name", "probability"}
    assert groups[0]["probability"] >= groups[-1]["probability"]
    assert 0.0 <= out["in_library"] <= 1.0
    assert out["normalised_input"] is False and out["processing"] == {"raw": 1.0}


@pytest.mark.system
def test_match_pre_normalised_spectrum(measured_sample, tmp_path, capsys):
    """A spectrum normalised already (Athena's / Larch's ``norm``) or also flattened (``flat``,
    Athena's quadratic post-edge) names the sample like the raw one: ``flat`` bends the
    post-edge resonances, so the candidates are flattened alike (``--processing``)."""
    from xas_bluesky.science.spectra import normalize

    d, truth = measured_sample
    e, mu = np.loadtxt(d / "m.csv", delimiter=",", skiprows=1, unpack=True)
    # a sloped background under the raw points first, as a TEY spectrum carries
    n = normalize(e, mu + 0.002 * (e - e[0]), e0=float(e[np.argmax(np.gradient(mu, e))]), nnorm=2)
    assert not np.allclose(n.flat, n.norm)  # the flattening did something
    base = ["match", "--candidates", str(d / "c.xyz"), "--edge", "O", "--axis", "experiment",
            "--library-cache", str(d / "libs"), "--no-groups"]  # fmt: skip

    def match(y, name, *extra):
        f = tmp_path / f"{name}.csv"
        rows = "".join(f"{a:.4f},{b:.6f}\n" for a, b in zip(n.energy, y, strict=True))
        f.write_text("energy_eV,mu\n" + rows)
        assert main([*base, "--spectrum", str(f), *extra]) == 0
        out = json.loads(capsys.readouterr().out)
        return out, [r["name"] for r in out["ranking"]]

    # read as measured, the flattened spectrum names a wrong molecule: the case this guards
    out, names = match(n.flat, "flat", "--processing", "raw")
    assert names[0] != truth and out["processing"] == {"raw": 1.0}
    # a line post-edge: norm looks normalised (pre-edge 0, post-edge ~1), so both readings
    line = normalize(n.energy, n.mu, e0=n.e0, nnorm=1)
    for y, name in ((n.flat, "flat"), (line.norm, "norm1"), (n.norm, "norm2")):
        out, names = match(y, name)  # --processing auto
        assert names[0] == truth, (name, out["processing"])
        assert out["offset_ev"] == pytest.approx(-1.0, abs=0.5)
        if name == "norm2":  # its post-edge curves down to ~0.6: read as measured only
            assert out["normalised_input"] is False and out["processing"] == {"raw": 1.0}
        else:
            assert out["normalised_input"] is True and set(out["processing"]) == {"raw", "flat"}
        if name == "flat":
            assert out["processing"]["flat"] > 0.5
    out, names = match(n.flat, "flat", "--processing", "flat")
    assert names[0] == truth and out["processing"] == {"flat": 1.0}


@pytest.mark.system
def test_match_errors(measured_sample, tmp_path, capsys):
    d, _ = measured_sample
    bad = tmp_path / "bad.xdi"
    bad.write_text("not xdi\n")
    far = tmp_path / "far.csv"  # a Fe L edge, say: nowhere near the O K grid
    far.write_text("energy_eV,mu\n" + "".join(f"{700 + i},{i % 3}\n" for i in range(40)))
    base = ["match", "--candidates", str(d / "c.xyz"), "--edge", "O", "--no-groups"]
    for spectrum, words in (
        (str(tmp_path / "missing.csv"), "no such file"),
        (str(bad), "not XDI"),
        (str(far), "points within the model's O grid"),
    ):
        assert main([*base, "--spectrum", spectrum]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err
    empty = tmp_path / "none.smi"
    empty.write_text("not_a_smiles\n")
    assert main(["match", "--spectrum", str(d / "m.csv"), "--candidates", str(empty),
                 "--edge", "O", "--axis", "experiment", "--no-groups"]) == 1  # fmt: skip
    assert "no valid candidate" in capsys.readouterr().err
