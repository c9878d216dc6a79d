"""Physics of the simulated beamline, free of EPICS so it can be tested and reused directly.

Energies are on FEFF10's absolute axis (O K onset ~530 eV, N K onset ~399 eV; see
``docs/architecture.rst``).  A sample's true absorption is the sum of its edge spectra (FEFF-like,
post-edge ~1), each zero below its first energy and held at its last value above its end, on top of
a smooth pre-edge background shaped like carbon's photo-absorption (xraydb): the matrix of an
organic sample.

Detector model (counts in ``t`` seconds of the simulation clock, Poisson, plus dark counts):

- ``I0``: gold-mesh drain current, proportional to the photon flux.  The flux follows the ring
  current and the beamline optics' transmission, which carries an O K contamination dip near
  531.5 eV -- it divides out of ``TEY/I0`` as it does on a real beamline.
- ``TEY``: total electron yield, ``flux * (background + jump * mu)``; the default mode.
- ``PFY``: partial fluorescence yield, a small background and a little self-absorption.
- ``It``: transmitted flux, ``flux * exp(-(mu_bg + 0.5 * jump * mu))``.

The default rates give a normalised spectrum whose noise is ~1% of the edge step per point at the
default count time of 1 s (``DEFAULT_COUNT_TIME``), in every mode.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from xas_bluesky.resources import heldout_samples
from xas_bluesky.science import spectra
from xas_bluesky.science.spectra import SpectrumError

__all__ = [
    "SpectrumError",
    "Spectrum",
    "load_spectrum_csv",
    "heldout_spectra",
    "parse_slot_spec",
    "measured_like",
    "Sample",
    "Ring",
    "Clock",
    "Beam",
    "DEFAULT_COUNT_TIME",
    "ENERGY_LIMITS",
    "FULL_SCALE",
]

#: count time (simulation seconds) at which the noise is ~1% of the edge step per point
DEFAULT_COUNT_TIME = 1.0
#: the mono's travel range in eV (a soft X-ray grating monochromator)
ENERGY_LIMITS = (250.0, 1500.0)
#: full scale of the 24-bit scalers: a count beyond it reads as this, in MAJOR alarm
FULL_SCALE = float(2**24 - 1)


@dataclass(frozen=True)
class Spectrum:
    """One edge's true absorption of a sample: ``mu`` on ``energy`` (eV, increasing)."""

    energy: np.ndarray
    mu: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        e, m = spectra.check_spectrum(
            self.energy, self.mu, source=self.source or "spectrum", energy_range=ENERGY_LIMITS
        )
        object.__setattr__(self, "energy", e)
        object.__setattr__(self, "mu", m)

    def __call__(self, energy) -> np.ndarray:
        """mu at ``energy``: 0 below the first point, the last value above the end."""
        return np.interp(energy, self.energy, self.mu, left=0.0, right=float(self.mu[-1]))


def load_spectrum_csv(path: str | Path) -> Spectrum:
    """Read a CSV ``energy_eV,mu`` (header row, then numbers) as a :class:`Spectrum`
    (:func:`xas_bluesky.science.spectra.load_spectrum_csv`, inside the mono's range).

    Raises
    ------
    SpectrumError
        With a one-line message naming the file and the problem.
    """
    energy, mu = spectra.load_spectrum_csv(path, energy_range=ENERGY_LIMITS)
    return Spectrum(energy, mu, source=str(Path(path)))


def heldout_spectra(name: str, edge: str | None = None) -> list[Spectrum]:
    """The shipped held-out FEFF spectra of sample ``name`` (every edge, or only ``edge``).

    These come from :func:`xas_bluesky.resources.heldout_samples`, never from the GNN.
    """
    out = []
    for e in [edge] if edge else ["N", "O"]:
        energy, samples = heldout_samples(e)
        for s in samples:
            if s["name"] == name:
                out.append(Spectrum(energy, np.asarray(s["mu"]), source=f"heldout:{e}:{name}"))
    if not out:
        raise SpectrumError(
            f"no held-out spectrum named {name!r}" + (f" for edge {edge}" if edge else "")
        )
    return out


def heldout_names(edge: str | None = None) -> list[str]:
    """Names of the shipped held-out samples (of ``edge``, or of any edge), sorted."""
    names: set[str] = set()
    for e in [edge] if edge else ["N", "O"]:
        names.update(s["name"] for s in heldout_samples(e)[1])
    return sorted(names)


def measured_like(
    spectrum: Spectrum, broadening_ev: float = 0.0, axis_offset_ev: float = 0.0
) -> Spectrum:
    """``spectrum`` as a real beamline would show it: broader and on another energy axis.

    Parameters
    ----------
    spectrum : Spectrum
        A FEFF-like spectrum on FEFF10's axis.
    broadening_ev : float
        FWHM (eV) of a Gaussian convolved with it (mono resolution, vibrations), on a
        uniform grid of step <= sigma / 4 (the pre-edge and the post-edge held at their ends).
    axis_offset_ev : float
        Shift (eV) of its energy axis: a feature at FEFF energy E appears at E + axis_offset_ev.

    Returns
    -------
    Spectrum
        ``spectrum`` itself when both are 0.
    """
    if broadening_ev == 0 and axis_offset_ev == 0:
        return spectrum
    from xas_bluesky.science.compare.broadening import FWHM_PER_SIGMA, gaussian_broaden

    e, mu = spectrum.energy, spectrum.mu
    if broadening_ev > 0:
        step = min(broadening_ev / FWHM_PER_SIGMA / 4.0, float(np.diff(e).min()))
        fine = np.arange(e[0], e[-1] + 0.5 * step, step)
        mu = gaussian_broaden(fine, np.interp(fine, e, mu), broadening_ev)
        e = fine
    elif broadening_ev < 0:
        raise SpectrumError(f"broadening must be >= 0 eV, got {broadening_ev}")
    tag = f"{spectrum.source} broadened {broadening_ev:g} eV shifted {axis_offset_ev:+g} eV"
    return Spectrum(e + float(axis_offset_ev), mu, source=tag)


def parse_slot_spec(spec: str) -> tuple[str, list[Spectrum]]:
    """Parse ``NAME=SOURCE`` where SOURCE is a CSV path, ``heldout:NAME`` (all its edges),
    ``heldout:EDGE:NAME`` or ``blank`` (background only); several sources joined by ``|``
    (e.g. one CSV per edge: ``mol=o.csv|n.csv``) are the edges of one sample."""
    name, sep, source = spec.partition("=")
    name = name.strip()
    if not sep or not name or not source:
        raise SpectrumError(
            f"slot {spec!r}: expected NAME=FILE.csv, NAME=heldout:[EDGE:]SAMPLE or NAME=blank"
        )
    if len(name) > 39:
        raise SpectrumError(f"slot name {name!r} is longer than 39 characters")
    if "|" in source:
        spectra: list[Spectrum] = []
        for part in source.split("|"):
            spectra += parse_slot_spec(f"{name}={part.strip()}")[1]
        return name, spectra
    if source == "blank":
        return name, []
    if source.startswith("heldout:"):
        parts = source.split(":")[1:]
        if len(parts) == 1:
            return name, heldout_spectra(parts[0])
        if len(parts) == 2:
            return name, heldout_spectra(parts[1], parts[0])
        raise SpectrumError(f"slot {name}: bad held-out source {source!r}")
    return name, [load_spectrum_csv(source)]


@lru_cache(maxsize=1)
def _carbon_table() -> tuple[np.ndarray, np.ndarray]:
    import xraydb

    grid = np.arange(ENERGY_LIMITS[0], ENERGY_LIMITS[1] + 0.25, 0.25)
    return grid, np.asarray(xraydb.mu_elam("C", grid))


def _carbon_mu(energy) -> np.ndarray:
    """Carbon's photo-absorption cross-section (xraydb, cm^2/g), tabulated once: an xraydb
    query per count would cost milliseconds."""
    grid, mu = _carbon_table()
    return np.interp(np.atleast_1d(np.asarray(energy, dtype=float)), grid, mu)


@dataclass
class Sample:
    """A sample in a slot: its edge spectra and its pre-edge (organic matrix) background."""

    name: str
    spectra: list[Spectrum] = field(default_factory=list)
    #: edge jump of the absorber, in the units of ``mu``
    jump: float = 1.0
    #: matrix background at 500 eV relative to the jump (carbon-like, falls ~E^-2.6)
    background: float = 0.5

    def mu(self, energy) -> np.ndarray:
        """The absorber's mu (edge spectra only, jump applied)."""
        energy = np.atleast_1d(np.asarray(energy, dtype=float))
        total = np.zeros_like(energy)
        for s in self.spectra:
            total += s(energy)
        return self.jump * total

    def matrix(self, energy) -> np.ndarray:
        """The smooth pre-edge background of the matrix (carbon's cross-section shape)."""
        energy = np.atleast_1d(np.asarray(energy, dtype=float))
        return self.background * self.jump * _carbon_mu(energy) / _carbon_mu(500.0)[0]


class Clock:
    """The simulation clock: ``factor`` simulated seconds per real second.

    Count times and motion times are simulated seconds; the IOC waits ``sim / factor`` real
    seconds.  Counting statistics depend on simulated time only, so an accelerated clock changes
    how fast a scan runs, never its noise.
    """

    def __init__(self, factor: float = 1.0):
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"clock factor must be positive, got {factor}")
        self.factor = float(factor)
        self._t0 = time.monotonic()

    def now(self) -> float:
        """Simulated seconds since start."""
        return (time.monotonic() - self._t0) * self.factor

    def real(self, sim_seconds: float) -> float:
        """Real seconds that ``sim_seconds`` take."""
        return max(0.0, sim_seconds) / self.factor


@dataclass
class Ring:
    """Storage-ring current in top-up: decays with ``lifetime`` and is refilled every
    ``period`` seconds (NSLS-II: 400 mA, ~1 min).  :meth:`dump` loses the beam for a while."""

    current_ma: float = 400.0
    lifetime_s: float = 8 * 3600.0
    period_s: float = 60.0
    #: simulated seconds during which the beam is dumped: [start, end)
    dumped: tuple[float, float] = (0.0, 0.0)

    def dump(self, t: float, duration: float) -> None:
        """Lose the beam at ``t`` for ``duration`` simulated seconds; refilled to full after."""
        self.dumped = (float(t), float(t) + max(0.0, float(duration)))

    def current(self, t: float) -> float:
        if self.dumped[0] <= t < self.dumped[1]:
            return 0.0
        return self.current_ma * math.exp(-(t % self.period_s) / self.lifetime_s)


@dataclass
class Beam:
    """Photon flux and detector response.  Rates are counts per simulated second at 400 mA."""

    i0_rate: float = 2.0e6
    tey_rate: float = 1.5e4
    pfy_rate: float = 1.1e4
    it_rate: float = 2.0e5
    dark_rate: float = 50.0
    #: depth of the optics' O K contamination dip (divides out of signal/I0)
    optics_dip: float = 0.08
    #: transmission: matrix absorption length scale (mu units -> optical depth)
    it_matrix_depth: float = 1.0
    ring: Ring = field(default_factory=Ring)

    def flux(self, energy: float, ring_ma: float) -> float:
        """Relative photon flux on the sample (1 at 400 mA, 500 eV, away from the dip)."""
        optics = 1.0 - self.optics_dip * math.exp(-0.5 * ((energy - 531.5) / 0.8) ** 2)
        grating = (energy / 500.0) ** -0.5
        return ring_ma / 400.0 * optics * grating

    def expected(self, sample: Sample, energy: float, ring_ma: float, t: float) -> dict[str, float]:
        """Expected counts (no noise, no dark) of every channel in ``t`` simulated seconds."""
        f = self.flux(energy, ring_ma) * t
        mu = float(sample.mu(energy)[0])
        bg = float(sample.matrix(energy)[0])
        pfy = mu / (1.0 + 0.05 * mu) + 0.1 * bg  # mild self-absorption, small background
        return {
            "i0": self.i0_rate * f,
            "tey": self.tey_rate * f * (bg + mu),
            "pfy": self.pfy_rate * f * pfy,
            "it": self.it_rate * f * math.exp(-(self.it_matrix_depth * (bg + 0.5) + 0.5 * mu)),
        }

    def measure(
        self,
        sample: Sample,
        energy: float,
        ring_ma: float,
        t: float,
        rng: np.random.Generator,
        dark_rate: float | None = None,
    ) -> dict[str, float]:
        """Counts of every channel: Poisson around :meth:`expected` plus Poisson dark counts."""
        dark = (self.dark_rate if dark_rate is None else dark_rate) * max(t, 0.0)
        out = {}
        for key, lam in self.expected(sample, energy, ring_ma, t).items():
            out[key] = float(rng.poisson(max(lam, 0.0) + max(dark, 0.0)))
        return out
