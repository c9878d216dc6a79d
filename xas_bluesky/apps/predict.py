"""``xas-bluesky predict``: predict XANES of structures with the shipped GNN ensemble.

Contract (``shared/notes/CLI.md``): the CSV's first row is ``energy_eV,<name1>,<name2>,...`` and
every other row holds numbers only; ``--std`` writes the ensemble spread in the same layout.  An
invalid structure is a one-line error and exit 1, unless ``--skip-invalid`` (then it is reported on
stderr and skipped).  Out-of-domain structures are predicted and reported on stderr.
"""

from __future__ import annotations

import argparse
import csv
import queue
import sys
import time
from collections import Counter

from xas_bluesky.apps.predict_stream import add_arguments, run_h5

__all__ = ["add_parser", "run", "write_csv"]

#: --out suffixes that select the streamed HDF5 output
H5_SUFFIXES = (".h5", ".hdf5")


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
    p.add_argument(
        "--out",
        required=True,
        help="CSV of the predicted spectra, or FILE.h5: HDF5, streamed (any number of "
        "structures), resumable, spread over dask workers",
    )
    p.add_argument("--std", help="CSV of the ensemble's per-energy standard deviation")
    p.add_argument("--skip-invalid", action="store_true", help="report and skip invalid structures")
    p.add_argument(
        "--batch-size",
        type=int,
        help="molecules per forward pass (default 256 on CPU, 16384 on GPU)",
    )
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    add_arguments(p)
    p.set_defaults(func=run)


def write_csv(path: str, energy, names: list[str], values) -> None:
    """CSV with header ``energy_eV,<names>`` and one row per energy (values: structure x energy)."""
    import numpy as np

    table = np.column_stack([np.asarray(energy, dtype=float), np.asarray(values, dtype=float).T])
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerow(["energy_eV", *names])
        np.savetxt(fh, table, fmt=["%.2f"] + ["%.5g"] * len(names), delimiter=",")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from xas_bluesky.apps.cli import CLIError

    if args.batch_size is not None and args.batch_size < 1:
        raise CLIError("--batch-size must be >= 1")
    if args.out.lower().endswith(H5_SUFFIXES):
        return run_h5(args)
    if args.resume or args.workers is not None or args.scheduler:
        raise CLIError("--resume, --workers and --scheduler are for --out FILE.h5")
    # on the CPU, a large input gets a worker process for the network, started before anything
    # heavy is imported here, so that both import torch and load the weights at the same time
    worker = _Worker(args.edge) if _wants_worker(args) else None

    from xas_bluesky.science.model.predictor import Predictor, join_predictions
    from xas_bluesky.science.structures import StructureError, iter_structures

    try:
        predictor = Predictor.load(args.edge, device=args.device)
    except FileNotFoundError as exc:
        if worker is not None:
            worker.close()
        raise CLIError(str(exc)) from None
    if worker is not None and predictor.device.type != "cpu":
        worker.close()
        worker = None

    def skipped(exc: StructureError) -> None:
        print(f"xas-bluesky predict: skipped: {exc}", file=sys.stderr)

    names: list[str] = []
    results: list = []
    chunk_size = max(CHUNK, args.batch_size or predictor.default_batch_size)
    if predictor.device.type == "cpu":
        import torch

        # one core each for reading and the network; two OpenMP threads on a busy machine
        # multiplied the CPU time per spectrum by five
        torch.set_num_threads(1)
    network = _Network(predictor, args.batch_size, worker)
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
                results.append(network.submit(chunk))
                names += [c.name for c in chunk]
                chunk = []
        if chunk:
            results.append(network.submit(chunk))
            names += [c.name for c in chunk]
        parts = [r.result() if isinstance(r, _Pending) else r for r in results]
    except (StructureError, OSError, RuntimeError) as exc:
        raise CLIError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    finally:
        network.close()
    if not names:
        if not args.skip_invalid:
            raise CLIError(f"{args.structures}: no structures in the file")
        print("xas-bluesky predict: warning: no valid structures to predict", file=sys.stderr)
    twice = [n for n, k in Counter(names).items() if k > 1]
    if twice:  # columns stay in input order; a reader keyed by name would see only one
        shown = ", ".join(repr(n) for n in twice[:5]) + (" ..." if len(twice) > 5 else "")
        print(
            f"xas-bluesky predict: warning: {len(twice)} structure names occur more than once "
            f"({shown}); their columns are in input order",
            file=sys.stderr,
        )
    mean, std = join_predictions(parts, len(predictor.energy))
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


#: inputs at least this large (bytes; ~900 QM9 structures as XYZ) get a worker process; the
#: environment variable XAS_BLUESKY_PREDICT_WORKER_MIN_BYTES overrides it (benchmarks, tests)
WORKER_MIN_BYTES = 512 * 1024


def _wants_worker(args: argparse.Namespace) -> bool:
    """A large input on the CPU (decided without importing torch: no GPU device node)."""
    import os

    if args.device not in (None, "cpu"):
        return False
    if args.device is None and os.path.exists("/dev/nvidiactl"):
        return False
    threshold = int(os.environ.get("XAS_BLUESKY_PREDICT_WORKER_MIN_BYTES", WORKER_MIN_BYTES))
    try:
        return os.path.getsize(args.structures) >= threshold
    except OSError:
        return False


class _Worker:
    """One spawned process running the ensemble on collated batches, in the order given.

    A plain process rather than a ``ProcessPoolExecutor``: it holds nothing worth saving, so it is
    terminated once the results are in instead of waited for while torch tears down (~1 s).
    """

    def __init__(self, edge: str):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.tasks, self.results = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(
            target=_worker_main, args=(edge, self.tasks, self.results), daemon=True
        )
        self.process.start()

    def submit(self, batches: list[dict]) -> _Pending:
        self.tasks.put(batches)
        return _Pending(self)

    def next_result(self):
        while True:
            try:
                ok, value = self.results.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.process.is_alive():
                    raise RuntimeError(
                        f"the network worker died (exit code {self.process.exitcode})"
                    ) from None
        if not ok:
            raise RuntimeError(f"the network worker failed: {value}")
        return value

    def close(self) -> None:
        # batches still queued (after an error) are dropped: without this the queue's feeder
        # thread would wait at exit to write them to a pipe nobody reads
        self.tasks.cancel_join_thread()
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=5)


class _Pending:
    """A result the worker will deliver; results come back in submission order."""

    def __init__(self, worker: _Worker):
        self.worker = worker

    def result(self):
        return self.worker.next_result()


class _Network:
    """Runs the ensemble on chunks of structures, here or in a worker process.

    On the CPU a large input is a pipeline: while a worker process runs the network on one chunk,
    this process reads the next and builds its graphs, each on its own core.  A process, not a
    thread: the reading is pure Python and holds the GIL, and with a thread the two sides ran
    slower together than one after the other (1.36 s against 0.47 + 0.53 s for 1,536 structures,
    measured here).  A small input is not worth the worker's start-up (importing torch, loading
    the weights: seconds), nor is a GPU, so those stay in this process.
    """

    def __init__(self, predictor, batch_size: int | None, worker: _Worker | None):
        self.predictor = predictor
        self.batch_size = batch_size or predictor.default_batch_size
        self.worker = worker

    def submit(self, chunk: list):
        from xas_bluesky.science.graphs import batch_to_arrays, collate

        graphs = self.predictor.graphs(chunk)
        if self.worker is None:
            return self.predictor.predict_graphs(graphs, self.batch_size)
        batches = [
            batch_to_arrays(collate(graphs[k : k + self.batch_size]))
            for k in range(0, len(graphs), self.batch_size)
        ]
        return self.worker.submit(batches)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


def _worker_main(edge: str, tasks, results) -> None:
    import multiprocessing
    import os
    import signal
    import threading

    # Ctrl-C is the parent's to handle (it terminates this process); a traceback from here would
    # break the one-line error contract
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        from xas_bluesky.science.graphs import batch_from_arrays
        from xas_bluesky.science.model.predictor import Predictor

        torch.set_num_threads(1)
        predictor = Predictor.load(edge, device="cpu")
    except Exception as exc:
        results.put((False, f"{type(exc).__name__}: {exc}"))
        return
    parent = multiprocessing.parent_process()
    if parent is not None:
        # a parent killed without closing us (SIGKILL, OOM) may leave this process blocked on a
        # half-written queue: watch it and leave with it
        # a def, not a lambda: mypy rejects using join()'s None in the lambda's tuple
        def _leave_with_parent() -> None:
            parent.join()
            os._exit(0)

        threading.Thread(target=_leave_with_parent, daemon=True).start()
    while True:
        batches = tasks.get()
        try:
            value = predictor.predict_batches(batch_from_arrays(b) for b in batches)
            results.put((True, value))
        except Exception as exc:  # reported in the parent, which stops
            results.put((False, f"{type(exc).__name__}: {exc}"))
