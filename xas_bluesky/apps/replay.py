"""``xas-bluesky replay``: write what waited in a backup directory into tiled.

While tiled is away, the ``TiledWriter`` s of the profile, the demo and the worker keep each run
they could not write as JSON lines in their backup directory, and the live analysis keeps its
match results there (:mod:`xas_bluesky.beamline.backup`).  Once tiled is back::

    xas-bluesky replay --backup DIR (--tiled-uri URI [--api-key KEY] | --data-dir DIR)

writes them (a run tiled holds in part is written again whole) and prints a JSON report on
stdout; replayed files move to ``DIR/replayed/``, so replaying twice writes nothing twice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="Write the runs and match results kept in a backup directory into tiled",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--backup", required=True, metavar="DIR", help="the backup directory")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tiled-uri", help="a running tiled server, e.g. http://127.0.0.1:8000")
    where.add_argument("--data-dir", help="the demo's data directory (starts tiled on it)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("TILED_API_KEY"),
        help="the tiled server's API key (default: $TILED_API_KEY)",
    )
    p.add_argument(
        "--include-open",
        action="store_true",
        help="also write runs whose backup has no stop document (their process died mid-run)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xas_bluesky.apps.cli import CLIError

    backup = Path(args.backup)
    if not backup.is_dir():
        raise CLIError(f"{backup}: not a directory")
    server = None
    try:
        if args.data_dir:
            from xas_bluesky.services import start_tiled

            if not (Path(args.data_dir) / "catalog.db").exists():
                raise CLIError(f"{args.data_dir}: no tiled catalog (catalog.db) in it")
            server = start_tiled(args.data_dir)
            uri, api_key = server.uri, server.api_key
        else:
            uri, api_key = args.tiled_uri.rstrip("/"), args.api_key
        from tiled.client import from_uri

        try:
            client = from_uri(uri, api_key=api_key)
        except Exception as exc:
            raise CLIError(f"tiled at {uri}: {type(exc).__name__}: {exc}") from None
        from xas_bluesky.beamline.backup import replay_backup

        report = replay_backup(client, backup, include_open=args.include_open)
    finally:
        if server is not None:
            server.stop()
    json.dump(report, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
    if report["failed"]:
        raise CLIError(f"{report['failed']} item(s) not replayed; they stay in {backup}")
    return 0
