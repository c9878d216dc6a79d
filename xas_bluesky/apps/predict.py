"""``xas-bluesky predict``: predict XANES of structures with the shipped GNN."""

from xas_bluesky.apps.cli import not_built

add_parser = not_built("predict", "Predict XANES of structures with the shipped GNN", "issue 3")
