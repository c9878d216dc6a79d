"""The demo's figure: the measured spectrum against the top-3 candidates' predicted spectra, with
the energies the plan chose marked."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_demo"]


def plot_demo(result: dict, path: str, predictions: dict | None = None) -> None:
    """Write ``path`` (PNG) from the demo's result dict.

    ``predictions`` maps candidate names to ``(energy, mean, std)``; the demo passes those of
    the top three.  The predicted spectra are put on the measurement's scale by a least-squares
    affine fit over the measured points, shifted by the fitted mono offset.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meas = result["measured"]
    e = np.asarray(meas["energy_eV"], dtype=float)
    y = None if meas.get("mu_norm") is None else np.asarray(meas["mu_norm"], dtype=float)
    fig, (ax, axp) = plt.subplots(
        2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [4, 1]}
    )
    if y is not None:
        ax.plot(e, y, "k.", ms=4, label=f"measured: {result['sample']} ({result['points']} points)")
    off = float(result.get("offset_ev") or 0.0)
    for k, entry in enumerate(result["ranking"][:3]):
        if not predictions or entry["name"] not in predictions:
            continue
        pe, pm, ps = (np.asarray(v, dtype=float) for v in predictions[entry["name"]])
        if y is not None and y.size >= 3:
            p_at = np.interp(e + off, pe, pm)
            a, b = np.polyfit(p_at, y, 1) if np.ptp(p_at) > 0 else (1.0, 0.0)
        else:
            a, b = 1.0, 0.0
        x = pe - off
        ax.plot(
            x,
            a * pm + b,
            lw=1.6,
            color=f"C{k}",
            label=f"#{k + 1} {entry['name']} {entry['smiles']}  p={entry['probability']:.3f}",
        )
        ax.fill_between(x, a * (pm - ps) + b, a * (pm + ps) + b, color=f"C{k}", alpha=0.15)
    ax.set_ylabel("normalised mu")
    title = f"{result['edge']} K edge, {result['mode']} scan"
    groups = result.get("groups") or []
    if groups:  # the leading functional groups (open world)
        lead = ", ".join(f"{g['name']} {g['probability']:.2f}" for g in groups[:3])
        title += f"\ngroups: {lead}"
        if result.get("in_library") is not None:
            title += f"; in_library {result['in_library']:.2f}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    chosen = np.asarray(meas.get("energy_order_eV") or e, dtype=float)
    order = np.arange(1, chosen.size + 1)
    axp.scatter(chosen, order, s=8, c=order, cmap="viridis")
    axp.set_ylabel("point #")
    axp.set_xlabel("energy (eV, FEFF10 axis, mono readback)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
