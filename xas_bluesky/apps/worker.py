"""``xas-bluesky worker``: run the live analysis in its own process (0MQ/Kafka)."""

from xas_bluesky.apps.cli import not_built

add_parser = not_built("worker", "Run the live analysis in its own process (0MQ/Kafka)", "issue 5")
