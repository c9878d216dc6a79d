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
import sys

from xas_bluesky.apps.tiled_access import add_tiled_arguments, tiled_client


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="Write the runs and match results kept in a backup directory into tiled",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--backup", required=True, metavar="DIR", help="the backup directory")
    add_tiled_arguments(p)
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
    from xas_bluesky.beamline.backup import replay_backup

    with tiled_client(args) as (client, _):
        report = replay_backup(client, backup, include_open=args.include_open)
    json.dump(report, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
    if report["failed"]:
        raise CLIError(f"{report['failed']} item(s) not replayed; they stay in {backup}")
    return 0
