"""ophyd devices over the score PVs (:mod:`xas_bluesky.beamline.epics.score_ioc`).

Plans read the analysis through Channel Access only -- never through Python memory -- so they work
the same with the analysis in this process, in a worker process or on another host.  Every signal
does a fresh get when read (``auto_monitor=False``): monitored values can be stale right after an
update (FACTS.md).

A plan that must wait until its last point has been scored sets :attr:`MatchScores.scored` to
``(run_uid, npoints)``; the set completes when the PVs show that run with at least that many points::

    yield from bps.mv(scores.scored, (run_uid, n))   # FailedStatus after scores.wait_timeout
    best = yield from bps.rd(scores.best_prob)
"""

from __future__ import annotations

import threading

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignalRO, Kind, Signal
from ophyd.status import Status

from xas_bluesky.contracts import DEFAULT_PREFIX, PV_SUFFIXES

__all__ = ["MatchScores", "ScoredSignal"]


def _ro(attr: str, kind: Kind = Kind.normal, **kwargs) -> Cpt:
    return Cpt(EpicsSignalRO, PV_SUFFIXES[attr], kind=kind, auto_monitor=False, **kwargs)


class ScoredSignal(Signal):
    """Set it to ``(run_uid, npoints)``: the status finishes when the score PVs show that run
    scored with at least ``npoints`` points (or fails after the parent's ``wait_timeout``).

    A monitor on ``Match:Update-I`` wakes the check; the check itself uses fresh gets, never the
    monitored value, and polls every 0.25 s besides (so a wait that begins while the score IOC
    is away -- restarting, when no monitor can be added -- finishes once it is back).
    ``run_uid=None`` accepts any run.
    """

    def set(self, value, *, timeout: float | None = None, settle_time=None, **kwargs):
        run_uid, npoints = value
        parent: MatchScores = self.parent
        timeout = parent.wait_timeout if timeout is None else timeout
        status = Status(obj=self, timeout=timeout)
        wake = threading.Event()

        def on_update(*args, **kw):  # runs on the CA thread: no CA calls here
            wake.set()

        try:
            cid = parent.update.subscribe(on_update, run=False)
        except Exception:  # the IOC is away (restarting): poll until it is back
            cid = None

        def check() -> None:
            while not status.done:
                try:
                    n = int(parent.npoints.get(use_monitor=False))
                    uid = parent.run_uid.get(use_monitor=False)
                    if n >= int(npoints) and (run_uid is None or uid == run_uid):
                        self._readback = (uid, n)
                        status.set_finished()
                        return
                except Exception:  # IOC away (restarting): keep trying until the timeout
                    pass
                wake.wait(0.25)  # the monitor normally wakes us well before this
                wake.clear()

        def cleanup(st) -> None:
            wake.set()
            if cid is None:
                return
            try:
                parent.update.unsubscribe(cid)
            except Exception:
                pass

        status.add_callback(cleanup)
        threading.Thread(target=check, name="match-scored-wait", daemon=True).start()
        return status


class MatchScores(Device):
    """The structure-match score PVs as an ophyd device (read-only).

    Parameters
    ----------
    prefix
        The score IOC's prefix, e.g. ``"XAS:"``.
    wait_timeout
        Seconds :attr:`scored` waits before its status fails.

    Examples
    --------
    >>> scores = MatchScores("XAS:", name="scores")
    >>> scores.wait_for_connection()
    >>> scores.best_name.get(), scores.top_names_list()
    """

    best_name = _ro("best_name", Kind.hinted, string=True)
    best_prob = _ro("best_prob", Kind.hinted)
    entropy = _ro("entropy")
    npoints = _ro("npoints")
    nflagged = _ro("nflagged")
    next_energy = _ro("next_energy")
    next_gain = _ro("next_gain")
    run_uid = _ro("run_uid", string=True)
    top_names = _ro("top_names", string=True)
    top_scores = _ro("top_scores")
    status = _ro("status", string=True)
    message = _ro("message", Kind.config, string=True)
    heartbeat = _ro("heartbeat", Kind.omitted)
    offset = _ro("offset")
    best_smiles = _ro("best_smiles", string=True)
    last_energy = _ro("last_energy")
    ncandidates = _ro("ncandidates", Kind.config)
    update = _ro("update", Kind.omitted)
    groups = _ro("groups", string=True)
    group_scores = _ro("group_scores")
    in_library = _ro("in_library")
    joint_edges = _ro("joint_edges", Kind.config, string=True)
    joint_best_name = _ro("joint_best_name", string=True)
    joint_best_smiles = _ro("joint_best_smiles", Kind.omitted, string=True)
    joint_best_prob = _ro("joint_best_prob")
    joint_top_names = _ro("joint_top_names", Kind.omitted, string=True)
    joint_top_scores = _ro("joint_top_scores", Kind.omitted)
    joint_ncandidates = _ro("joint_ncandidates", Kind.config)
    scored = Cpt(ScoredSignal, value=("", 0), kind=Kind.omitted)

    def __init__(self, prefix: str = DEFAULT_PREFIX, *, wait_timeout: float = 10.0, **kwargs):
        super().__init__(prefix, **kwargs)
        self.wait_timeout = wait_timeout

    def top_names_list(self) -> list[str]:
        """``Match:TopNames-Wfm`` split into names (fresh get)."""
        text = self.top_names.get(use_monitor=False) or ""
        return [n for n in text.split("\n") if n]

    def groups_list(self) -> list[str]:
        """``Match:Groups-Wfm`` split into group names, most probable first (fresh get)."""
        text = self.groups.get(use_monitor=False) or ""
        return [n for n in text.split("\n") if n]
