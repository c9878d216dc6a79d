"""Both K edges of one molecule: top-1 with O alone, N alone and both (the joint posterior).

Held-out molecules with both O and N (FEFF10 spectra at both edges, never trained on), each
measured at both edges with the simulated beamline's detector model and its own random mono
offset per edge (within +-1 eV), scored by one comparator per edge against the shipped GNN's
predictions of every candidate with both elements in the shipped candidate libraries (the
intersection of the O and N libraries: ~113 molecules, so fewer than the 200 of
``identification.py``), with each model's own calibration; the joint ranking is
:func:`~xas_bluesky.science.compare.joint.joint_result`.  ``grid``: 491 points per edge;
``adaptive``: each edge's own adaptive rule (coarse pass, next energy, stop at p >= 0.99 or 49
points), run independently -- the joint does not steer the scan here.  ``steered-N``: the rule of
``two_edge_xanes_scan`` (:class:`~xas_bluesky.science.adaptive.TwoEdgePolicy`): both coarse
passes, then each point at the edge whose next reading promises the most information per second
(1 s dwell, mono at 20 eV/s), stopping on the joint posterior (p >= 0.99) or after N points of
both edges together; it also prints the edge switches and the time the points and moves took.

    python benchmarks/two_edges.py [--n-samples 91] [--seed 0] [--budgets 98 49]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from identification import Measurement, PredictionCache, run_scan  # noqa: E402

from xas_bluesky.resources import candidates_file, heldout_samples  # noqa: E402
from xas_bluesky.science.adaptive import AdaptivePolicy, TwoEdgePolicy  # noqa: E402
from xas_bluesky.science.compare import Comparator, calibration_for, reliability  # noqa: E402
from xas_bluesky.science.compare.joint import joint_result  # noqa: E402
from xas_bluesky.science.model.predictor import Predictor  # noqa: E402
from xas_bluesky.science.structures import read_structures  # noqa: E402

EDGES = ("O", "N")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", type=int, nargs="*", default=[98, 49])
    ap.add_argument(
        "--threshold",
        type=float,
        default=TwoEdgePolicy.threshold,
        help="steered scans stop when the joint's best probability reaches it (default: the "
        "plan's)",
    )
    args = ap.parse_args(argv)

    grids, samples, libs, comps = {}, {}, {}, {}
    for e in EDGES:
        grids[e], s = heldout_samples(e)
        samples[e] = {x["name"]: x for x in s}
        libs[e] = {
            x.name: x for x in read_structures(candidates_file(e), edge=e, skip_invalid=True)
        }
    names = [n for n in libs["O"] if n in libs["N"]]
    both = [n for n in samples["O"] if n in samples["N"] and n in names][: args.n_samples]
    for e in EDGES:
        pred = Predictor.load(e)
        mean, std = PredictionCache(pred)([libs[e][n] for n in names])
        comps[e] = Comparator(grids[e], mean, std, names, **calibration_for(pred))
    print(f"{len(both)} held-out molecules with both edges, {len(names)} candidates with both")

    rows = {}
    for mode in ("grid", "adaptive"):
        right = {k: [] for k in (*EDGES, "joint")}
        probs = {k: [] for k in (*EDGES, "joint")}
        points = {e: [] for e in EDGES}
        for i, name in enumerate(both):
            results = {}
            for j, e in enumerate(EDGES):
                rs = np.random.default_rng(args.seed * 100003 + 2 * i + j)
                meas = Measurement(grids[e], samples[e][name]["mu"], float(rs.uniform(-1, 1)), rs)
                res, npts, _ = run_scan(mode, comps[e], meas, AdaptivePolicy(e))
                results[e] = res
                points[e].append(npts)
                right[e].append(res.best_name == name)
                probs[e].append((res.probabilities, names.index(name)))
            joint = joint_result(results)
            right["joint"].append(joint.best_name == name)
            probs["joint"].append((joint.probabilities, joint.names.index(name)))
        for k in right:
            rel = reliability(*zip(*probs[k], strict=True))
            sure = [float(np.max(p)) >= 0.99 for p, _ in probs[k]]
            wrong = sum(s and not r for s, r in zip(sure, right[k], strict=True))
            pts = sum(np.mean(points[e]) for e in EDGES) if k == "joint" else np.mean(points[k])
            rows[(mode, k)] = (
                np.mean(right[k]),
                rel["ece"],
                rel["ece_floor"],
                sum(sure),
                wrong,
                pts,
            )

    for budget in args.budgets:
        policy = TwoEdgePolicy(EDGES, max_points=budget, threshold=args.threshold)
        right, probs, npts, switches, seconds, stopped = [], [], [], [], [], []
        for i, name in enumerate(both):
            meas = {}
            for j, e in enumerate(EDGES):  # the same offsets and noise streams as above
                rs = np.random.default_rng(args.seed * 100003 + 2 * i + j)
                meas[e] = Measurement(
                    grids[e], samples[e][name]["mu"], float(rs.uniform(-1, 1)), rs
                )
            res, measured = {}, {}
            for e in EDGES:
                comps[e].reset()
                measured[e] = list(policy.first_pass(e))
                comps[e].add_points(np.array(measured[e]), *meas[e](measured[e]))
                res[e] = comps[e].result()
            mono, moves, n_switch, last = measured[EDGES[-1]][-1], 0.0, 0, EDGES[-1]
            while True:
                joint = joint_result(res)
                offers = {e: (res[e].next_energy, res[e].next_gain) for e in EDGES}
                edge, d = policy.decide(
                    {e: np.array(v) for e, v in measured.items()},
                    joint.best_probability, offers, mono,
                )  # fmt: skip
                if d.stop:
                    break
                moves += abs(d.energy - mono) / policy.mono_speed
                n_switch += edge != last
                mono, last = d.energy, edge
                comps[edge].add_points(np.array([d.energy]), *meas[edge]([d.energy]))
                measured[edge].append(d.energy)
                res[edge] = comps[edge].result()
            # the scan stopped on the live joint; its final word is the settled one (the engine's)
            stopped.append(sum(len(m) for m in measured.values()) < budget)
            joint = joint_result({e: comps[e].settled_result() for e in EDGES})
            right.append(joint.best_name == name)
            probs.append((joint.probabilities, joint.names.index(name)))
            npts.append([len(measured[e]) for e in EDGES])
            switches.append(n_switch)
            seconds.append(sum(npts[-1]) * policy.dwell + moves)
        rel = reliability(*zip(*probs, strict=True))
        sure = [float(np.max(p)) >= 0.99 for p, _ in probs]
        wrong = sum(s and not r for s, r in zip(sure, right, strict=True))
        mean_pts = np.mean(npts, axis=0)
        early_wrong = sum(s and not r for s, r in zip(stopped, right, strict=True))
        print(
            f"steered-{budget}: joint top-1 {np.mean(right):.1%}, ECE {rel['ece']:.3f}, "
            f"p>=.99 {sum(sure)} ({wrong} wrong), stopped on p>={args.threshold:g} "
            f"{sum(stopped)} ({early_wrong} wrong), points "
            + " + ".join(f"{e} {m:.1f}" for e, m in zip(EDGES, mean_pts, strict=True))
            + f", edge switches {np.mean(switches):.1f}, time {np.mean(seconds):.0f} s"
        )
        rows[(f"steered-{budget}", "joint")] = (
            np.mean(right),
            rel["ece"],
            rel["ece_floor"],
            sum(sure),
            wrong,
            float(mean_pts.sum()),
        )

    print(
        f"{'mode':11} {'edges':6} {'top1':>6} {'ECE':>6} {'floor':>6} {'p>=.99':>6} {'wrong':>5} {'points':>7}"
    )
    for (mode, k), (t1, ece, floor, sure, wrong, pts) in rows.items():
        print(f"{mode:11} {k:6} {t1:6.1%} {ece:6.3f} {floor:6.3f} {sure:6d} {wrong:5d} {pts:7.1f}")


if __name__ == "__main__":
    main()
