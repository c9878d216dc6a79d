"""Open-world benchmark: functional groups from the spectrum, and ``in_library``.

For every held-out sample (``xas_bluesky.resources.heldout_samples``: FEFF10 spectra of molecules
never trained on), measured as in ``benchmarks/identification.py`` (its :class:`Measurement`:
Poisson TEY/I0 counts, a mono offset within +-1 eV; its :func:`run_scan`: the 491-point grid, or
the adaptive scan driven by a 200-candidate comparator), this prints per edge:

- functional groups (:mod:`xas_bluesky.science.groups`): top-1 (the most probable group is one
  the molecule has), the ECE of its probability, and the confusion of the top group with the true
  groups, for the methods

  ``model library``  the comparator's posterior over the shipped model library (10,000 QM9
                     training-split molecules predicted by the GNN), summed by group;
  ``FEFF library``   the same over FEFF's own spectra of the data set's training molecules;
  ``both``           the mean of the two, recalibrated (one logistic map fitted on validation
                     molecules): the method of the live analysis;

- ``in_library`` (:func:`xas_bluesky.science.compare.novelty.assess`): the sample among 200
  candidates that contain it (fraction with in_library >= 0.5, top-1 of the comparator with and
  without the test) and among 200 that do not (fraction with in_library < 0.5).

Scans: ``grid`` (491 points) and ``adaptive`` (the decision rule of ``adaptive_xanes_scan``,
driven by the candidate comparator: by the set with the sample for ``in``, without it for
``out`` and for the groups).

``--calibrate`` does the same on the validation split (FEFF spectra of validation molecules,
decoy candidates from validation-split QM9 molecules), fits the temperatures and floors, the
combination and the in_library logistic (:func:`~xas_bluesky.science.compare.novelty.fit_groups`,
:func:`~xas_bluesky.science.compare.novelty.fit_combination`,
:func:`~xas_bluesky.science.compare.novelty.fit_in_library`) and stores them in
``xas_bluesky/resources/open_world.json``.  The held-out samples are never used to fit.

    python benchmarks/groups.py --calibrate          # validation split: fit and store
    python benchmarks/groups.py                      # held-out samples: the figures

The model library's predictions and the recorded trials (log-likelihood tables) are cached under
``--cache`` (about 0.5 GB per edge and split).
"""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # sim_iocs from a source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))  # identification.py

from identification import Measurement, run_scan  # noqa: E402

from xas_bluesky.contracts import GROUPS  # noqa: E402
from xas_bluesky.resources import candidates_file, heldout_samples  # noqa: E402
from xas_bluesky.science import dataset  # noqa: E402
from xas_bluesky.science.adaptive import AdaptivePolicy  # noqa: E402
from xas_bluesky.science.compare import (  # noqa: E402
    Comparator,
    calibration_for,
    novelty,  # noqa: E402
)
from xas_bluesky.science.groups import (  # noqa: E402
    GroupLibrary,
    group_matrix,
    groups_of,
    qm9_structures,
    shipped_feff_library,
    shipped_library,
)
from xas_bluesky.science.model.predictor import Predictor  # noqa: E402
from xas_bluesky.science.structures import read_structures, structure_from_xyz  # noqa: E402

CALIBRATION_FILE = Path(__file__).resolve().parents[1] / "xas_bluesky/resources/open_world.json"


class Recorder:
    """A measurement that remembers every point it returned."""

    def __init__(self, measure: Measurement):
        self.measure = measure
        self.e: list[np.ndarray] = []
        self.mu: list[np.ndarray] = []
        self.sigma: list[np.ndarray] = []

    def __call__(self, energies):
        e = np.atleast_1d(np.asarray(energies, dtype=float))
        mu, sig = self.measure(e)
        self.e.append(e)
        self.mu.append(np.asarray(mu))
        self.sigma.append(np.asarray(sig))
        return mu, sig

    def points(self):
        return np.concatenate(self.e), np.concatenate(self.mu), np.concatenate(self.sigma)


@dataclass
class Scan:
    """One measurement of one sample: the tables the open-world analysis reads."""

    mode: str  # grid | adaptive-in | adaptive-out
    n_points: int
    model_table: np.ndarray  # (K, L + 2 x n_candidates) float32: library, candidates in, out
    feff_table: np.ndarray  # (K, F) float32
    top1: bool | None = None  # the candidate comparator's best is the sample (in-set scans)


@dataclass
class SampleRecord:
    name: str
    truth_groups: np.ndarray
    cand_in: list[str]
    cand_out: list[str]
    scans: list[Scan] = field(default_factory=list)


def _from_dict(d: dict) -> SampleRecord:
    d = dict(d)
    d["scans"] = [Scan(**sc) for sc in d["scans"]]
    return SampleRecord(**d)


def library(edge: str, predictor: Predictor, cache: Path) -> GroupLibrary:
    """The shipped model library, predicted by ``predictor`` (cached per model version)."""
    path = cache / f"library_{edge}_{predictor.model_version[:8]}.npz"
    if path.exists():
        return GroupLibrary.load(path)
    lib = shipped_library(edge, predictor)
    lib.save(path)
    return lib


def samples_of(edge: str, split: str) -> list[dict]:
    """Measured samples: the shipped held-out ones (test) or the validation molecules."""
    if split == "test":
        return heldout_samples(edge)[1]
    mols = dataset.load_molecules(dataset.default_data_files(), edge)
    return [
        {
            "name": m.name,
            "qm9_index": m.qm9_index,
            "symbols": m.symbols,
            "xyz": m.xyz,
            "mu": m.spectrum(),
        }
        for m in mols
        if m.split == split and m.complete
    ]


def pool_of(edge: str, split: str, samples: list[dict]) -> list:
    """Candidate structures: the shipped library (test) or validation-split QM9 (val), with
    every sample's own structure."""
    if split == "test":
        pool = read_structures(candidates_file(edge), edge=edge, skip_invalid=True)
    else:
        exclude = [s["qm9_index"] for s in samples]
        pool = qm9_structures(edge, 600, seed=1, splits=("val",), exclude=exclude)
    names = {s.name for s in pool}
    for s in samples:
        if s["name"] not in names:
            pool.append(structure_from_xyz(s["name"], s["symbols"], np.asarray(s["xyz"]), edge))
    return pool


def record(edge: str, split: str, args) -> tuple[list[SampleRecord], dict]:
    """Measure every sample (grid, adaptive with and without it among the candidates)."""
    cache = Path(args.cache)
    key = f"trials_{edge}_{split}_{args.n_candidates}_{args.seed}_{args.n_samples or 'all'}"
    path = cache / f"{key}.pkl.gz"
    if path.exists() and not args.rerun:
        with gzip.open(path, "rb") as fh:
            raw, meta = pickle.load(fh)
        return [_from_dict(r) for r in raw], meta
    t0 = time.time()
    grid, _ = heldout_samples(edge)
    samples = samples_of(edge, split)[: args.n_samples or None]
    predictor = Predictor.load(edge)
    cal = calibration_for(predictor)
    lib = library(edge, predictor, cache)
    flib = shipped_feff_library(edge)
    pool = pool_of(edge, split, samples)
    by_name = {s.name: k for k, s in enumerate(pool)}
    pmean, pstd = predictor.predict(pool, return_std=True)
    pmean, pstd = np.asarray(pmean.values), np.asarray(pstd.values)
    pgroups = group_matrix([groups_of(s, edge) for s in pool], edge)
    n_lib = len(lib)
    union = Comparator(
        lib.energy,
        np.concatenate([lib.mean, pmean]),
        np.concatenate([lib.std, pstd]),
        lib.names + [s.name for s in pool],
        **cal,
    )
    fcomp = Comparator(flib.energy, flib.mean, None, flib.names, **cal)
    policy = AdaptivePolicy(edge)
    rng = random.Random(args.seed)
    out: list[SampleRecord] = []
    for i, s in enumerate(samples):
        st = structure_from_xyz(s["name"], s["symbols"], np.asarray(s["xyz"]), edge)
        truth = group_matrix([groups_of(st, edge)], edge)[0]
        others = [n for n in by_name if n != s["name"]]
        cand_in = [s["name"]] + rng.sample(others, args.n_candidates - 1)
        cand_out = rng.sample(others, args.n_candidates)
        rec = SampleRecord(s["name"], truth, cand_in, cand_out)
        cols = np.array([by_name[n] for n in cand_in + cand_out])
        keep = np.concatenate([np.arange(n_lib), n_lib + cols])

        def tables(e, mu, sig, keep=keep):
            union.reset()
            union.add_points(e, mu, sig)
            union.result()
            fcomp.reset()
            fcomp.add_points(e, mu, sig)
            fcomp.result()
            return (
                union.log_likelihood_table()[:, keep].astype(np.float32),
                fcomp.log_likelihood_table().astype(np.float32),
            )

        comps = {}
        for which, names in (("in", cand_in), ("out", cand_out)):
            idx = [by_name[n] for n in names]
            comps[which] = Comparator(grid, pmean[idx], pstd[idx], names, **cal)
        seed = args.seed * 100003 + i
        for mode in ("grid", "adaptive-in", "adaptive-out"):
            rs = np.random.default_rng(seed)
            offset = float(rs.uniform(-1.0, 1.0))
            meas = Recorder(Measurement(grid, s["mu"], offset, rs))
            which = "out" if mode == "adaptive-out" else "in"
            res, npts, _ = run_scan(mode.split("-")[0], comps[which], meas, policy)
            mt, ft = tables(*meas.points())
            top1 = res.best_name == s["name"] if which == "in" else None
            rec.scans.append(Scan(mode, npts, mt, ft, top1))
        out.append(rec)
        if (i + 1) % 10 == 0:
            print(
                f"# {edge} {split}: {i + 1}/{len(samples)} ({time.time() - t0:.0f} s)", flush=True
            )
    meta = {
        "n_lib": n_lib,
        "lib_groups": lib.groups,
        "feff_groups": flib.groups,
        "pool_groups": {n: pgroups[k] for n, k in by_name.items()},
        "log_prior": union.log_prior,
        "model_version": predictor.model_version,
        "library": f"model library {n_lib} molecules ({lib.source})",
        "n_feff": len(flib),
    }
    with gzip.open(path, "wb", compresslevel=1) as fh:
        pickle.dump(([asdict(r) for r in out], meta), fh, protocol=pickle.HIGHEST_PROTOCOL)
    return out, meta


def model_trials(
    records: list[SampleRecord], meta: dict, modes: tuple[str, ...], which: str | None
) -> list[novelty.NoveltyTrial]:
    """NoveltyTrials on the model library (+ candidates): ``which`` = "in", "out" or None
    (groups only: no candidates)."""
    n_lib, n_c = meta["n_lib"], len(records[0].cand_in)
    ref = np.arange(n_lib)
    trials = []
    for r in records:
        cand_groups = np.array([meta["pool_groups"][n] for n in r.cand_in + r.cand_out])
        groups = np.concatenate([meta["lib_groups"], cand_groups])
        for sc in r.scans:
            if sc.mode not in modes:
                continue
            kinds = ["in", "out"] if sc.mode == "grid" else [sc.mode.split("-")[1]]
            for k in kinds:
                if which is not None and k != which and which != "both":
                    continue
                cand = n_lib + (np.arange(n_c) if k == "in" else n_c + np.arange(n_c))
                trials.append(
                    novelty.NoveltyTrial(
                        sc.model_table,
                        sc.n_points,
                        r.truth_groups,
                        groups,
                        ref,
                        cand if which is not None else np.empty(0, np.int64),
                        (k == "in") if which is not None else None,
                        int(n_lib) if k == "in" else None,
                    )
                )
                if which is None:
                    break  # one groups trial per scan
    return trials


def feff_trials(records, meta, modes) -> list[novelty.NoveltyTrial]:
    ref = np.arange(meta["n_feff"])
    return [
        novelty.NoveltyTrial(sc.feff_table, sc.n_points, r.truth_groups, meta["feff_groups"], ref)
        for r in records
        for sc in r.scans
        if sc.mode in modes
    ]


def group_probs(trials, log_prior, t0, gamma, eps):
    return [
        novelty.group_probabilities(
            novelty.column_evidence(tr.table, log_prior, tr.n_points, t0, gamma),
            tr.groups,
            tr.reference,
            eps,
        )
        for tr in trials
    ]


GROUP_MODES = {"grid": ("grid",), "adaptive": ("adaptive-out",)}


def group_probs_all(records, meta, modes, cal: novelty.NoveltyCalibration):
    """Per trial (one per scan of ``modes``): the model library's, the FEFF library's and the
    combined group probabilities, and the truth."""
    lp = meta["log_prior"]
    mt = model_trials(records, meta, modes, None)
    ft = feff_trials(records, meta, modes)
    pm = group_probs(mt, lp, cal.temperature, cal.exponent, cal.floor)
    pf = group_probs(ft, lp, cal.feff_temperature, cal.feff_exponent, cal.feff_floor)
    pb = [
        novelty.combine_group_probabilities(a, b, cal.combine) for a, b in zip(pm, pf, strict=True)
    ]
    shares = np.asarray(meta["lib_groups"], dtype=float).mean(axis=0)
    return {
        "prior": [shares] * len(mt),  # the library's group shares, whatever the spectrum
        "model library": pm,
        "FEFF library": pf,
        "both": pb,
    }, [t.truth_groups for t in mt]


ALL_MODES = ("grid", "adaptive-out", "adaptive-in")


def calibrate(edge: str, args) -> dict:
    records, meta = record(edge, "val", args)
    lp = meta["log_prior"]
    cal = novelty.NoveltyCalibration(edge)
    metrics = {}
    for method, trials in (
        ("model", model_trials(records, meta, ALL_MODES, None)),
        ("feff", feff_trials(records, meta, ALL_MODES)),
    ):
        t0, gamma, eps, rep = novelty.fit_groups(trials, lp, exponents=(0.5, 0.75, 1.0))
        if method == "model":
            cal.temperature, cal.exponent, cal.floor = t0, gamma, eps
        else:
            cal.feff_temperature, cal.feff_exponent, cal.feff_floor = t0, gamma, eps
        metrics[f"val_{method}"] = {k: rep[k] for k in ("top1", "ece", "nll")}
        print(
            f"{edge} val {method:5}: T0 {t0:.3g} gamma {gamma} eps {eps}  top-1 "
            f"{rep['top1']:.1%} ECE {rep['ece']:.3f} NLL {rep['nll']:.4f} ({len(trials)} trials)"
        )
    probs, truths = group_probs_all(records, meta, ALL_MODES, cal)
    cal.combine = novelty.fit_combination(probs["model library"], probs["FEFF library"], truths)
    probs, truths = group_probs_all(records, meta, ALL_MODES, cal)
    rep = novelty.top_group_reliability(probs["both"], truths)
    metrics["val_both"] = {k: rep[k] for k in ("top1", "ece", "nll")}
    print(
        f"{edge} val both : combine {np.round(cal.combine, 3).tolist()}  top-1 {rep['top1']:.1%} "
        f"ECE {rep['ece']:.3f} NLL {rep['nll']:.4f}"
    )
    in_trials = model_trials(records, meta, ALL_MODES, "both")
    cal.in_temperature, cal.in_coef, rep = novelty.fit_in_library(in_trials, lp, cal.exponent)
    metrics["val_in_library"] = rep
    print(
        f"{edge} val in_library: T0 {cal.in_temperature:.3g} coef "
        f"{np.round(cal.in_coef, 3).tolist()}  in accepted {rep['in_accepted']:.1%} out rejected "
        f"{rep['out_rejected']:.1%} NLL {rep['nll']:.3f}"
    )
    cal.metrics = metrics
    cal.source = (
        f"benchmarks/groups.py --calibrate: {len(records)} validation molecules x 3 scans; "
        f"{meta['library']}; FEFF library {meta['n_feff']} molecules; "
        f"model {meta['model_version']}"
    )
    return cal.to_dict()


def confusion(probs, truths, edge: str) -> list[str]:
    """Rows: the predicted top group; columns: how many of those samples have each group."""
    names = GROUPS[edge]
    head = f"    {'top group':<11}{'n':>4}{'right':>6}  "
    lines = [head + " ".join(f"{n[:10]:>10}" for n in names)]
    top = [int(np.argmax(p)) for p in probs]
    for g, name in enumerate(names):
        rows = [k for k, t in enumerate(top) if t == g]
        if not rows:
            continue
        t = np.array([truths[k] for k in rows])
        lines.append(
            f"    {name:<11}{len(rows):4d}{int(t[:, g].sum()):6d}  "
            + " ".join(f"{int(c):10d}" for c in t.sum(0))
        )
    t = np.array(truths)
    lines.append(
        f"    {'(have)':<11}{len(t):4d}{'':6}  " + " ".join(f"{int(c):10d}" for c in t.sum(0))
    )
    return lines


def bootstrap_ece(probs, truths, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """5th and 95th percentiles of the ECE over bootstrap resamples of the samples."""
    rng = np.random.default_rng(seed)
    p, t = np.asarray(probs), np.asarray(truths)
    eces = []
    for _ in range(n):
        k = rng.integers(0, len(p), len(p))
        eces.append(novelty.top_group_reliability(list(p[k]), list(t[k]))["ece"])
    lo, hi = np.percentile(eces, [5, 95])
    return float(lo), float(hi)


def evaluate(edge: str, args, cal: novelty.NoveltyCalibration) -> None:
    records, meta = record(edge, "test", args)
    lp = meta["log_prior"]
    print(
        f"{edge} K edge: {len(records)} held-out samples; {meta['library']}; "
        f"FEFF library {meta['n_feff']} training molecules"
    )
    print("  functional groups (top-1: the top group is one the molecule has; goals 90%, 0.05)")
    print(
        f"    {'scan':<9}{'method':<15}{'top-1':>7}{'ECE':>7}{'(90% CI)':>14}{'conf':>7}"
        f"{'Brier':>7}"
    )
    conf_lines = []
    for scan, modes in GROUP_MODES.items():
        probs, truths = group_probs_all(records, meta, modes, cal)
        for method, pr in probs.items():
            rep = novelty.top_group_reliability(pr, truths)
            lo, hi = bootstrap_ece(pr, truths)
            print(
                f"    {scan:<9}{method:<15}{rep['top1']:7.1%}{rep['ece']:7.3f}"
                f"{f'({lo:.3f}-{hi:.3f})':>14}{rep['mean_confidence']:7.3f}{rep['brier']:7.3f}"
            )
            if method == args.confusion_method:
                conf_lines += [f"  confusion, {scan}, {method}:"] + confusion(pr, truths, edge)
    for line in conf_lines:
        print(line)
    print("  in_library (goals: in >= 95% accepted, out >= 80% rejected, top-1 within 2 points)")
    print(
        f"    {'scan':<9}{'in: P>=0.5':>11}{'out: P<0.5':>11}{'top-1':>8}{'with test':>10}{'n':>5}"
    )
    for scan, in_mode, out_mode in (
        ("grid", "grid", "grid"),
        ("adaptive", "adaptive-in", "adaptive-out"),
    ):
        p_in, p_out = [], []
        for which, mode, store in (("in", in_mode, p_in), ("out", out_mode, p_out)):
            for tr in model_trials(records, meta, (mode,), which):
                ev = novelty.column_evidence(
                    tr.table, lp, tr.n_points, cal.in_temperature, cal.exponent
                )
                feats = novelty.in_library_features(ev, tr.candidates, tr.reference)
                store.append(novelty.in_library_probability(feats, cal.in_coef))
        hits = [sc.top1 for r in records for sc in r.scans if sc.mode == in_mode]
        pi, po, h = np.array(p_in), np.array(p_out), np.array(hits, dtype=bool)
        print(
            f"    {scan:<9}{np.mean(pi >= 0.5):11.1%}{np.mean(po < 0.5):11.1%}{h.mean():8.1%}"
            f"{np.mean(h & (pi >= 0.5)):10.1%}{len(h):5d}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--edges", nargs="+", default=["O", "N"])
    ap.add_argument("--n-samples", type=int, default=0, help="per edge; 0: all")
    ap.add_argument("--n-candidates", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="/tmp/xas_groups_cache")
    ap.add_argument("--rerun", action="store_true", help="measure again, ignoring cached trials")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--confusion-method", default="both")
    args = ap.parse_args()
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    if args.calibrate:
        stored = json.loads(CALIBRATION_FILE.read_text()) if CALIBRATION_FILE.exists() else {}
        for edge in args.edges:
            stored[edge] = calibrate(edge, args)
        CALIBRATION_FILE.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
        print(f"# stored in {CALIBRATION_FILE}")
        return
    stored = json.loads(CALIBRATION_FILE.read_text())
    for edge in args.edges:
        evaluate(edge, args, novelty.NoveltyCalibration.from_dict(stored[edge]))


if __name__ == "__main__":
    main()
