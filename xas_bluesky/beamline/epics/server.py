"""The one place where every caproto server of the project is tuned and started.

caproto 1.3.0 leaves Nagle's algorithm on for its TCP sockets, so back-to-back replies to one client
stall ~40 ms (the peer's delayed ACK) and a RunEngine over such an IOC manages ~20 events/s.
:func:`tune_caproto` turns on ``TCP_NODELAY`` for every TCP socket the asyncio server binds (accepted
connections inherit it on Linux, and we set it again on each accepted transport to be sure) and sets
how long the server batches monitor updates under load.  Every IOC of the project -- the score PVs
and the simulated beamline -- starts through :func:`run_ioc`, so none can forget it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

__all__ = ["tune_caproto", "run_ioc", "is_tuned", "DEFAULT_MONITOR_BATCH_S"]

#: caproto's default is 0.01 s; 1 ms keeps batching under load without adding 10 ms per monitor.
DEFAULT_MONITOR_BATCH_S = 0.001

_TUNED = False


def _nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not a TCP socket (or already closed): nothing to tune
        pass


def tune_caproto(monitor_batch_s: float | None = None) -> None:
    """Patch caproto's asyncio server for low latency (idempotent).

    Parameters
    ----------
    monitor_batch_s
        Seconds the server waits to batch monitor updates under high load
        (``CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC``).  Default: that variable if set, else
        :data:`DEFAULT_MONITOR_BATCH_S`.
    """
    global _TUNED
    import caproto.asyncio.server as aserver
    import caproto.server.common as common

    if monitor_batch_s is None:
        env = os.environ.get("CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC")
        monitor_batch_s = float(env) if env else DEFAULT_MONITOR_BATCH_S
    common.HIGH_LOAD_TIMEOUT = float(monitor_batch_s)
    if _TUNED:
        return

    original_bind = aserver._create_bound_tcp_socket

    async def _bound_nodelay(addr, port):
        sock = await original_bind(addr, port)
        _nodelay(sock)
        return sock

    aserver._create_bound_tcp_socket = _bound_nodelay

    original_wrapper_init = aserver._TransportWrapper.__init__

    def _wrapper_init(self, reader, writer, *args, **kwargs):
        original_wrapper_init(self, reader, writer, *args, **kwargs)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            _nodelay(sock)

    aserver._TransportWrapper.__init__ = _wrapper_init
    _TUNED = True


def is_tuned() -> bool:
    """Whether :func:`tune_caproto` has patched this process."""
    return _TUNED


def run_ioc(ioc, options: dict, startup_hook: Callable | None = None, tuned: bool = True) -> None:
    """Run a caproto ``PVGroup`` IOC (blocking) with the project's tuning.

    ``options`` are those returned by :func:`caproto.server.ioc_arg_parser`.  ``tuned=False`` runs
    caproto as shipped; benchmarks and the latency test use it as the baseline.
    """
    from caproto.server import run

    if tuned:
        tune_caproto()
    options = dict(options)
    if startup_hook is not None:
        options["startup_hook"] = startup_hook
    run(ioc.pvdb, **options)
