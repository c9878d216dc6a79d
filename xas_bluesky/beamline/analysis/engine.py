"""The live XANES analysis as a synchronous engine: documents in, match summaries out.

:class:`AnalysisEngine` is an event-model ``DocumentRouter``.  It follows XAS runs (start
documents that :func:`~xas_bluesky.contracts.is_xas_start` accepts; every other run is ignored),
turns each primary-stream ``event`` or ``event_page`` into mu(E) points, scores them against
every candidate structure with :class:`~xas_bluesky.science.compare.Comparator` on
:meth:`~AnalysisEngine.flush`, and hands each :class:`~xas_bluesky.contracts.MatchSummary` to
its sinks (:mod:`.sinks`: the score PVs, the analysis run, tiled's match record).

No threads and no EPICS here: the caller decides when to score (the worker thread of
:class:`~xas_bluesky.beamline.analysis.worker.LiveXASAnalysis` flushes after every batch of
queued documents, so one update covers every point that arrived meanwhile); unit tests drive the
engine with plain documents and an in-memory sink.  An exception of ours is reported to the
sinks as an ``Error`` status; it never reaches the caller.

Every point is checked before it is scored (:mod:`.readings`: alarms, range, negative counts,
I0 and ring current, mu not finite); a flagged point is counted, named and never scored.  Events
are keyed by ``seq_num``: one that repeats a number already handled (a resumed plan re-sends
the rewound point) is counted as a duplicate and not scored again; numbers that never arrive
are counted as gaps (status Warning).  What the engine keeps per run and across runs is bounded
(``docs/faults.rst``).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from event_model import DocumentRouter, pack_event_page

from xas_bluesky.beamline.analysis.readings import ReadingChecks, RunReadings
from xas_bluesky.beamline.analysis.run import CappedList, RunState
from xas_bluesky.beamline.analysis.samples import SamplePosteriors, sample_key
from xas_bluesky.beamline.analysis.sinks import AnalysisSink
from xas_bluesky.beamline.catalog import load_candidate_set
from xas_bluesky.contracts import (
    DEFAULT_MODE,
    NO_CANDIDATES,
    REQUIRED_FIELDS,
    TOP_K,
    is_xas_start,
)
from xas_bluesky.resources import candidates_file
from xas_bluesky.science.candidates import CandidateSet, PredictionCache
from xas_bluesky.science.compare import Comparator, MatchResult
from xas_bluesky.science.spectra import mu_from_channels, noise_from_scatter

__all__ = ["AnalysisEngine"]

logger = logging.getLogger(__name__)

#: finished runs whose result, analysis uid and event times the engine keeps (the oldest go)
MAX_RUNS = 64
#: event times kept per run (the newest), for latency bookkeeping
MAX_EVENT_TIMES = 10_000
#: engine-level error messages kept (the newest; ``errors.dropped`` counts the rest)
MAX_ERRORS = 200
#: seq_nums of flagged points a run remembers (a repeat of one is scored if good)
MAX_FLAGGED_SEQS = 10_000


class _Bounded(OrderedDict):
    """A dict that forgets its oldest entries beyond ``cap``."""

    def __init__(self, cap: int):
        super().__init__()
        self.cap = cap

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        while len(self) > self.cap:
            self.popitem(last=False)


class AnalysisEngine(DocumentRouter):
    """Follow XAS runs, score candidates on :meth:`flush`, hand summaries to ``sinks``.

    Parameters
    ----------
    sinks
        :class:`~xas_bluesky.beamline.analysis.sinks.AnalysisSink` s, called in order.
    candidates
        Default candidates when a start document names none: a structure file (XYZ/SDF/SMILES),
        a :class:`~xas_bluesky.science.candidates.CandidateSet`, or None for the shipped library
        of the run's edge.
    cache
        :class:`~xas_bluesky.science.candidates.PredictionCache` (a fresh one when None).
    tiled_client
        tiled container that ``candidates: "tiled:<spec>"`` start documents load from
        (:func:`~xas_bluesky.beamline.catalog.load_candidate_set`).
    fields
        Override the data keys of energy/i0/signal (``{"energy": ..., "i0": ..., "signal": ...}``).
    counts
        Channels are counts: Poisson noise per point.  Otherwise the noise is estimated from
        the point-to-point scatter (with ``sigma_floor``).
    top_k
        Candidates listed in a summary's ``top_names``.
    comparator_kwargs
        Extra keywords of :class:`~xas_bluesky.science.compare.Comparator` (the model's
        calibration is applied by default).
    comparator_factory
        Builds the comparator instead of :class:`~xas_bluesky.science.compare.Comparator`.
    checks
        Thresholds of the per-point checks (:class:`~.readings.ReadingChecks`: alarm severity,
        saturation, I0 fraction of its running median, ring current, absurd mu).
    max_runs
        Finished runs kept in :attr:`results`, :attr:`analysis_uids` and :attr:`event_times`.
    open_world
        :class:`~xas_bluesky.beamline.analysis.open_world.OpenWorldWorker`: functional groups
        and ``in_library`` of every run, computed on its own thread and published with the
        scores (a status ``NoMatch`` when ``in_library`` < 0.5); None: off.  Runs whose start
        document has ``candidates: "none:"`` (:data:`~xas_bluesky.contracts.NO_CANDIDATES`)
        get groups only.
    open_world_wait
        Seconds the run's stop waits for the open-world result with every point.
    """

    def __init__(
        self,
        sinks: Iterable[AnalysisSink] = (),
        *,
        candidates: str | CandidateSet | None = None,
        cache: PredictionCache | None = None,
        tiled_client: Any = None,
        fields: Mapping[str, str] | None = None,
        counts: bool = True,
        sigma_floor: float = 1e-4,
        top_k: int = TOP_K,
        comparator_kwargs: Mapping[str, Any] | None = None,
        comparator_factory: Callable[..., Any] | None = None,
        checks: ReadingChecks | None = None,
        max_runs: int = MAX_RUNS,
        open_world: Any = None,
        open_world_wait: float = 30.0,
    ):
        super().__init__()
        self.sinks: list[AnalysisSink] = list(sinks)
        self.default_candidates = candidates
        self.tiled_client = tiled_client
        self.cache = cache or PredictionCache()
        self.fields_override = dict(fields or {})
        self.counts = counts
        self.sigma_floor = sigma_floor
        self.top_k = top_k
        self.comparator_kwargs = dict(comparator_kwargs or {})
        self.checks = checks or ReadingChecks()
        self.open_world = open_world
        self.open_world_wait = float(open_world_wait)
        self._comparator_factory = comparator_factory or Comparator
        self._comparators: dict[str, Any] = {}
        self._runs: dict[str, RunState] = {}
        self._desc_run: dict[str, RunState] = {}
        #: raw run uid -> the final match result (the last ``max_runs`` runs)
        self.results: dict[str, MatchResult | None] = _Bounded(max_runs)
        #: raw run uid -> uid of its analysis run (where a sink opened one; the last ``max_runs``)
        self.analysis_uids: dict[str, str] = _Bounded(max_runs)
        #: raw run uid -> (event times by point count); for latency bookkeeping (the last
        #: ``max_runs`` runs, the newest ``MAX_EVENT_TIMES`` points of each)
        self.event_times: dict[str, dict[int, float]] = _Bounded(max_runs)
        #: per sample, the latest finished result of each edge (both edges of one molecule)
        self.samples = SamplePosteriors()
        #: raw run uid -> its final joint posterior with the sample's other edges
        #: (:class:`~.samples.SampleJoint`; runs with one edge have none)
        self.joint_results: dict[str, Any] = _Bounded(max_runs)
        #: failures so far (the newest ``MAX_ERRORS``; ``errors.dropped`` counts the rest)
        self.errors: CappedList = CappedList(MAX_ERRORS)

    # -- entry points ---------------------------------------------------------------------------
    def __call__(self, name: str, doc: dict, validate: bool = False):
        """Route one document (never raises: a failure is reported to the sinks)."""
        try:
            return super().__call__(name, doc, validate)
        except Exception as exc:
            self.report_exception(f"{name} document", exc)
            return name, doc

    def flush(self) -> None:
        """Score every run's points that arrived since the last flush; publish the updates."""
        try:
            for run in list(self._runs.values()):
                self._score_run(run)
        except Exception as exc:  # never let a caller's thread die of us
            self.report_exception("analysis update", exc)

    def prepare(self, candidates: CandidateSet) -> None:
        """Build the comparator of ``candidates`` now, so a run using them starts at once."""
        self.comparator_for(candidates)

    def report_exception(self, what: str, exc: BaseException) -> None:
        """Log ``exc``, keep it in :attr:`errors` and show it on the sinks' status."""
        msg = f"{what}: {type(exc).__name__}: {exc}"
        logger.exception("live analysis failed in %s", what)
        self.errors.append(msg)
        self._status("Error", msg)

    def report_problem(self, message: str) -> None:
        """A problem that belongs to no run (e.g. the worker dropped events): kept in
        :attr:`errors`, shown on the sinks' status as Warning."""
        logger.warning("live analysis: %s", message)
        self.errors.append(message)
        self._status("Warning", message)

    # -- sinks ----------------------------------------------------------------------------------
    def _call_sinks(self, hook: str, *args) -> None:
        for sink in self.sinks:
            try:
                getattr(sink, hook)(*args)
            except Exception as exc:  # one failing sink must not stop the scoring or the others
                logger.exception("analysis sink %r failed in %s", sink, hook)
                self.errors.append(f"analysis sink {type(sink).__name__}: {exc}")

    def _status(self, status: str, message: str, run: RunState | None = None) -> None:
        if run is None:
            self._call_sinks("status", status, message)
        else:
            self._call_sinks("update", run, run.summary(status, message, self.top_k), False)

    # -- documents ------------------------------------------------------------------------------
    def start(self, doc):
        if not is_xas_start(doc):
            return doc
        element = str(doc["xas_element"])
        mode = str(doc.get("xas_mode") or DEFAULT_MODE)
        fields = {**doc["xas_fields"], **self.fields_override}
        offset = doc.get("energy_offset") or 0.0
        try:
            offset = float(offset)
        except (TypeError, ValueError):
            offset = 0.0
        run = RunState(doc, element, mode, fields, offset if math.isfinite(offset) else 0.0)
        run.readings = RunReadings(self.checks, fields, self.counts)
        self._runs[run.uid] = run
        self.event_times[run.uid] = {}
        # a fresh run: show it at once so that a plan never reads the previous run's scores
        self._status("Predicting", f"preparing candidates for {element} K", run)
        try:
            if doc.get("candidates") == NO_CANDIDATES:
                if self.open_world is None:
                    raise ValueError("no candidates and no open-world analysis: nothing to do")
                run.open_world_only = True
            else:
                run.candidates = self._candidates(doc, element)
                run.comparator = self.comparator_for(run.candidates)
                run.comparator.reset()
            if self.open_world is not None:
                self.open_world.open(run.uid, element, run.candidates, self._world_kwargs(run))
                run.open_world = True
        except Exception as exc:
            run.fatal = f"candidates: {type(exc).__name__}: {exc}"
            logger.exception("live analysis: no candidates for run %s", run.uid)
            self.errors.append(run.fatal)
            self._status("Error", run.fatal, run)
            return doc
        if run.candidates is not None and run.candidates.skipped:
            run.problems.append(
                f"{len(run.candidates.skipped)} candidate(s) skipped: {run.candidates.skipped[0]}"
            )
        self._call_sinks("run_opened", run)
        if run.analysis_uid is not None:
            self.analysis_uids[run.uid] = run.analysis_uid
        status = "Warning" if run.problems else "Running"
        if run.candidates is None:
            what = "open world: no candidates, functional groups only"
        else:
            merged = len(run.candidates.merged)
            note = f" ({merged} duplicate geometries merged)" if merged else ""
            what = f"{len(run.candidates)} candidates{note}"
        self._status(status, "; ".join(run.problems) or what, run)
        return doc

    def descriptor(self, doc):
        run = self._runs.get(doc["run_start"])
        if run is None:
            return doc
        keys = doc.get("data_keys", {})
        if doc.get("name", "primary") == "primary" and all(
            run.fields[k] in keys for k in REQUIRED_FIELDS
        ):
            run.descriptors.add(doc["uid"])
            self._desc_run[doc["uid"]] = run
            if run.readings is not None:
                run.readings.describe(keys)
        return doc

    def event(self, doc):
        if doc["descriptor"] in self._desc_run:
            self.event_page(pack_event_page(doc))
        return doc

    def event_page(self, doc):
        run = self._desc_run.get(doc["descriptor"])
        if run is None or run.fatal:
            return doc
        data = doc["data"]
        f = run.fields
        seq_nums = list(doc.get("seq_num", []))
        n = len(data[f["energy"]])
        gaps_before = run.seqs.missing
        # a repeated seq_num (a resumed plan re-sends the rewound point) is counted once and
        # not scored again -- unless the first reading was flagged: then this one may be scored
        new: list[int] = []
        again: set[int] = set()
        repeats: list[int] = []
        for j in range(n):
            if j >= len(seq_nums) or run.seqs.add(seq_nums[j]):
                new.append(j)
            elif seq_nums[j] in run.flagged_seqs:
                new.append(j)
                again.add(j)
            else:
                repeats.append(j)
        run.n_duplicates += len(repeats) + len(again)
        if repeats:
            run.problems.append(
                f"{len(repeats)} repeated event(s) (seq_num "
                f"{', '.join(str(seq_nums[j]) for j in repeats)[:60]}) counted once"
            )
        if not new:
            return doc

        def column(role: str) -> np.ndarray | None:
            key = f.get(role)
            if not key or key not in data:
                return None
            try:
                return np.asarray(data[key], dtype=float)[new]
            except (TypeError, ValueError):  # an optional column we cannot read: not checked
                if role in REQUIRED_FIELDS:
                    raise
                return None

        energy = np.asarray(data[f["energy"]], dtype=float)[new] + run.energy_offset
        i0, sig = column("i0"), column("signal")
        assert i0 is not None and sig is not None  # the descriptor holds them (followed)
        ring, i0_alarm, sig_alarm = (
            column("ring_current"),
            column("i0_alarm"),
            column("signal_alarm"),
        )
        times = list(doc.get("time", []))
        mu, sigma, ok, problems = self._mu(run, i0, sig)
        readings = run.readings
        i0_ref = readings.i0_reference(i0.tolist()) if readings is not None else None
        for k, j in enumerate(new):
            repeat = j in again
            if not repeat:
                run.n_events += 1
                if j < len(times):
                    ev_times = self.event_times.setdefault(run.uid, {})
                    ev_times[run.n_events] = float(times[j])
                    if len(ev_times) > MAX_EVENT_TIMES:
                        del ev_times[next(iter(ev_times))]
            if j < len(times):
                run.last_event_time = float(times[j])
            seq = seq_nums[j] if j < len(seq_nums) else None
            point = run.n_events if seq is None else seq
            why = ""
            if not ok[k]:
                why = problems[k] or "bad reading"
            elif not math.isfinite(energy[k]):
                why = "energy not finite"
            elif readings is not None:
                why = readings.check(
                    float(i0[k]), float(sig[k]), mu=float(mu[k]), sigma=float(sigma[k]),
                    i0_reference=i0_ref,
                    ring_current=None if ring is None else float(ring[k]),
                    i0_alarm=None if i0_alarm is None else float(i0_alarm[k]),
                    signal_alarm=None if sig_alarm is None else float(sig_alarm[k]),
                )  # fmt: skip
                if not why:
                    i0_ref = readings.i0_reference([])
            if why:
                if repeat:
                    run.problems.append(f"point {point} measured again, still flagged: {why}")
                    continue
                run.n_bad += 1
                run.problems.append(f"point {point} flagged: {why}")
                if seq is not None and len(run.flagged_seqs) < MAX_FLAGGED_SEQS:
                    run.flagged_seqs.add(seq)
                continue
            if repeat:  # its first reading was flagged: this one replaces it
                run.n_bad -= 1
                run.flagged_seqs.discard(seq)
                run.problems.append(f"point {point} measured again and scored")
            run.pending.append((float(energy[k]), float(mu[k]), float(sigma[k])))
            run.last_energy = float(energy[k])
        if run.seqs.missing > gaps_before:
            run.problems.append(
                f"{run.seqs.missing} event(s) missing so far (seq_num gaps, up to "
                f"{run.seqs.max_seen})"
            )
        return doc

    def stop(self, doc):
        run = self._runs.get(doc["run_start"])
        if run is None:
            return doc
        expected = (doc.get("num_events") or {}).get("primary")
        if run.descriptors and isinstance(expected, int) and expected > run.seqs.max_seen:
            run.missing_tail = expected - run.seqs.max_seen
            run.problems.append(
                f"{run.missing_tail} event(s) at the end of the run never received "
                f"(the stop document counts {expected})"
            )
        self._score_run(run)
        run.stopped = True
        try:
            self._final_novelty(run)
            self._finish(run, doc)
        finally:
            self._runs.pop(run.uid, None)
            for d in run.descriptors:
                self._desc_run.pop(d, None)
        return doc

    # -- the science ----------------------------------------------------------------------------
    def _candidates(self, start: dict, element: str) -> CandidateSet:
        spec = start.get("candidates") or self.default_candidates
        if isinstance(spec, CandidateSet):
            if spec.edge != element:
                raise ValueError(f"candidate set is for the {spec.edge} edge, run is {element}")
            return spec.deduplicated()
        if isinstance(spec, str) and spec.startswith("tiled:"):
            if self.tiled_client is None:
                raise ValueError(f"candidates {spec!r} need a tiled client")
            return load_candidate_set(self.tiled_client, spec[len("tiled:") :]).deduplicated()
        if spec is None:
            spec = candidates_file(element)
        # read on this (the analysis worker's) thread, within the readers' size limits
        return self.cache.from_file(spec, element)

    def _world_kwargs(self, run: RunState) -> dict[str, Any]:
        """The comparator keywords of the open-world analysis: the live comparator's."""
        if run.candidates is not None:
            return {**run.candidates.calibration, **self.comparator_kwargs}
        from xas_bluesky.science.compare import calibration_for
        from xas_bluesky.science.library_cache import shipped_metadata

        return {**calibration_for(shipped_metadata(run.element)), **self.comparator_kwargs}

    def _points(self, run: RunState) -> list[tuple[float, float, float]]:
        return list(zip(run.energies, run.mus, run.sigmas, strict=True))

    def _take_novelty(self, run: RunState) -> bool:
        """Pick up the open-world worker's newest result of ``run``; True when it is new."""
        if self.open_world is None or not run.open_world:
            return False
        nov = self.open_world.result(run.uid)
        if nov is None or nov is run.novelty:
            return False
        run.novelty = nov
        return True

    def _final_novelty(self, run: RunState) -> None:
        """At the run's stop: the open-world result with every point, published (an event of
        the analysis run too) when it is new."""
        if self.open_world is None or not run.open_world or run.fatal:
            return
        points = self._points(run)
        nov = self.open_world.finish(run.uid, points, self.open_world_wait) if points else None
        if nov is None or nov.version == run.novelty_published:
            return  # the last scored update (an analysis-run event) carried it already
        run.novelty = nov
        run.novelty_published = nov.version
        if nov.n_points < len(points):
            run.problems.append(
                f"open-world result from {nov.n_points} of {len(points)} points (not finished "
                f"within {self.open_world_wait:g} s)"
            )
        status = "Warning" if run.problems or run.gaps else "Running"
        msg = run.problems[-1] if run.problems else ""
        self._call_sinks("update", run, run.summary(status, msg, self.top_k), True)

    def comparator_for(self, cands: CandidateSet):
        """The comparator of a candidate set (building one costs O(C x E) copies: one is kept
        per candidate set, and reset per run)."""
        comp = self._comparators.get(cands.ident)
        if comp is None:
            kwargs = {**cands.calibration, **self.comparator_kwargs}
            comp = self._comparator_factory(
                cands.energy, cands.mean, cands.std, cands.names, **kwargs
            )
            if len(self._comparators) > 4:
                self._comparators.pop(next(iter(self._comparators)))
            self._comparators[cands.ident] = comp
        return comp

    def _mu(self, run: RunState, i0: np.ndarray, sig: np.ndarray):
        res = mu_from_channels(
            run.mode, i0, sig, counts=self.counts, strict=False,
            i0_name=run.fields["i0"], signal_name=run.fields["signal"],
        )  # fmt: skip
        problems = [""] * i0.size
        bad = np.flatnonzero(~res.ok)
        for idx, msg in zip(bad, res.problems, strict=False):
            # the engine names the point by its seq_num, not its index in this page
            problems[int(idx)] = msg.replace(f" at point {int(idx)}", "")
        sigma = res.sigma
        if sigma is None:  # currents: noise from the scatter of what we have so far
            good = res.mu[res.ok]
            est = noise_from_scatter(np.concatenate([run.mus[-50:], good]), floor=self.sigma_floor)
            sigma = np.full(i0.size, max(est, self.sigma_floor))
        sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, self.sigma_floor)
        return res.mu, sigma, res.ok, problems

    def _score_run(self, run: RunState) -> None:
        if run.fatal or (run.comparator is None and not run.open_world_only):
            return
        if not run.pending and run.n_events == run.n_scored:
            if not run.stopped and self._take_novelty(run):  # groups caught up: show them
                status = "Warning" if run.problems or run.gaps else "Running"
                msg = run.problems[-1] if run.problems else ""
                self._call_sinks("update", run, run.summary(status, msg, self.top_k), False)
            return
        try:
            self._score_points(run)
        except Exception as exc:  # this run's analysis is over; the caller never hears of it
            run.fatal = f"scoring failed: {type(exc).__name__}: {exc}"
            logger.exception("live analysis of run %s failed", run.uid)
            self.errors.append(run.fatal)
            self._status("Error", run.fatal, run)

    def _score_points(self, run: RunState) -> None:
        pts = run.pending
        run.pending = []
        if pts and run.comparator is None:  # open world only: the groups' worker scores them
            for point in pts:
                run.energies.append(point[0])
                run.mus.append(point[1])
                run.sigmas.append(point[2])
        elif pts:
            e, y, s = (np.array(c) for c in zip(*pts, strict=True))
            try:
                run.comparator.add_points(e, y, s)
            except ValueError:  # refused as a whole (nothing added): one point at a time
                for point in pts:
                    try:
                        run.comparator.add_points(*(np.array([v]) for v in point))
                    except ValueError as exc:
                        run.n_bad += 1
                        run.problems.append(f"point at {point[0]:.3f} eV refused: {exc}")
                    else:
                        run.energies.append(point[0])
                        run.mus.append(point[1])
                        run.sigmas.append(point[2])
            else:
                run.energies.extend(e.tolist())
                run.mus.extend(y.tolist())
                run.sigmas.extend(s.tolist())
        run.n_scored = run.n_events
        if run.comparator is not None and run.comparator.n_points:
            run.result = run.comparator.result()
            key = sample_key(run.start)
            run.joint = self.samples.joint(key, run.uid, run.element, run.result, run.candidates)
            # live too: a run of the sample's other edge open at the same time (one plan
            # measuring both edges point by point) combines with this edge's newest result
            self.samples.record(key, run.uid, run.element, run.result, run.candidates)
        if self.open_world is not None and run.open_world and pts:
            self.open_world.submit(run.uid, self._points(run))
        self._take_novelty(run)
        if run.novelty is not None:
            run.novelty_published = run.novelty.version
        status = "Warning" if run.problems or run.gaps else "Running"
        msg = run.problems[-1] if run.problems else ""
        self._call_sinks("update", run, run.summary(status, msg, self.top_k), True)

    def _finish(self, run: RunState, raw_stop: dict) -> None:
        if self.open_world is not None and run.open_world:
            self.open_world.discard(run.uid)
        if run.fatal:
            self._status("Error", run.fatal, run)
            self._call_sinks("run_closed", run, run.summary("Error", run.fatal), raw_stop)
            return
        if run.comparator is not None and run.comparator.n_points:
            # the final word independent of how the worker batched the points (load, timing):
            # two workers, or a replay, publish the same p for the same run
            run.result = run.comparator.settled_result()
            run.joint = self.samples.joint(
                sample_key(run.start), run.uid, run.element, run.result, run.candidates
            )
        self.results[run.uid] = run.result
        if run.joint is not None:
            self.joint_results[run.uid] = run.joint
        self.samples.record(sample_key(run.start), run.uid, run.element, run.result, run.candidates)
        # sinks that keep the result go first: a failure of theirs is part of the final status
        self._call_sinks("run_closing", run, raw_stop)
        exit_status = raw_stop.get("exit_status", "success")
        done = "Warning" if run.problems or run.gaps else "Done"
        counts = [
            f"{n} {what}"
            for n, what in (
                (run.n_bad, "flagged"),
                (run.n_duplicates, "repeated"),
                (run.gaps, "missing"),
                (run.result.n_rejected if run.result is not None else 0, "set aside as glitches"),
            )
            if n
        ]
        msg = (
            f"run finished ({exit_status}): {run.n_scored} points"
            + (f", {', '.join(counts)}" if counts else "")
            + (f"; {run.problems[-1]}" if run.problems else "")
        )
        summary = run.summary(done, msg, self.top_k)
        self._call_sinks("update", run, summary, False)
        self._call_sinks("run_closed", run, summary, raw_stop)
