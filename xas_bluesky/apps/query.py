"""``xas-bluesky query``: query stored predictions and match results in tiled.

Contract (``docs/cli.rst``): JSON only on stdout.  Without ``--run``::

    {"predictions": [{"name", "smiles", "inchikey", "formula", "edge", "model_version",
                      "structure_key", "tiled": {"uri", "path", "row", "std_path"}}, ...]}

With ``--run RUN`` (a uid, a unique uid prefix or a scan id: the latest run with it)::

    {"run_uid": UID, "ranking": [{"name", "smiles", "probability"}, ...], "metadata": {...}}

``--data-dir DIR`` starts the embedded tiled server on that directory for the query and stops it.
"""

from __future__ import annotations

import argparse
import json
import sys

from xas_bluesky.apps.tiled_access import add_tiled_arguments, tiled_client


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "query",
        help="Query stored predictions and match results in tiled",
        description="Query stored predictions and match results in tiled (JSON on stdout).",
    )
    add_tiled_arguments(p)
    p.add_argument("--edge", choices=("O", "N"), help="only predictions of this edge")
    p.add_argument("--smiles", help="only this molecule (any valid SMILES of it)")
    p.add_argument("--model-version", help="only predictions of this model version")
    p.add_argument(
        "--run",
        metavar="RUN",
        help="the final ranking of this raw run: a uid, a unique uid prefix or a scan id",
    )
    p.add_argument(
        "--sample",
        metavar="SAMPLE",
        help="the match record of this sample across its runs and edges (the joint ranking): "
        "its sample_uid, or its sample_name",
    )
    p.set_defaults(func=run)


def _query(client, uri: str, args: argparse.Namespace) -> dict:
    from xas_bluesky.beamline.catalog import (
        RunNotFound,
        get_match,
        get_sample,
        query_predictions,
        resolve_run,
    )

    if args.run and args.sample:
        raise ValueError("--run and --sample: give one")
    if args.sample:
        return get_sample(client, args.sample)
    if args.run:
        try:
            uid = resolve_run(client, args.run)
        except RunNotFound:  # the raw run may be stored elsewhere: its match by the uid given
            uid = args.run
        return get_match(client, uid)
    entries = query_predictions(
        client, edge=args.edge, smiles=args.smiles, model_version=args.model_version
    )
    for e in entries:
        e["tiled"]["uri"] = f"{uri}/api/v1/metadata/{e['tiled']['path']}"
    return {"predictions": entries}


def run(args: argparse.Namespace) -> int:
    from xas_bluesky.apps.cli import CLIError

    with tiled_client(args) as (client, uri):
        try:
            out = _query(client, uri, args)
        except KeyError as exc:
            raise CLIError(str(exc.args[0]) if exc.args else str(exc)) from None
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    json.dump(out, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
    return 0
