"""Both edges of one molecule: the joint posterior of two comparators."""

from __future__ import annotations

import numpy as np
import pytest

from xas_bluesky.science.compare import Comparator
from xas_bluesky.science.compare.joint import joint_result

GRID = np.arange(0.0, 40.0, 0.25)


def _peaks(*centres):
    mu = 1.0 / (1.0 + np.exp(-(GRID - 12.0)))  # the edge step
    for c in centres:
        mu = mu + 0.8 * np.exp(-0.5 * ((GRID - c) / 0.8) ** 2)
    return mu


def _measure(comp, mu, rng, n=40, noise=0.01):
    e = np.linspace(2.0, 36.0, n)
    y = np.interp(e, GRID, mu) + noise * rng.standard_normal(n)
    comp.add_points(e, y, np.full(n, noise))
    return comp.result()


def _edges(eps=0.0):
    # a and b: the same O spectrum (the O edge cannot tell them apart), different N spectra;
    # c differs at both
    names = ["a", "b", "c"]
    o = np.stack([_peaks(15.0), _peaks(15.0), _peaks(22.0)])
    n = np.stack([_peaks(18.0), _peaks(26.0), _peaks(18.0, 30.0)])
    kw = {"temperature": 1.0, "temperature_exponent": 0.0, "outlier_probability": eps}
    return (
        Comparator(GRID, o, None, names, **kw),
        Comparator(GRID, n, None, names, **kw),
        o,
        n,
    )


def test_one_edge_that_cannot_tell_two_candidates_apart_is_helped_by_the_other():
    rng = np.random.default_rng(0)
    comp_o, comp_n, o, n = _edges()
    r_o = _measure(comp_o, o[1], rng)  # the sample is b
    r_n = _measure(comp_n, n[1], rng)
    assert abs(r_o.probabilities[0] - r_o.probabilities[1]) < 0.2  # O alone: a coin
    joint = joint_result({"O": r_o, "N": r_n})
    assert joint.best_name == "b" and joint.best_probability > 0.99
    assert np.isclose(joint.probabilities.sum(), 1.0)
    assert joint.edges == ("O", "N") and joint.n_left_out == {"O": 0, "N": 0}


def test_eps_is_applied_once_to_the_joint_and_caps_it():
    rng = np.random.default_rng(1)
    comp_o, comp_n, o, n = _edges(eps=0.03)
    joint = joint_result({"O": _measure(comp_o, o[1], rng), "N": _measure(comp_n, n[1], rng)})
    eps = 1 - 0.97**2
    assert joint.outlier_probability == pytest.approx(eps)
    assert joint.best_probability <= 1 - eps + eps / 3 + 1e-12
    assert joint.best_probability > 0.9


def test_candidates_missing_at_one_edge_are_left_out_and_nothing_shared_is_an_error():
    rng = np.random.default_rng(2)
    comp_o, _, o, n = _edges()
    kw = {"temperature": 1.0, "temperature_exponent": 0.0}
    comp_n = Comparator(GRID, n[1:], None, ["b", "c"], **kw)
    joint = joint_result({"O": _measure(comp_o, o[1], rng), "N": _measure(comp_n, n[1], rng)})
    assert joint.names == ["b", "c"] and joint.n_left_out == {"O": 1, "N": 0}
    other = Comparator(GRID, n[:1], None, ["z"], **kw)
    with pytest.raises(ValueError, match="no candidate is shared"):
        joint_result({"O": comp_o.result(), "N": _measure(other, n[0], rng)})
    fresh = Comparator(GRID, n, None, ["a", "b", "c"], **kw)
    with pytest.raises(ValueError, match="no fit yet"):
        joint_result({"O": comp_o.result(), "N": fresh.result()})


def test_sample_posteriors_match_candidates_by_structure_key_and_by_sample():
    from types import SimpleNamespace

    from xas_bluesky.beamline.analysis.samples import SamplePosteriors, sample_key

    rng = np.random.default_rng(2)
    comp_o, comp_n, o, n = _edges()
    r_o = _measure(comp_o, o[1], rng)
    r_n = _measure(comp_n, n[1], rng)
    # the N list names the same molecules differently and in another order: keys match them
    perm = [2, 0, 1]
    r_n_renamed = type(r_n)(**{**r_n.__dict__, "names": [f"n{i}" for i in perm]})
    r_n_renamed.probabilities = r_n.probabilities[perm]
    r_n_renamed.model_log_probabilities = r_n.model_log_probabilities[perm]
    keys = ["KA", "KB", "KC"]
    cands_o = SimpleNamespace(keys=keys, smiles=["sa", "sb", "sc"])
    cands_n = SimpleNamespace(keys=[keys[i] for i in perm], smiles=["x", "y", "z"])
    samples = SamplePosteriors()
    key = sample_key({"sample_uid": "u1", "sample_name": "slot 3"})
    assert key == "sample_uid:u1" and sample_key({"sample_name": "s"}) == "sample_name:s"
    assert sample_key({}) is None
    assert samples.joint(key, "run-n", "N", r_n_renamed, cands_n) is None  # no other edge yet
    samples.record(key, "run-o", "O", r_o, cands_o)
    joint = samples.joint(key, "run-n", "N", r_n_renamed, cands_n)
    assert (
        joint is not None
        and joint.edges == "N,O"
        and joint.run_uids
        == {
            "N": "run-n",
            "O": "run-o",
        }
    )
    # named in the N run's own names: n1 is the molecule with key KB (b, the sample)
    assert joint.ranking()[0]["name"] == "n1" and joint.ranking()[0]["smiles"] == "z"
    expect = joint_result({"N": r_n, "O": r_o})
    assert joint.joint.best_probability == pytest.approx(expect.best_probability)
    # another sample, or the same edge again: no joint
    assert samples.joint("sample_uid:u2", "r", "N", r_n_renamed, cands_n) is None
    assert samples.joint(key, "run-o2", "O", r_o, cands_o) is None


def test_two_edge_policy_charges_a_move_between_edges_and_stops_on_the_joint():
    from xas_bluesky.science.adaptive import TwoEdgePolicy

    policy = TwoEdgePolicy(("O", "N"), threshold=0.9, max_points=40, dwell=1.0, mono_speed=20.0)
    measured = {e: policy.first_pass(e) for e in ("O", "N")}
    n = sum(v.size for v in measured.values())
    here = 535.0  # the mono at the O edge
    # equal gains: the point stays at the edge the mono is at (no ~6.5 s move for nothing)
    offers = {"O": (536.3, 0.2), "N": (402.1, 0.2)}
    edge, d = policy.decide(measured, 0.5, offers, here)
    assert (edge, d.energy) == ("O", 536.3)
    # the other edge wins only when its gain pays for the move: 1 + 133.7 / 20 = 7.7x
    assert policy.decide(measured, 0.5, {"O": (536.3, 0.2), "N": (402.1, 1.4)}, here)[0] == "O"
    edge, d = policy.decide(measured, 0.5, {"O": (536.3, 0.2), "N": (402.1, 1.7)}, here)
    assert (edge, d.energy) == ("N", 402.1)
    # a recommendation that repeats a measured point promises nothing: the gap is filled where
    # the other edge is worth more
    repeat = float(measured["O"][3])
    assert policy.decide(measured, 0.5, {"O": (repeat, 5.0), "N": (402.1, 0.01)}, here)[0] == "N"
    # no fit yet at an edge (NaN gain, no energy): the other edge
    assert policy.decide(measured, 0.5, {"O": (None, np.nan), "N": (402.1, 0.01)}, here)[0] == "N"
    # the joint decides when to stop; the budget is both edges'
    edge, d = policy.decide(measured, 0.93, offers, here)
    assert edge is None and d.stop and d.reason == "confident"
    assert not policy.decide(measured, np.nan, offers, here)[1].stop
    full = {"O": np.linspace(526, 575, 40 - n + measured["O"].size), "N": measured["N"]}
    edge, d = policy.decide(full, 0.5, offers, here)
    assert edge is None and d.reason == "budget"
    with pytest.raises(ValueError):
        TwoEdgePolicy(("O",))
