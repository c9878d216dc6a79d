"""Model variants compared on the same split: same seeds, same data.

The issue asks to measure a site-spectrum readout (one spectrum per absorbing atom, the molecular
spectrum their mean) against a molecular readout on the same split and keep the better; this
script does that and tries a few other choices (width, derivative loss, bond-length jitter,
epochs, the absorber's 3D surroundings, one network trained on both edges, a 3D architecture:
SchNet with the same site readout).  Each variant trains one member per ``--seeds`` seed on
``train``, picks its epoch on ``val``, and is scored on ``val`` and ``test`` with the paper's peak
criterion (``xas_bluesky.science.model.metrics``); with several seeds the mean of the members (the
ensemble) is scored too.  ``--train-fractions`` trains on seeded subsets of ``train`` (a learning
curve).

Graphs and spectra can be built here and trained elsewhere (a machine without RDKit, with more
cores or a GPU): ``--save-examples FILE`` here, ``--examples FILE --jobs 14`` there.

Run: ``.venv/bin/python benchmarks/variants.py --edge N --variants site site_no_env --seeds 0 1 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xas_bluesky.science.graphs import GraphArrays  # noqa: E402
from xas_bluesky.science.grids import energy_grid, other_edge  # noqa: E402
from xas_bluesky.science.model.training import (  # noqa: E402
    Example,
    TrainConfig,
    is_complete,
    load_examples,
    predict_examples,
    train_member,
)

VARIANTS: dict[str, dict] = {
    "site": {},
    "site_no_env": {"env": False},
    "molecule": {"readout": "molecule", "env": False},
    "site_dim64": {"dim": 64},
    "molecule_dim64": {"readout": "molecule", "dim": 64, "env": False},
    "site_mse_only": {"deriv_weight": 0.0},
    "site_deriv3": {"deriv_weight": 3.0},
    "site_no_jitter": {"jitter": 0.0},
    "site_jitter3": {"jitter": 0.03},
    "site_400ep": {"epochs": 400},
    "site_dim64_400ep": {"dim": 64, "epochs": 400},
    "site_steps4": {"steps": 4},
    "site_wd1e-3": {"weight_decay": 1e-3},
    "site_edge32": {"edge_hidden": 32},
    "site_edge64": {"edge_hidden": 64},
    "site_dim24_edge32": {"dim": 24, "edge_hidden": 32},
    "site_joint": {"joint": True},
    # a 3D architecture: SchNet's continuous-filter convolutions over all atom pairs (site readout)
    "schnet": {"arch": "schnet", "dim": 64},
    "schnet_dim32": {"arch": "schnet", "dim": 32},
    "schnet_joint": {"arch": "schnet", "dim": 64, "joint": True},
}


def save_examples(path: str, edges=("O", "N")) -> None:
    blob = {}
    for edge in edges:
        rows = []
        for e in load_examples(edge):
            g = e.graph
            rows.append(
                {
                    "qm9_index": e.qm9_index,
                    "smiles": e.smiles,
                    "split": e.split,
                    "n_sites": e.n_sites,
                    "spectrum": torch.from_numpy(np.asarray(e.spectrum, dtype=np.float32)),
                    **{k: getattr(g, k) for k in GraphArrays._fields},
                    "y_site": g.y_site,
                    "site_mask": g.site_mask,
                }
            )
        blob[edge] = rows
    torch.save(blob, path)


def load_saved(path: str, edge: str) -> list[Example]:
    from xas_bluesky.science.graphs import graph_from_arrays

    out = []
    for r in torch.load(path, weights_only=True)[edge]:
        g = graph_from_arrays(*(r[k] for k in GraphArrays._fields))
        g.y_site, g.site_mask = r["y_site"], r["site_mask"]
        out.append(
            Example(r["qm9_index"], r["smiles"], r["split"], g, r["spectrum"].numpy(), r["n_sites"])
        )
    return out


def _run(job: tuple) -> dict:
    edge, name, seed, source, epochs, device, fraction = job
    torch.set_num_threads(1)
    settings = VARIANTS[name]
    examples = load_saved(source, edge) if source else load_examples(edge)
    parts = {s: [e for e in examples if e.split == s] for s in ("train", "val", "test")}
    if fraction < 1.0:  # a learning curve: the same val/test, a seeded subset of train
        keep = np.random.default_rng(1000 + seed).permutation(len(parts["train"]))
        parts["train"] = [parts["train"][i] for i in keep[: max(1, round(fraction * len(keep)))]]
        name = f"{name}@{fraction:g}"
    cfg = TrainConfig(**{"epochs": epochs, "seed": seed, **settings})
    if cfg.joint:  # the other edge's training molecules too (the split is by molecule)
        other = other_edge(edge)
        extra = load_saved(source, other) if source else load_examples(other)
        parts["train"] = parts["train"] + [e for e in extra if e.split == "train"]
    t0 = time.perf_counter()
    model, hist = train_member(parts["train"], parts["val"], cfg, len(energy_grid(edge)), device)
    result = {"edge": edge, "variant": name, "seed": seed, "config": cfg.__dict__, **hist}
    result["n_train_molecules"] = len(parts["train"])
    result["seconds"] = time.perf_counter() - t0
    # scored on complete molecules (every site finished), as benchmarks/accuracy.py
    scored = {s: [e for e in parts[s] if is_complete(e)] for s in ("val", "test")}
    result["pred"] = {s: predict_examples([model], scored[s]) for s in scored}
    result["true"] = {s: np.stack([e.spectrum for e in scored[s]]) for s in scored}
    _score(result)
    return result


def _score(result: dict) -> None:
    try:
        from xas_bluesky.science.model.metrics import evaluate
    except ImportError:  # no scipy on this machine: score the saved predictions elsewhere
        return
    for s in ("val", "test"):
        result[s] = evaluate(energy_grid(result["edge"]), result["true"][s], result["pred"][s])


def _ensembles(results: list[dict]) -> list[dict]:
    """Each variant trained with several seeds, scored as the ensemble of its members."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["edge"], r["variant"]), []).append(r)
    out = []
    for (edge, name), rs in groups.items():
        if len(rs) < 2:
            continue
        if len({r["true"]["val"].shape for r in rs}) > 1:  # the data grew during the run
            print(f"{edge} {name}: members saw different data, no ensemble", flush=True)
            continue
        e = {"edge": edge, "variant": f"{name} x{len(rs)}", "best_epoch": -1, "true": rs[0]["true"]}
        e["seconds"] = sum(r["seconds"] for r in rs)
        e["n_train_molecules"] = rs[0].get("n_train_molecules")
        e["pred"] = {s: np.mean([r["pred"][s] for r in rs], axis=0) for s in ("val", "test")}
        _score(e)
        out.append(e)
    return out


def _line(r: dict) -> str:
    parts = [
        f"{r['edge']} {r['variant']:<18} seed {r.get('seed', '-')!s:>3} "
        f"train {r.get('n_train_molecules', '-')!s:>4} "
        f"best epoch {r['best_epoch']:4d} {r['seconds']:6.0f} s"
    ]
    for s in ("val", "test"):
        if s in r:
            m = r[s]
            parts.append(
                f"{s}: true {100 * m['recall']:5.1f}% pred {100 * m['precision']:5.1f}% MAE {m['mae']:.4f}"
            )
    return " | ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edge", nargs="+", default=["O", "N"], choices=["O", "N"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="train each variant with these seeds; with several, also score their ensemble",
    )
    ap.add_argument(
        "--train-fractions",
        type=float,
        nargs="+",
        default=[1.0],
        help="train on these fractions of the training molecules (a learning curve)",
    )
    ap.add_argument("--jobs", type=int, default=1, help="variants trained at once (processes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--examples", help="examples saved by --save-examples (no RDKit needed)")
    ap.add_argument("--save-examples", help="build the examples, save them here and stop")
    ap.add_argument("--out", help="directory for results.json")
    ap.add_argument(
        "--save-predictions", action="store_true", help="also write each variant's predictions"
    )
    args = ap.parse_args()
    if args.save_examples:
        save_examples(args.save_examples, args.edge)
        print(f"saved examples of {', '.join(args.edge)} to {args.save_examples}")
        return
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    jobs = [
        (edge, name, seed, args.examples, args.epochs, args.device, fraction)
        for seed in args.seeds
        for fraction in args.train_fractions
        for name in args.variants
        for edge in args.edge
    ]
    results = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for fut in as_completed([pool.submit(_run, job) for job in jobs]):
            r = fut.result()
            results.append(r)
            print(_line(r), flush=True)
    ensembles = _ensembles(results)
    for r in ensembles:
        print(_line(r), flush=True)
    if args.out:
        keep = [{k: v for k, v in r.items() if k not in ("pred", "true")} for r in results]
        Path(args.out, "results.json").write_text(
            json.dumps(
                keep
                + [{k: v for k, v in r.items() if k not in ("pred", "true")} for r in ensembles],
                indent=1,
                default=str,
            )
        )
        if args.save_predictions:
            for r in results + ensembles:
                np.savez_compressed(
                    Path(args.out)
                    / f"{r['edge']}_{r['variant'].replace(' ', '_')}_s{r.get('seed', 'ens')}.npz",
                    **{f"{s}_pred": r["pred"][s] for s in r["pred"]},
                    **{f"{s}_true": r["true"][s] for s in r["true"]},
                )


if __name__ == "__main__":
    main()
