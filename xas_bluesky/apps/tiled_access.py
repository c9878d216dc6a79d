"""The tiled options that ``query`` and ``export`` share, and the connection they open.

``--tiled-uri URI [--api-key KEY]`` connects to a running server; ``--data-dir DIR`` starts the
embedded tiled on a data directory (the demo's) for the command and stops it afterwards.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["add_tiled_arguments", "tiled_client"]


def add_tiled_arguments(p: argparse.ArgumentParser) -> None:
    """``(--tiled-uri URI [--api-key KEY] | --data-dir DIR)``."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tiled-uri", help="a running tiled server, e.g. http://127.0.0.1:8000")
    where.add_argument("--data-dir", help="the demo's data directory (starts tiled on it)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("TILED_API_KEY"),
        help="the tiled server's API key (with --tiled-uri; default: $TILED_API_KEY)",
    )


@contextmanager
def tiled_client(args: argparse.Namespace) -> Iterator[tuple[Any, str]]:
    """The tiled client and its URI for ``args``; a server started for ``--data-dir`` is stopped
    on leaving.  Raises :class:`~xas_bluesky.apps.cli.CLIError` when there is nothing to reach."""
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
        yield client, uri
    finally:
        if server is not None:
            server.stop()
