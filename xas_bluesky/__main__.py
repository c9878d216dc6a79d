"""``python -m xas_bluesky``: the ``xas-bluesky`` command line."""

import sys

from xas_bluesky.apps.cli import main

sys.exit(main())
