"""Test configuration: real services on loopback (see :mod:`xas_bluesky.testing`).

The star import must stay first: it sets the Channel Access environment before anything imports
``epics`` or ``ophyd``.
"""

from xas_bluesky.testing import *  # noqa: F401,F403
