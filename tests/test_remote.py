"""The analysis in another process, fed through a real bluesky-0MQ-proxy on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from live_helpers import caget, cagets, measure_plan, shared_cache, small_candidates, wait_for

from xas_bluesky.services import ManagedProcess, free_ports, loopback_ca_env
from xas_bluesky.testing import REPEATER_PORT, next_ca_port, unique_prefix

pytestmark = pytest.mark.system  # real IOCs, tiled, RunEngine or the shipped weights

ENERGIES = np.arange(527.0, 560.0, 1.0)


def _spawn(name: str, cmd: list[str], env: dict, log_dir: Path) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            cmd,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return ManagedProcess(name, popen, log)


@pytest.fixture
def zmq_worker(ca_env, tmp_path):
    """A 0MQ proxy and an ``xas-bluesky worker`` process (score PVs on their own port)."""
    from xas_bluesky.beamline.remote import wait_for_worker

    cands = small_candidates(tmp_path / "c16.xyz", 16)
    pin, pout = free_ports(2)
    prefix, port = unique_prefix("W"), next_ca_port()
    procs = []
    try:
        procs.append(
            _spawn(
                "proxy",
                [str(Path(sys.executable).with_name("bluesky-0MQ-proxy")),
                 "--in-address", f"127.0.0.1:{pin}", "--out-address", f"127.0.0.1:{pout}"],
                {}, tmp_path / "logs",
            )
        )  # fmt: skip
        env = loopback_ca_env(port, REPEATER_PORT)
        procs.append(
            _spawn(
                "worker",
                [sys.executable, "-m", "xas_bluesky.apps.cli", "worker", "--zmq",
                 f"127.0.0.1:{pout}", "--prefix", prefix, "--port", str(port),
                 "--candidates", str(cands), "--edge", "O"],
                env, tmp_path / "logs",
            )
        )  # fmt: skip
        ok = wait_for_worker(prefix, timeout=120)
        assert ok, procs[-1].log_tail(30)
        yield {"prefix": prefix, "address": f"127.0.0.1:{pin}", "cands": cands, "procs": procs}
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.mark.slow
def test_worker_over_zmq_proxy(zmq_worker):
    from bluesky import RunEngine

    from xas_bluesky.beamline.remote import make_publisher

    cands = shared_cache().from_file(zmq_worker["cands"], "O")
    publisher = make_publisher(zmq_worker["address"])  # msgpack: the worker refuses pickle
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(publisher)
    p = zmq_worker["prefix"]
    try:
        for truth in (3, 11):  # two runs in a row, nothing lost to a slow join
            (uid,) = RE(measure_plan(cands, truth, ENERGIES, seed=truth))
            # the worker's first run loads the model and predicts the candidates: on a loaded
            # 2-core machine that alone has taken ~30 s, so allow for it (a liveness wait)
            assert wait_for(lambda uid=uid: cagets(p + "Match:RunUID-I") == uid, 90)
            assert wait_for(lambda: caget(p + "Match:NPoints-I") == len(ENERGIES), 30)
            assert wait_for(lambda: cagets(p + "Match:Status-Sts") == "Done", 30)
            top = cagets(p + "Match:TopNames-Wfm").split("\n")
            assert cagets(p + "Match:Best-Name") == top[0]
            assert cands.names[truth] in top[:3]
    finally:
        publisher.close()
    assert zmq_worker["procs"][-1].alive()
