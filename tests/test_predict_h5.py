"""``xas-bluesky predict --out FILE.h5``: streamed HDF5, resumable after a kill, on dask workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from xas_bluesky.apps.cli import main
from xas_bluesky.resources import candidates_file
from xas_bluesky.science.prediction_file import PredictionFile, read_predictions
from xas_bluesky.science.structures import count_records, read_structures

pytestmark = pytest.mark.system  # the shipped weights


def _frames(n: int, start: int = 0) -> list[str]:
    lines = candidates_file("O").read_text().splitlines()
    out, k = [], 0
    while len(out) < start + n:
        count = int(lines[k])
        out.append("\n".join(lines[k : k + 2 + count]))
        k += 2 + count
        if k >= len(lines):
            k = 0
    return out[start:]


def _xyz(path, frames: list[str]):
    path.write_text("\n".join(frames) + "\n")
    return path


def _predict(*args: str) -> int:
    return main(["predict", "--edge", "O", "--no-progress", *args])


def test_h5_rows_match_the_csv_contract_in_input_order(tmp_path, capsys):
    xyz = _xyz(tmp_path / "m.xyz", _frames(40))
    csv_out, h5 = tmp_path / "mu.csv", tmp_path / "mu.h5"
    assert main(["predict", "--edge", "O", "--structures", str(xyz), "--out", str(csv_out),
                 "--std", str(tmp_path / "std.csv")]) == 0  # fmt: skip
    assert (
        _predict("--structures", str(xyz), "--out", str(h5), "--workers", "0", "--chunk", "7") == 0
    )
    got = read_predictions(h5)
    table = np.loadtxt(csv_out, delimiter=",", skiprows=1)
    std = np.loadtxt(tmp_path / "std.csv", delimiter=",", skiprows=1)
    structs = read_structures(xyz, edge="O")
    assert got["names"] == [s.name for s in structs]
    assert got["smiles"] == [s.smiles for s in structs]
    np.testing.assert_allclose(got["energy"], table[:, 0])
    # the CSV keeps 5 significant digits
    np.testing.assert_allclose(got["mu"], table[:, 1:].T, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got["std"], std[:, 1:].T, rtol=2e-4, atol=1e-6)
    with h5py.File(h5) as f:
        assert f["mu"].chunks is not None and f["mu"].maxshape == (None, got["energy"].size)
        assert f["names"].maxshape == (None,)
    assert got["attrs"]["complete"] is True or got["attrs"]["complete"] == 1
    assert got["attrs"]["rows"] == got["attrs"]["records_read"] == 40
    assert got["attrs"]["edge"] == "O" and got["attrs"]["model_version"]
    # without --resume an existing file is an error and stays as it was
    before = h5.read_bytes()
    capsys.readouterr()
    assert _predict("--structures", str(xyz), "--out", str(h5), "--workers", "0") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0] and "--resume" in err[0]
    assert h5.read_bytes() == before
    # --resume on a complete file adds nothing
    assert _predict("--structures", str(xyz), "--out", str(h5), "--workers", "0", "--resume") == 0
    assert read_predictions(h5)["names"] == got["names"]


def test_invalid_structures_skipped_or_stopping_at_the_first(tmp_path, capsys):
    frames = _frames(12)
    frames[5] = "3\nbroken\nO 0 0 0\nH 0.96 0 0\n"  # announces 3 atoms, has 2
    frames[9] = "2\nno_oxygen\nC 0 0 0\nH 1.09 0 0"
    xyz = _xyz(tmp_path / "m.xyz", frames)
    h5 = tmp_path / "skip.h5"
    assert _predict("--structures", str(xyz), "--out", str(h5), "--workers", "0", "--chunk", "4",
                    "--skip-invalid") == 0  # fmt: skip
    got = read_predictions(h5)
    assert len(got["names"]) == 10 and "broken" not in got["names"]
    assert got["attrs"]["records_read"] == 12 and got["attrs"]["rows"] == 10
    assert capsys.readouterr().err.count("skipped:") == 2
    # without --skip-invalid: one line, exit 1, the rows before the bad structure committed
    h5 = tmp_path / "stop.h5"
    assert _predict("--structures", str(xyz), "--out", str(h5), "--workers", "0",
                    "--chunk", "4") == 1  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken" in err[0] and "truncated" in err[0]
    part = read_predictions(h5)
    assert part["names"] == got["names"][:5] and part["attrs"]["records_read"] == 5
    assert not part["attrs"]["complete"]


def test_an_append_cut_short_is_cut_back_on_resume(tmp_path):
    energy = np.linspace(530.0, 560.0, 5)
    path = tmp_path / "p.h5"
    with PredictionFile.create(path, energy, edge="O", model_version="v", source="s") as f:
        f.append(["a", "b"], ["C", "CC"], np.ones((2, 5)), np.zeros((2, 5)), 3)
    with h5py.File(path, "r+") as h5:  # a writer killed between the data and the commit
        for name in ("mu", "std", "names", "smiles"):
            h5[name].resize(4, axis=0)
    f = PredictionFile.resume(path, energy, edge="O", model_version="v", source="s")
    assert (f.rows, f.records_read) == (2, 3)
    f.append(["c"], ["CCC"], 2 * np.ones((1, 5)), np.zeros((1, 5)), 1)
    f.close(complete=True)
    got = read_predictions(path)
    assert got["names"] == ["a", "b", "c"] and got["mu"][:, 0].tolist() == [1.0, 1.0, 2.0]
    for kw, what in (({"model_version": "w"}, "model_version"), ({"edge": "N"}, "edge")):
        args = {"edge": "O", "model_version": "v", "source": "s", **kw}
        with pytest.raises(ValueError, match=what):
            PredictionFile.resume(path, energy, **args)


def test_killed_run_resumes_to_the_same_rows(tmp_path):
    """SIGKILL mid-run, then --resume: every structure once, in order, as an unbroken run."""
    n = 1200
    xyz = _xyz(tmp_path / "m.xyz", [f.replace(f.splitlines()[1], f"m{k:05d}", 1)
                                     for k, f in enumerate(_frames(n))])  # fmt: skip
    assert count_records(xyz) == n
    h5 = tmp_path / "run.h5"
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")  # read the counters while it writes
    cmd = [sys.executable, "-m", "xas_bluesky.apps.cli", "predict", "--edge", "O",
           "--structures", str(xyz), "--out", str(h5), "--workers", "0", "--chunk", "50",
           "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline, rows = time.monotonic() + 180, 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with h5py.File(h5, "r") as f:
                    rows = int(f.attrs["rows"])
            except (OSError, KeyError):
                rows = 0
            if rows >= 100:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    killed_at = read_predictions(h5)["attrs"]["rows"]
    assert 100 <= killed_at < n
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    got = read_predictions(h5)
    assert got["names"] == [f"m{k:05d}" for k in range(n)]
    assert got["attrs"]["records_read"] == n and got["attrs"]["complete"]
    whole = tmp_path / "whole.h5"
    assert _predict("--structures", str(xyz), "--out", str(whole), "--workers", "0") == 0
    np.testing.assert_allclose(got["mu"], read_predictions(whole)["mu"], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_dask_workers_give_the_same_rows(tmp_path):
    xyz = _xyz(tmp_path / "m.xyz", _frames(300))
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    assert _predict("--structures", str(xyz), "--out", str(one), "--workers", "0") == 0
    assert _predict("--structures", str(xyz), "--out", str(two), "--workers", "2",
                    "--chunk", "64") == 0  # fmt: skip
    a, b = read_predictions(one), read_predictions(two)
    assert a["names"] == b["names"] and a["smiles"] == b["smiles"]
    np.testing.assert_allclose(a["mu"], b["mu"], rtol=1e-6, atol=1e-7)


def test_h5_only_options_are_refused_for_csv(tmp_path, capsys):
    xyz = _xyz(tmp_path / "m.xyz", _frames(2))
    assert _predict("--structures", str(xyz), "--out", str(tmp_path / "a.csv"), "--resume") == 1
    assert "FILE.h5" in capsys.readouterr().err
