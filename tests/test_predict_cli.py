"""``xas-bluesky predict`` end to end: real files, shipped weights, the CSV contract of CLI.md."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from xas_bluesky.apps.cli import main
from xas_bluesky.resources import candidates_file
from xas_bluesky.science.model.predictor import Predictor
from xas_bluesky.science.structures import read_structures

pytestmark = pytest.mark.system  # real IOCs, tiled, RunEngine or the shipped weights


def _frames(edge: str, n: int) -> str:
    lines = candidates_file(edge).read_text().splitlines()
    out, k = [], 0
    for _ in range(n):
        count = int(lines[k])
        out.append("\n".join(lines[k : k + 2 + count]))
        k += 2 + count
    return "\n\n".join(out) + "\n\n"


def _read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], np.array(rows[1:], dtype=float)


def _predict_smiles(tmp_path, capsys, text: str, edge: str = "O"):
    """``predict`` on a .smi file of ``text``: exit 0 asserted; (stderr, CSV header, CSV table)."""
    smi, out = tmp_path / "mols.smi", tmp_path / "mu.csv"
    smi.write_text(text)
    assert main(["predict", "--edge", edge, "--structures", str(smi), "--out", str(out)]) == 0
    return (capsys.readouterr().err, *_read_csv(out))


def test_predict_command(tmp_path):
    xyz = tmp_path / "mols.xyz"
    xyz.write_text(_frames("O", 4).replace(" ", "\t"))
    out, std = tmp_path / "mu.csv", tmp_path / "std.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "xas_bluesky.apps.cli", "predict", "--edge", "O",
         "--structures", str(xyz), "--out", str(out), "--std", str(std)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    header, table = _read_csv(out)
    structs = read_structures(xyz, edge="O")
    assert header == ["energy_eV", *[s.name for s in structs]]
    p = Predictor.load("O", device="cpu")
    np.testing.assert_allclose(table[:, 0], p.energy)
    np.testing.assert_allclose(table[:, 1:].T, p.predict(structs).values, rtol=1e-4, atol=1e-4)
    std_header, spread = _read_csv(std)
    assert std_header == header and spread.shape == table.shape and (spread[:, 1:] >= 0).all()


def test_predict_command_with_its_network_worker(tmp_path):
    """A large input runs the network in a worker process (forced here by a zero threshold):
    same spectra and spread, in the input's order, as the Python API; a bad structure in a later
    chunk is still one line and exit 1."""
    xyz = tmp_path / "mols.xyz"
    xyz.write_text(_frames("O", 600))  # two chunks of the pipeline
    out, std = tmp_path / "mu.csv", tmp_path / "std.csv"
    env = {**os.environ, "XAS_BLUESKY_PREDICT_WORKER_MIN_BYTES": "0"}
    cmd = [sys.executable, "-m", "xas_bluesky.apps.cli", "predict", "--edge", "O",
           "--structures", str(xyz), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(
        [*cmd, "--std", str(std)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr
    header, table = _read_csv(out)
    structs = read_structures(xyz, edge="O")
    assert header == ["energy_eV", *[s.name for s in structs]] and len(structs) == 600
    mu, spread = Predictor.load("O", device="cpu").predict(structs, return_std=True)
    np.testing.assert_allclose(table[:, 1:].T, mu.values, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_read_csv(std)[1][:, 1:].T, spread.values, rtol=1e-3, atol=1e-4)

    xyz.write_text(_frames("O", 600) + "3\nchlorine_thing\nO 0 0 0\nCl 1.6 0 0\nH -0.9 0.3 0\n")
    out.unlink()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and not out.exists()
    err = [ln for ln in proc.stderr.splitlines() if "outside the training domain" not in ln]
    assert len(err) == 1 and "chlorine_thing" in err[0] and "Traceback" not in proc.stderr


def test_invalid_structure_fails_with_one_line(tmp_path, capsys):
    xyz = tmp_path / "mols.xyz"
    xyz.write_text(_frames("O", 2) + "3\nchlorine_thing\nO 0 0 0\nCl 1.6 0 0\nH -0.9 0.3 0\n")
    out = tmp_path / "mu.csv"
    code = main(["predict", "--edge", "O", "--structures", str(xyz), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and not out.exists()
    assert len(err.splitlines()) == 1 and "chlorine_thing" in err and "Cl" in err
    assert "Traceback" not in err


def test_skip_invalid(tmp_path, capsys):
    xyz = tmp_path / "mols.xyz"
    xyz.write_text(
        "3\ntoo_close\nO 0 0 0\nH 0.2 0 0\nH -0.9 0.3 0\n\n"
        "3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"
        + _frames("N", 2)
        + "5\ncut_off\nC 0 0 0\nO 1.2 0 0\n"
    )
    out = tmp_path / "mu.csv"
    code = main(
        ["predict", "--edge", "N", "--structures", str(xyz), "--out", str(out), "--skip-invalid"]
    )
    err = capsys.readouterr().err
    assert code == 0
    assert "too_close" in err and "cut_off" in err and "'water': no N atom" in err
    header, table = _read_csv(out)
    assert len(header) == 3 and table.shape == (len(table), 3) and np.isfinite(table).all()


def test_smiles_names_and_domain_warning(tmp_path, capsys):
    err, header, table = _predict_smiles(tmp_path, capsys, "CC(=O)NC\nCCCCCCCCCCCCO dodecanol\n")
    assert "'dodecanol' is outside the training domain" in err
    assert header == ["energy_eV", "smi_1", "dodecanol"]
    assert table.shape[1] == 3 and (table[:, 1:] >= 0).all()


def test_duplicate_names_are_kept_in_order_and_warned(tmp_path, capsys):
    err, header, table = _predict_smiles(tmp_path, capsys, "CCO x\nCC(=O)O x\nCCO y\n")
    assert "1 structure names occur more than once ('x')" in err
    assert header == ["energy_eV", "x", "x", "y"]
    np.testing.assert_allclose(table[:, 1], table[:, 3])  # ethanol twice, acetic acid between
    assert not np.allclose(table[:, 1], table[:, 2])


@pytest.mark.parametrize("bad", ["missing.xyz", "mols.pdb"])
def test_bad_file(tmp_path, capsys, bad):
    code = main(["predict", "--edge", "O", "--structures", str(tmp_path / bad), "--out", "x.csv"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and bad in err


WATER = "3\n{}\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"


def test_frame_with_too_many_atom_lines(tmp_path, capsys):
    """A frame announcing 2 atoms with 3 atom lines is one bad structure, named: skipped with
    --skip-invalid (the frames after it kept), else one line and exit 1."""
    xyz = tmp_path / "count.xyz"
    bad = "2\nbadcount\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"
    xyz.write_text(WATER.format("water_a") + bad + WATER.format("water_b"))
    out = tmp_path / "mu.csv"
    cmd = ["predict", "--edge", "O", "--structures", str(xyz), "--out", str(out)]
    assert main([*cmd, "--skip-invalid"]) == 0
    err = capsys.readouterr().err
    assert "skipped: structure 'badcount'" in err and "3 atom lines where 2" in err
    header, table = _read_csv(out)
    assert header == ["energy_eV", "water_a", "water_b"] and np.isfinite(table).all()
    out.unlink()
    assert main(cmd) == 1 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'badcount'" in err and "frame 2" in err
    assert "Traceback" not in err


def test_fragments_dative_bonds_and_a_large_structure_are_predicted_flagged(tmp_path, capsys):
    err, header, table = _predict_smiles(
        tmp_path,
        capsys,
        "CCO.O ethanol_water\nC[N](C)(C)->O tmao\nC[N+](C)(C)[O-] tmao_charged\n",
    )
    assert "'ethanol_water' is outside the training domain (2 fragments)" in err
    assert "'tmao' is outside the training domain" in err and "dative bond" in err
    assert header == ["energy_eV", "ethanol_water", "tmao", "tmao_charged"]
    assert np.isfinite(table).all()
    np.testing.assert_allclose(table[:, 2], table[:, 3])  # the dative bond read as N+-O-

    # 100 waters in one 300-atom frame among QM9 molecules
    side = [(i, j, k) for i in range(5) for j in range(5) for k in range(4)]
    cluster = ["300", "cluster"] + [
        f"{e} {3.1 * i + dx} {3.1 * j + dy} {3.1 * k}"
        for i, j, k in side
        for e, dx, dy in (("O", 0, 0), ("H", 0.96, 0), ("H", -0.24, 0.93))
    ]
    frames = _frames("O", 4).split("\n\n")[:4]
    xyz, out = tmp_path / "mols.xyz", tmp_path / "mu.csv"
    xyz.write_text("\n\n".join([*frames[:2], "\n".join(cluster), *frames[2:]]) + "\n")
    assert main(["predict", "--edge", "O", "--structures", str(xyz), "--out", str(out)]) == 0
    assert "'cluster' is outside the training domain (100 heavy atoms" in capsys.readouterr().err
    header, table = _read_csv(out)
    assert len(header) == 6 and header[3] == "cluster" and np.isfinite(table).all()
