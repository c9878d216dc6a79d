"""The FEFF10 pipeline: FEFF itself on tiny molecules (needs the optional feff10-rs; skipped
cleanly without), and the batch runner's resumability and Ctrl-C with a stand-in for FEFF."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from xas_bluesky.science.feff import (
    SiteJob,
    completed_keys,
    feff_available,
    feff_input_text,
    run_sites,
)

needs_feff = pytest.mark.skipif(not feff_available(), reason="feff10-rs (extra 'simulate') missing")

WATER = {  # QM9 molecule 3, B3LYP geometry
    "qm9_index": 3,
    "smiles": "O",
    "symbols": ["O", "H", "H"],
    "xyz": [
        [-0.0343604951, 0.9775395708, 0.0076015923],
        [0.0647664923, 0.0205721989, 0.0015346341],
        [0.8717903737, 1.3007924048, 0.0006931302],
    ],
}
LONE_OXYGEN = {"qm9_index": 0, "smiles": "[O]", "symbols": ["O"], "xyz": [[0.0, 0.0, 0.0]]}


@needs_feff
def test_input_cards_match_the_training_data():
    text = feff_input_text(WATER["symbols"], np.array(WATER["xyz"]), 0)
    for card in (
        "EDGE K",
        "S02 1.0",
        "COREHOLE FSR",
        "EXCHANGE 0 0.0 0.0",
        "SCF 4.0",
        "XANES 4.0 0.05 0.1",
    ):
        assert card in text
    # absorber at the origin, FMS radius = farthest atom + 0.5 A
    assert "0.000000 0.000000 0.000000 0 O" in text
    rmax = max(np.linalg.norm(np.subtract(p, WATER["xyz"][0])) for p in WATER["xyz"])
    assert f"FMS {rmax + 0.5:.4f}" in text


@needs_feff
@pytest.mark.slow
def test_simulate_cli_runs_resumes_and_records_failures(tmp_path):
    mols = tmp_path / "mols.jsonl"
    mols.write_text(json.dumps(WATER) + "\n" + json.dumps(LONE_OXYGEN) + "\n")
    out = tmp_path / "sites.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "xas_bluesky.apps.cli",
        "simulate",
        "--molecules",
        str(mols),
        "--out",
        str(out),
        "--workers",
        "2",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""  # FEFF's chatter stays out of stdout
    records = {r["qm9_index"]: r for r in map(json.loads, out.read_text().splitlines())}
    water, lone = records[3], records[0]
    assert water["ok"] and water["element"] == "O" and water["site"] == 0
    omega, mu = np.array(water["omega"]), np.array(water["mu"])
    assert 520 < omega[0] < 532 and omega[-1] > 570  # FEFF10's absolute axis, O K edge
    assert mu[0] < 0.1 and 0.5 < mu[-1] < 1.5  # normalised to the atomic background
    assert not lone["ok"] and "atomic" in lone["error"]  # kept on record, not fatal
    # resumable: nothing is run twice
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "0 sites run" in again.stderr
    assert len(out.read_text().splitlines()) == 2


def test_committed_data_matches_schema():
    from xas_bluesky.science.dataset import default_data_files

    files = default_data_files()
    assert files, "no committed FEFF data"
    with gzip.open(files[0], "rt") as fh:
        rec = json.loads(fh.readline())
    assert {
        "qm9_index",
        "smiles",
        "element",
        "site",
        "symbols",
        "xyz",
        "omega",
        "mu",
        "ok",
        "seconds",
    } <= set(rec)


# The runner's own behaviour is tested with a stand-in for FEFF (a 2 s sleep): the real thing
# costs ~12 s a site, and what is tested here -- appending, resuming, stopping -- is the runner's.
_SLOW_RUNNER = """
import sys, time
from xas_bluesky.science.feff import SiteJob, run_sites

def slow(job, workroot):
    time.sleep(2.0)
    return {"qm9_index": job.qm9_index, "element": job.element, "site": job.site, "ok": True}

if __name__ == "__main__":
    jobs = [SiteJob(i, "O", "O", 0, ("O",), ((0.0, 0.0, 0.0),)) for i in range(20)]
    print("started", flush=True)
    run_sites(jobs, sys.argv[1], workers=2, workroot=sys.argv[2], runner=slow)
"""


def test_ctrl_c_stops_a_batch_at_once_and_keeps_what_finished(tmp_path):
    script = tmp_path / "batch.py"
    script.write_text(_SLOW_RUNNER)
    out, work = tmp_path / "sites.jsonl", tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "started"
    time.sleep(4.5)  # two rounds of two sites done, the third in flight
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # without cancelling, the 16 queued sites (16 s) would run first; with it, at once
    assert time.monotonic() - t0 < 8, err
    assert "KeyboardInterrupt" in err and proc.returncode != 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert 2 <= len(records) < 10 and all(r["ok"] for r in records)
    assert not list(work.iterdir())  # the run's work folder is gone, stopped workers' too


def test_a_line_cut_short_by_a_killed_run_is_not_joined_to_the_next(tmp_path):
    out = tmp_path / "sites.jsonl"
    out.write_text('{"qm9_index": 1, "element": "O", "site": 0, "ok": true}\n{"qm9_ind')
    job = SiteJob(2, "O", "O", 0, ("O",), ((0.0, 0.0, 0.0),))
    assert run_sites([job], out, runner=_instant) == 1
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["qm9_index"] == 2
    assert completed_keys([out]) == {(1, "O", 0), (2, "O", 0)}


def test_gzip_output_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="plain JSONL"):
        run_sites([], tmp_path / "sites.jsonl.gz", runner=_instant)
    assert not (tmp_path / "sites.jsonl.gz").exists()


def _instant(job, workroot):
    return {"qm9_index": job.qm9_index, "element": job.element, "site": job.site, "ok": True}


_SLOW_RUNNER_PIDS = """
import os, sys, time
from xas_bluesky.science.feff import SiteJob, run_sites

def slow(job, workroot):
    open(os.path.join(sys.argv[3], str(os.getpid())), "w").close()
    time.sleep(2.0)
    return {"qm9_index": job.qm9_index, "element": job.element, "site": job.site, "ok": True}

if __name__ == "__main__":
    jobs = [SiteJob(i, "O", "O", 0, ("O",), ((0.0, 0.0, 0.0),)) for i in range(20)]
    print("started", flush=True)
    run_sites(jobs, sys.argv[1], workers=2, workroot=sys.argv[2], runner=slow)
"""


def test_sigterm_to_the_batch_alone_stops_its_workers_too(tmp_path):
    """``kill PID`` of a batch (SIGTERM to the parent only, not its group): the parent stops its
    workers before it exits -- with Python's default SIGTERM they ran on as orphans."""
    script = tmp_path / "batch.py"
    script.write_text(_SLOW_RUNNER_PIDS)
    out, work, pids = tmp_path / "sites.jsonl", tmp_path / "work", tmp_path / "pids"
    work.mkdir()
    pids.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(work), str(pids)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "started"
    time.sleep(3.0)
    os.kill(proc.pid, signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    workers = [int(p.name) for p in pids.iterdir()]
    assert workers and proc.returncode != 0, err
    deadline = time.monotonic() + 5
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [w for w in workers if os.path.exists(f"/proc/{w}")]
        time.sleep(0.1)
    assert not alive, f"workers left running: {alive}"
    assert all(json.loads(line)["ok"] for line in out.read_text().splitlines())
