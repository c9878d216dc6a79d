"""``xas-bluesky train``: train the GNN ensemble from the committed FEFF data."""

from xas_bluesky.apps.cli import not_built

add_parser = not_built("train", "Train the GNN ensemble from the committed FEFF data", "issue 3")
