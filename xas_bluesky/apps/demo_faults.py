"""The fault drill of ``xas-bluesky demo --faults``: the simulated beamline misbehaves on schedule.

:func:`fault_schedule` draws, from the demo's seed alone, which faults strike before which point
of the primary stream; :class:`FaultDrill` is a RunEngine callback that injects each one into the
simulated beamline when the event of the point before it is emitted (so the fault strikes the
next point, and a rewind never injects it twice):

- ``glitch``: ``Det:Sim:Glitch-SP`` spoils the next count -- a saturated TEY, a negative TEY, a
  tiny positive I0 (mu overflows), an I0 in INVALID alarm, a NaN TEY;
- ``dump``: ``Ring:Sim:Dump-SP`` dumps the beam; the demo's ring-current suspender (the
  profile's kind, installed with ``--faults``) trips, the scan waits for the refill and resumes;
- ``stick``: ``Mono:Sim:Stick-SP`` makes the next move fail silently, so that point repeats the
  previous point's energy;
- ``ioc-restart``: the score IOC (hosted by the demo's analysis) is stopped and started again
  on its port while the scan runs, on a thread of its own.

What the analysis made of them (``flagged_points``, ``gaps``, ``ioc_restarts`` of the JSON) is
read from its own counters, not from this schedule; the schedule itself is reported as
``faults`` (what was injected, and when).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Fault", "FaultDrill", "fault_schedule", "GLITCH_DRILL"]

logger = logging.getLogger(__name__)

#: the glitches of the drill (``Det:Sim:Glitch-SP`` specs), each once
GLITCH_DRILL = ("tey:saturate", "tey:negative", "i0:tiny", "i0:invalid", "tey:nan")
#: simulated seconds the drill's beam dump lasts
DUMP_SECONDS = 30.0


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: ``kind`` strikes point ``point`` (1-based, primary stream).

    Attributes
    ----------
    point
        The primary-stream point it strikes (injected when point ``point - 1`` is emitted).
    kind
        ``"glitch"``, ``"dump"``, ``"stick"`` or ``"ioc-restart"``.
    arg
        The glitch spec, or the dump's duration in simulated seconds ("" otherwise).
    """

    point: int
    kind: str
    arg: str = ""


def fault_schedule(seed: int, first_pass: int, max_points: int) -> list[Fault]:
    """The drill's faults for ``seed``: the same seed gives the same schedule.

    Three glitches, the beam dump and the stuck mono strike points of the coarse first pass
    (its energies are fixed, so these faults hit the same energies whatever the analysis
    answers); the score IOC restarts right after the coarse pass, while the plan waits for its
    scores; the other two glitches strike the adaptive part, where a run that stops early
    (confident) never reaches them.  Points 1 and 2 are never struck (the running I0 median
    needs good points first).

    Parameters
    ----------
    seed
        The demo's ``--seed``.
    first_pass
        Points of the coarse first pass (14 with the default step).
    max_points
        The point budget.

    Returns
    -------
    list of Fault
        Sorted by point, at most one fault per point.
    """
    rng = random.Random(f"xas-bluesky fault drill {int(seed)}")
    coarse = list(range(3, first_pass + 1))
    later = list(range(first_pass + 2, max_points + 1))
    glitches = list(GLITCH_DRILL)
    rng.shuffle(glitches)
    picks = rng.sample(coarse, min(5, len(coarse)))
    faults = [Fault(p, "glitch", g) for p, g in zip(picks[:3], glitches[:3], strict=False)]
    if len(picks) > 3:
        faults.append(Fault(picks[3], "dump", repr(DUMP_SECONDS)))
    if len(picks) > 4:
        faults.append(Fault(picks[4], "stick"))
    # right after the coarse pass, while the plan waits for its scores: always reached
    faults.append(Fault(first_pass + 1, "ioc-restart"))
    late = rng.sample(later, min(len(glitches) - 3, len(later)))
    faults += [Fault(p, "glitch", g) for p, g in zip(late, glitches[3:], strict=False)]
    return sorted(faults, key=lambda f: f.point)


class FaultDrill:
    """RunEngine callback that injects :func:`fault_schedule`'s faults into the sim beamline.

    Parameters
    ----------
    schedule
        The faults.
    sim_prefix
        PV prefix of the simulated beamline (``SimBeamline.prefix``).
    restart_ioc
        Stops and starts the score IOC (``ScoreServer.restart``); None skips that fault.
    say
        Prints one progress line.

    Notes
    -----
    The puts go through ophyd signals connected by :meth:`connect` (Channel Access, the
    RunEngine's thread waits for each put: a few milliseconds).  A fault whose put fails is
    reported in :attr:`injected` with its error; the run goes on.
    """

    def __init__(
        self,
        schedule: list[Fault],
        sim_prefix: str,
        *,
        restart_ioc: Callable[[], None] | None = None,
        say: Callable[[str], None] | None = None,
    ):
        self.schedule = {f.point - 1: f for f in schedule}
        self.prefix = sim_prefix
        self.restart_ioc = restart_ioc
        self.say = say or (lambda text: None)
        #: what was injected: the fault's fields, ``time`` (s since the run started) and ``error``
        self.injected: list[dict[str, Any]] = []
        self._signals: dict[str, Any] = {}
        self._primary: set[str] = set()
        self._t0 = time.time()
        self._threads: list[threading.Thread] = []

    def connect(self, timeout: float = 10.0) -> FaultDrill:
        """Connect the simulation PVs the drill puts to."""
        from ophyd import EpicsSignal

        for key, suffix in (
            ("glitch", "Det:Sim:Glitch-SP"),
            ("dump", "Ring:Sim:Dump-SP"),
            ("stick", "Mono:Sim:Stick-SP"),
        ):
            sig = EpicsSignal(self.prefix + suffix, name=f"drill_{key}")
            sig.wait_for_connection(timeout=timeout)
            self._signals[key] = sig
        return self

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self._t0 = float(doc.get("time", time.time()))
        elif name == "descriptor" and doc.get("name") == "primary":
            self._primary.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self._primary:
            fault = self.schedule.pop(int(doc["seq_num"]), None)
            if fault is not None:
                self._inject(fault)

    def _inject(self, fault: Fault) -> None:
        entry: dict[str, Any] = {**asdict(fault), "time": round(time.time() - self._t0, 3)}
        entry["error"] = None
        try:
            if fault.kind == "glitch":
                self._signals["glitch"].put(fault.arg, wait=True)
            elif fault.kind == "dump":
                self._signals["dump"].put(float(fault.arg), wait=True)
            elif fault.kind == "stick":
                self._signals["stick"].put(1, wait=True)
            elif fault.kind == "ioc-restart":
                if self.restart_ioc is None:
                    raise RuntimeError("no score IOC to restart")
                t = threading.Thread(target=self._restart, name="drill-ioc-restart", daemon=True)
                self._threads.append(t)
                t.start()
            else:
                raise ValueError(f"unknown fault kind {fault.kind!r}")
        except Exception as exc:  # a drill that fails to inject must not end the scan
            logger.exception("fault drill: could not inject %s", fault)
            entry["error"] = f"{type(exc).__name__}: {exc}"
        self.injected.append(entry)
        what = f"{fault.kind} {fault.arg}".strip()
        self.say(f"  drill: {what} before point {fault.point}")

    def _restart(self) -> None:
        assert self.restart_ioc is not None
        try:
            self.restart_ioc()
        except Exception:
            logger.exception("fault drill: the score IOC restart failed")

    def close(self, timeout: float = 15.0) -> None:
        """Wait for a score-IOC restart still under way."""
        for t in self._threads:
            t.join(timeout)

    @property
    def not_reached(self) -> list[dict[str, Any]]:
        """Scheduled faults the run ended before (their point was never measured)."""
        return [asdict(f) for f in sorted(self.schedule.values(), key=lambda f: f.point)]
