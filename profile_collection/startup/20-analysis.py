"""The live XANES analysis: follows XAS runs, scores candidates, publishes the score PVs.

:func:`xas_bluesky.beamline.analysis.subscribe_live_analysis` hosts the score IOC in this
process (``XAS_SCORE_PREFIX``, CA port ``XAS_SCORE_PORT`` or a free one) and subscribes the
analysis; ``XAS_CANDIDATES`` (a structure file) is the default candidate set of runs that name
none (else the shipped library of the run's edge).  ``XAS_ANALYSIS=0`` leaves it out (run
``xas-bluesky worker`` on the published documents instead, see 00-base.py); without
the analysis package the profile still loads.

``live_plot`` (:class:`~xas_bluesky.beamline.analysis.LiveMatchPlot`) draws mu(E) with the top-3
candidates over it and the best probability per point; with an interactive matplotlib
(``%matplotlib qt``, before the scan) it opens its own window.  ``XAS_LIVE_PLOT=0`` leaves it
out; the queue server's worker has no screen and gets none.
"""

import atexit
import os

live_analysis = None
live_plot = None
if os.environ.get("XAS_ANALYSIS", "1") != "0":
    try:
        from xas_bluesky.beamline.analysis import LiveMatchPlot, subscribe_live_analysis
    except ImportError as _exc:
        print(f"20-analysis: live analysis not available ({_exc})")
    else:
        if os.environ.get("XAS_LIVE_PLOT", "1") != "0" and not is_re_worker_active():
            live_plot = LiveMatchPlot()
        live_analysis = subscribe_live_analysis(
            RE,
            score_prefix=SCORE_PREFIX,
            port=int(os.environ["XAS_SCORE_PORT"]) if os.environ.get("XAS_SCORE_PORT") else None,
            tiled_client=tiled_client,
            backup_directory=BACKUP_DIR,
            candidates=os.environ.get("XAS_CANDIDATES") or None,
            sinks=[live_plot] if live_plot is not None else [],
        )
        # drain the analysis and stop the score IOC before the interpreter goes
        atexit.register(live_analysis.shutdown)
        if live_plot is not None:
            import matplotlib.pyplot as plt

            if plt.isinteractive():  # a GUI event loop runs: the figure refreshes itself
                live_plot.start()
