"""Score a partially measured spectrum against N candidate spectra, and calibrate the scores.

Modules: :mod:`.comparator` (the live hot path: :class:`Comparator`, :class:`MatchResult`,
:func:`calibration_for`; pure numpy), :mod:`.calibration` (offline: simulated scans, the
temperature fit, reliability, :func:`calibrate` and storing a trained ensemble's calibration in
its checkpoint) and :mod:`.novelty` (the open world: functional groups from the spectrum and
whether the sample is among the candidates, read from comparators' results; import it as
``xas_bluesky.science.compare.novelty``).  Every public name of both is importable from here; the offline ones load
:mod:`.calibration` on first use, so the live path never imports it (nor its data-set modules),
and ``python -m xas_bluesky.science.compare.calibration`` runs a module not yet imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xas_bluesky.science.compare.comparator import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TEMPERATURE_EXPONENT,
    Comparator,
    MatchResult,
    calibration_for,
    effective_temperature,
    recalibrate_top,
)

if TYPE_CHECKING:  # loaded on first use, see __getattr__
    from xas_bluesky.science.compare.calibration import (
        STAND_IN_TEMPERATURE,
        Trial,
        calibrate,
        calibrate_shipped,
        calibration_molecules,
        fit_temperature,
        fit_top_calibration,
        perturbed_model,
        reliability,
        simulate_trials,
        store_calibration,
        tempered_probabilities,
    )

__all__ = [
    "Comparator",
    "MatchResult",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TEMPERATURE_EXPONENT",
    "STAND_IN_TEMPERATURE",
    "effective_temperature",
    "calibration_for",
    "recalibrate_top",
    "Trial",
    "perturbed_model",
    "simulate_trials",
    "fit_temperature",
    "tempered_probabilities",
    "reliability",
    "calibrate",
    "store_calibration",
    "calibrate_shipped",
    "fit_top_calibration",
    "calibration_molecules",
]

_OFFLINE = frozenset(
    {
        "STAND_IN_TEMPERATURE",
        "Trial",
        "perturbed_model",
        "simulate_trials",
        "fit_temperature",
        "tempered_probabilities",
        "reliability",
        "calibrate",
        "store_calibration",
        "calibrate_shipped",
        "fit_top_calibration",
        "calibration_molecules",
    }
)


def __getattr__(name: str) -> object:
    """An offline name of :mod:`.calibration`, imported on first use."""
    if name in _OFFLINE:
        from xas_bluesky.science.compare import calibration

        return getattr(calibration, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _OFFLINE)
