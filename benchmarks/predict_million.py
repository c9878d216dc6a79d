"""A million structures through ``xas-bluesky predict --out FILE.h5``: dask workers against one process.

Prints plain lines, one run after the other in this one script:

- the input: ``--n`` distinct QM9-size structures (the shipped candidates, every atom moved by up
  to 0.01 A: distinct geometries, the same chemistry), written as one XYZ file;
- the distributed run (``--workers`` dask LocalCluster workers): killed with SIGKILL (its whole
  process group, workers included) once ``--kill-at`` of the rows are committed, then continued
  with ``--resume``; wall time of both parts, throughput, the peak RSS of the main process and of
  each worker process;
- the baseline: the same input in one process (``--workers 0``), the same figures;
- that both files hold the same rows (names in input order; mu on a sample of rows), and the
  file's size.

Pause the background FEFF job while it runs (``--pause PID``: SIGSTOP for the run, SIGCONT after):
the two cores are the measurement.

Run: ``.venv/bin/python benchmarks/predict_million.py [--n 1000000] [--workers 2] [--pause PID]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xas_bluesky.science.prediction_file import read_predictions  # noqa: E402


def write_input(path: Path, edge: str, n: int, seed: int = 0) -> None:
    """``n`` jittered copies of the shipped candidates, cycled, as XYZ (named ``j<k>``)."""
    from xas_bluesky.resources import candidates_file

    lines = candidates_file(edge).read_text().splitlines()
    mols, k = [], 0
    while k < len(lines):
        m = int(lines[k])
        rows = [ln.split() for ln in lines[k + 2 : k + 2 + m]]
        xyz = np.array([r[1:4] for r in rows], float)
        # one %-format per frame: the whole frame's text from its coordinates
        template = "".join(f"{r[0]} %.5f %.5f %.5f\n" for r in rows)
        mols.append((m, xyz, template))
        k += 2 + m
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for start in range(0, n, 10_000):
            block = []
            for j in range(start, min(n, start + 10_000)):
                m, xyz, template = mols[j % len(mols)]
                pos = xyz + rng.uniform(-0.01, 0.01, size=xyz.shape)
                block.append(f"{m}\nj{j:07d}\n" + template % tuple(pos.ravel()))
            fh.write("".join(block))


class PeakRSS:
    """Peak resident memory of a process and each of its descendants, sampled every 0.5 s."""

    def __init__(self, pid: int):
        self.root = pid
        self.peak: dict[int, tuple[str, float]] = {}
        #: the main process's RSS over the run, to tell growth from a peak
        self.main: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.root)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in procs:
                try:
                    rss = p.memory_info().rss / 2**20
                    role = "main" if p.pid == self.root else _role(p)
                except psutil.NoSuchProcess:
                    continue
                if role == "main" and rss > 0:  # 0: exited, not yet reaped
                    self.main.append(rss)
                if rss > self.peak.get(p.pid, ("", 0.0))[1]:
                    self.peak[p.pid] = (role, rss)
            self._stop.wait(0.5)

    def stop(self) -> dict[str, list[float]]:
        self._stop.set()
        self._thread.join()
        out: dict[str, list[float]] = {}
        for role, rss in self.peak.values():
            out.setdefault(role, []).append(rss)
        if self.main:  # main's RSS a quarter into the run and at its end: growth, not the peak
            out["main_quarter"] = [self.main[len(self.main) // 4]]
            out["main_end"] = [self.main[-1]]
        return out


def _role(p: psutil.Process) -> str:
    cmd = " ".join(p.cmdline())
    if "spawn_main" in cmd or "forkserver" in cmd or "multiprocessing" in cmd:
        return "worker"
    return "other"


def predict(cmd: list[str], rows_to_kill: int | None, out: Path):
    """Run ``cmd``; SIGKILL its process group once ``out`` holds ``rows_to_kill`` rows."""
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")  # read the counters while it writes
    t0 = time.perf_counter()
    # stderr to a file, not a pipe: a million structures' warnings would fill a pipe nobody
    # reads until the end, and the command would block writing them
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True, stderr=log, text=True)
    mem = PeakRSS(proc.pid)
    killed = False
    while proc.poll() is None:
        if rows_to_kill is not None and _rows(out) >= rows_to_kill:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(1.0)
    proc.wait()
    wall = time.perf_counter() - t0
    log.seek(0)
    err = log.read()
    log.close()
    peaks = mem.stop()
    if not killed and proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}):\n{err[-2000:]}")
    return wall, peaks, err


def _rows(path: Path) -> int:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs["rows"])
    except (OSError, KeyError):
        return 0


def _mem(peaks: dict[str, list[float]]) -> str:
    main = max(peaks.get("main", [0.0]))
    workers = sorted(peaks.get("worker", []), reverse=True)
    w = ", ".join(f"{v:.0f}" for v in workers) or "none"
    growth = ""
    if "main_end" in peaks:
        q, e = peaks["main_quarter"][0], peaks["main_end"][0]
        growth = f" (main {q:.0f} MB a quarter into the run, {e:.0f} MB at its end)"
    return f"peak RSS main {main:.0f} MB, workers [{w}] MB{growth}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--edge", default="O")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kill-at", type=float, default=0.4, help="fraction of rows, then SIGKILL")
    ap.add_argument("--pause", type=int, help="PID to SIGSTOP while the benchmark runs (FEFF)")
    ap.add_argument(
        "--tmp", help="directory for the input and the files (default: a temporary one)"
    )
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    tmpdir = tempfile.TemporaryDirectory(dir=args.tmp)
    tmp = Path(tmpdir.name)
    paused = []
    if args.pause:
        for p in [psutil.Process(args.pause), *psutil.Process(args.pause).children(True)]:
            p.suspend()
            paused.append(p)
    try:
        xyz = tmp / "input.xyz"
        t0 = time.perf_counter()
        write_input(xyz, args.edge, args.n)
        print(
            f"input: {args.n:,} jittered QM9 structures ({args.edge} edge), "
            f"{xyz.stat().st_size / 2**20:,.0f} MB of XYZ, written in {time.perf_counter() - t0:.0f} s"
        )
        base = [sys.executable, "-m", "xas_bluesky.apps.cli", "predict", "--edge", args.edge,
                "--structures", str(xyz), "--no-progress"]  # fmt: skip
        dist = tmp / "dask.h5"
        cmd = [*base, "--out", str(dist), "--workers", str(args.workers)]
        w1, m1, _ = predict(cmd, int(args.kill_at * args.n), dist)
        at = _rows(dist)
        print(f"dask, {args.workers} workers: killed (SIGKILL) at {at:,} rows after {w1:.0f} s; "
              f"{_mem(m1)}")  # fmt: skip
        w2, m2, err = predict([*cmd, "--resume"], None, dist)
        total = w1 + w2
        print(f"dask, {args.workers} workers: resumed, {args.n - at:,} more rows in {w2:.0f} s; "
              f"{_mem(m2)}")  # fmt: skip
        print(f"dask, {args.workers} workers: {args.n:,} structures in {total:.0f} s with one kill, "
              f"{args.n / total:,.0f} structures/s")  # fmt: skip
        print(f"  its last line: {err.strip().splitlines()[-1]}")
        size = dist.stat().st_size
        print(f"HDF5 file: {size / 2**20:,.0f} MB ({size / args.n:.0f} bytes per structure)")
        if args.no_baseline:
            return
        one = tmp / "one.h5"
        w0, m0, err = predict([*base, "--out", str(one), "--workers", "0"], None, one)
        print(f"baseline, one process: {args.n:,} structures in {w0:.0f} s, "
              f"{args.n / w0:,.0f} structures/s; {_mem(m0)}")  # fmt: skip
        print(f"  its last line: {err.strip().splitlines()[-1]}")
        print(f"speed-up of dask ({args.workers} workers, one kill and resume included): "
              f"{w0 / total:.2f}x")  # fmt: skip
        check_same(dist, one, args.n)
    finally:
        for p in paused:
            p.resume()
        tmpdir.cleanup()


def check_same(a: Path, b: Path, n: int) -> None:
    rng = np.random.default_rng(1)
    ra, rb = read_predictions(a, slice(0, 0)), read_predictions(b, slice(0, 0))
    assert ra["attrs"]["rows"] == rb["attrs"]["rows"] == n, (ra["attrs"], rb["attrs"])
    import h5py

    with h5py.File(a) as fa, h5py.File(b) as fb:
        for lo in range(0, n, 200_000):
            sl = slice(lo, min(n, lo + 200_000))
            if list(fa["names"][sl]) != list(fb["names"][sl]):
                raise SystemExit(f"names differ in rows {sl}")
        rows = np.sort(rng.choice(n, size=min(n, 10_000), replace=False))
        diff = float(np.abs(fa["mu"][rows] - fb["mu"][rows]).max())
    names_ok = all(
        v.decode() == f"j{k:07d}" for k, v in zip(range(0, n, 99_991), _names(a, n), strict=False)
    )
    print(f"rows: {n:,} in both files, names identical and in input order ({names_ok}); "
          f"max |mu difference| on 10,000 sampled rows {diff:.2e}")  # fmt: skip


def _names(path: Path, n: int):
    import h5py

    with h5py.File(path) as f:
        return [f["names"][k] for k in range(0, n, 99_991)]


if __name__ == "__main__":
    main()
