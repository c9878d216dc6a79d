"""The profile's Kafka publisher (nslsii's ``configure_kafka_publisher`` conventions), with the
real bluesky-kafka and confluent-kafka against a loopback port where no broker listens.

What is not tested here: publishing to a live broker (no Kafka broker runs on this machine);
the worker's side of Kafka is :mod:`tests.test_remote`'s.
"""

from __future__ import annotations

import socket
import textwrap
import time

import pytest

pytest.importorskip("bluesky_kafka")

from xas_bluesky.beamline.kafka_publisher import (  # noqa: E402
    KafkaConfigError,
    configure_kafka_publisher,
    read_kafka_config,
    runengine_topic,
)


def _dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path, abort: bool, servers: str | None = None) -> str:
    servers = servers or f"127.0.0.1:{_dead_port()}"
    path = tmp_path / "kafka.yml"
    path.write_text(
        textwrap.dedent(
            f"""\
            abort_run_on_kafka_exception: {str(abort).lower()}
            bootstrap_servers:
              - {servers}
            runengine_producer_config:
              acks: 0
              message.timeout.ms: 1000
            """
        )
    )
    return str(path)


def test_the_config_file_is_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Kafka configuration file"):
        read_kafka_config(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("bootstrap_servers: [k1:9092]\n")
    with pytest.raises(KafkaConfigError, match="abort_run_on_kafka_exception"):
        read_kafka_config(bad)
    bad.write_text(
        "abort_run_on_kafka_exception: yes-please\nbootstrap_servers: [k1:9092]\n"
        "runengine_producer_config: {}\n"
    )
    with pytest.raises(KafkaConfigError, match="true or false"):
        read_kafka_config(bad)
    cfg = read_kafka_config(_config(tmp_path, False, "k1:9092,k2:9092"))
    assert cfg["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert runengine_topic("ISS") == "iss.bluesky.runengine.documents"


def _run_count(RE):
    from bluesky.plans import count
    from ophyd.sim import det

    return RE(count([det], num=3))


def test_no_broker_queue_thread_mode_runs_on(tmp_path, caplog):
    """``abort_run_on_kafka_exception: false`` and no broker: nothing is subscribed, the log
    says why, and the RunEngine runs its plans."""
    from bluesky import RunEngine

    RE = RunEngine({})
    details = configure_kafka_publisher(
        RE, "xas", config_path=_config(tmp_path, False), broker_timeout=1.0
    )
    assert details.re_token is None and details.topic == "xas.bluesky.runengine.documents"
    assert "not publishing" in details.error and "not publishing" in caplog.text
    (uid,) = _run_count(RE)
    assert uid and RE.state == "idle"


def test_no_broker_abort_mode_aborts_the_run(tmp_path):
    """``abort_run_on_kafka_exception: true`` and no broker: the run fails at its start (nothing
    is measured that the facility's consumers would not get), and the RunEngine is ready for
    the next one."""
    from bluesky import RunEngine

    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append(name))
    details = configure_kafka_publisher(
        RE, "xas", config_path=_config(tmp_path, True), broker_timeout=1.0
    )
    assert details.re_token is not None and details.abort_run_on_kafka_exception
    with pytest.raises(Exception, match="(?i)kafka|transport|broker|timed out"):
        _run_count(RE)
    assert "event" not in docs
    assert RE.state == "idle"


def test_bluesky_kafka_default_encoding_is_read_as_plain_data():
    """What an NSLS-II profile publishes (bluesky-kafka's default serializer, msgpack_numpy):
    the worker reads numeric arrays and numpy scalars as lists and numbers, and refuses an
    object array (msgpack_numpy would unpickle it) without reading it."""
    import bluesky_kafka  # noqa: F401  (patches msgpack with msgpack_numpy, as at a beamline)
    import msgpack
    import msgpack_numpy
    import numpy as np

    from xas_bluesky.beamline.remote import unpack_message

    doc = {"data": {"x": np.float32(2.5), "wf": np.arange(6.0).reshape(2, 3), "n": np.int64(7)}}
    packed = msgpack.packb(("event", doc), default=msgpack_numpy.encode, use_bin_type=True)
    name, out = unpack_message(packed)
    assert name == "event"
    assert out["data"] == {"x": 2.5, "wf": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], "n": 7}
    evil = {"a": np.array([1, "x"], dtype=object)}
    packed = msgpack.packb(("event", evil), default=msgpack_numpy.encode, use_bin_type=True)
    with pytest.raises(ValueError, match="refused"):
        unpack_message(packed)


@pytest.mark.parametrize("abort", [True, False])
def test_publishes_to_librdkafka_mock_cluster(tmp_path, abort):
    """Against librdkafka's mock cluster (a broker in the client library: none can run here):
    both modes publish a run's documents on ``<beamline>.bluesky.runengine.documents``, where a
    consumer reads them back with the worker's decoder."""
    ck = pytest.importorskip("confluent_kafka")
    from bluesky import RunEngine

    from xas_bluesky.beamline.remote import unpack_message

    mock = ck.Producer({"test.mock.num.brokers": 1})
    boot = ",".join(f"{b.host}:{b.port}" for b in mock.list_topics(timeout=10).brokers.values())
    topic = runengine_topic("xas")
    # the queue thread publishes only to a topic the broker has (nslsii's rule): make it
    seed = ck.Producer({"bootstrap.servers": boot})
    seed.produce(topic, value=b"")
    seed.flush(10)
    RE = RunEngine({})
    details = configure_kafka_publisher(RE, "XAS", config_path=_config(tmp_path, abort, boot))
    assert details.error is None and details.re_token is not None
    (uid,) = _run_count(RE)
    if details.queue_thread is not None:  # let the thread drain its queue
        q = details.queue_thread.publisher_queue
        deadline = time.monotonic() + 30
        while not q.empty() and time.monotonic() < deadline:
            time.sleep(0.1)
    consumer = ck.Consumer(
        {"bootstrap.servers": boot, "group.id": f"t{abort}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    got: list = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(n == "stop" for n, _ in got):
        msg = consumer.poll(0.5)
        if msg is None or msg.error() or not msg.value():
            continue
        got.append(unpack_message(msg.value()))
    consumer.close()
    if details.queue_thread is not None:
        details.queue_thread.publisher_thread_stop_event.set()
    names = [n for n, d in got if n != "descriptor" or d["run_start"] == uid]
    assert names[0] == "start" and got[0][1]["uid"] == uid
    assert names.count("event") + names.count("event_page") >= 1 and names[-1] == "stop"
