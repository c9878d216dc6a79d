"""One live-analysis session: score PVs, sinks, engine and worker, built and stopped together.

Both the RunEngine subscription (:func:`subscribe_live_analysis`, in the profile and the demo)
and the remote worker (:mod:`xas_bluesky.beamline.remote`) build an :class:`AnalysisSession`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bluesky.callbacks.buffer import BufferingWrapper
from bluesky_tiled_plugins import TiledWriter
from event_model import RunRouter

from xas_bluesky.beamline.analysis.engine import AnalysisEngine
from xas_bluesky.beamline.analysis.open_world import OpenWorldWorker, ReferenceLibraries
from xas_bluesky.beamline.analysis.sinks import (
    AnalysisRunSink,
    AnalysisSink,
    ScorePVSink,
    TiledMatchSink,
)
from xas_bluesky.beamline.analysis.worker import LiveXASAnalysis
from xas_bluesky.beamline.catalog import TiledPredictionStore
from xas_bluesky.beamline.epics.score_ioc import ScoreServer
from xas_bluesky.contracts import DEFAULT_PREFIX, is_xas_start
from xas_bluesky.resources import candidates_file
from xas_bluesky.science.candidates import CandidateSet, PredictionCache

__all__ = ["AnalysisSession", "subscribe_live_analysis", "xas_run_router"]

logger = logging.getLogger(__name__)


class AnalysisSession:
    """The score IOC, the sinks, the engine and its worker thread of one analysis.

    Parameters
    ----------
    score_server
        Where summaries are published; one is started on ``score_prefix`` / ``port`` when None
        (and stopped by :meth:`shutdown`).
    score_prefix, port, interfaces
        Prefix, Channel Access port and interfaces of that score IOC.
    tiled_client
        tiled container: predictions are cached there, match results stored, and the analysis
        runs written by a ``TiledWriter`` behind a ``BufferingWrapper`` (unless
        ``analysis_callbacks`` is given).
    backup_directory
        Where what tiled does not take waits (see :mod:`xas_bluesky.beamline.backup`): the
        ``TiledWriter`` keeps a run it could not write as JSON lines there, and the match results
        wait there until stored.  None: an outage of tiled loses them.
    analysis_callbacks
        Receive the analysis runs' documents (on the worker thread).
    sinks
        More sinks, before the built-in ones (e.g. the remote worker's
        :class:`~xas_bluesky.beamline.remote.TransportSink`).
    cache
        The prediction cache (one storing in ``tiled_client`` when None).
    open_world
        Functional groups and ``in_library`` of every run (:doc:`/open_world`): True, or an
        :class:`~xas_bluesky.beamline.analysis.open_world.OpenWorldWorker` of the caller's;
        False (default): off.
    library_cache, predict_library
        With ``open_world=True``: where the model's reference library is cached, and whether a
        missing one is predicted in a background process
        (:class:`~xas_bluesky.beamline.analysis.open_world.ReferenceLibraries`).
    candidates, engine_kwargs
        Passed to :class:`~xas_bluesky.beamline.analysis.engine.AnalysisEngine`.
    """

    def __init__(
        self,
        *,
        score_server: ScoreServer | None = None,
        score_prefix: str = DEFAULT_PREFIX,
        port: int | None = None,
        interfaces: Sequence[str] = ("127.0.0.1",),
        tiled_client: Any = None,
        backup_directory: str | os.PathLike | None = None,
        analysis_callbacks: Iterable[Callable] | None = None,
        sinks: Iterable[AnalysisSink] = (),
        cache: PredictionCache | None = None,
        candidates: str | CandidateSet | None = None,
        open_world: bool | OpenWorldWorker = False,
        library_cache: str | os.PathLike | None = None,
        predict_library: bool = True,
        **engine_kwargs: Any,
    ):
        self._own_server = score_server is None
        self.server = (
            score_server or ScoreServer(score_prefix, port=port, interfaces=interfaces).start()
        )
        self._writers: list[BufferingWrapper] = []
        if analysis_callbacks is None:
            analysis_callbacks = []
            if tiled_client is not None:
                bdir = None if backup_directory is None else str(backup_directory)
                buffered = BufferingWrapper(TiledWriter(tiled_client, backup_directory=bdir))
                self._writers.append(buffered)
                analysis_callbacks = [buffered]
        if cache is None:
            store = None if tiled_client is None else TiledPredictionStore(tiled_client)
            cache = PredictionCache(store=store)
        self.runs_sink = AnalysisRunSink(analysis_callbacks, score_prefix=self.server.prefix)
        # the extra sinks first: what they add to a run's problems at its close reaches the
        # match record and the final status
        all_sinks: list[AnalysisSink] = list(sinks)
        self.match_sink: TiledMatchSink | None = None
        if tiled_client is not None:
            self.match_sink = TiledMatchSink(tiled_client, backup_directory=backup_directory)
            all_sinks.append(self.match_sink)
        all_sinks += [ScorePVSink(self.server), self.runs_sink]
        self.open_world: OpenWorldWorker | None = None
        if isinstance(open_world, OpenWorldWorker):
            self.open_world = open_world
        elif open_world:
            libs = ReferenceLibraries(library_cache, predict_missing=predict_library)
            self.open_world = OpenWorldWorker(libs)
        self.engine = AnalysisEngine(
            all_sinks,
            candidates=candidates,
            cache=cache,
            tiled_client=tiled_client,
            open_world=self.open_world,
            **engine_kwargs,
        )
        self.analysis = LiveXASAnalysis(self.engine)
        self._RE = None
        self.token: int | None = None

    # -- what callers read ----------------------------------------------------------------------
    @property
    def cache(self) -> PredictionCache:
        return self.engine.cache

    @property
    def results(self) -> dict:
        """Raw run uid -> final :class:`~xas_bluesky.science.compare.MatchResult`."""
        return self.engine.results

    @property
    def joint_results(self) -> dict:
        """Raw run uid -> its final joint posterior with the sample's other edges."""
        return self.engine.joint_results

    @property
    def analysis_uids(self) -> dict[str, str]:
        """Raw run uid -> uid of its analysis run."""
        return self.engine.analysis_uids

    @property
    def errors(self) -> list[str]:
        return self.engine.errors + self.runs_sink.errors

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued document has been handled; False on timeout."""
        return self.analysis.wait_idle(timeout)

    def __call__(self, name: str, doc: dict) -> tuple[str, dict]:
        """Queue a document (the session is a RunEngine callback too)."""
        return self.analysis(name, doc)

    # -- life cycle -----------------------------------------------------------------------------
    def subscribe(self, RE) -> AnalysisSession:
        """Subscribe the analysis to a RunEngine (its callback only queues)."""
        self._RE = RE
        self.token = RE.subscribe(self.analysis)
        return self

    def prepare(self, edges: Iterable[str], candidates: str | None = None) -> None:
        """Predict the candidates of ``edges`` now, so the first run does not wait for the model
        (a failure is shown on the status; each run reports its own problem)."""
        for edge in edges:
            try:
                self.server.set_status("Predicting", f"preparing {edge} candidates")
                cands = self.cache.from_file(candidates or candidates_file(edge), edge)
                self.engine.prepare(cands)
            except Exception as exc:
                logger.exception("could not prepare %s candidates", edge)
                self.server.set_status("Warning", f"{edge} candidates not prepared: {exc}")

    def shutdown(self, timeout: float = 30.0) -> None:
        """Unsubscribe, drain the analysis and the analysis-run writer, stop an own score IOC."""
        if self._RE is not None and self.token is not None:
            try:
                self._RE.unsubscribe(self.token)
            except Exception:
                pass
        self.analysis.close(timeout)
        if self.open_world is not None:
            self.open_world.close()
        for w in self._writers:
            try:
                w.shutdown(wait=True)
            except Exception:
                logger.exception("could not drain the analysis-run writer")
        if self.match_sink is not None:
            self.match_sink.close(min(timeout, 10.0))
        if self._own_server:
            self.server.stop()


def subscribe_live_analysis(RE, **kwargs: Any) -> AnalysisSession:
    """Host the score PVs in this process and subscribe the live analysis to ``RE``.

    Keywords are those of :class:`AnalysisSession`; call :meth:`AnalysisSession.shutdown` at
    the end (unsubscribe, drain, stop the writer and the score IOC).
    """
    return AnalysisSession(**kwargs).subscribe(RE)


def xas_run_router(analysis: Callable) -> RunRouter:
    """A ``RunRouter`` that hands XAS runs (only) to ``analysis``.

    The router runs on the caller's thread (the RunEngine's) and only forwards documents of XAS
    runs, which ``analysis`` (e.g. :class:`LiveXASAnalysis`) queues for its worker.
    """

    def factory(name, start_doc):
        return ([analysis], []) if is_xas_start(start_doc) else ([], [])

    return RunRouter([factory])
