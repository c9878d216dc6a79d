"""Time one measured point through the comparator: ``add_points`` + ``result``.

Candidates are the shipped held-out FEFF spectra of an edge, tiled and perturbed to the wanted
number, with an ensemble spread; the measurement is one of them with noise, a shared offset and a
sloping background, added in random order.  Prints milliseconds per point (median, p99) for 100,
10,000 and 100,000 candidates.

    .venv/bin/python benchmarks/comparator.py [--edge O] [--points 60] [--sizes 100 10000 100000]
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
    times = []
    for i in rng.permutation(n_points):
        t = time.perf_counter()
        cmp.add_points(mono[i], y[i], sig[i])
        res = cmp.result()
        times.append(time.perf_counter() - t)
    ms = 1e3 * np.asarray(times[4:])  # the first 4 points are uniform (nothing to fit yet)
    return t_init, ms, res, cmp.n_rebuilds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edge", default="O")
    ap.add_argument("--points", type=int, default=60)
    ap.add_argument("--offset-step", type=float, default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000, 100_000])
    args = ap.parse_args(argv)
    kw = {} if args.offset_step is None else {"offset_step": args.offset_step}
    step = kw.get("offset_step", Comparator.__init__.__kwdefaults__["offset_step"])
    print(f"edge {args.edge}, {args.points} points, offset step {step} eV")
    print(
        f"{'candidates':>10} {'init s':>8} {'median ms':>10} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'rebuilds':>8}"
    )
    for n in args.sizes:
        t_init, ms, res, nreb = time_points(n, args.points, args.edge, step)
        print(
            f"{n:>10} {t_init:>8.2f} {np.median(ms):>10.2f} {np.percentile(ms, 90):>8.2f}"
            f" {np.percentile(ms, 99):>8.2f} {ms.max():>8.2f} {nreb:>8d}"
        )


if __name__ == "__main__":
    main()
