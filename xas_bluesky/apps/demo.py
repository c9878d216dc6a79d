"""``xas-bluesky demo``: the autonomous XANES demo on the simulated beamline.

Everything it needs starts on loopback and stops on exit, Ctrl-C included: the simulated beamline
IOC, a tiled server with an SQLite catalog under ``--data-dir``, the live analysis with its score
PVs, an independent Channel Access client that times the score updates.  The command-line and JSON
contract is in ``docs/cli.rst``.
"""

from __future__ import annotations

import argparse
import math
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
    p.add_argument(
        "--edge",
        type=_edges,
        default="O",
        metavar="O|N|O,N",
        help="K edge (default O), or both edges of one sample in the order measured (O,N or "
        "N,O): one run per edge, combined into one joint ranking (docs/real_samples.rst)",
    )
    p.add_argument("--mode", choices=["adaptive", "grid"], default="adaptive")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--sample", help="name of a shipped held-out sample (e.g. qm9_000123)")
    src.add_argument(
        "--sample-spectrum",
        metavar="FILE.csv",
        action="append",
        help="CSV energy_eV,mu on FEFF10's absolute energy axis (or the experiment's: --axis); "
        "with two edges one per edge: --sample-spectrum O=o.csv --sample-spectrum N=n.csv",
    )
    p.add_argument(
        "--axis",
        choices=["feff", "experiment"],
        default="feff",
        help="energy axis of --sample-spectrum: FEFF10's (default) or an experiment's (calibrated "
        "against literature gas-phase resonances; moved to FEFF's axis by the edge's convention, "
        "and the live offset prior widened; see docs/real_samples.rst)",
    )
    p.add_argument(
        "--broadening",
        type=float,
        default=0.0,
        metavar="EV",
        help="the simulated beamline broadens the sample's spectrum by this Gaussian FWHM (eV)",
    )
    p.add_argument(
        "--axis-offset",
        type=float,
        default=0.0,
        metavar="EV",
        help="the simulated beamline shifts the sample's energy axis by this much (eV)",
    )
    p.add_argument(
        "--widths",
        type=float,
        nargs="+",
        default=None,
        metavar="EV",
        help="Gaussian FWHM (eV) of the predictions the live analysis marginalises over "
        "(default: 0 0.5 1 with --axis experiment, else none: FEFF's own width)",
    )
    p.add_argument(
        "--candidates",
        metavar="FILE",
        help="candidate structures (XYZ/SDF/SMILES); default: the shipped library of the edge",
    )
    p.add_argument(
        "--no-candidates",
        action="store_true",
        help="open world: no candidate list at all, functional groups only (empty ranking)",
    )
    p.add_argument(
        "--no-groups",
        action="store_true",
        help="no open-world analysis (functional groups, in_library) during the run",
    )
    p.add_argument(
        "--predict-library",
        action="store_true",
        help="predict the model's reference library first if it is not cached (minutes, once "
        "per model): then in_library and groups from both libraries (docs/open_world.rst)",
    )
    p.add_argument(
        "--library-cache",
        metavar="DIR",
        default=None,
        help="predicted reference libraries (default ~/.cache/xas_bluesky/libraries)",
    )
    p.add_argument("--data-dir", help=f"tiled catalog and logs (default {default_data_dir()})")
    p.add_argument("--seed", type=int, default=0, help="random seed (sample choice, noise)")
    p.add_argument("--json", metavar="OUT.json", help="write the results as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="measured vs the top-3 predicted spectra")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="adaptive stop probability (default 0.99; 0.95 on the joint with two edges, whose "
        "outlier term caps it near 0.96)",
    )
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


def _edges(text: str) -> str:
    edges = [e.strip() for e in text.split(",")]
    if not edges or any(e not in ("O", "N") for e in edges) or len(set(edges)) != len(edges):
        raise argparse.ArgumentTypeError(f"expected O, N, O,N or N,O; got {text!r}")
    return ",".join(edges)


def _sample_spectra(given: list[str] | None, edges: list[str]) -> str | dict[str, str] | None:
    """``--sample-spectrum`` values: one FILE (one edge), or EDGE=FILE for each edge."""
    if not given:
        return None
    if len(edges) == 1:
        if len(given) != 1:
            raise CLIError("one --sample-spectrum per edge: this demo measures one edge")
        file = given[0]
        edge, sep, rest = file.partition("=")
        if sep and edge in ("O", "N") and not Path(file).is_file():
            if edge != edges[0]:
                raise CLIError(f"--sample-spectrum {file}: the demo measures the {edges[0]} edge")
            file = rest
        if not Path(file).is_file():
            raise CLIError(f"{file}: no such file")
        return file
    out: dict[str, str] = {}
    for value in given:
        edge, sep, file = value.partition("=")
        if not sep or edge not in edges:
            raise CLIError(
                f"--sample-spectrum {value!r}: with --edge {','.join(edges)} give EDGE=FILE, "
                f"one per edge"
            )
        if edge in out:
            raise CLIError(f"--sample-spectrum: two spectra for the {edge} edge")
        if not Path(file).is_file():
            raise CLIError(f"{file}: no such file")
        out[edge] = file
    missing = [e for e in edges if e not in out]
    if missing:
        raise CLIError(f"--sample-spectrum: no spectrum for the {', '.join(missing)} edge")
    return out


def run(args: argparse.Namespace) -> int:
    from xas_bluesky.apps.demo_session import DemoConfig, DemoError, run_demo
    from xas_bluesky.science.adaptive import JOINT_THRESHOLD

    edges = args.edge.split(",")
    sample_spectrum = _sample_spectra(args.sample_spectrum, edges)
    if len(edges) > 1 and args.faults:
        raise CLIError("--faults drills one edge: give --edge O or --edge N")
    if args.axis != "feff" and not args.sample_spectrum:
        raise CLIError(f"--axis {args.axis} is the axis of a --sample-spectrum: give one")
    if not (args.broadening >= 0 and math.isfinite(args.broadening)):
        raise CLIError(f"--broadening must be >= 0 eV, got {args.broadening}")
    if args.widths is not None and not all(w >= 0 and math.isfinite(w) for w in args.widths):
        raise CLIError(f"--widths must be >= 0 eV, got {args.widths}")
    if not math.isfinite(args.axis_offset):
        raise CLIError(f"--axis-offset must be finite, got {args.axis_offset}")
    if args.candidates and not Path(args.candidates).is_file():
        raise CLIError(f"{args.candidates}: no such file")
    if args.no_candidates and args.candidates:
        raise CLIError("--no-candidates and --candidates exclude each other")
    if args.no_candidates and args.no_groups:
        raise CLIError("--no-candidates needs the groups: drop --no-groups")
    config = DemoConfig(
        edge=args.edge,
        mode=args.mode,
        sample=args.sample,
        sample_spectrum=sample_spectrum,
        axis=args.axis,
        broadening=args.broadening,
        axis_offset=args.axis_offset,
        widths=None if args.widths is None else tuple(dict.fromkeys(args.widths)),
        candidates=args.candidates,
        data_dir=Path(args.data_dir) if args.data_dir else default_data_dir(),
        seed=args.seed,
        json_path=args.json,
        plot_path=args.plot,
        threshold=args.threshold
        if args.threshold is not None
        else (JOINT_THRESHOLD if len(edges) > 1 else 0.99),
        max_points=args.max_points,
        clock=args.clock,
        progress=None if args.quiet else sys.stderr,
        faults=args.faults,
        no_candidates=args.no_candidates,
        groups=not args.no_groups,
        predict_library=args.predict_library,
        library_cache=args.library_cache,
    )
    try:
        run_demo(config)
    except DemoError as exc:
        raise CLIError(str(exc)) from None
    return 0
