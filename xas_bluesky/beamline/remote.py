"""The live analysis in another process or on another host, fed by 0MQ (or Kafka).

The RunEngine side publishes documents as usual (``bluesky.callbacks.zmq.Publisher`` to a
``bluesky-0MQ-proxy``, or bluesky-kafka's ``Publisher``); the worker subscribes, runs
:class:`~xas_bluesky.beamline.analysis.AnalysisSession` and hosts the score PVs itself
(:class:`~xas_bluesky.beamline.epics.score_ioc.ScoreServer`), so plans read the same PVs wherever
the analysis runs.

Handshake (0MQ subscribers that join late miss documents -- the slow joiner): the worker prepares
its candidates first, connects, waits for its SUB socket's ZMTP handshake with the proxy (a socket
monitor event), and only then shows ``Match:Status-Sts`` = Idle with ``Match:Message-Name``
starting ``ready``.  :func:`wait_for_worker` on the RunEngine side polls those PVs over Channel
Access before the run starts.

Wire format: msgpack (:func:`pack_document` / :func:`unpack_document`), never pickle -- bluesky's
default, which runs code from anyone who can publish to the proxy.  The RunEngine side publishes
with :func:`make_publisher` (the profile does); a pickled document is refused and counted.

Nothing lost without a word (:class:`StreamGuard`, between the dispatcher and the analysis):
each stream's ``seq_num`` s and the stop document's ``num_events`` show which events did not
arrive (a stalled worker: the proxy drops what its queue cannot hold); with a tiled client they
are read back from tiled before the stop goes on, and the run's final status names what was
missed and what came back.  A worker (re)started during a run picks it up: once subscribed it
reads the runs in flight from tiled (start, descriptors, the events so far), and an event of a
run it does not know sends it to tiled for that run.  Kafka keeps the documents: the worker
commits its offsets only between runs, so a restarted one reads the run in flight again from its
start document.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq
from bluesky.callbacks.zmq import Publisher, RemoteDispatcher
from event_model import pack_event_page, unpack_event_page
from zmq import asyncio as zmq_asyncio
from zmq.utils.monitor import parse_monitor_message

from xas_bluesky.beamline.analysis import AnalysisSession
from xas_bluesky.beamline.analysis.run import RunState
from xas_bluesky.beamline.analysis.sinks import AnalysisSink
from xas_bluesky.beamline.backup import stream_events
from xas_bluesky.contracts import DEFAULT_PREFIX, PV_SUFFIXES, is_xas_start

__all__ = [
    "pack_document",
    "unpack_document",
    "unpack_message",
    "make_publisher",
    "make_kafka_dispatcher",
    "ReadyRemoteDispatcher",
    "StreamGuard",
    "TransportSink",
    "kafka_consumer_config",
    "run_zmq_worker",
    "run_kafka_worker",
    "wait_for_worker",
]

try:  # msgpack's C implementation, else its pure-Python one: never msgpack_numpy's patches
    from msgpack._cmsgpack import Packer as _Packer
    from msgpack._cmsgpack import unpackb as _unpackb
except ImportError:  # pragma: no cover
    from msgpack.fallback import Packer as _Packer
    from msgpack.fallback import unpackb as _unpackb

logger = logging.getLogger(__name__)

READY = "ready"


# -- wire format -----------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} in a document")


def pack_document(doc: Any) -> bytes:
    """A document as msgpack (numpy arrays as lists, numpy scalars as numbers)."""
    return _Packer(default=_plain, use_bin_type=True).pack(doc)


def _numpy_hook(obj: dict) -> Any:
    """msgpack_numpy's encoding of a numeric array or scalar -- what bluesky-kafka's default
    serializer, and so an NSLS-II profile's Kafka publisher, sends -- as a list or a number.
    An object array (msgpack_numpy pickles it) is refused, never unpickled."""
    if b"nd" not in obj or b"type" not in obj or b"data" not in obj:
        return obj
    if obj.get(b"kind") in (b"O", b"V") or not isinstance(obj[b"type"], str):
        raise ValueError("an object or structured numpy array in a message: refused unread")
    dtype = np.dtype(obj[b"type"])
    if dtype.hasobject:
        raise ValueError("an object numpy array in a message: refused unread")
    values = np.frombuffer(obj[b"data"], dtype=dtype)
    if obj[b"nd"]:
        return values.reshape(obj.get(b"shape", [-1])).tolist()
    return values[0].item()


def _unpack(data: bytes) -> Any:
    # msgpack's own implementation, not ``msgpack.unpackb``: msgpack_numpy.patch() -- which
    # bluesky-kafka calls when imported -- replaces that with a decoder that unpickles object
    # arrays, i.e. runs code from the message
    return _unpackb(data, raw=False, object_hook=_numpy_hook)


def unpack_document(data: bytes) -> dict:
    """A msgpack document back as plain data.  No hook runs: nothing in a message can make
    this process run code (pickle, bluesky's default, would)."""
    doc = _unpack(data)
    if not isinstance(doc, dict):
        raise ValueError(f"not a document: {type(doc).__name__}")
    return doc


def unpack_message(data: bytes) -> tuple[str, dict]:
    """A Kafka message of bluesky-kafka's ``Publisher`` (``(name, doc)`` in msgpack) as plain
    data, as :func:`unpack_document`."""
    msg = _unpack(data)
    if not (isinstance(msg, list | tuple) and len(msg) == 2 and isinstance(msg[1], dict)):
        raise ValueError("not a (name, document) message")
    return str(msg[0]), msg[1]


def make_publisher(address: str, *, prefix: bytes = b"") -> Publisher:
    """The RunEngine side: bluesky's 0MQ ``Publisher`` to a proxy's in address, in msgpack
    (``RE.subscribe(make_publisher("127.0.0.1:5577"))``)."""
    return Publisher(address, prefix=prefix, serializer=pack_document)


class ReadyRemoteDispatcher(RemoteDispatcher):
    """bluesky's ``RemoteDispatcher`` that calls ``on_ready()`` once its SUB socket has completed
    the ZMTP handshake with the proxy (the subscription is then on its way).  No CURVE
    security (bluesky's own ``RemoteDispatcher`` has it; the worker does not use it).

    Documents are msgpack (:func:`unpack_document`) unless ``deserializer`` says otherwise; one
    that does not decode is dropped, counted in :attr:`refused` and reported to
    ``on_refused(count)`` (at 1, 10, 100, then every 1000).  The SUB socket's receive
    queue has no limit (``RCVHWM`` 0): while this process is busy, 0MQ's I/O thread keeps
    taking documents off the wire instead of letting the proxy drop them (a process that is
    stopped altogether still loses them at the proxy: :class:`StreamGuard` finds those).
    """

    def __init__(
        self, address, *, on_ready=None, on_refused=None, settle_s: float = 0.05, **kwargs
    ):
        self.refused = 0
        deserializer = kwargs.pop("deserializer", unpack_document)

        def counted(data):
            try:
                return deserializer(data)
            except Exception:
                self.refused += 1
                if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                    logger.warning("%d undecodable 0MQ message(s) dropped", self.refused)
                    if on_refused is not None:
                        on_refused(self.refused)
                raise

        super().__init__(address, deserializer=counted, **kwargs)
        self._on_ready = on_ready
        self._settle_s = settle_s

        # bluesky builds the socket in start(); ours attaches the monitor *before* connecting,
        # so the handshake event cannot happen before anyone listens for it
        def factory():
            asyncio.set_event_loop(self.loop)
            self._context = zmq_asyncio.Context()
            self._socket = sock = self._context.socket(zmq.SUB)
            sock.setsockopt(zmq.RCVHWM, 0)
            mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            self.loop.create_task(self._watch(mon))
            sock.connect(self.address)
            sock.setsockopt_string(zmq.SUBSCRIBE, "")

        self._RemoteDispatcher__factory = factory

    async def _watch(self, mon):
        try:
            parse_monitor_message(await mon.recv_multipart())
            await asyncio.sleep(self._settle_s)  # the subscription follows the handshake
            if self._on_ready is not None:
                self._on_ready()
        except Exception:
            logger.exception("0MQ handshake watch failed")
        finally:
            try:
                self._socket.disable_monitor()
            except Exception:
                pass
            mon.close()


# -- the stream, checked and completed -------------------------------------------------------------
def _ranges(nums: Iterable[int]) -> str:
    """``1-9, 12`` for [1..9, 12]."""
    out: list[str] = []
    seq = sorted(nums)
    i = 0
    while i < len(seq):
        j = i
        while j + 1 < len(seq) and seq[j + 1] == seq[j] + 1:
            j += 1
        out.append(str(seq[i]) if i == j else f"{seq[i]}-{seq[j]}")
        i = j + 1
    return ", ".join(out)


@dataclass
class _Track:
    """What the guard knows of one run."""

    start: dict
    #: descriptor uid -> stream name
    streams: dict[str, str] = field(default_factory=dict)
    #: descriptor uid -> seq_nums passed on
    seen: dict[str, set[int]] = field(default_factory=dict)
    #: descriptor uid -> seq_nums read from tiled because the worker joined late
    joined: dict[str, set[int]] = field(default_factory=dict)
    duplicates: int = 0
    #: ``time.monotonic()`` of its last document
    last: float = field(default_factory=time.monotonic)

    @property
    def uid(self) -> str:
        return self.start["uid"]


class StreamGuard:
    """Between a dispatcher and the analysis: checks the document stream and completes it.

    - per descriptor, the ``seq_num`` s passed on; a duplicate (a document sent twice) is
      dropped; at the stop document, the events missing (gaps, and the tail the stop's
      ``num_events`` counts) are read back from tiled when a client is given (waiting up to
      ``backfill_wait_s`` for the RunEngine's ``TiledWriter`` to finish the run) and passed on
      before the stop;
    - an event of a descriptor it has not seen (its run began before this worker): the run's
      start and descriptors, and the events before, are read from tiled (looked up at most every
      ``lookup_every_s``; the events wait meanwhile, up to ``give_up_s``);
    - :meth:`resume_open_runs` reads the XAS runs tiled holds without a stop document (started
      within ``resume_window_s``) and passes them on, so that a worker restarted during a run
      picks it up.

    What was missed and what came back is kept per run as notes; :class:`TransportSink` adds
    them to the run's problems, so its final status is a Warning that says so.  ``status`` (e.g.
    the score IOC's ``set_status``) hears of events that could not be placed in any run.
    """

    def __init__(
        self,
        target: Callable[[str, dict], Any] | None = None,
        *,
        tiled_client: Any = None,
        status: Callable[[str, str], None] | None = None,
        transport: str = "0MQ",
        backfill_wait_s: float = 30.0,
        lookup_every_s: float = 1.0,
        give_up_s: float = 60.0,
        resume_window_s: float = 6 * 3600.0,
        open_timeout_s: float = 600.0,
    ):
        self.target = target
        self.client = tiled_client
        self.status = status
        self.transport = transport
        self.backfill_wait_s = backfill_wait_s
        self.lookup_every_s = lookup_every_s
        self.give_up_s = give_up_s
        self.resume_window_s = resume_window_s
        self.open_timeout_s = open_timeout_s
        self._runs: dict[str, _Track] = {}
        self._desc_run: dict[str, str] = {}
        self._held: dict[str, list[dict]] = {}
        self._held_since: dict[str, float] = {}
        self._looked: dict[str, float] = {}
        self._notes: dict[str, list[str]] = {}
        self._lock = threading.RLock()
        #: events that could not be placed in any run, dropped
        self.dropped = 0
        #: events read back from tiled
        self.recovered = 0

    # -- what the sink reads -------------------------------------------------------------------
    def take_notes(self, run_uid: str) -> list[str]:
        with self._lock:
            return self._notes.pop(run_uid, [])

    def open_runs(self) -> int:
        """Runs begun and not stopped that sent a document within ``open_timeout_s`` (a run
        whose stop never comes -- a RunEngine that died -- does not count for ever)."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for t in self._runs.values() if now - t.last < self.open_timeout_s)

    # -- documents in ----------------------------------------------------------------------------
    def __call__(self, name: str, doc: dict) -> None:
        with self._lock:
            try:
                self._route(name, doc)
            except Exception:  # the check must never stop the stream
                logger.exception("stream guard failed on a %s document; passed on", name)
                self._out(name, doc)

    def _out(self, name: str, doc: dict) -> None:
        assert self.target is not None, "StreamGuard.target not set"
        self.target(name, doc)

    def _route(self, name: str, doc: dict) -> None:
        if name == "start":
            if doc["uid"] in self._runs:  # sent twice, or read from tiled already
                return
            self._runs[doc["uid"]] = _Track(doc)
            self._out(name, doc)
        elif name == "descriptor":
            track = self._runs.get(doc["run_start"])
            if track is None:
                track = self._recover_start(doc["run_start"])
                if track is None:
                    self._out(name, doc)  # the analysis ignores it too
                    return
            if doc["uid"] in track.streams:
                return
            self._add_descriptor(track, doc)
            self._out(name, doc)
            held = self._held.pop(doc["uid"], [])
            self._held_since.pop(doc["uid"], None)
            if held:
                self._events(doc["uid"], held)
        elif name == "event":
            self._events(doc["descriptor"], [doc])
        elif name == "event_page":
            self._events(doc["descriptor"], [dict(e) for e in unpack_event_page(doc)])  # type: ignore[arg-type]
        elif name == "stop":
            track = self._runs.get(doc["run_start"])
            if track is not None:
                try:
                    self._close(track, doc)  # may pass read-back events on first
                finally:
                    self._runs.pop(track.uid, None)
                    for d in track.streams:
                        self._desc_run.pop(d, None)
            self._out(name, doc)
        else:
            self._out(name, doc)

    def _add_descriptor(self, track: _Track, doc: dict) -> None:
        track.streams[doc["uid"]] = doc.get("name", "primary")
        track.seen.setdefault(doc["uid"], set())
        self._desc_run[doc["uid"]] = track.uid

    def _events(self, desc_uid: str, events: list[dict]) -> None:
        run_uid = self._desc_run.get(desc_uid)
        if run_uid is None:
            self._hold(desc_uid, events)
            return
        track = self._runs[run_uid]
        track.last = time.monotonic()
        seen = track.seen[desc_uid]
        fresh = []
        for ev in events:
            seq = int(ev["seq_num"])
            if seq in seen:
                track.duplicates += 1
                # read from tiled on joining, yet it did arrive: not missed after all
                track.joined.get(desc_uid, set()).discard(seq)
                continue
            if seen and seq > max(seen) + 1:
                logger.warning(
                    "run %s, stream %s: events %s did not arrive over %s",
                    run_uid[:8], track.streams[desc_uid], _ranges(range(max(seen) + 1, seq)),
                    self.transport,
                )  # fmt: skip
            seen.add(seq)
            fresh.append(ev)
        if len(fresh) == 1:
            self._out("event", fresh[0])
        elif fresh:
            self._out("event_page", dict(pack_event_page(*fresh)))  # type: ignore[arg-type]

    # -- a run that began before this worker -------------------------------------------------------
    def _hold(self, desc_uid: str, events: list[dict]) -> None:
        now = time.monotonic()
        held = self._held.setdefault(desc_uid, [])
        held += events
        since = self._held_since.setdefault(desc_uid, now)
        if (
            self.client is not None
            and now - self._looked.get(desc_uid, -1e9) >= self.lookup_every_s
        ):
            self._looked[desc_uid] = now
            if self._recover_descriptor(desc_uid):
                return
        if self.client is None or now - since > self.give_up_s:
            n = len(self._held.pop(desc_uid, []))
            self._held_since.pop(desc_uid, None)
            self.dropped += n
            why = (
                "no tiled client to read its start from"
                if self.client is None
                else (f"not found in tiled within {self.give_up_s:g} s")
            )
            msg = f"{n} event(s) of a run this worker did not see start ({why}): ignored"
            logger.warning(msg)
            if self.status is not None:
                self.status("Warning", msg)

    def _find_descriptor(self, desc_uid: str) -> tuple[str, str] | None:
        """(run uid, stream) of a descriptor among the recent runs tiled holds."""
        for uid, run in self._recent_runs():
            for stream in list(run):
                if run[stream].metadata.get("uid") == desc_uid:
                    return uid, stream
        return None

    def _recent_runs(self, limit: int = 20):
        from tiled.queries import Key

        since = time.time() - self.resume_window_s
        found = self.client.search(Key("start.time") > since)
        keys = list(found.keys())[-limit:]
        for uid in reversed(keys):  # newest first
            yield uid, found[uid]

    def _recover_start(self, run_uid: str) -> _Track | None:
        if self.client is None:
            return None
        try:
            start = dict(self.client[run_uid].metadata["start"])
        except Exception:
            logger.warning("run %s: start document missed, and not in tiled", run_uid[:8])
            return None
        return self._begin(start, note="start document missed: read from tiled")

    def _begin(self, start: dict, note: str | None = None) -> _Track:
        track = _Track(start)
        self._runs[track.uid] = track
        if note:
            self._notes.setdefault(track.uid, []).append(note)
        self._out("start", start)
        return track

    def _recover_descriptor(self, desc_uid: str) -> bool:
        try:
            hit = self._find_descriptor(desc_uid)
        except Exception as exc:
            logger.warning("could not look descriptor %s up in tiled: %s", desc_uid[:8], exc)
            return False
        if hit is None:
            return False
        self._resume(hit[0], first_seen=desc_uid)
        return True

    def _resume(self, run_uid: str, first_seen: str | None = None) -> None:
        """Pass on a run read from tiled: start (unless known), descriptors, the events tiled
        holds (of an XAS run only: the analysis ignores the others); then what was held for
        it."""
        run = self.client[run_uid]
        track = self._runs.get(run_uid)
        if track is None:
            track = self._begin(dict(run.metadata["start"]))
        history = is_xas_start(track.start)
        for stream in list(run):
            smd = dict(run[stream].metadata)
            smd.pop("_config_updates", None)
            desc = {**smd, "name": stream, "run_start": run_uid}
            if desc["uid"] not in track.streams:
                self._add_descriptor(track, desc)
                self._out("descriptor", desc)
            # what arrived meanwhile waits here: tiled gives only the events before it
            held = self._held.pop(desc["uid"], [])
            self._held_since.pop(desc["uid"], None)
            arrived = {int(e["seq_num"]) for e in held}
            events = stream_events(self.client, run_uid, stream, desc["uid"]) if history else []
            seen = track.seen[desc["uid"]]
            new = [e for e in events if e["seq_num"] not in seen and e["seq_num"] not in arrived]
            if new:
                track.joined.setdefault(desc["uid"], set()).update(e["seq_num"] for e in new)
                self.recovered += len(new)
            both = sorted(new + held, key=lambda e: int(e["seq_num"]))
            if both:
                self._events(desc["uid"], both)
        n = sum(len(v) for v in track.joined.values())
        logger.warning("picked up run %s from tiled (%d events read back)", run_uid[:8], n)

    def resume_open_runs(self) -> list[str]:
        """Pick up the XAS runs in flight that tiled holds (no stop yet); their uids."""
        if self.client is None:
            return []
        picked = []
        with self._lock:
            try:
                for uid, run in self._recent_runs():
                    md = run.metadata
                    if md.get("stop") or uid in self._runs or not is_xas_start(md["start"]):
                        continue
                    self._resume(uid)
                    picked.append(uid)
            except Exception:
                logger.exception("could not look for runs in flight in tiled")
        return picked

    # -- the end of a run --------------------------------------------------------------------------
    def _close(self, track: _Track, stop: dict) -> None:
        expected = dict(stop.get("num_events") or {})
        missing: dict[str, set[int]] = {}
        for desc, seen in track.seen.items():
            n = expected.get(track.streams[desc], max(seen, default=0))
            gone = set(range(1, int(n) + 1)) - seen
            if gone:
                missing[desc] = gone
        back: dict[str, set[int]] = {}
        if missing and self.client is not None:
            try:
                back = self._backfill(track, missing)
            except Exception:
                logger.exception("run %s: missed events not read back", track.uid[:8])
        notes = self._notes.setdefault(track.uid, [])
        for desc, joined in track.joined.items():
            if not joined:
                continue
            notes.append(
                f"worker joined the run late: {track.streams[desc]} events "
                f"{_ranges(joined)} missed over {self.transport}, read from tiled"
            )
        for desc, gone in missing.items():
            got = back.get(desc, set())
            msg = (
                f"{len(gone)} of {expected.get(track.streams[desc], '?')} "
                f"{track.streams[desc]} events missed over {self.transport} "
                f"(seq {_ranges(gone)})"
            )
            if got == gone:
                msg += "; all read back from tiled"
            elif got:
                msg += f"; {len(got)} read back from tiled, {_ranges(gone - got)} lost"
            else:
                msg += "; lost" + ("" if self.client is not None else " (no tiled client)")
            notes.append(msg)
            logger.warning("run %s: %s", track.uid[:8], msg)
        if not notes:
            self._notes.pop(track.uid, None)

    def _backfill(self, track: _Track, missing: dict[str, set[int]]) -> dict[str, set[int]]:
        """Read the missing events from tiled (once the RunEngine's writer has the run's stop)."""
        deadline = time.monotonic() + self.backfill_wait_s
        while True:
            try:
                if self.client[track.uid].metadata.get("stop"):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                logger.warning("run %s: tiled has no stop for it yet; reading what it has",
                               track.uid[:8])  # fmt: skip
                break
            time.sleep(0.2)
        got: dict[str, set[int]] = {}
        for desc, gone in missing.items():
            try:
                events = stream_events(self.client, track.uid, track.streams[desc], desc)
            except Exception as exc:
                logger.warning("run %s: events not read from tiled: %s", track.uid[:8], exc)
                continue
            found = [e for e in events if e["seq_num"] in gone]
            if found:
                got[desc] = {e["seq_num"] for e in found}
                self.recovered += len(found)
                self._events(desc, found)
        return got


class TransportSink(AnalysisSink):
    """Adds what a :class:`StreamGuard` noted of a run (events missed, read back, lost) to its
    problems when it closes, so the final status says so."""

    def __init__(self, guard: StreamGuard):
        self.guard = guard

    def run_closing(self, run: RunState, raw_stop: dict) -> None:
        run.problems.extend(self.guard.take_notes(run.uid))


def _session_with_guard(
    tiled_client, *, transport: str, guard_kwargs: dict | None = None, **kwargs
) -> tuple[AnalysisSession, StreamGuard]:
    guard = StreamGuard(tiled_client=tiled_client, transport=transport, **(guard_kwargs or {}))
    session = AnalysisSession(tiled_client=tiled_client, sinks=[TransportSink(guard)], **kwargs)
    guard.target = session.analysis
    guard.status = session.server.set_status
    return session, guard


def run_zmq_worker(
    address: str,
    *,
    score_prefix: str = DEFAULT_PREFIX,
    port: int | None = None,
    tiled_client=None,
    candidates: str | None = None,
    edges=(),
    zmq_prefix: bytes = b"",
    resume: bool = True,
    guard_kwargs: dict | None = None,
    **kwargs,
) -> None:
    """Run the analysis on documents from a 0MQ proxy's out address (blocking; Ctrl-C ends it).

    Parameters
    ----------
    address
        The proxy's out address, ``"127.0.0.1:5578"``.
    score_prefix, port
        Prefix and Channel Access port of the score PVs served by this process (``interfaces``,
        in ``kwargs``, the addresses the score IOC listens on: loopback by default).
    tiled_client
        tiled container for predictions, match results and the analysis runs; the
        :class:`StreamGuard` reads missed documents from it.
    candidates, edges
        Candidate file and edges to predict before declaring the worker ready.
    zmq_prefix
        The Publisher's prefix to listen to (``b""``: all).
    resume
        Once subscribed, pick up the XAS runs in flight that tiled holds.
    kwargs
        The rest of :class:`~xas_bluesky.beamline.analysis.AnalysisSession` 's keywords
        (``backup_directory``, ``interfaces`` ...).
    """
    session, guard = _session_with_guard(
        tiled_client, transport="0MQ", guard_kwargs=guard_kwargs, score_prefix=score_prefix,
        port=port, candidates=candidates, **kwargs,
    )  # fmt: skip
    session.prepare(edges, candidates)

    def ready():
        picked = guard.resume_open_runs() if resume else []
        session.server.set_status("Idle", f"{READY}: subscribed to {address}")
        if picked:  # its status follows the run again
            session.wait_idle(5)
        logger.warning("worker ready: subscribed to %s, score PVs %s", address, score_prefix)

    def refused(n: int) -> None:  # a publisher in pickle (bluesky's default), say
        session.server.set_status(
            "Warning", f"{n} 0MQ message(s) not msgpack, dropped: publish with make_publisher"
        )

    dispatcher = ReadyRemoteDispatcher(
        address, prefix=zmq_prefix, on_ready=ready, on_refused=refused
    )
    dispatcher.subscribe(guard)
    _serve(dispatcher, session)


def kafka_consumer_config(consumer_config: dict | None = None) -> dict:
    """The worker's Kafka consumer settings: no automatic commit (the worker commits between
    runs, see :func:`run_kafka_worker`), a new group starts at the newest message."""
    return {"auto.offset.reset": "latest", "enable.auto.commit": False, **(consumer_config or {})}


def make_kafka_dispatcher(
    bootstrap_servers: str | Sequence[str],
    topics: list[str],
    *,
    group_id: str,
    consumer_config: dict | None = None,
    guard: StreamGuard | None = None,
    idle: Callable[[], bool] = lambda: True,
):
    """bluesky-kafka's ``RemoteDispatcher`` that commits its offsets only between runs.

    After a document, and while no message comes, the position is committed when ``guard``
    follows no run and ``idle()`` (the analysis has handled what it was given) -- so a worker
    restarted mid-run reads that run again from its start document.
    """
    from bluesky_kafka import RemoteDispatcher as KafkaDispatcher

    servers = (
        bootstrap_servers if isinstance(bootstrap_servers, str) else ",".join(bootstrap_servers)
    )

    class _Dispatcher(KafkaDispatcher):
        uncommitted = 0

        def process_document(self, consumer, topic, name, document):
            super().process_document(consumer, topic, name, document)
            self.uncommitted += 1
            if name == "stop":
                self.commit_between_runs(consumer)
            return True

        def commit_between_runs(self, consumer=None) -> bool:
            consumer = consumer or self._bluesky_consumer._consumer
            if not self.uncommitted or (guard is not None and guard.open_runs()) or not idle():
                return False
            try:
                consumer.commit(asynchronous=False)
            except Exception as exc:  # nothing consumed since the rebalance, a broker away
                logger.debug("no commit: %s", exc)
                return False
            self.uncommitted = 0
            return True

    return _Dispatcher(
        topics=topics,
        bootstrap_servers=servers,
        group_id=group_id,
        consumer_config=kafka_consumer_config(consumer_config),
        deserializer=unpack_message,
    )


def run_kafka_worker(
    bootstrap_servers: str,
    topics: list[str],
    *,
    group_id: str = "xas-bluesky-analysis",
    consumer_config: dict | None = None,
    score_prefix: str = DEFAULT_PREFIX,
    port: int | None = None,
    tiled_client=None,
    candidates: str | None = None,
    edges=(),
    guard_kwargs: dict | None = None,
    **kwargs,
) -> None:
    """Run the analysis on documents from Kafka (bluesky-kafka; NSLS-II topic
    ``{beamline}.bluesky.runengine.documents``).  Needs the ``kafka`` extra.

    Offsets are committed between runs only (:func:`make_kafka_dispatcher`): a worker restarted
    mid-run reads the run in flight again from its start document (within the topic's
    retention)."""
    try:
        import bluesky_kafka  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("Kafka needs bluesky-kafka (pip install 'xas-bluesky[kafka]')") from exc
    session, guard = _session_with_guard(
        tiled_client, transport="Kafka", guard_kwargs=guard_kwargs, score_prefix=score_prefix,
        port=port, candidates=candidates, **kwargs,
    )  # fmt: skip
    session.prepare(edges, candidates)
    dispatcher = make_kafka_dispatcher(
        bootstrap_servers, topics, group_id=group_id, consumer_config=consumer_config,
        guard=guard, idle=lambda: session.wait_idle(0),
    )  # fmt: skip
    dispatcher.subscribe(guard)
    session.server.set_status(
        "Idle", f"{READY}: consuming {','.join(topics)} from {bootstrap_servers}"
    )
    try:
        dispatcher.start(work_during_wait=dispatcher.commit_between_runs)
    except KeyboardInterrupt:
        pass
    finally:
        session.shutdown(30)


def _serve(dispatcher, session: AnalysisSession) -> None:
    """Run ``dispatcher`` until Ctrl-C, then drain the analysis and stop the score IOC."""
    try:
        dispatcher.start()
    except KeyboardInterrupt:
        pass
    finally:
        session.shutdown(30)


def wait_for_worker(score_prefix: str, timeout: float = 60.0) -> bool:
    """Block until the worker serving ``score_prefix`` says it is ready (RunEngine side, before
    the run).  Reads ``Match:Message-Name`` over Channel Access; False on timeout."""
    import epics  # libca reads its environment once: not before the caller has set it

    pv = score_prefix + PV_SUFFIXES["message"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = epics.caget(pv, as_string=True, use_monitor=False, timeout=1.0)
        except Exception:
            msg = None
        if msg and msg.startswith(READY):
            return True
        try:  # already following runs: it is connected
            status = epics.caget(score_prefix + PV_SUFFIXES["status"], as_string=True, timeout=1.0)
        except Exception:
            status = None
        if status in ("Running", "Done") and msg is not None:
            return True
        time.sleep(0.1)
    return False
