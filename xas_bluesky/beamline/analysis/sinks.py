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

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from event_model import compose_run

from xas_bluesky.beamline.analysis.run import CappedList, RunState
from xas_bluesky.beamline.backup import pending_match_records, save_match_record
from xas_bluesky.beamline.catalog import match_record, store_match_record
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
_SOURCE = "xas_live_analysis"  # the one "object" of the analysis run's descriptor
_SCALAR = {"dtype": "number", "shape": [], "source": "xas_bluesky.live_analysis"}
#: fields a generic plotting tool draws (the descriptor's hints)
_HINTED = ("best_probability", "entropy", "offset_ev")
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
    "next_gain": {**_SCALAR, "units": "nat"},
    "top_names": _TEXT,
    # text, parallel to top_names: TiledWriter's tables would stringify an array anyway
    "top_probabilities": _TEXT,
    "n_flagged": {**_SCALAR, "dtype": "integer"},
    "n_duplicates": {**_SCALAR, "dtype": "integer"},
    "gaps": {**_SCALAR, "dtype": "integer"},
    "n_glitches": {**_SCALAR, "dtype": "integer"},
    "status": _TEXT,
    # the newest problem: why the last flagged point was not scored, a gap, ...
    "message": _TEXT,
    # functional groups, most probable first, newline-separated, and their probabilities (text,
    # parallel); in_library NaN when not computed (docs/open_world.rst)
    "groups": _TEXT,
    "group_probabilities": _TEXT,
    "in_library": _SCALAR,
    "groups_n_points": {**_SCALAR, "dtype": "integer"},
    # both edges of one sample: the joint posterior's edges ("" with one edge) and best
    "joint_edges": _TEXT,
    "joint_best_name": _TEXT,
    "joint_best_probability": _SCALAR,
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
    ``LiveDispatcher`` does): one event per scored update in its ``primary`` stream, and a
    last one when the run closes with the run's final word (the settled result).

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
        md = {
            "original_run_uid": run.uid,
            "analysis": "xas_structure_match",
            # what bluesky's LiveTable (BestEffortCallback) names a run by
            "plan_type": "analysis",
            "plan_name": "xas_structure_match",
            "scan_id": run.start.get("scan_id", 0),
            "xas_element": run.element,
            "xas_mode": run.mode,
            "sample_name": run.sample_name,
            "candidates_source": None if cands is None else cands.source,
            "candidate_set": None if cands is None else cands.ident,
            "n_candidates": 0 if cands is None else len(cands),
            "model_version": None if cands is None else cands.model_version,
            "score_prefix": self.score_prefix,
            "open_world": run.open_world,
            # generic tools (BestEffortCallback, LivePlot) plot the hinted fields against this;
            # lists, not tuples: the document must survive a JSON round trip (backup, replay)
            "hints": {"dimensions": [[[ANALYSIS_KEYS["n_points"]], "primary"]]},
        }
        bundle = compose_run(metadata=md)
        run.analysis_uid = bundle.start_doc["uid"]
        self._emit("start", bundle.start_doc)
        data_keys = {ANALYSIS_KEYS[name]: spec for name, spec in _DATA_KEYS.items()}
        desc = bundle.compose_descriptor(
            name="primary",
            data_keys=data_keys,
            object_keys={_SOURCE: list(data_keys)},
            hints={_SOURCE: {"fields": [ANALYSIS_KEYS[k] for k in _HINTED]}},
        )
        self._emit("descriptor", desc.descriptor_doc)
        self._bundles[run.uid] = (bundle, desc)
        self._seq[run.uid] = 0

    def update(self, run: RunState, summary: MatchSummary, scored: bool) -> None:
        if scored:
            self._event(run, summary)

    def _event(self, run: RunState, summary: MatchSummary) -> None:
        if run.result is None and run.novelty is None:
            return
        if run.uid not in self._bundles:
            return
        values = summary.as_dict()
        values["n_events"] = run.n_events
        values["top_names"] = "\n".join(summary.top_names)
        values["top_probabilities"] = "\n".join(
            f"{p:.6g}" for p in list(summary.top_probabilities)[: len(summary.top_names)]
        )
        values["groups"] = "\n".join(summary.groups)
        values["group_probabilities"] = "\n".join(
            f"{p:.6g}" for p in list(summary.group_probabilities)[: len(summary.groups)]
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
        if not run.fatal:
            # the last event is the final word: the settled result that the PVs and tiled's
            # match record carry (p can differ from the last live result's by a few 0.1 %)
            self._event(run, summary)
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
        if summary.groups:
            reason += f"; top group {summary.groups[0]} p={summary.group_probabilities[0]:.3f}"
        if summary.status == "NoMatch":
            reason += f"; no match (in_library {summary.in_library:.3f})"
        ok = r is not None or (run.open_world_only and run.novelty is not None)
        self._emit(
            "stop", bundle.compose_stop(exit_status="success" if ok else "fail", reason=reason)
        )


class TiledMatchSink(AnalysisSink):
    """Store each run's final ranking and summary in tiled
    (:func:`~xas_bluesky.beamline.catalog.store_match_record`), retrying until tiled takes it.

    :meth:`run_closing` hands the record to a thread of its own (tiled's client retries a failed
    request for up to ~45 s: the analysis must not wait for that) and waits ``wait_s`` for it.  A
    record tiled does not take is retried with a growing pause (``retry_s``: first, largest) until
    it is stored; with a ``backup_directory`` it is kept there meanwhile
    (``matches/<run uid>.json``), so a process that exits does not lose it: the next sink on that
    directory retries it, and so does ``xas-bluesky replay``.  Not stored within ``wait_s``, the
    run's final status says so (a Warning naming where the record waits).
    """

    def __init__(
        self,
        client: Any,
        *,
        backup_directory: str | os.PathLike | None = None,
        wait_s: float = 5.0,
        retry_s: tuple[float, float] = (1.0, 60.0),
    ):
        self.client = client
        self.backup_directory = None if backup_directory is None else Path(backup_directory)
        self.wait_s = wait_s
        self.retry_s = retry_s
        #: raw run uid -> tiled path of the stored record
        self.stored: dict[str, str] = {}
        #: the last failure of a store, for the status
        self.last_error: str | None = None
        self._pending: list[tuple[dict, Path | None]] = []
        self._cond = threading.Condition()
        self._closed = False
        if self.backup_directory is not None:  # what an earlier process left
            for path in pending_match_records(self.backup_directory):
                try:
                    self._pending.append((json.loads(path.read_text()), path))
                except Exception:
                    logger.exception("unreadable match record %s left in place", path)
        self._thread = threading.Thread(target=self._work, name="tiled-match", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Records not stored yet."""
        with self._cond:
            return len(self._pending)

    def run_closing(self, run: RunState, raw_stop: dict) -> None:
        if run.result is None and run.novelty is None:
            return
        record = match_record(
            run.summary("Done", ""),
            run.ranking(),
            run.candidates,
            analysis_run_uid=run.analysis_uid,
            metadata={
                "sample_name": run.sample_name,
                "xas_element": run.element,
                "open_world": run.open_world,
                "raw_exit_status": raw_stop.get("exit_status", "success"),
                "n_events": run.n_events,
                "n_refused": run.n_bad,
                "problems": run.problems[-20:],
                "problems_dropped": run.problems.dropped,
                "measured_energy_eV": run.energies,
                "measured_mu": run.mus,
                "sample_uid": run.start.get("sample_uid"),
                # the sample's match record over both edges: the joint ranking and its runs
                "joint": None
                if run.joint is None
                else {
                    "edges": run.joint.edges,
                    "run_uids": run.joint.run_uids,
                    "outlier_probability": run.joint.joint.outlier_probability,
                    "ranking": run.joint.ranking(),
                },
            },
        )
        path = None
        if self.backup_directory is not None:
            try:
                path = save_match_record(self.backup_directory, record)
            except Exception as exc:
                logger.exception("could not keep the match record of %s on disk", run.uid)
                run.problems.append(f"match result not kept on disk: {exc}")
        with self._cond:
            self._pending.append((record, path))
            self._cond.notify_all()
            self._cond.wait_for(lambda: run.uid in self.stored or self._closed, self.wait_s)
            if run.uid in self.stored:
                return
        where = f"kept in {path}" if path else "not kept on disk: lost if this process exits"
        run.problems.append(
            f"match result not in tiled yet ({self.last_error or 'slow'}); retrying, {where}"
        )

    def _work(self) -> None:
        pause = self.retry_s[0]
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                record, path = self._pending[0]
            try:
                where = store_match_record(self.client, record)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "match result of %s not stored (%s); retry in %.0f s",
                    record["run_uid"], self.last_error, pause,
                )  # fmt: skip
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, pause)
                pause = min(pause * 2, self.retry_s[1])
                continue
            pause = self.retry_s[0]
            if path is not None:
                path.unlink(missing_ok=True)
            with self._cond:
                self._pending.pop(0)
                self.stored[record["run_uid"]] = where
                self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every record is stored; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Give pending records ``timeout`` seconds, then stop retrying (those kept in the
        backup directory wait there)."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)


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
