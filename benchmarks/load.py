"""Load: the live analysis fed at 1 kHz for a minute, and a RunEngine soak at its top rate.

Two parts, one process each after the other (``--part`` runs one of them):

``feed``
    Event documents of one XAS run composed with event-model and handed straight to the analysis
    (:class:`~xas_bluesky.beamline.analysis.LiveXASAnalysis` around an
    :class:`~xas_bluesky.beamline.analysis.AnalysisEngine`; no RunEngine, no score IOC) at
    ``--rate`` events/s (1,000) for ``--seconds`` (60), paced by the clock: the feeder sends
    whatever is due, so a slow moment is caught up, not skipped.
``soak``
    A real RunEngine measuring ophyd *soft* signals (energy, I0, TEY) as fast as it goes for
    ``--seconds``, with the live analysis subscribed as at the beamline
    (:func:`~xas_bluesky.beamline.analysis.subscribe_live_analysis`: the score IOC on loopback,
    the worker thread).  Soft signals, not the simulated beamline's IOC: through Channel Access
    with mono moves the simulator tops out near 12 events/s (``benchmarks/sim_beamline.py``),
    which would not load the analysis at all.

Both score against the shipped library of the O K edge (``--candidates`` more or fewer: its
first N structures), with the spectrum of one of them measured with Poisson counts.  Printed,
as JSON on stdout:

- ``events`` sent and ``rate`` reached; ``lost``: events the analysis never handled (sent minus
  its final ``n_events``), with its ``gaps``, ``duplicates`` and the worker's ``dropped``;
- ``rss_mb``: resident memory at the end of the warm-up (``--warmup`` s) and at the end, and
  the growth in percent (goal <= 5 %);
- ``latency_ms``: event time -> the analysis' update for it reaching its sinks, median and p99
  in the first and the last tenth of the run (goal: the last no worse than the first), and the
  number of updates (the worker coalesces what arrives while it scores).

::

    python benchmarks/load.py                  # both parts, 60 s each
    python benchmarks/load.py --part feed --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import numpy as np

FIELDS = {"energy": "mono_energy", "i0": "det_i0", "signal": "det_tey"}


def rss_mb() -> float:
    """This process' resident set size (MB), from ``/proc/self/status``."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class LatencySink:
    """An analysis sink recording, for every scored update, when it arrived and how old its
    newest event was (fixed-size arrays: the recording itself barely grows the process)."""

    def __init__(self) -> None:
        self.arrived = array("d")
        self.latency = array("d")
        self.finals: dict[str, Any] = {}

    def status(self, status: str, message: str) -> None:
        pass

    def run_opened(self, run) -> None:
        pass

    def update(self, run, summary, scored: bool) -> None:
        if scored and summary.event_time is not None:
            now = time.time()
            self.arrived.append(now)
            self.latency.append(now - summary.event_time)

    def run_closing(self, run, raw_stop: dict) -> None:
        pass

    def run_closed(self, run, summary, raw_stop: dict) -> None:
        self.finals[run.uid] = summary


class RSSSampler:
    """Samples the RSS once a second on a thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), rss_mb()))
            self._stop.wait(1.0)

    def start(self) -> RSSSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join()
        self.samples.append((time.monotonic(), rss_mb()))

    def growth(self, t0: float, warmup: float) -> dict[str, float]:
        after = [r for t, r in self.samples if t >= t0 + warmup]
        if not after:
            return {}
        base, end, peak = after[0], after[-1], max(after)
        return {
            "after_warmup": round(base, 1),
            "end": round(end, 1),
            "peak": round(peak, 1),
            "growth_percent": round(100.0 * (end - base) / base, 2),
        }


def latency_deciles(sink: LatencySink, t0: float, t1: float) -> dict[str, Any]:
    """Median and p99 latency (ms) of the updates in the first and the last tenth of [t0, t1]."""
    arrived = np.frombuffer(sink.arrived, dtype=float)
    lat = np.frombuffer(sink.latency, dtype=float) * 1e3
    out: dict[str, Any] = {"updates": int(lat.size)}
    span = (t1 - t0) / 10.0
    for name, lo in (("first_decile", t0), ("last_decile", t1 - span)):
        sel = lat[(arrived >= lo) & (arrived < lo + span)]
        out[name] = (
            {
                "median": round(float(np.median(sel)), 2),
                "p99": round(float(np.percentile(sel, 99)), 2),
                "updates": int(sel.size),
            }
            if sel.size
            else None
        )
    out["all"] = {
        "median": round(float(np.median(lat)), 2) if lat.size else None,
        "p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
    }
    return out


def load_candidates(n: int):
    """The first ``n`` structures of the shipped O library, predicted with the shipped model."""
    from xas_bluesky.resources import candidates_file
    from xas_bluesky.science.candidates import PredictionCache

    lines = candidates_file("O").read_text().splitlines()
    out, i, k = [], 0, 0
    while i < len(lines) and k < n:
        m = int(lines[i])
        out += lines[i : i + m + 2]
        i += m + 2
        k += 1
    path = Path(tempfile.mkdtemp(prefix="xas-load-")) / f"candidates_{n}.xyz"
    path.write_text("\n".join(out) + "\n")
    return PredictionCache().from_file(path, "O")


class Spectrum:
    """Poisson TEY/I0 readings of one candidate's predicted spectrum at random grid energies."""

    def __init__(self, cands, truth: int = 0, seed: int = 0):
        self.energy = np.asarray(cands.energy, dtype=float)
        self.mu = np.asarray(cands.mean[truth], dtype=float)
        self.rng = np.random.default_rng(seed)
        self.grid = np.round(np.arange(526.0, 575.0, 0.1), 2)

    def point(self) -> tuple[float, float, float]:
        e = float(self.grid[self.rng.integers(self.grid.size)])
        mu = float(np.interp(e, self.energy, self.mu))
        i0 = float(self.rng.poisson(1e6))
        return e, i0, float(self.rng.poisson(i0 * (0.02 + 0.05 * mu)))


def xas_start_md(cands) -> dict:
    return {
        "xas_element": "O",
        "xas_edge": "K",
        "xas_mode": "TEY",
        "xas_fields": dict(FIELDS),
        "sample_name": "load",
        "energy_offset": 0.0,
        "candidates": None,
    }


def part_feed(args, cands) -> dict[str, Any]:
    """Documents straight into LiveXASAnalysis at ``args.rate`` for ``args.seconds``."""
    from event_model import compose_run

    from xas_bluesky.beamline.analysis import AnalysisEngine, LiveXASAnalysis

    sink = LatencySink()
    engine = AnalysisEngine([sink], candidates=cands)
    analysis = LiveXASAnalysis(engine)
    spec = Spectrum(cands)
    bundle = compose_run(metadata=xas_start_md(cands))
    analysis("start", bundle.start_doc)
    keys = {k: {"source": "sim", "dtype": "number", "shape": []} for k in FIELDS.values()}
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    analysis("descriptor", desc.descriptor_doc)
    sampler = RSSSampler().start()
    t0_wall, t0 = time.time(), time.monotonic()
    period, total = 1.0 / args.rate, int(args.rate * args.seconds)
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - t0) / period) + 1)
        while sent < due:
            e, i0, tey = spec.point()
            now = time.time()
            ev = desc.compose_event(
                data={FIELDS["energy"]: e, FIELDS["i0"]: i0, FIELDS["signal"]: tey},
                timestamps={k: now for k in FIELDS.values()},
                seq_num=sent + 1,
                validate=False,
            )
            analysis("event", ev)
            sent += 1
        time.sleep(max(0.0, t0 + sent * period - time.monotonic()))
    elapsed = time.monotonic() - t0
    t1_wall = time.time()
    analysis("stop", bundle.compose_stop(exit_status="success"))
    drained = analysis.wait_idle(120)
    sampler.stop()
    analysis.close()
    final = sink.finals.get(bundle.start_doc["uid"])
    handled = int(final.n_events) if final is not None else 0
    return {
        "part": "feed",
        "candidates": len(cands),
        "events": sent,
        "seconds": round(elapsed, 2),
        "rate": round(sent / elapsed, 1),
        "drained": drained,
        "lost": sent - handled,
        "gaps": int(final.gaps) if final is not None else None,
        "duplicates": int(final.n_duplicates) if final is not None else None,
        "dropped": analysis.dropped,
        "coalesced": analysis.coalesced,
        "errors": list(engine.errors)[-3:],
        "rss_mb": sampler.growth(t0, args.warmup),
        "latency_ms": latency_deciles(sink, t0_wall, t1_wall),
    }


def part_soak(args, cands) -> dict[str, Any]:
    """A RunEngine on soft signals, as fast as it goes, with the live analysis subscribed."""
    import bluesky.plan_stubs as bps
    from bluesky import RunEngine
    from ophyd import Signal

    from xas_bluesky.beamline.analysis import subscribe_live_analysis

    sigs = {role: Signal(name=key, value=0.0) for role, key in FIELDS.items()}
    sink = LatencySink()
    RE = RunEngine({}, context_managers=[])
    session = subscribe_live_analysis(
        RE, score_prefix="LOAD:", port=args.score_port, candidates=cands, sinks=[sink]
    )
    spec = Spectrum(cands, seed=1)
    sampler = RSSSampler()
    clock: dict[str, float] = {}
    counted = {"events": 0}

    def count(name, doc):
        if name == "event":
            counted["events"] += 1

    RE.subscribe(count)

    def plan():
        uid = yield from bps.open_run(md=xas_start_md(cands))
        sampler.start()
        clock["t0"], clock["t0_wall"] = time.monotonic(), time.time()
        while time.monotonic() - clock["t0"] < args.seconds:
            e, i0, tey = spec.point()
            for role, v in (("energy", e), ("i0", i0), ("signal", tey)):
                sigs[role].put(v)
            # as bp.scan and adaptive_xanes_scan do at each point: without a checkpoint the
            # RunEngine keeps every message since the last one to replay on a resume (~2 kB a
            # point: most of what this soak once counted as the analysis' RSS growth)
            yield from bps.checkpoint()
            yield from bps.trigger_and_read(list(sigs.values()))
        clock["t1"], clock["t1_wall"] = time.monotonic(), time.time()
        yield from bps.close_run()
        return uid

    try:
        (uid,) = RE(plan())
        drained = session.wait_idle(120)
    finally:
        sampler.stop()
        session.shutdown()
    elapsed = clock["t1"] - clock["t0"]
    final = sink.finals.get(uid)
    handled = int(final.n_events) if final is not None else 0
    sent = counted["events"]
    return {
        "part": "soak",
        "devices": "ophyd soft signals (energy, I0, TEY); score IOC on loopback",
        "candidates": len(cands),
        "events": sent,
        "seconds": round(elapsed, 2),
        "rate": round(sent / elapsed, 1),
        "drained": drained,
        "lost": sent - handled,
        "gaps": int(final.gaps) if final is not None else None,
        "duplicates": int(final.n_duplicates) if final is not None else None,
        "dropped": session.analysis.dropped,
        "errors": list(session.errors)[-3:],
        "rss_mb": sampler.growth(clock["t0"], args.warmup),
        "latency_ms": latency_deciles(sink, clock["t0_wall"], clock["t1_wall"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["feed", "soak", "both"], default="both")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="feed: events/s (default 1000)")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds before RSS is compared")
    ap.add_argument("--candidates", type=int, default=600, help="first N of the O library")
    args = ap.parse_args(argv)

    from xas_bluesky.services import apply_ca_env, free_ports, loopback_ca_env, start_repeater

    args.score_port, rep_port = free_ports(2)
    apply_ca_env(loopback_ca_env(args.score_port, rep_port))  # before ophyd/epics are imported
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cands = load_candidates(args.candidates)
    results = []
    if args.part in ("feed", "both"):
        results.append(part_feed(args, cands))
        print(json.dumps(results[-1]), flush=True)
    if args.part in ("soak", "both"):
        with start_repeater(rep_port):  # the score IOC's beacons go to it
            results.append(part_soak(args, cands))
        print(json.dumps(results[-1]), flush=True)
    ok = all(r["lost"] == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
