"""The remote worker under faults, with a real 0MQ proxy, tiled and worker processes: pickle
refused, a stalled worker's lost events found and read back, a worker restarted mid-run picking
the run up."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from live_helpers import (
    caget,
    cagets,
    measure_plan,
    shared_cache,
    small_candidates,
    wait_for,
    xas_md,
)

from xas_bluesky.services import ManagedProcess, free_ports, loopback_ca_env
from xas_bluesky.testing import REPEATER_PORT, next_ca_port, unique_prefix

pytestmark = pytest.mark.system  # real IOCs, tiled, RunEngine or the shipped weights


def _spawn(name: str, cmd: list[str], env: dict, log_dir: Path) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            cmd,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return ManagedProcess(name, popen, log)


def _proxy(tmp_path):
    pin, pout = free_ports(2)
    exe = str(Path(sys.executable).with_name("bluesky-0MQ-proxy"))
    proc = _spawn(
        "proxy",
        [exe, "--in-address", f"127.0.0.1:{pin}", "--out-address", f"127.0.0.1:{pout}"],
        {},
        tmp_path / "logs",
    )
    return proc, f"127.0.0.1:{pin}", f"127.0.0.1:{pout}"


class Workers:
    """``xas-bluesky worker`` processes on one score prefix and port (started again at will)."""

    def __init__(self, tmp_path, out_address, tiled, cands):
        self.tmp_path = tmp_path
        self.out_address = out_address
        self.tiled = tiled
        self.cands = cands
        self.prefix, self.port = unique_prefix("W"), next_ca_port()
        self.procs: list[ManagedProcess] = []

    def start(self, wait: bool = True) -> ManagedProcess:
        from xas_bluesky.beamline.remote import wait_for_worker

        env = {**loopback_ca_env(self.port, REPEATER_PORT), "TILED_API_KEY": self.tiled.api_key}
        n = len(self.procs)
        proc = _spawn(
            f"worker{n}",
            [sys.executable, "-m", "xas_bluesky.apps.cli", "worker", "--zmq", self.out_address,
             "--prefix", self.prefix, "--port", str(self.port), "--candidates", str(self.cands),
             "--edge", "O", "--tiled-uri", self.tiled.uri,
             "--backup-dir", str(self.tmp_path / "backup")],
            env, self.tmp_path / "logs",
        )  # fmt: skip
        self.procs.append(proc)
        if wait:
            assert wait_for_worker(self.prefix, timeout=180), proc.log_tail(30)
        return proc

    def stop_all(self):
        for p in reversed(self.procs):
            if p.alive():
                with_signal(p, signal.SIGCONT)
            p.stop()


def with_signal(proc: ManagedProcess, sig) -> None:
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def remote_rig(ca_env, tiled_server, tmp_path):
    """A 0MQ proxy, the session's tiled, and a way to start worker processes."""
    proxy, in_addr, out_addr = _proxy(tmp_path)
    cands = small_candidates(tmp_path / "c16.xyz", 16)
    workers = Workers(tmp_path, out_addr, tiled_server, cands)
    try:
        yield {"in": in_addr, "workers": workers, "cands": cands, "tiled": tiled_server}
    finally:
        workers.stop_all()
        proxy.stop()


def test_pickle_refused_msgpack_accepted(tmp_path):
    """A pickled document that would run code is dropped unread; msgpack documents go through."""
    import zmq

    from xas_bluesky.beamline.remote import ReadyRemoteDispatcher, make_publisher

    proxy, in_addr, out_addr = _proxy(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    got: list = []
    reported: list = []  # the worker shows these on its status
    ready = threading.Event()
    holder: dict = {}

    def serve():
        d = ReadyRemoteDispatcher(out_addr, on_ready=ready.set, on_refused=reported.append)
        holder["d"] = d
        d.subscribe(lambda name, doc: got.append((name, doc)))
        try:
            d.start()
        except Exception:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        assert ready.wait(30)
        ctx = zmq.Context()
        raw = ctx.socket(zmq.PUB)
        raw.connect(f"tcp://{in_addr}")
        pub = make_publisher(in_addr)
        time.sleep(0.5)  # both PUB sockets' handshakes with the proxy
        raw.send(b" ".join([b"", b"start", pickle.dumps({"uid": "evil", "x": Evil()})]))
        pub("start", {"uid": "good", "time": 1.0, "arr": np.arange(3.0)})
        assert wait_for(lambda: len(got) >= 1, 20)
        time.sleep(0.5)
        assert [doc["uid"] for _, doc in got] == ["good"]
        assert got[0][1]["arr"] == [0.0, 1.0, 2.0]
        assert holder["d"].refused == 1 and reported == [1]
        assert not marker.exists()
        raw.close()
        pub.close()
        ctx.destroy()
    finally:
        d = holder.get("d")
        if d is not None:
            d.loop.call_soon_threadsafe(d._task.cancel)
        t.join(10)
        proxy.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)  # 20,000 events through tiled: ~2-3 min alone, past 300 s under load
def test_stalled_worker_events_found_and_read_back(remote_rig):
    """The worker is stopped (SIGSTOP) for most of a 20,000-event run: the proxy drops what its
    queue cannot hold.  The worker finds which events it missed from the seq_nums and the stop's
    count, reads them back from tiled, and its final status says so."""
    from bluesky import RunEngine
    from bluesky.callbacks.buffer import BufferingWrapper
    from bluesky_tiled_plugins import TiledWriter

    from xas_bluesky.beamline.remote import make_publisher

    n_events = int(os.environ.get("XAS_STALL_EVENTS", "20000"))
    w = remote_rig["workers"]
    proc = w.start()
    cands = shared_cache().from_file(remote_rig["cands"], "O")
    client = remote_rig["tiled"].client()
    RE = RunEngine({}, call_returns_result=False)
    writer = BufferingWrapper(TiledWriter(client))
    RE.subscribe(writer)
    publisher = make_publisher(remote_rig["in"])
    RE.subscribe(publisher)
    time.sleep(1.0)  # the publisher's own connection to the proxy (a PUB drops before it)
    energies = np.linspace(527.0, 560.0, n_events)

    def between(k):
        if k == 50:
            os.kill(proc.pid, signal.SIGSTOP)
        elif k == n_events - 50:
            os.kill(proc.pid, signal.SIGCONT)

    p = w.prefix
    try:
        (uid,) = RE(measure_plan(cands, 4, energies, between=between, seed=4))
        writer.shutdown(wait=True)
        assert wait_for(lambda: cagets(p + "Match:RunUID-I") == uid, 120)
        # the status turns Warning as soon as the engine sees seq_num gaps, mid-run: wait for
        # the run's final message
        assert wait_for(lambda: cagets(p + "Match:Message-Name").startswith("run finished"), 240)
        status, msg = cagets(p + "Match:Status-Sts"), cagets(p + "Match:Message-Name")
        n = caget(p + "Match:NPoints-I")
        print(f"\nstalled worker, {n_events} events: status {status}, NPoints {n}, message: {msg}")
        assert status == "Warning", msg
        assert "missed over 0MQ" in msg and "read back from tiled" in msg, msg
        assert n == n_events  # every event scored: none lost
    finally:
        publisher.close()
    assert proc.alive()


@pytest.mark.slow
def test_worker_restarted_mid_run_picks_the_run_up(remote_rig):
    """The worker is killed at point 10 of a plan that waits for each point's score; a new one
    starts, reads the run in flight from tiled, and the plan goes on to its end."""
    import bluesky.plan_stubs as bps
    from bluesky import RunEngine
    from bluesky.callbacks.buffer import BufferingWrapper
    from bluesky_tiled_plugins import TiledWriter
    from live_helpers import soft_devices

    from xas_bluesky.beamline.epics.devices import MatchScores
    from xas_bluesky.beamline.remote import make_publisher

    w = remote_rig["workers"]
    first = w.start()
    cands = shared_cache().from_file(remote_rig["cands"], "O")
    client = remote_rig["tiled"].client()
    RE = RunEngine({}, call_returns_result=False)
    writer = BufferingWrapper(TiledWriter(client, batch_size=1))  # as the profile's
    RE.subscribe(writer)
    publisher = make_publisher(remote_rig["in"])
    RE.subscribe(publisher)
    scores = MatchScores(w.prefix, name="scores", wait_timeout=180.0)
    scores.wait_for_connection(timeout=30)
    energies = np.arange(527.0, 560.0, 1.0)
    e_sig, i0_sig, tey_sig = soft_devices()
    rng = np.random.default_rng(2)
    restarted: dict = {}

    def plan():
        uid = yield from bps.open_run(md=xas_md())
        for k, e in enumerate(energies):
            if k == 10:
                os.kill(first.pid, signal.SIGKILL)  # gone mid-run, as a crash
                first.popen.wait(10)
                t0 = time.monotonic()
                w.start(wait=False)
                restarted["t0"] = t0
            mu = float(np.interp(e, cands.energy, cands.mean[7]))
            i0 = float(rng.poisson(1e6))
            for sig, v in (
                (e_sig, float(e)),
                (i0_sig, i0),
                (tey_sig, float(rng.poisson(i0 * (0.02 + 0.05 * mu)))),
            ):
                sig.put(v)
            yield from bps.trigger_and_read([e_sig, i0_sig, tey_sig])
            # as the adaptive plan: wait until the analysis has scored this point
            yield from bps.mv(scores.scored, (uid, k + 1))
            if k == 10:
                restarted["resumed_s"] = time.monotonic() - restarted["t0"]
        yield from bps.close_run()
        return uid

    p = w.prefix
    try:
        (uid,) = RE(plan())
        # Warning comes mid-run too (seq_num gaps): wait for the run's final message
        assert wait_for(lambda: cagets(p + "Match:Message-Name").startswith("run finished"), 60)
        status, msg = cagets(p + "Match:Status-Sts"), cagets(p + "Match:Message-Name")
        print(
            f"\nworker restarted at point 10: resumed after {restarted['resumed_s']:.1f} s; "
            f"status {status}: {msg}"
        )
        assert caget(p + "Match:NPoints-I") == len(energies)
        assert cagets(p + "Match:RunUID-I") == uid
        assert status == "Warning" and "joined the run late" in msg, msg
        top = cagets(p + "Match:TopNames-Wfm").split("\n")
        assert cands.names[7] in top[:3]
    finally:
        publisher.close()
        writer.shutdown(wait=True)


def test_kafka_worker_restarted_reads_the_run_in_flight_again(tmp_path):
    """Against librdkafka's mock cluster (no broker can run here): the worker's consumer commits
    between runs only, so a new one in the same group reads the run in flight again from its
    start document; a message that would unpickle code is dropped unread."""
    ck = pytest.importorskip("confluent_kafka")
    pytest.importorskip("bluesky_kafka")
    import msgpack
    from bluesky_kafka import Publisher as KafkaPublisher  # imports msgpack_numpy.patch()
    from event_model import compose_run

    from xas_bluesky.beamline.remote import (
        StreamGuard,
        kafka_consumer_config,
        make_kafka_dispatcher,
        pack_document,
    )

    assert kafka_consumer_config()["enable.auto.commit"] is False
    mock = ck.Producer({"test.mock.num.brokers": 1})
    brokers = mock.list_topics(timeout=10).brokers.values()
    boot = ",".join(f"{b.host}:{b.port}" for b in brokers)
    topic = "xas.bluesky.runengine.documents"
    pub = KafkaPublisher(
        topic=topic, bootstrap_servers=boot, key="re", serializer=pack_document,
        flush_on_stop_doc=True,
    )  # fmt: skip
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    def run(n_events: int, close: bool) -> str:
        bundle = compose_run(metadata={"xas_element": "O"})
        pub("start", bundle.start_doc)
        desc = bundle.compose_descriptor(
            name="primary", data_keys={"x": {"dtype": "number", "shape": [], "source": "s"}}
        )
        pub("descriptor", desc.descriptor_doc)
        for i in range(n_events):
            pub("event", desc.compose_event(data={"x": i}, timestamps={"x": 0.0}, seq_num=i + 1))
        if close:
            pub("stop", bundle.compose_stop())
        return bundle.start_doc["uid"]

    run_a = run(20, close=True)
    # msgpack_numpy's encoding of an object array: its decoder (msgpack patched by
    # bluesky-kafka, its default deserializer) would unpickle it and run Path.touch
    evil = msgpack.packb(("start", {"uid": "evil", "a": np.array([Evil()], dtype=object)}))
    raw = ck.Producer({"bootstrap.servers": boot})
    raw.produce(topic, key=b"re", value=evil)
    raw.flush(10)
    run_b = run(10, close=False)
    pub.flush()
    cfg = {"auto.offset.reset": "earliest", "session.timeout.ms": 6000,
           "heartbeat.interval.ms": 500}  # fmt: skip

    def consume(until, timeout=60.0):
        got: list = []
        guard = StreamGuard(target=lambda n, d: got.append((n, d)), transport="Kafka")
        d = make_kafka_dispatcher(boot, [topic], group_id="xas", consumer_config=cfg, guard=guard)
        d.subscribe(guard)
        deadline = time.monotonic() + timeout
        d.start(
            continue_polling=lambda: not until(got) and time.monotonic() < deadline,
            work_during_wait=d.commit_between_runs,
        )
        d._bluesky_consumer._consumer.close()  # leaves the group; commits nothing itself
        return got

    def events_of(got, uid):
        descs = {d["uid"] for n, d in got if n == "descriptor" and d["run_start"] == uid}
        seqs = []
        for n, d in got:
            if n == "event" and d["descriptor"] in descs:
                seqs.append(d["seq_num"])
            elif n == "event_page" and d["descriptor"] in descs:
                seqs += list(d["seq_num"])
        return seqs

    # the first worker reads run A whole and run B up to its 5th event, then dies
    first = consume(lambda got: len(events_of(got, run_b)) >= 5)
    assert events_of(first, run_a) == list(range(1, 21))
    assert len(events_of(first, run_b)) >= 5
    # the next one, same group, starts at run B's start document: run B whole, nothing of A
    second = consume(lambda got: len(events_of(got, run_b)) >= 10)
    # (after the evil message, committed past with run A: refused unread, nothing ran)
    assert not [d for _, d in second if d.get("uid") == "evil"]
    assert not marker.exists()
    rest = [(n, d) for n, d in second if d.get("uid") != "evil"]
    assert rest[0][0] == "start" and rest[0][1]["uid"] == run_b
    assert events_of(second, run_b) == list(range(1, 11))
    assert not events_of(second, run_a)


def test_worker_options_interfaces_and_api_key_from_environment(monkeypatch):
    """The score IOC listens on loopback unless told otherwise; the API key can stay off the
    command line (``TILED_API_KEY``) for every client command."""
    from xas_bluesky.apps.cli import build_parser

    monkeypatch.setenv("TILED_API_KEY", "from-env")
    parser = build_parser()
    a = parser.parse_args(["worker", "--zmq", "h:1"])
    assert a.interfaces == ["127.0.0.1"] and a.api_key == "from-env" and not a.no_resume
    a = parser.parse_args(["worker", "--zmq", "h:1", "--interfaces", "0.0.0.0", "--api-key", "k"])
    assert a.interfaces == ["0.0.0.0"] and a.api_key == "k"
    assert parser.parse_args(["query", "--tiled-uri", "u"]).api_key == "from-env"
    assert parser.parse_args(["replay", "--backup", "d", "--tiled-uri", "u"]).api_key == "from-env"
