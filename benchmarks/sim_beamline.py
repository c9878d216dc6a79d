"""RunEngine events/s over the simulated beamline, tuned vs untuned caproto, side by side.

Starts two sim beamline IOCs in this process's session -- one through the project's TCP_NODELAY
tuning, one with caproto as shipped -- and runs the same plans over each with a real RunEngine:

- ``count``: ``bp.count([det], N)`` at a count time of 1 ms (the Channel Access path alone);
- ``grid``: ``grid_xanes_scan`` over the O edge (mono move + count + fresh reads per point) at
  the default counts on the accelerated clock (x20), the demo's grid mode.

With ``--chain`` it also measures the quality figures of the measurement chain on the tuned IOC:
the noise per point (% of the edge step) at default counts, Pearson r of the normalised 0.1 eV
grid scan against the supplied spectrum (both edges) and the calibration error of
``calibrate_energy``.

    .venv/bin/python benchmarks/sim_beamline.py [--points 300] [--grid-step 0.1] [--chain]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from sim_iocs.launcher import SimBeamline
from xas_bluesky.resources import heldout_samples
from xas_bluesky.science.spectra import best_shift_pearson, mu_from_channels, normalize
from xas_bluesky.services import apply_ca_env, free_ports, loopback_ca_env, start_repeater


def _events_per_s(RE, plan) -> tuple[float, int, float]:
    n = [0]

    def count(name, doc):
        if name == "event":
            n[0] += 1

    token = RE.subscribe(count)
    t0 = time.perf_counter()
    RE(plan)
    dt = time.perf_counter() - t0
    RE.unsubscribe(token)
    return n[0] / dt, n[0], dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=300, help="events of the count benchmark")
    ap.add_argument("--grid-step", type=float, default=0.1, help="eV step of the grid scan")
    ap.add_argument("--clock", type=float, default=20.0, help="sim clock of the grid scan")
    ap.add_argument("--chain", action="store_true", help="also noise, r and calibration")
    args = ap.parse_args(argv)

    ports = free_ports(3)
    tuned_port, plain_port, rep = ports
    # one client reaches both IOCs: libca reads the address list once
    apply_ca_env(loopback_ca_env(tuned_port, rep, search_ports=[plain_port]))

    import bluesky.plans as bp
    from bluesky import RunEngine

    from xas_bluesky.beamline.plans import grid_xanes_scan

    repeater = start_repeater(rep)
    sims = {
        "tuned": SimBeamline(port=tuned_port, repeater_port=rep, clock=args.clock, offset=0.42),
        "untuned": SimBeamline(
            port=plain_port, repeater_port=rep, clock=args.clock, offset=0.42, tuned=False
        ),
    }
    try:
        for sim in sims.values():
            sim.start()
        RE = RunEngine({})
        devs = {label: sim.devices() for label, sim in sims.items()}
        print(f"# sim beamline benchmark, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        print("# count: median of 3 interleaved rounds after a warm-up; grid: one run each")
        print(f"{'caproto':8s} {'plan':26s} {'events':>6s} {'seconds':>8s} {'events/s':>9s}")
        rates: dict[str, list] = {label: [] for label in sims}
        for d in devs.values():
            d.det.count_time.put(0.001)
            RE(bp.count([d.det], num=20))  # warm-up: connections, descriptors
        for _ in range(3):  # interleaved: the machine's load drifts
            for label, d in devs.items():
                rates[label].append(_events_per_s(RE, bp.count([d.det], num=args.points)))
        for label, runs in rates.items():
            rate, n, dt = sorted(runs)[1]
            print(f"{label:8s} {'count, 1 ms':26s} {n:6d} {dt:8.2f} {rate:9.1f}")
        for label, d in devs.items():
            d.det.count_time.put(1.0)
            rate, n, dt = _events_per_s(
                RE, grid_xanes_scan(d.mono, d.det, edge="O", step=args.grid_step)
            )
            what = f"grid O {args.grid_step} eV, 1 s x{args.clock:g}"
            print(f"{label:8s} {what:26s} {n:6d} {dt:8.2f} {rate:9.1f}", flush=True)
        if args.chain:
            _chain(RE, sims["tuned"])
    finally:
        for sim in sims.values():
            sim.stop()
        repeater.stop()
    return 0


def _chain(RE, sim) -> None:
    from xas_bluesky.beamline.plans import calibrate_energy, grid_xanes_scan

    devs = sim.devices()
    m, d, sc = devs.mono, devs.det, devs.sample_changer
    # noise: repeated counts at a pre-edge and a post-edge energy of the O reference
    sc.set("ref_O").wait(30)
    d.count_time.put(1.0)
    mus = {}
    for e in (527.0, 570.0):
        m.set(e).wait(30)
        vals = []
        for _ in range(60):
            d.trigger().wait(30)
            r = d.read()
            vals.append(r["det_tey"]["value"] / r["det_i0"]["value"])
        mus[e] = np.asarray(vals)
    noise = mus[570.0].std(ddof=1) / (mus[570.0].mean() - mus[527.0].mean())
    print(f"noise per point at default counts (TEY): {100 * noise:.2f} % of the edge step")

    errs = []
    for _ in range(3):
        RE(calibrate_energy(m, d, sc, edge="O"))  # writes the offset PV
        off = m.calib_offset.get()
        errs.append(off - sim.true_offset())
    print(
        "calibrate_energy (O, 151 points): error "
        + ", ".join(f"{1000 * e:+.1f}" for e in errs)
        + f" meV (true offset {sim.true_offset():+.3f} eV)"
    )
    for edge, name in (("O", "qm9_011315"), ("N", "qm9_011512")):
        docs = []
        token = RE.subscribe(lambda n, doc, docs=docs: docs.append((n, doc)))
        RE(grid_xanes_scan(m, d, edge=edge, step=0.1, sample=name, sample_changer=sc))
        RE.unsubscribe(token)
        (start,) = [doc for n, doc in docs if n == "start"]
        ev = [doc["data"] for n, doc in docs if n == "event"]
        f = start["xas_fields"]
        energy = np.array([x[f["energy"]] for x in ev]) + start["energy_offset"]
        mu = mu_from_channels(
            "TEY", [x[f["i0"]] for x in ev], [x[f["signal"]] for x in ev], strict=False
        ).mu
        n = normalize(energy, mu, edge)
        ref_e, samples = heldout_samples(edge)
        (ref,) = [s["mu"] for s in samples if s["name"] == name]
        r, shift = best_shift_pearson(n.energy, n.norm, ref_e, np.asarray(ref))
        print(
            f"chain {edge} ({name}, 0.1 eV grid, {len(ev)} points): r = {r:.4f}, shift {shift:+.2f} eV"
        )


if __name__ == "__main__":
    sys.exit(main())
