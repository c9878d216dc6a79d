"""caproto PV groups of the simulated beamline: mono, detectors, sample changer, storage ring.

The groups share one :class:`SimState` (clock, random generator, samples, beam model) held by the
top-level IOC, so the detectors see the mono's *true* photon energy (readback + calibration
offset) and the sample in the beam.  All physics is in :mod:`sim_iocs.physics`.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import numpy as np
from caproto import AlarmSeverity, AlarmStatus, ChannelType
from caproto.server import PVGroup, pvproperty

from sim_iocs.physics import (
    DEFAULT_COUNT_TIME,
    ENERGY_LIMITS,
    FULL_SCALE,
    Beam,
    Clock,
    Sample,
    SpectrumError,
    measured_like,
    parse_slot_spec,
)

__all__ = [
    "SimState",
    "MonoGroup",
    "DetectorGroup",
    "SampleChangerGroup",
    "RingGroup",
    "GLITCHES",
    "parse_glitches",
]

_WAVEFORM_CHARS = 4096


@dataclass
class SimState:
    """What the groups of one IOC process share."""

    clock: Clock
    rng: np.random.Generator
    samples: dict[str, Sample]
    current: str
    beam: Beam = field(default_factory=Beam)
    true_offset: float = 0.0
    #: Gaussian FWHM (eV) and energy shift (eV) applied to every sample's spectra
    #: (:func:`~sim_iocs.physics.measured_like`), loaded slots included
    broadening: float = 0.0
    axis_offset: float = 0.0
    #: the mono readback (kept here so detectors need not go through Channel Access)
    readback: float = 530.0

    @property
    def true_energy(self) -> float:
        return self.readback + self.true_offset

    @property
    def sample(self) -> Sample:
        return self.samples[self.current]


def _state(group: PVGroup) -> SimState:
    g = group
    while g is not None:
        state = getattr(g, "state", None)
        if state is not None:
            return state
        g = g.parent
    raise RuntimeError(f"{group} is not part of an IOC with a SimState")


def _char_waveform(name: str, doc: str, read_only: bool = True, value: str = "") -> pvproperty:
    return pvproperty(
        name=name,
        value=value,
        dtype=ChannelType.CHAR,
        max_length=_WAVEFORM_CHARS,
        string_encoding="utf-8",
        read_only=read_only,
        doc=doc,
    )


class MonoGroup(PVGroup):
    """Grating monochromator.

    A put to ``Energy-SP`` completes (put-callback) when the motion is done; the motion takes
    ``Settle-SP + |step| / Velo-SP`` simulated seconds.  Puts outside the control limits are
    refused with a Channel Access error.  The true photon energy is ``Energy-RB + Sim:Offset-SP``
    (the calibration error the beamline does not know); ``Calib:Offset-SP`` holds the offset the
    beamline *measured* (:func:`xas_bluesky.beamline.plans.calibrate_energy`).  A put of N to
    ``Sim:Stick-SP`` makes the next N moves fail silently (a stuck mono): the put completes after
    the settling time, the readback stays where it was, so that point repeats the last energy.

    ``Energy`` presents the same axis as a motor record (caproto's motor fields), so that a stock
    ``ophyd.EpicsMotor`` drives it as it drives a beamline's real mono: a put to ``.VAL`` moves,
    ``.DMOV`` falls and rises around the move, ``.RBV`` follows ``Energy-RB``.
    """

    energy_sp = pvproperty(
        name="Energy-SP",
        value=530.0,
        lower_ctrl_limit=ENERGY_LIMITS[0],
        upper_ctrl_limit=ENERGY_LIMITS[1],
        precision=3,
        units="eV",
        doc="energy setpoint (put-completion when the move is done)",
    )
    energy_rb = pvproperty(
        name="Energy-RB", value=530.0, read_only=True, precision=4, units="eV", doc="readback"
    )
    moving = pvproperty(name="Moving-Sts", value=0, read_only=True, doc="1 while moving")
    done = pvproperty(name="DoneMoving-Sts", value=1, read_only=True, doc="1 when not moving")
    velocity = pvproperty(
        name="Velo-SP", value=10.0, lower_ctrl_limit=0.01, upper_ctrl_limit=1000.0, units="eV/s"
    )
    settle = pvproperty(
        name="Settle-SP", value=0.05, lower_ctrl_limit=0.0, upper_ctrl_limit=10.0, units="s"
    )
    sim_offset = pvproperty(
        name="Sim:Offset-SP",
        value=0.0,
        precision=4,
        units="eV",
        doc="simulation truth: true photon energy = Energy-RB + this",
    )
    calib_offset = pvproperty(
        name="Calib:Offset-SP",
        value=0.0,
        precision=4,
        units="eV",
        doc="measured calibration offset (true = readback + offset), used by the analysis",
    )

    stick = pvproperty(
        name="Sim:Stick-SP",
        value=0,
        lower_ctrl_limit=0,
        upper_ctrl_limit=1000,
        doc="simulation: the next N moves do not happen (the readback stays)",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = asyncio.Lock()

    @sim_offset.startup
    async def sim_offset(self, instance, async_lib):
        await instance.write(_state(self).true_offset)

    @sim_offset.putter
    async def sim_offset(self, instance, value):
        if not math.isfinite(value):
            raise ValueError("offset must be finite")
        _state(self).true_offset = float(value)
        return value

    energy_motor = pvproperty(
        name="Energy",
        value=530.0,
        record="motor",
        precision=3,
        units="eV",
        lower_ctrl_limit=ENERGY_LIMITS[0],
        upper_ctrl_limit=ENERGY_LIMITS[1],
        doc="the energy as a motor record (ophyd.EpicsMotor): VAL moves the same mono as "
        "Energy-SP; RBV, DMOV and MOVN follow it",
    )

    @energy_sp.putter
    async def energy_sp(self, instance, value):
        await self._move(value)
        return value

    @energy_motor.startup
    async def energy_motor(self, instance, async_lib):
        f = instance.field_inst
        await f.user_low_limit.write(ENERGY_LIMITS[0])
        await f.user_high_limit.write(ENERGY_LIMITS[1])
        await f.velocity.write(self.velocity.value)
        await f.engineering_units.write("eV")
        await self._readback(_state(self).readback)
        await f.motor_is_moving.write(0)
        await f.done_moving_to_value.write(1)

    @energy_motor.putter
    async def energy_motor(self, instance, value):
        if not ENERGY_LIMITS[0] <= value <= ENERGY_LIMITS[1]:
            raise ValueError(f"energy {value} outside {ENERGY_LIMITS}")
        f = instance.field_inst
        # the motor record's handshake: DMOV drops at the start of a move and rises at its end
        await f.done_moving_to_value.write(0)
        await f.motor_is_moving.write(1)
        try:
            await self._move(value)
        finally:
            await f.motor_is_moving.write(0)
            await f.done_moving_to_value.write(1)
        return value

    async def _readback(self, value: float) -> None:
        """Both readbacks: ``Energy-RB`` and the motor record's RBV."""
        await self.energy_rb.write(value)
        f = self.energy_motor.field_inst
        await f.user_readback_value.write(value)
        await f.dial_readback_value.write(value)

    async def _move(self, value: float) -> None:
        if not math.isfinite(value):
            raise ValueError("energy must be finite")
        state = _state(self)
        async with self._lock:
            if self.stick.value > 0:  # stuck: settle, report done, stay where we are
                await self.stick.write(self.stick.value - 1)
                await asyncio.sleep(state.clock.real(self.settle.value))
                await self._readback(state.readback)
                return
            start = state.readback
            duration = state.clock.real(
                self.settle.value + abs(value - start) / self.velocity.value
            )
            await self.moving.write(1)
            await self.done.write(0)
            # intermediate readbacks only for moves long enough to be watched
            steps = int(min(20, duration / 0.05))
            for k in range(1, steps + 1):
                await asyncio.sleep(duration / (steps + 1))
                state.readback = start + (value - start) * k / (steps + 1)
                await self._readback(state.readback)
            await asyncio.sleep(duration / (steps + 1) if steps else duration)
            # encoder jitter: the readback is what was reached, not what was asked
            state.readback = float(value + state.rng.normal(0.0, 0.002))
            await self._readback(state.readback)
            await self.moving.write(0)
            await self.done.write(1)


class RingGroup(PVGroup):
    """Storage-ring current (top-up with decay), refreshed twice a (real) second.

    A put of N to ``Sim:Dump-SP`` dumps the beam for N simulated seconds: the current reads 0 at
    once (a suspender on it trips), the photon flux -- so I0 and every signal -- follows, and the
    ring is refilled to full after."""

    current = pvproperty(name="Current-I", value=400.0, read_only=True, precision=3, units="mA")
    dump = pvproperty(
        name="Sim:Dump-SP",
        value=0.0,
        lower_ctrl_limit=0.0,
        upper_ctrl_limit=1e6,
        units="s",
        doc="simulation: dump the beam for this many simulated seconds",
    )

    @current.scan(period=0.5)
    async def current(self, instance, async_lib):
        state = _state(self)
        await instance.write(state.beam.ring.current(state.clock.now()))

    @dump.putter
    async def dump(self, instance, value):
        state = _state(self)
        now = state.clock.now()
        state.beam.ring.dump(now, float(value))
        await self.current.write(state.beam.ring.current(now))
        # the refill shows at once too, not up to a scan period late
        self._refill = asyncio.create_task(self._refilled(state.clock.real(float(value))))
        return value

    async def _refilled(self, delay: float) -> None:
        await asyncio.sleep(delay)
        state = _state(self)
        await self.current.write(state.beam.ring.current(state.clock.now()))


#: glitches ``Det:Sim:Glitch-SP`` may put on the next count of a channel: value and alarm
GLITCHES = ("saturate", "negative", "tiny", "major", "invalid", "nan")
_CHANNELS = ("i0", "tey", "pfy", "it")


def parse_glitches(text: str) -> dict[str, str]:
    """``"tey:saturate,i0:tiny"`` -> ``{"tey": "saturate", "i0": "tiny"}`` (ValueError if bad)."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        channel, _, kind = part.partition(":")
        if channel not in _CHANNELS or kind not in GLITCHES:
            raise ValueError(
                f"glitch {part!r}: expected CHANNEL:KIND, CHANNEL one of {', '.join(_CHANNELS)}, "
                f"KIND one of {', '.join(GLITCHES)}"
            )
        out[channel] = kind
    return out


def _reading(counts: float, glitch: str | None) -> tuple[float, dict]:
    """The value and alarm a counter shows for ``counts`` (full scale and its MAJOR alarm, or a
    requested glitch)."""
    ok = {"status": AlarmStatus.NO_ALARM, "severity": AlarmSeverity.NO_ALARM}
    if glitch == "saturate" or counts >= FULL_SCALE:
        return FULL_SCALE, {"status": AlarmStatus.HIHI, "severity": AlarmSeverity.MAJOR_ALARM}
    if glitch == "negative":
        return -max(abs(counts), 1.0), ok
    if glitch == "tiny":
        return 1e-320, ok
    if glitch == "major":
        return counts, {"status": AlarmStatus.HIGH, "severity": AlarmSeverity.MAJOR_ALARM}
    if glitch == "invalid":
        return counts, {"status": AlarmStatus.READ, "severity": AlarmSeverity.INVALID_ALARM}
    if glitch == "nan":  # a broken readout that raises no alarm
        return math.nan, ok
    return counts, ok


def _counter(name: str, doc: str) -> pvproperty:
    return pvproperty(
        name=name,
        value=0.0,
        read_only=True,
        units="cts",
        lower_ctrl_limit=0.0,
        upper_ctrl_limit=FULL_SCALE,
        alarm_group=name,  # each counter its own alarm (a group's PVs share one by default)
        doc=doc,
    )


class DetectorGroup(PVGroup):
    """Counters: I0 (gold mesh), TEY, PFY and transmission (It), counted together.

    A put of 1 to ``Acquire-Cmd`` counts for ``CountTime-SP`` simulated seconds and completes
    (put-callback) once every channel holds the new counts; ``Count-I`` then has been incremented.
    The counters are 24-bit scalers (control limits 0 and 2^24 - 1): a count beyond full scale
    reads 2^24 - 1 in MAJOR alarm (HIHI).  ``Sim:Glitch-SP`` (``CHANNEL:KIND[,...]``, KIND one of
    :data:`GLITCHES`) spoils the next count of a channel on purpose, then clears itself (``nan``
    reads NaN without an alarm, as a broken readout might).
    """

    acquire = pvproperty(name="Acquire-Cmd", value=0, doc="put 1 to count (put-completion)")
    acquiring = pvproperty(name="Acquiring-Sts", value=0, read_only=True)
    count_time = pvproperty(
        name="CountTime-SP",
        value=DEFAULT_COUNT_TIME,
        lower_ctrl_limit=1e-4,
        upper_ctrl_limit=1000.0,
        precision=4,
        units="s",
    )
    dark_rate = pvproperty(
        name="DarkRate-SP", value=50.0, lower_ctrl_limit=0.0, upper_ctrl_limit=1e9, units="cts/s"
    )
    i0 = _counter("I0-I", "gold mesh")
    tey = _counter("TEY-I", "electron yield")
    pfy = _counter("PFY-I", "partial fluorescence")
    it = _counter("It-I", "transmitted")
    count = pvproperty(name="Count-I", value=0, read_only=True, doc="acquisitions so far")
    glitch = pvproperty(
        name="Sim:Glitch-SP",
        value="",
        dtype=ChannelType.STRING,
        doc="simulation: spoil the next count, e.g. 'tey:saturate,i0:tiny'",
    )

    @glitch.putter
    async def glitch(self, instance, value):
        parse_glitches(value)  # refuse a bad spec with its reason
        return value

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = asyncio.Lock()

    @acquire.putter
    async def acquire(self, instance, value):
        if not value:
            return 0
        state = _state(self)
        async with self._lock:
            await self.acquiring.write(1)
            t = float(self.count_time.value)
            energy, sample = state.true_energy, state.sample
            ring_ma = state.beam.ring.current(state.clock.now() + t / 2)
            await asyncio.sleep(state.clock.real(t))
            counts = state.beam.measure(
                sample, energy, ring_ma, t, state.rng, dark_rate=float(self.dark_rate.value)
            )
            glitches = parse_glitches(self.glitch.value)
            if glitches:
                await self.glitch.write("")
            for key in _CHANNELS:
                value, alarm = _reading(counts[key], glitches.get(key))
                await getattr(self, key).write(value, verify_value=False, **alarm)
            await self.count.write(self.count.value + 1)
            await self.acquiring.write(0)
        return 0


class SampleChangerGroup(PVGroup):
    """Named sample slots.  A put to ``Slot-SP`` (a slot name) moves that sample into the beam and
    completes when it is there; an unknown name is refused with a Channel Access error.
    ``Sim:Load-Cmd`` takes ``NAME=FILE.csv`` (or ``NAME=heldout:[EDGE:]SAMPLE``) to fill a slot at
    run time; a bad spectrum file is refused with the reason."""

    slot = pvproperty(
        name="Slot-SP", value="", dtype=ChannelType.STRING, doc="slot to move into the beam"
    )
    slot_rb = pvproperty(name="Slot-RB", value="", dtype=ChannelType.STRING, read_only=True)
    slots = _char_waveform("Slots-Wfm", "slot names, newline-separated")
    source = _char_waveform("Sim:Source-RB", "where the slot's true spectrum comes from")
    load = _char_waveform("Sim:Load-Cmd", "NAME=SOURCE: fill a slot", read_only=False)
    move_time = pvproperty(name="MoveTime-SP", value=2.0, lower_ctrl_limit=0.0, units="s")

    @slot.startup
    async def slot(self, instance, async_lib):
        state = _state(self)
        await instance.write(state.current)
        await self._publish(state)

    async def _publish(self, state: SimState) -> None:
        await self.slot_rb.write(state.current)
        await self.slots.write("\n".join(state.samples))
        sample = state.sample
        await self.source.write(", ".join(s.source for s in sample.spectra) or "blank")

    @slot.putter
    async def slot(self, instance, value):
        state = _state(self)
        value = str(value).strip()
        if value not in state.samples:
            raise ValueError(f"no slot named {value!r}")
        if value != state.current:
            await asyncio.sleep(state.clock.real(self.move_time.value))
            state.current = value
        await self._publish(state)
        return value

    @load.putter
    async def load(self, instance, value):
        state = _state(self)
        try:
            name, spectra = parse_slot_spec(str(value))
        except SpectrumError as exc:
            raise ValueError(str(exc)) from None
        spectra = [measured_like(x, state.broadening, state.axis_offset) for x in spectra]
        state.samples[name] = Sample(name, spectra)
        await self._publish(state)
        return value
