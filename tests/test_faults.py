"""Bad readings and a beam dump from the simulated beamline, through a real RunEngine and the live
analysis (score PVs, analysis run), scored with the shipped model: each fault is reproduced on
the same documents the way the landed analysis scored them (every point into the comparator),
then shown flagged and harmless (``docs/faults.rst``)."""

from __future__ import annotations

import numpy as np
import pytest
from live_helpers import cagets, shared_cache, small_candidates

from sim_iocs.launcher import PROBE_PV, sim_ioc_args
from xas_bluesky.testing import IOCFactory, next_ca_port, unique_prefix

pytestmark = pytest.mark.system  # real IOCs, tiled, RunEngine or the shipped weights

#: a held-out O sample that is among the first 30 candidates of the shipped library
SAMPLE = "qm9_004819"
CLOCK = 200.0


@pytest.fixture(scope="module")
def beam(ca_env, tmp_path_factory):
    """The sim beamline (clock x200, no mono offset) with SAMPLE in the beam, its devices and 30
    candidates (SAMPLE among them)."""
    from xas_bluesky.beamline.devices import make_devices

    tmp = tmp_path_factory.mktemp("faults")
    factory = IOCFactory(tmp / "ioc-logs")
    try:
        proc = factory(
            sim_ioc_args(slots=[f"{SAMPLE}=heldout:O:{SAMPLE}"], sample=SAMPLE, clock=CLOCK,
                         seed=11, offset=0.0),
            probe=PROBE_PV,
        )  # fmt: skip
        prefix = proc.info["prefix"]
        path = small_candidates(tmp / "c30.xyz", n=30, edge="O")
        cands = shared_cache().from_file(path, "O")
        assert SAMPLE in cands.names
        yield {"prefix": prefix, "devs": make_devices(prefix), "path": path, "cands": cands}
    finally:
        factory.stop_all()


def _scan(beam, session, at: int | None = None, put: tuple[str, object] | None = None):
    """A 33-point TEY scan (527-559 eV, 1 eV) of SAMPLE with the ring current read, analysed
    live by ``session``; ``put`` = (PV suffix, value) is put when event ``at - 1`` is emitted
    (a glitch then spoils point ``at``).  Returns the run's uid and raw documents."""
    import epics
    from bluesky import RunEngine

    from xas_bluesky.beamline.plans import Region, xanes_scan

    devs = beam["devs"]
    docs: list[tuple[str, dict]] = []

    def record(name, doc):
        docs.append((name, doc))
        if put and name == "event" and doc["seq_num"] == at - 1:
            epics.caput(beam["prefix"] + put[0], put[1], wait=True)

    RE = RunEngine({}, context_managers=[])
    RE.subscribe(session)
    (uid,) = RE(
        xanes_scan(devs.mono, devs.det, edge="O", regions=[Region(527.0, 559.0, 1.0, 1.0)],
                   ring_current=devs.ring_current),
        record,
    )  # fmt: skip
    assert session.wait_idle(60)
    return uid, docs


@pytest.fixture
def session(beam):
    from xas_bluesky.beamline.analysis import AnalysisSession

    out: list[tuple[str, dict]] = []
    s = AnalysisSession(
        score_prefix=unique_prefix("F"), port=next_ca_port(), candidates=str(beam["path"]),
        cache=shared_cache(), analysis_callbacks=[lambda n, d: out.append((n, d))],
    )  # fmt: skip
    s.docs = out  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.shutdown(30)


def _columns(docs):
    ev = [d["data"] for n, d in docs if n == "event"]
    return (np.array([e[k] for e in ev]) for k in ("mono_energy", "det_i0", "det_tey"))


def _score_every_point(cands, docs):
    """What the landed analysis did: mu = TEY / I0 of every point with its Poisson noise into
    the comparator, nothing checked but NaN and I0 <= 0; the best candidate and p."""
    from xas_bluesky.science.compare import Comparator

    energy, i0, tey = _columns(docs)
    mu = tey / i0
    sigma = np.sqrt(np.maximum(tey, 1) / i0**2 + mu**2 * np.maximum(i0, 1) / i0**2)
    comp = Comparator(cands.energy, cands.mean, cands.std, cands.names, **cands.calibration)
    for k in range(energy.size):
        comp.add_points(energy[k : k + 1], mu[k : k + 1], sigma[k : k + 1])
    r = comp.result()
    return r.best_name, float(r.best_probability)


def _ceiling(beam) -> float:
    """The largest probability the shipped O calibration gives among the beam's candidates."""
    from xas_bluesky.science.compare import calibration_for, recalibrate_top
    from xas_bluesky.science.library_cache import shipped_metadata

    cal = calibration_for(shipped_metadata("O"))
    c = len(beam["cands"].names)
    eps = cal.get("outlier_probability", 0.0)
    p = np.full(c, eps / c)
    p[0] += 1.0 - eps
    if cal.get("top_calibration") is not None:
        p = recalibrate_top(p, cal["top_calibration"], 33)
    return float(p[0])


def _analysis_events(session):
    return [d["data"] for n, d in session.docs if n == "event"]


@pytest.mark.parametrize(
    ("glitch", "at", "reason"),
    [
        ("tey:saturate", 20, "det_tey_severity = MAJOR alarm"),
        ("tey:negative", 17, "counts cannot be negative"),
        ("tey:major", 20, "det_tey_severity = MAJOR alarm"),
        ("i0:invalid", 20, "det_i0_severity = INVALID alarm"),
    ],
)
def test_a_bad_reading_is_flagged_and_the_right_candidate_wins(beam, session, glitch, at, reason):
    """One spoiled point among 33: flagged with its reason on Match:Message-Name and in the
    analysis run (n_flagged), never scored; the sample is identified.  Scored as before, a
    saturated point at 546 eV or a negative one at 543 eV made a wrong candidate win at
    p = 1.000 (measured: qm9_005225 and qm9_008014 against the sample's p = 1.000 clean)."""
    uid, docs = _scan(beam, session, at, ("Det:Sim:Glitch-SP", glitch))
    if glitch in ("tey:saturate", "tey:negative"):
        # the point scored as before, for the record: with the ensembles of the fault report
        # it made a wrong candidate win at p = 1.000; with the retrained ones this sample
        # survives it (qm9_004819 at p = 0.98 for the saturated point).  Which way it goes is
        # the model's; tests/test_engine.py reproduces the flip with fixed candidates.
        wrong, p = _score_every_point(beam["cands"], docs)
        print(f"scored as before: {wrong} p={p:.3f}")
    result = session.results[uid]
    assert result.best_name == SAMPLE and result.best_probability > 0.9
    assert result.n_points == 32
    last = _analysis_events(session)[-1]
    assert last["n_flagged"] == 1 and last["n_events"] == 33
    final = cagets(session.server.prefix + "Match:Message-Name")
    assert f"point {at} flagged: " in final and reason in final, final
    assert cagets(session.server.prefix + "Match:Status-Sts") == "Warning"
    assert not session.errors


def test_a_tiny_i0_is_one_refused_point_not_a_lost_batch(beam, session):
    """I0 = 1e-320 counts (positive: it passed the check): mu overflows.  Queued with the rest,
    the comparator used to refuse the whole batch (33 of 33 points lost); now that one point
    is refused, live and in a backlog alike."""
    from xas_bluesky.beamline.analysis import AnalysisEngine, MemorySink
    from xas_bluesky.science.compare import Comparator

    uid, docs = _scan(beam, session, 20, ("Det:Sim:Glitch-SP", "i0:tiny"))
    energy, i0, tey = _columns(docs)
    assert i0[19] == pytest.approx(1e-320)
    cands = beam["cands"]
    comp = Comparator(cands.energy, cands.mean, cands.std, cands.names, **cands.calibration)
    with np.errstate(over="ignore", divide="ignore"):
        mu = tey / i0
    with pytest.raises(ValueError, match="not finite"):  # the fault: one call, all refused
        comp.add_points(energy, mu, np.full(mu.size, 1e-3))
    assert comp.n_points == 0
    assert session.results[uid].n_points == 32 and session.results[uid].best_name == SAMPLE
    # the same documents as one backlog (one flush): one point refused, 32 scored
    sink = MemorySink()
    engine = AnalysisEngine([sink], candidates=cands, cache=shared_cache())
    for name, doc in docs:
        engine(name, doc)
    final = sink.finals[uid]
    assert final.n_points == 32 and final.n_flagged == 1 and "overflows" in final.message


def test_a_beam_dump_is_flagged_not_scored(beam, session):
    """The ring dumps for 30 simulated seconds at point 25 (no suspender: the scan goes on).
    The points measured meanwhile (I0 at dark counts, ring current 0) are flagged -- beam
    down -- and the sample is identified from the rest at the calibration's ceiling (its
    outlier probability caps p at 1 - eps + eps/C, and the top-label map takes that to ~0.95
    for O); every point scored, as before, p fell to ~0.09."""
    uid, docs = _scan(beam, session, 25, ("Ring:Sim:Dump-SP", 30.0))
    energy, i0, _ = _columns(docs)
    down = i0 < 0.2 * np.median(i0[:9])
    assert down.sum() >= 2, i0  # the dump was seen by the detector
    ring = np.array([d["data"]["ring_current"] for n, d in docs if n == "event"])
    assert (ring < 10).any()
    result = session.results[uid]
    last = _analysis_events(session)[-1]
    assert last["n_flagged"] >= down.sum() and result.n_points == 33 - last["n_flagged"]
    assert result.best_name == SAMPLE and result.best_probability > 0.98 * _ceiling(beam)
    # scored as before, the dark-count points took the confidence away (measured: p ~ 0.09)
    _, p_before = _score_every_point(beam["cands"], docs)
    assert p_before < 0.5
    messages = " ".join(d["message"] for d in _analysis_events(session))
    assert "beam" in messages  # "beam dump or shutter closed" / "beam down"
