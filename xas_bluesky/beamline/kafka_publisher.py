"""Publish the RunEngine's documents to Kafka the way NSLS-II profiles do.

NSLS-II's ``nslsii.configure_kafka_publisher`` (called by ``configure_base(...,
publish_documents_with_kafka=True)``) reads ``/etc/bluesky/kafka.yml``::

    abort_run_on_kafka_exception: false
    bootstrap_servers:
      - kafka1:9092
      - kafka2:9092
    runengine_producer_config:
      acks: 0
      message.timeout.ms: 3000

and publishes every document on the topic ``<beamline>.bluesky.runengine.documents`` with
bluesky-kafka's ``Publisher`` (msgpack), which is what ``xas-bluesky worker --kafka`` reads
(:func:`~xas_bluesky.beamline.remote.run_kafka_worker`).  :func:`configure_kafka_publisher` does
the same without needing nslsii (which pulls in IPython, appdirs and the facility's logging):

- ``abort_run_on_kafka_exception: true`` -- a ``RunRouter`` makes one publisher per run and a
  run whose documents cannot be published (no broker at its start, an error while publishing)
  is aborted: nothing is measured that the facility's consumers do not get;
- ``false`` -- bluesky-kafka's queue thread publishes (the RunEngine only puts documents on a
  queue); with no broker reachable at start-up nothing is published and the RunEngine carries
  on, which the returned details and the log say.

Needs the ``kafka`` extra (bluesky-kafka, confluent-kafka).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_KAFKA_CONFIG",
    "KafkaConfigError",
    "KafkaPublisherDetails",
    "read_kafka_config",
    "configure_kafka_publisher",
    "runengine_topic",
]

logger = logging.getLogger(__name__)

#: where NSLS-II keeps the Kafka settings of every beamline workstation
DEFAULT_KAFKA_CONFIG = "/etc/bluesky/kafka.yml"
_REQUIRED = ("abort_run_on_kafka_exception", "bootstrap_servers", "runengine_producer_config")


class KafkaConfigError(ValueError):
    """The Kafka configuration file lacks a section or has one of the wrong type."""


@dataclass(frozen=True)
class KafkaPublisherDetails:
    """What :func:`configure_kafka_publisher` set up.

    Attributes
    ----------
    topic : str
        ``<beamline>.bluesky.runengine.documents``.
    bootstrap_servers : str
        Comma-separated broker addresses.
    abort_run_on_kafka_exception : bool
        Whether a publishing error aborts the run (RunRouter) or is only logged (queue thread).
    re_token : int or None
        The RunEngine subscription (``RE.unsubscribe(re_token)``); None when nothing publishes.
    queue_thread : Any
        bluesky-kafka's ``PublisherQueueThreadDetails`` (queue-thread mode), else None.
    error : str or None
        Why nothing publishes (queue-thread mode with no broker at start-up).
    """

    topic: str
    bootstrap_servers: str
    abort_run_on_kafka_exception: bool
    re_token: int | None
    queue_thread: Any = None
    error: str | None = None


def runengine_topic(beamline_name: str) -> str:
    """The NSLS-II topic of a beamline's RunEngine documents."""
    return f"{beamline_name.lower()}.bluesky.runengine.documents"


def read_kafka_config(path: str | os.PathLike = DEFAULT_KAFKA_CONFIG) -> dict[str, Any]:
    """Read and check a ``kafka.yml`` of nslsii's format.

    Raises
    ------
    FileNotFoundError
        No such file.
    KafkaConfigError
        A required section (``abort_run_on_kafka_exception``, ``bootstrap_servers``,
        ``runengine_producer_config``) is missing or of the wrong type.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Kafka configuration file {path}")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise KafkaConfigError(f"{path}: not a YAML mapping")
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise KafkaConfigError(f"{path}: missing section(s) {', '.join(missing)}")
    servers = config["bootstrap_servers"]
    items = [servers] if isinstance(servers, str) else servers
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise KafkaConfigError(f"{path}: bootstrap_servers must list host:port addresses")
    servers = [a.strip() for s in items for a in s.split(",") if a.strip()]  # "k1,k2" too
    if not servers:
        raise KafkaConfigError(f"{path}: bootstrap_servers is empty")
    if not isinstance(config["runengine_producer_config"], dict):
        raise KafkaConfigError(f"{path}: runengine_producer_config must be a mapping")
    if not isinstance(config["abort_run_on_kafka_exception"], bool):
        raise KafkaConfigError(f"{path}: abort_run_on_kafka_exception must be true or false")
    return {**config, "bootstrap_servers": servers}


def configure_kafka_publisher(
    RE: Any,
    beamline_name: str,
    *,
    config_path: str | os.PathLike = DEFAULT_KAFKA_CONFIG,
    broker_timeout: float = 5.0,
) -> KafkaPublisherDetails:
    """Subscribe a Kafka publisher of ``RE``'s documents, configured by ``config_path``.

    Parameters
    ----------
    RE
        The RunEngine.
    beamline_name
        Names the topic (``"iss"`` -> ``iss.bluesky.runengine.documents``).
    config_path
        nslsii's ``kafka.yml`` (see :func:`read_kafka_config`).
    broker_timeout
        Seconds to wait for a broker's answer when checking that one is reachable (at each
        run's start in abort mode, once here in queue-thread mode).

    Returns
    -------
    KafkaPublisherDetails
    """
    config = read_kafka_config(config_path)
    topic = runengine_topic(beamline_name)
    servers = ",".join(config["bootstrap_servers"])
    producer_config = dict(config["runengine_producer_config"])
    abort = bool(config["abort_run_on_kafka_exception"])
    if abort:
        token = RE.subscribe(_run_router(topic, servers, producer_config, broker_timeout))
        logger.info("RunEngine publishes to Kafka topic %s (a failure aborts the run)", topic)
        return KafkaPublisherDetails(topic, servers, True, token)

    from bluesky_kafka.tools.queue_thread import build_kafka_publisher_queue_and_thread
    from bluesky_kafka.utils import list_topics

    try:
        list_topics(servers, timeout=broker_timeout, producer_config=producer_config)
        details = build_kafka_publisher_queue_and_thread(
            topic=topic, bootstrap_servers=servers, producer_config=producer_config
        )
    except Exception as exc:  # no broker, no topic: the RunEngine runs without publishing
        msg = f"not publishing to Kafka topic {topic} at {servers}: {type(exc).__name__}: {exc}"
        logger.error(msg)
        return KafkaPublisherDetails(topic, servers, False, None, error=msg)
    token = RE.subscribe(details.put_on_publisher_queue)
    logger.info("RunEngine publishes to Kafka topic %s from a queue thread", topic)
    return KafkaPublisherDetails(topic, servers, False, token, queue_thread=details)


def _run_router(topic: str, servers: str, producer_config: dict, timeout: float):
    """A RunRouter that makes one bluesky-kafka ``Publisher`` per run (keyed by the run's uid,
    so a run's messages stay in order), after checking that a broker answers."""
    from bluesky_kafka import Publisher
    from bluesky_kafka.utils import list_topics
    from event_model import RunRouter

    def factory(name: str, start_doc: dict):
        # raises (and so aborts the run at its start) when no broker answers
        list_topics(bootstrap_servers=servers, producer_config=producer_config, timeout=timeout)
        publisher = Publisher(
            topic=topic,
            bootstrap_servers=servers,
            key=start_doc["uid"],
            producer_config=producer_config,
            flush_on_stop_doc=True,
        )
        return [publisher], []

    return RunRouter([factory])
