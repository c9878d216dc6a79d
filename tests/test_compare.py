"""The comparator: identification, shared offset, invariances, bad input, next energy."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from xas_bluesky.resources import RESOURCES, heldout_samples
from xas_bluesky.science.compare import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TEMPERATURE_EXPONENT,
    STAND_IN_TEMPERATURE,
    Comparator,
    MatchResult,
    calibration_for,
    fit_temperature,
    perturbed_model,
    reliability,
    simulate_trials,
    tempered_probabilities,
)


def feff(edge):
    energy, samples = heldout_samples(edge)
    return energy, np.array([s["mu"] for s in samples]), [s["name"] for s in samples]


def measure(energy, mu, mono, delta, rng, *, noise=0.01, scale=0.02, bg=0.05, slope=2e-4):
    """Raw TEY-like mu at mono energies: scale * mu(E + delta) + a sloping background + noise.

    ``noise`` is relative to the edge step (``scale``)."""
    clean = np.interp(mono + delta, energy, mu, left=0.0)
    y = scale * clean + bg + slope * (mono - mono[0])
    sigma = np.full(mono.size, noise * scale)
    return y + sigma * rng.standard_normal(mono.size), sigma


@pytest.mark.parametrize("edge", ["O", "N"])
def test_identifies_heldout_sample_and_recovers_offset(edge):
    energy, mu, names = feff(edge)
    rng = np.random.default_rng(42)
    # FEFF itself as the model: no model error beyond the noise, the stand-in's temperature
    cmp = Comparator(
        energy, mu, None, names, temperature=STAND_IN_TEMPERATURE, temperature_exponent=0.0
    )
    off_err, misses = [], []
    trials = range(len(names))
    for true in trials:
        delta = rng.uniform(-2.0, 2.0)
        mono = np.arange(energy[0] - 5, energy[-1] - 3, 0.5)
        y, sig = measure(energy, mu[true], mono, delta, rng)
        cmp.reset()
        cmp.add_points(mono, y, sig)
        res = cmp.result()
        if res.best_index != true:
            misses.append((true, res.best_index, round(delta, 2)))
        else:  # a wrong candidate's offset is its own, not the measurement's
            off_err.append(res.offset_ev - delta)
        assert np.isclose(res.probabilities.sum(), 1.0)
        assert np.isclose(res.offset_posterior.sum(), 1.0)
    assert np.max(np.abs(off_err)) <= 0.15, off_err  # grid step 0.25 eV, refined
    # Every held-out sample is named.  The near-twin misses recorded here before (1 O, 3 N,
    # p ~ 1, then 4 N with the larger held-out set) were the comparator's: a measurement that
    # arrives at once kept the model's slope variance at offset 0 when the true offset was
    # beyond 1 eV, and a sharp FEFF peak then sank the right candidate.
    assert not misses, f"wrong candidates (true, best, offset): {misses}"


def test_uniform_and_honest_before_enough_points():
    energy, mu, names = feff("O")
    cmp = Comparator(energy, mu, 0.05 + 0.0 * mu, names)
    res = cmp.result()
    assert res.n_points == 0 and np.allclose(res.probabilities, 1 / len(names))
    assert res.entropy == pytest.approx(np.log(len(names)))
    assert res.offset_ev == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(0)
    mono = np.array([531.0, 535.0, 540.0])
    y, sig = measure(energy, mu[3], mono, 0.0, rng)
    cmp.add_points(mono, y, sig)
    assert np.allclose(cmp.result().probabilities, 1 / len(names))  # 3 points, 3 parameters
    # points below the model grid (even shifted by the largest offset) say nothing
    cmp.reset()
    mono = np.linspace(515.0, 522.5, 12)
    y, sig = measure(energy, mu[3], mono, 0.0, rng)
    cmp.add_points(mono, y, sig)
    res = cmp.result()
    assert res.best_probability < 1.5 / len(names)
    assert res.entropy > 0.99 * np.log(len(names))


def test_order_of_points_does_not_matter():
    energy, mu, names = feff("O")
    rng = np.random.default_rng(3)
    mono = np.arange(527.0, 560.0, 0.75)
    y, sig = measure(energy, mu[7], mono, 0.6, rng, noise=0.05)
    results = []
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(mono.size)
        cmp = Comparator(energy, mu, 0.03 + 0.05 * mu, names)
        for i in order:
            cmp.add_points(mono[i], y[i], sig[i])
        results.append(cmp.result())
    batch = Comparator(energy, mu, 0.03 + 0.05 * mu, names)
    batch.add_points(mono, y, sig)
    results.append(batch.result())
    for r in results[1:]:
        np.testing.assert_allclose(r.probabilities, results[0].probabilities, atol=1e-4)
        assert r.best_name == results[0].best_name
        assert r.offset_ev == pytest.approx(results[0].offset_ev, abs=1e-3)


def test_settled_result_does_not_depend_on_when_results_were_asked():
    """Live results move the reference scale / offset as they are asked for, so two workers
    batching one run differently differed in p; the settled result is the same for both, and
    equals a comparator given every point at once."""
    energy, mu, names = feff("O")
    rng = np.random.default_rng(11)
    mono = np.arange(527.0, 560.0, 0.75)
    y, sig = measure(energy, mu[5], mono, 1.3, rng, noise=0.05)
    settled, live = [], []
    for step in (1, 7):  # a result after every point, or after every 7
        cmp = Comparator(energy, mu, 0.03 + 0.05 * mu, names)
        for i in range(0, mono.size, step):
            cmp.add_points(mono[i : i + step], y[i : i + step], sig[i : i + step])
            res = cmp.result()
        live.append(res.probabilities)
        settled.append(cmp.settled_result())
        # points after the settled result continue from it
        cmp.add_points(np.array([561.0]), np.array([y[-1]]), np.array([sig[-1]]))
        assert cmp.result().n_points == mono.size + 1
    once = Comparator(energy, mu, 0.03 + 0.05 * mu, names)
    once.add_points(mono, y, sig)
    ref = once.result()
    for r in settled:
        np.testing.assert_array_equal(r.probabilities, ref.probabilities)
        assert r.offset_ev == ref.offset_ev and r.n_points == mono.size
    print("live results differ by", float(np.abs(live[0] - live[1]).max()))


def test_order_of_candidates_and_ties():
    energy, mu, names = feff("N")
    rng = np.random.default_rng(5)
    # two identical candidates under different names: an exact tie, broken by name
    mu2 = np.vstack([mu, mu[4]])
    names2 = [*names, "aaa_twin"]
    mono = np.arange(397.0, 430.0, 0.5)
    y, sig = measure(energy, mu[4], mono, -0.4, rng)
    perm = rng.permutation(len(names2))
    res = []
    for order in (np.arange(len(names2)), perm, perm[::-1]):
        cmp = Comparator(energy, mu2[order], None, [names2[i] for i in order])
        cmp.add_points(mono, y, sig)
        r = cmp.result()
        res.append((order, r))
    ref_order, ref = res[0]
    for order, r in res[1:]:
        back = np.empty_like(r.probabilities)
        back[order] = r.probabilities
        np.testing.assert_allclose(back, ref.probabilities, rtol=1e-5, atol=1e-12)
    for _, r in res:
        top = r.top(3)
        assert top[0][0] == "aaa_twin" and top[1][0] == names[4]
        assert top[0][1] == top[1][1]
        assert r.best_name == "aaa_twin"


def test_ties_in_uniform_result_by_name():
    energy, mu, names = feff("O")
    cmp = Comparator(energy, mu[::-1], None, names[::-1])
    r = cmp.result()
    assert [n for n, _ in r.top(3)] == sorted(names)[:3]
    assert r.best_name == sorted(names)[0]
    assert isinstance(r, MatchResult)


def test_bad_points_are_refused_and_change_nothing():
    energy, mu, names = feff("O")
    rng = np.random.default_rng(1)
    mono = np.arange(527.0, 560.0, 1.0)
    y, sig = measure(energy, mu[2], mono, 0.0, rng)
    cmp = Comparator(energy, mu, None, names)
    cmp.add_points(mono, y, sig)
    before = cmp.result()
    for bad in (
        (np.array([531.0, np.nan]), np.array([0.1, 0.1]), np.array([1e-3, 1e-3])),
        (np.array([531.0]), np.array([np.inf]), np.array([1e-3])),
        (np.array([531.0]), np.array([0.1]), np.array([0.0])),
        (np.array([531.0]), np.array([0.1]), np.array([np.nan])),
    ):
        with pytest.raises(ValueError, match="refused"):
            cmp.add_points(*bad)
    after = cmp.result()
    assert after.n_points == before.n_points
    assert after.best_name == before.best_name
    # (a second result may skip offsets of negligible posterior: differences far below 1e-12)
    np.testing.assert_allclose(after.probabilities, before.probabilities, rtol=1e-6, atol=1e-12)


def test_bad_candidates_are_refused():
    energy, mu, names = feff("O")
    bad = mu.copy()
    bad[1, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Comparator(energy, bad, None, names)
    with pytest.raises(ValueError, match="names"):
        Comparator(energy, mu, None, names[:-1])


def test_next_energy_goes_where_probable_candidates_disagree():
    energy = np.arange(526.0, 575.01, 0.25)
    edge = 1.0 / (1.0 + np.exp(-(energy - 530.0) / 0.5))

    def peak(e0):
        return np.exp(-0.5 * ((energy - e0) / 0.6) ** 2)

    # A and B differ only by a resonance at 540 eV; C differs at 550 eV but is ruled out early
    mean = np.stack([edge + peak(533), edge + peak(533) + 0.8 * peak(540), edge + 2 * peak(550)])
    names = ["A", "B", "C"]
    cmp = Comparator(energy, mean, np.full_like(mean, 0.02), names, edge_window=(527.0, 570.0))
    rng = np.random.default_rng(0)
    mono = np.array([528.0, 530.0, 532.0, 533.0, 534.0, 536.0, 548.0, 550.0, 552.0, 560.0, 568.0])
    y, sig = measure(energy, mean[0], mono, 0.0, rng)
    cmp.add_points(mono, y, sig)
    r = cmp.result()
    assert r.probabilities[2] < 1e-3
    assert abs(r.next_energy - 540.0) <= 1.0, r.next_energy
    assert 527.0 <= r.next_energy <= 570.0
    # measuring it settles the question
    y1, s1 = measure(energy, mean[0], np.array([r.next_energy]), 0.0, rng)
    cmp.add_points([r.next_energy], y1, s1)
    r2 = cmp.result()
    assert r2.best_name == "A" and r2.best_probability > r.best_probability
    assert r2.next_energy is None or abs(r2.next_energy - r.next_energy) > cmp.exclusion_ev


def _two_resonances():
    energy = np.arange(526.0, 575.01, 0.25)
    edge = 1.0 / (1.0 + np.exp(-(energy - 530.0) / 0.5))

    def peak(e0):
        return np.exp(-0.5 * ((energy - e0) / 0.6) ** 2)

    # A and B differ only by a resonance at 540 eV
    return energy, np.stack([edge + peak(533), edge + peak(533) + 0.8 * peak(540)]), peak


def test_model_error_discounts_energies_the_model_gets_wrong():
    """Where the model's measured error is as large as the candidates' difference, a point there
    cannot name one of them; elsewhere the same data still can."""
    energy, mean, peak = _two_resonances()
    rng = np.random.default_rng(3)
    mono = np.arange(528.0, 560.0, 0.5)
    y, sig = measure(energy, mean[1], mono, 0.0, rng)
    kw = {"temperature": 1.0, "temperature_exponent": 0.0, "offset_max": 0.0}
    plain = Comparator(energy, mean, None, ["A", "B"], **kw)
    plain.add_points(mono, y, sig)
    assert plain.result().best_name == "B" and plain.result().best_probability > 0.999
    err = 0.01 + 2.0 * peak(540.0)  # the model is unreliable exactly where A and B differ
    unsure = Comparator(energy, mean, None, ["A", "B"], model_error=err, **kw)
    unsure.add_points(mono, y, sig)
    assert unsure.result().best_probability < 0.9
    with pytest.raises(ValueError, match="model_error"):
        Comparator(energy, mean, None, ["A", "B"], model_error=err[:-1])
    with pytest.raises(ValueError, match="model_error"):
        Comparator(energy, mean, None, ["A", "B"], model_error=-err)


def test_outlier_probability_caps_the_confidence():
    """eps: the reported probabilities are (1 - eps) P + eps / C, never above 1 - eps (1 - 1/C);
    the ranking and the next energy do not change."""
    energy, mean, _ = _two_resonances()
    mean = np.vstack([mean, mean[0] + 0.3])
    names = ["A", "B", "C"]
    rng = np.random.default_rng(4)
    mono = np.arange(528.0, 560.0, 0.5)
    y, sig = measure(energy, mean[1], mono, 0.0, rng)
    results = []
    for eps in (0.0, 0.05):
        cmp = Comparator(energy, mean, None, names, outlier_probability=eps)
        cmp.add_points(mono, y, sig)
        results.append(cmp.result())
    plain, capped = results
    assert plain.best_name == capped.best_name == "B"
    np.testing.assert_allclose(capped.probabilities, 0.95 * plain.probabilities + 0.05 / 3)
    assert capped.best_probability <= 1 - 0.05 * (1 - 1 / 3) + 1e-12
    assert capped.probabilities.sum() == pytest.approx(1.0)
    assert capped.next_energy == plain.next_energy
    with pytest.raises(ValueError, match="outlier_probability"):
        Comparator(energy, mean, None, names, outlier_probability=1.0)


def test_next_energy_excludes_measured_energies():
    energy, mu, names = feff("O")
    cmp = Comparator(energy, mu, None, names, edge_window=(530.0, 532.0))
    rng = np.random.default_rng(2)
    mono = np.arange(526.0, 575.0, 1.0)
    y, sig = measure(energy, mu[0], mono, 0.0, rng)
    cmp.add_points(mono, y, sig)
    dense = np.arange(529.5, 532.6, 0.25)
    y2, s2 = measure(energy, mu[0], dense, 0.0, rng)
    cmp.add_points(dense, y2, s2)
    assert cmp.result().next_energy is None  # the whole window is measured


def _gnn_available(edge: str) -> bool:
    return (RESOURCES / "models" / edge).is_dir()


@pytest.mark.parametrize("edge", ["O", "N"])
def test_calibration_comes_from_the_checkpoint_metadata(edge, caplog):
    """A shipped ensemble carries its own calibration in its metadata (no model version is named
    in the source); without one -- or for a bare version -- the default, with a warning."""
    if not _gnn_available(edge):
        pytest.skip("no GNN shipped for this edge yet")
    meta = json.loads((RESOURCES / "models" / edge / "metadata.json").read_text())
    cal = meta["calibration"]
    assert cal["model_version"] == meta["model_version"]
    keys = ("temperature", "temperature_exponent", "std_scale", "outlier_probability")
    got = calibration_for(meta)
    model_error = got.pop("model_error", None)
    top = got.pop("top_calibration", None)
    assert got == {k: float(cal[k]) for k in keys if k in cal}
    # the top-label map, fitted on the calibration molecules (never the held-out samples)
    assert (top is None) == (cal.get("top_calibration") is None)
    if top is not None:
        assert top == tuple(cal["top_calibration"]) and top[0] > 0
        assert cal["split"] == "cal" and cal["molecules"]
    if cal.get("model_error") is not None:  # the per-energy rms error, one per model energy
        assert model_error.shape == (len(meta["energy"]),)
        np.testing.assert_allclose(model_error, cal["model_error"])
    default = {
        "temperature": DEFAULT_TEMPERATURE,
        "temperature_exponent": DEFAULT_TEMPERATURE_EXPONENT,
        "std_scale": 1.0,
    }
    assert calibration_for(meta) != default
    bare = {k: v for k, v in meta.items() if k != "calibration"}
    with caplog.at_level(logging.WARNING):
        assert calibration_for(bare) == default
        assert calibration_for(meta["model_version"]) == default
        assert caplog.text.count(f"no calibration for model version {meta['model_version']}") == 2
        caplog.clear()
        assert calibration_for(None) == default
        assert not caplog.records


def _heldout_candidates(edge, energy, truth, samples, rng, model):
    """Candidates for the held-out molecules: the GNN's predictions (``model="GNN"``), or FEFF
    spectra with realistic correlated errors (the stand-in used before the GNN shipped)."""
    if model == "GNN":
        from xas_bluesky.science.model.predictor import Predictor
        from xas_bluesky.science.structures import structure_from_xyz

        pred = Predictor.load(edge, device="cpu")
        structures = [structure_from_xyz(s["name"], s["symbols"], s["xyz"]) for s in samples]
        mean, std = pred.predict(structures, return_std=True)
        mean, std = (
            np.array([np.interp(energy, pred.energy, row) for row in np.asarray(a, float)])
            for a in (mean.values, std.values)
        )
        # the calibration belongs to the model: calibrate(edge, predictions=...) on its
        # validation split
        return mean, std, calibration_for(pred), "GNN"
    mean, std = perturbed_model(energy, truth, rng)
    return mean, std, {"temperature": STAND_IN_TEMPERATURE, "temperature_exponent": 0.0}, "stand-in"


@pytest.mark.system  # the shipped weights
@pytest.mark.parametrize("model", ["GNN", "stand-in"])
@pytest.mark.parametrize("edge", ["O", "N"])
def test_probabilities_are_calibrated_on_heldout_molecules(edge, model):
    """Held-out FEFF spectra measured (noise, offset, scale, background) in adaptive scans,
    scored against the model's predictions of all held-out molecules, with the calibration
    fitted on the validation split (the GNN's once it is shipped, else the stand-in's)."""
    if model == "GNN" and not _gnn_available(edge):
        pytest.skip("no GNN shipped for this edge yet")
    energy, samples = heldout_samples(edge)
    truth = np.array([s["mu"] for s in samples])
    mean, std, cal, kind = _heldout_candidates(
        edge, energy, truth, samples, np.random.default_rng(7), model
    )
    temp, gamma = cal["temperature"], cal.get("temperature_exponent", 0.0)
    # the stand-in's temperature was fitted on scans of up to 32 points (gamma 0: it does not
    # grow), the GNN's on the default checkpoints (to 49) and the grid
    stops = {"checkpoints": (6, 8, 12, 16, 24, 32)} if kind == "stand-in" else {}
    trials = simulate_trials(energy, truth, mean, std, np.random.default_rng(8), **stops, **cal)
    truth_idx = [t.true_index for t in trials]
    rel = reliability([t.probabilities for t in trials], truth_idx)
    log_prior = Comparator(energy, mean[:1], None, ["x"]).log_prior
    naive = reliability([tempered_probabilities(t, log_prior, 1.0) for t in trials], truth_idx)
    t_best, _, _ = fit_temperature(trials, log_prior, exponent=gamma)
    print(f"\n{edge} ({kind}): T0 stored {temp}, refitted on held-out {t_best:.2f}")
    print(f"  T0={temp}, gamma={gamma}: {rel}")
    print(f"  T=1: {naive}")
    # calibrated: the confidence matches the accuracy, far better than the naive likelihood.
    # The GNN was early-stopped on the validation split, so it errs more on held-out molecules
    # than where its calibration was fitted (O: MAE 0.070 vs 0.060): a looser bound.
    ece_max = 0.2 if kind == "GNN" else 0.1
    assert rel["ece"] < ece_max, rel
    assert abs(rel["mean_confidence"] - rel["top1"]) < ece_max, rel
    assert rel["ece"] < naive["ece"], (rel, naive)
    assert rel["nll"] <= naive["nll"] + 0.05, (rel, naive)
    # and the temperature fitted on the validation split holds on the held-out one.  A held-out
    # refit above the stored T0 means over-confidence -- the adaptive plan would stop on a wrong
    # answer -- so that side is held to a factor of two (an earlier O model failed it: 10 vs 25);
    # below it the model is under-confident on held-out molecules, which costs points, not
    # answers, and T0 fitted on ~80-100 molecules moves that much between sets: a factor of three
    # (O 5.75 / 5.75; N 9.1 / 4.4, ECE 0.06, today's models; this side was a factor of two until
    # the N refit came out 2.1x lower)
    assert temp / 3 <= t_best <= temp * 2, (
        f"T0 {temp} fitted on validation, {t_best:.2f} on held-out"
    )


def test_edge_cases():
    energy, mu, names = feff("N")
    cmp = Comparator(energy, mu, None, names)
    with pytest.raises(ValueError, match="shape"):
        cmp.add_points([400.0, 401.0], [0.1], [1e-3])
    rng = np.random.default_rng(4)
    mono = np.repeat(np.arange(398.0, 420.0, 2.0), 2)  # every energy measured twice
    y, sig = measure(energy, mu[1], mono, 0.3, rng)
    cmp.add_points(mono, y, sig)
    r = cmp.result()
    assert r.n_points == mono.size and np.isfinite(r.probabilities).all()
    assert len(r.top(10_000)) == len(names)
    assert r.top(0) == []
    assert r.next_energy is not None and np.min(np.abs(mono - r.next_energy)) > cmp.exclusion_ev
    cmp.reset()
    again = cmp.result()
    assert again.n_points == 0 and np.allclose(again.probabilities, 1 / len(names))
    # one energy only, however often: nothing to tell the candidates apart
    cmp.add_points(np.full(5, 402.0), np.full(5, 0.1), np.full(5, 1e-3))
    assert np.allclose(cmp.result().probabilities, 1 / len(names))


def test_ece_floor_separates_sampling_noise_from_miscalibration():
    """The floor is what a calibrated predictor's ECE looks like on this many trials: one whose
    answers are right as often as it says sits near it; an overconfident one clearly above."""
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.3, 0.95, 150)
    right = rng.random(150) < conf  # calibrated by construction
    probs = [np.array([c, 1 - c]) for c in conf]
    truth = [0 if r else 1 for r in right]
    rel = reliability(probs, truth)
    assert 0.02 < rel["ece_floor"] < 0.10  # ~150 trials over 10 bins: not zero
    assert rel["ece"] < rel["ece_floor_p90"] + 0.02
    # claims 0.95 for every answer while right as above: far beyond the floor
    over = reliability([np.array([0.95, 0.05])] * 150, truth)
    assert over["ece"] > 3 * over["ece_floor_p90"]


@pytest.mark.system  # the shipped weights
def test_one_glitch_that_passes_the_gates_does_not_flip_the_answer():
    """One in-range spike (40-100 % of the edge step, the sign at random) among 49 points of
    each of 24 held-out O samples: without the glitch check it costs several right answers;
    with it, the spike is set aside in most trials and the answers are those of the clean
    scans, while clean scans lose no point.  Measured on all 154 (right answers clean / spike
    unchecked / spike checked, spikes set aside): MPNN 128 / 76 / 121, 95; SchNet f0d7612f 139 /
    79 / 129, 98 (checking each point once, not again as the points double: 120, 88 and 126,
    91); SchNet 8a4bca58 140 / 91 / 133, 103 -- 7 of 140 lost, so on these 24 samples (23 / 14 /
    21) a loss of up to 2 is the expected spread, not a regression."""
    edge = "O"
    if not _gnn_available(edge):
        pytest.skip("no GNN shipped for this edge yet")
    energy, mu, names = feff(edge)
    _, samples = heldout_samples(edge)
    rng = np.random.default_rng(7)
    mean, _, cal, _ = _heldout_candidates(edge, energy, mu, samples, rng, "GNN")
    mono = np.linspace(energy[0] + 2, energy[-1] - 2, 49)
    right = {"clean": 0, "off": 0, "on": 0}
    caught = clean_rejected = 0
    for true in range(1, 49, 2):
        y, sig = measure(energy, mu[true], mono, rng.uniform(-1, 1), rng)
        j = int(rng.integers(10, 40))
        spike = y.copy()
        spike[j] += 0.02 * rng.choice([-1, 1]) * rng.uniform(0.4, 1.0)
        order = rng.permutation(mono.size)
        for key, yy, z in (("clean", y, None), ("off", spike, np.inf), ("on", spike, None)):
            cmp = Comparator(energy, mean, None, names, **cal)
            if z is not None:
                cmp.GLITCH_Z = z
            for k in order:
                cmp.add_points(mono[k], yy[k], sig[k])
                res = cmp.result()
            right[key] += res.best_index == true
            got = [e for e, _, _ in cmp.rejected_points]
            if key == "clean":
                clean_rejected += len(got)
            elif key == "on":
                caught += mono[j] in got and res.n_rejected == len(got)
    print(f"right of 24: {right}; spikes set aside: {caught}")
    assert clean_rejected == 0
    assert caught >= 12, caught  # of 24 spikes: the small ones the fit can absorb stay
    assert right["off"] < right["on"] >= right["clean"] - 2, right


def test_isomer_trials_set_the_top_label_map_where_candidates_are_alike(tmp_path):
    """The calibration also scans each molecule among candidates like it (its isomers, here
    near-twins of its spectrum) and fits the top-label map on both kinds of finished scans: a
    map fitted on random sets alone leaves such sets over-confident (held-out O isomer scans:
    78 % claimed, 68 % right)."""
    from data_helpers import small_feff_file

    from xas_bluesky.science.compare import calibrate
    from xas_bluesky.science.compare.calibration import isomer_trials
    from xas_bluesky.science.dataset import load_molecules
    from xas_bluesky.science.grids import energy_grid

    # a small data set: the sites of the first 45 O molecules of the first committed file
    data = small_feff_file(tmp_path / "small.jsonl.gz", "O", 45)
    mols = [m for m in load_molecules([data], "O") if m.split == "train"]
    energy = energy_grid("O")
    truth = np.array([m.spectrum() for m in mols])
    rng = np.random.default_rng(5)
    own, std = perturbed_model(energy, truth, rng)
    # near-twins: the molecule's own spectrum with a model-sized error and a shift each
    iso = [perturbed_model(energy, np.repeat(t[None], 12, 0), rng, shift_ev=1.0)[0] for t in truth]
    iso[1] = np.empty((0, energy.size))  # a molecule without isomers gives no trial

    trials = isomer_trials(
        energy, truth[:3], own[:3], iso[:3], np.random.default_rng(1),
        checkpoints=(6, 12), model_error=np.full(energy.size, 0.05),
    )  # fmt: skip
    assert [(t.molecule, t.true_index, t.table.shape[1]) for t in trials] == [
        (0, 0, 13), (0, 0, 13), (2, 0, 13), (2, 0, 13)
    ]  # fmt: skip

    kw = dict(
        split="train", paths=[data], predictions=(own, std), error_model="rms", rounds=1,
        exponents=(0.75,), outlier_probabilities=(0.02,), top_label=True,
    )  # fmt: skip
    res = calibrate("O", isomer_candidates=iso, **kw)
    assert res["n_isomer_trials"] == 7 * (len(mols) - 1)
    plain = calibrate("O", **kw)
    assert plain["n_isomer_trials"] == 0 and "reliability_top_isomer" not in plain
    assert res["temperature"] == plain["temperature"]  # T0 and eps: random sets only
    # alike candidates: over-confident under the temperature fitted on random sets (33 % claimed,
    # 11 % right here), less so under the map fitted on both kinds, ...
    before, after = res["reliability_late_isomer"], res["reliability_top_isomer"]
    assert before["mean_confidence"] > before["top1"] + 0.1, before
    assert after["mean_confidence"] < before["mean_confidence"] - 0.05, (before, after)
    # ... which lowers the random sets' confidence (the price), here within 6 points of right
    rand = res["reliability_top"]
    assert rand["mean_confidence"] < plain["reliability_top"]["mean_confidence"]
    assert abs(rand["mean_confidence"] - rand["top1"]) < 0.06, rand


def test_top_label_map_recovers_a_known_miscalibration_and_keeps_the_ranking():
    """Trials whose top answer is right with probability sigmoid(0.5 logit p + 0.4 + 0.3
    log(n / 49)) (over-confident at the top, under-confident in the middle, more so on a grid):
    the fit finds the map, the mapped probabilities are calibrated, sum to 1 and never demote
    the best candidate."""
    from xas_bluesky.science.compare import fit_top_calibration, recalibrate_top

    rng = np.random.default_rng(3)
    probs, truth, npts = [], [], []
    for _ in range(4000):
        c = rng.uniform(0.3, 0.995)
        n = int(rng.choice([24, 49, 491]))
        p = np.array([c, *(1 - c) * rng.dirichlet(np.ones(9))])
        z = 0.5 * np.log(c / (1 - c)) + 0.4 + 0.3 * np.log(n / 49)
        right = rng.random() < 1 / (1 + np.exp(-z))
        probs.append(p)
        truth.append(0 if right else 1 + int(np.argmax(p[1:])))
        npts.append(n)
    a, b, c = fit_top_calibration(probs, truth, npts)
    assert a == pytest.approx(0.5, abs=0.1) and b == pytest.approx(0.4, abs=0.15)
    assert c == pytest.approx(0.3, abs=0.12)
    mapped = [recalibrate_top(p, (a, b, c), n) for p, n in zip(probs, npts, strict=True)]
    before = reliability(probs, truth, n_draws=10)["ece"]
    after = reliability(mapped, truth, n_draws=10)["ece"]
    assert after < 0.03 < before
    for p, m in zip(probs[:200], mapped[:200], strict=True):
        assert m.sum() == pytest.approx(1.0) and int(np.argmax(m)) == int(np.argmax(p))
        np.testing.assert_allclose(m[1:] / m[1:].sum(), p[1:] / p[1:].sum())
    # a map that would push the best below the runner-up stops at the tie
    m = recalibrate_top(np.array([0.5, 0.45, 0.05]), (0.3, -2.0))
    assert m[0] >= m[1] and m[0] == pytest.approx(m[1])
    # most candidates at the outlier floor's one value (the case the selections are written
    # for): the same runner-up as a sort finds
    floor = np.full(5000, 1e-6)
    floor[[17, 4000]] = [0.6, 0.3]
    floor /= floor.sum()
    m = recalibrate_top(floor, (0.3, -2.0))
    assert m[17] == pytest.approx(m[4000]) and m[17] >= m[4000]
    with pytest.raises(ValueError):
        Comparator(np.linspace(0, 10, 20), np.ones((2, 20)), None, ["a", "b"],
                   top_calibration=(-1.0, 0.0))  # fmt: skip


def test_top_indices_with_ties_at_a_floor():
    """The k best, ties by name rank, as a full sort orders them, where most share one value."""
    from xas_bluesky.science.compare.comparator import _top_indices

    rng = np.random.default_rng(3)
    prob = np.full(3000, 1e-7)
    prob[rng.choice(3000, 40, replace=False)] = rng.random(40)
    prob[[5, 6]] = prob.max()  # a tie at the top
    rank = rng.permutation(3000)
    for k in (1, 2, 10, 40, 41, 60, 3000):
        want = np.lexsort((rank, -prob))[:k]
        np.testing.assert_array_equal(_top_indices(prob, k, rank), want)
