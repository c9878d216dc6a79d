"""``xas-bluesky serve-ioc``: serve the structure-match score PVs (caproto IOC)."""

from xas_bluesky.apps.cli import not_built

add_parser = not_built("serve-ioc", "Serve the structure-match score PVs (caproto IOC)", "issue 5")
