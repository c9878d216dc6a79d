"""What a scientist may have done to a spectrum before it is matched: Athena's flattening.

Athena and Larch hand out a normalised spectrum as ``norm`` (``(mu - pre_edge) / edge_step``)
or as ``flat``, which also takes the post-edge polynomial's change out above E0.  The
comparator's background (a scale and a line, profiled out) absorbs any pre-edge line and edge
step, so ``norm`` matches like the raw spectrum; it cannot absorb ``flat``'s kinked quadratic
(Athena's default normalisation order 3), which bends the post-edge resonances: a held-out O
spectrum exported so went from first place at p 0.99 to 30th of 30, a wrong molecule at p 0.97
(``tests/test_real_samples.py``).  A flattened spectrum is therefore matched against candidates
flattened the same way (:func:`flatten_like`): the operator is applied to the forward model,
not undone on the data.  Where it is not known whether a normalised-looking spectrum was
flattened, both readings are scored as columns of one comparator and marginalised, like the
broadening widths (:mod:`xas_bluesky.science.compare.broadening`).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike

from xas_bluesky.science.spectra import Normalization, NormalizationError, find_e0, normalize

__all__ = [
    "PROCESSINGS",
    "FLAT_NNORM",
    "looks_normalised",
    "reference_normalization",
    "flatten_like",
]

#: the readings of a spectrum that ``match`` scores: as measured (any pre-edge line and edge
#: step), or flattened (Athena's / Larch's ``flat``)
PROCESSINGS: tuple[str, ...] = ("raw", "flat")

#: degree of the post-edge polynomial of a flattened spectrum unless told: Athena's default
#: normalisation order 3 is a quadratic (a line, ``nnorm=1``, matches like ``norm``: measured)
FLAT_NNORM = 2

#: a normalised spectrum's pre-edge level and post-edge level lie this close to 0 and 1
_PRE_TOL, _POST_TOL = 0.05, 0.15


def reference_normalization(
    energy: ArrayLike, mu: ArrayLike, *, e0: float | None = None, nnorm: int = FLAT_NNORM
) -> Normalization:
    """The normalisation a flattened spectrum is taken to have had: :func:`normalize` with
    Larch's E0 rule (or ``e0``), the package's windows and a post-edge of degree ``nnorm``."""
    e = np.asarray(energy, dtype=float)
    y = np.asarray(mu, dtype=float)
    return normalize(e, y, e0=find_e0(e, y) if e0 is None else e0, nnorm=nnorm)


def looks_normalised(energy: ArrayLike, mu: ArrayLike, e0: float | None = None) -> bool:
    """True when the pre-edge sits at 0 and the last 10 eV near 1 (within 0.05 / 0.15): the
    spectrum was normalised already (``norm`` or ``flat``), not raw counts or absorbance."""
    e = np.asarray(energy, dtype=float)
    y = np.asarray(mu, dtype=float)
    ok = np.isfinite(e) & np.isfinite(y)
    e, y = e[ok], y[ok]
    if e.size < 6:
        return False
    e0 = find_e0(e, y) if e0 is None else e0
    pre, post = y[e < e0 - 1.0], y[e > e.max() - 10.0]
    if pre.size < 2 or post.size < 2:
        return False
    return bool(abs(pre.mean()) < _PRE_TOL and abs(post.mean() - 1.0) < _POST_TOL)


def flatten_like(
    energy: ArrayLike, mean: ArrayLike, std: ArrayLike | None, reference: Normalization
) -> tuple[np.ndarray, np.ndarray | None]:
    """Candidates' predictions flattened as ``reference`` flattened the measurement.

    Each row gets :func:`normalize` with the reference's E0, windows and degrees (clamped to
    the rows' grid) and keeps ``flat``; the ensemble spread is divided by the row's edge step.
    Flattening is applied before the broadening a comparator may add: the two commute except
    within a width of E0.

    Raises
    ------
    NormalizationError
        When a row has no pre- or post-edge points in the reference's windows.
    """
    e = np.asarray(energy, dtype=float)
    rows = np.atleast_2d(np.asarray(mean, dtype=float))
    spread = None if std is None else np.atleast_2d(np.asarray(std, dtype=float))
    if not e[0] <= reference.e0 <= e[-1]:
        raise NormalizationError(
            f"E0 {reference.e0:.2f} eV lies outside the predictions' grid {e[0]:.1f}-{e[-1]:.1f} eV"
        )
    flat = np.empty_like(rows)
    out_std = None if spread is None else np.empty_like(spread)
    for i, row in enumerate(rows):
        # the reference's own arguments (those that make Larch reproduce it), for this row
        n = normalize(e, row, **cast(dict[str, Any], reference.larch_kwargs()))
        flat[i] = n.flat
        if out_std is not None and spread is not None:
            out_std[i] = spread[i] / n.edge_step
    return flat, out_std
