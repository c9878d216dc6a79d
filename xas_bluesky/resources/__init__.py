"""Data shipped inside the package: held-out sample spectra, candidate libraries, model weights.

Built by ``tools/build_resources.py`` (spectra, candidates) and ``xas-bluesky train`` (models).
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["RESOURCES", "heldout_samples", "candidates_file"]

RESOURCES = Path(__file__).resolve().parent


@lru_cache(maxsize=4)
def _heldout(edge: str) -> dict:
    path = RESOURCES / f"heldout_{edge}.json.gz"
    if not path.exists():
        raise FileNotFoundError(f"no held-out spectra shipped for edge {edge!r} ({path})")
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


def heldout_samples(edge: str) -> tuple[np.ndarray, list[dict]]:
    """Held-out FEFF molecular spectra of ``edge``: the energy grid and one dict per sample
    (``name``, ``qm9_index``, ``smiles``, ``symbols``, ``xyz``, ``mu``).  Never training data."""
    data = _heldout(edge)
    return np.asarray(data["energy"]), [dict(s) for s in data["samples"]]


def candidates_file(edge: str) -> Path:
    """The shipped candidate library of ``edge`` (multi-frame XYZ, >= 500 QM9 molecules)."""
    return RESOURCES / f"candidates_{edge}.xyz"
