"""Where the live analysis' summaries go: one interface, one class per surface.

The engine (:class:`~xas_bluesky.beamline.analysis.engine.AnalysisEngine`) calls, in order,

- :meth:`AnalysisSink.status` for a status that belongs to no run (the worker's own errors);
- :meth:`AnalysisSink.run_opened` once a run's candidates are ready;
- :meth:`AnalysisSink.update` for every new state of a run (``scored`` when points were scored,
  not for status changes alone);
- :meth:`AnalysisSink.run_closing` when the raw run has stopped, before the final status, so
  that a sink that keeps the result can add its failure to ``run.problems``;
- :meth:`AnalysisSink.run_closed` with the final summary.

A sink's exception is logged by the engine and never stops the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from event_model import compose_run

from xas_bluesky.beamline.analysis.run import CappedList, RunState
from xas_bluesky.beamline.catalog import store_match
from xas_bluesky.beamline.epics.score_ioc import ScoreServer
from xas_bluesky.contracts import ANALYSIS_KEYS, MatchSummary

__all__ = [
    "AnalysisSink",
    "ScorePVSink",
    "AnalysisRunSink",
    "TiledMatchSink",
    "MemorySink",
]

logger = logging.getLogger(__name__)

#: data keys of the analysis run's primary stream (dtype of each; see ANALYSIS_KEYS)
_SCALAR = {"dtype": "number", "shape": [], "source": "xas_bluesky.live_analysis"}
_TEXT = {**_SCALAR, "dtype": "string"}
_DATA_KEYS = {
    "n_events": {**_SCALAR, "dtype": "integer"},
    "n_points": {**_SCALAR, "dtype": "integer"},
    "last_energy": {**_SCALAR, "units": "eV"},
    "best_name": _TEXT,
    "best_smiles": _TEXT,
    "best_probability": _SCALAR,
    "entropy": _SCALAR,
    "offset_ev": {**_SCALAR, "units": "eV"},
    "next_energy": {**_SCALAR, "units": "eV"},
    "top_names": _TEXT,
    # text, parallel to top_names: TiledWriter's tables would stringify an array anyway
    "top_probabilities": _TEXT,
    "n_flagged": {**_SCALAR, "dtype": "integer"},
    "n_duplicates": {**_SCALAR, "dtype": "integer"},
    "gaps": {**_SCALAR, "dtype": "integer"},
    "status": _TEXT,
    # the newest problem: why the last flagged point was not scored, a gap, ...
    "message": _TEXT,
}


class AnalysisSink:
    """Base of the sinks: every hook does nothing."""

    def status(self, status: str, message: str) -> None:
        """A status of the analysis that belongs to no run."""

    def run_opened(self, run: RunState) -> None:
        """A followed run's candidates are ready."""

    def update(self, run: RunState, summary: MatchSummary, scored: bool) -> None:
        """A new state of ``run``; ``scored`` when it includes newly scored points."""

    def run_closing(self, run: RunState, raw_stop: dict) -> None:
        """The raw run stopped: keep the result (before the final status)."""

    def run_closed(self, run: RunState, summary: MatchSummary, raw_stop: dict) -> None:
        """The run's analysis is over; ``summary`` is its final state."""


class ScorePVSink(AnalysisSink):
    """Publish every summary to the score PVs of a
    :class:`~xas_bluesky.beamline.epics.score_ioc.ScoreServer` (started by the caller)."""

    def __init__(self, server: ScoreServer):
        self.server = server

    def status(self, status: str, message: str) -> None:
        self.server.set_status(status, message)

    def update(self, run: RunState, summary: MatchSummary, scored: bool) -> None:
        self.server.publish(summary)
        if scored:
            self.server.wait_published(0.05)  # leave the GIL to the server's thread meanwhile


class AnalysisRunSink(AnalysisSink):
    """Emit an analysis run per followed run, linked by ``original_run_uid`` (as bluesky's
    ``LiveDispatcher`` does): one event per scored update in its ``primary`` stream.

    Parameters
    ----------
    callbacks
        Callables ``(name, doc)`` that receive the documents (e.g. a TiledWriter, best behind a
        ``BufferingWrapper``: they are called on the analysis' thread).
    score_prefix
        Recorded in the start document (where the scores were published), or None.
    """

    def __init__(self, callbacks: Iterable[Callable], score_prefix: str | None = None):
        self.callbacks = list(callbacks)
        self.score_prefix = score_prefix
        self._bundles: dict[str, Any] = {}  # raw uid -> (run bundle, descriptor bundle)
        self._seq: dict[str, int] = {}
        self.errors: CappedList = CappedList(200)

    def _emit(self, name: str, doc: Any) -> None:
        for cb in self.callbacks:
            try:
                cb(name, doc)
            except Exception as exc:  # a failing writer must not stop the scoring
                logger.exception("analysis callback %r failed on %s", cb, name)
                self.errors.append(f"analysis callback: {type(exc).__name__}: {exc}")

    def run_opened(self, run: RunState) -> None:
        cands = run.candidates
        assert cands is not None
        md = {
            "original_run_uid": run.uid,
            "analysis": "xas_structure_match",
            "xas_element": run.element,
            "xas_mode": run.mode,
            "sample_name": run.sample_name,
            "candidates_source": cands.source,
            "candidate_set": cands.ident,
            "n_candidates": len(cands),
            "model_version": cands.model_version,
            "score_prefix": self.score_prefix,
        }
        bundle = compose_run(metadata=md)
        run.analysis_uid = bundle.start_doc["uid"]
        self._emit("start", bundle.start_doc)
        data_keys = {ANALYSIS_KEYS[name]: spec for name, spec in _DATA_KEYS.items()}
        desc = bundle.compose_descriptor(name="primary", data_keys=data_keys)
        self._emit("descriptor", desc.descriptor_doc)
        self._bundles[run.uid] = (bundle, desc)
        self._seq[run.uid] = 0

    def update(self, run: RunState, summary: MatchSummary, scored: bool) -> None:
        if not scored or run.result is None or run.uid not in self._bundles:
            return
        values = summary.as_dict()
        values["n_events"] = run.n_events
        values["top_names"] = "\n".join(summary.top_names)
        values["top_probabilities"] = "\n".join(
            f"{p:.6g}" for p in list(summary.top_probabilities)[: len(summary.top_names)]
        )
        data = {ANALYSIS_KEYS[name]: values[name] for name in _DATA_KEYS}
        now = time.time()
        self._seq[run.uid] += 1
        _, desc = self._bundles[run.uid]
        ev = desc.compose_event(
            data=data, timestamps={k: now for k in data}, seq_num=self._seq[run.uid],
            validate=False,
        )  # fmt: skip
        self._emit("event", ev)

    def run_closed(self, run: RunState, summary: MatchSummary, raw_stop: dict) -> None:
        if run.uid not in self._bundles:
            return
        bundle, _ = self._bundles.pop(run.uid)
        self._seq.pop(run.uid, None)
        if run.fatal:
            self._emit("stop", bundle.compose_stop(exit_status="fail", reason=run.fatal))
            return
        r = run.result
        exit_status = raw_stop.get("exit_status", "success")
        reason = (
            f"raw run {exit_status}; {run.n_events} events, {run.n_bad} flagged, "
            f"{run.n_duplicates} repeated, {run.gaps} missing"
        ) + (f"; best {r.best_name} p={r.best_probability:.4f}" if r is not None else "")
        self._emit(
            "stop",
            bundle.compose_stop(exit_status="success" if r is not None else "fail", reason=reason),
        )


class TiledMatchSink(AnalysisSink):
    """Store each run's final ranking and summary in tiled
    (:func:`~xas_bluesky.beamline.catalog.store_match`)."""

    def __init__(self, client: Any):
        self.client = client

    def run_closing(self, run: RunState, raw_stop: dict) -> None:
        if run.result is None:
            return
        try:
            store_match(
                self.client,
                run.summary("Done", ""),
                run.ranking(),
                run.candidates,
                analysis_run_uid=run.analysis_uid,
                metadata={
                    "sample_name": run.sample_name,
                    "raw_exit_status": raw_stop.get("exit_status", "success"),
                    "n_events": run.n_events,
                    "n_refused": run.n_bad,
                    "problems": run.problems[-20:],
                    "problems_dropped": run.problems.dropped,
                    "measured_energy_eV": run.energies,
                    "measured_mu": run.mus,
                },
            )
        except Exception as exc:
            run.problems.append(f"match result not stored in tiled: {exc}")
            logger.exception("could not store the match result of %s", run.uid)


class MemorySink(AnalysisSink):
    """Keep every call in lists (tests, notebooks): ``statuses``, ``updates``, ``finals``."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, str]] = []
        self.updates: list[tuple[MatchSummary, bool]] = []
        self.finals: dict[str, MatchSummary] = {}

    def status(self, status: str, message: str) -> None:
        self.statuses.append((status, message))

    def update(self, run: RunState, summary: MatchSummary, scored: bool) -> None:
        self.updates.append((summary, scored))

    def run_closed(self, run: RunState, summary: MatchSummary, raw_stop: dict) -> None:
        self.finals[run.uid] = summary
