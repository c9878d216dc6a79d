"""Start and stop the processes a beamline session needs, on loopback: caproto IOCs, the Channel
Access repeater, a tiled server and, for a tiled catalog on PostgreSQL, a PostgreSQL cluster.

Shared by the demo, the test fixtures (:mod:`xas_bluesky.testing`) and users' own scripts.  Every
process is ours: we remember its PID and stop only that (SIGTERM, then SIGKILL after a grace time).
Readiness is polled -- a PV answers, an HTTP endpoint answers -- never slept for.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shlex
import shutil
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
    "PostgresServer",
    "postgres_bindir",
    "start_postgres",
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
    """A tiled server process; its files and DuckDB tables under ``directory``, its catalog an
    SQLite file there or the database it was started on (``start_tiled(catalog=...)``)."""

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
    catalog: str | None = None,
    readable: Sequence[str | os.PathLike] = (),
) -> TiledServer:
    """Serve a writable tiled catalog (SQLite metadata, files and DuckDB tables under
    ``directory``) on ``127.0.0.1``, creating it if needed, and wait until it answers.

    The API key reaches the server in its environment (``TILED_SINGLE_USER_API_KEY``), never on
    its command line, where ``ps`` would show it to every user of the host.  Called again with the
    same ``directory``, ``port`` and ``api_key`` (and ``catalog``) it restarts the same catalog:
    clients made before go on working.

    Parameters
    ----------
    directory
        Files, DuckDB tables, logs and (without ``catalog``) the SQLite catalog ``catalog.db``.
    port
        The loopback port; a free one by default.
    api_key
        The single-user API key; a random one by default.
    timeout
        Seconds to wait for the server to answer.
    catalog
        A database URI for the catalog instead of the SQLite file, e.g.
        :attr:`PostgresServer.uri` (``postgresql+asyncpg://USER:PASSWORD@127.0.0.1:PORT/DB``).
        Its password moves to the server's environment (``PGPASSWORD``, which asyncpg reads),
        off the command line.  tiled creates its tables on the first start and leaves them alone
        after (``--init`` runs ``tiled catalog init --if-not-exists``).
    readable
        Directories whose files the server may serve as they are, once registered in the
        catalog (e.g. the HDF5 files of ``xas-bluesky predict --out FILE.h5``).

    Returns
    -------
    TiledServer
        The running server; ``stop()`` or a ``with`` block ends it.
    """
    import httpx

    directory = Path(directory).resolve()
    (directory / "data").mkdir(parents=True, exist_ok=True)
    port = port or free_ports(1)[0]
    api_key = api_key or secrets.token_hex(16)
    env = {"TILED_SINGLE_USER_API_KEY": api_key}
    if catalog is None:
        db = directory / "catalog.db"
        database, init = str(db), not db.exists()
    else:
        database, password = _split_password(catalog)
        if password is not None:
            env["PGPASSWORD"] = password
        # whether a database holds a catalog yet cannot be seen from here; tiled's own
        # check (--init is ``catalog init --if-not-exists``) decides
        init = True
    # tiled's own command line, with a DuckDB connection per request (its shared one crashes
    # the server under concurrent appends: xas_bluesky.apps.tiled_serve)
    cmd = [
        sys.executable,
        "-m",
        "xas_bluesky.apps.tiled_serve",
        "serve",
        "catalog",
        database,
        "-w",
        str(directory / "data"),
        "-w",
        f"duckdb:///{directory / 'storage.duckdb'}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    for path in readable:
        cmd += ["-r", str(Path(path).resolve())]
    if init:
        cmd.append("--init")
    # the secrets in the child's environment only (/proc/PID/environ is readable by its user alone)
    proc = _spawn(f"tiled-{port}", cmd, env, directory / "logs")
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


def _split_password(uri: str) -> tuple[str, str | None]:
    """``uri`` without its password, and the password (None if it has none)."""
    if "://" not in uri:  # a file path (SQLite)
        return uri, None
    from sqlalchemy.engine import URL, make_url

    url = make_url(uri)
    if url.password is None:
        return uri, None
    # URL.set(password=None) keeps the password: build the URL again without it
    bare = URL.create(
        url.drivername, url.username, None, url.host, url.port, url.database, url.query
    )
    return bare.render_as_string(hide_password=False), str(url.password)


# Debian keeps PostgreSQL's server binaries off PATH, one directory per major version
_PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def postgres_bindir() -> Path | None:
    """The directory of PostgreSQL's ``initdb`` and ``pg_ctl``, or None where there is none.

    ``pg_ctl`` on ``PATH`` first, then Debian's ``/usr/lib/postgresql/<version>/bin``, the newest
    version.
    """
    on_path = shutil.which("pg_ctl")
    if on_path is not None and (Path(on_path).resolve().parent / "initdb").exists():
        return Path(on_path).resolve().parent

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", bindir.parent.name))

    found = [
        d
        for d in Path("/").glob(_PG_BIN_GLOB.lstrip("/"))
        if (d / "initdb").exists() and (d / "pg_ctl").exists()
    ]
    return max(found, key=version) if found else None


def _cluster_user() -> str | None:
    """The unprivileged user to run PostgreSQL as: None (ourselves) unless we are root, whom
    ``initdb`` and ``pg_ctl`` refuse; then ``postgres`` where it exists, else ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise ServiceError("running as root, and neither a 'postgres' nor a 'nobody' user exists")


def _run_as(
    user: str | None, cmd: Sequence[str], *, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``cmd`` as ``user`` (None: as ourselves); its output captured, never raising."""
    kwargs: dict = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        # subprocess drops privileges in the child (setgroups, setgid, setuid): no runuser needed
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    return subprocess.run(
        list(cmd),
        env={**os.environ, **(env or {})},
        cwd="/",  # our own working directory may be closed to that user
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        **kwargs,
    )


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie that nobody reaps counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: it exists
        return True
    with contextlib.suppress(OSError):
        # the state follows the command name's closing parenthesis in /proc/PID/stat
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@dataclass
class PostgresServer:
    """A PostgreSQL cluster under ``directory``, served on ``127.0.0.1:port`` by a postmaster we
    started (``pg_ctl``), with one database for a tiled catalog.

    Attributes
    ----------
    directory
        Holds the cluster (``pgdata``), its log (``postgres.log``), its Unix socket and
        ``password``.
    port
        The loopback TCP port.
    user, password, database
        The cluster's superuser (password authentication, SCRAM) and the database made for tiled.
    bindir
        Where ``initdb`` and ``pg_ctl`` were found.
    os_user
        The account the cluster runs as (None: this process's own).
    """

    directory: Path
    port: int
    user: str
    password: str
    database: str
    bindir: Path
    os_user: str | None

    @property
    def uri(self) -> str:
        """The database's URI for tiled (``start_tiled(catalog=server.uri)``); holds the password."""
        return (
            f"postgresql+asyncpg://{self.user}:{self.password}@127.0.0.1:{self.port}/"
            f"{self.database}"
        )

    @property
    def pgdata(self) -> Path:
        return self.directory / "pgdata"

    @property
    def pid(self) -> int | None:
        """The postmaster's PID (from ``postmaster.pid``), or None if it is not running."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        return None

    def log_tail(self, n: int = 20) -> str:
        log = self.directory / "postgres.log"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 30.0) -> None:
        """``pg_ctl stop -m fast`` (disconnects clients, then a clean shutdown); if that fails,
        SIGINT (the same fast shutdown) to the postmaster by PID, then SIGKILL."""
        pid = self.pid
        if pid is None or not _pid_alive(pid):
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            pg_ctl = [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.pgdata), "-m", "fast"]
            _run_as(self.os_user, [*pg_ctl, "-w", "-t", str(int(timeout))], timeout=timeout + 5)
        for sig in (signal.SIGINT, signal.SIGKILL):
            if not _pid_alive(pid):
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_postgres(
    directory: str | os.PathLike,
    *,
    port: int | None = None,
    timeout: float = 60.0,
    bindir: str | os.PathLike | None = None,
    database: str = "tiled",
    durable: bool = True,
) -> PostgresServer:
    """Start a PostgreSQL cluster under ``directory`` on ``127.0.0.1``, creating it (``initdb``)
    and a database for a tiled catalog if needed, and wait until it answers.

    As root it runs as the ``postgres`` user (``nobody`` where there is none): ``initdb`` and
    ``pg_ctl`` refuse root.  ``directory`` is then handed to that user, so its parents must let
    it through (``tempfile.mkdtemp()`` under ``/tmp`` does).  It listens on loopback TCP only,
    with SCRAM password authentication for every connection; its Unix socket lies in
    ``directory``, not in the system's ``/var/run/postgresql``.  Called again on the same
    ``directory`` it starts the same cluster (same password and database).

    Parameters
    ----------
    directory
        The cluster's home; created if missing.
    port
        The loopback TCP port; a free one by default.
    timeout
        Seconds to wait for start-up.
    bindir
        Where ``initdb`` and ``pg_ctl`` are; :func:`postgres_bindir` by default.
    database
        The database to create for tiled.
    durable
        False turns ``fsync`` off, for throw-away clusters (tests): quicker writes, and a crash
        of the host may corrupt the cluster.

    Returns
    -------
    PostgresServer
        The running cluster; ``stop()`` or a ``with`` block shuts it down.

    Raises
    ------
    ServiceError
        The binaries are missing, or the cluster did not initialise or start (with its log).
    """
    found = Path(bindir) if bindir is not None else postgres_bindir()
    if found is None or not (found / "initdb").exists() or not (found / "pg_ctl").exists():
        raise ServiceError(
            "PostgreSQL's initdb and pg_ctl not found (not on PATH, nor in "
            f"{_PG_BIN_GLOB}); on Debian: apt-get install postgresql"
            + ("" if bindir is None else f"; bindir={bindir}")
        )
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
        raise ValueError(f"database name {database!r}: letters, digits and _ only")
    directory = Path(directory).resolve()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os_user = _cluster_user()
    owner = None if os_user is None else pwd.getpwnam(os_user)
    if owner is not None:
        os.chown(directory, owner.pw_uid, owner.pw_gid)
    pgdata = directory / "pgdata"
    secret = directory / "password"  # 0600 in a 0700 directory, as ~/.pgpass would be
    if (pgdata / "PG_VERSION").exists():  # a cluster made before: start it again
        password = secret.read_text().strip()
    else:
        password = secrets.token_hex(16)
        secret.write_text(password)
        secret.chmod(0o600)
        if owner is not None:  # initdb reads it as that user
            os.chown(secret, owner.pw_uid, owner.pw_gid)
        init = _run_as(
            os_user,
            [str(found / "initdb"), "-D", str(pgdata), "-U", "xas", f"--pwfile={secret}",
             "--auth=scram-sha-256", "-E", "UTF8", "--no-locale"]
            + ([] if durable else ["--no-sync"]),
            timeout=timeout,
        )  # fmt: skip
        if init.returncode != 0:
            raise ServiceError(f"initdb in {pgdata} failed:\n{init.stdout}{init.stderr}")
    server = PostgresServer(
        directory, port or free_ports(1)[0], "xas", password, database, found, os_user
    )
    # loopback TCP only; the socket in our directory (the system's may not exist, or be root's)
    # (pg_ctl hands -o to a shell, hence the quoting)
    options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {shlex.quote(str(directory))}"
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    try:
        start = _run_as(
            os_user,
            [str(found / "pg_ctl"), "start", "-D", str(pgdata), "-l",
             str(directory / "postgres.log"), "-w", "-t", str(int(timeout)), "-o", options],
            timeout=timeout + 5,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        server.stop()
        raise ServiceError(f"PostgreSQL did not start within {timeout:.0f} s") from None
    if start.returncode != 0:
        server.stop()
        raise ServiceError(f"pg_ctl start failed ({start.stderr.strip()}):\n{server.log_tail()}")
    try:
        _create_database(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _create_database(server: PostgresServer, timeout: float) -> None:
    """Wait until the server takes a connection, then create its database unless it exists."""
    env = {"PGPASSWORD": server.password, "PGCONNECT_TIMEOUT": "2"}
    where = ["-h", "127.0.0.1", "-p", str(server.port), "-U", server.user]
    psql = [str(server.bindir / "psql"), *where, "-d", "postgres", "-tAq", "-v", "ON_ERROR_STOP=1"]
    deadline = time.monotonic() + timeout
    while True:  # pg_ctl -w saw the postmaster ready; this is the first real login
        found = _run_as(
            None,
            [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{server.database}'"],
            timeout=timeout,
            env=env,
        )
        if found.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise ServiceError(
                f"PostgreSQL on port {server.port} did not answer: {found.stderr.strip()}"
            )
        time.sleep(0.1)
    if found.stdout.strip() != "1":
        made = _run_as(
            None, [*psql, "-c", f'CREATE DATABASE "{server.database}"'], timeout=timeout, env=env
        )
        if made.returncode != 0:
            raise ServiceError(f"CREATE DATABASE {server.database}: {made.stderr.strip()}")
