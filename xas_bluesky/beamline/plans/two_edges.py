"""Both K edges of one sample in one plan: each point where it tells most about the molecule.

:func:`two_edge_xanes_scan` opens one run per edge (bluesky's run keys: both runs are open at
once, so each keeps its own primary stream and the analysis scores each at its own edge), sharing
a ``sample_uid`` so that the live analysis combines them into the joint posterior
(``Match:Joint:*``).  After a coarse pass at every edge, the next point goes to the edge whose
analysis promises the most information per second (:class:`~xas_bluesky.science.adaptive.
TwoEdgePolicy`: ``Match:NextGain-I`` over the dwell plus the mono's move), until the joint
posterior is confident or the budget of both edges is spent.  As in
:func:`~xas_bluesky.beamline.plans.adaptive.adaptive_xanes_scan`, the analysis is read only
through the score PVs, every decision goes to an ``adaptive`` stream of the run it was taken
in, and checkpoints surround every point.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from xas_bluesky.beamline.devices import mode_fields
from xas_bluesky.beamline.plans.adaptive import _read_scores, _wait_scored
from xas_bluesky.beamline.plans.xanes import _read_list, _sample_name, measure_point, xas_metadata
from xas_bluesky.science.adaptive import JOINT_THRESHOLD, STOP_NO_ANALYSIS, TwoEdgePolicy

__all__ = ["two_edge_xanes_scan"]

#: a reading of the score PVs that shows another run (an open-world update of the other edge
#: published between the wait and the read) is taken again, at most this many times
_READ_TRIES = 5


def two_edge_xanes_scan(
    mono,
    det,
    scores,
    *,
    edges: Sequence[str] = ("O", "N"),
    mode: str = "TEY",
    threshold: float = JOINT_THRESHOLD,
    max_points: int = 98,
    coarse_step: float = 2.0,
    dwell: float = 1.0,
    mono_speed: float = 20.0,
    score_timeout: float = 10.0,
    sample: str | None = None,
    sample_changer=None,
    candidates: str | Mapping[str, str] | None = None,
    energy_offset: float | None = None,
    readables=(),
    ring_current=None,
    md: dict | None = None,
):
    """Adaptive XANES at both K edges of one sample, steered point by point between them.

    Parameters
    ----------
    mono, det, scores
        As for :func:`~xas_bluesky.beamline.plans.adaptive.adaptive_xanes_scan`.
    edges
        The edges, in the order of their coarse passes (default O, then N).
    mode
        ``"TEY"`` (default), ``"PFY"`` or ``"TRANS"``.
    threshold
        Stop when the joint posterior's best probability (``Match:Joint:BestProb-I``) reaches
        it (default :data:`~xas_bluesky.science.adaptive.JOINT_THRESHOLD`, 0.95).  The joint's
        outlier term (both edges' eps) caps it near 0.96, so 0.99 is never reached: see
        ``docs/real_samples.rst`` for how often the default stops and is right.
    max_points
        Point budget of both edges together, the coarse passes included (default 98: twice the
        one-edge scan's 49).
    coarse_step, dwell, score_timeout
        As for :func:`~xas_bluesky.beamline.plans.adaptive.adaptive_xanes_scan`.
    mono_speed
        Mono slew rate (eV/s) the choice of edge charges a move with: a point at the other edge
        (~130 eV away) must promise ``1 + 130 / (mono_speed x dwell)`` times the information.
    sample, sample_changer, energy_offset, readables, ring_current
        As for :func:`~xas_bluesky.beamline.plans.xanes.xanes_scan`.
    candidates
        One candidate file for every edge, or one per edge (``{"O": ..., "N": ...}``); the
        joint ranks the molecules every edge's list has.
    md
        Added to both start documents; a ``sample_uid`` given here is kept, else one is made.

    Returns
    -------
    dict
        The raw run uid of each edge.
    """
    edges = tuple(edges)
    policy = TwoEdgePolicy(
        edges, threshold=threshold, max_points=max_points, coarse_step=coarse_step,
        dwell=dwell, mono_speed=mono_speed,
    )  # fmt: skip
    if energy_offset is None:
        energy_offset = float((yield from bps.rd(mono.calib_offset)))
    sample = yield from _sample_name(sample_changer, sample)
    fields = mode_fields(mono, det, mode, ring_current)
    read_list = _read_list(mono, det, readables, ring_current)
    extra = dict(md or {})
    sample_uid = str(extra.pop("sample_uid", None) or uuid.uuid4())

    def start_md(edge: str) -> dict:
        cands = candidates.get(edge) if isinstance(candidates, Mapping) else candidates
        out = {
            "plan_name": "two_edge_xanes_scan",
            "plan_args": {
                "edges": list(edges),
                "mode": mode,
                "threshold": threshold,
                "max_points": max_points,
                "coarse_step": coarse_step,
                "mono_speed": mono_speed,
                "sample": sample,
            },
            "detectors": [det.name],
            "motors": [mono.name],
            "hints": {"dimensions": [([fields["energy"]], "primary")]},
            "adaptive": {
                "threshold": threshold,
                "max_points": max_points,
                "coarse_points": [float(e) for e in policy.first_pass(edge)],
                "score_timeout": score_timeout,
                "edges": list(edges),
            },
            **xas_metadata(
                mono,
                det,
                edge=edge,
                mode=mode,
                sample_name=sample,
                candidates=cands,
                energy_offset=energy_offset,
                ring_current=ring_current,
            ),  # fmt: skip
        }
        out.update(extra)
        out["sample_uid"] = sample_uid
        return out

    def at(edge: str, plan):
        return (yield from bpp.set_run_key_wrapper(plan, f"xas-{edge}"))

    run_uids: dict[str, str] = {}
    measured: dict[str, list[float]] = {e: [] for e in edges}
    offers: dict[str, tuple[float | None, float]] = {}
    reason: str | None = None

    def score(edge: str):
        """Wait for the edge's last point to be scored; its offer and the joint, or None."""
        for _ in range(_READ_TRIES):
            ok = yield from _wait_scored(scores, run_uids[edge], len(measured[edge]), score_timeout)
            if not ok:
                return None
            reading = yield from at(edge, _read_scores(scores, score_timeout))
            if reading is None:  # the score PVs stayed disconnected
                return None
            if reading[scores.run_uid.name]["value"] == run_uids[edge]:
                nxt = float(reading[scores.next_energy.name]["value"])
                gain = float(reading[scores.next_gain.name]["value"])
                offers[edge] = (nxt if np.isfinite(nxt) else None, gain)
                joint = float(reading[scores.joint_best_prob.name]["value"])
                return joint, str(reading[scores.joint_best_name.name]["value"])
        return None

    @bpp.stage_decorator([mono, det])
    def inner():
        nonlocal reason
        for edge in edges:
            run_uids[edge] = yield from at(edge, bps.open_run(md=start_md(edge)))
        yield from bps.mv(det.count_time, float(dwell))
        joint = (float("nan"), "")
        for edge in edges:
            for energy in policy.first_pass(edge):
                yield from at(edge, measure_point(mono, det, float(energy), read_list))
                measured[edge].append(float(energy))
            got = yield from score(edge)
            if got is None:
                reason = f"{STOP_NO_ANALYSIS}: no score for the {edge} edge's coarse pass"
                break
            joint = got
        mono_energy = float(measured[edges[-1]][-1])
        while reason is None:
            edge, decision = policy.decide(
                {e: np.array(v) for e, v in measured.items()}, joint[0], offers, mono_energy
            )
            if decision.stop:
                total = sum(len(v) for v in measured.values())
                reason = (
                    f"{decision.reason}: joint best {joint[1]} p={joint[0]:.4f} after {total} "
                    f"points ({', '.join(f'{e} {len(measured[e])}' for e in edges)}; threshold "
                    f"{threshold:g}, budget {max_points})"
                )
                break
            assert edge is not None and decision.energy is not None
            yield from at(edge, measure_point(mono, det, decision.energy, read_list))
            measured[edge].append(decision.energy)
            mono_energy = decision.energy
            got = yield from score(edge)
            if got is None:
                reason = (
                    f"{STOP_NO_ANALYSIS}: no score for {edge} point {len(measured[edge])} "
                    f"within {score_timeout:g} s"
                )
                break
            joint = got
        for edge in edges:
            yield from at(edge, bps.close_run(exit_status="success", reason=reason))
        return dict(run_uids)

    return (yield from inner())
