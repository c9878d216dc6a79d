"""Python API of the simulated beamline: start it on loopback, get its prefixes and devices.

The simulator's launcher, for applications and tests (``xas_bluesky.apps``, ``benchmarks/``,
``tests/``); the beamline layer (plans, devices, callbacks) never imports it.

::

    with SimBeamline(slots=["mine=spectrum.csv"], clock=20) as sim:
        # a client process: put sim.client_env() into os.environ before importing epics/ophyd
        devs = sim.devices()            # Mono, XASDetector, SampleChanger, ring current
        RE(xanes_scan(devs.mono, devs.det, edge="O", sample="mine",
                      sample_changer=devs.sample_changer))

Tests start it through the ``ioc_factory`` fixture instead (``ioc_factory(sim_ioc_args(...),
probe=PROBE_PV)``) and attach with :func:`make_devices`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sim_iocs.physics import parse_slot_spec
from xas_bluesky.services import (
    ManagedProcess,
    environ,
    free_ports,
    loopback_ca_env,
    start_ioc,
    start_repeater,
)

if TYPE_CHECKING:  # ophyd: imported only once the client's Channel Access environment is set
    from xas_bluesky.beamline.devices import BeamlineDevices

__all__ = [
    "SimBeamline",
    "sim_ioc_args",
    "PROBE_PV",
    "DEFAULT_CLOCK",
    "check_slots",
]

#: the PV (after the prefix) whose answer means the IOC is ready
PROBE_PV = "Mono:Energy-RB"
#: the accelerated clock the demo and tests use: a full 0.1 eV grid (491 points) in ~1-2 min
DEFAULT_CLOCK = 20.0


def check_slots(slots: Sequence[str]) -> None:
    """Parse every ``NAME=SOURCE`` slot here, so a bad spectrum file fails with a clear
    :class:`~xas_bluesky.science.spectra.SpectrumError` before any process starts.

    Parameters
    ----------
    slots : sequence of str
        ``NAME=FILE.csv``, ``NAME=heldout:[EDGE:]SAMPLE`` or ``NAME=blank``.
    """
    for spec in slots:
        parse_slot_spec(spec)


def sim_ioc_args(
    *,
    slots: Sequence[str] = (),
    sample: str | None = None,
    clock: float = DEFAULT_CLOCK,
    seed: int = 0,
    offset: float | None = None,
    tuned: bool = True,
    broadening: float = 0.0,
    axis_offset: float = 0.0,
) -> list[str]:
    """Arguments of ``python -m sim_iocs.beamline`` (without ``--prefix``).

    Parameters
    ----------
    slots : sequence of str
        Extra sample slots, ``NAME=SOURCE``; sources that are paths are made absolute (the IOC
        may run elsewhere).
    sample : str, optional
        Slot in the beam at start.
    clock, seed, offset, tuned, broadening, axis_offset
        As :class:`SimBeamline`.

    Returns
    -------
    list of str
        For ``sys.executable``, e.g. the ``ioc_factory`` fixture's first argument.
    """
    args = [
        "-m",
        "sim_iocs.beamline",
        "--quiet",
        "--clock",
        repr(float(clock)),
        "--seed",
        str(seed),
    ]
    if offset is not None:
        args += ["--offset", repr(float(offset))]
    if broadening:
        args += ["--broadening", repr(float(broadening))]
    if axis_offset:
        args += ["--axis-offset", repr(float(axis_offset))]
    for spec in slots:
        name, _, source = spec.partition("=")
        parts = [
            str(Path(p).resolve()) if p and not p.startswith("heldout:") and p != "blank" else p
            for p in source.split("|")
        ]
        args += ["--slot", f"{name}={'|'.join(parts)}"]
    if sample:
        args += ["--sample", sample]
    if not tuned:
        args.append("--no-tune")
    return args


class SimBeamline:
    """The simulated beamline IOC in a subprocess on loopback, stopped (by PID) on exit.

    Parameters
    ----------
    prefix
        PV prefix (default: a unique ``SIMxxxxxx:``).
    slots
        Extra sample slots, ``NAME=FILE.csv`` or ``NAME=heldout:[EDGE:]SAMPLE``; checked here.
    sample
        Slot in the beam at start (default ``blank``).
    clock
        Simulated seconds per real second (count and motion times shrink, noise does not).
    seed, offset
        Random seed; the mono's true calibration error in eV (default: seeded within +-1 eV).
    port, repeater_port
        Channel Access server / repeater ports (default: free ports).
    tuned
        ``False`` runs caproto as shipped (Nagle on), the benchmark's baseline.
    broadening, axis_offset
        Gaussian FWHM (eV) and energy shift (eV) of every sample spectrum, like a real beamline
        (:func:`~sim_iocs.physics.measured_like`); 0 for FEFF's spectra as they are.
    """

    def __init__(
        self,
        prefix: str | None = None,
        *,
        slots: Sequence[str] = (),
        sample: str | None = None,
        clock: float = DEFAULT_CLOCK,
        seed: int = 0,
        offset: float | None = None,
        port: int | None = None,
        repeater_port: int | None = None,
        log_dir: str | os.PathLike | None = None,
        tuned: bool = True,
        timeout: float = 30.0,
        broadening: float = 0.0,
        axis_offset: float = 0.0,
    ):
        self.prefix = prefix or f"SIM{uuid.uuid4().hex[:6]}:"
        self.slots = list(slots)
        self.args = sim_ioc_args(
            slots=self.slots,
            sample=sample,
            clock=clock,
            seed=seed,
            offset=offset,
            tuned=tuned,
            broadening=broadening,
            axis_offset=axis_offset,
        )
        self.port = port
        self.repeater_port = repeater_port
        self.log_dir = Path(log_dir) if log_dir else None
        self.timeout = timeout
        self.process: ManagedProcess | None = None
        self._repeater: ManagedProcess | None = None

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> SimBeamline:
        if self.process is not None and self.process.alive():
            return self
        check_slots(self.slots)
        if self.port is None:
            self.port, rep = free_ports(2)
            if self.repeater_port is None:
                # ours to run: without one, libca warns and caproto's client spawns an orphan
                self.repeater_port = rep
                self._repeater = start_repeater(rep)
        self.process = start_ioc(
            self.args,
            prefix=self.prefix,
            probe_pv=self.prefix + PROBE_PV,
            server_port=self.port,
            repeater_port=self.repeater_port,
            name=f"sim-beamline-{self.prefix.strip(':')}",
            log_dir=self.log_dir,
            timeout=self.timeout,
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self._repeater is not None:
            self._repeater.stop()
            self._repeater = None

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def __enter__(self) -> SimBeamline:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what clients need ------------------------------------------------------------------
    @property
    def prefixes(self) -> dict[str, str]:
        """PV prefix of each part: ``mono``, ``det``, ``sample``, ``ring``."""
        p = self.prefix
        return {
            "mono": p + "Mono:",
            "det": p + "Det:",
            "sample": p + "Sample:",
            "ring": p + "Ring:",
        }

    def client_env(self) -> dict[str, str]:
        """The Channel Access environment a client process needs to reach this IOC (set it
        before importing epics/ophyd)."""
        if self.port is None:
            raise RuntimeError("start the sim beamline first")
        return loopback_ca_env(self.port, self.repeater_port)

    def devices(self, name_prefix: str = "", timeout: float = 10.0) -> BeamlineDevices:
        """Connected ophyd devices (:class:`xas_bluesky.beamline.devices.BeamlineDevices`); set
        :meth:`client_env` in ``os.environ`` before the first call."""
        from xas_bluesky.beamline.devices import make_devices

        return make_devices(self.prefix, name_prefix=name_prefix, timeout=timeout)

    def true_offset(self) -> float:
        """The simulation's true mono offset (eV), read over Channel Access."""
        return float(self._read(self.prefix + "Mono:Sim:Offset-SP")[0])

    def _read(self, pvname: str):
        """One Channel Access read with caproto's sync client, on this IOC's port only.

        ``repeater=False``: caproto would otherwise spawn a repeater daemon that outlives us."""
        from caproto.sync.client import read

        with environ(self.client_env()):
            return read(pvname, timeout=5.0, repeater=False).data
