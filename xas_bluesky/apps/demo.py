"""``xas-bluesky demo``: the autonomous XANES demo on the simulated beamline.

Everything it needs starts on loopback and stops on exit, Ctrl-C included: the simulated beamline
IOC, a tiled server with an SQLite catalog under ``--data-dir``, the live analysis with its score
PVs, an independent Channel Access client that times the score updates.  The command-line and JSON
contract is in ``docs/cli.rst``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from xas_bluesky.apps.cli import CLIError

__all__ = ["add_parser", "run", "default_data_dir"]


def default_data_dir() -> Path:
    """``$XDG_CACHE_HOME/xas_bluesky/demo`` (``~/.cache/xas_bluesky/demo`` by default)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "xas_bluesky" / "demo"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the autonomous XANES demo on the simulated beamline",
        description=(
            "Measure a sample on the simulated beamline while the live analysis scores it against "
            "candidate structures with the GNN; in adaptive mode the scan goes where the score "
            "PVs point and stops when confident. Starts and stops everything itself."
        ),
    )
    p.add_argument("--edge", choices=["O", "N"], default="O", help="K edge (default O)")
    p.add_argument("--mode", choices=["adaptive", "grid"], default="adaptive")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--sample", help="name of a shipped held-out sample (e.g. qm9_000123)")
    src.add_argument(
        "--sample-spectrum",
        metavar="FILE.csv",
        help="CSV energy_eV,mu on FEFF10's absolute energy axis",
    )
    p.add_argument(
        "--candidates",
        metavar="FILE",
        help="candidate structures (XYZ/SDF/SMILES); default: the shipped library of the edge",
    )
    p.add_argument("--data-dir", help=f"tiled catalog and logs (default {default_data_dir()})")
    p.add_argument("--seed", type=int, default=0, help="random seed (sample choice, noise)")
    p.add_argument("--json", metavar="OUT.json", help="write the results as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="measured vs the top-3 predicted spectra")
    p.add_argument("--threshold", type=float, default=0.99, help="adaptive stop probability")
    p.add_argument("--max-points", type=int, default=49, help="adaptive point budget")
    p.add_argument(
        "--clock", type=float, default=None, help="simulated seconds per real second (default 20)"
    )
    p.add_argument("--quiet", action="store_true", help="no live progress lines")
    p.add_argument(
        "--faults",
        action="store_true",
        help=(
            "fault drill: the simulated beamline injects faults on a schedule drawn from --seed "
            "(a beam dump, bad readings, a repeated energy, a score-IOC restart)"
        ),
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xas_bluesky.apps.demo_session import DemoConfig, DemoError, run_demo

    if args.sample_spectrum and not Path(args.sample_spectrum).is_file():
        raise CLIError(f"{args.sample_spectrum}: no such file")
    if args.candidates and not Path(args.candidates).is_file():
        raise CLIError(f"{args.candidates}: no such file")
    config = DemoConfig(
        edge=args.edge,
        mode=args.mode,
        sample=args.sample,
        sample_spectrum=args.sample_spectrum,
        candidates=args.candidates,
        data_dir=Path(args.data_dir) if args.data_dir else default_data_dir(),
        seed=args.seed,
        json_path=args.json,
        plot_path=args.plot,
        threshold=args.threshold,
        max_points=args.max_points,
        clock=args.clock,
        progress=None if args.quiet else sys.stderr,
        faults=args.faults,
    )
    try:
        run_demo(config)
    except DemoError as exc:
        raise CLIError(str(exc)) from None
    return 0
