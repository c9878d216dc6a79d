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
