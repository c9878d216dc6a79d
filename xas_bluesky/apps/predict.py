"""``xas-bluesky predict``: predict XANES of structures with the shipped GNN ensemble.

Contract (``shared/notes/CLI.md``): the CSV's first row is ``energy_eV,<name1>,<name2>,...`` and
every other row holds numbers only; ``--std`` writes the ensemble spread in the same layout.  An
invalid structure is a one-line error and exit 1, unless ``--skip-invalid`` (then it is reported on
stderr and skipped).  Out-of-domain structures are predicted and reported on stderr.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["add_parser", "run", "write_csv"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict O or N K-edge XANES of structures with the shipped GNN",
        description=(
            "Predict K-edge XANES (FEFF10 absolute energy axis) of every structure in an XYZ, SDF "
            "or SMILES file with the shipped ensemble, and write them as CSV (energy_eV, then one "
            "column per structure)."
        ),
    )
    p.add_argument("--edge", required=True, choices=("O", "N"), help="absorption edge (K)")
    p.add_argument("--structures", required=True, help="structures: .xyz, .sdf or .smi")
    p.add_argument("--out", required=True, help="CSV of the predicted spectra")
    p.add_argument("--std", help="CSV of the ensemble's per-energy standard deviation")
    p.add_argument("--skip-invalid", action="store_true", help="report and skip invalid structures")
    p.add_argument(
        "--batch-size",
        type=int,
        help="molecules per forward pass (default 256 on CPU, 16384 on GPU)",
    )
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def write_csv(path: str, energy, names: list[str], values) -> None:
    """CSV with header ``energy_eV,<names>`` and one row per energy (values: structure x energy)."""
    import numpy as np

    table = np.column_stack([np.asarray(energy, dtype=float), np.asarray(values, dtype=float).T])
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerow(["energy_eV", *names])
        np.savetxt(fh, table, fmt=["%.2f"] + ["%.5g"] * len(names), delimiter=",")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from xas_bluesky.apps.cli import CLIError
    from xas_bluesky.science.model.predictor import Predictor
    from xas_bluesky.science.structures import StructureError, iter_structures

    t0 = time.perf_counter()
    try:
        predictor = Predictor.load(args.edge, device=args.device)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None

    def skipped(exc: StructureError) -> None:
        print(f"xas-bluesky predict: skipped: {exc}", file=sys.stderr)

    names: list[str] = []
    results = []
    chunk_size = max(CHUNK, args.batch_size or predictor.default_batch_size)
    # a pipeline: the network works on one chunk (torch releases the GIL) while this thread reads
    # and builds the graphs of the next; on the CPU each side gets one core
    if predictor.device.type == "cpu":
        import torch

        torch.set_num_threads(1)
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            chunk = []
            source = iter_structures(
                args.structures, edge=args.edge, skip_invalid=args.skip_invalid, on_skip=skipped
            )
            for s in source:
                if not s.in_domain:
                    print(
                        f"xas-bluesky predict: warning: structure {s.name!r} is outside the "
                        f"training domain ({'; '.join(s.domain_notes)}): predicted anyway",
                        file=sys.stderr,
                    )
                chunk.append(s)
                if len(chunk) == chunk_size:
                    results.append(_submit(pool, predictor, chunk, args.batch_size))
                    names += [c.name for c in chunk]
                    chunk = []
            if chunk:
                results.append(_submit(pool, predictor, chunk, args.batch_size))
                names += [c.name for c in chunk]
        except (StructureError, OSError) as exc:
            for r in results:
                r.cancel()
            raise CLIError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        parts = [r.result() for r in results]
    if not names:
        if not args.skip_invalid:
            raise CLIError(f"{args.structures}: no structures in the file")
        print("xas-bluesky predict: warning: no valid structures to predict", file=sys.stderr)
    n_e = len(predictor.energy)
    mean = np.concatenate([m for m, _ in parts]) if parts else np.zeros((0, n_e))
    std = np.concatenate([s for _, s in parts]) if parts else np.zeros((0, n_e))
    write_csv(args.out, predictor.energy, names, mean)
    if args.std:
        write_csv(args.std, predictor.energy, names, std)
    print(
        f"xas-bluesky predict: {len(names)} structures, {args.edge} K edge, model "
        f"{predictor.model_version}, {time.perf_counter() - t0:.2f} s",
        file=sys.stderr,
    )
    return 0


#: structures per pipeline stage (at least one batch)
CHUNK = 512


def _submit(pool: ThreadPoolExecutor, predictor, chunk: list, batch_size: int | None) -> Future:
    graphs = predictor.graphs(chunk)
    return pool.submit(predictor.predict_graphs, graphs, batch_size and max(1, batch_size))
