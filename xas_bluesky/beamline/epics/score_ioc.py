"""The structure-match score PVs: a caproto ``PVGroup`` and its in-process host.

Names are a contract (``CLI.md``; add, never rename).  With the default prefix ``XAS:``::

    XAS:Match:Best-Name        CHAR waveform  best candidate's name
    XAS:Match:BestProb-I       float          its posterior probability
    XAS:Match:Entropy-I        float          entropy of the posterior (nats)
    XAS:Match:NPoints-I        int            points scored so far in the run (written last)
    XAS:Match:NextEnergy-I     float          most informative next energy (eV)
    XAS:Match:RunUID-I         CHAR waveform  uid of the raw run being scored
    XAS:Match:TopNames-Wfm     CHAR waveform  top-k names, newline-separated
    XAS:Match:TopScores-Wfm    float[k]       their probabilities
    XAS:Match:Status-Sts       enum           Idle/Predicting/Running/Done/Warning/Error/NoMatch
    XAS:Match:Heartbeat-I      int            +1 every second while the IOC serves
    XAS:Match:Offset-I         float          fitted mono calibration offset (eV)
    XAS:Match:BestSmiles-Name  CHAR waveform  best candidate's SMILES
    XAS:Match:Message-Name     CHAR waveform  what the status means (the problem, if any)
    XAS:Match:LastEnergy-I     float          energy of the last point scored (eV)
    XAS:Match:NCandidates-I    int            candidates being scored
    XAS:Match:Update-I         int            +1 per published update
    XAS:Match:Groups-Wfm       CHAR waveform  functional groups, most probable first, newline-separated
    XAS:Match:GroupScores-Wfm  float[G]       their probabilities (NaN-padded to G = 9 groups)
    XAS:Match:InLibrary-I      float          P(the sample is among the candidates); NaN: unknown
    XAS:Match:NextGain-I       float          expected information of a reading at NextEnergy (nats)

Both K edges of one sample (a run whose sample, by ``sample_uid`` or ``sample_name``, has
another edge scored already; empty / NaN otherwise, so never another sample's)::

    XAS:Match:Joint:Edges-Name        CHAR waveform  the edges combined, e.g. ``N,O``
    XAS:Match:Joint:Best-Name         CHAR waveform  best candidate of the joint posterior
    XAS:Match:Joint:BestSmiles-Name   CHAR waveform  its SMILES
    XAS:Match:Joint:BestProb-I        float          its joint probability
    XAS:Match:Joint:TopNames-Wfm      CHAR waveform  top-k of the joint, newline-separated
    XAS:Match:Joint:TopScores-Wfm     float[k]       their joint probabilities
    XAS:Match:Joint:NCandidates-I     int            candidates scored at every edge

Every PV is read-only to Channel Access clients: only the analysis that hosts the IOC changes
them (see ``docs/live_analysis.rst`` for why the IOC lives inside the analysis process).

:class:`ScoreServer` runs the group on a thread with its own asyncio loop, through the project's
caproto tuning (:mod:`xas_bluesky.beamline.epics.server`).  :meth:`ScoreServer.publish` is
thread-safe and never blocks: it keeps only the latest update (older unsent ones are coalesced
away) and a publisher task writes it.  The server remembers the last update, so after
:meth:`ScoreServer.restart` (or a stop and a start) the same values are served again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace

from caproto import ChannelType
from caproto.asyncio.server import Context
from caproto.server import PVGroup, ioc_arg_parser, pvproperty

from xas_bluesky.beamline.epics.server import run_ioc, tune_caproto
from xas_bluesky.contracts import (
    DEFAULT_PREFIX,
    GROUPS,
    PV_ATTRS,
    PV_SUFFIXES,
    STATES,
    TOP_K,
    MatchSummary,
)

__all__ = [
    "MatchScoreGroup",
    "ScoreServer",
    "main",
]

logger = logging.getLogger(__name__)

_NAME_LEN = 256
_TEXT_LEN = 4096
#: length of ``Match:GroupScores-Wfm``: the most groups an edge has
N_GROUPS = max(len(g) for g in GROUPS.values())


def _text(value: str, limit: int) -> str:
    # a CHAR waveform holds max_length bytes (UTF-8 here): cut on a character boundary
    data = (value or "").encode("utf-8")[: limit - 1]
    return data.decode("utf-8", errors="ignore")


def _num(value: float | None) -> float:
    return float(value) if value is not None and math.isfinite(value) else float("nan")


def _ranked(names, probabilities, n: int) -> tuple[list[str], list[float]]:
    """The first ``n`` names and their probabilities, NaN-padded to ``n`` (a waveform PV)."""
    names = list(names)[:n]
    scores = [_num(p) for p in list(probabilities)[: len(names)]]
    return names, scores + [float("nan")] * (n - len(scores))


def _same(a, b) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


class MatchScoreGroup(PVGroup):
    """The match-score PVs (all read-only to clients; see the module docstring)."""

    best_name = pvproperty(
        name=PV_SUFFIXES["best_name"], value="", dtype=ChannelType.CHAR, max_length=_NAME_LEN,
        string_encoding="utf-8", read_only=True, doc="best candidate's name",
    )  # fmt: skip
    best_prob = pvproperty(
        name=PV_SUFFIXES["best_prob"], value=float("nan"), precision=4, read_only=True,
        doc="best candidate's posterior probability",
    )  # fmt: skip
    entropy = pvproperty(
        name=PV_SUFFIXES["entropy"], value=float("nan"), precision=4, units="nat",
        read_only=True, doc="entropy of the posterior over candidates",
    )  # fmt: skip
    npoints = pvproperty(
        name=PV_SUFFIXES["npoints"], value=0, read_only=True,
        doc="points of the run scored so far (written last in each update)",
    )  # fmt: skip
    nflagged = pvproperty(
        name=PV_SUFFIXES["nflagged"], value=0, read_only=True,
        doc="points of the run never scored because of their reading (in NPoints-I)",
    )  # fmt: skip
    next_energy = pvproperty(
        name=PV_SUFFIXES["next_energy"], value=float("nan"), precision=3, units="eV",
        read_only=True, doc="most informative next energy",
    )  # fmt: skip
    next_gain = pvproperty(
        name=PV_SUFFIXES["next_gain"], value=float("nan"), precision=4, units="nat",
        read_only=True, doc="expected information of a reading at the next energy",
    )  # fmt: skip
    run_uid = pvproperty(
        name=PV_SUFFIXES["run_uid"], value="", dtype=ChannelType.CHAR, max_length=64,
        string_encoding="utf-8", read_only=True, doc="uid of the raw run being scored",
    )  # fmt: skip
    top_names = pvproperty(
        name=PV_SUFFIXES["top_names"], value="", dtype=ChannelType.CHAR, max_length=_TEXT_LEN,
        string_encoding="utf-8", read_only=True, doc="top candidates, newline-separated",
    )  # fmt: skip
    top_scores = pvproperty(
        name=PV_SUFFIXES["top_scores"], value=[0.0] * TOP_K, max_length=TOP_K,
        read_only=True, doc="probabilities of the top candidates",
    )  # fmt: skip
    status = pvproperty(
        name=PV_SUFFIXES["status"], value="Idle", dtype=ChannelType.ENUM, enum_strings=STATES,
        read_only=True, doc="state of the analysis",
    )  # fmt: skip
    heartbeat = pvproperty(
        name=PV_SUFFIXES["heartbeat"], value=0, read_only=True, doc="+1 per second while served"
    )
    offset = pvproperty(
        name=PV_SUFFIXES["offset"], value=float("nan"), precision=3, units="eV", read_only=True,
        doc="fitted mono calibration offset",
    )  # fmt: skip
    best_smiles = pvproperty(
        name=PV_SUFFIXES["best_smiles"], value="", dtype=ChannelType.CHAR, max_length=_NAME_LEN,
        string_encoding="utf-8", read_only=True, doc="best candidate's SMILES",
    )  # fmt: skip
    message = pvproperty(
        name=PV_SUFFIXES["message"], value="", dtype=ChannelType.CHAR, max_length=_TEXT_LEN,
        string_encoding="utf-8", read_only=True, doc="what the status means",
    )  # fmt: skip
    last_energy = pvproperty(
        name=PV_SUFFIXES["last_energy"], value=float("nan"), precision=3, units="eV",
        read_only=True, doc="energy of the last point scored",
    )  # fmt: skip
    ncandidates = pvproperty(
        name=PV_SUFFIXES["ncandidates"], value=0, read_only=True, doc="candidates being scored"
    )
    update = pvproperty(
        name=PV_SUFFIXES["update"], value=0, read_only=True, doc="+1 per published update"
    )
    groups = pvproperty(
        name=PV_SUFFIXES["groups"], value="", dtype=ChannelType.CHAR, max_length=_NAME_LEN,
        string_encoding="utf-8", read_only=True,
        doc="functional groups, most probable first, newline-separated",
    )  # fmt: skip
    group_scores = pvproperty(
        name=PV_SUFFIXES["group_scores"], value=[float("nan")] * N_GROUPS, max_length=N_GROUPS,
        read_only=True, doc="probabilities of the groups (the molecule has it)",
    )  # fmt: skip
    in_library = pvproperty(
        name=PV_SUFFIXES["in_library"], value=float("nan"), precision=3, read_only=True,
        doc="probability that the sample is among the candidates",
    )  # fmt: skip
    # both edges of one sample: the joint posterior (empty / NaN until a second edge is scored)
    joint_edges = pvproperty(
        name=PV_SUFFIXES["joint_edges"], value="", dtype=ChannelType.CHAR, max_length=16,
        string_encoding="utf-8", read_only=True, doc="edges combined, e.g. N,O",
    )  # fmt: skip
    joint_best_name = pvproperty(
        name=PV_SUFFIXES["joint_best_name"], value="", dtype=ChannelType.CHAR,
        max_length=_NAME_LEN, string_encoding="utf-8", read_only=True,
        doc="best candidate of the joint posterior over the edges",
    )  # fmt: skip
    joint_best_smiles = pvproperty(
        name=PV_SUFFIXES["joint_best_smiles"], value="", dtype=ChannelType.CHAR,
        max_length=_NAME_LEN, string_encoding="utf-8", read_only=True,
        doc="its SMILES",
    )  # fmt: skip
    joint_best_prob = pvproperty(
        name=PV_SUFFIXES["joint_best_prob"], value=float("nan"), precision=4, read_only=True,
        doc="its joint posterior probability",
    )  # fmt: skip
    joint_top_names = pvproperty(
        name=PV_SUFFIXES["joint_top_names"], value="", dtype=ChannelType.CHAR,
        max_length=_TEXT_LEN, string_encoding="utf-8", read_only=True,
        doc="top candidates of the joint posterior, newline-separated",
    )  # fmt: skip
    joint_top_scores = pvproperty(
        name=PV_SUFFIXES["joint_top_scores"], value=[float("nan")] * TOP_K, max_length=TOP_K,
        read_only=True, doc="their joint probabilities",
    )  # fmt: skip
    joint_ncandidates = pvproperty(
        name=PV_SUFFIXES["joint_ncandidates"], value=0, read_only=True,
        doc="candidates scored at every edge",
    )  # fmt: skip

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._last: dict[str, object] = {}  # values this group last wrote, by PV name

    @heartbeat.scan(period=1.0)  # type: ignore[no-redef]  # caproto's idiom rebinds the name
    async def heartbeat(self, instance, async_lib):
        await instance.write((instance.value + 1) % 2**31)

    async def apply(self, upd: MatchSummary, counter: int) -> None:
        """Write one summary (from the server's own loop); ``npoints``/``update`` go last."""
        names = list(upd.top_names)[:TOP_K]
        scores = [_num(s) for s in list(upd.top_probabilities)[:TOP_K]]
        scores += [float("nan")] * (TOP_K - len(scores))
        status = upd.status if upd.status in STATES else "Error"
        gnames, gscores = _ranked(upd.groups, upd.group_probabilities, N_GROUPS)
        jnames, jscores = _ranked(upd.joint_top_names, upd.joint_top_probabilities, TOP_K)
        fields = {
            "run_uid": _text(upd.run_uid, 64),
            "best_name": _text(upd.best_name, _NAME_LEN),
            "best_smiles": _text(upd.best_smiles, _NAME_LEN),
            "best_probability": _num(upd.best_probability),
            "entropy": _num(upd.entropy),
            "next_energy": _num(upd.next_energy),
            "next_gain": _num(upd.next_gain),
            "offset_ev": _num(upd.offset_ev),
            "last_energy": _num(upd.last_energy),
            "n_candidates": int(upd.n_candidates),
            "top_names": _text("\n".join(names), _TEXT_LEN),
            "top_probabilities": scores,
            "groups": _text("\n".join(gnames), _NAME_LEN),
            "group_probabilities": gscores,
            "in_library": _num(upd.in_library),
            "joint_edges": _text(upd.joint_edges, 16),
            "joint_best_name": _text(upd.joint_best_name, _NAME_LEN),
            "joint_best_smiles": _text(upd.joint_best_smiles, _NAME_LEN),
            "joint_best_probability": _num(upd.joint_best_probability),
            "joint_top_names": _text("\n".join(jnames), _TEXT_LEN),
            "joint_top_probabilities": jscores,
            "joint_n_candidates": int(upd.joint_n_candidates),
            "message": _text(upd.message, _TEXT_LEN),
            "status": status,
            "n_flagged": int(upd.n_flagged),
            "n_events": int(upd.n_events),
        }
        values = [(getattr(self, PV_ATTRS[name]), v) for name, v in fields.items()]
        # only what changed: each write costs ~60 us and a monitor update per subscriber
        for pv, value in values:
            if pv is self.npoints or not _same(self._last.get(pv.name), value):
                await pv.write(value)
                self._last[pv.name] = value
        await self.update.write(int(counter) % 2**31)


class ScoreServer:
    """Host :class:`MatchScoreGroup` in this process, on a thread with its own asyncio loop.

    Parameters
    ----------
    prefix
        PV prefix (default :data:`~xas_bluesky.contracts.DEFAULT_PREFIX`).
    port
        Channel Access server port (UDP searches, first TCP port tried).  Default: the
        environment's ``EPICS_CAS_SERVER_PORT`` / ``EPICS_CA_SERVER_PORT``.
    interfaces
        Addresses to serve on (loopback by default).
    tuned
        Apply the project's caproto tuning (``TCP_NODELAY``, 1 ms monitor batching).

    Examples
    --------
    >>> server = ScoreServer("XAS:", port=5064).start()
    >>> server.publish(MatchSummary(run_uid=uid, n_events=3, best_name="water",
    ...                             best_probability=0.7))
    >>> server.stop()
    """

    def __init__(
        self,
        prefix: str = DEFAULT_PREFIX,
        *,
        port: int | None = None,
        interfaces: Sequence[str] = ("127.0.0.1",),
        tuned: bool = True,
    ):
        self.prefix = prefix
        self.port = port
        self.interfaces = list(interfaces)
        self.tuned = tuned
        self._lock = threading.Lock()
        self._latest = MatchSummary()
        self._dirty = False
        self._counter = 0
        self._seq = 0  # updates handed to publish()
        self._applied = 0  # ... of which the server has written the newest
        self._written = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._main: asyncio.Task | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.group: MatchScoreGroup | None = None
        #: ``time.time()`` when each update finished writing (for the latency benchmark)
        self.last_written: float | None = None
        #: times the server started serving again after its first start (:meth:`restart`, or a
        #: stop and a start): the ``ioc_restarts`` of ``xas-bluesky demo --json``
        self.restarts = 0
        self._starts = 0

    # -- names -------------------------------------------------------------------------------
    def pvname(self, attr: str) -> str:
        """Full PV name of an attribute of :class:`MatchScoreGroup` (e.g. ``"npoints"``)."""
        return self.prefix + PV_SUFFIXES[attr]

    @property
    def pvnames(self) -> dict[str, str]:
        return {attr: self.prefix + suffix for attr, suffix in PV_SUFFIXES.items()}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._ready.is_set()

    @property
    def latest(self) -> MatchSummary:
        """The last update handed to :meth:`publish` (what the PVs show once written)."""
        with self._lock:
            return self._latest

    # -- life cycle --------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> ScoreServer:
        """Start serving (returns once the server's sockets are bound); idempotent."""
        if self.running:
            return self
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._thread_main, name=f"score-ioc-{self.prefix}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"score IOC {self.prefix} did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"score IOC {self.prefix} failed to start: {self._error}")
        self._starts += 1
        self.restarts = self._starts - 1
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (clients see the PVs disconnect); the last update is kept."""
        loop, thread = self._loop, self._thread
        if loop is not None and self._main is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._main.cancel)
            except RuntimeError:  # loop already closed
                pass
        if thread is not None:
            thread.join(timeout)
        self._thread = None
        self._ready.clear()

    def restart(self) -> None:
        """Stop and start again on the same port; the last update is served again."""
        self.stop()
        self.start()

    def __enter__(self) -> ScoreServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- publishing --------------------------------------------------------------------------
    def publish(self, update: MatchSummary) -> None:
        """Hand an update to the server (thread-safe, never blocks, coalesces)."""
        with self._lock:
            self._latest = update
            self._dirty = True
            self._seq += 1
            loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # loop closed while stopping: the update waits for start()
                pass

    def wait_published(self, timeout: float = 0.05) -> bool:
        """Block until the last update handed to :meth:`publish` has been written to the PVs
        (True), the server is not running, or ``timeout`` passes (False).

        The analysis calls it right after publishing so that it does not hold the GIL with
        other Python work while the server's thread writes the PVs (a thread waiting for the GIL
        can wait a whole switch interval, 5 ms).
        """
        deadline = time.monotonic() + timeout
        with self._written:
            target = self._seq
            while self._applied < target and self.running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._written.wait(left)
        return True

    def set_status(self, status: str, message: str = "") -> None:
        """Change only the status and its message (keeps the last scores)."""
        with self._lock:
            update = replace(self._latest, status=status, message=message)
        self.publish(update)

    # -- the server thread -------------------------------------------------------------------
    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # reported to start(), or logged if it died later
            self._error = exc
            logger.exception("score IOC %s stopped with an error", self.prefix)
        finally:
            if self._error is not None:
                self._ready.set()  # wake start() to report it
            with self._lock:
                self._loop = None
                self._wake = None
            try:
                # let transports really close their sockets (close() is deferred to the loop):
                # a UDP socket left bound with SO_REUSEPORT would swallow searches after a restart
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(asyncio.sleep(0.05))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _serve(self) -> None:
        if self.tuned:
            tune_caproto()
        # a fresh group per start: subscriptions of a stopped server die with it
        self.group = MatchScoreGroup(prefix=self.prefix)
        ctx = Context(self.group.pvdb, self.interfaces)
        if self.port is not None:
            ctx.ca_server_port = int(self.port)
        wake = asyncio.Event()
        with self._lock:
            self._wake = wake
            self._dirty = True  # serve the last update again after a restart
        wake.set()

        async def startup_hook(async_lib):
            self._ready.set()
            await self._publisher(wake)

        self._main = asyncio.current_task()
        try:
            await ctx.run(startup_hook=startup_hook)
        finally:
            # caproto cancels its circuits' tasks but leaves their TCP connections open: clients
            # would keep a dead circuit (no FIN) and never search again.  Close them.
            for circuit in list(ctx.circuits):
                try:
                    circuit.client.close()
                except Exception:
                    pass

    async def _publisher(self, wake: asyncio.Event) -> None:
        group = self.group
        assert group is not None
        while True:
            await wake.wait()
            wake.clear()
            with self._lock:
                if not self._dirty:
                    continue
                update, self._dirty = self._latest, False
                self._counter += 1
                counter, seq = self._counter, self._seq
            try:
                await group.apply(update, counter)
                self.last_written = time.time()
            except Exception:  # a bad value must not kill the publisher
                logger.exception("could not write score update to %s", self.prefix)
            with self._written:
                self._applied = seq
                self._written.notify_all()


def main(argv: list[str] | None = None) -> None:
    """Serve :class:`MatchScoreGroup` standalone (``python -m``; ``xas-bluesky serve-ioc``)."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    ioc_options, run_options = ioc_arg_parser(
        default_prefix=DEFAULT_PREFIX, desc="Structure-match score PVs (xas_bluesky)"
    )
    run_ioc(MatchScoreGroup(**ioc_options), run_options)


if __name__ == "__main__":
    main()
