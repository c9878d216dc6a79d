"""``xas-bluesky query``: query stored predictions and match results in tiled.

Contract (``shared/notes/CLI.md``): JSON only on stdout.  Without ``--run``::

    {"predictions": [{"name", "smiles", "inchikey", "formula", "edge", "model_version",
                      "structure_key", "tiled": {"uri", "path", "row", "std_path"}}, ...]}

With ``--run UID``::

    {"run_uid": UID, "ranking": [{"name", "smiles", "probability"}, ...], "metadata": {...}}

``--data-dir DIR`` starts the embedded tiled server on that directory for the query and stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "query",
        help="Query stored predictions and match results in tiled",
        description="Query stored predictions and match results in tiled (JSON on stdout).",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tiled-uri", help="a running tiled server, e.g. http://127.0.0.1:8000")
    where.add_argument("--data-dir", help="the demo's data directory (starts tiled on it)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("TILED_API_KEY"),
        help="the tiled server's API key (with --tiled-uri; default: $TILED_API_KEY)",
    )
    p.add_argument("--edge", choices=("O", "N"), help="only predictions of this edge")
    p.add_argument("--smiles", help="only this molecule (any valid SMILES of it)")
    p.add_argument("--model-version", help="only predictions of this model version")
    p.add_argument("--run", metavar="UID", help="the final ranking of this raw run")
    p.set_defaults(func=run)


def _query(client, uri: str, args: argparse.Namespace) -> dict:
    from xas_bluesky.beamline.catalog import get_match, query_predictions

    if args.run:
        return get_match(client, args.run)
    entries = query_predictions(
        client, edge=args.edge, smiles=args.smiles, model_version=args.model_version
    )
    for e in entries:
        e["tiled"]["uri"] = f"{uri}/api/v1/metadata/{e['tiled']['path']}"
    return {"predictions": entries}


def run(args: argparse.Namespace) -> int:
    from xas_bluesky.apps.cli import CLIError

    server = None
    try:
        if args.data_dir:
            from pathlib import Path

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
        try:
            out = _query(client, uri, args)
        except KeyError as exc:
            raise CLIError(str(exc.args[0]) if exc.args else str(exc)) from None
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    finally:
        if server is not None:
            server.stop()
    json.dump(out, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
    return 0
