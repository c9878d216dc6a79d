"""The profile under the queue server: a real redis server, a real ``start-re-manager`` whose
worker loads ``profile_collection/startup`` against the sim beamline, plans queued with plain JSON
arguments through bluesky-queueserver-api, their runs read back from a real tiled server."""

from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml

from sim_iocs.launcher import PROBE_PV, sim_ioc_args
from xas_bluesky.services import _spawn, free_ports
from xas_bluesky.testing import next_ca_port, service_missing, unique_prefix

pytestmark = [pytest.mark.system, pytest.mark.slow]

pytest.importorskip("bluesky_queueserver", reason="the queueserver extra is not installed")
pytest.importorskip("bluesky_queueserver_api", reason="the queueserver extra is not installed")

PROFILE = Path(__file__).resolve().parents[1] / "profile_collection"


@pytest.fixture(scope="module")
def redis_addr(tmp_path_factory):
    """A redis server of its own on a free loopback port (no persistence), stopped by PID."""
    exe = shutil.which("redis-server")
    if exe is None:
        service_missing("redis-server not found: `make test` installs Debian's (apt-get, as root)")
    (port,) = free_ports(1)
    logs = tmp_path_factory.mktemp("redis")
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = _spawn("redis", [*cmd, "--dir", str(logs)], {}, logs)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or not proc.alive():
                    raise RuntimeError(
                        f"redis-server did not start (log {proc.log_path})"
                    ) from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop()


def test_committed_queue_files_name_the_profiles_plans():
    existing = yaml.safe_load((PROFILE / "existing_plans_and_devices.yaml").read_text())
    perms = yaml.safe_load((PROFILE / "user_group_permissions.yaml").read_text())
    allowed = perms["user_groups"]["primary"]["allowed_plans"]
    assert set(allowed) <= set(existing["existing_plans"])
    assert {"xanes", "grid_xanes", "adaptive", "calibrate", "agent_acquire"} <= set(allowed)
    assert {"mono", "det", "sample_changer", "scores"} <= set(existing["existing_devices"])


@pytest.mark.timeout(900)
# the runner's document listener ends by the cancellation of its task (CancelledError in it)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_queue_server_runs_the_profiles_plans(
    redis_addr, ioc_factory, tiled_server, tmp_path, ca_env
):
    from bluesky_queueserver_api import BPlan
    from bluesky_queueserver_api.zmq import REManagerAPI
    from live_helpers import small_candidates

    ioc = ioc_factory(sim_ioc_args(clock=200.0), probe=PROBE_PV)
    score_prefix = unique_prefix("Q")
    # the manager may rewrite its list when the environment opens: give it a copy
    existing = tmp_path / "existing_plans_and_devices.yaml"
    shutil.copy(PROFILE / "existing_plans_and_devices.yaml", existing)
    control, info, pin, pout = free_ports(4)
    # the worker's documents through a real 0MQ proxy: bluesky-adaptive's runner listens there
    proxy = _spawn(
        "proxy",
        [str(Path(sys.executable).with_name("bluesky-0MQ-proxy")),
         "--in-address", f"127.0.0.1:{pin}", "--out-address", f"127.0.0.1:{pout}"],
        {}, tmp_path,
    )  # fmt: skip
    env = {
        "XAS_ZMQ_PUBLISH": f"127.0.0.1:{pin}",
        **ca_env,
        "XAS_BEAMLINE_PREFIX": ioc.info["prefix"],
        "XAS_TILED_URI": tiled_server.uri,
        "XAS_TILED_API_KEY": tiled_server.api_key,
        "XAS_ANALYSIS": "1",
        "XAS_SCORE_PREFIX": score_prefix,
        "XAS_SCORE_PORT": str(next_ca_port()),
        "XAS_CANDIDATES": str(small_candidates(tmp_path / "c.xyz", n=6)),
        "XAS_BACKUP_DIR": str(tmp_path / "backup"),
    }
    cmd = [
        # beside this interpreter: `make test` runs the venv's python without activating it
        str(Path(sys.executable).parent / "start-re-manager"),
        "--startup-dir",
        str(PROFILE / "startup"),
        "--existing-plans-devices",
        str(existing),
        "--update-existing-plans-devices",
        "ENVIRONMENT_OPEN",
        "--user-group-permissions",
        str(PROFILE / "user_group_permissions.yaml"),
        "--redis-addr",
        redis_addr,
        "--redis-name-prefix",
        unique_prefix("qs").rstrip(":"),
        "--zmq-control-addr",
        f"tcp://127.0.0.1:{control}",
        "--zmq-info-addr",
        f"tcp://127.0.0.1:{info}",
    ]
    manager = _spawn("re-manager", cmd, env, tmp_path)
    rm = REManagerAPI(
        zmq_control_addr=f"tcp://127.0.0.1:{control}", zmq_info_addr=f"tcp://127.0.0.1:{info}"
    )
    try:
        rm.wait_for_idle(timeout=60)  # the manager is up
        rm.environment_open()
        rm.wait_for_idle(timeout=300)  # the worker loaded the profile (torch, the model, IOCs)
        assert rm.status()["worker_environment_exists"], manager.log_path.read_text()[-3000:]
        # plain JSON arguments only, as any queue client sends them: regions are dicts
        regions = [{"start": 526.0, "stop": 530.0, "step": 1.0, "dwell": 0.5}]
        rm.item_add(BPlan("xanes", "O", sample="ref_O", regions=regions))
        rm.item_add(BPlan("adaptive", "O", sample="ref_O", max_points=16, threshold=1.01))
        # a plan outside the user group's permissions is refused, not queued
        with pytest.raises(Exception, match="not in the list of allowed plans"):
            rm.item_add(BPlan("xanes_scan", "mono", "det", edge="O"))
        rm.queue_start()
        rm.wait_for_idle(timeout=600)
        history = rm.history_get()["items"]
        results = [h["result"] for h in history]
        assert [h["name"] for h in history] == ["xanes", "adaptive"]
        assert [r["exit_status"] for r in results] == ["completed", "completed"], results
        uids = [r["run_uids"][0] for r in results]
        outcome = _optimize_through_the_queue(rm, f"127.0.0.1:{pout}", tiled_server.client())
        rm.environment_close()
        rm.wait_for_idle(timeout=60)
    finally:
        manager.stop(grace=20)
        proxy.stop()
    # the worker's writer drains its buffer when the environment closes (atexit in 00-base.py)
    client = tiled_server.client()
    runs = [client[uid] for uid in uids]
    assert [r.metadata["start"]["plan_name"] for r in runs] == [
        "xanes_scan",
        "adaptive_xanes_scan",
    ]
    assert len(runs[0]["primary"].read()["mono_energy"]) == 5
    n_adaptive = len(runs[1]["primary"].read()["mono_energy"])
    assert 14 < n_adaptive <= 16
    assert all(r.metadata["stop"]["exit_status"] == "success" for r in runs)

    # bluesky-adaptive's runner: one queued agent_acquire, its outcome read back from tiled
    run = client[outcome["run_uid"]]
    assert run.metadata["start"]["plan_name"] == "adaptive_xanes_scan"
    assert run.metadata["start"]["sample_name"] == "ref_O"
    assert "blop_correlation_uid" not in run.metadata["start"]  # only the outer run has it
    assert 14 < outcome["n_points"] <= 16 and 0.0 < outcome["best_probability"] <= 1.0
    assert outcome["best_name"]


def _optimize_through_the_queue(rm, doc_address: str, client) -> dict:
    """bluesky-adaptive's QueueserverOptimizationRunner with :class:`IdentificationOptimizer`:
    it queues the profile's ``agent_acquire`` with the optimizer's suggestion, hears the run's
    stop over 0MQ, and ingests the outcome :class:`TiledOutcomes` reads from tiled."""
    pytest.importorskip("bluesky_adaptive.queueserver")
    from bluesky.callbacks.zmq import RemoteDispatcher
    from bluesky_adaptive.protocols import QueueserverOptimizationProblem
    from bluesky_adaptive.queueserver import QueueserverClient, QueueserverOptimizationRunner

    from xas_bluesky.beamline.plans.agent import IdentificationOptimizer, TiledOutcomes
    from xas_bluesky.beamline.remote import unpack_document

    optimizer = IdentificationOptimizer(["ref_O"], edges=("O",), threshold=1.01)
    problem = QueueserverOptimizationProblem(
        optimizer=optimizer,
        actuators=["sample_changer"],
        sensors=["scores"],
        evaluation_function=TiledOutcomes(client),
        acquisition_plan="agent_acquire",
        acquisition_plan_kwargs={"max_points": 16, "threshold": 1.01},
    )
    dispatcher = RemoteDispatcher(doc_address, deserializer=unpack_document)
    qclient = QueueserverClient(rm, dispatcher)
    runner = QueueserverOptimizationRunner(problem, qclient)
    try:
        time.sleep(1.0)  # the SUB socket joins the proxy before the first document
        result = runner.run(iterations=1).result(timeout=400)
    finally:
        # QueueserverClient.stop_listener() calls RemoteDispatcher.stop() from this thread, which
        # closes the listener thread's running loop (RuntimeError): cancel its task there
        # instead, and the dispatcher stops itself on its own thread
        if dispatcher._task is not None:
            dispatcher.loop.call_soon_threadsafe(dispatcher._task.cancel)
    assert result.iterations_completed == 1 and len(result.uids) == 1
    assert optimizer.should_stop()[0]  # one sample, one edge: measured
    ((sid, suggestion, outcome),) = optimizer.get_best_points()
    assert sid == "ref_O:O" and suggestion == {"sample": "ref_O", "edge": "O"}
    return outcome
