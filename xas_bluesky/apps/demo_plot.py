"""The demo's figure: the live plot's (the measured spectrum against the top-3 candidates'
predicted spectra, the energies the plan chose, the best probability per update), drawn once
from the demo's result."""

from __future__ import annotations

import numpy as np

from xas_bluesky.beamline.analysis.live_plot import MatchView, Overlay, draw_match

__all__ = ["plot_demo", "view_of_result"]


def view_of_result(result: dict, predictions: dict | None = None) -> MatchView:
    """The live plot's :class:`~xas_bluesky.beamline.analysis.live_plot.MatchView` of a demo
    result: the scored points (normalised), the top three (``predictions`` maps names to
    ``(energy, mean, std)`` on the model's axis; shifted back by the fitted offset) and the
    best probability after each update."""
    meas = result["measured"]
    e = np.asarray(meas["energy_eV"], dtype=float)
    y = None if meas.get("mu_norm") is None else np.asarray(meas["mu_norm"], dtype=float)
    off = float(result.get("offset_ev") or 0.0)
    overlays = []
    for k, entry in enumerate(result["ranking"][:3]):
        if not predictions or entry["name"] not in predictions:
            continue
        pe, pm, ps = (np.asarray(v, dtype=float) for v in predictions[entry["name"]])
        label = f"#{k + 1} {entry['name']} {entry['smiles']}  p={entry['probability']:.3f}"
        overlays.append(Overlay(label, pe - off, pm, ps))  # model energy = mono + offset
    title = f"{result['edge']} K edge, {result['mode']} scan"
    groups = result.get("groups") or []
    if groups:  # the leading functional groups (open world)
        lead = ", ".join(f"{g['name']} {g['probability']:.2f}" for g in groups[:3])
        title += f"\ngroups: {lead}"
        if result.get("in_library") is not None:
            title += f"; in_library {result['in_library']:.2f}"
    order = meas.get("energy_order_eV")
    return MatchView(
        title=title,
        energy=e if y is not None else np.empty(0),
        mu=y if y is not None else np.empty(0),
        overlays=overlays,
        history=[(int(n), float(p)) for n, p in result.get("probability_trace") or []],
        measured_label=f"measured: {result['sample']}",
        order=None if order is None else np.asarray(order, dtype=float),
        ylabel="normalised mu",
    )


def plot_demo(result: dict, path: str, predictions: dict | None = None) -> None:
    """Write ``path`` (PNG): the live plot's figure
    (:func:`~xas_bluesky.beamline.analysis.live_plot.draw_match`) of the demo's result."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6.5))
    draw_match(fig, view_of_result(result, predictions))
    fig.savefig(path, dpi=120)


def stack_images(paths: list, out) -> None:
    """Stack PNG figures (e.g. one per edge) top to bottom into one PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = [plt.imread(str(p)) for p in paths]
    height = sum(im.shape[0] for im in images)
    width = max(im.shape[1] for im in images)
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    top = 1.0
    for im in images:
        h = im.shape[0] / height
        ax = fig.add_axes((0.0, top - h, im.shape[1] / width, h))
        ax.imshow(im)
        ax.axis("off")
        top -= h
    fig.savefig(str(out), dpi=100)
    plt.close(fig)
