"""ophyd devices of the XAS beamline: monochromator, counters, sample changer.

They speak the PV names of the simulated beamline (:mod:`sim_iocs.beamline`), which follow the
NSLS-II ``Signal-Suffix`` style; a real beamline maps its own PVs by subclassing.

Readings are always fresh: every read-back signal is created with ``auto_monitor=False``, so a
``read()`` after a put-completed acquisition or move makes an explicit Channel Access get rather
than returning a monitor value that may still predate the put (see FACTS.md).

ophyd's events carry a value and a timestamp per data key, no alarm; a descriptor carries a
channel's control limits, no alarm either.  :class:`XASDetector` therefore reads each channel's
EPICS alarm severity as a data key of its own (``det_tey_severity``: the severity that came with
that very reading), and :func:`mode_fields` names the I0 and signal ones in the start document
(``i0_alarm``, ``signal_alarm``), where the live analysis finds them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO, PVPositionerPC, Signal
from ophyd.status import DeviceStatus, Status

from xas_bluesky.contracts import MODES

__all__ = [
    "Mono",
    "XASDetector",
    "SampleChanger",
    "BeamlineDevices",
    "make_devices",
    "SIGNAL_CHANNELS",
    "ChannelSeverity",
    "mode_fields",
]

#: measurement mode (:data:`xas_bluesky.contracts.MODES`) -> the detector channel of its signal
SIGNAL_CHANNELS = dict(zip(MODES, ("tey", "pfy", "it"), strict=True))


class Mono(PVPositionerPC):
    """Grating monochromator energy (eV); a move completes on the IOC's put-callback.

    The reading's field is ``{name}_energy`` (the readback).  ``calib_offset`` is the measured
    calibration (true photon energy = readback + offset), written by ``calibrate_energy``.
    """

    setpoint = Cpt(EpicsSignal, "Energy-SP", kind="normal", put_complete=True)
    readback = Cpt(EpicsSignalRO, "Energy-RB", kind="hinted", auto_monitor=False)
    moving = Cpt(EpicsSignalRO, "Moving-Sts", kind="omitted", auto_monitor=False)
    calib_offset = Cpt(EpicsSignal, "Calib:Offset-SP", kind="config", auto_monitor=False)
    # monitored: only the move timeout reads them, and a monitor saves two round trips per move
    velocity = Cpt(EpicsSignal, "Velo-SP", kind="config", auto_monitor=True)
    settle = Cpt(EpicsSignal, "Settle-SP", kind="config", auto_monitor=True)

    #: seconds a move may take beyond its nominal time before it fails (a dead IOC never calls
    #: back: without a timeout the RunEngine would wait forever)
    timeout_margin = 10.0
    #: XDI's ``Mono.name`` (a beamline's subclass names its grating or crystal, e.g. "Si(111)")
    xdi_name = "grating monochromator"
    #: XDI's ``Mono.d_spacing`` in Angstrom, for a crystal monochromator; None for a grating
    d_spacing: float | None = None

    def __init__(self, prefix: str = "", *, name: str, **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        self.readback.name = f"{self.name}_energy"
        self.setpoint.name = f"{self.name}_energy_setpoint"

    def move(self, position, wait=True, timeout=None, moved_cb=None):
        if timeout is None:
            try:
                nominal = self.settle.get() + abs(position - self.position) / self.velocity.get()
            except Exception:  # no answer: let the move itself report the disconnection
                nominal = 0.0
            timeout = nominal + self.timeout_margin
        return super().move(position, wait=wait, timeout=timeout, moved_cb=moved_cb)


class ChannelSeverity(Signal):
    """The EPICS alarm severity (0 NO_ALARM, 1 MINOR, 2 MAJOR, 3 INVALID) of a sibling channel's
    last reading.

    A channel read with an explicit Channel Access get (``auto_monitor=False``) keeps the
    severity that came with its value; a component declared after the channel is read after it,
    so the event holds the severity of that very value.
    """

    def __init__(self, *, channel: str, **kwargs):
        self._channel = channel
        super().__init__(value=0, **kwargs)

    def get(self, **kwargs) -> int:
        sev = getattr(self.parent, self._channel).alarm_severity
        return 0 if sev is None else int(sev)

    @property
    def timestamp(self) -> float:
        return getattr(self.parent, self._channel).timestamp

    def describe(self):
        desc = super().describe()
        desc[self.name].update(
            dtype="integer", source=f"SEVR of {self.parent.name}.{self._channel}"
        )
        return desc


class XASDetector(Device):
    """I0 (gold mesh), TEY, PFY and transmitted-flux counters, acquired together.

    ``trigger()`` puts 1 to ``Acquire-Cmd`` and completes on the IOC's put-callback, i.e. when
    every channel holds the new counts; the channels are then read with explicit gets.
    ``count_time`` (simulated seconds) is read with every event, so a plan may change the dwell
    between points of one run.  ``<channel>_severity`` is the alarm severity of each channel's
    reading (:class:`ChannelSeverity`).
    """

    acquire = Cpt(EpicsSignal, "Acquire-Cmd", kind="omitted", put_complete=True)
    # a setpoint only plans change (bps.mv waits for it to read back): a monitor is never stale
    count_time = Cpt(EpicsSignal, "CountTime-SP", kind="normal", auto_monitor=True)
    i0 = Cpt(EpicsSignalRO, "I0-I", kind="hinted", auto_monitor=False)
    tey = Cpt(EpicsSignalRO, "TEY-I", kind="hinted", auto_monitor=False)
    pfy = Cpt(EpicsSignalRO, "PFY-I", kind="normal", auto_monitor=False)
    it = Cpt(EpicsSignalRO, "It-I", kind="normal", auto_monitor=False)
    # after the channels: read after them, so each holds the severity of the value just read
    i0_severity = Cpt(ChannelSeverity, channel="i0", kind="normal")
    tey_severity = Cpt(ChannelSeverity, channel="tey", kind="normal")
    pfy_severity = Cpt(ChannelSeverity, channel="pfy", kind="normal")
    it_severity = Cpt(ChannelSeverity, channel="it", kind="normal")
    count = Cpt(EpicsSignalRO, "Count-I", kind="omitted", auto_monitor=False)
    dark_rate = Cpt(EpicsSignal, "DarkRate-SP", kind="config")

    #: seconds an acquisition may take beyond its count time before it fails
    timeout_margin = 10.0
    #: what each channel measures, for XDI's ``Detector.*`` (a beamline's subclass says its own)
    descriptions = {
        "i0": "gold-mesh drain current",
        "tey": "total electron yield, sample drain current",
        "pfy": "partial fluorescence yield",
        "it": "transmitted flux",
    }

    def __init__(self, prefix: str = "", *, name: str, **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        self._last_count: int | None = None

    def trigger(self) -> Status:
        # pyepics reports a put-callback as done even when the IOC refused the put: check that
        # the IOC really counted (Count-I went up) before the channels are read.  The count
        # before is the one seen after the previous trigger: one round trip less per point.
        before = self._last_count
        if before is None:
            before = self.count.get(use_monitor=False)
        # a dead IOC never calls back: fail after the count time (simulated seconds, never less
        # than real ones) plus a margin rather than hang the RunEngine
        status = DeviceStatus(self, timeout=float(self.count_time.get()) + self.timeout_margin)

        def _counted(put_status) -> None:
            if not put_status.success:
                status.set_exception(put_status.exception() or RuntimeError("acquire failed"))
                return
            try:
                after = self.count.get(use_monitor=False)
            except Exception as exc:  # IOC gone between the put and the check
                status.set_exception(exc)
                return
            if after != before + 1:
                status.set_exception(
                    RuntimeError(
                        f"{self.name}: the IOC did not count (Count-I {before} -> {after})"
                    )
                )
            else:
                status.set_finished()

        # no timeout: a count may legitimately last long; a dead IOC fails the put instead
        self.acquire.set(1).add_callback(_counted)
        return status

    def field(self, channel: str) -> str:
        """The data key of ``channel`` (``"i0"``, ``"tey"``, ...) in this device's readings."""
        return getattr(self, channel).name


class SampleChanger(Device):
    """Named sample slots.  ``set(name)`` moves that slot into the beam (put-completion)."""

    slot = Cpt(EpicsSignal, "Slot-SP", string=True, put_complete=True, kind="omitted")
    slot_rb = Cpt(EpicsSignalRO, "Slot-RB", string=True, kind="normal", auto_monitor=False)
    slots = Cpt(EpicsSignalRO, "Slots-Wfm", string=True, kind="omitted", auto_monitor=False)

    def __init__(self, prefix: str = "", *, name: str, **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        self.slot_rb.name = f"{self.name}_slot"

    def set(self, value: str) -> Status:
        """Move slot ``value`` into the beam; fails if the IOC refused it (unknown slot)."""
        value = str(value)
        status = DeviceStatus(self, timeout=60.0)

        def _arrived(put_status) -> None:
            try:
                now = self.slot_rb.get(use_monitor=False) if put_status.success else None
            except Exception as exc:
                status.set_exception(exc)
                return
            if now == value:
                status.set_finished()
            else:
                status.set_exception(
                    ValueError(f"{self.name}: slot {value!r} not in the beam (IOC has {now!r})")
                )

        self.slot.set(value).add_callback(_arrived)
        return status

    def slot_names(self) -> list[str]:
        """Names of the loaded slots."""
        text = self.slots.get(use_monitor=False)
        return [s for s in str(text).split("\n") if s]


def mode_fields(
    mono: Mono, det: XASDetector, mode: str = "TEY", ring_current=None
) -> dict[str, str]:
    """The data keys the analysis needs for ``mode``: ``energy``, ``i0`` and ``signal``, the
    alarm severities of I0 and the signal (``i0_alarm``, ``signal_alarm``) where the detector
    reads them, and ``ring_current`` when that signal is given (read with every point)."""
    mode = mode.upper()
    if mode not in SIGNAL_CHANNELS:
        raise ValueError(f"unknown measurement mode {mode!r}: expected one of {', '.join(MODES)}")
    channel = SIGNAL_CHANNELS[mode]
    fields = {
        "energy": mono.readback.name,
        "i0": det.i0.name,
        "signal": det.field(channel),
    }
    for role, ch in (("i0_alarm", "i0"), ("signal_alarm", channel)):
        severity = getattr(det, f"{ch}_severity", None)
        if severity is not None:
            fields[role] = severity.name
    if ring_current is not None:
        fields["ring_current"] = ring_current.name
    return fields


@dataclass
class BeamlineDevices:
    """The devices of one beamline, connected."""

    mono: Mono
    det: XASDetector
    sample_changer: SampleChanger
    ring_current: EpicsSignalRO

    def all(self) -> list:
        return [self.mono, self.det, self.sample_changer, self.ring_current]


def make_devices(
    prefix: str,
    *,
    name_prefix: str = "",
    timeout: float = 10.0,
    ring_current_pv: str | None = None,
) -> BeamlineDevices:
    """Devices of the beamline whose PVs start with ``prefix`` (e.g. ``"SIM:"``), connected.

    ``name_prefix`` is prepended to every device name (to tell two beamlines apart in one
    process); the default names are ``mono``, ``det``, ``sample_changer``, ``ring_current``.
    ``ring_current_pv`` is the storage ring's current, which belongs to the facility, not the
    beamline (NSLS-II: ``"SR:OPS-BI{DCCT:1}I:Real-I"``); default ``prefix + "Ring:Current-I"``
    (the simulated beamline's).
    """
    devs = BeamlineDevices(
        mono=Mono(prefix + "Mono:", name=f"{name_prefix}mono"),
        det=XASDetector(prefix + "Det:", name=f"{name_prefix}det"),
        sample_changer=SampleChanger(prefix + "Sample:", name=f"{name_prefix}sample_changer"),
        ring_current=EpicsSignalRO(
            ring_current_pv or prefix + "Ring:Current-I",
            name=f"{name_prefix}ring_current",
            auto_monitor=False,
        ),
    )
    for d in devs.all():
        d.wait_for_connection(timeout=timeout)
    return devs
