"""Which sample, at which edge, next: the identification behind bluesky-adaptive's protocols.

bluesky-adaptive 1.0 drives an experiment through an ``Optimizer`` (``suggest`` / ``ingest`` /
``get_best_points``, optionally ``should_stop``), an acquisition plan and an evaluation function,
bound in an ``OptimizationProblem`` and run by its ``plans.optimize`` (or, through the queue
server, its ``QueueserverOptimizationRunner``).  Here:

- :class:`IdentificationOptimizer` (the ``Optimizer``) suggests ``{"sample", "edge"}`` pairs:
  every sample's first edge first, then another edge of the samples whose identification is
  least sure (the joint posterior over the sample's edges when there is one), until every
  sample is identified at ``threshold`` or has been measured at every edge;
- :class:`XASAcquisition` is both the acquisition plan (one
  :func:`~xas_bluesky.beamline.plans.adaptive_xanes_scan` per suggestion, steered as always by
  the score PVs, each run carrying the sample's ``sample_uid`` so that its edges combine) and
  the evaluation function (the score PVs read at the end of each scan, through the RunEngine).

The classes satisfy the protocols structurally: the package does not import bluesky-adaptive
(the ``adaptive`` extra installs it for the tests and for users).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp

from xas_bluesky.beamline.plans.adaptive import adaptive_xanes_scan

__all__ = ["IdentificationOptimizer", "XASAcquisition", "ID_KEY"]

#: bluesky-adaptive's key of a suggestion's identity (``bluesky_adaptive.protocols.ID_KEY``)
ID_KEY = "_id"


def _finite(p) -> float:
    """A probability for ranking outcomes: -1 where there is none (None or NaN)."""
    return float(p) if p is not None and math.isfinite(p) else -1.0


@dataclass
class _Sample:
    name: str
    edges: tuple[str, ...]
    measured: dict[str, dict] = field(default_factory=dict)  # edge -> outcome

    def confidence(self) -> float:
        """The best probability known for the sample: the joint's when there is one."""
        best = 0.0
        for out in self.measured.values():
            joint = _finite(out.get("joint_best_probability"))
            best = max(best, joint if joint >= 0 else _finite(out.get("best_probability")))
        return best


class IdentificationOptimizer:
    """Suggest the next (sample, edge) to measure until every sample is named confidently.

    Parameters
    ----------
    samples : sequence of str
        Sample names (slots of the sample changer).
    edges : sequence of str
        The K edges each sample may be measured at, in order of preference (default O, then N).
    threshold : float
        A sample whose best probability (the joint over its edges once two are measured)
        reaches it needs no further edge.
    """

    def __init__(
        self,
        samples: Sequence[str],
        edges: Sequence[str] = ("O", "N"),
        threshold: float = 0.99,
    ) -> None:
        if not samples:
            raise ValueError("no samples")
        self.edges = tuple(edges)
        self.threshold = float(threshold)
        self._samples = {str(s): _Sample(str(s), self.edges) for s in samples}
        self._pending: set[str] = set()

    @staticmethod
    def _id(sample: str, edge: str) -> str:
        return f"{sample}:{edge}"

    def _open(self) -> list[tuple[float, int, str, str]]:
        """(confidence, edges measured, sample, next edge) of every sample still worth a run."""
        out = []
        for s in self._samples.values():
            left = [
                e
                for e in s.edges
                if e not in s.measured and self._id(s.name, e) not in self._pending
            ]
            if left and s.confidence() < self.threshold:
                out.append((s.confidence(), len(s.measured), s.name, left[0]))
        return sorted(out, key=lambda t: (t[1], t[0], t[2]))  # unmeasured first, least sure next

    def suggest(self, num_points: int | None = None) -> list[dict[str, Any]]:
        """Up to ``num_points`` (default 1) suggestions ``{"_id", "sample", "edge"}``."""
        picks = self._open()[: max(int(num_points or 1), 1)]
        out = []
        for _, _, name, edge in picks:
            sid = self._id(name, edge)
            self._pending.add(sid)
            out.append({ID_KEY: sid, "sample": name, "edge": edge})
        return out

    def ingest(self, points: Sequence[Mapping]) -> None:
        """Take outcomes (:meth:`XASAcquisition.evaluate`): each names its ``sample`` and
        ``edge`` (or carries an ``_id`` of a suggestion)."""
        for p in points:
            name, edge = p.get("sample"), p.get("edge")
            if (name is None or edge is None) and isinstance(p.get(ID_KEY), str):
                name, _, edge = p[ID_KEY].rpartition(":")
            if name not in self._samples:
                raise ValueError(f"outcome of an unknown sample: {dict(p)!r}")
            self._samples[name].measured[str(edge)] = dict(p)
            self._pending.discard(self._id(str(name), str(edge)))

    def register_failures(self, suggestions: Sequence[Mapping]) -> None:
        """A failed acquisition is not measured: its suggestion may come again."""
        for s in suggestions:
            self._pending.discard(str(s.get(ID_KEY)))

    def should_stop(self) -> tuple[bool, str | None]:
        """Stop when no sample needs another edge."""
        if self._open() or self._pending:
            return False, None
        sure = sum(s.confidence() >= self.threshold for s in self._samples.values())
        return True, f"{sure} of {len(self._samples)} samples at p >= {self.threshold:g}"

    def get_best_points(self) -> list[tuple[Any, Mapping, Mapping]]:
        """Per measured sample, its most informative outcome: ``(_id, suggestion, outcome)``."""
        out: list[tuple[Any, Mapping, Mapping]] = []
        for s in self._samples.values():
            if not s.measured:
                continue
            edge, best = max(
                s.measured.items(),
                key=lambda kv: (_finite(kv[1].get("joint_best_probability")),
                                _finite(kv[1].get("best_probability"))),
            )  # fmt: skip
            out.append((self._id(s.name, edge), {"sample": s.name, "edge": edge}, best))
        return out


class XASAcquisition:
    """The acquisition plan and evaluation function of :class:`IdentificationOptimizer`.

    Call it as bluesky-adaptive calls an acquisition plan: one adaptive XANES run per
    suggestion; the uid it returns is the tuple of suggestion ids, which :meth:`evaluate` (the
    evaluation function) turns into the outcomes read from the score PVs when each scan ended.

    Parameters
    ----------
    mono, det, scores, sample_changer
        The devices of :func:`~xas_bluesky.beamline.plans.adaptive_xanes_scan`.
    **scan_kwargs
        Further keywords of the scan (``threshold``, ``max_points``, ``candidates``, ...).
    """

    __name__ = "XASAcquisition"  # bluesky-adaptive names the plan in its run's metadata

    def __init__(self, mono, det, scores, sample_changer, **scan_kwargs) -> None:
        self.mono, self.det, self.scores = mono, det, scores
        self.sample_changer = sample_changer
        self.scan_kwargs = scan_kwargs
        self.sample_uids: dict[str, str] = {}  # one per sample: its edges' runs combine
        self.outcomes: dict[str, dict] = {}

    def __call__(self, suggestions, actuators=(), sensors=None, md=None):
        ids = []
        for s in suggestions:
            sample, edge = str(s["sample"]), str(s["edge"])
            uid = self.sample_uids.setdefault(sample, str(uuid.uuid4()))
            run_md = {**(md or {}), "sample_uid": uid, "suggestion_id": str(s[ID_KEY])}
            scan = adaptive_xanes_scan(
                self.mono, self.det, self.scores, edge=edge, sample=sample,
                sample_changer=self.sample_changer, md=run_md, **self.scan_kwargs,
            )  # fmt: skip
            # a run key of its own: the optimize plan's run stays open around it
            run_uid = yield from bpp.set_run_key_wrapper(scan, f"xas-{s[ID_KEY]}")
            out = {ID_KEY: s[ID_KEY], "sample": sample, "edge": edge, "run_uid": run_uid}
            sc = self.scores
            for key, sig in (
                ("best_name", sc.best_name),
                ("best_probability", sc.best_prob),
                ("n_points", sc.npoints),
                ("joint_best_name", sc.joint_best_name),
                ("joint_best_probability", sc.joint_best_prob),
            ):
                out[key] = yield from bps.rd(sig)
            ok = out.get("best_probability") is not None
            out["best_probability"] = float(out["best_probability"]) if ok else math.nan
            jp = out.get("joint_best_probability")
            out["joint_best_probability"] = float(jp) if jp is not None else math.nan
            self.outcomes[str(s[ID_KEY])] = out
            ids.append(s[ID_KEY])
        return tuple(ids)

    def evaluate(self, uid, suggestions: Sequence[Mapping]) -> list[dict]:
        """The evaluation function: the outcome of every suggestion of the acquisition."""
        return [dict(self.outcomes[str(s[ID_KEY])]) for s in suggestions]
