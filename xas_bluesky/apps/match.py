"""``xas-bluesky match``: one-shot offline match of a finished measurement.

Reads a measured spectrum (CSV ``energy_eV,mu``, XDI, or an Athena project's first group), puts
its energies on FEFF10's axis (``--axis``, :mod:`xas_bluesky.science.compare.axis`), predicts the
candidates with the shipped GNN and scores them with
:class:`~xas_bluesky.science.compare.broadening.BroadenedComparator` (the model's calibration,
Gaussian broadening marginalised over a few widths, one shared offset).  The open-world reading
(functional groups, ``in_library``: :class:`~xas_bluesky.science.compare.novelty.OpenWorld`)
uses the shipped reference libraries broadened at the most probable width; the model library's
predictions are cached under ``--library-cache``.

The JSON (to ``--json`` or stdout) has the demo's ``ranking`` entries, ``groups`` (best first:
``name``, ``probability``) and ``in_library``; the contract is in ``docs/cli.rst``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from xas_bluesky.apps.cli import CLIError

__all__ = ["add_parser", "run", "match_spectrum", "default_library_cache"]

logger = logging.getLogger(__name__)

#: fewest measured points on the model's grid that a match accepts
MIN_POINTS = 10


def default_library_cache() -> Path:
    """``$XDG_CACHE_HOME/xas_bluesky/libraries`` (``~/.cache/...`` by default)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "xas_bluesky" / "libraries"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from xas_bluesky.science.compare.axis import AXES
    from xas_bluesky.science.compare.broadening import DEFAULT_WIDTHS_EV
    from xas_bluesky.science.compare.processing import PROCESSINGS

    p = sub.add_parser(
        "match",
        help="match a finished measurement against candidate structures (offline)",
        description=(
            "Score a measured spectrum (CSV energy_eV,mu, XDI, or an Athena project's first "
            "group) against candidate structures predicted by the shipped GNN; print or write "
            "the ranking, the functional groups and in_library as JSON."
        ),
    )
    p.add_argument("--spectrum", required=True, metavar="FILE", help="CSV, XDI or Athena .prj")
    p.add_argument(
        "--candidates", required=True, metavar="FILE", help="candidate structures (XYZ/SDF/SMILES)"
    )
    p.add_argument("--edge", choices=["O", "N"], required=True, help="K edge")
    p.add_argument(
        "--axis",
        choices=list(AXES),
        default="feff",
        help="energy axis of the spectrum: FEFF10's (default) or an experiment's (calibrated "
        "against literature gas-phase resonances; see docs/real_samples.rst)",
    )
    p.add_argument(
        "--axis-offset",
        type=float,
        default=None,
        metavar="EV",
        help="experiment-to-FEFF offset (eV) instead of the edge's convention (--axis experiment)",
    )
    p.add_argument(
        "--axis-sigma",
        type=float,
        default=None,
        metavar="EV",
        help="prior width (eV) of the experiment-to-FEFF offset (default 1)",
    )
    p.add_argument(
        "--widths",
        type=float,
        nargs="+",
        default=list(DEFAULT_WIDTHS_EV),
        metavar="EV",
        help="Gaussian FWHM (eV) of the predictions to marginalise over "
        f"(default {' '.join(f'{w:g}' for w in DEFAULT_WIDTHS_EV)})",
    )
    p.add_argument(
        "--processing",
        choices=["auto", *PROCESSINGS],
        default="auto",
        help="what was done to the spectrum: raw (measured, or Athena's norm), flat (Athena's / "
        "Larch's flattened norm: the candidates are flattened alike) or auto (default: both "
        "readings marginalised when the spectrum looks normalised, else raw; an XDI 'flat' "
        "column is flat)",
    )
    p.add_argument(
        "--nnorm",
        type=int,
        default=None,
        metavar="N",
        help="degree of the post-edge polynomial a flattened spectrum had (default 2: Athena's "
        "normalisation order 3)",
    )
    p.add_argument(
        "--e0",
        type=float,
        default=None,
        metavar="EV",
        help="E0 of the flattening, on the spectrum's own axis (default: Larch's rule)",
    )
    p.add_argument("--no-groups", action="store_true", help="skip groups and in_library")
    p.add_argument(
        "--library-cache",
        metavar="DIR",
        default=None,
        help=f"predicted reference libraries (default {default_library_cache()})",
    )
    p.add_argument("--json", metavar="OUT.json", help="write the JSON here (default stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xas_bluesky.science.spectra import SpectrumError
    from xas_bluesky.science.structures import StructureError

    for flag, path in (("--spectrum", args.spectrum), ("--candidates", args.candidates)):
        if not Path(path).is_file():
            raise CLIError(f"{path}: no such file ({flag})")
    if any(not (w >= 0) for w in args.widths):
        raise CLIError(f"--widths must be >= 0 eV, got {args.widths}")
    if args.nnorm is not None and not 0 <= args.nnorm <= 5:
        raise CLIError(f"--nnorm must be 0 to 5, got {args.nnorm}")
    if args.axis_sigma is not None and not args.axis_sigma >= 0:
        raise CLIError(f"--axis-sigma must be >= 0 eV, got {args.axis_sigma}")
    try:
        out = match_spectrum(
            args.spectrum,
            args.candidates,
            args.edge,
            axis=args.axis,
            axis_offset=args.axis_offset,
            axis_sigma=args.axis_sigma,
            widths=tuple(dict.fromkeys(args.widths)),
            processing=args.processing,
            nnorm=args.nnorm,
            e0=args.e0,
            groups=not args.no_groups,
            library_cache=Path(args.library_cache) if args.library_cache else None,
        )
    except (SpectrumError, StructureError) as exc:
        raise CLIError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    text = json.dumps(out, indent=2) + "\n"
    if args.json:
        Path(args.json).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _library(edge: str, predictor: Any, cache: Path | None):
    """The shipped model library predicted by ``predictor``, cached as ``.npz`` per model."""
    from xas_bluesky.science.groups import GroupLibrary, shipped_library

    path = None
    if cache is not None:
        path = cache / f"library_{edge}_{predictor.model_version}.npz"
        if path.is_file():
            try:
                return GroupLibrary.load(path)
            except Exception as exc:  # a damaged cache is rebuilt
                logger.warning("%s: unreadable (%s): predicting the library again", path, exc)
    print(f"match: predicting the {edge} reference library (once per model)", file=sys.stderr)
    lib = shipped_library(edge, predictor)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            lib.save(tmp)
            tmp.replace(path)
        except OSError as exc:
            logger.warning("could not cache the library in %s: %s", path, exc)
    return lib


def _broadened(lib: Any, fwhm: float) -> Any:
    from dataclasses import replace

    import numpy as np

    from xas_bluesky.science.compare.broadening import gaussian_broaden

    if fwhm == 0:
        return lib
    return replace(
        lib,
        mean=gaussian_broaden(lib.energy, lib.mean, fwhm).astype(np.float32),
        std=None if lib.std is None else gaussian_broaden(lib.energy, lib.std, fwhm),
    )


def match_spectrum(
    spectrum: str | os.PathLike,
    candidates: str | os.PathLike,
    edge: str,
    *,
    axis: str = "feff",
    axis_offset: float | None = None,
    axis_sigma: float | None = None,
    widths: tuple[float, ...] | None = None,
    processing: str = "auto",
    nnorm: int | None = None,
    e0: float | None = None,
    groups: bool = True,
    library_cache: Path | None = None,
    predictor: Any = None,
) -> dict[str, Any]:
    """Match a measured spectrum file against a candidate file; the JSON-able result.

    Parameters
    ----------
    spectrum, candidates : path
        The measurement (:func:`~xas_bluesky.science.xasfiles.read_measured`) and the
        candidate structures (XYZ/SDF/SMILES).
    edge : str
        ``"O"`` or ``"N"``.
    axis : str
        ``"feff"`` or ``"experiment"`` (:mod:`xas_bluesky.science.compare.axis`).
    axis_offset, axis_sigma : float, optional
        Override the edge's experiment-to-FEFF convention.
    widths : tuple of float, optional
        Broadening FWHM (eV); :data:`~xas_bluesky.science.compare.broadening.DEFAULT_WIDTHS_EV`.
    processing : str
        ``"raw"``, ``"flat"`` or ``"auto"``: how the spectrum was processed
        (:mod:`xas_bluesky.science.compare.processing`); ``auto`` marginalises over both when
        the spectrum looks normalised (``flat`` for an XDI ``flat`` column), else ``raw``.
    nnorm : int, optional
        Post-edge degree of the flattening
        (:data:`~xas_bluesky.science.compare.processing.FLAT_NNORM` when None).
    e0 : float, optional
        E0 of the flattening on the spectrum's axis (Larch's rule on the data when None).
    groups : bool
        Also the open-world reading (groups, ``in_library``); both are empty/None without it.
    library_cache : Path, optional
        Where the predicted model library is cached (:func:`default_library_cache` when None).
    predictor : Predictor, optional
        The shipped ensemble of ``edge`` when None.

    Returns
    -------
    dict
        ``ranking``, ``groups``, ``in_library`` and what the match found (see ``docs/cli.rst``).

    Raises
    ------
    SpectrumError, StructureError
        For a bad spectrum file, a spectrum off the model's grid, no valid candidate.
    """
    import numpy as np

    from xas_bluesky.contracts import GROUPS, ranking
    from xas_bluesky.science.candidates import PredictionCache
    from xas_bluesky.science.compare import calibration_for
    from xas_bluesky.science.compare.axis import convention, offset_prior, to_feff_axis
    from xas_bluesky.science.compare.broadening import DEFAULT_WIDTHS_EV, BroadenedComparator
    from xas_bluesky.science.compare.processing import (
        FLAT_NNORM,
        flatten_like,
        looks_normalised,
        reference_normalization,
    )
    from xas_bluesky.science.spectra import NormalizationError, SpectrumError, noise_from_scatter
    from xas_bluesky.science.xasfiles import read_measured

    widths = tuple(DEFAULT_WIDTHS_EV if widths is None else widths)
    meas = read_measured(Path(spectrum))
    conv = convention(edge, offset_ev=axis_offset, sigma_ev=axis_sigma)
    energy = to_feff_axis(meas.energy, edge, axis, conv)
    if predictor is None:
        from xas_bluesky.science.model.predictor import Predictor

        predictor = Predictor.load(edge)
    cache = PredictionCache(predictor_factory=lambda e: predictor)
    cands = cache.from_file(candidates, edge)
    grid = np.asarray(cands.energy, dtype=float)
    inside = (energy >= grid[0]) & (energy <= grid[-1])
    if int(inside.sum()) < MIN_POINTS:
        raise SpectrumError(
            f"{meas.source}: {int(inside.sum())} points within the model's {edge} grid "
            f"{grid[0]:.1f}-{grid[-1]:.1f} eV on FEFF's axis (the spectrum spans "
            f"{energy[0]:.1f}-{energy[-1]:.1f} eV with --axis {axis}): need {MIN_POINTS}"
        )
    e, mu = energy[inside], meas.mu[inside]
    sigma = noise_from_scatter(mu, floor=1e-3 * float(np.ptp(mu)))
    e0_feff = None if e0 is None else float(to_feff_axis(np.array([e0]), edge, axis, conv)[0])
    normalised = looks_normalised(e, mu, e0_feff)
    readings = _readings(processing, normalised, meas.column)
    mean, std, columns = cands.mean, cands.std, list(cands.names)
    if "flat" in readings:
        try:
            ref = reference_normalization(
                e, mu, e0=e0_feff, nnorm=FLAT_NNORM if nnorm is None else nnorm
            )
            fmean, fstd = flatten_like(grid, cands.mean, cands.std, ref)
        except NormalizationError as exc:
            raise SpectrumError(
                f"{meas.source}: cannot flatten the candidates alike: {exc}"
            ) from None
        if readings == ("flat",):
            mean, std = fmean, fstd
        else:  # both readings as columns of one comparator, summed per molecule below
            mean = np.concatenate([cands.mean, fmean])
            std = None if cands.std is None or fstd is None else np.concatenate([cands.std, fstd])
            columns = [*columns, *(f"{n}|flat" for n in cands.names)]
    kwargs = {**(cands.calibration or calibration_for(predictor)), **offset_prior(edge, axis, conv)}
    comp = BroadenedComparator(grid, mean, std, columns, widths_ev=widths, **kwargs)
    comp.add_points(e, mu, np.full(e.size, sigma))
    res = comp.result()
    n_c = len(cands.names)
    by_reading = np.asarray(res.probabilities, dtype=float).reshape(len(readings), n_c)
    prob = by_reading.sum(axis=0)
    per_reading = by_reading.sum(axis=1)
    # normalised again: the top-label map leaves the sum 1 only to rounding (one reading: 1.0)
    per_reading /= per_reading.sum()
    reading_posterior = dict(zip(readings, per_reading.tolist(), strict=True))
    order = np.argsort(-prob, kind="stable").tolist()
    out: dict[str, Any] = {
        "spectrum": str(meas.source),
        "label": meas.label,
        "column": meas.column,
        "edge": edge,
        "axis": axis,
        "axis_offset_ev": conv.offset_ev if axis == "experiment" else 0.0,
        "points": int(e.size),
        "ranking": ranking(cands.names, cands.smiles, prob.tolist(), order),
        "groups": [],
        "in_library": None,
        "offset_ev": float(res.offset_ev),
        "offset_std_ev": float(res.offset_std_ev),
        "broadening_fwhm_ev": comp.width_ev,
        "width_posterior": {
            f"{w:g}": float(p) for w, p in zip(widths, comp.width_posterior, strict=True)
        },
        "noise": sigma,
        "normalised_input": normalised,
        "processing": reading_posterior,
        "candidates": str(candidates),
        "n_candidates": len(cands.names),
        "skipped": list(cands.skipped),
        "model_version": cands.model_version,
    }
    if groups and reading_posterior.get("flat", 0.0) > 0.5:
        # the open-world references are unflattened: a flattened spectrum would read as novel
        logger.warning("%s: read as flattened; groups and in_library not assessed", meas.source)
    elif groups:
        from xas_bluesky.science.compare.novelty import NoveltyCalibration, OpenWorld
        from xas_bluesky.science.groups import group_matrix, groups_of, shipped_feff_library

        width = comp.best_width_ev
        lib = _library(edge, predictor, library_cache or default_library_cache())
        try:
            cgroups = group_matrix([groups_of(s, edge) for s in cands.smiles], edge)
        except (ValueError, TypeError):
            cgroups = None
        cm = cands.mean if width == 0 else _broadened_rows(grid, cands.mean, width)
        cs = None if cands.std is None else _broadened_rows(grid, cands.std, width)
        world = OpenWorld(
            _broadened(lib, width),
            cm,
            cs,
            cands.names,
            cgroups,
            feff_library=_broadened(shipped_feff_library(edge), width),
            calibration=NoveltyCalibration.shipped(edge, cands.model_version),
            **kwargs,
        )
        world.add_points(e, mu, np.full(e.size, sigma))
        nov = world.result()
        gp = np.asarray(nov.group_probabilities, dtype=float)
        names = GROUPS[edge]
        best = sorted(range(len(names)), key=lambda i: (-gp[i], names[i]))
        out["groups"] = [{"name": names[i], "probability": float(gp[i])} for i in best]
        out["in_library"] = None if np.isnan(nov.in_library) else float(nov.in_library)
    return out


def _readings(processing: str, normalised: bool, column: str) -> tuple[str, ...]:
    """The readings (:data:`~xas_bluesky.science.compare.processing.PROCESSINGS`, in its order:
    the comparator's columns are laid out so) to score."""
    from xas_bluesky.science.compare.processing import PROCESSINGS

    if processing in PROCESSINGS:
        return (processing,)
    if processing != "auto":
        raise ValueError(f"processing must be auto, raw or flat, got {processing!r}")
    if column == "flat":
        return ("flat",)
    return PROCESSINGS if normalised else ("raw",)


def _broadened_rows(energy: Any, rows: Any, fwhm: float) -> Any:
    from xas_bluesky.science.compare.broadening import gaussian_broaden

    return gaussian_broaden(energy, rows, fwhm)
