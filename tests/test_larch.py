"""The numpy normaliser against xraylarch's ``pre_edge`` (the optional extra ``larch``).

:func:`xas_bluesky.science.spectra.normalize` claims Larch's ``pre_edge`` semantics: given the
same arguments (``Normalization.larch_kwargs``) its ``norm``, ``flat`` and edge step are Larch's
to <= 1e-3 of the edge step, on the shipped held-out FEFF spectra and on simulated TEY scans
(the simulated beamline's detector model: Poisson counts, a carbon-like matrix background, the
optics' O K dip in I0).  Skipped when xraylarch is not installed.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from xas_bluesky.beamline.plans.regions import default_regions, grid_region, region_points
from xas_bluesky.resources import heldout_samples
from xas_bluesky.science.spectra import find_e0, mu_from_channels, normalize

pytestmark = pytest.mark.larch

larch = pytest.importorskip(
    "larch", reason="xraylarch is not installed (pip install -e '.[larch]')"
)
from larch import Group  # noqa: E402
from larch.xafs import find_e0 as larch_find_e0  # noqa: E402
from larch.xafs import pre_edge  # noqa: E402

#: the claim: every point of norm and flat, and the edge step, within this of the edge step
TOLERANCE = 1e-3

#: normalisations compared: the package's defaults, and Larch's own choices on the same windows
VARIANTS = {
    "defaults": {},
    "line pre-edge": {"line_span": 0.0},
    "nnorm=1": {"nnorm": 1},
    "nnorm=2, nvict=2": {"nnorm": 2, "nvict": 2, "line_span": 0.0},
    "Larch's window rules": {"pre1": None, "pre2": None, "norm1": None, "norm2": None,
                             "nnorm": None, "line_span": 0.0},
}  # fmt: skip


def _larch(energy, mu, kwargs) -> Group:
    group = Group(energy=np.array(energy, dtype=float), mu=np.array(mu, dtype=float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pre_edge(group, **kwargs)
    return group


def _difference(energy, mu, edge, **kwargs) -> float | None:
    """max |ours - Larch's| of norm, flat and the edge step, over the edge step (None where
    ours refuses the spectrum: an edge step that is not positive)."""
    try:
        ours = normalize(energy, mu, edge, **kwargs)
    except ValueError:
        return None
    theirs = _larch(ours.energy, ours.mu, ours.larch_kwargs())
    assert theirs.e0 == ours.e0
    return max(
        float(np.max(np.abs(ours.norm - theirs.norm))),
        float(np.max(np.abs(ours.flat - theirs.flat))),
        abs(ours.edge_step - theirs.edge_step) / theirs.edge_step,
    )


@pytest.mark.parametrize("edge", ["O", "N"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_feff_heldout_spectra_match_larch(edge, variant):
    energy, samples = heldout_samples(edge)
    diffs = [_difference(energy, np.asarray(s["mu"]), edge, **VARIANTS[variant]) for s in samples]
    done = [d for d in diffs if d is not None]
    # a line fitted to 3 eV of pre-edge and extrapolated can pass the post-edge: refused (Larch
    # takes |step| and normalises upside down); the defaults refuse none
    assert len(done) >= (len(samples) if variant == "defaults" else 0.75 * len(samples))
    assert max(done) <= TOLERANCE, f"{edge} {variant}: max |diff| / step = {max(done):.2e}"


@pytest.mark.parametrize("edge", ["O", "N"])
def test_e0_rule_matches_larch(edge):
    """find_e0 is Larch's find_e0, and with it and Larch's rules normalize is pre_edge's
    default (where that gives a positive step)."""
    energy, samples = heldout_samples(edge)
    for s in samples[::5]:
        mu = np.asarray(s["mu"])
        e0 = find_e0(energy, mu)
        assert e0 == larch_find_e0(energy, mu)
        rules = {k: v for k, v in VARIANTS["Larch's window rules"].items()}
        try:
            ours = normalize(energy, mu, e0=e0, **rules)
        except ValueError:
            continue
        theirs = _larch(energy, mu, {})
        assert theirs.e0 == e0
        np.testing.assert_allclose(ours.norm, theirs.norm, atol=TOLERANCE)


def _sim_tey(edge, name, energy, rng):
    """TEY and I0 counts of held-out sample ``name`` on the simulated beamline's detectors."""
    from sim_iocs.physics import Beam, Sample, heldout_spectra

    sample = Sample(name, heldout_spectra(name, edge), jump=1.0, background=0.5)
    beam = Beam()
    counts = [beam.measure(sample, float(e), 400.0, 1.0, rng) for e in energy]
    i0 = np.array([c["i0"] for c in counts])
    tey = np.array([c["tey"] for c in counts])
    return mu_from_channels("tey", i0, tey, counts=True).mu


@pytest.mark.parametrize("edge", ["O", "N"])
@pytest.mark.parametrize("scan", ["default regions", "grid 0.1 eV", "12 eV more pre-edge"])
def test_simulated_tey_scans_match_larch(edge, scan):
    rng = np.random.default_rng(7)
    _, samples = heldout_samples(edge)
    if scan == "default regions":
        energy = region_points(default_regions(edge))[0]
    elif scan == "grid 0.1 eV":
        energy = region_points(grid_region(edge, 0.1))[0]
    else:  # long enough a pre-edge for a line
        energy = np.concatenate(
            [region_points(default_regions(edge))[0][0] - np.arange(12.0, 0.0, -0.5),
             region_points(default_regions(edge))[0]]
        )  # fmt: skip
    worst = 0.0
    for s in samples[:: max(1, len(samples) // 8)]:
        mu = _sim_tey(edge, s["name"], energy, rng)
        for variant in ("defaults", "nnorm=1", "Larch's window rules"):
            d = _difference(energy, mu, edge, **VARIANTS[variant])
            if d is not None:
                worst = max(worst, d)
        if scan == "12 eV more pre-edge":
            assert normalize(energy, mu, edge).npre == 1  # a line, 16 eV of pre-edge
    assert worst <= TOLERANCE, f"{edge} {scan}: max |diff| / step = {worst:.2e}"
