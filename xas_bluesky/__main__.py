"""``python -m xas_bluesky``: the ``xas-bluesky`` command line."""

import sys

from xas_bluesky.apps.cli import main

if __name__ == "__main__":  # not when a spawned worker process imports this module
    sys.exit(main())
