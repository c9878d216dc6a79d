"""``xas-bluesky worker``: run the live analysis in its own process (0MQ/Kafka).

The worker subscribes to the documents a RunEngine publishes (a ``bluesky-0MQ-proxy``'s out
address, or Kafka topics), scores XAS runs and hosts the score PVs itself (``--prefix``), so
plans read the same PVs wherever the analysis runs.  It shows ``Match:Message-Name`` = ``ready:
...`` once it is subscribed; wait for that before the first run
(:func:`xas_bluesky.beamline.remote.wait_for_worker`).
"""

from __future__ import annotations

import argparse
import os

from xas_bluesky.contracts import DEFAULT_PREFIX


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="Run the live analysis in its own process (0MQ/Kafka)",
        description=__doc__.splitlines()[0],
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--zmq", metavar="HOST:PORT", help="a bluesky-0MQ-proxy's out address")
    src.add_argument("--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers")
    p.add_argument("--topic", action="append", default=[], help="Kafka topic (repeatable)")
    p.add_argument("--zmq-prefix", default="", help="the Publisher's 0MQ prefix (default: all)")
    p.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"score PV prefix (default {DEFAULT_PREFIX})"
    )
    p.add_argument("--port", type=int, help="Channel Access server port (default: environment)")
    p.add_argument("--candidates", help="default candidates (.xyz, .sdf, .smi)")
    p.add_argument(
        "--edge",
        action="append",
        choices=("O", "N"),
        default=[],
        help="predict this edge's candidates before declaring ready (repeatable)",
    )
    p.add_argument("--tiled-uri", help="tiled server for predictions, matches, analysis runs")
    p.add_argument("--api-key", default=os.environ.get("TILED_API_KEY"), help="its API key")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xas_bluesky.apps.cli import CLIError
    from xas_bluesky.beamline import remote

    client = None
    if args.tiled_uri:
        from tiled.client import from_uri

        try:
            client = from_uri(args.tiled_uri, api_key=args.api_key)
        except Exception as exc:
            raise CLIError(f"tiled at {args.tiled_uri}: {type(exc).__name__}: {exc}") from None
    common = dict(
        score_prefix=args.prefix,
        port=args.port,
        tiled_client=client,
        candidates=args.candidates,
        edges=args.edge,
    )
    if args.zmq:
        remote.run_zmq_worker(args.zmq, zmq_prefix=args.zmq_prefix.encode(), **common)
    else:
        if not args.topic:
            raise CLIError("--kafka needs at least one --topic")
        try:
            remote.run_kafka_worker(args.kafka, args.topic, **common)
        except RuntimeError as exc:
            raise CLIError(str(exc)) from None
    return 0
