"""``xas-bluesky train``: train the GNN ensemble of one edge from the committed FEFF data.

Seeded and on the CPU, so it reproduces the shipped weights (same data, same thread count, same
library versions); the wall time is reported.  ``--reproduce`` retrains the shipped ensemble from
exactly the data files and settings in its metadata and says whether the weights came out the
same; ``--ship`` replaces the package's shipped ensemble (the maintainers' step after new data);
otherwise the ensemble goes to ``--out`` (default ``./models/<edge>``), never over the shipped one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from xas_bluesky.science.model.config import TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train the GNN ensemble of an edge from the committed FEFF data",
        description=(
            "Train the structure-to-spectrum ensemble of one edge on data/feff/*.jsonl.gz (split "
            "by molecule: train / val / test), evaluate it on the held-out test molecules and "
            "write it to --out (default ./models/<edge>), or with --ship over the package's "
            "shipped model.  --reproduce retrains the shipped model from the data files and "
            "settings in its metadata and checks that the weights are the same (exit 1 if not)."
        ),
    )
    p.add_argument("--edge", required=True, choices=("O", "N"))
    p.add_argument("--members", type=int, default=3, help="ensemble size (default 3)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--readout", choices=("site", "molecule"), default=d.readout)
    p.add_argument(
        "--arch",
        choices=("mpnn", "schnet"),
        default=d.arch,
        help="mpnn: the bond graph (Gilmer et al.); schnet: every atom pair by distance (Schütt "
        "et al.), site readout",
    )
    p.add_argument(
        "--dim", type=int, help=f"width of the atom states (default {d.dim}; schnet: 64)"
    )
    p.add_argument(
        "--edge-hidden", type=int, default=d.edge_hidden, help="hidden width of the edge network"
    )
    p.add_argument(
        "--no-env",
        action="store_true",
        help="bond graph only: no 3D surroundings of the absorbing atoms (site readout)",
    )
    p.add_argument(
        "--joint",
        action="store_true",
        help="also train on the other edge's training molecules (one network for both edges)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument(
        "--isomer-sets",
        type=int,
        metavar="N",
        help="the calibration's top-label map is also fitted on scans of each calibration "
        "molecule among N - 1 of its QM9 isomers (default 200; 0: random sets only; needs the "
        "extra qm9)",
    )
    p.add_argument(
        "--data", nargs="*", help="FEFF JSONL(.gz) files (default: data/feff/*.jsonl.gz)"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", help="output directory (default: ./models/<edge>)")
    where.add_argument(
        "--ship", action="store_true", help="write over the package's shipped model of the edge"
    )
    p.add_argument(
        "--reproduce",
        action="store_true",
        help="retrain the shipped model from its metadata's data files and settings and compare",
    )
    p.set_defaults(func=run)


def _shipped_recipe(edge: str) -> tuple[list[Path], dict, int, str]:
    """Data files, training settings, members and version of the shipped ensemble of ``edge``."""
    from xas_bluesky.apps.cli import CLIError
    from xas_bluesky.science import dataset
    from xas_bluesky.science.model.checkpoint import METADATA_FILE, model_dir

    meta = json.loads((model_dir(edge) / METADATA_FILE).read_text())
    committed = {p.name: p for p in dataset.default_data_files()}
    missing = [name for name in meta["data_files"] if name not in committed]
    if missing:
        raise CLIError(f"--reproduce: data files of the shipped model not found: {missing}")
    paths = [committed[name] for name in meta["data_files"]]
    if dataset.data_hash(paths) != meta["data_hash"]:
        raise CLIError("--reproduce: the data files differ from those the shipped model saw")
    return paths, meta["train_config"], int(meta["members"]), meta["model_version"]


def run(args: argparse.Namespace) -> int:
    import torch

    from xas_bluesky.apps.cli import CLIError
    from xas_bluesky.science.model.checkpoint import model_dir
    from xas_bluesky.science.model.config import TrainConfig
    from xas_bluesky.science.model.training import train_ensemble

    if args.members < 1 or args.epochs < 1:
        raise CLIError("--members and --epochs must be >= 1")
    torch.set_num_threads(max(1, args.threads))
    paths, members, shipped_version = args.data, args.members, None
    if args.reproduce:
        if args.ship:
            raise CLIError("--reproduce writes to --out, not over the shipped model")
        paths, settings, members, shipped_version = _shipped_recipe(args.edge)
        cfg = TrainConfig(**settings)
    else:
        cfg = TrainConfig(
            readout=args.readout,
            arch=args.arch,
            dim=args.dim or (64 if args.arch == "schnet" else TrainConfig.dim),
            edge_hidden=args.edge_hidden,
            env=args.readout == "site" and not args.no_env,
            epochs=args.epochs,
            seed=args.seed,
            joint=args.joint,
        )
    out = model_dir(args.edge) if args.ship else Path(args.out or Path("models") / args.edge)
    t0 = time.perf_counter()
    try:
        meta = train_ensemble(
            args.edge,
            members=members,
            cfg=cfg,
            paths=paths,
            out_dir=out,
            progress=lambda line: print(f"xas-bluesky train: {line}", file=sys.stderr, flush=True),
        )
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    # the comparator's likelihood temperature belongs to these weights: fit it now on molecules
    # that played no part in training (the calibration set: test split outside the held-out
    # samples) and store it in the checkpoint (see xas_bluesky.science.compare.calibration)
    from xas_bluesky.science.compare.calibration import ISOMER_SET_SIZE, calibrate_shipped

    n_iso = ISOMER_SET_SIZE if args.isomer_sets is None else args.isomer_sets
    cal = calibrate_shipped(args.edge, out, paths=paths, isomer_set_size=n_iso)
    print(
        f"{args.edge}: comparator calibration T0 {cal['temperature']:.2f} "
        f"eps {cal['outlier_probability']:.3f}, top-label map {cal.get('top_calibration')} "
        f"(calibration-set ECE {cal.get('cal_ece_top', float('nan')):.3f}, cross-fitted "
        f"{cal.get('cal_crossfit_ece', float('nan')):.3f}, {cal['n_molecules']} molecules; "
        f"isomer sets {cal.get('cal_ece_top_isomer', float('nan')):.3f}, cross-fitted "
        f"{cal.get('cal_crossfit_ece_isomer', float('nan')):.3f}, {cal['n_isomer_trials']} trials)",
        file=sys.stderr,
    )
    for split, m in meta["metrics"].items():
        print(
            f"{args.edge} {split}: {m['n_spectra']} molecules, true peaks within 1 eV "
            f"{100 * m['recall']:.1f}%, predicted peaks within 1 eV {100 * m['precision']:.1f}%, "
            f"MAE {m['mae']:.4f}"
        )
    print(
        f"{args.edge}: model {meta['model_version']}, {meta['n_train_molecules']} train molecules "
        f"({meta['n_train_sites']} sites), wall time {time.perf_counter() - t0:.0f} s, in {out}"
    )
    if shipped_version is not None:
        same = meta["model_version"] == shipped_version
        print(
            f"{args.edge}: {'reproduces' if same else 'does NOT reproduce'} the shipped weights "
            f"(shipped {shipped_version}, retrained {meta['model_version']})"
        )
        return 0 if same else 1
    return 0
