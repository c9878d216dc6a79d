"""``python -m xas_bluesky``: the ``xas-bluesky`` command line."""

import sys

from xas_bluesky.apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
