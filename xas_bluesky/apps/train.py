"""``xas-bluesky train``: train the GNN ensemble of one edge from the committed FEFF data.

Seeded and on the CPU, so it reproduces the shipped weights (same data, same thread count, same
library versions); the wall time is reported.
"""

from __future__ import annotations

import argparse
import sys
import time

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
            "write it to the package's resources/models/<edge>/ (or --out)."
        ),
    )
    p.add_argument("--edge", required=True, choices=("O", "N"))
    p.add_argument("--members", type=int, default=3, help="ensemble size (default 3)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--readout", choices=("site", "molecule"), default=d.readout)
    p.add_argument("--dim", type=int, default=d.dim, help="width of the atom states")
    p.add_argument(
        "--edge-hidden", type=int, default=d.edge_hidden, help="hidden width of the edge network"
    )
    p.add_argument(
        "--no-env",
        action="store_true",
        help="bond graph only: no 3D surroundings of the absorbing atoms (site readout)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument(
        "--data", nargs="*", help="FEFF JSONL(.gz) files (default: data/feff/*.jsonl.gz)"
    )
    p.add_argument("--out", help="output directory (default: the package's models/<edge>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from xas_bluesky.apps.cli import CLIError
    from xas_bluesky.science.model.config import TrainConfig
    from xas_bluesky.science.model.training import train_ensemble

    if args.members < 1 or args.epochs < 1:
        raise CLIError("--members and --epochs must be >= 1")
    torch.set_num_threads(max(1, args.threads))
    cfg = TrainConfig(
        readout=args.readout,
        dim=args.dim,
        edge_hidden=args.edge_hidden,
        env=args.readout == "site" and not args.no_env,
        epochs=args.epochs,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    try:
        meta = train_ensemble(
            args.edge,
            members=args.members,
            cfg=cfg,
            paths=args.data,
            out_dir=args.out,
            progress=lambda line: print(f"xas-bluesky train: {line}", file=sys.stderr, flush=True),
        )
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    # the comparator's likelihood temperature belongs to these weights: fit it on the validation
    # split now and store it in the checkpoint (see xas_bluesky.science.model.calibration)
    from xas_bluesky.science.model.calibration import calibrate_shipped

    cal = calibrate_shipped(args.edge, args.out)
    print(
        f"{args.edge}: comparator calibration T0 {cal['temperature']:.2f} "
        f"(validation ECE {cal.get('val_ece', float('nan')):.3f})",
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
        f"({meta['n_train_sites']} sites), wall time {time.perf_counter() - t0:.0f} s"
    )
    return 0
