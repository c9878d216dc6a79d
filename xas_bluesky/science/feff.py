"""FEFF10 site-spectrum simulations through the ``feff10-rs`` package.

One FEFF run per absorbing site, with the cards used for the project's training data (see
``shared/notes/FACTS.md`` and ``docs/data.rst``): full multiple scattering over the whole molecule,
a self-consistent potential and the final-state-rule core hole.  The result of every site -- spectrum
or error -- is one JSON line in the schema of ``qm9_feff10_sites.jsonl.gz``, so a batch can be
stopped and resumed at any time and failed sites are kept on record rather than retried forever.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "SiteJob",
    "feff_input_text",
    "run_site",
    "run_sites",
    "site_jobs",
    "completed_keys",
    "check_output",
    "feff_available",
]

#: FEFF stages; leaving out MKGTR gives a silently wrong spectrum (FACTS.md).
STAGES = ("RDINP", "ATOMIC", "POT", "XSPH", "FMS", "MKGTR", "PATH", "GENFMT", "FF2X")

_Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}


def feff_available() -> bool:
    """Whether the optional ``feff10-rs`` package (extra ``simulate``) is importable."""
    try:
        import feff10  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class SiteJob:
    """One absorbing site of one molecule."""

    qm9_index: int
    smiles: str
    element: str
    site: int
    symbols: tuple[str, ...]
    xyz: tuple[tuple[float, ...], ...]  # (x, y, z) per atom, as read from the records

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.qm9_index, self.element, self.site)


def feff_input_text(symbols: Sequence[str], xyz: np.ndarray, site: int) -> str:
    """The ``feff.inp`` of one K-edge site, absorber moved to the origin.

    Potentials: 0 is the absorber, then one per element among the other atoms (an element needs at
    least one atom carrying its potential, so the absorber's element gets one only when a second atom
    of it exists).
    """
    xyz = np.asarray(xyz, dtype=float) - np.asarray(xyz, dtype=float)[site]
    others = [s for i, s in enumerate(symbols) if i != site]
    elements = sorted(set(others), key=lambda s: (-_Z[s], s))
    ipot = {el: i + 1 for i, el in enumerate(elements)}
    rmax = float(np.max(np.linalg.norm(xyz, axis=1)))
    lines = [
        "TITLE xas_bluesky site spectrum",
        "EDGE K",
        "S02 1.0",
        "CONTROL 1 1 1 1 1 1",
        "PRINT 0 0 0 0 0 0",
        "COREHOLE FSR",
        "EXCHANGE 0 0.0 0.0",
        "SCF 4.0",
        "XANES 4.0 0.05 0.1",
        f"FMS {rmax + 0.5:.4f}",
        "",
        "POTENTIALS",
        f"    0 {_Z[symbols[site]]} {symbols[site]}",
    ]
    lines += [f"    {ipot[el]} {_Z[el]} {el}" for el in elements]
    lines += ["", "ATOMS"]
    lines.append(f"    {0.0:.6f} {0.0:.6f} {0.0:.6f} 0 {symbols[site]}")
    for i, s in enumerate(symbols):
        if i != site:
            x, y, z = xyz[i]
            lines.append(f"    {x:.6f} {y:.6f} {z:.6f} {ipot[s]} {s}")
    lines += ["", "END", ""]
    return "\n".join(lines)


def run_site(job: SiteJob, workroot: str | None = None, timeout: float | None = 600.0) -> dict:
    """Run FEFF10 on one site and return its JSONL record (``ok`` False with ``error`` on failure)."""
    import feff10

    record = {
        "qm9_index": job.qm9_index,
        "smiles": job.smiles,
        "element": job.element,
        "site": job.site,
        "symbols": list(job.symbols),
        "xyz": [list(p) for p in job.xyz],
    }
    work = tempfile.mkdtemp(prefix="feff_", dir=workroot)
    t0 = time.perf_counter()
    try:
        text = feff_input_text(job.symbols, np.array(job.xyz), job.site)
        inp = feff10.FeffInput.parse(text)
        stages = [getattr(feff10.Stage, s) for s in STAGES]
        config = feff10.FeffConfig(work, inp, stages=stages, stage_timeout=timeout)
        result = feff10.FeffPipeline(config).run()
        table = result.read_xmu()
        omega, mu = table.column(0), table.column(3)
        if len(omega) < 10 or not np.all(np.isfinite(mu)):
            raise ValueError(f"xmu.dat unusable ({len(omega)} rows)")
        record.update(omega=[round(v, 3) for v in omega], mu=[round(v, 5) for v in mu], ok=True)
    except Exception as exc:  # FEFF's failures are data, not crashes: keep them on record
        record.update(omega=[], mu=[], ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
    finally:
        shutil.rmtree(work, ignore_errors=True)  # ~5 MB of files per run
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def site_jobs(molecules: Iterable[dict], elements: Sequence[str] = ("O", "N")) -> Iterator[SiteJob]:
    """Expand molecules (``qm9_index``, ``smiles``, ``symbols``, ``xyz``) into one job per site."""
    for mol in molecules:
        for i, s in enumerate(mol["symbols"]):
            if s in elements:
                yield SiteJob(
                    int(mol["qm9_index"]),
                    mol["smiles"],
                    s,
                    i,
                    tuple(mol["symbols"]),
                    tuple(tuple(float(c) for c in p) for p in mol["xyz"]),
                )


def _open(path: Path, mode: str):
    return gzip.open(path, mode) if path.suffix == ".gz" else open(path, mode)


def completed_keys(paths: Iterable[str | os.PathLike]) -> set[tuple[int, str, int]]:
    """Keys of the sites already on record (finished or failed) in JSONL files."""
    keys: set[tuple[int, str, int]] = set()
    for p in map(Path, paths):
        if not p.exists():
            continue
        with _open(p, "rt") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a killed run
                    continue
                keys.add((int(r["qm9_index"]), r["element"], int(r["site"])))
    return keys


def _quiet_worker() -> None:
    """Pool worker set-up: FEFF's chatter on file descriptor 1 goes to /dev/null (stdout stays
    clean), and Ctrl-C is left to the parent, which stops the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def check_output(out: str | os.PathLike) -> None:
    """Refuse a ``.gz`` output: records are appended a line at a time, and a gzip stream cut short
    by a killed run could not be read back."""
    if Path(out).suffix == ".gz":
        raise ValueError(
            f"{out}: the output is appended a line at a time and must be plain JSONL, not .gz "
            "(compress the batch when it is finished)"
        )


def _end_line(path: Path) -> None:
    """Terminate a last line cut short by a killed run, so the next record starts a line."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


@contextlib.contextmanager
def _interrupt_as_flag() -> Iterator[threading.Event]:
    """Ctrl-C (SIGINT) or SIGTERM sets a flag instead of raising wherever the main thread is.

    A KeyboardInterrupt raised inside ``concurrent.futures`` (while ``as_completed`` holds the
    futures' locks, say) can leave a lock taken, and the pool's shutdown then hangs for good; the
    loop checks the flag between waits and raises at a safe point instead.  SIGTERM (``kill``)
    takes the same way out: by default it ended the parent alone and left its FEFF workers
    running as orphans.  Outside the main thread signal handlers cannot be set, and the
    signals are left alone.
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.signal(sig, lambda *_: flag.set()) for sig in _STOP_SIGNALS}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            # None: a handler not set from Python; Python's own default is the best stand-in
            fallback = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, fallback if handler is None else handler)


#: signals that stop a batch cleanly (queued sites dropped, workers stopped, KeyboardInterrupt)
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_sites(
    jobs: Iterable[SiteJob],
    out: str | os.PathLike,
    workers: int = 1,
    done: set[tuple[int, str, int]] | None = None,
    workroot: str | None = None,
    progress=None,
    runner: Callable[[SiteJob, str | None], dict] = run_site,
) -> int:
    """Run the jobs not in ``done`` in parallel, appending each record to ``out`` as it finishes.

    Returns the number of sites run.  Appending line by line makes the batch resumable: a killed
    run loses at most the sites in flight.  ``out`` is plain JSONL (a gzip stream cut short by a
    killed run could not be read back); compress a batch once it is finished.  On Ctrl-C the
    queued sites are dropped and the ones in flight stopped at once (``runner``, a picklable
    function, is for tests).
    """
    check_output(out)
    out = Path(out)
    done = done or set()
    todo = [j for j in jobs if j.key not in done]
    _end_line(out)
    # every work directory lives under one per-run folder, removed at the end even when
    # workers were stopped mid-run (their own clean-up never ran)
    root = tempfile.mkdtemp(prefix="feff_run_", dir=workroot)
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_quiet_worker)
    n = 0
    try:
        with open(out, "a") as fh, _interrupt_as_flag() as interrupted:
            pending = {pool.submit(runner, j, root) for j in todo}
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in finished:
                    rec = fut.result()
                    fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
                    fh.flush()
                    n += 1
                    if progress is not None:
                        progress(n, len(todo), rec)
                if interrupted.is_set():
                    raise KeyboardInterrupt
    except BaseException:
        # shutdown(wait=True), what the context manager does, would first run every queued
        # site (~12 s each); they are rerun on resume instead
        procs = list((getattr(pool, "_processes", None) or {}).values())  # no public API < 3.14
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(timeout=2)
            if proc.is_alive():  # a loaded machine: SIGTERM not acted on yet
                proc.kill()
                proc.join(timeout=2)
        raise
    else:
        pool.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return n
