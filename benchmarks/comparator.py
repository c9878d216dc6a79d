"""Time one measured point through the comparator: ``add_points`` + ``result``.

Candidates are the shipped held-out FEFF spectra of an edge, tiled and perturbed to the wanted
number, with an ensemble spread; the measurement is one of them with noise, a shared offset and a
sloping background, added in random order.  Prints milliseconds per point (median, p99) for 100,
10,000 and 100,000 candidates.  ``--growth N`` instead times one long run of N points
(600 candidates, 8 points per update, as the live worker coalesces them under load): the cost
of an update at the first 1,000 points (the baseline) and at 10k, 25k, 50k... in the same run.

    .venv/bin/python benchmarks/comparator.py [--edge O] [--points 60] [--sizes 100 10000 100000]
    .venv/bin/python benchmarks/comparator.py --growth 50000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from xas_bluesky.resources import heldout_samples
from xas_bluesky.science.compare import Comparator


def make_candidates(edge: str, n: int, rng: np.random.Generator):
    energy, samples = heldout_samples(edge)
    base = np.array([s["mu"] for s in samples])
    idx = np.arange(n) % base.shape[0]
    mean = base[idx] * rng.uniform(0.9, 1.1, (n, 1)) + 0.02 * rng.standard_normal((n, 1))
    std = 0.05 + 0.05 * np.abs(mean)
    return energy, mean.astype(np.float32), std.astype(np.float32), [f"c{i:06d}" for i in range(n)]


def time_points(n_cand: int, n_points: int, edge: str, offset_step: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    energy, mean, std, names = make_candidates(edge, n_cand, rng)
    t0 = time.perf_counter()
    cmp = Comparator(energy, mean, std, names, offset_step=offset_step)
    t_init = time.perf_counter() - t0
    mono = np.linspace(energy[0] + 1, energy[-1] - 1, n_points)
    y = 0.02 * np.interp(mono + 0.7, energy, mean[0]) + 0.05 + 1e-4 * (mono - mono[0])
    sig = np.full(n_points, 2e-4)
    y += sig * rng.standard_normal(n_points)
    wall, cpu = [], []
    for i in rng.permutation(n_points):
        t, c = time.perf_counter(), time.thread_time()
        cmp.add_points(mono[i], y[i], sig[i])
        res = cmp.result()
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    # the first 4 points are uniform (nothing to fit yet)
    return t_init, 1e3 * np.asarray(wall[4:]), 1e3 * np.asarray(cpu[4:]), res, cmp.n_rebuilds


def time_growth(n_points: int, edge: str, n_cand: int = 600, batch: int = 8, seed: int = 0):
    """Update cost (add_points + result, ms) around each mark of one run of ``n_points``."""
    rng = np.random.default_rng(seed)
    energy, mean, _, names = make_candidates(edge, n_cand, rng)
    cmp = Comparator(energy, mean, None, names)
    mono = rng.uniform(energy[0] + 1, energy[-1] - 1, n_points)
    sig = np.full(n_points, 2e-4)
    y = 0.02 * np.interp(mono + 0.7, energy, mean[0]) + 0.05 + sig * rng.standard_normal(n_points)
    marks = [m for m in (1_000, 10_000, 25_000, 50_000, 100_000) if m <= n_points]
    rows, window = [], []
    for i in range(0, n_points, batch):
        t = time.perf_counter()
        cmp.add_points(mono[i : i + batch], y[i : i + batch], sig[i : i + batch])
        cmp.result()
        window.append(1e3 * (time.perf_counter() - t))
        window = window[-50:]  # the last 50 updates before a mark
        if marks and i + batch >= marks[0]:
            rows.append((marks.pop(0), np.median(window), np.percentile(window, 99)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edge", default="O")
    ap.add_argument("--points", type=int, default=60)
    ap.add_argument("--offset-step", type=float, default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000, 100_000])
    ap.add_argument("--growth", type=int, default=None, metavar="N")
    args = ap.parse_args(argv)
    if args.growth:
        print(f"edge {args.edge}, 600 candidates, one run of {args.growth} points, 8 per update")
        print(f"{'points':>10}{'ms median':>12}{'p99':>10}   (last 50 updates before the mark)")
        for n, med, p99 in time_growth(args.growth, args.edge):
            print(f"{n:>10}{med:>12.2f}{p99:>10.2f}")
        return
    kw = {} if args.offset_step is None else {"offset_step": args.offset_step}
    step = kw.get("offset_step", Comparator.__init__.__kwdefaults__["offset_step"])
    print(f"edge {args.edge}, {args.points} points, offset step {step} eV; ms per point")
    print("(wall: what a caller waits on this shared machine; cpu: this thread's CPU time)")
    head = ("candidates", "init s", "wall med", "p90", "p99", "max", "cpu med", "p99", "rebuilds")
    print("".join(f"{h:>10}" for h in head))
    for n in args.sizes:
        t_init, wall, cpu, _, nreb = time_points(n, args.points, args.edge, step)
        row = [np.median(wall), *np.percentile(wall, [90, 99]), wall.max()]
        row += [np.median(cpu), np.percentile(cpu, 99)]
        print(f"{n:>10}{t_init:>10.2f}" + "".join(f"{v:>10.2f}" for v in row) + f"{nreb:>10d}")


if __name__ == "__main__":
    main()
