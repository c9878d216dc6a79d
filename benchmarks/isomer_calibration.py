"""Calibration on isomer sets: does the comparator's calibration hold when the candidates are alike?

Until 2026-12-06 the calibration (:func:`~xas_bluesky.science.compare.calibrate_shipped`) scanned
every calibration molecule against the predictions of all the calibration molecules: random
candidates, and on held-out isomer sets (``benchmarks/identification.py``) the top answer was
over-confident.  This records, on the calibration molecules, the scans ``calibrate_shipped``
records now -- among the calibration set's predictions (random) and among each molecule's QM9
isomers (:func:`~xas_bluesky.science.compare.calibration.isomer_predictions`, never a held-out
sample) -- at the model's stored T0, gamma and eps, and compares the finished-scan ECE (trials of
>= 49 points) per kind, cross-fitted over two halves of the molecules, of

- ``random map``  the top-label map fitted on the random sets' scans (the calibration before);
- ``both maps``   fitted on the scans of both kinds (``calibrate_shipped`` now);
- ``refit-all``   (``--refit-all``, slow) T0 and eps refitted on both kinds as well.

``--store`` writes the map fitted on both kinds (all molecules) into the model's metadata, as a
retrain would; T0, gamma and eps stay.  The molecules are those the stored calibration was
fitted on (``molecules``; FEFF data committed since adds calibration molecules, and with them
other random sets).  Needs the extra ``qm9``.

    python benchmarks/isomer_calibration.py --edge O [--store]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xas_bluesky.science.adaptive import grid_energies  # noqa: E402
from xas_bluesky.science.compare import Comparator, calibration_for  # noqa: E402
from xas_bluesky.science.compare.calibration import (  # noqa: E402
    OUTLIER_PROBABILITIES,
    TOP_MIN_POINTS,
    calibration_molecules,
    fit_temperature,
    fit_top_calibration,
    isomer_predictions,
    isomer_trials,
    reliability,
    simulate_trials,
    tempered_probabilities,
)
from xas_bluesky.science.compare.comparator import (  # noqa: E402
    effective_temperature,
    recalibrate_top,
)
from xas_bluesky.science.grids import energy_grid  # noqa: E402
from xas_bluesky.science.model.predictor import Predictor  # noqa: E402
from xas_bluesky.science.structures import structure_from_xyz  # noqa: E402


def at(trials, log_prior, t0, g, eps, top=None):
    out = []
    for tr in trials:
        p = tempered_probabilities(tr, log_prior, effective_temperature(t0, g, tr.n_points), eps)
        out.append(p if top is None else recalibrate_top(p, top, tr.n_points))
    return out


def fit_all(trials, log_prior, eps_floor, gamma):
    # gamma stays the shipped one: the full search (5 exponents x 7 eps x 81 T0) takes an hour
    temps = np.geomspace(0.25, 8.0, 31)
    fits = [
        (
            *fit_temperature(trials, log_prior, temps, exponent=gamma, outlier_probability=o),
            gamma,
            o,
        )
        for o in sorted({max(o, eps_floor) for o in OUTLIER_PROBABILITIES})
    ]
    t, _, nll, g, eps = min(fits, key=lambda f: f[2].min())
    return t, g, eps


def fit_map(trials, log_prior, t, g, eps):
    late = [tr for tr in trials if tr.n_points >= TOP_MIN_POINTS]
    probs = at(late, log_prior, t, g, eps)
    return fit_top_calibration(probs, [tr.true_index for tr in late])


def late_ece(trials, log_prior, t, g, eps, top):
    late = [tr for tr in trials if tr.n_points >= TOP_MIN_POINTS]
    probs = at(late, log_prior, t, g, eps, top)
    return reliability(probs, [tr.true_index for tr in late])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edge", default="O")
    ap.add_argument("--n-candidates", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", action="store_true", help="store the map fitted on both kinds")
    ap.add_argument("--refit-all", action="store_true", help="also refit T0 and eps (slow)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/xas_isomer_cal"))
    args = ap.parse_args()
    edge = args.edge
    t_start = time.time()
    predictor = Predictor.load(edge, device="cpu")
    cal = calibration_for(predictor)
    stored = predictor.metadata["calibration"]
    # the molecules T0 and eps were fitted on (data committed since adds calibration molecules,
    # and with them other random sets: the map moves with them, so it is fitted on these)
    fitted = set(stored.get("molecules") or ())
    mols = [m for m in calibration_molecules(edge) if not fitted or m.qm9_index in fitted]
    energy = energy_grid(edge)
    truth = np.array([m.spectrum() for m in mols])
    structs = [structure_from_xyz(m.name, m.symbols, m.xyz, edge) for m in mols]
    own = np.asarray(predictor.predict(structs))
    iso = isomer_predictions(edge, mols, predictor, args.n_candidates, args.seed)
    if iso is None:
        raise SystemExit("QM9 is not installed (pip install 'xas-bluesky[qm9]')")
    sizes = [len(x) + 1 for x in iso]
    print(
        f"# {edge}: {len(mols)} calibration molecules, isomer sets of {min(sizes)}-{max(sizes)}"
        f" ({time.time() - t_start:.0f} s)",
        flush=True,
    )
    kw = {k: v for k, v in cal.items() if k not in ("top_calibration", "temperature")}
    t0, g = cal["temperature"], cal["temperature_exponent"]
    grid = grid_energies(edge)
    # seeds as calibrate_shipped's: seed + 1 the random sets, seed + 2 the isomers; both
    # scanned at the stored T0 (calibrate's last round scans its random sets at the T0 of the
    # round before, so those scans differ a little; the isomer scans are the same)
    random_trials = simulate_trials(
        energy, truth, own, None, np.random.default_rng(args.seed + 1),
        temperature=t0, grid=grid, **kw,
    )  # fmt: skip
    iso_trials = isomer_trials(
        energy, truth, own, iso, np.random.default_rng(args.seed + 2),
        temperature=t0, grid=grid, **kw,
    )  # fmt: skip
    print(
        f"# trials: {len(random_trials)} random, {len(iso_trials)} isomer"
        f" ({time.time() - t_start:.0f} s)",
        flush=True,
    )
    log_prior = Comparator(energy, own[:1], None, ["x"]).log_prior
    eps = cal.get("outlier_probability", 0.0)
    rows = {}

    def report(label, params_of_half):
        """ECE per kind, each half of the molecules scored with the other half's fit."""
        out = {}
        for kind, trials in (("random", random_trials), ("isomer", iso_trials)):
            probs, idx = [], []
            for h in (0, 1):
                t, gg, e, top = params_of_half(h)
                part = [
                    tr for tr in trials if tr.molecule % 2 == h and tr.n_points >= TOP_MIN_POINTS
                ]
                probs += at(part, log_prior, t, gg, e, top)
                idx += [tr.true_index for tr in part]
            out[kind] = reliability(probs, idx)
        rows[label] = out
        print(
            f"{label:<12}"
            + "".join(
                f"   {k}: top-1 {r['top1']:.3f} ECE {r['ece']:.3f} (floor {r['ece_floor']:.3f},"
                f" conf {r['mean_confidence']:.3f})"
                for k, r in out.items()
            ),
            flush=True,
        )

    def halves(trials):
        return {h: [tr for tr in trials if tr.molecule % 2 != h] for h in (0, 1)}

    rand, both = halves(random_trials), halves(random_trials + iso_trials)
    report("random map", lambda h: (t0, g, eps, fit_map(rand[h], log_prior, t0, g, eps)))
    report("both maps", lambda h: (t0, g, eps, fit_map(both[h], log_prior, t0, g, eps)))
    if args.refit_all:
        fitted = {}
        for h in (0, 1):
            t, gg, e = fit_all(both[h], log_prior, 3.0 / len(mols), g)
            fitted[h] = (t, gg, e, fit_map(both[h], log_prior, t, gg, e))
            print(f"#   half {h}: T0 {t:.3f} gamma {gg} eps {e:.3f} map {fitted[h][3]}")
        report("refit-all", fitted.__getitem__)
    top = fit_map(random_trials + iso_trials, log_prior, t0, g, eps)
    print(
        f"# the map on every molecule's scans of both kinds: {top} (was {stored.get('top_calibration')})"
    )
    if args.store:
        from xas_bluesky.science.compare.calibration import store_calibration
        from xas_bluesky.science.model.checkpoint import model_dir

        new = dict(stored)
        split = stored.get("split", "cal")
        new.update(
            {
                "top_calibration": list(top),
                "isomer_set_size": args.n_candidates,
                "n_isomer_trials": len(iso_trials),
                f"{split}_crossfit_ece": rows["both maps"]["random"]["ece"],
                f"{split}_crossfit_ece_isomer": rows["both maps"]["isomer"]["ece"],
                f"{split}_ece_top": late_ece(random_trials, log_prior, t0, g, eps, top)["ece"],
                f"{split}_ece_top_isomer": late_ece(iso_trials, log_prior, t0, g, eps, top)["ece"],
                f"{split}_ece_late_isomer": late_ece(iso_trials, log_prior, t0, g, eps, None)[
                    "ece"
                ],
                "n_isomer_molecules": len(mols),
            }
        )
        store_calibration(model_dir(edge), new)
        print("# stored in", model_dir(edge))
    args.cache.mkdir(parents=True, exist_ok=True)
    (args.cache / f"{edge}.json").write_text(json.dumps(rows, default=float))
    print(f"# {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
