"""Event -> score-PV latency of the live analysis, as an independent Channel Access client sees it.

For each candidate count a RunEngine measures a spectrum point by point (soft signals: the
beamline's own round trips are not part of this figure), the live analysis (in-process score IOC,
real Comparator) scores every event, and a separate process
(:mod:`xas_bluesky.beamline.epics.probe`, its own libca) timestamps each ``Match:NPoints-I``
monitor update.  Latency of point k = arrival of the first update showing >= k points minus the
event document's ``time``.

Candidate spectra: the shipped library's GNN predictions, repeated with random smooth
perturbations up to the wanted count (predicting 100,000 structures is a one-off cost, done before
a run, and not part of the event -> PV path).

    .venv/bin/python benchmarks/latency.py [--sizes 100 10000 100000] [--points 80]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _env():
    from xas_bluesky.services import free_ports, loopback_ca_env

    port, rep = free_ports(2)
    return port, rep, loopback_ca_env(port, rep)


def candidate_set(n: int, edge: str = "O", seed: int = 0):
    from xas_bluesky.resources import candidates_file
    from xas_bluesky.science.candidates import CandidateSet, PredictionCache

    base = PredictionCache().from_file(candidates_file(edge), edge)
    rng = np.random.default_rng(seed)
    reps = -(-n // len(base))
    mean = np.tile(base.mean, (reps, 1))[:n].astype(np.float32)
    std = np.tile(base.std, (reps, 1))[:n].astype(np.float32)
    e = base.energy
    # smooth perturbations: a few Gaussians of random position/width/height per copy
    extra = np.zeros_like(mean)
    for _ in range(3):
        c = rng.uniform(e[0], e[-1], size=(n, 1))
        w = rng.uniform(1.0, 6.0, size=(n, 1))
        h = rng.normal(0.0, 0.05, size=(n, 1))
        extra += h * np.exp(-0.5 * ((e[None, :] - c) / w) ** 2)
    extra[: len(base)] = 0.0
    names = [f"{base.names[i % len(base)]}_{i // len(base)}" for i in range(n)]
    return CandidateSet(
        names=names,
        smiles=[base.smiles[i % len(base)] for i in range(n)],
        energy=e,
        mean=mean + extra.astype(np.float32),
        std=std,
        edge=edge,
        model_version=base.model_version,
        source=f"benchmark x{n}",
        keys=[f"bench{n}-{i}" for i in range(n)],
        calibration=base.calibration,
    ), base


def measure(n: int, points: int, interval: float, env: dict, port: int) -> dict:
    import bluesky.plan_stubs as bps
    from bluesky import RunEngine
    from ophyd import Signal

    from xas_bluesky.beamline.analysis import AnalysisSession
    from xas_bluesky.beamline.epics.probe import pair_latencies
    from xas_bluesky.beamline.epics.score_ioc import ScoreServer

    cands, base = candidate_set(n)
    prefix = f"LAT{n}:"
    server = ScoreServer(prefix, port=port).start()
    analysis = AnalysisSession(score_server=server, candidates=cands)
    out = Path(tempfile.mkdtemp(prefix="xas-latency-")) / "arrivals.jsonl"
    probe = subprocess.Popen(
        [sys.executable, "-m", "xas_bluesky.beamline.epics.probe", "--pv",
         prefix + "Match:NPoints-I", "--out", str(out)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        t0 = time.monotonic()
        while not (out.exists() and "connected" in out.read_text()):
            if time.monotonic() - t0 > 30 or probe.poll() is not None:
                raise RuntimeError("the probe did not connect")
            time.sleep(0.05)
        # warm up: one run builds the comparator (O(C x E) copies) outside the timed run
        e_sig, i0_sig, tey_sig = (
            Signal(name=k, value=0.0) for k in ("mono_energy", "det_i0", "det_tey")
        )
        md = {
            "xas_element": "O",
            "xas_mode": "TEY",
            "xas_fields": {"energy": "mono_energy", "i0": "det_i0", "signal": "det_tey"},
            "energy_offset": 0.0,
        }
        truth = base.mean[7]
        rng = np.random.default_rng(1)
        energies = np.linspace(528.0, 560.0, points)

        def plan(es):
            uid = yield from bps.open_run(md=md)
            for e in es:
                i0 = float(rng.poisson(1e6))
                mu = float(np.interp(e, cands.energy, truth))
                for sig, v in (
                    (e_sig, float(e)),
                    (i0_sig, i0),
                    (tey_sig, float(rng.poisson(i0 * (0.02 + 0.05 * mu)))),
                ):
                    sig.put(v)
                yield from bps.trigger_and_read([e_sig, i0_sig, tey_sig])
                yield from bps.sleep(interval)
            yield from bps.close_run()
            return uid

        RE = RunEngine({}, call_returns_result=False)
        RE.subscribe(analysis)
        RE(plan(energies[:3]))
        analysis.wait_idle(120)
        n_before = len(out.read_text().splitlines())
        (uid,) = RE(plan(energies))
        analysis.wait_idle(120)
        time.sleep(0.5)
        lines = [json.loads(x) for x in out.read_text().splitlines()[n_before:]]
        # the first update of a run shows 0 points ("Predicting"); keep this run's updates
        arrivals = [a for a in lines if "value" in a]
        lat = pair_latencies(analysis.engine.event_times[uid], arrivals)
        lat_ms = sorted(1e3 * x for x in lat)
        result = analysis.results[uid]
        return {
            "candidates": n,
            "points": len(lat_ms),
            "median_ms": statistics.median(lat_ms),
            "p99_ms": float(np.percentile(lat_ms, 99)),
            "max_ms": lat_ms[-1],
            "interval_s": interval,
            "best": result.best_name,
            "best_probability": float(result.best_probability),
        }
    finally:
        probe.terminate()
        probe.wait(10)
        analysis.shutdown(30)
        server.stop()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000, 100_000])
    ap.add_argument("--points", type=int, default=80)
    ap.add_argument("--interval", type=float, default=0.05, help="s between points (100k: x4)")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument(
        "--switch-interval", type=float, help="sys.setswitchinterval (s) of this process"
    )
    args = ap.parse_args(argv)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    port, rep, env = _env()
    os.environ.update(env)
    rep_proc = subprocess.Popen(
        [sys.executable, "-m", "caproto.commandline.repeater", "--quiet"],
        env={**os.environ, "EPICS_CA_REPEATER_PORT": str(rep)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    rows = []
    try:
        for n in args.sizes:
            interval = args.interval * (4 if n >= 100_000 else 1)
            row = measure(n, args.points, interval, env, port)
            rows.append(row)
            print(
                f"{n:>7d} candidates: median {row['median_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms"
                f"  max {row['max_ms']:6.2f} ms  ({row['points']} points, one every "
                f"{row['interval_s'] * 1e3:.0f} ms)",
                flush=True,
            )
    finally:
        rep_proc.terminate()
        rep_proc.wait(5)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
