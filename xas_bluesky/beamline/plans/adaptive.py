"""The autonomous XANES scan: measure where the live analysis says the candidates disagree most.

The plan reads the analysis only through the score PVs (:class:`~xas_bluesky.beamline.epics.
devices.MatchScores`), never through Python memory, so the analysis may run in this process, in a
worker process or on another host.  After every point it waits -- with a timeout, on a monitor,
no fixed sleep -- until ``Match:NPoints-I``/``Match:RunUID-I`` show that point scored, then applies
:class:`~xas_bluesky.science.adaptive.AdaptivePolicy`, the same rule the identification benchmark
measures.  Every decision is recorded in an ``adaptive`` event stream, and why the scan stopped is
the stop document's ``reason``.

Checkpoints surround every point (:func:`~xas_bluesky.beamline.plans.xanes.measure_point`): a
pause or a suspender (the ring-current one of the profile) during the wait for a score resumes
by waiting again, never by measuring the point again; one during a point measures that point
(whose event was not emitted) after the resume.  So each energy is measured once, and the
analysis, which keys events by ``seq_num``, counts every point once.
"""

from __future__ import annotations

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from ophyd.utils import DisconnectedError, StatusTimeoutError, WaitTimeoutError

from xas_bluesky.beamline.devices import mode_fields
from xas_bluesky.beamline.plans.xanes import _read_list, _sample_name, measure_point, xas_metadata
from xas_bluesky.science.adaptive import (
    NO_MATCH_MIN_POINTS,
    STOP_NO_ANALYSIS,
    STOP_NO_MATCH,
    AdaptivePolicy,
)

__all__ = ["adaptive_xanes_scan"]


def _wait_scored(scores, run_uid: str, n: int, timeout: float):
    """Wait until the score PVs show ``n`` points of ``run_uid`` scored; False on timeout."""
    from bluesky.utils import FailedStatus

    try:
        # the timeout goes to the signal's status (a FailedStatus here), not to the RunEngine's
        # wait, which would end the plan instead of letting it stop with a reason
        yield from bps.abs_set(scores.scored, (run_uid, n), timeout=timeout, wait=True)
    except (FailedStatus, StatusTimeoutError, WaitTimeoutError):
        return False
    return True


def _read_scores(scores, timeout: float):
    """Read the score PVs into the ``adaptive`` stream; None if they stay disconnected for
    ``timeout`` s.  A score IOC that restarts between the wait and the read (its PVs reconnect
    one by one) costs a retry, not the scan: the failed read's event is dropped."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return (yield from bps.trigger_and_read([scores], name="adaptive"))
        except DisconnectedError:
            if time.monotonic() > deadline:
                return None
            yield from bps.sleep(0.2)


def adaptive_xanes_scan(
    mono,
    det,
    scores,
    *,
    edge: str,
    mode: str = "TEY",
    threshold: float = 0.99,
    max_points: int = 49,
    coarse_step: float = 2.0,
    dwell: float = 1.0,
    score_timeout: float = 10.0,
    no_match_min_points: int | None = NO_MATCH_MIN_POINTS,
    sample: str | None = None,
    sample_changer=None,
    candidates: str | None = None,
    energy_offset: float | None = None,
    readables=(),
    ring_current=None,
    md: dict | None = None,
    stop_on: str = "best",
):
    """Adaptive XANES: a coarse pass, then the analysis' recommended energies, until confident.

    Parameters
    ----------
    mono, det
        :class:`~xas_bluesky.beamline.devices.Mono` and
        :class:`~xas_bluesky.beamline.devices.XASDetector`.
    scores
        :class:`~xas_bluesky.beamline.epics.devices.MatchScores` of the live analysis.
    edge
        ``"O"`` or ``"N"`` (K edge).
    mode
        ``"TEY"`` (default), ``"PFY"`` or ``"TRANS"``.
    threshold
        Stop when the best candidate's probability reaches it.
    max_points
        Budget of scored points, the coarse pass included (default 49: 10% of the 0.1 eV grid
        scan).  A point the analysis flagged (``Match:NFlagged-I``: a glitch, a beam dump) is
        not scored and does not count: the scan measures up to ``max_points`` more for them.
    coarse_step
        eV between coarse-pass points across the edge.
    dwell
        Count time per point (s).
    score_timeout
        Seconds to wait for the analysis to score a point; on a timeout the scan stops with
        reason ``analysis-timeout`` rather than measure blind.
    no_match_min_points
        With the analysis' status ``NoMatch`` (``Match:Status-Sts``: the sample is probably none
        of the candidates, ``docs/open_world.rst``) the scan stops with reason ``no-match``, but
        only after the coarse pass and this many points (noise of the first points); None:
        never.
    sample, sample_changer, candidates, energy_offset, readables, ring_current, md
        As for :func:`~xas_bluesky.beamline.plans.xanes.xanes_scan`.  ``md={"sample_uid": ...}``
        ties the runs of one sample's edges together (the joint posterior, ``Match:Joint:*``).
    stop_on
        ``"best"``: stop on this run's best probability (``Match:BestProb-I``); ``"joint"``: on
        the joint posterior over the sample's edges (``Match:Joint:BestProb-I``) once there is
        one, this run's own before.  The joint's outlier term caps it near 0.96: a threshold of
        0.99 is never reached on it.
    """
    if stop_on not in ("best", "joint"):
        raise ValueError(f"stop_on must be 'best' or 'joint', got {stop_on!r}")
    policy = AdaptivePolicy(
        edge, threshold=threshold, max_points=max_points, coarse_step=coarse_step,
        no_match_min_points=no_match_min_points,
    )  # fmt: skip
    first = policy.first_pass()
    if energy_offset is None:
        energy_offset = float((yield from bps.rd(mono.calib_offset)))
    sample = yield from _sample_name(sample_changer, sample)
    fields = mode_fields(mono, det, mode, ring_current)
    read_list = _read_list(mono, det, readables, ring_current)
    _md = {
        "plan_name": "adaptive_xanes_scan",
        "plan_args": {
            "edge": edge,
            "mode": mode,
            "threshold": threshold,
            "max_points": max_points,
            "coarse_step": coarse_step,
            "sample": sample,
            "stop_on": stop_on,
        },
        "detectors": [det.name],
        "motors": [mono.name],
        "hints": {"dimensions": [([fields["energy"]], "primary")]},
        "adaptive": {
            "threshold": threshold,
            "max_points": max_points,
            "coarse_points": [float(e) for e in first],
            "score_timeout": score_timeout,
            "no_match_min_points": no_match_min_points,
        },
        **xas_metadata(
            mono,
            det,
            edge=edge,
            mode=mode,
            sample_name=sample,
            candidates=candidates,
            energy_offset=energy_offset,
            ring_current=ring_current,
        ),
    }
    _md.update(md or {})

    @bpp.stage_decorator([mono, det])
    def inner():
        run_uid = yield from bps.open_run(md=_md)
        # an exception (abort, failure) leaves the RunEngine to close the run with its own status
        reason = None
        yield from bps.mv(det.count_time, float(dwell))
        measured: list[float] = []
        for energy in first:
            yield from measure_point(mono, det, float(energy), read_list)
            measured.append(float(energy))
        while True:
            if not (yield from _wait_scored(scores, run_uid, len(measured), score_timeout)):
                reason = (
                    f"{STOP_NO_ANALYSIS}: no score for point {len(measured)} "
                    f"within {score_timeout:g} s"
                )
                break
            decision_reading = yield from _read_scores(scores, score_timeout)
            if decision_reading is None:
                reason = (
                    f"{STOP_NO_ANALYSIS}: score PVs disconnected after point {len(measured)} "
                    f"for {score_timeout:g} s"
                )
                break
            best = float(decision_reading[scores.best_prob.name]["value"])
            name = decision_reading[scores.best_name.name]["value"]
            if stop_on == "joint":
                joint = float(decision_reading[scores.joint_best_prob.name]["value"])
                if np.isfinite(joint):
                    best = joint
                    name = f"{decision_reading[scores.joint_best_name.name]['value']} (joint)"
            nxt = float(decision_reading[scores.next_energy.name]["value"])
            status = decision_reading[scores.status.name]["value"]
            flagged = int(decision_reading[scores.nflagged.name]["value"])
            decision = policy.decide(
                np.array(measured), best, nxt, status=status, n_flagged=flagged
            )
            if decision.reason == STOP_NO_MATCH:
                message = yield from bps.rd(scores.message)
                reason = f"{STOP_NO_MATCH} after {len(measured)} points: {message}"
                break
            if decision.stop:
                reason = (
                    f"{decision.reason}: best {name} p={best:.4f} after "
                    f"{len(measured)} points (threshold {threshold:g}, "
                    f"budget {max_points}" + (f", {flagged} flagged)" if flagged else ")")
                )
                break
            yield from measure_point(mono, det, decision.energy, read_list)
            measured.append(decision.energy)
        yield from bps.close_run(exit_status="success", reason=reason)
        return run_uid

    return (yield from inner())
