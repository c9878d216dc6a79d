"""The ``xas-bluesky`` command line.

Each subcommand lives in its own module of :mod:`xas_bluesky.apps` with an ``add_parser(sub)``
function that registers it and sets ``func``.  Errors end as one line on stderr naming what went
wrong and a non-zero exit; ``--debug`` shows the traceback (the contract is in ``docs/cli.rst``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

__all__ = ["main", "build_parser", "CLIError", "SUBCOMMANDS"]

#: subcommand modules, in the order ``--help`` lists them
SUBCOMMANDS = (
    "demo",
    "predict",
    "match",
    "train",
    "simulate",
    "serve_ioc",
    "sim_beamline",
    "worker",
    "query",
    "export",
    "replay",
)


class CLIError(Exception):
    """An error to show the user as one line (no traceback), with an exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    from xas_bluesky import __version__

    parser = argparse.ArgumentParser(
        prog="xas-bluesky",
        description="Machine-learned XANES in the live Bluesky data stream.",
    )
    parser.add_argument("--version", action="version", version=f"xas-bluesky {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"xas_bluesky.apps.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        if args.debug:
            raise
        print(f"xas-bluesky {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"xas-bluesky {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the contract: one line, no traceback, unless --debug
        if args.debug:
            raise
        first = next(iter(str(exc).strip().splitlines()), "")  # one line, even for torch's
        print(f"xas-bluesky {args.command}: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1


def not_built(name: str, help_text: str, issue: str):
    """Register a subcommand that exists in the interface but is not built yet."""

    def add_parser(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser(
            name,
            help=f"{help_text} (not built yet)",
            description=f"{help_text}. Not built yet: see {issue}.",
        )
        p.set_defaults(func=lambda args: _not_built(name, issue))

    return add_parser


def _not_built(name: str, issue: str) -> int:
    raise CLIError(f"not built yet (see {issue})", code=3)


if __name__ == "__main__":  # run the package's module, so CLIError is one class, not two
    from xas_bluesky.apps.cli import main as _main

    sys.exit(_main())
