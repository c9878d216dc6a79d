"""dask.distributed against Ray for ``predict --out FILE.h5``'s tasks, side by side in one process.

The same work on each engine: ``--n`` jittered QM9 structures read here in chunks of ``--chunk``
records, each chunk one :func:`~xas_bluesky.apps.predict_stream.predict_records` task (bond
perception, graphs, the shipped ensemble) on ``--workers`` single-threaded worker processes, at
most 2 x workers + 1 tasks in flight, results taken in input order -- exactly the command's loop.
Prints per engine: start-up (cluster up, first task back: workers import torch and load the
weights), steady throughput after it, the per-task overhead of an empty task, and the peak RSS
of the worker processes; then the in-process baseline of the same chunks.

Ray is not a dependency of the package: ``pip install ray`` to include it (skipped otherwise).
Pause the background FEFF job while it runs (``--pause PID``).

Run: ``.venv/bin/python benchmarks/engines.py [--n 40000] [--workers 2] [--pause PID]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import deque
from itertools import islice
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from predict_million import write_input  # noqa: E402

from xas_bluesky.apps.predict_stream import _Dask, predict_records  # noqa: E402
from xas_bluesky.science.structures import read_records  # noqa: E402


def _noop(x):
    return x


def feed(submit, result, xyz: Path, edge: str, chunk: int, window: int) -> tuple[float, float, int]:
    """The command's loop; (time to the first result, time after it, rows after it)."""
    t0 = time.perf_counter()
    records = read_records(xyz, edge)
    pending: deque = deque()
    first, rows, feeding = None, 0, True
    while feeding or pending:
        while feeding and len(pending) < window:
            part = list(islice(records, chunk))
            if not part:
                feeding = False
                break
            pending.append(submit(predict_records, edge, part))
        if not pending:
            break
        res = result(pending.popleft())
        if first is None:
            first = time.perf_counter()
        else:
            rows += len(res["names"])
    end = time.perf_counter()
    assert first is not None
    return first - t0, end - first, rows


def worker_rss(pids: list[int]) -> str:
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid).memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            pass
    return ", ".join(f"{v:.0f}" for v in sorted(out, reverse=True)) + " MB"


def run_dask(args, xyz: Path) -> None:
    t0 = time.perf_counter()
    engine = _Dask(args.workers, None)  # the command's own cluster set-up
    up = time.perf_counter() - t0
    client = engine.client
    try:
        first, steady, rows = feed(
            engine.submit, lambda f: f.result(), xyz, args.edge, args.chunk, 2 * args.workers + 1
        )
        overhead = _overhead(lambda: client.submit(_noop, 1, pure=False).result())
        pids = list(client.run(os.getpid).values())
        print(f"dask.distributed: cluster up {up:.1f} s, first result {first:.1f} s later; "
              f"steady {rows / steady:,.0f} structures/s; empty task round trip "
              f"{overhead:.2f} ms; worker RSS {worker_rss(pids)}")  # fmt: skip
    finally:
        engine.close()


def run_ray(args, xyz: Path) -> None:
    try:
        import ray
    except ImportError:
        print("ray: not installed (pip install ray), skipped")
        return
    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, _node_ip_address="127.0.0.1")  # fmt: skip
    up = time.perf_counter() - t0
    try:
        task = ray.remote(num_cpus=1)(predict_records)
        noop = ray.remote(num_cpus=1)(_noop)
        first, steady, rows = feed(
            lambda fn, *a: task.remote(*a), ray.get, xyz, args.edge, args.chunk,
            2 * args.workers + 1,
        )  # fmt: skip
        overhead = _overhead(lambda: ray.get(noop.remote(1)))
        pids = [p.pid for p in psutil.Process().children(recursive=True)
                if " ".join(p.cmdline()).startswith("ray::")]  # fmt: skip
        print(f"ray: cluster up {up:.1f} s, first result {first:.1f} s later; "
              f"steady {rows / steady:,.0f} structures/s; empty task round trip "
              f"{overhead:.2f} ms; worker RSS {worker_rss(pids)} "
              f"({len(pids)} worker processes)")  # fmt: skip
    finally:
        ray.shutdown()


def run_local(args, xyz: Path) -> None:
    first, steady, rows = feed(lambda fn, *a: fn(*a), lambda r: r, xyz, args.edge, args.chunk, 1)
    print(f"in process (baseline): first result {first:.1f} s; steady {rows / steady:,.0f} "
          f"structures/s; RSS {psutil.Process().memory_info().rss / 2**20:.0f} MB")  # fmt: skip


def _overhead(call, n: int = 200) -> float:
    call()
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        t.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(t))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=40_000)
    ap.add_argument("--edge", default="O")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--pause", type=int, help="PID to SIGSTOP while the benchmark runs (FEFF)")
    args = ap.parse_args()
    paused = []
    if args.pause:
        for p in [psutil.Process(args.pause), *psutil.Process(args.pause).children(True)]:
            p.suspend()
            paused.append(p)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            xyz = Path(tmp) / "input.xyz"
            write_input(xyz, args.edge, args.n)
            print(f"{args.n:,} jittered QM9 structures, chunks of {args.chunk}, "
                  f"{args.workers} workers")  # fmt: skip
            run_dask(args, xyz)
            run_ray(args, xyz)
            run_local(args, xyz)
    finally:
        for p in paused:
            p.resume()


if __name__ == "__main__":
    main()
