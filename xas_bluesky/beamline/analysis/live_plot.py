"""The live plot: mu(E) as it is measured, the top-3 candidates' predicted spectra over it, and
the best probability after every point.

One figure, drawn by :func:`draw_match` from a :class:`MatchView`, serves two callers:

- :class:`LiveMatchPlot`, an :class:`~xas_bluesky.beamline.analysis.sinks.AnalysisSink`: the
  engine hands it every scored state of a run (on the analysis worker's thread); it copies what
  the figure needs and draws it when :meth:`LiveMatchPlot.refresh` is called -- by a timer of
  the figure's own GUI event loop in an interactive session (:meth:`LiveMatchPlot.start`), so
  matplotlib is only ever touched from the GUI thread and never from the RunEngine's;
- the demo's ``--plot`` (:func:`xas_bluesky.apps.demo_plot.plot_demo`), once at the end.

The predicted spectra are in model units (fractions of the edge step); each is put on the
measurement's scale by a least-squares affine fit over the points scored so far, at the
comparator's fitted mono offset, and drawn on the mono's axis.  Only scored points are drawn;
points the comparator set aside as glitches are marked apart, flagged readings not at all.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xas_bluesky.beamline.analysis.run import RunState
from xas_bluesky.beamline.analysis.sinks import AnalysisSink
from xas_bluesky.contracts import MatchSummary

__all__ = ["MatchView", "Overlay", "draw_match", "view_of_run", "LiveMatchPlot"]

#: candidates drawn over the measurement
TOP_K = 3


@dataclass(frozen=True)
class Overlay:
    """One candidate's predicted spectrum, on the mono's axis, in model units."""

    label: str
    energy: np.ndarray
    mean: np.ndarray
    std: np.ndarray | None = None


@dataclass
class MatchView:
    """What the figure shows (plain arrays: a snapshot, safe to hand to another thread)."""

    title: str
    #: scored points: mono energy (eV) and mu, any scale
    energy: np.ndarray
    mu: np.ndarray
    overlays: list[Overlay] = field(default_factory=list)
    #: (points scored, best probability) after each update
    history: list[tuple[int, float]] = field(default_factory=list)
    #: points set aside as glitches (mono energy, mu)
    rejected: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))
    measured_label: str = "measured"
    #: mono energies in the order the plan chose them (rug under the spectrum); None: ``energy``
    order: np.ndarray | None = None
    ylabel: str = "mu"


def affine_fit(pred_at: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of the least-squares ``y ~ a pred + b``; (1, 0) with fewer than 3 points or a flat
    prediction (nothing to fit)."""
    ok = np.isfinite(pred_at) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(pred_at[ok]) <= 0:
        return 1.0, 0.0
    a, b = np.polyfit(pred_at[ok], y[ok], 1)
    return float(a), float(b)


def draw_match(fig: Any, view: MatchView) -> None:
    """Draw ``view`` on ``fig`` (cleared first): the spectrum panel over the probability panel."""
    fig.clear()
    ax, axp = fig.subplots(2, 1, sharex=False, gridspec_kw={"height_ratios": [3, 1]})
    e = np.asarray(view.energy, dtype=float)
    y = np.asarray(view.mu, dtype=float)
    if e.size:
        ax.plot(e, y, "k.", ms=5, label=f"{view.measured_label} ({e.size} points)", zorder=3)
    rej = np.asarray(view.rejected, dtype=float).reshape(-1, 2)
    if rej.size:
        ax.plot(rej[:, 0], rej[:, 1], "rx", ms=6, label="set aside as glitches", zorder=3)
    for k, ov in enumerate(view.overlays):
        a, b = affine_fit(np.interp(e, ov.energy, ov.mean), y) if e.size else (1.0, 0.0)
        ax.plot(ov.energy, a * ov.mean + b, lw=1.5, color=f"C{k}", label=ov.label)
        if ov.std is not None:
            lo, hi = a * (ov.mean - ov.std) + b, a * (ov.mean + ov.std) + b
            ax.fill_between(ov.energy, lo, hi, color=f"C{k}", alpha=0.15, lw=0)
    order = np.asarray(view.order if view.order is not None else e, dtype=float)
    if order.size:  # where the plan measured, in its order (colour: early dark, late light)
        ax.scatter(
            order, np.zeros_like(order), marker="|", s=120, c=np.arange(order.size),
            cmap="viridis", transform=ax.get_xaxis_transform(), zorder=2,
        )  # fmt: skip
    if e.size:
        pad = 0.05 * max(float(np.ptp(e)), 1.0)
        ax.set_xlim(float(e.min()) - pad, float(e.max()) + pad)
    ax.set_xlabel("mono energy (eV)")
    ax.set_ylabel(view.ylabel)
    ax.set_title(view.title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    if view.history:
        n, p = np.asarray(view.history, dtype=float).T
        axp.plot(n, p, "o-", ms=3, color="C0")
    axp.set_ylim(0.0, 1.02)
    axp.set_xlabel("points scored")
    axp.set_ylabel("best p")
    axp.grid(alpha=0.3)
    fig.tight_layout()


def view_of_run(
    run: RunState, history: Sequence[tuple[int, float]] = (), k: int = TOP_K
) -> MatchView | None:
    """A :class:`MatchView` of a run's current state; None before its first scored result."""
    res, cands = run.result, run.candidates
    if res is None or cands is None:
        return None
    # the comparator's axis is the model's: model energy = mono + energy_offset + offset
    shift = float(run.energy_offset) + float(res.offset_ev)
    overlays = []
    # the comparator is built on ``cands`` in its order: a result's indices are the set's
    for rank, i in enumerate(res.top_indices(k)):
        std = None if cands.std is None else np.array(cands.std[i], dtype=float)
        overlays.append(
            Overlay(
                f"#{rank + 1} {res.names[i]} {cands.smiles[i]}  p={res.probabilities[i]:.3f}",
                np.asarray(cands.energy, dtype=float) - shift,
                np.array(cands.mean[i], dtype=float),
                std,
            )
        )
    rejected = getattr(run.comparator, "rejected_points", None) or []
    rej = np.array([(e - run.energy_offset, mu) for e, mu, _ in rejected], dtype=float)
    return MatchView(
        title=(
            f"{run.element} K edge, {run.sample_name or run.uid[:8]}: best {res.best_name} "
            f"p={res.best_probability:.3f} after {res.n_points} points"
        ),
        energy=np.asarray(run.energies, dtype=float) - run.energy_offset,
        mu=np.asarray(run.mus, dtype=float),
        overlays=overlays,
        history=list(history),
        rejected=rej.reshape(-1, 2),
    )


class LiveMatchPlot(AnalysisSink):
    """The live plot of the run being analysed, as an analysis sink.

    :meth:`update` (analysis worker thread) keeps a snapshot; :meth:`refresh` (the figure's
    thread) draws the newest one.  In an IPython session with a GUI backend, :meth:`start`
    makes a figure whose own timer calls :meth:`refresh`; headless, call :meth:`refresh` and
    read :attr:`figure`.

    Parameters
    ----------
    figure
        The figure to draw on; a new ``matplotlib.figure.Figure`` (no pyplot, no GUI) when None.
    k
        Candidates overlaid.
    keep_runs
        Runs whose last view :attr:`views` keeps (the demo draws each edge's at the end).
    """

    def __init__(self, figure: Any = None, k: int = TOP_K, keep_runs: int = 8) -> None:
        if figure is None:
            from matplotlib.figure import Figure

            figure = Figure(figsize=(8, 6.5))
        self.figure = figure
        self.k = int(k)
        self.keep_runs = max(1, int(keep_runs))
        self._lock = threading.Lock()
        self._history: dict[str, list[tuple[int, float]]] = {}
        #: the newest view of each of the last ``keep_runs`` runs, by raw run uid
        self.views: dict[str, MatchView] = {}
        self._latest: str | None = None
        self._version = 0
        self._drawn = 0
        self._timer: Any = None

    # -- analysis worker thread
    def run_opened(self, run: RunState) -> None:
        with self._lock:
            self._history[run.uid] = []

    def update(self, run: RunState, summary: MatchSummary, scored: bool) -> None:
        # scored updates, and the run's final one: its settled result (Comparator.settled_result)
        # is what the PVs end on, so the plot ends on it too
        if run.result is None or not (scored or run.stopped):
            return
        with self._lock:
            hist = self._history.setdefault(run.uid, [])
            point = (int(run.result.n_points), float(run.result.best_probability))
            if hist and hist[-1][0] == point[0]:
                hist[-1] = point  # the same points, settled
            else:
                hist.append(point)
            history = list(hist)
        view = view_of_run(run, history, self.k)  # copies: the run moves on without us
        if view is None:
            return
        with self._lock:
            self.views.pop(run.uid, None)
            self.views[run.uid] = view
            while len(self.views) > self.keep_runs:
                self.views.pop(next(iter(self.views)))
            self._latest = run.uid
            self._version += 1

    def run_closed(self, run: RunState, summary: MatchSummary, raw_stop: dict) -> None:
        with self._lock:
            self._history.pop(run.uid, None)  # the figure keeps showing the last view

    # -- the figure's thread
    @property
    def view(self) -> MatchView | None:
        """The newest snapshot of the run updated last (None before the first scored point)."""
        with self._lock:
            return None if self._latest is None else self.views.get(self._latest)

    def refresh(self) -> bool:
        """Draw the newest snapshot if it is new; True when the figure changed."""
        with self._lock:
            version = self._version
            view = None if self._latest is None else self.views.get(self._latest)
        if view is None or version == self._drawn:
            return False
        draw_match(self.figure, view)
        self._drawn = version
        canvas = getattr(self.figure, "canvas", None)
        if canvas is not None:
            canvas.draw_idle()
        return True

    def start(self, interval_ms: int = 500) -> Any:
        """Open a pyplot window and refresh it every ``interval_ms`` from its own event loop.

        Returns the figure.  With a non-interactive backend (Agg) nothing ever fires the timer:
        call :meth:`refresh` yourself.
        """
        import matplotlib.pyplot as plt

        fig = plt.figure("xas_bluesky live match", figsize=(8, 6.5))
        self.figure = fig
        self._drawn = 0
        self._timer = fig.canvas.new_timer(interval=int(interval_ms))
        self._timer.add_callback(self.refresh)
        self._timer.start()
        plt.show(block=False)
        return fig

    def stop(self) -> None:
        """Stop the refresh timer (the figure stays)."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
