"""Shared pieces of the live-analysis tests: a small candidate file, a plan that measures a
candidate's predicted spectrum with Poisson counts, and Channel Access helpers."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np

XAS_FIELDS = {"energy": "mono_energy", "i0": "det_i0", "signal": "det_tey"}


def small_candidates(path: Path, n: int = 24, edge: str = "O", skip: int = 0) -> Path:
    """The first ``n`` frames of the shipped library of ``edge`` as a new XYZ file."""
    from xas_bluesky.resources import candidates_file

    lines = candidates_file(edge).read_text().splitlines()
    out, i, k = [], 0, 0
    while i < len(lines) and k < n + skip:
        m = int(lines[i])
        if k >= skip:
            out += lines[i : i + m + 2]
        i += m + 2
        k += 1
    path.write_text("\n".join(out) + "\n")
    return path


def candidates_with(src: Path, out: Path, sample: str, n: int) -> Path:
    """The frame named ``sample`` and the first ``n - 1`` other frames of the XYZ file ``src``,
    written to ``out``."""
    lines = Path(src).read_text().splitlines()
    frames, i = [], 0
    while i < len(lines) and lines[i].strip():
        m = int(lines[i])
        frames.append(lines[i : i + m + 2])
        i += m + 2
    keep = [f for f in frames if f[1].split()[0] == sample]
    keep += [f for f in frames if f[1].split()[0] != sample][: n - 1]
    out.write_text("\n".join(line for f in keep for line in f) + "\n")
    return out


@functools.lru_cache(maxsize=2)
def shared_cache():
    """One PredictionCache (the real GNN) for the session: each structure is predicted once."""
    from xas_bluesky.science.candidates import PredictionCache

    return PredictionCache()


def soft_devices():
    from ophyd import Signal

    return (
        Signal(name=XAS_FIELDS["energy"], value=0.0),
        Signal(name=XAS_FIELDS["i0"], value=0.0),
        Signal(name=XAS_FIELDS["signal"], value=0.0),
    )


def xas_md(**kw) -> dict:
    md = {
        "xas_element": "O",
        "xas_edge": "K",
        "xas_mode": "TEY",
        "xas_fields": dict(XAS_FIELDS),
        "sample_name": "test",
        "energy_offset": 0.0,
    }
    md.update(kw)
    return md


def measure_plan(
    cands,
    truth: int,
    energies,
    *,
    md: dict | None = None,
    seed: int = 0,
    bad: dict | None = None,
    between=None,
    i0_counts: float = 1e6,
):
    """A run that measures candidate ``truth``'s predicted spectrum as TEY/I0 counts.

    ``bad`` maps a point index to ``(i0, tey)`` readings forced there (NaN, zero I0);
    ``between(k)`` is called on the RunEngine thread before point ``k``.
    """
    import bluesky.plan_stubs as bps

    e_sig, i0_sig, tey_sig = soft_devices()
    rng = np.random.default_rng(seed)
    bad = bad or {}

    def plan():
        uid = yield from bps.open_run(md=md or xas_md())
        for k, e in enumerate(energies):
            if between is not None:
                between(k)
            mu = float(np.interp(e, cands.energy, cands.mean[truth]))
            i0 = float(rng.poisson(i0_counts))
            tey = float(rng.poisson(i0 * (0.02 + 0.05 * mu)))
            if k in bad:
                i0, tey = bad[k]
            # soft signals: put() (a set() of NaN would wait forever for the readback to match)
            for sig, v in ((e_sig, float(e)), (i0_sig, i0), (tey_sig, tey)):
                sig.put(v)
            yield from bps.trigger_and_read([e_sig, i0_sig, tey_sig])
        yield from bps.close_run()
        return uid

    return plan()


def wait_for(pred, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except Exception:
            pass
        time.sleep(interval)
    return False


def caget(pv: str, **kw):
    import epics

    return epics.caget(pv, use_monitor=False, timeout=2, **kw)


def cagets(pv: str):
    return caget(pv, as_string=True)


def assert_published(prefix: str, result, truth_name: str | None = None, top: int = 3) -> None:
    """The PVs show ``result`` (the analysis' own final result), and ``truth_name`` is among its
    ``top`` candidates (identification itself is the comparator's business, tested there)."""
    assert cagets(prefix + "Match:Best-Name") == result.best_name
    names = cagets(prefix + "Match:TopNames-Wfm").split("\n")
    assert names == [n for n, _ in result.top(len(names))]
    assert abs(caget(prefix + "Match:BestProb-I") - result.best_probability) < 1e-9
    if truth_name is not None:
        assert truth_name in names[:top], (truth_name, names[:top])
