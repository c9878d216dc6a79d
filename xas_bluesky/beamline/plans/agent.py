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
  the evaluation function (the score PVs read at the end of each scan, through the RunEngine);
- through the queue server, :func:`queued_acquisition` is the acquisition plan (queued by
  name, its arguments plain JSON) and :class:`TiledOutcomes` the evaluation function, which
  reads the outcomes that plan recorded from tiled.

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

__all__ = [
    "IdentificationOptimizer",
    "XASAcquisition",
    "queued_acquisition",
    "TiledOutcomes",
    "ID_KEY",
    "RUNNER_KEYS",
]

#: bluesky-adaptive's key of a suggestion's identity (``bluesky_adaptive.protocols.ID_KEY``)
ID_KEY = "_id"
#: the start-document keys by which ``QueueserverOptimizationRunner`` recognises its acquisition
#: (``bluesky_adaptive.queueserver.CORRELATION_UID_KEY`` and the suggestions)
RUNNER_KEYS = ("blop_correlation_uid", "blop_suggestions")
#: fields of an outcome: score PV attribute of :class:`MatchScores` -> outcome key
_OUTCOME_FIELDS = (
    ("best_name", "best_name"),
    ("best_prob", "best_probability"),
    ("npoints", "n_points"),
    ("joint_best_name", "joint_best_name"),
    ("joint_best_prob", "joint_best_probability"),
)


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
        #: one per sample, in every suggestion: the runs of a sample's edges combine by it,
        #: whichever process (or queued plan) measures them
        self.sample_uids = {name: str(uuid.uuid4()) for name in self._samples}

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
        """Up to ``num_points`` (default 1) suggestions ``{"_id", "sample", "edge",
        "sample_uid"}``."""
        picks = self._open()[: max(int(num_points or 1), 1)]
        out = []
        for _, _, name, edge in picks:
            sid = self._id(name, edge)
            self._pending.add(sid)
            out.append(
                {ID_KEY: sid, "sample": name, "edge": edge, "sample_uid": self.sample_uids[name]}
            )
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
            uid = str(s.get("sample_uid") or self.sample_uids.setdefault(sample, str(uuid.uuid4())))
            run_md = {**(md or {}), "sample_uid": uid, "suggestion_id": str(s[ID_KEY])}
            scan = adaptive_xanes_scan(
                self.mono, self.det, self.scores, edge=edge, sample=sample,
                sample_changer=self.sample_changer, md=run_md, **self.scan_kwargs,
            )  # fmt: skip
            # a run key of its own: the optimize plan's run stays open around it
            run_uid = yield from bpp.set_run_key_wrapper(scan, f"xas-{s[ID_KEY]}")
            out = {ID_KEY: s[ID_KEY], "sample": sample, "edge": edge, "run_uid": run_uid}
            for attr, key in _OUTCOME_FIELDS:
                out[key] = yield from bps.rd(getattr(self.scores, attr))
            _numbers(out)
            self.outcomes[str(s[ID_KEY])] = out
            ids.append(s[ID_KEY])
        return tuple(ids)

    def evaluate(self, uid, suggestions: Sequence[Mapping]) -> list[dict]:
        """The evaluation function: the outcome of every suggestion of the acquisition."""
        return [dict(self.outcomes[str(s[ID_KEY])]) for s in suggestions]


def _numbers(out: dict) -> dict:
    """Probabilities as floats (NaN where there is none), the point count as an int."""
    for key in ("best_probability", "joint_best_probability"):
        v = out.get(key)
        out[key] = float(v) if v is not None else math.nan
    if out.get("n_points") is not None:
        out["n_points"] = int(out["n_points"])
    return out


def queued_acquisition(mono, det, scores, sample_changer, suggestions, *, md=None, **scan_kwargs):
    """The acquisition plan of bluesky-adaptive's ``QueueserverOptimizationRunner``.

    One run (the runner's: its ``md`` carries the runner's correlation uid) holds one adaptive
    XANES run per suggestion, each in a run key of its own and without the runner's keys (so
    that the runner takes only this run's stop for the end of the acquisition), and an
    ``outcomes`` event per suggestion: the score PVs when that scan ended.
    :class:`TiledOutcomes` reads them back.  The profile binds the devices (``agent_acquire``).
    """
    acq = XASAcquisition(mono, det, scores, sample_changer, **scan_kwargs)
    md = dict(md or {})
    inner_md = {k: v for k, v in md.items() if k not in RUNNER_KEYS}
    ids = [str(s[ID_KEY]) for s in suggestions]

    @bpp.run_decorator(md={"plan_name": "queued_acquisition", "suggestion_ids": ids, **md})
    def outer():
        for s in suggestions:
            yield from acq([s], md=inner_md)
            yield from bps.trigger_and_read([scores], name="outcomes")
        return ids

    return (yield from outer())


class TiledOutcomes:
    """The evaluation function of ``QueueserverOptimizationRunner``: the outcomes
    :func:`queued_acquisition` recorded, read from tiled.

    Parameters
    ----------
    client
        A tiled client of the catalog the profile writes runs to.
    timeout
        Seconds to wait for the run's ``outcomes`` stream to reach tiled (the profile's writer
        sits behind a buffer, so the stop document can reach the runner first).
    """

    def __init__(self, client: Any, timeout: float = 60.0) -> None:
        self.client = client
        self.timeout = float(timeout)

    def __call__(self, uid: str, suggestions: Sequence[Mapping]) -> list[dict]:
        import time

        deadline = time.monotonic() + self.timeout
        while True:
            try:
                table = self.client[uid]["outcomes"].read()
                if len(table[f"{self._prefix(table)}best_name"]) >= len(suggestions):
                    break
            except (KeyError, ValueError):  # not (all) written yet
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no outcomes of run {uid} in tiled within {self.timeout:g} s")
            time.sleep(0.5)
        prefix = self._prefix(table)
        out = []
        for i, s in enumerate(suggestions):
            row = {ID_KEY: s[ID_KEY], "sample": s["sample"], "edge": s["edge"]}
            row["run_uid"] = str(_cell(table[f"{prefix}run_uid"], i))
            for attr, key in _OUTCOME_FIELDS:
                row[key] = _cell(table[f"{prefix}{attr}"], i)
            out.append(_numbers(row))
        return out

    @staticmethod
    def _prefix(table) -> str:
        """The score device's name as its data keys carry it (``scores_best_name``)."""
        for key in table.keys():
            if str(key).endswith("best_name") and not str(key).endswith("joint_best_name"):
                return str(key)[: -len("best_name")]
        raise KeyError("no best_name column")


def _cell(column, i: int):
    value = column[i]
    return value.item() if hasattr(value, "item") else value
