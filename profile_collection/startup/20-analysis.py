"""The live XANES analysis: follows XAS runs, scores candidates, publishes the score PVs.

Subscribed when :mod:`xas_bluesky.beamline.callbacks` is installed and offers
``subscribe_live_analysis(RE, **options)`` (returning what it subscribed); the profile works
without it (``XAS_ANALYSIS=0`` leaves it out on purpose).
"""

import os

live_analysis = None
if os.environ.get("XAS_ANALYSIS", "1") != "0":
    try:
        from xas_bluesky.beamline import callbacks as _xas_callbacks
    except ImportError as _exc:
        print(f"20-analysis: live analysis not available ({_exc})")
    else:
        _subscribe = getattr(_xas_callbacks, "subscribe_live_analysis", None)
        if _subscribe is None:
            print("20-analysis: xas_bluesky.beamline.callbacks has no subscribe_live_analysis()")
        else:
            live_analysis = _subscribe(RE, score_prefix=SCORE_PREFIX, tiled_client=tiled_client)
