"""The live XANES analysis on the Bluesky document stream.

Layers, each usable alone:

- :mod:`.run` -- :class:`RunState`, what is known of one followed run;
- :mod:`.engine` -- :class:`AnalysisEngine`, synchronous: documents in, match summaries out;
- :mod:`.sinks` -- where summaries go: score PVs, the analysis run, tiled's match record;
- :mod:`.live_plot` -- :class:`LiveMatchPlot`, a sink that draws mu(E) with the top-3
  candidates over it;
- :mod:`.worker` -- :class:`LiveXASAnalysis`, the engine on a worker thread (the RunEngine's
  callback only queues);
- :mod:`.session` -- :class:`AnalysisSession`, all of them built and stopped together
  (:func:`subscribe_live_analysis`, the remote worker).
"""

from xas_bluesky.beamline.analysis.engine import AnalysisEngine
from xas_bluesky.beamline.analysis.live_plot import LiveMatchPlot
from xas_bluesky.beamline.analysis.run import RunState
from xas_bluesky.beamline.analysis.session import (
    AnalysisSession,
    subscribe_live_analysis,
    xas_run_router,
)
from xas_bluesky.beamline.analysis.sinks import (
    AnalysisRunSink,
    AnalysisSink,
    MemorySink,
    ScorePVSink,
    TiledMatchSink,
)
from xas_bluesky.beamline.analysis.worker import LiveXASAnalysis

__all__ = [
    "AnalysisEngine",
    "RunState",
    "AnalysisSink",
    "ScorePVSink",
    "AnalysisRunSink",
    "TiledMatchSink",
    "MemorySink",
    "LiveMatchPlot",
    "LiveXASAnalysis",
    "AnalysisSession",
    "subscribe_live_analysis",
    "xas_run_router",
]
