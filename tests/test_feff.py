"""The FEFF10 pipeline on tiny molecules (needs the optional feff10-rs; skipped cleanly without)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from xas_bluesky.science.feff import feff_available, feff_input_text

pytestmark = pytest.mark.skipif(not feff_available(), reason="feff10-rs (extra 'simulate') missing")

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
