"""Regenerate ``profile_collection/existing_plans_and_devices.yaml`` for the queue server.

bluesky-queueserver only accepts plans and devices listed in that file; its own
``qserver-list-plans-devices`` makes it by running the startup files, which connect to the
beamline's PVs.  This starts the simulated beamline on loopback for that and stops it after::

    python tools/list_plans_devices.py

(``start-re-manager --update-existing-plans-devices ENVIRONMENT_OPEN`` also rewrites the file
whenever the worker's environment opens at a beamline.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sim_iocs.launcher import PROBE_PV, sim_ioc_args
from xas_bluesky.services import start_repeater
from xas_bluesky.testing import CA_ENV, REPEATER_PORT, IOCFactory

PROFILE = Path(__file__).resolve().parents[1] / "profile_collection"


def main() -> None:
    repeater = start_repeater(REPEATER_PORT)
    factory = IOCFactory(Path(tempfile.mkdtemp(prefix="xas-qs-")))
    try:
        proc = factory(sim_ioc_args(), probe=PROBE_PV, prefix="SIM:")
        env = {
            **os.environ,
            **CA_ENV,
            "XAS_BEAMLINE_PREFIX": proc.info["prefix"],
            "XAS_TILED_URI": "",
            "XAS_ANALYSIS": "0",
        }
        subprocess.run(
            [
                str(Path(sys.executable).parent / "qserver-list-plans-devices"),
                "--startup-dir",
                str(PROFILE / "startup"),
                "--file-dir",
                str(PROFILE),
            ],
            env=env,
            check=True,
        )
        print(f"wrote {PROFILE / 'existing_plans_and_devices.yaml'}")
    finally:
        factory.stop_all()
        repeater.stop()


if __name__ == "__main__":
    main()
