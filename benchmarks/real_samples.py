"""Measured-like spectra: identification with broadened, shifted samples vs clean ones.

The held-out samples of ``benchmarks/identification.py`` (FEFF10 spectra of molecules never
trained on; 200 random candidates that contain the sample; the simulated beamline's detector
model, a random mono offset within +-1 eV) are measured

- ``clean``: as FEFF computed them, the analysis on FEFF's axis (the live analysis' default:
  :class:`Comparator`, the mono's offset prior);
- ``real``: broadened by a Gaussian of ``--broadening`` eV FWHM and shifted by
  ``--axis-offset`` eV (:func:`sim_iocs.physics.measured_like`, what ``sim-beamline
  --broadening --axis-offset`` serves), i.e. a spectrum on the experiment axis converted with a
  convention that is off by that much.

Each is scored by two analyses:

- ``plain``: :class:`Comparator` with the mono's offset prior (sigma 1 eV, +-3 eV);
- ``wide`` (``--analyses``): :class:`Comparator` with the experiment axis' wider offset prior
  alone (what the wider prior costs isomers);
- ``robust``: :class:`~xas_bluesky.science.compare.broadening.BroadenedComparator` over
  ``--widths`` with the experiment axis' offset prior
  (:func:`~xas_bluesky.science.compare.axis.offset_prior`): what ``xas-bluesky match --axis
  experiment`` runs.

Goal (issue 17): ``real``/``robust`` loses no more than 10 points of top-1 against
``clean``/``plain``.

    python benchmarks/real_samples.py --edges O N --n-samples 40
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # sim_iocs from a source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))  # identification.py

from identification import Measurement, PredictionCache, isomer_sets, run_scan  # noqa: E402

from sim_iocs.physics import Spectrum, measured_like  # noqa: E402
from xas_bluesky.resources import candidates_file, heldout_samples  # noqa: E402
from xas_bluesky.science.adaptive import AdaptivePolicy  # noqa: E402
from xas_bluesky.science.compare import Comparator, calibration_for  # noqa: E402
from xas_bluesky.science.compare.axis import offset_prior  # noqa: E402
from xas_bluesky.science.compare.broadening import (  # noqa: E402
    DEFAULT_WIDTHS_EV,
    BroadenedComparator,
)
from xas_bluesky.science.model.predictor import Predictor  # noqa: E402
from xas_bluesky.science.structures import read_structures  # noqa: E402


def _mean_or_nan(x: np.ndarray) -> float:
    return float(np.mean(x)) if np.isfinite(x).all() else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--edges", nargs="+", default=["O", "N"])
    ap.add_argument("--n-samples", type=int, default=40, help="per edge")
    ap.add_argument("--n-candidates", type=int, default=200)
    ap.add_argument("--sets", nargs="+", default=["random"], help="random and/or isomer")
    ap.add_argument("--modes", nargs="+", default=["grid", "adaptive"])
    ap.add_argument("--broadening", type=float, default=0.5, help="FWHM, eV")
    ap.add_argument("--axis-offset", type=float, default=2.0, help="eV")
    ap.add_argument("--widths", type=float, nargs="+", default=list(DEFAULT_WIDTHS_EV))
    ap.add_argument("--analyses", nargs="+", default=["plain", "robust"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    stats: dict[tuple, list] = defaultdict(list)
    for edge in args.edges:
        grid, samples = heldout_samples(edge)
        samples = samples[: args.n_samples]
        predictor = Predictor.load(edge)
        cal = calibration_for(predictor)
        library = read_structures(candidates_file(edge), edge=edge, skip_invalid=True)
        by_name = {s.name: s for s in library}
        predict = PredictionCache(predictor)
        rng = random.Random(args.seed)
        sets = {}
        if "random" in args.sets:
            sets["random"] = {}
            for s in samples:
                others = [n for n in by_name if n != s["name"]]
                pick = rng.sample(others, args.n_candidates - 1)
                sets["random"][s["name"]] = [by_name[s["name"]]] + [by_name[n] for n in pick]
        if "isomer" in args.sets:
            sets["isomer"] = isomer_sets(samples, edge, args.n_candidates, args.seed)
        policy = AdaptivePolicy(edge)
        for set_name, per_sample in sets.items():
            for i, s in enumerate(samples):
                structs = per_sample[s["name"]]
                mean, std = predict(structs)
                names = [x.name for x in structs]
                comps = {}
                if "plain" in args.analyses:
                    comps["plain"] = Comparator(
                        grid, mean, std, names, **cal, **offset_prior(edge, "feff")
                    )
                if "wide" in args.analyses:  # the experiment axis' prior alone
                    comps["wide"] = Comparator(
                        grid, mean, std, names, **cal, **offset_prior(edge, "experiment")
                    )
                if "robust" in args.analyses:
                    comps["robust"] = BroadenedComparator(
                        grid, mean, std, names, widths_ev=args.widths,
                        **cal, **offset_prior(edge, "experiment"),
                    )  # fmt: skip
                clean = Spectrum(np.asarray(grid), np.asarray(s["mu"]))
                spectra = {
                    "clean": clean,
                    "real": measured_like(clean, args.broadening, args.axis_offset),
                }
                for cond, spec in spectra.items():
                    for an, comp in comps.items():
                        for mode in args.modes:
                            seed = args.seed * 100003 + i
                            rs = np.random.default_rng(seed)
                            offset = float(rs.uniform(-1.0, 1.0))
                            meas = Measurement(spec.energy, spec.mu, offset, rs)
                            t0 = time.perf_counter()
                            res, npts, _ = run_scan(mode, comp, meas, policy)
                            secs = time.perf_counter() - t0
                            true_off = offset - (args.axis_offset if cond == "real" else 0.0)
                            stats[(edge, set_name, cond, an, mode)].append(
                                (
                                    res.best_name == s["name"],
                                    s["name"] in [n for n, _ in res.top(5)],
                                    npts,
                                    secs,
                                    abs(res.offset_ev - true_off),
                                    float(res.probabilities[names.index(s["name"])]),
                                    getattr(comp, "best_width_ev", float("nan")),
                                )
                            )
            print(f"# {edge} {set_name}: {len(samples)} samples done", file=sys.stderr)

    print(
        f"{'edge':4} {'set':7} {'spectra':7} {'analysis':8} {'mode':8} {'n':>3} {'top1':>6} "
        f"{'top5':>6} {'points':>6} {'s/scan':>6} {'|doff|':>6} {'p_true':>6} {'width':>5}"
    )
    for key, vals in stats.items():
        a = np.array(vals, dtype=float)
        print(
            f"{key[0]:4} {key[1]:7} {key[2]:7} {key[3]:8} {key[4]:8} {len(a):3d} "
            f"{a[:, 0].mean():6.1%} {a[:, 1].mean():6.1%} {a[:, 2].mean():6.1f} "
            f"{a[:, 3].mean():6.2f} {np.median(a[:, 4]):6.2f} {np.median(a[:, 5]):6.3f} "
            f"{_mean_or_nan(a[:, 6]):5.2f}"
        )


if __name__ == "__main__":
    main()
