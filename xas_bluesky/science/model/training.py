"""Training of the XANES ensemble from the FEFF10 site spectra.

Every molecule of the committed data set becomes one graph (bonds perceived from its QM9 geometry
exactly as ``xas-bluesky predict`` perceives them in an XYZ file) carrying its site spectra.  The
split is :func:`xas_bluesky.science.dataset.split_of` (by molecule, fixed by a hash of the QM9
index): members train on ``train``, the best epoch is picked on ``val``, and the metrics reported
are on ``test``, molecules no member has seen.

The loss is the mean squared error of the spectrum plus that of its derivative along energy
(weighted so both count), which rewards peaks in the right places rather than only the right
area.  Bond lengths get a small Gaussian jitter each epoch (data augmentation: geometries from a
different method than QM9's DFT differ by about that much).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from xas_bluesky.science import dataset
from xas_bluesky.science.graphs import collate, molecule_graph
from xas_bluesky.science.grids import energy_grid, other_edge
from xas_bluesky.science.model.config import TrainConfig
from xas_bluesky.science.model.network import XasMPNN
from xas_bluesky.science.structures import StructureError, structure_from_xyz

if TYPE_CHECKING:  # for the annotation only
    from torch_geometric.data import Data

__all__ = [
    "Example",
    "load_examples",
    "TrainConfig",
    "train_member",
    "build_model",
    "predict_examples",
    "is_complete",
]

log = logging.getLogger(__name__)


@dataclass
class Example:
    """One molecule: its graph with the FEFF spectra of its sites."""

    qm9_index: int
    smiles: str
    split: str
    graph: Data  # torch_geometric Data with y_site (n_sites, E), site_mask (n_sites,)
    spectrum: np.ndarray  # molecular spectrum (mean of the sites FEFF finished)
    n_sites: int


def load_examples(edge: str, paths=None) -> list[Example]:
    """Graphs and spectra of every molecule with ``edge`` spectra in ``paths`` (default: committed)."""
    paths = dataset.default_data_files() if paths is None else paths
    n_e = len(energy_grid(edge))
    out = []
    for mol in dataset.load_molecules(paths, edge):
        try:
            s = structure_from_xyz(mol.name, mol.symbols, mol.xyz, edge)
        except StructureError as exc:
            log.warning("skipped: %s", exc)
            continue
        g = molecule_graph(s, edge)
        absorbers = g.atom_index[g.x[:, 4] == 1].tolist()
        y = np.zeros((len(absorbers), n_e), dtype=np.float32)
        mask = np.zeros(len(absorbers), dtype=bool)
        for k, a in enumerate(absorbers):
            if a in mol.sites:
                y[k], mask[k] = mol.sites[a], True
        g.y_site = torch.from_numpy(y)
        g.site_mask = torch.from_numpy(mask)
        out.append(Example(mol.qm9_index, mol.smiles, mol.split, g, mol.spectrum(), len(mol.sites)))
    return out


def build_model(cfg: TrainConfig, n_out: int) -> nn.Module:
    """The untrained network ``cfg`` describes."""
    if cfg.arch == "schnet":
        from xas_bluesky.science.model.schnet import XasSchNet

        return XasSchNet(n_out, dim=cfg.dim, steps=cfg.steps, env=cfg.env)
    return XasMPNN(
        n_out,
        dim=cfg.dim,
        steps=cfg.steps,
        readout=cfg.readout,
        edge_hidden=cfg.edge_hidden,
        env=cfg.env,
    )


def _collate(examples: list[Example]):
    g = collate([e.graph for e in examples])
    g.y_site = torch.cat([e.graph.y_site for e in examples])
    g.site_mask = torch.cat([e.graph.site_mask for e in examples])
    g.y_mol = torch.from_numpy(np.stack([e.spectrum for e in examples]).astype(np.float32))
    return g


def is_complete(e: Example) -> bool:
    """FEFF finished every absorbing site of the molecule."""
    return bool(e.graph.site_mask.all())


def _loss(pred: torch.Tensor, y: torch.Tensor, deriv_weight: float) -> torch.Tensor:
    se = torch.mean((pred - y) ** 2)
    # the derivative's scale is ~4x the spectrum's on a 0.25 eV grid: weigh it back to parity
    d = torch.mean(((pred[:, 1:] - pred[:, :-1]) - (y[:, 1:] - y[:, :-1])) ** 2) * 16.0
    return se + deriv_weight * d


def predict_examples(
    models: list[nn.Module], examples: list[Example], batch: int = 256
) -> np.ndarray:
    """Ensemble-mean molecular spectra of ``examples``, shape (n, E)."""
    out = []
    with torch.inference_mode():
        for k in range(0, len(examples), batch):
            g = collate([e.graph for e in examples[k : k + batch]])
            out.append(torch.stack([m.eval()(g)[0] for m in models]).mean(0).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def train_member(
    train: list[Example], val: list[Example], cfg: TrainConfig, n_out: int, device: str = "cpu"
) -> tuple[nn.Module, dict]:
    """Train one member; returns the model (on the CPU) at its best validation epoch and its
    history.  Shipped members are trained on the CPU, where the result is reproducible."""
    # a molecule's FEFF spectrum is the mean of the sites FEFF finished, the network's the mean
    # of all its sites: where a site failed they differ, so molecular comparisons (validation,
    # the metrics, the molecule readout's loss) take complete molecules; the site loss masks
    val = [e for e in val if is_complete(e)]
    if cfg.readout == "molecule":
        train = [e for e in train if is_complete(e)]
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_model(cfg, n_out).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=cfg.lr,
        total_steps=cfg.epochs * ((len(train) + cfg.batch_size - 1) // cfg.batch_size),
    )
    val_g = _collate(val).to(device) if val else None
    best: tuple[float, dict[str, torch.Tensor] | None, int] = (np.inf, None, -1)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(train))
        for k in range(0, len(order), cfg.batch_size):
            g = _collate([train[i] for i in order[k : k + cfg.batch_size]]).to(device)
            if cfg.jitter and cfg.arch == "schnet":  # each distance jittered by ~cfg.jitter
                g.pos = g.pos + torch.randn_like(g.pos) * (cfg.jitter / 2**0.5)
            elif cfg.jitter:
                noise = torch.randn(g.edge_len.shape[0] // 2).to(device) * cfg.jitter
                g.edge_len = g.edge_len + noise.repeat_interleave(2)  # both directions alike
            mol, site, _ = model(g)
            if cfg.readout == "site":
                loss = _loss(site[g.site_mask], g.y_site[g.site_mask], cfg.deriv_weight)
            else:
                loss = _loss(mol, g.y_mol, cfg.deriv_weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
        if val_g is not None and (epoch % 5 == 4 or epoch == cfg.epochs - 1):
            model.eval()
            with torch.inference_mode():
                v = float(_loss(model(val_g)[0], val_g.y_mol, cfg.deriv_weight))
            if v < best[0]:
                best = (
                    v,
                    {k: t.detach().cpu().clone() for k, t in model.state_dict().items()},
                    epoch,
                )
    model = model.cpu()
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    return model, {
        "best_epoch": best[2],
        "val_loss": best[0],
        "seconds": time.perf_counter() - t0,
    }


def train_ensemble(
    edge: str,
    members: int = 3,
    cfg: TrainConfig | None = None,
    paths=None,
    out_dir=None,
    progress=None,
) -> dict:
    """Train ``members`` networks (seeds ``cfg.seed + k``), evaluate, and save the ensemble.

    Parameters
    ----------
    edge : str
        ``"O"`` or ``"N"``.
    members : int
        Ensemble size (>= 3 gives a usable spread).
    cfg : TrainConfig
    paths : list of path, optional
        FEFF data files; default the committed ``data/feff/*.jsonl.gz``.
    out_dir : path, optional
        Where to write the checkpoint; default the package's ``resources/models/<edge>``.
    progress : callable, optional
        Called with a line of text after each member.

    Returns
    -------
    dict
        The checkpoint's metadata.
    """
    from xas_bluesky import __version__
    from xas_bluesky.science.model.checkpoint import model_dir, round_to_shipped, save_ensemble
    from xas_bluesky.science.model.metrics import evaluate

    cfg = cfg or TrainConfig()
    paths = dataset.default_data_files() if paths is None else list(paths)
    if not paths:
        raise FileNotFoundError("no FEFF data files to train on")
    t0 = time.perf_counter()
    grid = energy_grid(edge)
    examples = load_examples(edge, paths)
    parts = {s: [e for e in examples if e.split == s] for s in ("train", "val", "test")}
    if not parts["train"] or not parts["val"]:
        raise ValueError(f"too little {edge} data to train: {len(examples)} molecules")
    train = parts["train"]
    if cfg.joint:  # the split is by molecule: no val or test molecule of either edge gets in
        other = other_edge(edge)
        if len(energy_grid(other)) != len(grid):
            raise ValueError(f"joint training needs grids of one length ({edge}, {other})")
        train = train + [e for e in load_examples(other, paths) if e.split == "train"]
    models, history = [], []
    for k in range(members):
        member_cfg = TrainConfig(**{**cfg.__dict__, "seed": cfg.seed + k})
        model, hist = train_member(train, parts["val"], member_cfg, len(grid))
        models.append(round_to_shipped(model))
        history.append(hist)
        if progress:
            progress(
                f"{edge} member {k + 1}/{members}: best epoch {hist['best_epoch']}, "
                f"val loss {hist['val_loss']:.4f}, {hist['seconds']:.0f} s"
            )
    metrics = {}
    for split in ("val", "test"):
        ex = [e for e in parts[split] if is_complete(e)]  # as benchmarks/accuracy.py
        if ex:
            pred = predict_examples(models, ex)
            metrics[split] = evaluate(grid, np.stack([e.spectrum for e in ex]), pred)
    metadata = {
        "edge": edge,
        "energy": [float(e) for e in grid],
        "grid": {"start": float(grid[0]), "stop": float(grid[-1]), "step": 0.25, "n": len(grid)},
        "data_files": [Path(p).name for p in paths],
        "data_hash": dataset.data_hash(paths),
        "split": "xas_bluesky.science.dataset.split_of (train / val / test by QM9 index hash)",
        "n_molecules": {s: len(v) for s, v in parts.items()},
        "n_train_molecules": len(parts["train"]),
        "n_train_sites": int(sum(int(e.graph.site_mask.sum()) for e in parts["train"])),
        "n_train_other_edge": {
            "molecules": len(train) - len(parts["train"]),
            "sites": int(sum(int(e.graph.site_mask.sum()) for e in train[len(parts["train"]) :])),
        },
        "members": members,
        "train_config": dict(cfg.__dict__),
        "member_history": history,
        "metrics": metrics,
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "xas_bluesky_version": __version__,
        "torch_version": str(torch.__version__),
    }
    return save_ensemble(out_dir or model_dir(edge), models, metadata)
