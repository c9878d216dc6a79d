"""Start and stop the processes a beamline session needs, on loopback: caproto IOCs, the Channel
Access repeater and a tiled server.

Shared by the demo, the test fixtures (:mod:`xas_bluesky.testing`) and users' own scripts.  Every
process is ours: we remember its PID and stop only that (SIGTERM, then SIGKILL after a grace time).
Readiness is polled -- a PV answers, an HTTP endpoint answers -- never slept for.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "ServiceError",
    "ManagedProcess",
    "free_ports",
    "loopback_ca_env",
    "apply_ca_env",
    "environ",
    "start_ioc",
    "start_repeater",
    "wait_for_repeater",
    "TiledServer",
    "start_tiled",
    "wait_for_pv",
]


class ServiceError(RuntimeError):
    """A service did not start, or stopped unexpectedly."""


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct loopback ports free for both TCP and UDP right now (Channel Access uses both)."""
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < n:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                tcp.close()
                udp.close()
                continue
            held += [tcp, udp]
            if port not in ports:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def loopback_ca_env(
    server_port: int,
    repeater_port: int | None = None,
    search_ports: Iterable[int] = (),
) -> dict[str, str]:
    """Channel Access variables that keep IOCs and clients on loopback.

    ``search_ports`` adds ``127.0.0.1:PORT`` entries to the clients' address list, so one client
    process (libca reads these once) can reach IOCs on several ports.
    """
    repeater_port = repeater_port or server_port + 1
    addrs = ["127.0.0.1"] + [f"127.0.0.1:{p}" for p in search_ports if p != server_port]
    return {
        "EPICS_CA_ADDR_LIST": " ".join(addrs),
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(server_port),
        "EPICS_CAS_SERVER_PORT": str(server_port),
        "EPICS_CA_REPEATER_PORT": str(repeater_port),
        "EPICS_CAS_BEACON_PORT": str(repeater_port),
    }


def apply_ca_env(env: dict[str, str]) -> None:
    """Put ``env`` into this process's environment.

    Must run before ``epics`` (pyepics) or ``ophyd`` is imported: libca reads these variables once.
    """
    if "epics.ca" in sys.modules and sys.modules["epics.ca"].libca is not None:
        current = os.environ.get("EPICS_CA_ADDR_LIST")
        if current != env.get("EPICS_CA_ADDR_LIST"):
            raise ServiceError(
                "pyepics already initialised Channel Access with another address list; "
                "set the loopback environment before importing epics/ophyd"
            )
    os.environ.update(env)


@contextlib.contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    """``env`` in this process's environment for the block, the previous values after it
    (caproto's synchronous client reads the address list on every call)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class ManagedProcess:
    """A child process we started, with its log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM this process (by PID), then SIGKILL after ``grace`` seconds."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(grace)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _spawn(
    name: str, cmd: Sequence[str], env: dict[str, str], log_dir: Path | None
) -> ManagedProcess:
    log_path = None
    out: BinaryIO | int
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        out = open(log_path, "ab")  # noqa: SIM115 -- handed to the child
    else:
        out = subprocess.DEVNULL
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    popen = subprocess.Popen(
        list(cmd), env=full_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    if log_dir is not None:
        assert not isinstance(out, int)  # the log file opened above
        out.close()
    return ManagedProcess(name, popen, log_path)


def wait_for_pv(
    pvname: str, env: dict[str, str], timeout: float = 20.0, alive: Callable[[], bool] | None = None
) -> object:
    """Poll ``pvname`` with caproto's synchronous client until it answers; return its value."""
    from caproto.sync.client import read

    with environ(env):
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise ServiceError(f"process serving {pvname} exited before it answered")
            try:
                return read(pvname, timeout=0.5, repeater=False).data
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.05)
        raise ServiceError(f"{pvname} did not answer within {timeout:.0f} s ({last})")


def start_ioc(
    args: Sequence[str],
    *,
    prefix: str,
    probe_pv: str,
    server_port: int,
    repeater_port: int | None = None,
    name: str | None = None,
    log_dir: Path | None = None,
    timeout: float = 30.0,
    extra_env: dict[str, str] | None = None,
) -> ManagedProcess:
    """Start an IOC as ``python <args> --prefix PREFIX`` on loopback and wait until ``probe_pv``
    (full name) answers.

    ``args`` is e.g. ``["-m", "sim_iocs.mono"]``.
    """
    env = loopback_ca_env(server_port, repeater_port)
    env.update(extra_env or {})
    proc = _spawn(
        name or prefix.strip(":").replace(":", "_"),
        [sys.executable, *args, "--prefix", prefix],
        env,
        log_dir,
    )
    proc.info.update(prefix=prefix, server_port=server_port, env=env)
    try:
        wait_for_pv(probe_pv, env, timeout, alive=proc.alive)
    except ServiceError as exc:
        proc.stop()
        raise ServiceError(f"{exc}\n{proc.log_tail()}") from None
    return proc


def wait_for_repeater(port: int, timeout: float = 10.0) -> bool:
    """Wait until a Channel Access repeater holds UDP ``port`` on loopback; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:  # in use: the repeater is up
            return True
        finally:
            sock.close()
        time.sleep(0.05)
    return False


def start_repeater(
    repeater_port: int, log_dir: Path | None = None, timeout: float = 10.0
) -> ManagedProcess:
    """caproto's Channel Access repeater on ``repeater_port`` (ours, stopped by PID), once it
    holds the port.

    Start it before any IOC or client: without one, libca warns, and caproto's synchronous client
    spawns a repeater of its own that outlives every process here.  (caproto's repeater binds
    0.0.0.0 -- it offers no choice -- and serves only local clients.)
    """
    env = {"EPICS_CA_REPEATER_PORT": str(repeater_port)}
    proc = _spawn(
        f"ca-repeater-{repeater_port}",
        [sys.executable, "-m", "caproto.commandline.repeater", "--quiet"],
        env,
        log_dir,
    )
    if not wait_for_repeater(repeater_port, timeout):
        proc.stop()
        raise ServiceError(
            f"no Channel Access repeater on port {repeater_port} after {timeout:g} s"
        )
    return proc


@dataclass
class TiledServer:
    """A tiled server process with an SQLite catalog under ``directory``."""

    process: ManagedProcess
    uri: str
    api_key: str
    directory: Path

    def client(self):
        from tiled.client import from_uri

        return from_uri(self.uri, api_key=self.api_key)

    def stop(self) -> None:
        self.process.stop(grace=10.0)

    def __enter__(self) -> TiledServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_tiled(
    directory: str | os.PathLike,
    *,
    port: int | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
) -> TiledServer:
    """Serve a writable tiled catalog (SQLite metadata, files and DuckDB tables under
    ``directory``) on ``127.0.0.1``, creating it if needed, and wait until it answers.

    The API key reaches the server in its environment (``TILED_SINGLE_USER_API_KEY``), never on
    its command line, where ``ps`` would show it to every user of the host.  Called again with the
    same ``directory``, ``port`` and ``api_key`` it restarts the same catalog: clients made before
    go on working.
    """
    import httpx

    directory = Path(directory).resolve()
    (directory / "data").mkdir(parents=True, exist_ok=True)
    port = port or free_ports(1)[0]
    api_key = api_key or secrets.token_hex(16)
    db = directory / "catalog.db"
    # tiled's own command line, with a DuckDB connection per request (its shared one crashes
    # the server under concurrent appends: xas_bluesky.apps.tiled_serve)
    cmd = [
        sys.executable,
        "-m",
        "xas_bluesky.apps.tiled_serve",
        "serve",
        "catalog",
        str(db),
        "-w",
        str(directory / "data"),
        "-w",
        f"duckdb:///{directory / 'storage.duckdb'}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if not db.exists():
        cmd.append("--init")
    # the key in the child's environment only (/proc/PID/environ is readable by its user alone)
    proc = _spawn(f"tiled-{port}", cmd, {"TILED_SINGLE_USER_API_KEY": api_key}, directory / "logs")
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise ServiceError(f"tiled server exited during start-up:\n{proc.log_tail()}")
        try:
            r = httpx.get(f"{uri}/api/v1/", timeout=1.0)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.stop()
            raise ServiceError(f"tiled server did not answer within {timeout:.0f} s")
        time.sleep(0.1)
    return TiledServer(proc, uri, api_key, directory)
