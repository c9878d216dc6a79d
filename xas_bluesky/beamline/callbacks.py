"""The live XANES analysis on the Bluesky document stream.

:class:`LiveXASAnalysis` is an event-model ``DocumentRouter`` that follows XAS runs (recognised by
the start document's ``xas_element`` and ``xas_fields``; every other run is ignored), turns each
primary-stream ``event`` or ``event_page`` into mu(E) points, scores them against every candidate
structure with :class:`~xas_bluesky.science.compare.Comparator` and publishes each update to the
score PVs (:class:`~xas_bluesky.beamline.epics.score_ioc.ScoreServer`).

Threads: the RunEngine calls :meth:`LiveXASAnalysis.__call__` on its own thread, which only puts
the document on a queue (microseconds, never raises).  One worker thread does everything else:
candidate predictions, mu, scoring, publishing, the analysis run's documents and tiled writes.
When documents arrive faster than they are scored, the worker takes every queued document before
it scores, so one update covers several points instead of falling behind.  An exception of ours
is logged and shown on ``Match:Status-Sts``/``Match:Message-Name``; it never reaches the RunEngine.

Each followed run gets an analysis run of its own, linked by ``original_run_uid`` (as bluesky's
``LiveDispatcher`` does), emitted to ``analysis_callbacks`` (e.g. a TiledWriter, best behind a
``BufferingWrapper``): one event per update in its ``primary`` stream; it stops after the raw
run's stop document has been handled, possibly later than the raw run.

Candidates are predicted once per (model version, structure geometry) and cached in memory and,
with a tiled client, in tiled (:mod:`xas_bluesky.beamline.catalog`), in batches.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from event_model import DocumentRouter, RunRouter, compose_run, pack_event_page

from xas_bluesky.beamline.epics.score_ioc import TOP_K, ScoreServer, ScoreUpdate

__all__ = [
    "CandidateSet",
    "PredictionCache",
    "LiveXASAnalysis",
    "xas_run_router",
    "subscribe_live_analysis",
    "is_xas_run",
    "structure_key",
]

logger = logging.getLogger(__name__)

#: start-document keys read by default (see docs/beamline.rst); override with ``md_keys=``
DEFAULT_MD_KEYS = {
    "element": "xas_element",
    "mode": "xas_mode",
    "fields": "xas_fields",
    "sample": "sample_name",
    "candidates": "candidates",
    "energy_offset": "energy_offset",
}


def is_xas_run(start: dict, md_keys: dict | None = None) -> bool:
    """Whether a start document describes an XAS run this analysis can follow."""
    keys = {**DEFAULT_MD_KEYS, **(md_keys or {})}
    fields = start.get(keys["fields"])
    return (
        start.get(keys["element"]) is not None
        and isinstance(fields, dict)
        and all(fields.get(k) for k in ("energy", "i0", "signal"))
    )


def structure_key(structure) -> str:
    """Identity of a structure for the prediction cache: its elements and geometry (to 1e-4 A).

    The model sees only atoms and geometry, so two names of one geometry share a prediction.
    """
    h = hashlib.sha1()
    h.update(",".join(structure.symbols).encode())
    h.update(np.round(np.asarray(structure.xyz, dtype=float), 4).tobytes())
    return h.hexdigest()[:20]


# ---------------------------------------------------------------------------------------------
# candidates and their predictions


@dataclass
class CandidateSet:
    """Predicted spectra of a set of candidate structures on the model's grid."""

    names: list[str]
    smiles: list[str]
    energy: np.ndarray
    mean: np.ndarray  # (C, E)
    std: np.ndarray | None  # (C, E)
    edge: str
    model_version: str | None
    source: str = ""
    keys: list[str] = field(default_factory=list)  # structure keys
    skipped: list[str] = field(default_factory=list)  # why some input structures were left out
    calibration: dict = field(default_factory=dict)  # comparator keywords of the model

    def __len__(self) -> int:
        return len(self.names)

    @property
    def ident(self) -> str:
        h = hashlib.sha1(f"{self.edge}|{self.model_version}|".encode())
        h.update("|".join(self.keys or self.names).encode())
        return h.hexdigest()[:16]


class PredictionCache:
    """Predictions of candidate structures, made once per (model version, structure).

    Parameters
    ----------
    predictor_factory
        ``edge -> predictor`` with ``.predict(structures, return_std=True)``, ``.energy``,
        ``.model_version`` (default :meth:`Predictor.load <xas_bluesky.science.model.predictor.
        Predictor.load>`).
    tiled_client
        Where predictions are also stored and looked up (:mod:`xas_bluesky.beamline.catalog`).
    batch_size
        Structures per forward pass.
    """

    def __init__(
        self,
        predictor_factory: Callable | None = None,
        tiled_client=None,
        batch_size: int = 1024,
    ):
        self._factory = predictor_factory
        self.tiled_client = tiled_client
        self.batch_size = batch_size
        self._predictors: dict[str, object] = {}
        self._rows: dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None]] = {}
        self._files: dict[tuple, CandidateSet] = {}
        self._lock = threading.RLock()  # one build at a time: the demo's thread and the worker
        #: structures predicted by the model (not found in a cache), for tests and logs
        self.n_predicted = 0

    def predictor(self, edge: str):
        if edge not in self._predictors:
            if self._factory is None:
                from xas_bluesky.science.model.predictor import Predictor

                self._predictors[edge] = Predictor.load(edge)
            else:
                self._predictors[edge] = self._factory(edge)
        return self._predictors[edge]

    def from_file(self, path: str | os.PathLike, edge: str) -> CandidateSet:
        """Candidates of an XYZ/SDF/SMILES file; invalid structures are skipped and listed in
        :attr:`CandidateSet.skipped` (an error only when none is left)."""
        with self._lock:
            return self._from_file(path, edge)

    def _from_file(self, path: str | os.PathLike, edge: str) -> CandidateSet:
        from xas_bluesky.science.structures import StructureError, read_structures

        path = Path(path)
        stat = path.stat()
        memo = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, edge)
        with self._lock:
            if memo in self._files:
                return self._files[memo]
        skipped: list[str] = []
        structures = read_structures(
            path, edge=edge, skip_invalid=True, on_skip=lambda e: skipped.append(str(e))
        )
        if not structures:
            raise StructureError(f"{path.name}: no valid candidate structure ({len(skipped)} bad)")
        cands = self.from_structures(structures, edge, source=str(path))
        cands.skipped = skipped
        with self._lock:
            self._files[memo] = cands
        return cands

    def from_structures(self, structures: Sequence, edge: str, source: str = "") -> CandidateSet:
        """Predicted spectra of ``structures`` (cached ones are not predicted again)."""
        with self._lock:
            return self._from_structures(structures, edge, source)

    def _from_structures(self, structures: Sequence, edge: str, source: str) -> CandidateSet:
        predictor = self.predictor(edge)
        version = str(getattr(predictor, "model_version", None))
        energy = np.asarray(predictor.energy, dtype=float)
        keys = [structure_key(s) for s in structures]
        missing = [i for i, k in enumerate(keys) if (version, k) not in self._rows]
        if missing and self.tiled_client is not None:
            missing = self._from_tiled(version, edge, keys, missing)
        if missing:
            todo = [structures[i] for i in missing]
            mean, std = predictor.predict(todo, batch_size=self.batch_size, return_std=True)
            mean = np.asarray(mean, dtype=np.float32)
            std = None if std is None else np.asarray(std, dtype=np.float32)
            self.n_predicted += len(todo)
            for j, i in enumerate(missing):
                self._rows[(version, keys[i])] = (mean[j], None if std is None else std[j])
            if self.tiled_client is not None:
                try:
                    from xas_bluesky.beamline.catalog import store_predictions

                    store_predictions(
                        self.tiled_client, todo, mean, std, energy=energy, edge=edge,
                        model_version=version, keys=[keys[i] for i in missing],
                    )  # fmt: skip
                except Exception:  # the cache in memory still works
                    logger.exception("could not store predictions in tiled")
        rows = [self._rows[(version, k)] for k in keys]
        mean = np.stack([r[0] for r in rows])
        std = None if any(r[1] is None for r in rows) else np.stack([r[1] for r in rows])
        try:
            from xas_bluesky.science.compare import calibration_for

            calibration = calibration_for(predictor)
        except Exception:
            calibration = {}
        return CandidateSet(
            names=[s.name for s in structures],
            smiles=[_smiles(s) for s in structures],
            energy=energy,
            mean=mean,
            std=std,
            edge=edge,
            model_version=version,
            source=source,
            keys=keys,
            calibration=calibration,
        )

    def _from_tiled(self, version: str, edge: str, keys: list[str], missing: list[int]):
        try:
            from xas_bluesky.beamline.catalog import load_predictions

            found = load_predictions(
                self.tiled_client, model_version=version, edge=edge, keys=[keys[i] for i in missing]
            )
        except Exception:
            logger.exception("could not look up predictions in tiled")
            return missing
        for k, (m, s) in found.items():
            self._rows[(version, k)] = (m, s)
        return [i for i in missing if keys[i] not in found]


def _smiles(structure) -> str:
    try:
        return str(structure.smiles)
    except Exception:
        return ""


# ---------------------------------------------------------------------------------------------
# the callback


class _Run:
    """What the worker knows of one followed run."""

    def __init__(self, start: dict, element: str, mode: str, fields: dict, offset: float):
        self.start = start
        self.uid = start["uid"]
        self.element = element
        self.mode = mode
        self.fields = fields
        self.energy_offset = offset
        self.descriptors: set[str] = set()
        self.candidates: CandidateSet | None = None
        self.comparator = None
        self.pending: list[tuple[float, float, float]] = []  # (energy, mu, sigma) not scored yet
        self.n_events = 0  # primary events handled (bad points included)
        self.n_scored = 0
        self.n_bad = 0
        self.last_energy = float("nan")
        self.last_event_time: float | None = None
        self.result = None
        self.problems: list[str] = []
        self.fatal: str | None = None
        self.energies: list[float] = []
        self.mus: list[float] = []
        self.analysis = None  # ComposeRunBundle of the analysis run
        self.analysis_desc = None
        self.seq = 0
        self.stopped = False


class LiveXASAnalysis(DocumentRouter):
    """Follow XAS runs, score candidates point by point, publish scores and an analysis run.

    Parameters
    ----------
    score_server
        Where updates are published (:class:`ScoreServer`, started by the caller) or None.
    candidates
        Default candidates when a start document names none: a structure file (XYZ/SDF/SMILES),
        a :class:`CandidateSet`, or None for the shipped library of the run's edge.
    cache
        :class:`PredictionCache` (one is made, with ``tiled_client``, when None).
    tiled_client
        tiled container for predictions and match results (:mod:`xas_bluesky.beamline.catalog`).
    analysis_callbacks
        Callables ``(name, doc)`` that receive the analysis runs' documents (called on the worker
        thread; a slow one such as TiledWriter belongs behind a ``BufferingWrapper``).
    md_keys, fields
        Override the start-document keys read (:data:`DEFAULT_MD_KEYS`) or the data keys of
        energy/i0/signal (``{"energy": ..., "i0": ..., "signal": ...}``).
    counts
        Channels are counts: Poisson noise per point.  Otherwise the noise is estimated from
        the point-to-point scatter (with ``sigma_floor``).
    top_k
        Candidates listed on ``Match:TopNames-Wfm``/``TopScores-Wfm``.
    comparator_kwargs
        Extra keywords of :class:`~xas_bluesky.science.compare.Comparator` (the model's
        calibration is applied by default).
    """

    def __init__(
        self,
        score_server: ScoreServer | None = None,
        *,
        candidates=None,
        cache: PredictionCache | None = None,
        tiled_client=None,
        analysis_callbacks: Iterable[Callable] = (),
        md_keys: dict | None = None,
        fields: dict | None = None,
        counts: bool = True,
        sigma_floor: float = 1e-4,
        top_k: int = TOP_K,
        comparator_kwargs: dict | None = None,
        comparator_factory: Callable | None = None,
    ):
        super().__init__()
        self.server = score_server
        self.default_candidates = candidates
        self.tiled_client = tiled_client
        self.cache = cache or PredictionCache(tiled_client=tiled_client)
        self.analysis_callbacks = list(analysis_callbacks)
        self.md_keys = {**DEFAULT_MD_KEYS, **(md_keys or {})}
        self.fields_override = dict(fields or {})
        self.counts = counts
        self.sigma_floor = sigma_floor
        self.top_k = top_k
        self.comparator_kwargs = dict(comparator_kwargs or {})
        self._comparator_factory = comparator_factory
        self._comparators: dict[str, object] = {}
        self._runs: dict[str, _Run] = {}
        self._desc_run: dict[str, _Run] = {}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition()
        self._closed = False
        #: raw run uid -> analysis run uid, for every run followed
        self.analysis_uids: dict[str, str] = {}
        #: raw run uid -> the final match result
        self.results: dict[str, object] = {}
        #: raw run uid -> (event times by point count); for latency bookkeeping
        self.event_times: dict[str, dict[int, float]] = {}
        self.errors: list[str] = []
        self._worker = threading.Thread(target=self._work, name="xas-analysis", daemon=True)
        self._worker.start()

    # -- RunEngine thread: enqueue only ---------------------------------------------------------
    def __call__(self, name: str, doc: dict, validate: bool = False):
        """Queue a document for the worker (returns at once; never raises)."""
        try:
            with self._idle:
                self._pending += 1
            self._queue.put((name, doc))
        except Exception:  # nothing of ours may reach the RunEngine
            logger.exception("could not queue a %s document", name)
        return name, doc

    # -- life cycle -----------------------------------------------------------------------------
    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued document has been handled; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Handle what is queued, then stop the worker (the score server is the caller's)."""
        self.wait_idle(timeout)
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout)

    # -- worker ---------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while True:  # take everything queued: one score update covers them all
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                for it in batch:
                    if it is None:
                        continue
                    name, doc = it
                    try:
                        DocumentRouter.__call__(self, name, doc)
                    except Exception as exc:
                        self._report_exception(f"{name} document", exc)
                self._score_pending()
            except Exception as exc:  # never let the worker die
                self._report_exception("analysis update", exc)
            finally:
                with self._idle:
                    self._pending -= sum(1 for it in batch if it is not None)
                    self._idle.notify_all()
            if any(it is None for it in batch):
                return

    def _report_exception(self, what: str, exc: Exception, run: _Run | None = None) -> None:
        msg = f"{what}: {type(exc).__name__}: {exc}"
        logger.exception("live analysis failed in %s", what)
        self.errors.append(msg)
        self._status("Error", msg, run)

    def _status(self, status: str, message: str, run: _Run | None = None) -> None:
        if self.server is None:
            return
        if run is None:
            self.server.set_status(status, message)
        else:
            self.server.publish(self._update(run, status, message))

    # -- documents (worker thread) --------------------------------------------------------------
    def start(self, doc):
        if not is_xas_run(doc, self.md_keys):
            return doc
        k = self.md_keys
        element = str(doc[k["element"]])
        mode = str(doc.get(k["mode"]) or "TEY")
        fields = {**doc[k["fields"]], **self.fields_override}
        offset = doc.get(k["energy_offset"]) or 0.0
        try:
            offset = float(offset)
        except (TypeError, ValueError):
            offset = 0.0
        run = _Run(doc, element, mode, fields, offset if math.isfinite(offset) else 0.0)
        self._runs[run.uid] = run
        self.event_times[run.uid] = {}
        # a fresh run: show it at once so that a plan never reads the previous run's scores
        self._status("Predicting", f"preparing candidates for {element} K", run)
        try:
            run.candidates = self._candidates(doc, element)
            run.comparator = self._comparator(run.candidates)
        except Exception as exc:
            run.fatal = f"candidates: {type(exc).__name__}: {exc}"
            logger.exception("live analysis: no candidates for run %s", run.uid)
            self.errors.append(run.fatal)
            self._status("Error", run.fatal, run)
            return doc
        if run.candidates.skipped:
            run.problems.append(
                f"{len(run.candidates.skipped)} candidate(s) skipped: {run.candidates.skipped[0]}"
            )
        self._open_analysis_run(run)
        status = "Warning" if run.problems else "Running"
        self._status(status, "; ".join(run.problems) or f"{len(run.candidates)} candidates", run)
        return doc

    def descriptor(self, doc):
        run = self._runs.get(doc["run_start"])
        if run is None:
            return doc
        keys = doc.get("data_keys", {})
        if doc.get("name", "primary") == "primary" and all(
            run.fields[k] in keys for k in ("energy", "i0", "signal")
        ):
            run.descriptors.add(doc["uid"])
            self._desc_run[doc["uid"]] = run
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
        energy = np.asarray(data[f["energy"]], dtype=float) + run.energy_offset
        i0 = np.asarray(data[f["i0"]], dtype=float)
        sig = np.asarray(data[f["signal"]], dtype=float)
        times = list(doc.get("time", []))
        mu, sigma, ok, problems = self._mu(run, i0, sig)
        for j in range(energy.size):
            run.n_events += 1
            if j < len(times):
                self.event_times[run.uid][run.n_events] = float(times[j])
                run.last_event_time = float(times[j])
            if not ok[j] or not math.isfinite(energy[j]):
                run.n_bad += 1
                why = problems[j] if j < len(problems) and problems[j] else "energy not finite"
                run.problems.append(f"point {run.n_events} refused: {why}")
                continue
            run.pending.append((float(energy[j]), float(mu[j]), float(sigma[j])))
            run.last_energy = float(energy[j])
        return doc

    def stop(self, doc):
        run = self._runs.get(doc["run_start"])
        if run is None:
            return doc
        self._score_run(run)
        run.stopped = True
        try:
            self._finish(run, doc)
        finally:
            self._runs.pop(run.uid, None)
            for d in run.descriptors:
                self._desc_run.pop(d, None)
        return doc

    # -- the science ----------------------------------------------------------------------------
    def _candidates(self, start: dict, element: str) -> CandidateSet:
        spec = start.get(self.md_keys["candidates"]) or self.default_candidates
        if isinstance(spec, CandidateSet):
            if spec.edge != element:
                raise ValueError(f"candidate set is for the {spec.edge} edge, run is {element}")
            return spec
        if isinstance(spec, str) and spec.startswith("tiled:"):
            from xas_bluesky.beamline.catalog import load_candidate_set

            if self.tiled_client is None:
                raise ValueError(f"candidates {spec!r} need a tiled client")
            return load_candidate_set(self.tiled_client, spec[len("tiled:") :])
        if spec is None:
            from xas_bluesky.resources import candidates_file

            spec = candidates_file(element)
        return self.cache.from_file(spec, element)

    def _comparator(self, cands: CandidateSet):
        # building one costs O(C x E) copies: keep one per candidate set, reset per run
        comp = self._comparators.get(cands.ident)
        if comp is None:
            kwargs = {**cands.calibration, **self.comparator_kwargs}
            factory = self._comparator_factory
            if factory is None:
                from xas_bluesky.science.compare import Comparator as factory
            comp = factory(cands.energy, cands.mean, cands.std, cands.names, **kwargs)
            if len(self._comparators) > 4:
                self._comparators.pop(next(iter(self._comparators)))
            self._comparators[cands.ident] = comp
        comp.reset()
        return comp

    def _mu(self, run: _Run, i0: np.ndarray, sig: np.ndarray):
        from xas_bluesky.science.spectra import mu_from_channels

        res = mu_from_channels(
            run.mode, i0, sig, counts=self.counts, strict=False,
            i0_name=run.fields["i0"], signal_name=run.fields["signal"],
        )  # fmt: skip
        problems = [""] * i0.size
        bad = np.flatnonzero(~res.ok)
        for idx, msg in zip(bad, res.problems, strict=False):
            problems[int(idx)] = msg
        sigma = res.sigma
        if sigma is None:  # currents: noise from the scatter of what we have so far
            from xas_bluesky.science.spectra import noise_from_scatter

            good = res.mu[res.ok]
            est = noise_from_scatter(np.concatenate([run.mus[-50:], good]), floor=self.sigma_floor)
            sigma = np.full(i0.size, max(est, self.sigma_floor))
        sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, self.sigma_floor)
        return res.mu, sigma, res.ok, problems

    def _score_pending(self) -> None:
        for run in list(self._runs.values()):
            self._score_run(run)

    def _score_run(self, run: _Run) -> None:
        if run.fatal or run.comparator is None:
            return
        if not run.pending and run.n_events == run.n_scored:
            return
        try:
            self._score_points(run)
        except Exception as exc:  # this run's analysis is over; the RunEngine never hears of it
            run.fatal = f"scoring failed: {type(exc).__name__}: {exc}"
            logger.exception("live analysis of run %s failed", run.uid)
            self.errors.append(run.fatal)
            self._status("Error", run.fatal, run)

    def _score_points(self, run: _Run) -> None:
        pts = run.pending
        run.pending = []
        if pts:
            e, y, s = (np.array(c) for c in zip(*pts, strict=True))
            try:
                run.comparator.add_points(e, y, s)
            except ValueError as exc:  # refused as a whole: nothing was added
                run.n_bad += len(pts)
                run.problems.append(f"points refused by the comparator: {exc}")
            else:
                run.energies.extend(e.tolist())
                run.mus.extend(y.tolist())
        run.n_scored = run.n_events
        if run.comparator.n_points:
            run.result = run.comparator.result()
        status = "Warning" if run.problems else "Running"
        msg = run.problems[-1] if run.problems else ""
        if self.server is not None:
            self.server.publish(self._update(run, status, msg))
            self.server.wait_published(0.05)  # leave the GIL to the server's thread meanwhile
        self._emit_update(run)

    def _update(self, run: _Run, status: str, message: str) -> ScoreUpdate:
        upd = ScoreUpdate(
            run_uid=run.uid,
            npoints=run.n_scored,
            status=status,
            message=message,
            last_energy=run.last_energy,
            ncandidates=len(run.candidates) if run.candidates is not None else 0,
            event_time=run.last_event_time,
        )
        r = None if run.fatal else run.result  # after a failure: no scores rather than stale ones
        if r is not None:
            top = r.top_indices(self.top_k)
            upd.best_name = r.best_name
            upd.best_smiles = run.candidates.smiles[r.best_index] if run.candidates else ""
            upd.best_prob = float(r.best_probability)
            upd.entropy = float(r.entropy)
            upd.next_energy = float("nan") if r.next_energy is None else float(r.next_energy)
            upd.offset = float(r.offset_ev)
            upd.top_names = [r.names[i] for i in top]
            upd.top_scores = [float(r.probabilities[i]) for i in top]
        return upd

    # -- the analysis run -----------------------------------------------------------------------
    def _emit(self, name: str, doc: dict) -> None:
        for cb in self.analysis_callbacks:
            try:
                cb(name, doc)
            except Exception as exc:  # a failing writer must not stop the scoring
                logger.exception("analysis callback %r failed on %s", cb, name)
                self.errors.append(f"analysis callback: {type(exc).__name__}: {exc}")

    def _open_analysis_run(self, run: _Run) -> None:
        cands = run.candidates
        md = {
            "original_run_uid": run.uid,
            "analysis": "xas_structure_match",
            "xas_element": run.element,
            "xas_mode": run.mode,
            "sample_name": run.start.get(self.md_keys["sample"]),
            "candidates_source": cands.source,
            "candidate_set": cands.ident,
            "n_candidates": len(cands),
            "model_version": cands.model_version,
            "score_prefix": None if self.server is None else self.server.prefix,
        }
        run.analysis = compose_run(metadata=md)
        self.analysis_uids[run.uid] = run.analysis.start_doc["uid"]
        self._emit("start", run.analysis.start_doc)
        scalar = {"dtype": "number", "shape": [], "source": "xas_bluesky.live_analysis"}
        text = {"dtype": "string", "shape": [], "source": "xas_bluesky.live_analysis"}
        data_keys = {
            "n_events": {**scalar, "dtype": "integer"},
            "n_points": {**scalar, "dtype": "integer"},
            "last_energy": {**scalar, "units": "eV"},
            "best_name": text,
            "best_smiles": text,
            "best_probability": scalar,
            "entropy": scalar,
            "offset": {**scalar, "units": "eV"},
            "next_energy": {**scalar, "units": "eV"},
            "top_names": text,
            # text, parallel to top_names: TiledWriter's tables would stringify an array anyway
            "top_probabilities": text,
        }
        run.analysis_desc = run.analysis.compose_descriptor(name="primary", data_keys=data_keys)
        self._emit("descriptor", run.analysis_desc.descriptor_doc)

    def _emit_update(self, run: _Run) -> None:
        if run.analysis_desc is None or run.result is None:
            return
        upd = self._update(run, "", "")
        scores = list(upd.top_scores)
        data = {
            "n_events": run.n_events,
            "n_points": int(run.result.n_points),
            "last_energy": run.last_energy,
            "best_name": upd.best_name,
            "best_smiles": upd.best_smiles,
            "best_probability": upd.best_prob,
            "entropy": upd.entropy,
            "offset": upd.offset,
            "next_energy": upd.next_energy,
            "top_names": "\n".join(upd.top_names),
            "top_probabilities": "\n".join(f"{p:.6g}" for p in scores[: len(upd.top_names)]),
        }
        now = time.time()
        run.seq += 1
        ev = run.analysis_desc.compose_event(
            data=data, timestamps={k: now for k in data}, seq_num=run.seq, validate=False
        )
        self._emit("event", ev)

    def _finish(self, run: _Run, raw_stop: dict) -> None:
        exit_status = raw_stop.get("exit_status", "success")
        if run.fatal:
            reason = run.fatal
            self._status("Error", reason, run)
            if run.analysis is not None:
                self._emit("stop", run.analysis.compose_stop(exit_status="fail", reason=reason))
            return
        r = run.result
        self.results[run.uid] = r
        if r is not None and self.tiled_client is not None:
            try:
                from xas_bluesky.beamline.catalog import store_match

                store_match(
                    self.tiled_client, run.uid, r, run.candidates,
                    analysis_run_uid=self.analysis_uids.get(run.uid),
                    metadata={
                        "sample_name": run.start.get(self.md_keys["sample"]),
                        "raw_exit_status": exit_status,
                        "n_events": run.n_events,
                        "n_refused": run.n_bad,
                        "problems": run.problems[-20:],
                        "measured_energy_eV": run.energies,
                        "measured_mu": run.mus,
                    },
                )  # fmt: skip
            except Exception as exc:
                run.problems.append(f"match result not stored in tiled: {exc}")
                logger.exception("could not store the match result of %s", run.uid)
        done = "Warning" if run.problems else "Done"
        msg = "; ".join(run.problems[-3:]) or (
            f"run finished ({exit_status}): {run.n_scored} points"
        )
        self._status(done, msg, run)
        if run.analysis is not None:
            reason = f"raw run {exit_status}; {run.n_events} events, {run.n_bad} refused" + (
                f"; best {r.best_name} p={r.best_probability:.4f}" if r is not None else ""
            )
            self._emit(
                "stop",
                run.analysis.compose_stop(
                    exit_status="success" if r is not None else "fail", reason=reason
                ),
            )


def xas_run_router(analysis: LiveXASAnalysis) -> RunRouter:
    """A ``RunRouter`` that hands XAS runs (only) to ``analysis``.

    The router runs on the caller's thread (the RunEngine's) and only forwards documents of XAS
    runs, which ``analysis`` queues for its worker.
    """

    def factory(name, start_doc):
        return ([analysis], []) if is_xas_run(start_doc, analysis.md_keys) else ([], [])

    return RunRouter([factory])


def subscribe_live_analysis(
    RE,
    *,
    score_prefix: str = "XAS:",
    tiled_client=None,
    candidates=None,
    port: int | None = None,
    score_server: ScoreServer | None = None,
    analysis_callbacks: Iterable[Callable] | None = None,
    **kwargs,
) -> LiveXASAnalysis:
    """Host the score PVs in this process and subscribe the live analysis to ``RE``.

    Parameters
    ----------
    RE
        The RunEngine.
    score_prefix, port
        Prefix and Channel Access port of the in-process score IOC (started here unless
        ``score_server`` is given).
    tiled_client
        tiled container: predictions and match results are stored there, and the analysis runs
        are written by a ``TiledWriter`` behind a ``BufferingWrapper`` (unless
        ``analysis_callbacks`` is given).
    candidates, kwargs
        Passed to :class:`LiveXASAnalysis`.

    Returns
    -------
    LiveXASAnalysis
        With attributes ``token`` (the RunEngine subscription), ``server`` and ``shutdown()``
        (unsubscribe, drain, stop the writer and the score IOC).
    """
    server = score_server or ScoreServer(score_prefix, port=port).start()
    writers: list = []
    if analysis_callbacks is None:
        analysis_callbacks = []
        if tiled_client is not None:
            from bluesky.callbacks.buffer import BufferingWrapper
            from bluesky_tiled_plugins import TiledWriter

            buffered = BufferingWrapper(TiledWriter(tiled_client))
            writers.append(buffered)
            analysis_callbacks = [buffered]
    analysis = LiveXASAnalysis(
        server,
        candidates=candidates,
        tiled_client=tiled_client,
        analysis_callbacks=analysis_callbacks,
        **kwargs,
    )
    token = RE.subscribe(analysis)

    def shutdown(timeout: float = 30.0) -> None:
        try:
            RE.unsubscribe(token)
        except Exception:
            pass
        analysis.close(timeout)
        for w in writers:
            try:
                w.shutdown(wait=True)
            except Exception:
                logger.exception("could not drain the analysis-run writer")
        if score_server is None:
            server.stop()

    analysis.token = token
    analysis.shutdown = shutdown
    return analysis
