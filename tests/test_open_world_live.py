"""Issue 16, the live wiring: functional groups and ``in_library`` on the score PVs (Channel
Access on loopback), the ``NoMatch`` status, the analysis run, runs without candidates, and the
adaptive plan's ``no-match`` stop -- with a real RunEngine and real IOCs.

The model's reference library (10,000 predictions: minutes on a CPU) is replaced by a small one
written into a temporary cache: a few hundred FEFF spectra standing in for predictions, which is
all the wiring needs (the science is ``tests/test_groups.py``'s).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from live_helpers import caget, measure_plan, shared_cache, small_candidates, wait_for, xas_md

from xas_bluesky.contracts import GROUPS, NO_CANDIDATES, STATES, MatchSummary
from xas_bluesky.science.adaptive import STOP_NO_MATCH, AdaptivePolicy, coarse_energies
from xas_bluesky.testing import next_ca_port, unique_prefix

ENERGIES = np.linspace(527.0, 560.0, 34)


# -- no real parts ----------------------------------------------------------------------------
def test_no_match_is_appended_to_the_states():
    assert STATES[:6] == ("Idle", "Predicting", "Running", "Done", "Warning", "Error")
    assert STATES[6] == "NoMatch"


def test_policy_stops_on_no_match_only_after_its_minimum():
    policy = AdaptivePolicy("O", no_match_min_points=20)
    n0 = coarse_energies("O").size
    early = policy.decide(np.linspace(527, 560, n0), 0.3, 535.0, status="NoMatch")
    assert not early.stop  # the coarse pass alone: noise, keep measuring
    late = policy.decide(np.linspace(527, 560, 20), 0.3, 535.0, status="NoMatch")
    assert late.stop and late.reason == STOP_NO_MATCH
    assert not policy.decide(np.linspace(527, 560, 20), 0.3, 535.0, status="Running").stop
    never = AdaptivePolicy("O", no_match_min_points=None)
    assert not never.decide(np.linspace(527, 560, 40), 0.3, 535.0, status="NoMatch").stop


# -- helpers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cands(tmp_path_factory):
    path = small_candidates(tmp_path_factory.mktemp("ow") / "cands.xyz", n=24, edge="O")
    return shared_cache().from_file(path, "O")


def small_model_library(cache: Path, model_version: str, n: int = 300) -> Path:
    """A stand-in for the model library in ``cache``: ``n`` FEFF spectra of the FEFF library
    (training molecules) filed under the model's version."""
    from xas_bluesky.science.groups import shipped_feff_library
    from xas_bluesky.science.library_cache import library_path

    feff = shipped_feff_library("O")
    lib = feff.subset(np.arange(min(n, len(feff))))
    lib = replace(lib, std=np.zeros_like(lib.mean), source=f"model:{model_version}")
    path = library_path("O", model_version, cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    lib.save(path)
    return path


def open_world(cache: Path, monkeypatch=None, in_coef=None):
    """An OpenWorldWorker on ``cache`` (no background prediction); ``in_coef`` replaces the
    shipped in_library logistic (e.g. one that always says "not among them")."""
    from xas_bluesky.beamline.analysis.open_world import OpenWorldWorker, ReferenceLibraries
    from xas_bluesky.science.compare import novelty

    if in_coef is not None:
        shipped = novelty.NoveltyCalibration.shipped

        def patched(edge, model_version=None):
            return replace(shipped(edge, model_version), in_coef=in_coef)

        monkeypatch.setattr(novelty.NoveltyCalibration, "shipped", staticmethod(patched))
    return OpenWorldWorker(ReferenceLibraries(cache, predict_missing=False))


# -- the score IOC ----------------------------------------------------------------------------
@pytest.mark.system
def test_group_pvs_and_no_match_over_channel_access(ca_env):
    from xas_bluesky.beamline.epics.score_ioc import N_GROUPS, ScoreServer

    server = ScoreServer(unique_prefix("G"), port=next_ca_port()).start()
    p = server.prefix
    try:
        names = ["ether", "alcohol", "carbonyl"]
        server.publish(
            MatchSummary(run_uid="r1", n_events=5, status="NoMatch", message="no match: why",
                         groups=names, group_probabilities=[0.9, 0.4, 0.05], in_library=0.2)
        )  # fmt: skip
        assert wait_for(lambda: caget(p + "Match:NPoints-I") == 5)
        assert caget(p + "Match:Groups-Wfm", as_string=True) == "\n".join(names)
        scores = np.asarray(caget(p + "Match:GroupScores-Wfm"))
        assert scores.size == N_GROUPS == max(len(g) for g in GROUPS.values())
        np.testing.assert_allclose(scores[:3], [0.9, 0.4, 0.05])
        assert np.all(np.isnan(scores[3:]))
        assert caget(p + "Match:InLibrary-I") == pytest.approx(0.2)
        assert caget(p + "Match:Status-Sts", as_string=True) == "NoMatch"
        assert caget(p + "Match:Message-Name", as_string=True) == "no match: why"
        server.publish(MatchSummary(run_uid="r2", n_events=1, status="Running"))
        assert wait_for(lambda: caget(p + "Match:NPoints-I") == 1)
        assert caget(p + "Match:Groups-Wfm", as_string=True) == ""
        assert math.isnan(caget(p + "Match:InLibrary-I"))
    finally:
        server.stop()


# -- the live analysis over Channel Access ----------------------------------------------------
@pytest.mark.system
def test_live_groups_on_the_pvs_and_in_the_analysis_run(ca_env, cands, tmp_path):
    """FEFF library only (no model library cached): groups on the PVs and in the analysis
    run, in_library NaN and the message says why; the RunEngine never waits for them."""
    from bluesky import RunEngine

    from xas_bluesky.beamline.analysis import subscribe_live_analysis

    RE = RunEngine({}, context_managers=[])
    docs: list[tuple[str, dict]] = []
    prefix = unique_prefix("OW")
    analysis = subscribe_live_analysis(
        RE, score_prefix=prefix, port=next_ca_port(), candidates=cands, cache=shared_cache(),
        open_world=open_world(tmp_path / "libs"), analysis_callbacks=[lambda n, d: docs.append((n, d))],
    )  # fmt: skip
    try:
        (uid,) = RE(measure_plan(cands, 3, ENERGIES))
        assert analysis.wait_idle(60)
        assert wait_for(lambda: caget(prefix + "Match:NPoints-I") == ENERGIES.size)
        names = caget(prefix + "Match:Groups-Wfm", as_string=True).split("\n")
        scores = np.asarray(caget(prefix + "Match:GroupScores-Wfm"))[: len(names)]
        status = caget(prefix + "Match:Status-Sts", as_string=True)
        message = caget(prefix + "Match:Message-Name", as_string=True)
        in_library = caget(prefix + "Match:InLibrary-I")
    finally:
        analysis.shutdown()
    assert sorted(names) == sorted(GROUPS["O"])
    assert np.all(np.diff(scores) <= 1e-12) and np.all((scores >= 0) & (scores <= 1))
    assert math.isnan(in_library) and status == "Done", (status, message)
    events = [d for n, d in docs if n == "event"]
    last = events[-1]["data"]
    assert last["groups"].split("\n") == names and last["groups_n_points"] == ENERGIES.size
    assert math.isnan(last["in_library"])
    stop = next(d for n, d in docs if n == "stop")
    assert "top group" in stop["reason"]
    assert analysis.results[uid].n_points == ENERGIES.size


@pytest.mark.system
def test_no_match_status_from_in_library(ca_env, cands, tmp_path, monkeypatch):
    """With a model library cached, in_library is computed; below 0.5 the status is NoMatch
    with the reason on the message (here a calibration that always says "not among them")."""
    from bluesky import RunEngine

    from xas_bluesky.beamline.analysis import subscribe_live_analysis

    small_model_library(tmp_path / "libs", cands.model_version)
    world = open_world(tmp_path / "libs", monkeypatch, in_coef=(-5.0, 0.0, 0.0))
    RE = RunEngine({}, context_managers=[])
    prefix = unique_prefix("NM")
    analysis = subscribe_live_analysis(
        RE, score_prefix=prefix, port=next_ca_port(), candidates=cands, cache=shared_cache(),
        open_world=world, analysis_callbacks=[],
    )  # fmt: skip
    try:
        RE(measure_plan(cands, 3, ENERGIES))
        assert analysis.wait_idle(60)
        assert wait_for(lambda: caget(prefix + "Match:NPoints-I") == ENERGIES.size)
        status = caget(prefix + "Match:Status-Sts", as_string=True)
        message = caget(prefix + "Match:Message-Name", as_string=True)
        in_library = caget(prefix + "Match:InLibrary-I")
    finally:
        analysis.shutdown()
    assert in_library == pytest.approx(1 / (1 + math.exp(5.0)), rel=1e-3)
    assert status == "NoMatch" and message.startswith("no match: in_library 0.01"), message


@pytest.mark.system
def test_a_run_without_candidates_gets_groups_only(ca_env, cands, tmp_path):
    from bluesky import RunEngine

    from xas_bluesky.beamline.analysis import subscribe_live_analysis

    RE = RunEngine({}, context_managers=[])
    prefix = unique_prefix("NC")
    analysis = subscribe_live_analysis(
        RE, score_prefix=prefix, port=next_ca_port(), cache=shared_cache(),
        open_world=open_world(tmp_path / "libs"), analysis_callbacks=[],
    )  # fmt: skip
    try:
        (uid,) = RE(measure_plan(cands, 5, ENERGIES, md=xas_md(candidates=NO_CANDIDATES)))
        assert analysis.wait_idle(60)
        assert wait_for(lambda: caget(prefix + "Match:NPoints-I") == ENERGIES.size)
        names = caget(prefix + "Match:Groups-Wfm", as_string=True)
        best = caget(prefix + "Match:Best-Name", as_string=True)
        status = caget(prefix + "Match:Status-Sts", as_string=True)
    finally:
        analysis.shutdown()
    assert sorted(names.split("\n")) == sorted(GROUPS["O"])
    assert best == "" and status == "Done"
    assert analysis.results[uid] is None  # no ranking
