"""The processing chain: mu(E) from channels, bad readings, normalisation of simulated TEY of
shipped FEFF spectra, the energy offset, peaks, spectrum files."""

from __future__ import annotations

import numpy as np
import pytest

from xas_bluesky.resources import heldout_samples, reference_spectrum
from xas_bluesky.science.grids import ONSET_EV
from xas_bluesky.science.spectra import (
    BadReading,
    NormalizationError,
    SpectrumError,
    best_shift_pearson,
    check_spectrum,
    find_e0,
    find_peak_energies,
    fit_energy_offset,
    load_spectrum_csv,
    mu_from_channels,
    noise_from_scatter,
    normalize,
)


def simulate_tey(energy, mu, rng, *, flux=2e6, dark=50.0):
    """TEY and gold-mesh I0 counts of a sample with spectrum ``mu`` on a sloping background.

    I0 carries its own O K structure (carbon contamination on the mesh): it cancels in TEY/I0.
    """
    x = energy - energy[0]
    i0_shape = 1.0 + 0.1 * np.exp(-0.5 * ((energy - 532.0) / 1.0) ** 2) - 0.002 * x
    i0 = rng.poisson(flux * i0_shape) + dark
    yield_ = 0.05 * (1.0 + 0.004 * x) + 0.02 * mu  # background with slope + edge
    tey = rng.poisson(flux * i0_shape * yield_) + dark
    return i0.astype(float), tey.astype(float)


def test_modes_and_dark_subtraction():
    r = mu_from_channels("transmission", 1000.0 + 10, 100.0 + 5, dark_i0=10, dark_signal=5)
    assert r.ok.all() and r.mu[0] == pytest.approx(np.log(10.0))
    r = mu_from_channels("fluorescence", [200.0, 400.0], [20.0, 20.0])
    np.testing.assert_allclose(r.mu, [0.1, 0.05])
    assert r.sigma is None
    r = mu_from_channels("tey", [1e6], [1e4], counts=True)
    # var(S/I0) = S/I0^2 + S^2/I0^3
    assert r.sigma[0] == pytest.approx(np.sqrt(1e4 / 1e12 + 1e8 / 1e18))
    with pytest.raises(ValueError, match="unknown detection mode"):
        mu_from_channels("xeol", 1.0, 1.0)


@pytest.mark.parametrize(
    ("i0", "sig", "channel", "mode"),
    [
        (np.nan, 1.0, "I0", "tey"),
        (np.inf, 1.0, "I0", "tey"),
        (1.0, np.nan, "TEY", "tey"),
        (0.0, 1.0, "I0", "tey"),
        (-3.0, 1.0, "I0", "fluorescence"),
        (5.0, 0.0, "It", "transmission"),
        (5.0, -1.0, "It", "transmission"),
    ],
)
def test_bad_readings_raise_with_channel_and_value(i0, sig, channel, mode):
    with pytest.raises(BadReading) as exc:
        mu_from_channels(mode, i0, sig)
    assert exc.value.channel == channel
    assert channel in str(exc.value)


def test_dark_subtraction_can_make_i0_bad():
    with pytest.raises(BadReading, match="after dark subtraction") as exc:
        mu_from_channels("tey", 10.0, 5.0, dark_i0=10.0, i0_name="sclr_ch2")
    assert exc.value.channel == "sclr_ch2" and exc.value.value == 0.0


def test_non_strict_flags_points_and_never_returns_a_number():
    r = mu_from_channels("tey", [1.0, 0.0, 2.0, np.nan], [0.5, 0.5, 1.0, 1.0], strict=False)
    np.testing.assert_array_equal(r.ok, [True, False, True, False])
    assert np.isnan(r.mu[[1, 3]]).all()
    np.testing.assert_allclose(r.mu[[0, 2]], [0.5, 0.5])
    assert len(r.problems) == 2 and "point 1" in r.problems[0]


def test_negative_counts_and_an_overflowing_ratio_are_bad_points():
    """Counts cannot be negative (a yield signal of -12 counts is a bad reading), and a tiny
    positive I0 that makes mu (or its noise) overflow is one bad point, never an inf."""
    r = mu_from_channels(
        "TEY", [1e6, 1e6, 1e-320, 1e6], [3e4, -12.0, 3e4, 3e4], counts=True, strict=False
    )
    assert r.ok.tolist() == [True, False, False, True]
    assert np.isnan(r.mu[[1, 2]]).all() and np.isnan(r.sigma[[1, 2]]).all()
    assert "counts cannot be negative" in r.problems[0]
    assert "overflows" in r.problems[1] and "point 2" in r.problems[1]
    assert mu_from_channels("TEY", [1e6], [-12.0], strict=False).ok.all()  # currents may
    with pytest.raises(BadReading, match="overflows"):
        mu_from_channels("PFY", 5e-324, 1e3)


def test_chain_drops_bad_points():
    mu = mu_from_channels(
        "TEY", [1e6, 0, np.nan, 1e6, -5], [1e4, 1e4, 1e4, np.nan, 1e4], strict=False
    ).mu
    assert np.isfinite(mu).tolist() == [True, False, False, False, False]
    with pytest.raises(NormalizationError):
        normalize([526, 527, 560], [np.nan, np.nan, 1.0], "O")
    assert np.isnan(mu_from_channels("TRANS", [1e6], [0], strict=False).mu).all()


@pytest.mark.parametrize("edge", ["O", "N"])
def test_normalisation_of_feff_spectra_on_the_model_grid(edge):
    """A scan of the model grid (the demo's): ~3 eV of pre-edge, a level; the normalised clean
    FEFF spectrum is FEFF's own (~0 before, ~1 far above the edge) to a few % of the step."""
    energy, samples = heldout_samples(edge)
    errs = []
    for s in samples[:10]:
        mu = np.asarray(s["mu"])
        n = normalize(energy, mu, edge)
        assert n.e0 == ONSET_EV[edge] and n.pre_slope == 0.0
        assert 0.7 < n.edge_step < 1.5  # sigma* resonances sit in the post-edge window
        errs.append(np.sqrt(np.mean((n.norm - mu / n.edge_step) ** 2)))
    assert np.median(errs) < 0.03, errs
    assert np.max(errs) < 0.07, errs


@pytest.mark.parametrize("edge", ["O", "N"])
def test_normalisation_of_noisy_tey_removes_background_and_flux(edge):
    """Noisy simulated TEY over a sloping background, 10 eV more pre-edge (a line): normalised,
    it is the clean spectrum normalised alike, to the noise (~1 % of the step per point)."""
    feff_energy, samples = heldout_samples(edge)
    step = feff_energy[1] - feff_energy[0]
    energy = np.concatenate([feff_energy[0] - step * np.arange(40, 0, -1), feff_energy])
    rng = np.random.default_rng(1)
    errs = []
    for s in samples[:10]:
        mu = np.interp(energy, feff_energy, np.asarray(s["mu"]), left=0.0)
        ref = normalize(energy, mu, edge)
        assert ref.pre_slope != 0.0  # 13 eV of pre-edge: a line
        i0, tey = simulate_tey(energy, mu, rng)
        r = mu_from_channels("tey", i0, tey, dark_i0=50.0, dark_signal=50.0, counts=True)
        assert r.ok.all()
        # the Poisson estimate agrees with the scatter of the data
        assert noise_from_scatter(r.mu) == pytest.approx(np.median(r.sigma), rel=0.5)
        n = normalize(energy[::-1], r.mu[::-1], edge)  # any order
        np.testing.assert_array_equal(n.energy, energy)
        errs.append(np.sqrt(np.mean((n.norm - ref.norm) ** 2)))
    assert np.median(errs) < 0.02, errs
    assert np.max(errs) < 0.06, errs  # the line, extrapolated 45 eV, carries its fit noise


def test_short_pre_edge_gets_a_level():
    """On the model grid alone (~3 eV below the onset) the pre-edge is a level, not a line."""
    energy, samples = heldout_samples("O")
    mu = 0.2 + 0.001 * (energy - 526.0) + np.asarray(samples[0]["mu"])
    n = normalize(energy, mu, "O")
    assert n.pre_slope == 0.0
    assert n.pre_offset == pytest.approx(np.mean(mu[energy < 529.0]))
    # windows and E0 relative to which they lie: e0 overrides the edge's onset
    m = normalize(energy + 10.0, mu, "O", e0=540.0)
    np.testing.assert_allclose(m.norm, n.norm)


def test_not_normalisable_raises():
    energy, samples = heldout_samples("O")
    mu = np.asarray(samples[0]["mu"])
    with pytest.raises(NormalizationError, match="below 529.0 eV and >= 1 above 545.0 eV"):
        normalize(energy[energy > 529.5], mu[energy > 529.5], "O")
    with pytest.raises(NormalizationError, match="in 500.0-510.0 eV"):
        normalize(energy, mu, "O", pre1=-30.0, pre2=-20.0)
    with pytest.raises(NormalizationError, match="no positive edge step"):
        normalize(energy, -mu, "O")


def test_energy_offset_and_best_shift():
    """The mono's offset from simulated TEY of the O reference; the best shift of its
    normalised spectrum against the FEFF one is the same offset."""
    ref_e, ref_mu = reference_spectrum("O")
    true = ref_e[0] - 4.0 + 0.2 * np.arange(151)  # calibration_regions: onset - 4 .. + 26 eV
    offset = 0.63
    mu = np.interp(true, ref_e, ref_mu, left=0.0)
    i0, tey = simulate_tey(true, mu, np.random.default_rng(2))
    rb = true - offset
    raw = mu_from_channels("TEY", i0, tey, strict=False).mu
    found, r = fit_energy_offset(rb, raw, ref_e, ref_mu)
    assert found == pytest.approx(offset, abs=0.05) and r > 0.99
    n = normalize(rb, raw, "O", e0=ref_e[0] - 1.0)
    corr, shift = best_shift_pearson(n.energy, n.norm, ref_e, ref_mu)
    assert shift == pytest.approx(offset, abs=0.1) and corr > 0.99
    with pytest.raises(NormalizationError, match="valid points"):
        fit_energy_offset(rb[:9], raw[:9], ref_e, ref_mu)


def test_spectrum_csv(tmp_path):
    energy, mu = reference_spectrum("N")
    path = tmp_path / "ref.csv"
    path.write_text(
        "energy_eV,mu\n"
        + "".join(f"{e!r},{m!r}\n" for e, m in zip(energy.tolist(), mu.tolist(), strict=True))
    )
    e, m = load_spectrum_csv(path)
    np.testing.assert_array_equal(e, energy)
    np.testing.assert_array_equal(m, mu)
    with pytest.raises(SpectrumError, match="outside the mono"):
        load_spectrum_csv(path, energy_range=(500.0, 600.0))
    with pytest.raises(SpectrumError, match="strictly increasing"):
        check_spectrum(energy[::-1], mu, source="reversed")


def test_peaks():
    energy, samples = heldout_samples("O")
    mu = np.asarray(samples[0]["mu"])
    peaks = find_peak_energies(energy, mu)
    assert peaks.size >= 1
    assert 528 < peaks[0] < 545
    assert find_peak_energies(energy, np.zeros_like(energy)).size == 0


def test_larch_semantics_on_a_model_edge():
    """A tanh edge of step 2 on a Victoreen-like pre-edge and a sloping post-edge: the line
    fitted to mu * E**nvict removes the pre-edge exactly, the step is post - pre at E0, and flat
    takes the post-edge slope out above E0 only (Larch's ``pre_edge``; the comparison with Larch
    itself is tests/test_larch.py)."""
    energy = np.arange(500.0, 580.0, 0.25)
    pre = (3e5 - 200.0 * energy) * energy**-2.0  # ~0.7, falling
    edge = 1.0 + np.tanh((energy - 530.0) / 0.5)
    post = np.where(energy > 545.0, 0.01 * (energy - 530.0), 0.0)
    n = normalize(energy, pre + edge + post, "O", pre1=-30.0, pre2=-10.0, nvict=2, norm1=16.0)
    assert n.npre == 1 and n.nvict == 2 and n.nnorm == 0
    np.testing.assert_allclose(n.pre_edge, pre, rtol=1e-9)
    assert (n.pre_slope, n.pre_offset) == (pytest.approx(-200.0), pytest.approx(3e5))
    m = normalize(energy, pre + edge + post, "O", pre1=-30.0, pre2=-10.0, nvict=2, norm1=16.0,
                  nnorm=1)  # fmt: skip
    assert m.edge_step == pytest.approx(2.0, rel=0.02)  # the post-edge line back at E0
    above = energy > 550.0
    np.testing.assert_allclose(m.flat[above], 1.0, atol=0.01)  # the slope taken out
    np.testing.assert_array_equal(m.flat[energy < 530.0], m.norm[energy < 530.0])
    # the windows' defaults: all the data on either side (Larch's clamps), a level for < 8 eV
    assert (n.pre1, n.norm2) == (-30.0, energy[-1] - 530.0)
    short = normalize(energy[energy > 524.0], (pre + edge)[energy > 524.0], "O")
    assert short.npre == 0 and short.pre1 == -5.75 and short.pre2 == -1.0
    # Larch's rule for E0: the steepest point of the edge
    assert find_e0(energy, pre + edge) == pytest.approx(530.0, abs=0.25)
    assert normalize(energy, pre + edge, e0=find_e0(energy, pre + edge)).e0 == find_e0(
        energy, pre + edge
    )
    with pytest.raises(NormalizationError, match="E0 600.00 eV lies outside the data"):
        normalize(energy, pre + edge, e0=600.0)
