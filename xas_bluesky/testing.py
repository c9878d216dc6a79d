"""Pytest fixtures with real services: caproto IOCs, a tiled server on loopback (its catalog in
SQLite, or in a PostgreSQL cluster of its own).

Use them in a project's ``conftest.py``::

    from xas_bluesky.testing import *  # noqa: F401,F403  (sets the CA environment first)

Importing this module reserves a pool of loopback ports and puts the Channel Access environment
into ``os.environ`` (libca reads it once per process, so this must happen before ``epics`` or
``ophyd`` is imported).  Each IOC a test starts gets a port of its own from the pool and a unique
PV prefix, so tests never see each other's PVs; the client searches every port of the pool.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from xas_bluesky.services import (
    ManagedProcess,
    PostgresServer,
    ServiceError,
    TiledServer,
    apply_ca_env,
    free_ports,
    loopback_ca_env,
    postgres_bindir,
    start_ioc,
    start_postgres,
    start_repeater,
    start_tiled,
)

__all__ = [
    "CA_PORTS",
    "CA_ENV",
    "ca_env",
    "ioc_factory",
    "tiled_server",
    "postgres_server",
    "tiled_server_pg",
    "IOCFactory",
    "unique_prefix",
    "service_missing",
    "REQUIRE_SERVICES",
]

#: set (to anything but "" or "0") where a missing redis or PostgreSQL must fail the tests that
#: need them instead of skipping them: CI sets it, so their tests cannot pass by not running
REQUIRE_SERVICES = "XAS_BLUESKY_REQUIRE_SERVICES"


def service_missing(reason: str) -> None:
    """Skip the test for want of a service (redis, PostgreSQL, their drivers), or fail it where
    :data:`REQUIRE_SERVICES` is set."""
    if os.environ.get(REQUIRE_SERVICES, "") not in ("", "0"):
        pytest.fail(f"{reason} ({REQUIRE_SERVICES} is set)")
    pytest.skip(reason)


_POOL = 32
_ports = free_ports(_POOL + 1)
#: ports reserved for the IOCs of this test session (one per IOC), and the repeater's
CA_PORTS: list[int] = _ports[:_POOL]
REPEATER_PORT: int = _ports[_POOL]
#: the client-side Channel Access environment of this process
CA_ENV: dict[str, str] = loopback_ca_env(CA_PORTS[0], REPEATER_PORT, search_ports=CA_PORTS)
apply_ca_env(CA_ENV)
_port_cycle = itertools.cycle(CA_PORTS[1:])  # port 0 is left for in-process servers


def unique_prefix(stem: str = "T") -> str:
    """A PV prefix no other test uses, e.g. ``T3f9a1c:``."""
    return f"{stem}{uuid.uuid4().hex[:6]}:"


def next_ca_port() -> int:
    """The next port of the pool (IOCs of one test never share one)."""
    return next(_port_cycle)


@pytest.fixture(scope="session")
def ca_env() -> Iterator[dict[str, str]]:
    """The loopback CA environment, with a Channel Access repeater running for the session."""
    rep = start_repeater(REPEATER_PORT)
    try:
        yield dict(CA_ENV)
    finally:
        rep.stop()


class IOCFactory:
    """Starts IOC subprocesses for one test and stops them (by PID) afterwards."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []

    def __call__(
        self,
        args: Sequence[str],
        probe: str,
        prefix: str | None = None,
        port: int | None = None,
        timeout: float = 30.0,
        extra_env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        """Start ``python <args> --prefix PREFIX`` and wait until ``PREFIX + probe`` answers.

        Returns the process; ``proc.info`` holds ``prefix``, ``server_port`` and ``env``.
        """
        prefix = prefix or unique_prefix()
        port = port or next_ca_port()
        proc = start_ioc(
            args,
            prefix=prefix,
            probe_pv=prefix + probe,
            server_port=port,
            repeater_port=REPEATER_PORT,
            log_dir=self.log_dir,
            timeout=timeout,
            extra_env=extra_env,
        )
        self.processes.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()


@pytest.fixture
def ioc_factory(ca_env, tmp_path) -> Iterator[IOCFactory]:
    """Start real caproto IOCs on loopback: ``ioc_factory(["-m", "pkg.ioc"], probe="PV")``."""
    factory = IOCFactory(tmp_path / "ioc-logs")
    try:
        yield factory
    finally:
        factory.stop_all()


def _serve_tiled(root: Path, catalog: str | None = None) -> Iterator[TiledServer]:
    """A tiled server on ``root`` (and ``catalog``) with its ``drains`` run before it stops."""
    server = start_tiled(root, catalog=catalog)
    server.drains = []  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        for drain in server.drains:  # type: ignore[attr-defined]
            try:
                drain()
            except Exception:  # a failing drain must not keep the server alive
                pass
        server.stop()


@pytest.fixture(scope="session")
def tiled_server() -> Iterator[TiledServer]:
    """A real tiled server (SQLite catalog, API key) on a free loopback port for the session.

    Append callables to ``tiled_server.drains`` to have writers drained before the server stops.
    """
    yield from _serve_tiled(Path(tempfile.mkdtemp(prefix="xas-bluesky-tiled-")))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of the session's own on a free loopback port, with a database for
    tiled (``postgres_server.uri``); skips where PostgreSQL's binaries are missing.

    ``initdb`` refuses root, so as root the cluster runs as the ``postgres`` user (``nobody``
    where there is none) in a temporary directory handed to it.  ``fsync`` is off: the cluster is
    thrown away after the session.
    """
    if postgres_bindir() is None:
        service_missing(
            "PostgreSQL's initdb/pg_ctl not found (PATH, /usr/lib/postgresql/*/bin): "
            "make test installs Debian's postgresql as root"
        )
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        service_missing("tiled's PostgreSQL driver asyncpg is not installed (extra test)")
    root = Path(tempfile.mkdtemp(prefix="xas-bluesky-pg-"))
    try:
        server = start_postgres(root, durable=False)
    except ServiceError as exc:
        pytest.fail(f"PostgreSQL did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()
        if server.pid is None:  # stopped: its ~40 MB need not outlive the session
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tiled_server_pg(postgres_server: PostgresServer) -> Iterator[TiledServer]:
    """As ``tiled_server``, with its catalog in ``postgres_server``'s database (files and DuckDB
    tables in a temporary directory, as there)."""
    root = Path(tempfile.mkdtemp(prefix="xas-bluesky-tiled-pg-"))
    yield from _serve_tiled(root, catalog=postgres_server.uri)


os.environ.setdefault("XAS_BLUESKY_TESTING", "1")
