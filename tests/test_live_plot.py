"""The live plot (:class:`LiveMatchPlot`): fed by a real analysis engine, rendered headless (Agg),
and its content read back from the figure."""

from __future__ import annotations

import dataclasses

import numpy as np
from test_engine import E33, GRID, TRUTH, _feed, _run, cands  # noqa: F401  (cands: a fixture)

from xas_bluesky.beamline.analysis import AnalysisEngine, LiveMatchPlot, MemorySink


def test_live_plot_draws_the_scored_points_and_the_top_three(cands, tmp_path):  # noqa: F811
    """One point with a zero I0 among 33: the plot shows the 32 scored points, the top-3
    candidates (the true one first, its fitted curve through the points), and the best
    probability after every update; nothing is drawn before a refresh, nothing twice."""
    plot = LiveMatchPlot()
    sink = MemorySink()
    engine = AnalysisEngine([sink, plot], candidates=cands)
    i0 = np.full(E33.size, 1e6)
    i0[7] = 0.0
    # the sample's features 1.5 eV below the model's on the mono, the run's own energy_offset
    # 0.5 eV: the comparator fits the other 1.0 eV, and the plot must draw the candidates on
    # the mono's axis (model energy = mono + energy_offset + fitted offset)
    seen = dataclasses.replace(
        cands, mean=np.stack([np.interp(GRID + 1.5, GRID, m) for m in cands.mean])
    )
    uid, docs = _run(E33, seen, i0=i0, md={"energy_offset": 0.5})
    assert not plot.refresh()  # nothing scored yet
    _feed(engine, docs)
    final = sink.finals[uid]
    assert final.best_name == f"c{TRUTH}"
    assert abs(engine.results[uid].offset_ev - 1.0) < 0.3
    assert plot.refresh() and not plot.refresh()  # drawn once per new view

    ax, axp = plot.figure.axes
    measured = [ln for ln in ax.get_lines() if ln.get_marker() == "."]
    assert len(measured) == 1
    x = measured[0].get_xdata()
    assert x.size == 32 and E33[7] not in x  # the flagged point is not drawn
    curves = [ln for ln in ax.get_lines() if ln.get_label().startswith("#")]
    assert [ln.get_label().split()[1] for ln in curves][0] == f"c{TRUTH}"
    assert len(curves) == 3
    # the best candidate's curve, put on the measurement's scale, goes through the points
    y = measured[0].get_ydata()
    fit = np.interp(x, curves[0].get_xdata(), curves[0].get_ydata())
    assert np.max(np.abs(fit - y)) < 0.05 * np.ptp(y)
    (hist,) = axp.get_lines()
    n, p = hist.get_xdata(), hist.get_ydata()
    assert n[-1] == final.n_points and p[-1] == final.best_probability
    assert np.all(np.diff(n) > 0) and len(n) >= 10  # one point per scored update
    assert f"c{TRUTH}" in ax.get_title()
    out = tmp_path / "live.png"
    plot.figure.savefig(out)
    assert out.stat().st_size > 10_000
    assert set(plot.views) == {uid}


def test_the_analysis_run_has_hints_for_generic_tools(cands, capsys):  # noqa: F811
    """bluesky's BestEffortCallback, fed the analysis run, tabulates the hinted fields
    (best probability, entropy, offset) against the points scored."""
    from bluesky.callbacks.best_effort import BestEffortCallback

    from xas_bluesky.beamline.analysis import AnalysisRunSink
    from xas_bluesky.contracts import ANALYSIS_KEYS

    bec = BestEffortCallback()
    bec.disable_plots()
    docs_out = []
    uid, docs = _run(E33[:12], cands)
    engine = AnalysisEngine(
        [AnalysisRunSink([bec, lambda n, d: docs_out.append((n, d))])], candidates=cands
    )
    _feed(engine, docs)
    start = next(d for n, d in docs_out if n == "start")
    assert start["hints"]["dimensions"] == [[["n_points"], "primary"]]  # JSON-safe: lists
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if "best_probability" in line)
    for key in ("n_points", "entropy", "offset_ev"):
        assert ANALYSIS_KEYS[key] in header
    assert ANALYSIS_KEYS["best_name"] not in header  # text fields are not hinted
    assert f"analysis xas_structure_match ['{start['uid'][:8]}']" in table  # its water mark
