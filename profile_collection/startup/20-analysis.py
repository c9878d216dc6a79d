"""The live XANES analysis: follows XAS runs, scores candidates, publishes the score PVs.

:func:`xas_bluesky.beamline.analysis.subscribe_live_analysis` hosts the score IOC in this
process (``XAS_SCORE_PREFIX``, CA port ``XAS_SCORE_PORT`` or a free one) and subscribes the
analysis; ``XAS_CANDIDATES`` (a structure file) is the default candidate set of runs that name
none (else the shipped library of the run's edge).  ``XAS_ANALYSIS=0`` leaves it out (run
``xas-bluesky worker`` on the published documents instead, see 00-base.py); without
the analysis package the profile still loads.
"""

import atexit
import os

live_analysis = None
if os.environ.get("XAS_ANALYSIS", "1") != "0":
    try:
        from xas_bluesky.beamline.analysis import subscribe_live_analysis
    except ImportError as _exc:
        print(f"20-analysis: live analysis not available ({_exc})")
    else:
        live_analysis = subscribe_live_analysis(
            RE,
            score_prefix=SCORE_PREFIX,
            port=int(os.environ["XAS_SCORE_PORT"]) if os.environ.get("XAS_SCORE_PORT") else None,
            tiled_client=tiled_client,
            backup_directory=BACKUP_DIR,
            candidates=os.environ.get("XAS_CANDIDATES") or None,
        )
        # drain the analysis and stop the score IOC before the interpreter goes
        atexit.register(live_analysis.shutdown)
