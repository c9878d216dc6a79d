"""``xas-bluesky predict --out FILE.h5``: any number of structures, streamed and resumable.

The input is scanned here for where each chunk of records starts and ends
(:func:`~xas_bluesky.science.record_ranges.record_ranges`); each chunk is one task that reads
its own bytes of the file -- then bond perception or 3D embedding, graphs and the ensemble -- on
a dask.distributed worker (a
``LocalCluster`` on this machine by default, ``--scheduler`` for a running cluster) or, with
``--workers 0``, in this process.  Results are written in input order as they arrive, at most a
few chunks in flight, so memory stays bounded however long the input; every written chunk is
committed to the HDF5 file (:class:`~xas_bluesky.science.prediction_file.PredictionFile`), so a
killed run resumes with ``--resume`` after the last committed chunk.

Why dask.distributed: see ``docs/scale.rst`` (the measurement against Ray).
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
import time
from collections import deque
from typing import Any

__all__ = ["add_arguments", "predict_records", "run_h5"]

#: structures per task: large enough that a task's overhead (~ms) is noise, small enough that
#: a few chunks in flight per worker stay a few MB
CHUNK = 1024


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("HDF5 output (--out FILE.h5): streamed, resumable, distributed")
    g.add_argument(
        "--resume",
        action="store_true",
        help="append after the rows already in --out FILE.h5 (without it, an existing file is an "
        "error)",
    )
    g.add_argument(
        "--workers",
        type=int,
        help="dask LocalCluster worker processes (default: one per CPU core, one per GPU where "
        "there are GPUs); 0 predicts in this process",
    )
    g.add_argument("--scheduler", help="a running dask scheduler's address instead of a local one")
    g.add_argument(
        "--chunk", type=int, default=CHUNK, help=f"structures per task (default {CHUNK})"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


# ------------------------------------------------------------------------ the task
_PREDICTORS: dict[tuple[str, str | None], Any] = {}


def _predictor(edge: str, device: str | None):
    key = (edge, device)
    if key not in _PREDICTORS:
        import torch

        from xas_bluesky.science.model.predictor import Predictor

        if device is None and torch.cuda.is_available():
            device = f"cuda:{_worker_index() % torch.cuda.device_count()}"  # one GPU per worker
        predictor = Predictor.load(edge, device=device)
        if predictor.device.type == "cpu":
            # one core per worker process: OpenMP threads on a busy machine multiplied the CPU
            # time per spectrum by five (see apps/predict.py)
            torch.set_num_threads(1)
        _PREDICTORS[key] = predictor
    return _PREDICTORS[key]


def _worker_index() -> int:
    try:
        from distributed import get_worker

        name = get_worker().name
        return int(name) if str(name).isdigit() else 0
    except (ImportError, ValueError):
        return 0


def predict_records(
    edge: str, records: list, device: str | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """Structures and predictions of one chunk of ``(name, record)`` (runs on a worker).

    Returns a dict: ``names``, ``smiles``, ``mu``, ``std`` (float32, one row per valid record),
    ``good`` (their record indices), ``errors`` (``(index, message)``), ``out_of_domain``
    (``(name, notes)``), ``energy`` and ``model_version``.
    """
    import numpy as np

    from xas_bluesky.science.structures import (
        Structure,
        StructureError,
        structures_from_records,
    )

    predictor = _predictor(edge, device)
    built = structures_from_records([r for _, r in records], edge)
    good = [k for k, s in enumerate(built) if isinstance(s, Structure)]
    structs = [s for s in built if isinstance(s, Structure)]
    errors = [(k, str(s)) for k, s in enumerate(built) if isinstance(s, StructureError)]
    if structs:
        mean, std = predictor.predict_graphs(predictor.graphs(structs), batch_size)
    else:
        mean = std = np.empty((0, len(predictor.energy)), np.float32)
    return {
        "names": [s.name for s in structs],
        "smiles": [s.smiles for s in structs],
        "mu": mean.astype(np.float32, copy=False),
        "std": std.astype(np.float32, copy=False),
        "good": good,
        "errors": errors,
        "out_of_domain": [(s.name, "; ".join(s.domain_notes)) for s in structs if not s.in_domain],
        "energy": predictor.energy,
        "model_version": predictor.model_version,
    }


def predict_range(
    edge: str, rr: Any, device: str | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """:func:`predict_records` of a :class:`~xas_bluesky.science.record_ranges.RecordRange`,
    read here (on the worker): the task carries a few numbers, not the records."""
    from xas_bluesky.science.record_ranges import read_range

    return predict_records(edge, read_range(rr, edge), device, batch_size)


# ------------------------------------------------------------------------ engines
class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class _InProcess:
    """Tasks run as they are submitted, here (``--workers 0``: the single-process baseline)."""

    n_workers = 1

    def submit(self, fn, *args):
        return _Done(fn(*args))

    def close(self) -> None:
        pass


class _Dask:
    """A dask.distributed client: on a LocalCluster of its own, or on a running scheduler."""

    def __init__(self, n_workers: int | None, scheduler: str | None):
        from distributed import Client

        # the scheduler's and nannies' start/stop chatter is not the command's to print
        logging.getLogger("distributed").setLevel(logging.WARNING)
        self.cluster = None
        if scheduler:
            self.client = Client(scheduler)
        else:
            if n_workers is None:
                n_workers = _default_workers()
            import dask

            # the nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, to give freed memory
            # back early.  Any value set turns off glibc's dynamic mmap threshold, and torch's
            # per-batch arrays are then mapped and unmapped every time: a task of 1,024
            # structures took 1.2-1.6 s in a worker against 0.76-0.86 s in this process (with
            # 65536 and with 64 MiB alike, measured here).  Unset, the worker matches (0.75 s).
            # the scheduler keeps its last 100 "computations" for its dashboard, each with the
            # task's arguments: 100 chunks of records in this process (~150 MB, ~0.7 GB
            # unpickled); none is kept here
            settings = {
                "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                "distributed.diagnostics.computations.max-history": 1,
            }
            with dask.config.set(settings):
                self.cluster = self._local_cluster(n_workers)
            self.client = Client(self.cluster)
        self.n_workers = max(1, len(self.client.scheduler_info().get("workers", {})))

    @staticmethod
    def _local_cluster(n_workers: int):
        from distributed import LocalCluster

        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",  # loopback only
            dashboard_address=None,
            silence_logs=logging.ERROR,
            env={"OMP_NUM_THREADS": "1"},
        )

    def submit(self, fn, *args):
        # the arguments as one pickled blob: the local scheduler (a thread of this process)
        # unpickles a task's arguments (records as ~100,000 small objects grew this process by
        # ~7 kB per structure); tasks now carry a byte range of the input, not its records
        return self.client.submit(_call_pickled, pickle.dumps((fn, args), protocol=5), pure=False)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _call_pickled(blob: bytes):
    fn, args = pickle.loads(blob)
    return fn(*args)


def _default_workers() -> int:
    """One per GPU where there are GPUs (decided without importing torch), else one per core."""
    gpus = [d for d in os.listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit()]
    return len(gpus) or (os.cpu_count() or 1)


# ------------------------------------------------------------------------ the command
def run_h5(args: argparse.Namespace) -> int:
    from xas_bluesky.apps.cli import CLIError
    from xas_bluesky.science.prediction_file import PredictionFile, PredictionFileError
    from xas_bluesky.science.record_ranges import record_ranges
    from xas_bluesky.science.structures import StructureError, count_records

    t0 = time.perf_counter()
    if args.std:
        raise CLIError("--std is for CSV output: an HDF5 file holds the spread as 'std'")
    if args.chunk < 1:
        raise CLIError("--chunk must be >= 1")
    if args.workers is not None and args.workers < 0:
        raise CLIError("--workers must be >= 0")
    if os.path.exists(args.out) and not args.resume:
        raise CLIError(f"{args.out}: exists; --resume continues it, or remove it to start again")
    source = os.path.abspath(args.structures)
    skip = _committed_records(args.out) if args.resume else 0
    try:
        total = count_records(args.structures)
    except OSError as exc:
        raise CLIError(f"{args.structures}: {exc.strerror or exc}") from None
    engine: _InProcess | _Dask = (
        _InProcess() if args.workers == 0 and not args.scheduler else
        _Dask(args.workers, args.scheduler)
    )  # fmt: skip
    out: PredictionFile | None = None
    bar = _progress(total, skip, args)
    n_rows = n_skipped = n_ood = 0
    complete = False
    try:
        ranges = record_ranges(args.structures, args.chunk, skip)
        pending: deque = deque()
        window = 2 * engine.n_workers + 1  # enough to keep every worker busy, and no more
        feeding = True
        while feeding or pending:
            while feeding and len(pending) < window:
                rr = next(ranges, None)
                if rr is None:
                    feeding = False
                    break
                pending.append(
                    (rr.n_records, engine.submit(predict_range, args.edge, rr, args.device,
                                                 args.batch_size))
                )  # fmt: skip
            if not pending:
                break
            size, future = pending.popleft()
            res = future.result()
            if out is None:
                opener = PredictionFile.resume if args.resume else PredictionFile.create
                out = opener(
                    args.out, res["energy"], edge=args.edge,
                    model_version=res["model_version"], source=source,
                )  # fmt: skip
            for name, notes in res["out_of_domain"]:
                _say(bar, f"warning: structure {name!r} is outside the training domain ({notes}): "
                     "predicted anyway")  # fmt: skip
            n_ood += len(res["out_of_domain"])
            if res["errors"] and not args.skip_invalid:
                k, msg = res["errors"][0]
                keep = sum(1 for g in res["good"] if g < k)
                out.append(res["names"][:keep], res["smiles"][:keep], res["mu"][:keep],
                           res["std"][:keep], k)  # fmt: skip
                raise StructureError(msg)
            for _, msg in res["errors"]:
                _say(bar, f"skipped: {msg}")
            n_skipped += len(res["errors"])
            out.append(res["names"], res["smiles"], res["mu"], res["std"], size)
            n_rows += len(res["names"])
            if bar is not None:
                bar.update(size)
        complete = True
    except (StructureError, PredictionFileError, OSError, RuntimeError) as exc:
        raise CLIError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    finally:
        if bar is not None:
            bar.close()
        if out is not None:
            out.close(complete=complete)
        engine.close()
    if out is None and not args.resume:
        raise CLIError(f"{args.structures}: no structures in the file")
    dt = time.perf_counter() - t0
    print(
        f"xas-bluesky predict: {n_rows} structures{' more' if skip else ''} to {args.out}"
        f" ({n_skipped} skipped, {n_ood} outside the training domain), {args.edge} K edge, "
        f"{dt:.1f} s, {n_rows / max(dt, 1e-9):,.0f} structures/s",
        file=sys.stderr,
    )
    return 0


def _committed_records(path: str) -> int:
    """Input records a file to be resumed accounts for (0 when it does not exist yet)."""
    if not os.path.exists(path):
        return 0
    from xas_bluesky.apps.cli import CLIError

    try:
        import h5py

        with h5py.File(path, "r") as h5:
            return int(h5.attrs["records_read"])
    except (OSError, KeyError) as exc:
        raise CLIError(f"{path}: not a prediction file to resume ({exc})") from None


def _progress(total: int, done: int, args: argparse.Namespace):
    if args.no_progress:
        return None
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=total, initial=done, unit=" structures", file=sys.stderr, dynamic_ncols=True,
        mininterval=0.5 if tty else 30.0, smoothing=0.05, desc="predict",
    )  # fmt: skip


def _say(bar, msg: str) -> None:
    line = f"xas-bluesky predict: {msg}"
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)
