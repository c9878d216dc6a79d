"""``xas-bluesky demo``: run the autonomous XANES demo on the simulated beamline."""

from xas_bluesky.apps.cli import not_built

add_parser = not_built("demo", "Run the autonomous XANES demo on the simulated beamline", "issue 6")
