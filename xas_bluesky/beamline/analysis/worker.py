"""The engine on a worker thread: the RunEngine's callback returns in microseconds.

:class:`LiveXASAnalysis` wraps an :class:`~xas_bluesky.beamline.analysis.engine.AnalysisEngine`
the way bluesky's ``BufferingWrapper`` wraps a slow callback: the RunEngine calls it on its own
thread, which only puts the document on a queue.  One worker thread does everything else.  When
documents arrive faster than they are scored, the worker takes every queued document before it
flushes the engine, so one update covers several points instead of falling behind.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from xas_bluesky.beamline.analysis.engine import AnalysisEngine

__all__ = ["LiveXASAnalysis"]

logger = logging.getLogger(__name__)


class LiveXASAnalysis:
    """Run ``engine`` on a worker thread; ``__call__`` only queues.

    Parameters
    ----------
    engine
        The synchronous analysis (its sinks are called on the worker thread).
    """

    def __init__(self, engine: AnalysisEngine):
        self.engine = engine
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="xas-analysis", daemon=True)
        self._worker.start()

    # -- RunEngine thread: enqueue only ---------------------------------------------------------
    def __call__(self, name: str, doc: dict) -> tuple[str, dict]:
        """Queue a document for the worker (returns at once; never raises)."""
        try:
            with self._idle:
                self._pending += 1
            self._queue.put((name, doc))
        except Exception:  # nothing of ours may reach the RunEngine
            logger.exception("could not queue a %s document", name)
        return name, doc

    # -- life cycle -----------------------------------------------------------------------------
    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued document has been handled; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Handle what is queued, then stop the worker."""
        self.wait_idle(timeout)
        self._queue.put(None)
        self._worker.join(timeout)

    # -- worker ---------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:  # take everything queued: one score update covers them all
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            docs = [it for it in batch if it is not None]
            try:
                for name, doc in docs:
                    self.engine(name, doc)  # never raises
                self.engine.flush()
            finally:
                with self._idle:
                    self._pending -= len(docs)
                    self._idle.notify_all()
            if len(docs) < len(batch):
                return
