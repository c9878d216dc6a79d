"""Calibrate the comparator's likelihood for a trained ensemble and store it in the checkpoint.

The GNN's errors are correlated across energies and larger than its ensemble spread, so a plain
Gaussian likelihood is overconfident.  :func:`xas_bluesky.science.compare.calibrate` fits a
temperature on the validation split (FEFF spectra as the measured samples, this model's
predictions of the same molecules as the candidates); the result goes into the checkpoint's
metadata (``calibration``), where :func:`~xas_bluesky.science.compare.calibration_for` finds it,
so a retrained model is never scored with another model's temperature.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["calibrate_shipped", "store_calibration"]


def store_calibration(directory: str | Path, calibration: dict) -> None:
    """Add ``calibration`` to the metadata of the ensemble in ``directory`` (weights untouched,
    so the model version stays the same)."""
    import torch

    from xas_bluesky.science.model.checkpoint import METADATA_FILE, WEIGHTS_FILE

    directory = Path(directory)
    blob = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    cal = json.loads(json.dumps(calibration, default=float))
    blob["metadata"]["calibration"] = cal
    torch.save(blob, directory / WEIGHTS_FILE)
    meta = json.loads((directory / METADATA_FILE).read_text())
    meta["calibration"] = cal
    (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def calibrate_shipped(
    edge: str, directory: str | Path | None = None, seed: int = 0, paths=None
) -> dict:
    """Fit the comparator's calibration for the ensemble of ``edge`` on the validation molecules
    of ``paths`` (default: the committed data) and store it; returns it."""
    from xas_bluesky.science.compare import calibrate
    from xas_bluesky.science.dataset import default_data_files, load_molecules
    from xas_bluesky.science.model.checkpoint import model_dir
    from xas_bluesky.science.model.predictor import Predictor
    from xas_bluesky.science.structures import structure_from_xyz

    directory = Path(directory) if directory else model_dir(edge)
    predictor = Predictor.load(edge, device="cpu", directory=directory)
    paths = default_data_files() if paths is None else paths
    mols = [m for m in load_molecules(paths, edge) if m.split == "val"]
    structs = [structure_from_xyz(m.name, m.symbols, m.xyz, edge) for m in mols]
    mean, std = predictor.predict(structs, return_std=True)
    result = calibrate(
        edge, predictions=(np.asarray(mean), np.asarray(std)), seed=seed, paths=paths
    )
    summary = {
        k: result[k]
        for k in ("temperature", "temperature_exponent", "std_scale", "n_molecules", "n_trials")
    }
    summary["model_version"] = predictor.model_version
    rel = result.get("reliability") or {}
    if isinstance(rel, dict) and "ece" in rel:
        summary["val_ece"] = rel["ece"]
    store_calibration(directory, summary)
    return summary


if __name__ == "__main__":  # python -m xas_bluesky.science.model.calibration O N
    import sys

    for edge_ in sys.argv[1:] or ["O", "N"]:
        print(edge_, json.dumps(calibrate_shipped(edge_)))
