"""Score a partially measured spectrum against N candidate spectra (see :mod:`.comparator`)."""

from __future__ import annotations

from xas_bluesky.science.compare.comparator import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TEMPERATURE_EXPONENT,
    MODEL_CALIBRATIONS,
    STAND_IN_TEMPERATURE,
    Comparator,
    MatchResult,
    Trial,
    calibrate,
    calibration_for,
    effective_temperature,
    fit_temperature,
    perturbed_model,
    reliability,
    simulate_trials,
    tempered_probabilities,
)

__all__ = [
    "Comparator",
    "MatchResult",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TEMPERATURE_EXPONENT",
    "STAND_IN_TEMPERATURE",
    "effective_temperature",
    "MODEL_CALIBRATIONS",
    "calibration_for",
    "Trial",
    "perturbed_model",
    "simulate_trials",
    "fit_temperature",
    "tempered_probabilities",
    "reliability",
    "calibrate",
]
