"""``xas-bluesky query``: query stored predictions and match results in tiled."""

from xas_bluesky.apps.cli import not_built

add_parser = not_built("query", "Query stored predictions and match results in tiled", "issue 5")
