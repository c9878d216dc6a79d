"""The analysis engine alone: plain documents in, match summaries out to an in-memory sink.

No IOC, no tiled, no model weights: the candidates are synthetic spectra on the model grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from event_model import compose_run

from xas_bluesky.beamline.analysis import AnalysisEngine, AnalysisSink, MemorySink
from xas_bluesky.contracts import ANALYSIS_KEYS, PV_ATTRS, TILED_KEYS, MatchSummary
from xas_bluesky.science.candidates import CandidateSet

GRID = np.arange(526.0, 575.0 + 1e-9, 0.25)
FIELDS = {"energy": "mono_energy", "i0": "det_i0", "signal": "det_tey"}
TRUTH = 3


def _spectrum(peak: float) -> np.ndarray:
    step = 1.0 / (1.0 + np.exp(-(GRID - 532.0) / 0.7))
    return step + 1.5 * np.exp(-0.5 * ((GRID - peak) / 0.8) ** 2)


@pytest.fixture
def cands() -> CandidateSet:
    peaks = 531.0 + 2.0 * np.arange(8)
    mean = np.stack([_spectrum(p) for p in peaks])
    return CandidateSet(
        names=[f"c{i}" for i in range(8)],
        smiles=[f"C{i}" for i in range(8)],
        energy=GRID,
        mean=mean,
        std=np.full_like(mean, 0.02),
        edge="O",
        model_version="synthetic",
        keys=[f"k{i}" for i in range(8)],
        calibration={"temperature": 1.0, "temperature_exponent": 0.0},
    )


def _run(energies, cands, *, i0=None, md=None, extra=None, data_keys=None, fields=None):
    """The documents of one XAS run measuring candidate TRUTH in TEY counts.

    ``extra`` maps more data keys to their values per point; ``data_keys`` updates the
    descriptor's; ``fields`` the start document's ``xas_fields``."""
    fields = {**FIELDS, **(fields or {})}
    run = compose_run(
        metadata={"xas_element": "O", "xas_mode": "TEY", "xas_fields": fields, **(md or {})}
    )
    extra = extra or {}
    keys = {
        k: {"dtype": "number", "shape": [], "source": "sim"} for k in [*FIELDS.values(), *extra]
    }
    for k, v in (data_keys or {}).items():
        keys[k].update(v)
    desc = run.compose_descriptor(name="primary", data_keys=keys)
    mu = np.interp(energies, GRID, cands.mean[TRUTH])
    i0 = np.full(len(energies), 1e6) if i0 is None else np.asarray(i0, float)
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    for j, (e, m) in enumerate(zip(energies, mu, strict=True)):
        data = {"mono_energy": float(e), "det_i0": float(i0[j]), "det_tey": float(m * 1e5)}
        data.update({k: float(v[j]) for k, v in extra.items()})
        ev = desc.compose_event(data=data, timestamps={k: 0.0 for k in data}, seq_num=j + 1)
        docs.append(("event", ev))
    docs.append(("stop", run.compose_stop()))
    return run.start_doc["uid"], docs


def _feed(engine, docs, flush_every: int | None = 1):
    """Hand ``docs`` to ``engine``, flushing after every ``flush_every`` events (None: once, at
    the end, as the worker does with a backlog)."""
    n = 0
    for name, doc in docs:
        if name == "stop":
            engine.flush()
        engine(name, doc)
        if name == "event":
            n += 1
            if flush_every and n % flush_every == 0:
                engine.flush()


def test_scores_plain_documents(cands):
    sink = MemorySink()
    engine = AnalysisEngine([sink], candidates=cands)
    energies = np.arange(528.0, 550.0, 0.5)
    uid, docs = _run(energies, cands)
    for name, doc in docs[:-1]:
        engine(name, doc)
    assert not [u for u, scored in sink.updates if scored]  # nothing scored before a flush
    engine.flush()
    scored = [u for u, s in sink.updates if s]
    assert len(scored) == 1  # one update covers every point that arrived
    s = scored[0]
    assert s.run_uid == uid and s.status == "Running"
    assert s.n_events == s.n_points == len(energies)
    assert s.best_name == "c3" and s.best_smiles == "C3" and s.best_probability > 0.9
    assert list(s.top_names)[0] == "c3" and len(s.top_names) == len(cands)
    assert math.isclose(sum(s.top_probabilities), 1.0, rel_tol=1e-6)
    engine(*docs[-1])
    final = sink.finals[uid]
    assert final.status == "Done" and final.best_name == "c3"
    assert engine.results[uid].best_name == "c3"
    assert not engine.errors


def test_bad_points_refused_and_counted(cands):
    sink = MemorySink()
    engine = AnalysisEngine([sink], candidates=cands)
    energies = np.arange(528.0, 540.0, 0.5)
    i0 = np.full(energies.size, 1e6)
    i0[[2, 5]] = [0.0, np.nan]  # a zero and a NaN I0: refused, never scored
    uid, docs = _run(energies, cands, i0=i0)
    for name, doc in docs:
        engine(name, doc)
    final = sink.finals[uid]
    assert final.n_events == energies.size  # the plan's own count: refused points included
    assert final.n_points == energies.size - 2
    assert final.n_flagged == 2
    assert final.status == "Warning" and "flagged" in final.message


def test_other_runs_and_streams_are_ignored(cands):
    sink = MemorySink()
    engine = AnalysisEngine([sink], candidates=cands)
    run = compose_run(metadata={"plan_name": "count"})
    engine("start", run.start_doc)
    engine("stop", run.compose_stop())
    assert not sink.updates and not sink.finals


def test_wrong_edge_is_an_error_not_a_crash(cands):
    sink = MemorySink()
    engine = AnalysisEngine([sink], candidates=cands)
    uid, docs = _run(np.arange(528.0, 540.0, 1.0), cands, md={"xas_element": "N"})
    for name, doc in docs:
        engine(name, doc)
    assert sink.finals[uid].status == "Error" and "edge" in sink.finals[uid].message
    assert uid not in engine.results and engine.errors


def test_a_failing_sink_does_not_stop_the_others(cands):
    class Broken(AnalysisSink):
        def update(self, run, summary, scored):
            raise RuntimeError("disk full")

    sink = MemorySink()
    engine = AnalysisEngine([Broken(), sink], candidates=cands)
    uid, docs = _run(np.arange(528.0, 540.0, 1.0), cands)
    for name, doc in docs:
        engine(name, doc)
    assert sink.finals[uid].best_name == "c3"
    assert any("disk full" in e for e in engine.errors)


def test_every_surface_name_comes_from_a_summary_field():
    fields = set(MatchSummary().as_dict())
    for surface in (PV_ATTRS, ANALYSIS_KEYS, TILED_KEYS):
        assert set(surface) <= fields


# -- faults: bad readings ---------------------------------------------------------------------
E33 = np.linspace(527.0, 559.0, 33)


@pytest.mark.parametrize("index", [5, 16, 22])
def test_a_saturated_point_is_flagged_not_scored(cands, index, monkeypatch):
    """One TEY point at a 24-bit scaler's full scale among 33: with the saturation check and
    the comparator's glitch check off a wrong candidate wins with p = 1.000 (the fault); with
    the saturation check on the point is flagged, named on the message and the right candidate
    wins; with the saturation check off the glitch check alone sets the point aside."""
    from xas_bluesky.beamline.analysis.readings import ReadingChecks
    from xas_bluesky.science.compare import Comparator

    def final(saturation_check: bool, glitch_check: bool):
        uid, docs = _run(E33, cands)
        docs[2 + index][1]["data"]["det_tey"] = float(2**24 - 1)
        sink = MemorySink()
        checks = ReadingChecks() if saturation_check else ReadingChecks(saturation=None)
        with monkeypatch.context() as m:
            if not glitch_check:
                m.setattr(Comparator, "GLITCH_Z", np.inf)
            _feed(AnalysisEngine([sink], candidates=cands, checks=checks), docs, flush_every=None)
        return sink.finals[uid]

    off, on_, glitch = final(False, False), final(True, True), final(False, True)
    # the saturated point drags the fit to another candidate, confidently
    assert off.best_name != "c3" and off.best_probability > 0.99
    assert off.n_flagged == 0 and off.n_points == 33
    assert on_.best_name == "c3" and on_.best_probability > 0.99
    assert on_.n_flagged == 1 and on_.n_points == 32 and on_.n_events == 33
    assert on_.status == "Warning" and f"point {index + 1} flagged" in on_.message
    assert "saturated" in on_.message
    # the second line of defence: not flagged (its reading passed), but not believed either
    assert glitch.best_name == "c3" and glitch.best_probability > 0.99
    assert glitch.n_flagged == 0 and glitch.n_points == 33


def test_negative_counts_and_descriptor_limit_and_alarm_are_flagged(cands):
    """A negative TEY count, a reading at the descriptor's upper control limit, and a MAJOR and
    an INVALID alarm severity (the run's ``signal_alarm`` / ``i0_alarm`` data keys): four flagged
    points, each with its reason, none scored."""
    n = E33.size
    sev_sig, sev_i0 = np.zeros(n), np.zeros(n)
    sev_sig[12], sev_i0[20] = 2, 3  # MAJOR on the signal, INVALID on I0
    uid, docs = _run(
        E33,
        cands,
        extra={"det_tey_severity": sev_sig, "det_i0_severity": sev_i0},
        fields={"signal_alarm": "det_tey_severity", "i0_alarm": "det_i0_severity"},
        data_keys={"det_tey": {"lower_ctrl_limit": 0.0, "upper_ctrl_limit": 250_000.0}},
    )
    docs[2 + 4][1]["data"]["det_tey"] = -12.0
    docs[2 + 8][1]["data"]["det_tey"] = 250_000.0
    sink = MemorySink()
    engine = AnalysisEngine([sink], candidates=cands)
    _feed(engine, docs)
    final = sink.finals[uid]
    assert final.n_flagged == 4 and final.n_points == n - 4 and final.n_events == n
    assert final.best_name == "c3"
    messages = [u.message for u, scored in sink.updates if scored]
    assert any("point 5 flagged" in m and "negative" in m for m in messages)
    assert any("point 9 flagged" in m and "limit 250000" in m for m in messages)
    assert any("point 13 flagged" in m and "det_tey_severity = MAJOR" in m for m in messages)
    assert any("point 21 flagged" in m and "det_i0_severity = INVALID" in m for m in messages)


def test_tiny_i0_is_one_refused_point_not_a_refused_batch(cands):
    """A tiny positive I0 makes mu overflow.  All 33 points queued, one flush (a backlog): one
    point refused, 32 scored (the comparator refused the whole batch before: 0 of 33)."""
    i0 = np.full(E33.size, 1e6)
    i0[7] = 1e-320
    uid, docs = _run(E33, cands, i0=i0)
    sink = MemorySink()
    _feed(AnalysisEngine([sink], candidates=cands), docs, flush_every=None)
    final = sink.finals[uid]
    assert final.n_points == 32 and final.n_flagged == 1 and final.best_name == "c3"
    assert "point 8 flagged" in final.message and "overflows" in final.message


def test_beam_dump_i0_and_ring_current_are_flagged(cands):
    """I0 at 5% of the run's median (a beam dump seen by I0 only) and a ring current of 0 mA
    where the run records it: flagged (beam down), the rest scored."""
    n = E33.size
    i0 = np.full(n, 1e6)
    i0[[10, 11]] = 5e4
    ring = np.full(n, 400.0)
    ring[20] = 0.0
    uid, docs = _run(
        E33, cands, i0=i0, extra={"ring_current": ring}, fields={"ring_current": "ring_current"}
    )
    sink = MemorySink()
    _feed(AnalysisEngine([sink], candidates=cands), docs)
    final = sink.finals[uid]
    assert final.n_flagged == 3 and final.n_points == n - 3 and final.best_name == "c3"
    messages = [u.message for u, scored in sink.updates if scored]
    assert any("point 11 flagged" in m and "beam dump" in m for m in messages)
    assert any("point 21 flagged" in m and "ring_current = 0 mA" in m for m in messages)


# -- faults: repeated and missing events ------------------------------------------------------
def test_repeated_seq_num_is_counted_once(cands):
    """A resumed plan re-sends a rewound point with its seq_num: counted as a duplicate, not
    scored twice; NPoints (n_events) stays the plan's own count."""
    uid, docs = _run(E33[:20], cands)
    events = [d for n, d in docs if n == "event"]
    again = dict(events[9], uid="repeat-uid")  # the same seq_num 10, another event
    docs.insert(2 + 10, ("event", again))
    sink = MemorySink()
    engine = AnalysisEngine([sink], candidates=cands)
    _feed(engine, docs)
    final = sink.finals[uid]
    assert final.n_events == 20 and final.n_points == 20 and final.n_duplicates == 1
    assert engine.results[uid].n_points == 20
    assert final.gaps == 0


def test_a_repeat_of_a_flagged_point_is_scored(cands):
    """Point 10 measured while the beam was down (I0 at dark counts: flagged); the resumed plan
    measures it again under the same seq_num with the beam back: that reading is scored, once."""
    i0 = np.full(20, 1e6)
    i0[9] = 50.0
    uid, docs = _run(E33[:20], cands, i0=i0)
    events = [d for n, d in docs if n == "event"]
    again = dict(events[9], uid="again", data={**events[9]["data"], "det_i0": 1e6})
    again["data"]["det_tey"] = events[8]["data"]["det_tey"]  # a plausible reading
    docs.insert(2 + 11, ("event", again))
    docs.insert(2 + 12, ("event", dict(again, uid="third")))  # and a plain repeat of it
    sink = MemorySink()
    _feed(AnalysisEngine([sink], candidates=cands), docs)
    final = sink.finals[uid]
    assert final.n_events == 20 and final.n_points == 20
    assert final.n_flagged == 0 and final.n_duplicates == 2


def test_a_run_with_no_followed_stream_has_no_gaps(cands):
    """XAS metadata but the stream lacks the data keys: nothing followed, nothing missing."""
    uid, docs = _run(E33[:5], cands, fields={"energy": "nope"})
    sink = MemorySink()
    _feed(AnalysisEngine([sink], candidates=cands), docs)
    assert sink.finals[uid].gaps == 0 and sink.finals[uid].n_events == 0


def test_missing_events_are_gaps_with_a_warning(cands):
    """seq_nums 6 and 7 never arrive and the stop document counts 22 events of which 20 came:
    gaps = 4 (two in the middle, two at the end), status Warning."""
    uid, docs = _run(E33[:22], cands)
    docs = [d for d in docs if not (d[0] == "event" and d[1]["seq_num"] in (6, 7, 21, 22))]
    sink = MemorySink()
    _feed(AnalysisEngine([sink], candidates=cands), docs)
    during = [u for u, scored in sink.updates if scored and u.gaps]
    assert during and during[0].status == "Warning" and "missing" in during[0].message
    final = sink.finals[uid]
    assert final.gaps == 4 and final.n_events == 18 and final.status == "Warning"
    assert "4 missing" in final.message


def test_the_analysis_run_carries_the_new_counts(cands):
    """n_flagged, n_duplicates, gaps and the message are data keys of the analysis run."""
    from xas_bluesky.beamline.analysis import AnalysisRunSink

    docs_out = []
    i0 = np.full(10, 1e6)
    i0[3] = 0.0
    uid, docs = _run(E33[:10], cands, i0=i0)
    engine = AnalysisEngine(
        [AnalysisRunSink([lambda n, d: docs_out.append((n, d))])], candidates=cands
    )
    _feed(engine, docs)
    (desc,) = [d for n, d in docs_out if n == "descriptor"]
    for name in ("n_flagged", "n_duplicates", "gaps", "message", "status"):
        assert ANALYSIS_KEYS[name] in desc["data_keys"]
    last = [d for n, d in docs_out if n == "event"][-1]["data"]
    assert last["n_flagged"] == 1 and "point 4 flagged" in last["message"]


# -- faults: duplicate candidates, bounded state ----------------------------------------------
def test_duplicate_geometries_are_merged(cands):
    """The true molecule twice under two names (one geometry, one structure key): before, the
    probability was split (~0.5 each, 0.99 out of reach); merged, one candidate 'c3|c3_again'
    takes it all."""
    import dataclasses

    def with_copy(key):
        return dataclasses.replace(
            cands,
            names=[*cands.names, "c3_again"],
            smiles=[*cands.smiles, "C3"],
            mean=np.vstack([cands.mean, cands.mean[TRUTH]]),
            std=np.vstack([cands.std, cands.std[TRUTH]]),
            keys=[*cands.keys, key],
        )

    split = with_copy("another-key")  # what an undetected duplicate looks like
    same = with_copy(cands.keys[TRUTH])
    assert len(split.deduplicated()) == 9 and len(same.deduplicated()) == 8
    finals = []
    for cs in (split, same):
        uid, docs = _run(E33, cands)
        sink = MemorySink()
        _feed(AnalysisEngine([sink], candidates=cs), docs)
        finals.append(sink.finals[uid])
    assert finals[0].best_probability < 0.6
    assert finals[1].best_name == "c3|c3_again" and finals[1].best_probability > 0.99
    assert finals[1].n_candidates == 8


def test_per_run_state_is_bounded(cands, monkeypatch):
    """A long fast run and many runs: messages, event times and results keep their newest
    entries only, and count the rest."""
    from xas_bluesky.beamline.analysis import engine as engine_mod

    monkeypatch.setattr(engine_mod, "MAX_EVENT_TIMES", 50)
    n = 400
    energies = np.linspace(527.0, 559.0, n)
    i0 = np.full(n, 1e6)
    i0[::2] = np.nan  # 200 flagged points: 200 messages
    sink = MemorySink()
    engine = AnalysisEngine([sink], candidates=cands, max_runs=3)
    for _ in range(5):
        uid, docs = _run(energies, cands, i0=i0)
        for d in docs:
            if d[0] == "event":
                d[1]["time"] = float(d[1]["seq_num"])
        _feed(engine, docs, flush_every=50)
    final = sink.finals[uid]
    assert final.n_flagged == 200 and final.n_points == 200
    assert len(engine.results) == 3 and uid in engine.results
    assert len(engine.event_times) == 3
    assert len(engine.event_times[uid]) == 50 and max(engine.event_times[uid]) == n
    for _ in range(300):
        engine.report_problem("x")
    assert len(engine.errors) == engine_mod.MAX_ERRORS and engine.errors.dropped == 100


def test_problems_keep_the_newest():
    from xas_bluesky.beamline.analysis.run import CappedList, SeqTracker

    c = CappedList(3)
    for k in range(10):
        c.append(k)
    assert c == [7, 8, 9] and c.dropped == 7
    t = SeqTracker(window=4)
    assert [t.add(s) for s in (1, 2, 2, 4, 3, 3)] == [True, True, False, True, True, False]
    assert t.missing == 0 and t.floor == 4 and not t.above
    for s in range(10, 20):  # 5..9 never come: given up once 4 newer ones are there
        t.add(s)
    assert t.missing == 5 and len(t.above) <= 4
    assert t.add(7) and t.missing == 4  # a late one is still new
    assert not t.add(7)


def test_a_candidate_file_with_one_geometry_twice_merges_it(tmp_path):
    """A structure file naming one geometry twice (two names): the CandidateSet holds it once,
    as 'a|b', and says so."""
    from live_helpers import small_candidates

    from xas_bluesky.science.candidates import PredictionCache

    class FakePredictor:
        energy = GRID
        model_version = "fake"
        metadata: dict = {"calibration": {"temperature": 1.0}}

        def predict(self, structures, batch_size=1, return_std=True):
            mean = np.stack([_spectrum(531.0 + len(s.symbols) % 8) for s in structures])
            return mean, np.full_like(mean, 0.02)

    src = small_candidates(tmp_path / "three.xyz", n=3).read_text().splitlines()
    n0 = int(src[0])
    first = src[: n0 + 2]
    path = tmp_path / "dup.xyz"
    path.write_text("\n".join(src + [first[0], "the_same_again", *first[2:]]) + "\n")
    cands = PredictionCache(predictor_factory=lambda edge: FakePredictor()).from_file(path, "O")
    assert len(cands) == 3 and len(set(cands.keys)) == 3
    assert cands.names[0] == f"{first[1].strip()}|the_same_again"
    assert cands.merged == [f"the_same_again -> {cands.names[0]}"]
