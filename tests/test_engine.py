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


def _run(energies, cands, *, i0=None, md=None):
    """The documents of one XAS run measuring candidate TRUTH in TEY counts."""
    run = compose_run(
        metadata={"xas_element": "O", "xas_mode": "TEY", "xas_fields": FIELDS, **(md or {})}
    )
    desc = run.compose_descriptor(
        name="primary",
        data_keys={k: {"dtype": "number", "shape": [], "source": "sim"} for k in FIELDS.values()},
    )
    mu = np.interp(energies, GRID, cands.mean[TRUTH])
    i0 = np.full(len(energies), 1e6) if i0 is None else np.asarray(i0, float)
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    for j, (e, m) in enumerate(zip(energies, mu, strict=True)):
        data = {"mono_energy": float(e), "det_i0": float(i0[j]), "det_tey": float(m * 1e5)}
        ev = desc.compose_event(data=data, timestamps={k: 0.0 for k in data}, seq_num=j + 1)
        docs.append(("event", ev))
    docs.append(("stop", run.compose_stop()))
    return run.start_doc["uid"], docs


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
    assert final.status == "Warning" and "refused" in final.message


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
