"""The open-world reading of live runs: functional groups and ``in_library``, off the scoring path.

:class:`OpenWorldWorker` keeps one :class:`~xas_bluesky.science.compare.novelty.OpenWorld` per
followed run and computes its result on a thread of its own, never on the RunEngine's thread
and never inside a score update: the engine hands it the run's scored points
(:meth:`OpenWorldWorker.submit`) and publishes the newest result it has with the next update, so
the groups lag the scores by a point or two.  A result costs a comparator update over thousands
of reference spectra (about 1 s over 10,000 after a full grid scan), so the thread computes at
most half of the time (``duty``) and only the newest points of each run; at the run's stop the
engine waits for one result with every point (:meth:`OpenWorldWorker.finish`).

The references (:class:`ReferenceLibraries`):

- the **FEFF library** (FEFF's spectra of the training molecules) is shipped: groups are there
  from the first points of every run;
- the **model library** (the GNN's predictions of ~10,000 training-split QM9 molecules) costs
  minutes to predict on a CPU, so it is used only once it is cached
  (:mod:`xas_bluesky.science.library_cache`); when it is missing, :class:`ReferenceLibraries`
  may predict it in a low-priority process of its own, and a run opened after that finished uses
  it.  Without it the groups come from the FEFF library alone (its own calibration: the "FEFF
  library" rows of ``docs/open_world.rst``) and ``in_library`` is not computed (NaN): it compares
  the candidates' predictions with the model's predictions of the library.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from xas_bluesky.contracts import GROUPS
from xas_bluesky.science.candidates import CandidateSet

__all__ = ["ReferenceLibraries", "OpenWorldWorker", "LiveNovelty"]

logger = logging.getLogger(__name__)


@dataclass
class LiveNovelty:
    """One open-world result of a run, as the summaries publish it.

    Attributes
    ----------
    groups : list of str
        Group names, most probable first (ties by name).
    probabilities : list of float
        Their probabilities (the molecule has the group).
    in_library : float
        P(the sample is among the candidates); NaN when not computed.
    n_points : int
        Points it was computed from.
    source : str
        ``"model+feff"`` (both libraries) or ``"feff"`` (the FEFF library alone).
    note : str
        Why something is missing (``in_library`` not available yet), or ``""``.
    version : int
        Increases with every result of the run.
    """

    groups: list[str]
    probabilities: list[float]
    in_library: float
    n_points: int
    source: str
    note: str = ""
    version: int = 0


class ReferenceLibraries:
    """The reference libraries of the open-world analysis, per edge.

    Parameters
    ----------
    cache : path, optional
        Where the model library's predictions are cached
        (:func:`~xas_bluesky.science.library_cache.default_library_cache` when None).
    predict_missing : bool
        Start predicting a missing model library in a background process (``nice`` 10, one
        thread): it is used by runs opened after it finished.
    use_model_library : bool
        False: the FEFF library alone, ``in_library`` never computed.
    log_dir : path, optional
        Where the background prediction writes its log (discarded when None).
    """

    def __init__(
        self,
        cache: str | os.PathLike | None = None,
        *,
        predict_missing: bool = True,
        use_model_library: bool = True,
        log_dir: str | os.PathLike | None = None,
    ):
        from xas_bluesky.science.library_cache import default_library_cache

        self.cache = Path(cache) if cache is not None else default_library_cache()
        self.predict_missing = predict_missing
        self.use_model_library = use_model_library
        self.log_dir = None if log_dir is None else Path(log_dir)
        self._lock = threading.Lock()
        self._feff: dict[str, Any] = {}
        self._model: dict[tuple[str, str], Any] = {}
        self._procs: dict[tuple[str, str], subprocess.Popen] = {}
        self._failed: dict[tuple[str, str], str] = {}

    def feff(self, edge: str) -> Any:
        """The shipped FEFF library of ``edge`` (read once)."""
        with self._lock:
            lib = self._feff.get(edge)
        if lib is None:
            from xas_bluesky.science.groups import shipped_feff_library

            lib = shipped_feff_library(edge)
            with self._lock:
                self._feff[edge] = lib
        return lib

    def model(self, edge: str, model_version: str) -> Any:
        """The model library of ``edge`` predicted by ``model_version`` if it is cached (None
        otherwise; then its prediction is started when ``predict_missing``)."""
        if not self.use_model_library:
            return None
        key = (edge, model_version)
        with self._lock:
            if key in self._model:
                return self._model[key]
        from xas_bluesky.science.library_cache import load_cached_library

        lib = load_cached_library(edge, model_version, self.cache)
        if lib is not None:
            with self._lock:
                self._model[key] = lib
            return lib
        if self.predict_missing:
            self._start_prediction(edge, model_version)
        return None

    def note(self, edge: str, model_version: str) -> str:
        """Why the model library of ``edge`` is not used (for the status message)."""
        key = (edge, model_version)
        if not self.use_model_library:
            return "groups from the FEFF library; in_library off"
        with self._lock:
            proc, failed = self._procs.get(key), self._failed.get(key)
        if failed:
            return f"groups from the FEFF library; in_library off ({failed})"
        if proc is not None and proc.poll() is None:
            return (
                f"groups from the FEFF library; in_library not available yet: predicting the "
                f"{edge} reference library in the background (minutes, once per model)"
            )
        return (
            f"groups from the FEFF library; in_library not available: the {edge} reference "
            f"library is not predicted (python -m xas_bluesky.science.library_cache --edge {edge})"
        )

    def predicting(self, edge: str, model_version: str) -> bool:
        """Whether a background prediction of that library is running."""
        with self._lock:
            proc = self._procs.get((edge, model_version))
        return proc is not None and proc.poll() is None

    def _start_prediction(self, edge: str, model_version: str) -> None:
        from xas_bluesky.science.library_cache import shipped_model_version

        key = (edge, model_version)
        with self._lock:
            proc = self._procs.get(key)
            if key in self._failed or (proc is not None and proc.poll() is None):
                return
            if proc is not None:  # finished, yet nothing was cached
                self._failed[key] = f"the background prediction exited with {proc.returncode}"
                return
        try:
            if shipped_model_version(edge) != model_version:
                with self._lock:
                    self._failed[key] = f"model {model_version} is not the shipped one"
                return
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            log: Any = subprocess.DEVNULL
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                log = open(self.log_dir / f"library_{edge}.log", "ab")  # noqa: SIM115
            cmd = [sys.executable, "-m", "xas_bluesky.science.library_cache", "--edge", edge]
            proc = subprocess.Popen(
                [*cmd, "--cache", str(self.cache)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                preexec_fn=_lower_priority if os.name == "posix" else None,  # noqa: PLW1509
            )
            if log is not subprocess.DEVNULL:
                log.close()
        except Exception as exc:
            logger.exception("could not start predicting the %s reference library", edge)
            with self._lock:
                self._failed[key] = f"could not predict the library: {exc}"
            return
        logger.info(
            "predicting the %s reference library in the background (pid %d)", edge, proc.pid
        )
        with self._lock:
            self._procs[key] = proc

    def close(self, timeout: float = 5.0) -> None:
        """Stop background predictions still running (what they cached stays)."""
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)


def _lower_priority() -> None:  # runs in the child before exec
    os.nice(10)


@dataclass
class _Job:
    uid: str
    edge: str
    candidates: CandidateSet | None
    kwargs: dict[str, Any]
    points: list[tuple[float, float, float]] = field(default_factory=list)
    world: Any = None
    source: str = ""
    note: str = ""
    added: int = 0
    done_points: int = -1
    result: LiveNovelty | None = None
    versions: int = 0
    finish: bool = False
    busy: bool = False
    closed: bool = False


class OpenWorldWorker:
    """Compute the open-world reading of each followed run on a thread of its own.

    Parameters
    ----------
    libraries : ReferenceLibraries
        The references (a default one when None).
    on_result : callable, optional
        Called (no arguments, on this worker's thread) after every new result: the live
        analysis wakes its own worker with it to publish the result.
    duty : float
        Fraction of the time the thread may compute (it pauses ``(1 / duty - 1)`` times the
        last computation between results, except for :meth:`finish`).
    """

    def __init__(
        self,
        libraries: ReferenceLibraries | None = None,
        *,
        on_result: Callable[[], None] | None = None,
        duty: float = 0.5,
    ):
        self.libraries = libraries or ReferenceLibraries()
        self.on_result = on_result
        self.duty = min(max(float(duty), 0.05), 1.0)
        self._jobs: dict[str, _Job] = {}
        self._cond = threading.Condition()
        self._stopped = False
        #: failures of computations (the newest 50)
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._work, name="xas-open-world", daemon=True)
        self._thread.start()

    # -- the engine's side ------------------------------------------------------------------------
    def open(
        self,
        uid: str,
        edge: str,
        candidates: CandidateSet | None,
        comparator_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Follow run ``uid`` of ``edge`` with ``candidates`` (None: no candidates)."""
        with self._cond:
            self._jobs[uid] = _Job(uid, edge, candidates, dict(comparator_kwargs or {}))
            while len(self._jobs) > 8:  # runs never stopped: forget the oldest
                self._jobs.pop(next(iter(self._jobs)))

    def submit(self, uid: str, points: Sequence[tuple[float, float, float]]) -> None:
        """The run's scored points so far, ``(energy, mu, sigma)`` in the order scored."""
        with self._cond:
            job = self._jobs.get(uid)
            if job is None:
                return
            job.points = list(points)
            self._cond.notify_all()

    def result(self, uid: str) -> LiveNovelty | None:
        """The newest result of run ``uid`` (None before the first)."""
        with self._cond:
            job = self._jobs.get(uid)
            return None if job is None else job.result

    def finish(
        self, uid: str, points: Sequence[tuple[float, float, float]], timeout: float = 30.0
    ) -> LiveNovelty | None:
        """A result with all ``points`` of run ``uid`` (waits up to ``timeout`` s), then forget
        the run; the newest result when the wait times out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            job = self._jobs.get(uid)
            if job is None:
                return None
            job.points = list(points)
            job.finish = True
            self._cond.notify_all()
            while job.done_points != len(job.points) and not self._stopped:
                left = deadline - time.monotonic()
                if left <= 0 or (job.world is None and job.note.startswith("failed")):
                    break
                self._cond.wait(left)
            job.closed = True
            self._jobs.pop(uid, None)
            return job.result

    def discard(self, uid: str) -> None:
        """Forget run ``uid``."""
        with self._cond:
            job = self._jobs.pop(uid, None)
            if job is not None:
                job.closed = True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and the libraries' background predictions."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout)
        self.libraries.close()

    # -- the thread ---------------------------------------------------------------------------
    def _next(self) -> _Job | None:
        ready = [j for j in self._jobs.values() if j.points and len(j.points) != j.done_points]
        if not ready:
            return None
        return next((j for j in ready if j.finish), ready[0])

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and self._next() is None:
                    self._cond.wait()
                if self._stopped:
                    return
                job = self._next()
                assert job is not None
                points = list(job.points)
                job.busy = True
            t0 = time.monotonic()
            try:
                res = self._compute(job, points)
            except Exception as exc:
                logger.exception("open-world analysis of run %s failed", job.uid)
                self.errors = [*self.errors[-49:], f"{job.uid}: {type(exc).__name__}: {exc}"]
                res = None
                job.note = f"failed: {type(exc).__name__}: {exc}"
            with self._cond:
                job.busy = False
                job.done_points = len(points)
                if res is not None:
                    job.result = res
                finishing = job.finish
                self._cond.notify_all()
            if res is not None and self.on_result is not None and not finishing:
                try:
                    self.on_result()
                except Exception:
                    logger.exception("open-world on_result failed")
            pause = (time.monotonic() - t0) * (1.0 / self.duty - 1.0)
            with self._cond:  # a finish() or close() cuts the pause short
                self._cond.wait_for(
                    lambda: self._stopped or any(j.finish for j in self._jobs.values()),
                    pause,
                )

    def _build(self, job: _Job) -> None:
        from xas_bluesky.science.compare.novelty import NoveltyCalibration, OpenWorld
        from xas_bluesky.science.library_cache import shipped_model_version

        cands = job.candidates
        version = (
            cands.model_version
            if cands is not None and cands.model_version
            else shipped_model_version(job.edge)
        )
        feff = self.libraries.feff(job.edge)
        model = self.libraries.model(job.edge, version)
        cal = NoveltyCalibration.shipped(job.edge, version)
        if model is not None and cands is not None and len(cands.energy) != len(model.energy):
            model = None  # another grid: a model of another kind (not the one calibrated)
        if model is not None:
            job.world = OpenWorld(
                model,
                None if cands is None else np.asarray(cands.mean),
                None if cands is None or cands.std is None else np.asarray(cands.std),
                [] if cands is None else list(cands.names),
                None,
                feff_library=feff,
                calibration=cal,
                **job.kwargs,
            )
            job.source, job.note = "model+feff", ""
            if cands is None:
                job.note = "no candidates: groups only"
        else:
            feff_only = replace(
                cal,
                temperature=cal.feff_temperature,
                exponent=cal.feff_exponent,
                floor=cal.feff_floor,
            )
            job.world = OpenWorld(feff, calibration=feff_only, **job.kwargs)
            job.source = "feff"
            job.note = (
                "no candidates: groups only (FEFF library)"
                if cands is None
                else self.libraries.note(job.edge, version)
            )
        job.added = 0

    def _compute(self, job: _Job, points: list[tuple[float, float, float]]) -> LiveNovelty:
        if job.world is None:
            self._build(job)
        new = points[job.added :]
        if new:
            e, mu, s = (np.asarray(c, dtype=float) for c in zip(*new, strict=True))
            job.world.add_points(e, mu, s)
            job.added = len(points)
        res = job.world.result()
        p = np.asarray(res.group_probabilities, dtype=float)
        names = list(GROUPS[job.edge])
        order = sorted(range(len(names)), key=lambda i: (-p[i], names[i]))
        job.versions += 1
        in_lib = float(res.in_library)
        return LiveNovelty(
            groups=[names[i] for i in order],
            probabilities=[float(p[i]) for i in order],
            in_library=in_lib if math.isfinite(in_lib) else math.nan,
            n_points=len(points),
            source=job.source,
            note=job.note,
            version=job.versions,
        )
