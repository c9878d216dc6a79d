"""xas_bluesky: machine-learned X-ray absorption spectra in the live Bluesky data stream.

Layers (a lower layer never imports a higher one):

``xas_bluesky.science``
    structures, graphs, the GNN, FEFF10 simulations, spectra and the comparator; no Bluesky, no EPICS.
``xas_bluesky.beamline``
    Bluesky callbacks, caproto IOCs and ophyd devices, plans, tiled catalog, remote workers.
``xas_bluesky.apps``
    the ``xas-bluesky`` command line and the demo.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xas-bluesky")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
