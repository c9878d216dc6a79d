"""``xas-bluesky worker``: run the live analysis in its own process (0MQ/Kafka).

The worker subscribes to the documents a RunEngine publishes (a ``bluesky-0MQ-proxy``'s out
address, or Kafka topics), scores XAS runs and hosts the score PVs itself (``--prefix``), so
plans read the same PVs wherever the analysis runs.  It shows ``Match:Message-Name`` = ``ready:
...`` once it is subscribed; wait for that before the first run
(:func:`xas_bluesky.beamline.remote.wait_for_worker`).

Documents arrive as msgpack (never pickle): publish them with
:func:`xas_bluesky.beamline.remote.make_publisher`.  With ``--tiled-uri``, what tiled does not take
waits in ``--backup-dir`` (``xas-bluesky replay`` writes it later), events missed over 0MQ are
read back from tiled, and a worker started during a run picks that run up.  The score IOC listens
on ``--interfaces`` (loopback by default: give the host's address for other hosts to read it).
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
    p.add_argument(
        "--group-id",
        help="Kafka consumer group (default xas-bluesky-<prefix>: every worker with its own "
        "score prefix reads every document; workers sharing a group share the runs)",
    )
    p.add_argument("--zmq-prefix", default="", help="the Publisher's 0MQ prefix (default: all)")
    p.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"score PV prefix (default {DEFAULT_PREFIX})"
    )
    p.add_argument("--port", type=int, help="Channel Access server port (default: environment)")
    p.add_argument(
        "--interfaces",
        nargs="+",
        default=["127.0.0.1"],
        metavar="ADDR",
        help="addresses the score IOC listens on (default 127.0.0.1: this host only; "
        "0.0.0.0 or the host's address for plans on other hosts)",
    )
    p.add_argument("--candidates", help="default candidates (.xyz, .sdf, .smi)")
    p.add_argument(
        "--edge",
        action="append",
        choices=("O", "N"),
        default=[],
        help="predict this edge's candidates before declaring ready (repeatable)",
    )
    p.add_argument("--tiled-uri", help="tiled server for predictions, matches, analysis runs")
    p.add_argument(
        "--api-key",
        default=os.environ.get("TILED_API_KEY"),
        help="its API key (default: $TILED_API_KEY, which keeps it off the command line)",
    )
    p.add_argument(
        "--backup-dir",
        default=os.environ.get("XAS_BACKUP_DIR")
        or os.path.expanduser("~/.cache/xas_bluesky/backup"),
        help="where runs and match results wait while tiled is away "
        "(default: $XAS_BACKUP_DIR or ~/.cache/xas_bluesky/backup)",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="do not pick up the runs in flight that tiled holds when starting",
    )
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
        interfaces=args.interfaces,
        tiled_client=client,
        backup_directory=args.backup_dir if client is not None else None,
        candidates=args.candidates,
        edges=args.edge,
    )
    if args.zmq:
        remote.run_zmq_worker(
            args.zmq, zmq_prefix=args.zmq_prefix.encode(), resume=not args.no_resume, **common
        )
    else:
        if not args.topic:
            raise CLIError("--kafka needs at least one --topic")
        try:
            group = args.group_id or f"xas-bluesky-{args.prefix.rstrip(':')}"
            remote.run_kafka_worker(args.kafka, args.topic, group_id=group, **common)
        except RuntimeError as exc:
            raise CLIError(str(exc)) from None
    return 0
