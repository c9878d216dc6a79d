"""``adaptive_xanes_scan`` on a real RunEngine over the simulated beamline, steered only through
the score PVs (Channel Access) of a real live analysis; with no analysis it stops with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from live_helpers import shared_cache, small_candidates

from sim_iocs.launcher import PROBE_PV, sim_ioc_args
from xas_bluesky.resources import heldout_samples
from xas_bluesky.science.adaptive import coarse_energies
from xas_bluesky.testing import IOCFactory, next_ca_port, unique_prefix

pytestmark = pytest.mark.system  # real IOCs, tiled, RunEngine or the shipped weights


@pytest.fixture(scope="module")
def setup(ca_env, tmp_path_factory):
    """The sim beamline (clock x200) with a held-out O sample in the beam, and its devices."""
    from xas_bluesky.beamline.devices import make_devices

    tmp = tmp_path_factory.mktemp("adaptive")
    _, samples = heldout_samples("O")
    sample = samples[2]["name"]
    factory = IOCFactory(tmp / "ioc-logs")
    try:
        proc = factory(
            sim_ioc_args(slots=[f"{sample}=heldout:O:{sample}"], sample=sample, clock=200.0,
                         seed=3, offset=0.3),
            probe=PROBE_PV,
        )  # fmt: skip
        devs = make_devices(proc.info["prefix"], name_prefix="")
        cands = small_candidates(tmp / "cands.xyz", n=30, edge="O")
        yield {"devs": devs, "sample": sample, "cands": cands}
    finally:
        factory.stop_all()


def _collect(RE):
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return docs


def test_adaptive_scan_follows_the_score_pvs(setup):
    from bluesky import RunEngine

    from xas_bluesky.beamline.analysis import subscribe_live_analysis
    from xas_bluesky.beamline.epics.devices import MatchScores
    from xas_bluesky.beamline.plans import adaptive_xanes_scan

    devs = setup["devs"]
    RE = RunEngine({}, context_managers=[])
    docs = _collect(RE)
    # predicted before the scan waits on it (a cold model takes ~30 s on a loaded 2-core box)
    shared_cache().from_file(setup["cands"], "O")
    prefix = unique_prefix("AD")
    analysis = subscribe_live_analysis(
        RE, score_prefix=prefix, port=next_ca_port(), candidates=str(setup["cands"]),
        cache=shared_cache(),
    )  # fmt: skip
    try:
        scores = MatchScores(prefix, name="scores", wait_timeout=60)
        scores.wait_for_connection(timeout=10)
        (uid,) = RE(
            adaptive_xanes_scan(devs.mono, devs.det, scores, edge="O", max_points=20,
                                sample=setup["sample"], sample_changer=devs.sample_changer),
        )  # fmt: skip
    finally:
        analysis.shutdown()
    start = next(d for n, d in docs if n == "start")
    stop = next(d for n, d in docs if n == "stop")
    assert start["plan_name"] == "adaptive_xanes_scan" and start["xas_element"] == "O"
    assert stop["exit_status"] == "success"
    assert stop["reason"].startswith(("confident", "budget")), stop["reason"]
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    primary = [d for n, d in docs if n == "event" and streams[d["descriptor"]] == "primary"]
    decisions = [d for n, d in docs if n == "event" and streams[d["descriptor"]] == "adaptive"]
    energies = np.array([e["data"]["mono_energy"] for e in primary])
    n_coarse = coarse_energies("O").size
    assert n_coarse < len(primary) <= 20
    np.testing.assert_allclose(energies[:n_coarse], coarse_energies("O"), atol=0.05)
    # every point after the coarse pass is where the analysis pointed (or a gap-filling fallback
    # inside the edge window when its recommendation was already measured)
    assert len(decisions) == len(primary) - n_coarse + 1
    for k, dec in enumerate(decisions[:-1]):
        assert dec["data"]["scores_npoints"] == n_coarse + k  # it waited for that point's score
        target = dec["data"]["scores_next_energy"]
        measured_next = energies[n_coarse + k]
        if abs(measured_next - target) > 0.05:
            assert 529.0 <= measured_next <= 550.0 and np.min(
                np.abs(energies[: n_coarse + k] - target)) < 0.06  # fmt: skip
    assert analysis.results[uid].n_points == len(primary)


def test_adaptive_scan_stops_when_no_analysis_answers(setup):
    """Score PVs up, but nothing analysing: after the coarse pass the scan waits (timeout) and
    stops with the reason in the stop document; the RunEngine is fine."""
    from bluesky import RunEngine

    from xas_bluesky.beamline.epics.devices import MatchScores
    from xas_bluesky.beamline.epics.score_ioc import ScoreServer
    from xas_bluesky.beamline.plans import adaptive_xanes_scan

    devs = setup["devs"]
    prefix = unique_prefix("DEAD")
    server = ScoreServer(prefix, port=next_ca_port()).start()
    RE = RunEngine({}, context_managers=[])
    docs = _collect(RE)
    try:
        scores = MatchScores(prefix, name="scores")
        scores.wait_for_connection(timeout=10)
        RE(adaptive_xanes_scan(devs.mono, devs.det, scores, edge="O", score_timeout=2.0))
    finally:
        server.stop()
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "success"
    assert stop["reason"].startswith("analysis-timeout"), stop["reason"]
    n_events = sum(1 for n, _ in docs if n == "event")
    assert n_events == coarse_energies("O").size  # no blind points after the coarse pass
    assert RE.state == "idle"


def _landed_measure_point(mono, det, energy, readables):
    """measure_point as landed: a checkpoint before the point, none after it."""
    import bluesky.plan_stubs as bps

    yield from bps.checkpoint()
    yield from bps.mv(mono, energy)
    return (yield from bps.trigger_and_read(list(readables)))


@pytest.mark.parametrize("landed", [True, False], ids=["landed-plan", "fixed-plan"])
def test_a_beam_dump_during_the_adaptive_scan(setup, monkeypatch, landed):
    """The simulated ring dumps right after the first point the analysis chose, while the plan
    waits for its score; the profile's kind of ring suspender trips, the scan waits for the
    refill and resumes.  The landed plan resumed by measuring that point again (a second event
    with the same seq_num: 21 points scored on a 20-point budget); the fixed plan measures every
    energy once, and the analysis counts a repeat once in any case."""
    import time
    from collections import Counter

    import epics
    from bluesky import RunEngine
    from bluesky.suspenders import SuspendFloor
    from ophyd import EpicsSignalRO

    from xas_bluesky.beamline.analysis import subscribe_live_analysis
    from xas_bluesky.beamline.epics.devices import MatchScores
    from xas_bluesky.beamline.plans import adaptive as adaptive_mod
    from xas_bluesky.beamline.plans import adaptive_xanes_scan

    if landed:
        monkeypatch.setattr(adaptive_mod, "measure_point", _landed_measure_point)
    devs = setup["devs"]
    ring_pv = devs.ring_current.pvname
    RE = RunEngine({}, context_managers=[])
    docs = _collect(RE)
    monitor = EpicsSignalRO(ring_pv, name="ring_monitor", auto_monitor=True)
    monitor.wait_for_connection(timeout=10)
    susp = SuspendFloor(monitor, 100.0, resume_thresh=300.0, sleep=0.2)
    RE.install_suspender(susp)
    n_coarse = coarse_energies("O").size
    target = n_coarse + 1
    tripped: list[bool] = []

    def dump(name, doc):
        if name == "event" and doc["seq_num"] == target and not tripped:
            if doc["data"].get("mono_energy") is None:
                return  # the adaptive stream's event
            epics.caput(ring_pv.replace("Current-I", "Sim:Dump-SP"), 0.6 * 200.0, wait=True)
            deadline = time.monotonic() + 5
            while not susp.tripped and time.monotonic() < deadline:
                time.sleep(0.005)
            tripped.append(susp.tripped)

    RE.subscribe(dump)
    shared_cache().from_file(setup["cands"], "O")  # predicted before the scan waits on it
    prefix = unique_prefix("DUMP")
    analysis_docs: list[tuple[str, dict]] = []
    analysis = subscribe_live_analysis(
        RE, score_prefix=prefix, port=next_ca_port(), candidates=str(setup["cands"]),
        cache=shared_cache(), analysis_callbacks=[lambda n, d: analysis_docs.append((n, d))],
    )  # fmt: skip
    try:
        scores = MatchScores(prefix, name="scores", wait_timeout=60)
        scores.wait_for_connection(timeout=10)
        (uid,) = RE(
            adaptive_xanes_scan(devs.mono, devs.det, scores, edge="O", max_points=20,
                                threshold=1.01, score_timeout=30.0, sample=setup["sample"],
                                sample_changer=devs.sample_changer,
                                ring_current=devs.ring_current),
        )  # fmt: skip
        assert analysis.wait_idle(60)
    finally:
        analysis.shutdown()
        RE.remove_suspender(susp)
    assert tripped == [True]
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "success" and stop["reason"].startswith("budget"), stop
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    primary = [d for n, d in docs if n == "event" and streams[d["descriptor"]] == "primary"]
    seqs = Counter(e["seq_num"] for e in primary)
    energies = Counter(round(e["data"]["mono_energy_setpoint"], 3) for e in primary)
    last = [d["data"] for n, d in analysis_docs if n == "event"][-1]
    result = analysis.results[uid]
    if landed:  # the fault: the point before the dump measured twice, under one seq_num
        assert len(primary) == 21 and seqs[target] == 2
        assert sorted(energies.values())[-1] == 2
        assert last["n_duplicates"] == 1  # ... and now counted once by the analysis
    else:
        assert len(primary) == 20 and set(seqs.values()) == {1}
        assert set(energies.values()) == {1}, energies
        assert last["n_duplicates"] == 0
    assert sorted(seqs) == list(range(1, 21)) and last["gaps"] == 0
    assert result.n_points == 20 and last["n_events"] == 20


def test_adaptive_scan_stops_with_no_match(setup, tmp_path, monkeypatch):
    """The analysis says NoMatch (in_library < 0.5; here a calibration that always says so):
    the plan stops with reason no-match, after its coarse pass and no_match_min_points."""
    from bluesky import RunEngine
    from test_open_world_live import open_world, small_model_library

    from xas_bluesky.beamline.analysis import subscribe_live_analysis
    from xas_bluesky.beamline.epics.devices import MatchScores
    from xas_bluesky.beamline.plans import adaptive_xanes_scan

    devs = setup["devs"]
    cands = shared_cache().from_file(setup["cands"], "O")
    small_model_library(tmp_path / "libs", cands.model_version)
    world = open_world(tmp_path / "libs", monkeypatch, in_coef=(-5.0, 0.0, 0.0))
    RE = RunEngine({}, context_managers=[])
    docs = _collect(RE)
    prefix = unique_prefix("NMP")
    analysis = subscribe_live_analysis(
        RE, score_prefix=prefix, port=next_ca_port(), candidates=str(setup["cands"]),
        cache=shared_cache(), open_world=world, analysis_callbacks=[],
    )  # fmt: skip
    try:
        scores = MatchScores(prefix, name="scores", wait_timeout=60)
        scores.wait_for_connection(timeout=10)
        RE(
            adaptive_xanes_scan(devs.mono, devs.det, scores, edge="O", max_points=40, threshold=1.01,
                                no_match_min_points=18, sample=setup["sample"],
                                sample_changer=devs.sample_changer),
        )  # fmt: skip
    finally:
        analysis.shutdown()
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "success"
    assert stop["reason"].startswith("no-match after"), stop["reason"]
    assert "in_library" in stop["reason"]
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    primary = [d for n, d in docs if n == "event" and streams[d["descriptor"]] == "primary"]
    # never before the minimum; the groups lag the scores by a point or two
    assert 18 <= len(primary) <= 22, len(primary)
    decisions = [d for n, d in docs if n == "event" and streams[d["descriptor"]] == "adaptive"]
    assert decisions[-1]["data"]["scores_status"] == "NoMatch"
    assert decisions[-1]["data"]["scores_groups"]


def test_flagged_points_do_not_spend_the_budget():
    """The policy counts scored points against ``max_points``: a flagged one is measured again,
    at most ``max_flagged`` of them (default: ``max_points``) so that a dead detector ends."""
    from xas_bluesky.science.adaptive import STOP_BUDGET, AdaptivePolicy

    policy = AdaptivePolicy("O", max_points=20)
    measured = np.linspace(527.0, 560.0, 20)
    assert policy.decide(measured, 0.5, 535.1).reason == STOP_BUDGET
    assert policy.decide(measured, 0.5, 535.1, n_flagged=3).energy == pytest.approx(535.1)
    more = np.linspace(527.0, 560.0, 23)
    assert policy.decide(more, 0.5, 535.1, n_flagged=3).reason == STOP_BUDGET
    dead = np.linspace(527.0, 560.0, 40)  # every reading flagged: 20 more, then stop
    assert policy.decide(dead, 0.5, 535.1, n_flagged=40).reason == STOP_BUDGET
    assert (
        AdaptivePolicy("O", max_points=20, max_flagged=0)
        .decide(measured, 0.5, 535.1, n_flagged=3)
        .reason
        == STOP_BUDGET
    )
