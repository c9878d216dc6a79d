"""Data shipped inside the package: held-out sample spectra, candidate libraries, model weights.

Built by ``tools/build_resources.py`` (spectra, candidates) and ``xas-bluesky train`` (models).
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "RESOURCES",
    "two_edge_candidates",
    "REFERENCE_SLOTS",
    "heldout_samples",
    "reference_spectrum",
    "candidates_file",
    "open_world_calibration",
    "library_file",
    "feff_library_file",
]

RESOURCES = Path(__file__).resolve().parent

#: the energy-calibration reference of each edge: edge -> (its sample-changer slot, the held-out
#: sample whose FEFF spectrum it is); the sim beamline loads these, ``calibrate_energy`` fits them
REFERENCE_SLOTS = {"O": ("ref_O", "qm9_006870"), "N": ("ref_N", "qm9_004985")}


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


def reference_spectrum(edge: str) -> tuple[np.ndarray, np.ndarray]:
    """The known spectrum of the calibration reference of ``edge`` (:data:`REFERENCE_SLOTS`).

    Parameters
    ----------
    edge : str
        ``"O"`` or ``"N"``.

    Returns
    -------
    energy, mu : np.ndarray
        The shipped held-out FEFF spectrum, on FEFF10's absolute energy axis.
    """
    _, name = REFERENCE_SLOTS[edge]
    energy, samples = heldout_samples(edge)
    (mu,) = [s["mu"] for s in samples if s["name"] == name]
    return np.asarray(energy), np.asarray(mu)


def candidates_file(edge: str) -> Path:
    """The shipped candidate library of ``edge`` (multi-frame XYZ, >= 500 QM9 molecules)."""
    return RESOURCES / f"candidates_{edge}.xyz"


def _xyz_frames(path: Path) -> list[tuple[str, list[str]]]:
    lines = path.read_text().splitlines()
    frames, i = [], 0
    while i < len(lines) and lines[i].strip():
        n = int(lines[i])
        frames.append(
            (lines[i + 1].split()[0] if lines[i + 1].split() else "", lines[i : i + n + 2])
        )
        i += n + 2
    return frames


def two_edge_candidates(out: Path, edges: tuple[str, ...] = ("O", "N")) -> Path:
    """Write the molecules of every shipped candidate library of ``edges`` (by name: the
    molecules with both elements, 113 for O and N) as one XYZ file ``out``; returns it."""
    frames = _xyz_frames(candidates_file(edges[0]))
    for e in edges[1:]:
        names = {name for name, _ in _xyz_frames(candidates_file(e))}
        frames = [f for f in frames if f[0] in names]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(line for _, frame in frames for line in frame) + "\n")
    return out


def open_world_calibration(edge: str) -> dict | None:
    """The shipped calibration of the open-world analysis of ``edge`` (``open_world.json``,
    written by ``benchmarks/groups.py --calibrate`` on the validation split), or None."""
    path = RESOURCES / "open_world.json"
    if not path.exists():
        return None
    entry = json.loads(path.read_text()).get(edge)
    return dict(entry) if entry else None


def library_file(edge: str) -> Path:
    """The shipped reference library of the open-world analysis of ``edge``: training-split QM9
    structures (``.npz``, read by :func:`xas_bluesky.science.groups.load_library_structures`)."""
    return RESOURCES / f"library_{edge}.npz"


def feff_library_file(edge: str) -> Path:
    """FEFF's spectra of the data set's training molecules of ``edge`` with their functional
    groups (read by :func:`xas_bluesky.science.groups.shipped_feff_library`)."""
    return RESOURCES / f"feff_library_{edge}.npz"
