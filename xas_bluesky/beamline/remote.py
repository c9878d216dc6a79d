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
"""

from __future__ import annotations

import asyncio
import logging
import time

import zmq
from bluesky.callbacks.zmq import RemoteDispatcher
from zmq import asyncio as zmq_asyncio
from zmq.utils.monitor import parse_monitor_message

from xas_bluesky.beamline.analysis import AnalysisSession
from xas_bluesky.contracts import DEFAULT_PREFIX, PV_SUFFIXES

__all__ = ["ReadyRemoteDispatcher", "run_zmq_worker", "run_kafka_worker", "wait_for_worker"]

logger = logging.getLogger(__name__)

READY = "ready"


class ReadyRemoteDispatcher(RemoteDispatcher):
    """bluesky's ``RemoteDispatcher`` that calls ``on_ready()`` once its SUB socket has completed
    the ZMTP handshake with the proxy (the subscription is then on its way).  No CURVE
    security (bluesky's own ``RemoteDispatcher`` has it; the worker does not use it)."""

    def __init__(self, address, *, on_ready=None, settle_s: float = 0.05, **kwargs):
        super().__init__(address, **kwargs)
        self._on_ready = on_ready
        self._settle_s = settle_s

        # bluesky builds the socket in start(); ours attaches the monitor *before* connecting,
        # so the handshake event cannot happen before anyone listens for it
        def factory():
            asyncio.set_event_loop(self.loop)
            self._context = zmq_asyncio.Context()
            self._socket = sock = self._context.socket(zmq.SUB)
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


def run_zmq_worker(
    address: str,
    *,
    score_prefix: str = DEFAULT_PREFIX,
    port: int | None = None,
    tiled_client=None,
    candidates: str | None = None,
    edges=(),
    zmq_prefix: bytes = b"",
    **kwargs,
) -> None:
    """Run the analysis on documents from a 0MQ proxy's out address (blocking; Ctrl-C ends it).

    Parameters
    ----------
    address
        The proxy's out address, ``"127.0.0.1:5578"``.
    score_prefix, port
        Prefix and Channel Access port of the score PVs served by this process.
    tiled_client
        tiled container for predictions, match results and the analysis runs.
    candidates, edges
        Candidate file and edges to predict before declaring the worker ready.
    zmq_prefix
        The Publisher's prefix to listen to (``b""``: all).
    """
    # with a tiled client, the session writes the analysis runs through a buffered TiledWriter
    # and drains it in shutdown()
    session = AnalysisSession(
        score_prefix=score_prefix, port=port, tiled_client=tiled_client, candidates=candidates,
        **kwargs,
    )  # fmt: skip
    session.prepare(edges, candidates)

    def ready():
        session.server.set_status("Idle", f"{READY}: subscribed to {address}")
        logger.warning("worker ready: subscribed to %s, score PVs %s", address, score_prefix)

    dispatcher = ReadyRemoteDispatcher(address, prefix=zmq_prefix, on_ready=ready)
    dispatcher.subscribe(session.analysis)
    _serve(dispatcher, session)


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
    **kwargs,
) -> None:
    """Run the analysis on documents from Kafka (bluesky-kafka; NSLS-II topic
    ``{beamline}.bluesky.runengine.documents``).  Needs the ``kafka`` extra."""
    try:
        from bluesky_kafka import RemoteDispatcher as KafkaDispatcher
    except ImportError as exc:
        raise RuntimeError("Kafka needs bluesky-kafka (pip install 'xas-bluesky[kafka]')") from exc
    session = AnalysisSession(
        score_prefix=score_prefix, port=port, tiled_client=tiled_client, candidates=candidates,
        **kwargs,
    )  # fmt: skip
    session.prepare(edges, candidates)
    config = {"auto.offset.reset": "latest", **(consumer_config or {})}
    dispatcher = KafkaDispatcher(
        topics=topics,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        consumer_config=config,
    )
    dispatcher.subscribe(session.analysis)
    # Kafka keeps what was published before the consumer joined (within retention): with a
    # committed group offset nothing is lost to a slow join; say so once the consumer is built
    session.server.set_status(
        "Idle", f"{READY}: consuming {','.join(topics)} from {bootstrap_servers}"
    )
    _serve(dispatcher, session)


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
