"""``xas-bluesky serve-ioc``: serve the structure-match score PVs (caproto IOC).

Runs :class:`~xas_bluesky.beamline.epics.score_ioc.MatchScoreGroup` standalone, through the
project's caproto tuning.  The PVs are read-only to clients; nothing changes them in this mode
(it is for clients and plans to develop against).  The live analysis normally hosts the same
group in its own process (``xas-bluesky worker``, or in-process in the demo).
"""

from __future__ import annotations

import argparse
import os

from xas_bluesky.contracts import DEFAULT_PREFIX


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve-ioc",
        help="Serve the structure-match score PVs (caproto IOC)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"PV prefix (default {DEFAULT_PREFIX})")
    p.add_argument("--port", type=int, help="Channel Access server port (default: environment)")
    p.add_argument(
        "--interfaces",
        nargs="+",
        default=["127.0.0.1"],
        help="addresses to serve on (default 127.0.0.1)",
    )
    p.add_argument("--list-pvs", action="store_true", help="log the PV names at start-up")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.port:
        os.environ["EPICS_CA_SERVER_PORT"] = str(args.port)
        os.environ["EPICS_CAS_SERVER_PORT"] = str(args.port)
    from xas_bluesky.beamline.epics.score_ioc import MatchScoreGroup
    from xas_bluesky.beamline.epics.server import run_ioc

    group = MatchScoreGroup(prefix=args.prefix)
    run_ioc(group, {"interfaces": args.interfaces, "log_pv_names": args.list_pvs})
    return 0
