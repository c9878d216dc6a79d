"""Accuracy of predicted spectra as Carbone et al. (2020) judge it: peak positions within 1 eV.

A peak is a local maximum whose prominence is at least 5% of the spectrum's maximum
(``scipy.signal.find_peaks``).  ``recall`` is the fraction of the true (FEFF) peaks that have a
predicted peak within the tolerance; ``precision`` the fraction of predicted peaks that have a true
peak within it (the direction the paper reports, 90%); both pooled over all peaks of all spectra.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import find_peaks

__all__ = ["peak_positions", "peak_match", "evaluate"]

PROMINENCE = 0.05
TOLERANCE_EV = 1.0


def peak_positions(
    energy: np.ndarray, mu: np.ndarray, prominence: float = PROMINENCE
) -> np.ndarray:
    """Energies of the peaks of ``mu`` with prominence >= ``prominence`` x max(mu)."""
    mu = np.asarray(mu, dtype=float)
    top = float(np.max(mu)) if mu.size else 0.0
    if top <= 0:
        return np.zeros(0)
    idx, _ = find_peaks(mu, prominence=prominence * top)
    return np.asarray(energy)[idx]


def peak_match(
    energy: np.ndarray, true: np.ndarray, pred: np.ndarray, tol: float = TOLERANCE_EV
) -> tuple[int, int, int, int]:
    """Counts over a set of spectra: (true peaks matched, true peaks, predicted matched, predicted)."""
    tm = tn = pm = pn = 0
    for t, p in zip(np.atleast_2d(true), np.atleast_2d(pred), strict=True):
        et, ep = peak_positions(energy, t), peak_positions(energy, p)
        tn += len(et)
        pn += len(ep)
        if len(et) and len(ep):
            d = np.abs(et[:, None] - ep[None, :])
            tm += int(np.sum(d.min(1) <= tol))
            pm += int(np.sum(d.min(0) <= tol))
    return tm, tn, pm, pn


def evaluate(energy: np.ndarray, true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``recall``, ``precision`` (peaks within 1 eV, both ways), ``mae`` and the counts."""
    tm, tn, pm, pn = peak_match(energy, true, pred)
    return {
        "recall": tm / tn if tn else float("nan"),
        "precision": pm / pn if pn else float("nan"),
        "mae": float(np.mean(np.abs(np.asarray(true) - np.asarray(pred)))),
        "n_spectra": int(np.atleast_2d(true).shape[0]),
        "true_peaks": tn,
        "predicted_peaks": pn,
    }
