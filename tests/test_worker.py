"""The analysis worker's queue: bounded, coalescing, and never losing an event silently.

Plain documents and the engine with an in-memory sink (no IOC, tiled or weights); the worker is
held up by a sink that waits on a gate, as a slow scorer would."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from test_engine import GRID, _run, _spectrum

from xas_bluesky.beamline.analysis import AnalysisEngine, AnalysisSink, LiveXASAnalysis, MemorySink
from xas_bluesky.science.candidates import CandidateSet


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


class Gate(AnalysisSink):
    """Holds the worker in its first scored update until ``open`` is set."""

    def __init__(self):
        self.open = threading.Event()
        self.entered = threading.Event()

    def update(self, run, summary, scored):
        if scored:
            self.entered.set()
            self.open.wait(30)


def test_a_backlog_is_coalesced_into_pages(cands):
    """While the worker is busy, 60 events of one descriptor wait as one page: every one is
    scored, in one update."""
    gate, sink = Gate(), MemorySink()
    worker = LiveXASAnalysis(AnalysisEngine([gate, sink], candidates=cands))
    uid, docs = _run(np.linspace(527.0, 559.0, 62), cands)
    for d in docs[:3]:  # start, descriptor, the first event: the worker is then held
        worker(*d)
    assert gate.entered.wait(10)
    for d in docs[3:-1]:
        worker(*d)
    assert worker.queued == 61 and worker.coalesced == 60  # one page of 61 events
    gate.open.set()
    worker(*docs[-1])
    assert worker.wait_idle(30)
    worker.close()
    final = sink.finals[uid]
    assert final.n_events == final.n_points == 62 and final.gaps == 0
    assert final.best_name == "c3"
    assert len([u for u, scored in sink.updates if scored]) <= 3


def test_a_full_queue_slows_the_caller_then_drops_events_loudly(cands):
    """max_queued 10: the caller waits put_timeout for room, then an event is dropped --
    counted, reported as Warning, and a gap of its run; the stop document is never dropped."""
    gate, sink = Gate(), MemorySink()
    engine = AnalysisEngine([gate, sink], candidates=cands)
    worker = LiveXASAnalysis(engine, max_queued=10, put_timeout=0.05)
    uid, docs = _run(np.linspace(527.0, 559.0, 30), cands)
    for d in docs[:3]:
        worker(*d)
    assert gate.entered.wait(10)
    t0 = time.monotonic()
    for d in docs[3:-1]:  # 29 events: 10 wait, 19 dropped after 0.05 s each
        worker(*d)
    assert time.monotonic() - t0 >= 19 * 0.05
    assert worker.dropped == 19
    threading.Timer(0.3, gate.open.set).start()
    worker(*docs[-1])  # waits for room (the gate opens), never dropped
    assert worker.wait_idle(30)
    worker.close()
    final = sink.finals[uid]
    assert final.n_events == 11 and final.gaps == 19 and final.status == "Warning"
    assert any("19 event(s) dropped" in m for s, m in sink.statuses if s == "Warning")
    assert any("dropped" in e for e in engine.errors)
