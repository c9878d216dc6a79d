"""``xas-bluesky sim-beamline``: start the simulated XAS beamline IOCs."""

from xas_bluesky.apps.cli import not_built

add_parser = not_built("sim-beamline", "Start the simulated XAS beamline IOCs", "issue 4")
