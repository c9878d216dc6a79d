"""The live analysis on a real RunEngine, publishing to a real in-process score IOC."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from live_helpers import (
    assert_published,
    caget,
    cagets,
    measure_plan,
    shared_cache,
    small_candidates,
    wait_for,
    xas_md,
)

from xas_bluesky.beamline.analysis import AnalysisSession, xas_run_router
from xas_bluesky.beamline.epics.score_ioc import ScoreServer
from xas_bluesky.testing import next_ca_port, unique_prefix

pytestmark = pytest.mark.system  # real IOCs, tiled, RunEngine or the shipped weights

ENERGIES = np.arange(527.0, 560.0, 0.5)
TRUTH = 5


@pytest.fixture(scope="module")
def cand_file(tmp_path_factory):
    return small_candidates(tmp_path_factory.mktemp("cands") / "c24.xyz", 24)


@pytest.fixture(scope="module")
def cands(cand_file):
    return shared_cache().from_file(cand_file, "O")


@pytest.fixture
def server(ca_env):
    s = ScoreServer(unique_prefix("L"), port=next_ca_port()).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def make_analysis(server, cand_file):
    made = []

    def make(**kw):
        docs = []
        kw.setdefault("candidates", str(cand_file))
        kw.setdefault("cache", shared_cache())
        a = AnalysisSession(
            score_server=server, analysis_callbacks=[lambda n, d: docs.append((n, d))], **kw
        )
        a.docs = docs
        made.append(a)
        return a

    yield make
    for a in made:
        a.shutdown(10)


def _run(RE, plan):
    (uid,) = RE(plan)
    return uid


def test_identifies_sample_and_publishes(RE_fresh, server, make_analysis, cands):
    analysis = make_analysis()
    RE_fresh.subscribe(analysis)
    uid = _run(RE_fresh, measure_plan(cands, TRUTH, ENERGIES))
    assert analysis.wait_idle(30)
    p = server.prefix
    assert wait_for(lambda: caget(p + "Match:NPoints-I") == len(ENERGIES))
    assert cagets(p + "Match:RunUID-I") == uid
    result = analysis.results[uid]
    assert_published(p, result, cands.names[TRUTH])
    assert cagets(p + "Match:BestSmiles-Name") == cands.smiles[result.best_index]
    # what the analysis computed, and far above a uniform guess (the value itself depends on the
    # model's calibrated temperature, which tempers even a perfect model's likelihood)
    assert caget(p + "Match:BestProb-I") == pytest.approx(result.best_probability, rel=1e-6)
    assert caget(p + "Match:BestProb-I") > 5.0 / len(cands)
    assert cagets(p + "Match:Status-Sts") == "Done"
    top = cagets(p + "Match:TopNames-Wfm").split("\n")
    assert top[0] == result.best_name and len(top) == 10
    scores = caget(p + "Match:TopScores-Wfm")
    assert np.all(np.diff(scores) <= 1e-12) and 0 < scores.sum() <= 1 + 1e-6
    assert 526 <= caget(p + "Match:NextEnergy-I") <= 575
    assert caget(p + "Match:NCandidates-I") == len(cands)

    # the analysis run: linked to the raw run, one event per update, stopped after it
    names = [n for n, _ in analysis.docs]
    assert names[0] == "start" and names[1] == "descriptor" and names[-1] == "stop"
    start = analysis.docs[0][1]
    assert start["original_run_uid"] == uid
    assert analysis.analysis_uids[uid] == start["uid"]
    events = [d for n, d in analysis.docs if n == "event"]
    assert 1 <= len(events) <= len(ENERGIES) + 1  # + the run's final word
    assert events[-1]["data"]["n_events"] == len(ENERGIES)
    assert events[-1]["data"]["best_name"] == result.best_name
    assert analysis.docs[-1][1]["exit_status"] == "success"
    assert not analysis.errors


def test_other_runs_ignored(RE_fresh, server, make_analysis, cands):
    import bluesky.plan_stubs as bps
    from ophyd.sim import det

    analysis = make_analysis()
    RE_fresh.subscribe(analysis)

    def other():
        yield from bps.open_run(md={"plan_name": "not xas"})
        yield from bps.trigger_and_read([det])
        yield from bps.close_run()

    RE_fresh(other())
    # XAS metadata but the data keys are missing from the stream: followed, nothing scored
    md = xas_md(xas_fields={"energy": "nope", "i0": "det_i0", "signal": "det_tey"})
    RE_fresh(measure_plan(cands, TRUTH, ENERGIES[:3], md=md))
    assert analysis.wait_idle(30)
    assert [n for n, _ in analysis.docs].count("start") == 1
    assert not [d for n, d in analysis.docs if n == "event"]
    assert caget(server.prefix + "Match:NPoints-I") == 0


def test_event_pages_and_router(server, make_analysis, cands):
    """event_page documents (e.g. from a remote source) are scored like events, via RunRouter."""
    from event_model import compose_run, pack_event_page

    analysis = make_analysis()
    router = xas_run_router(analysis)
    run = compose_run(metadata=xas_md())
    router("start", run.start_doc)
    desc = run.compose_descriptor(
        name="primary",
        data_keys={
            k: {"dtype": "number", "shape": [], "source": "sim"}
            for k in ("mono_energy", "det_i0", "det_tey")
        },
    )
    router("descriptor", desc.descriptor_doc)
    rng = np.random.default_rng(1)
    evs = []
    for k, e in enumerate(ENERGIES):
        mu = float(np.interp(e, cands.energy, cands.mean[TRUTH]))
        i0 = float(rng.poisson(1e6))
        data = {
            "mono_energy": e,
            "det_i0": i0,
            "det_tey": float(rng.poisson(i0 * (0.02 + 0.05 * mu))),
        }
        evs.append(
            desc.compose_event(
                data=data, timestamps={k2: time.time() for k2 in data}, seq_num=k + 1
            )
        )
    for a in range(0, len(evs), 10):
        router("event_page", pack_event_page(*evs[a : a + 10]))
    router("stop", run.compose_stop())
    assert analysis.wait_idle(30)
    p = server.prefix
    assert wait_for(lambda: caget(p + "Match:NPoints-I") == len(ENERGIES))
    assert_published(p, analysis.results[run.start_doc["uid"]], cands.names[TRUTH])
    assert analysis.docs[0][1]["original_run_uid"] == run.start_doc["uid"]


def test_bad_readings_refused_and_shown(RE_fresh, server, make_analysis, cands):
    analysis = make_analysis()
    RE_fresh.subscribe(analysis)
    bad = {3: (float("nan"), 1000.0), 7: (0.0, 500.0), 9: (1e6, float("inf"))}
    uid = _run(RE_fresh, measure_plan(cands, TRUTH, ENERGIES, bad=bad))
    assert analysis.wait_idle(30)
    p = server.prefix
    assert wait_for(lambda: caget(p + "Match:NPoints-I") == len(ENERGIES))
    assert cagets(p + "Match:RunUID-I") == uid
    assert cagets(p + "Match:Status-Sts") == "Warning"
    msg = cagets(p + "Match:Message-Name")
    assert "flagged" in msg and "det_" in msg
    result = analysis.results[uid]
    assert_published(p, result, cands.names[TRUTH], top=5)
    assert result.n_points == len(ENERGIES) - len(bad)  # never scored
    assert math.isfinite(caget(p + "Match:BestProb-I"))


def test_malformed_candidates(RE_fresh, server, make_analysis, cands, cand_file, tmp_path):
    # one broken frame among good ones: skipped, reported, the rest scored
    text = cand_file.read_text()
    broken = tmp_path / "broken.xyz"
    broken.write_text("3\nbroken_one\nO 0 0 0\nH 0 0 0.1\nXx 1 1 1\n" + text)
    analysis = make_analysis(candidates=str(broken))
    RE_fresh.subscribe(analysis)
    uid = _run(RE_fresh, measure_plan(cands, TRUTH, ENERGIES[:20]))
    assert analysis.wait_idle(60)
    p = server.prefix
    assert cagets(p + "Match:RunUID-I") == uid
    assert cagets(p + "Match:Status-Sts") == "Warning"
    assert "skipped" in cagets(p + "Match:Message-Name")
    assert caget(p + "Match:NCandidates-I") == len(cands)

    # nothing usable: the run still completes, the status says why, no scores are invented
    junk = tmp_path / "junk.xyz"
    junk.write_text("2\nbad\nQq 0 0 0\nO 0 0 nan\n")
    md = xas_md(candidates=str(junk))
    uid2 = _run(RE_fresh, measure_plan(cands, TRUTH, ENERGIES[:5], md=md))
    assert analysis.wait_idle(30)
    assert cagets(p + "Match:RunUID-I") == uid2
    assert cagets(p + "Match:Status-Sts") == "Error"
    assert "junk.xyz" in cagets(p + "Match:Message-Name")
    assert caget(p + "Match:NPoints-I") == 0
    assert cagets(p + "Match:Best-Name") == ""
    assert RE_fresh.state == "idle"


def test_slow_analysis_never_blocks_the_runengine(RE_fresh, server, make_analysis, cands):
    """A comparator 20x slower than the scan: the RE runs at full speed, updates coalesce."""
    from xas_bluesky.science.compare import Comparator

    class Slow(Comparator):
        def add_points(self, *a, **kw):
            time.sleep(0.1)
            return super().add_points(*a, **kw)

    analysis = make_analysis(comparator_factory=Slow)
    RE_fresh.subscribe(analysis)
    t0 = time.perf_counter()
    uid = _run(RE_fresh, measure_plan(cands, TRUTH, ENERGIES))
    t_run = time.perf_counter() - t0
    assert t_run < 0.1 * len(ENERGIES) / 2, f"RunEngine slowed to {t_run:.2f} s"
    assert analysis.wait_idle(60)
    p = server.prefix
    assert wait_for(lambda: caget(p + "Match:NPoints-I") == len(ENERGIES))
    assert cagets(p + "Match:RunUID-I") == uid
    assert_published(p, analysis.results[uid], cands.names[TRUTH])
    n_updates = sum(1 for n, _ in analysis.docs if n == "event")
    assert n_updates < len(ENERGIES)  # several points per update


def test_exception_in_analysis_reaches_status_not_runengine(RE_fresh, server, make_analysis, cands):
    from xas_bluesky.science.compare import Comparator

    class Broken(Comparator):
        def result(self):
            raise RuntimeError("comparator exploded")

    analysis = make_analysis(comparator_factory=Broken)
    RE_fresh.subscribe(analysis)
    _run(RE_fresh, measure_plan(cands, TRUTH, ENERGIES[:6]))
    assert RE_fresh.state == "idle"
    assert analysis.wait_idle(30)
    p = server.prefix
    assert cagets(p + "Match:Status-Sts") == "Error"
    assert "comparator exploded" in cagets(p + "Match:Message-Name")
    assert cagets(p + "Match:Best-Name") == ""  # no score was made up


def test_ioc_restart_mid_run(RE_fresh, server, make_analysis, cands):
    """The score IOC's server stops during a run and starts again: the RE never notices, the
    analysis carries on and the PVs show the whole run afterwards."""
    import epics

    analysis = make_analysis()
    RE_fresh.subscribe(analysis)
    p = server.prefix
    arrivals = []
    mon = epics.PV(p + "Match:NPoints-I", auto_monitor=True)
    mon.add_callback(lambda value=None, **kw: arrivals.append(value))
    assert mon.wait_for_connection(5)

    def between(k):
        if k == 15:
            server.stop()  # a dead IOC: publishing must not fail or block
        if k == 40:
            server.start()

    t0 = time.perf_counter()
    uid = _run(RE_fresh, measure_plan(cands, TRUTH, ENERGIES, between=between))
    assert time.perf_counter() - t0 < 30
    assert analysis.wait_idle(30)
    assert wait_for(lambda: caget(p + "Match:NPoints-I") == len(ENERGIES), 30)
    assert cagets(p + "Match:RunUID-I") == uid
    assert_published(p, analysis.results[uid], cands.names[TRUTH])
    assert wait_for(lambda: len(ENERGIES) in arrivals, 30)  # the old monitor came back
    assert not analysis.errors


@pytest.fixture
def RE_fresh():
    from bluesky import RunEngine

    RE = RunEngine({}, call_returns_result=False)
    yield RE
