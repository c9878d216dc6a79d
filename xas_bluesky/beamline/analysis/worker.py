"""The engine on a worker thread: the RunEngine's callback returns in microseconds.

:class:`LiveXASAnalysis` wraps an :class:`~xas_bluesky.beamline.analysis.engine.AnalysisEngine`
the way bluesky's ``BufferingWrapper`` wraps a slow callback: the RunEngine calls it on its own
thread, which only puts the document on a queue.  One worker thread does everything else.  When
documents arrive faster than they are scored, the worker takes every queued document before it
flushes the engine, so one update covers several points instead of falling behind.

The queue is bounded and coalescing:

- events of one descriptor queued after each other (no other document of the run between them)
  are packed into one ``event_page`` while they wait, so a backlog costs a few lists, and the
  engine handles it in one vectorised call;
- at most ``max_queued`` documents wait.  When the queue is full, the RunEngine's thread waits
  up to ``put_timeout`` seconds for room (the scan slows down; nothing is lost).  After that an
  event is dropped -- never silently: it is counted in :attr:`LiveXASAnalysis.dropped`, logged,
  shown as status Warning on the score PVs, and the engine counts its ``seq_num`` as a gap of
  its run (``gaps``, Warning).  Start, descriptor, stop and other documents are never dropped:
  they wait for room.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from xas_bluesky.beamline.analysis.engine import AnalysisEngine

__all__ = ["LiveXASAnalysis", "MAX_QUEUED"]

logger = logging.getLogger(__name__)

#: documents that may wait for the worker (events packed in pages count one each)
MAX_QUEUED = 50_000

_STOP = object()
_FLUSH = object()  # no document: flush the engine (a new open-world result to publish)


class _Page:
    """Events of one descriptor, packed as they are queued (an ``event_page`` in the making)."""

    __slots__ = ("descriptor", "keys", "page")

    def __init__(self, event: dict):
        self.descriptor = event["descriptor"]
        self.keys = (frozenset(event["data"]), frozenset(event.get("filled", {})))
        self.page: dict[str, Any] = {
            "descriptor": self.descriptor,
            "uid": [],
            "time": [],
            "seq_num": [],
            "data": {k: [] for k in event["data"]},
            "timestamps": {k: [] for k in event.get("timestamps", {})},
            "filled": {k: [] for k in event.get("filled", {})},
        }
        self.add(event)

    def fits(self, event: dict) -> bool:
        return (
            event["descriptor"] == self.descriptor
            and frozenset(event["data"]) == self.keys[0]
            and frozenset(event.get("filled", {})) == self.keys[1]
            and frozenset(event.get("timestamps", {})) == frozenset(self.page["timestamps"])
        )

    def add(self, event: dict) -> None:
        p = self.page
        p["uid"].append(event["uid"])
        p["time"].append(event["time"])
        p["seq_num"].append(event["seq_num"])
        for k, v in event["data"].items():
            p["data"][k].append(v)
        for k, v in event.get("timestamps", {}).items():
            p["timestamps"][k].append(v)
        for k, v in event.get("filled", {}).items():
            p["filled"][k].append(v)

    def __len__(self) -> int:
        return len(self.page["uid"])


class LiveXASAnalysis:
    """Run ``engine`` on a worker thread; ``__call__`` only queues.

    Parameters
    ----------
    engine
        The synchronous analysis (its sinks are called on the worker thread).
    max_queued
        Documents that may wait (see the module's notes on a full queue).
    put_timeout
        Seconds the caller's thread waits for room before an event is dropped.
    """

    def __init__(
        self, engine: AnalysisEngine, *, max_queued: int = MAX_QUEUED, put_timeout: float = 5.0
    ):
        self.engine = engine
        self.max_queued = max(1, int(max_queued))
        self.put_timeout = float(put_timeout)
        self._items: deque = deque()  # (name, doc) or a _Page
        self._open: dict[str, _Page] = {}  # descriptor -> the page events may still join
        self._queued = 0  # documents in _items
        self._pending = 0  # documents not handled yet (queued or in the worker's hands)
        self._cond = threading.Condition()
        #: events dropped because the queue stayed full (each one a gap in its run)
        self.dropped = 0
        self._reported = 0
        #: events that joined a queued page instead of waiting on their own
        self.coalesced = 0
        self._worker = threading.Thread(target=self._work, name="xas-analysis", daemon=True)
        self._worker.start()
        world = getattr(engine, "open_world", None)
        if world is not None and world.on_result is None:
            world.on_result = self.poke

    def poke(self) -> None:
        """Wake the worker to flush the engine (from any thread; never blocks for long): how
        the open-world thread gets a new result published when no document arrives."""
        with self._cond:
            if not any(it is _FLUSH for it in self._items):
                self._items.append(_FLUSH)
                self._cond.notify_all()

    # -- RunEngine thread: enqueue only ---------------------------------------------------------
    def __call__(self, name: str, doc: dict) -> tuple[str, dict]:
        """Queue a document for the worker (returns at once unless the queue is full; never
        raises)."""
        try:
            self._put(name, doc)
        except Exception:  # nothing of ours may reach the RunEngine
            logger.exception("could not queue a %s document", name)
        return name, doc

    def _put(self, name: str, doc: dict) -> None:
        with self._cond:
            if self._queued >= self.max_queued and not self._wait_for_room(name):
                self.dropped += 1
                logger.error(
                    "live analysis queue full (%d documents): event %s dropped (%d so far)",
                    self.max_queued,
                    doc.get("seq_num"),
                    self.dropped,
                )
                return
            self._queued += 1
            self._pending += 1
            if name == "event":
                page = self._open.get(doc["descriptor"])
                if page is not None and page.fits(doc):
                    page.add(doc)
                    self.coalesced += 1
                    return
                page = _Page(doc)
                self._open[doc["descriptor"]] = page
                self._items.append(page)
            else:
                # events queued before another document stay before it
                self._open.clear()
                self._items.append((name, doc))
            self._cond.notify_all()

    def _wait_for_room(self, name: str) -> bool:
        """Wait (holding the condition) until the queue has room; False when an event should be
        dropped instead."""
        droppable = name in ("event", "event_page")
        deadline = time.monotonic() + self.put_timeout
        while self._queued >= self.max_queued:
            left = deadline - time.monotonic()
            if left <= 0:
                if droppable:
                    return False
                logger.warning("live analysis queue full: a %s document waits for room", name)
                deadline = time.monotonic() + self.put_timeout
                left = self.put_timeout
            self._cond.wait(left)
        return True

    # -- life cycle -----------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Documents waiting for the worker."""
        return self._queued

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued document has been handled; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Handle what is queued, then stop the worker."""
        self.wait_idle(timeout)
        with self._cond:
            self._open.clear()
            self._items.append(_STOP)
            self._cond.notify_all()
        self._worker.join(timeout)

    # -- worker ---------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                batch = list(self._items)  # everything queued: one score update covers it all
                self._items.clear()
                self._open.clear()
                taken = sum(
                    len(it) if isinstance(it, _Page) else 1
                    for it in batch
                    if it is not _STOP and it is not _FLUSH
                )
                self._queued -= taken
                self._cond.notify_all()  # room for a waiting RunEngine thread
            try:
                for it in batch:
                    if it is _STOP or it is _FLUSH:
                        continue
                    if isinstance(it, _Page):
                        if len(it) == 1:
                            self.engine("event", _single(it.page))
                        else:
                            self.engine("event_page", it.page)
                    else:
                        self.engine(*it)  # never raises
                if self.dropped > self._reported:
                    n, self._reported = self.dropped - self._reported, self.dropped
                    self.engine.report_problem(
                        f"{n} event(s) dropped: analysis queue full ({self.max_queued} documents)"
                    )
                self.engine.flush()
            finally:
                with self._cond:
                    self._pending -= taken
                    self._cond.notify_all()
            if any(it is _STOP for it in batch):
                return


def _single(page: dict[str, Any]) -> dict[str, Any]:
    """The one event of a page of one."""
    return {
        "descriptor": page["descriptor"],
        "uid": page["uid"][0],
        "time": page["time"][0],
        "seq_num": page["seq_num"][0],
        "data": {k: v[0] for k, v in page["data"].items()},
        "timestamps": {k: v[0] for k, v in page["timestamps"].items()},
        "filled": {k: v[0] for k, v in page["filled"].items()},
    }
