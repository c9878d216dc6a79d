"""The shipped ensembles, the Predictor, the metrics and seeded training (real weights, real data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xas_bluesky.resources import heldout_samples
from xas_bluesky.science import dataset
from xas_bluesky.science.grids import energy_grid
from xas_bluesky.science.model.checkpoint import model_dir, weights_version
from xas_bluesky.science.model.metrics import evaluate, peak_positions
from xas_bluesky.science.model.predictor import Predictor
from xas_bluesky.science.structures import structure_from_xyz

pytestmark = pytest.mark.system  # real IOCs, tiled, RunEngine or the shipped weights


@pytest.fixture(scope="module", params=["O", "N"])
def shipped(request):
    edge = request.param
    _, samples = heldout_samples(edge)
    structs = [structure_from_xyz(s["name"], s["symbols"], s["xyz"], edge) for s in samples]
    truth = np.stack([s["mu"] for s in samples])
    return edge, Predictor.load(edge, device="cpu"), structs, truth


def test_checkpoint_metadata(shipped):
    edge, p, _, _ = shipped
    meta = p.metadata
    assert meta["edge"] == edge and p.edge == edge
    np.testing.assert_allclose(p.energy, energy_grid(edge))
    assert len(meta["data_hash"]) == 64 and meta["data_files"]
    assert meta["members"] >= 3 and len(p.models) == meta["members"]
    assert meta["n_train_molecules"] > 200 and meta["n_train_sites"] >= meta["n_train_molecules"]
    assert meta["wall_time_s"] > 0
    for split in ("val", "test"):
        assert 0 <= meta["metrics"][split]["precision"] <= 1
    # the version is the hash of the weights as shipped
    blob = torch.load(model_dir(edge) / "ensemble.pt", weights_only=True)
    assert p.model_version == weights_version(blob["members"]) == meta["model_version"]
    assert (model_dir(edge) / "ensemble.pt").stat().st_size < 3_000_000


def test_predict_heldout(shipped):
    edge, p, structs, truth = shipped
    mu, std = p.predict(structs, batch_size=16, return_std=True)
    assert mu.dims == ("structure", "energy") and mu.shape == truth.shape
    assert list(mu.coords["name"].values) == [s.name for s in structs]
    assert mu.attrs["model_version"] == p.model_version and mu.attrs["edge"] == edge
    assert bool(mu.in_domain.all()) and mu.smiles.values[0] == structs[0].smiles
    assert (std.values >= 0).all() and std.values.mean() > 1e-3  # the members differ
    # better than the mean training spectrum, the first baseline of docs/model.rst
    train = [
        m.spectrum()
        for m in dataset.load_molecules(dataset.default_data_files(), edge)
        if m.split == "train"
    ]
    baseline = np.mean(train, axis=0)
    assert np.abs(mu.values - truth).mean() < 0.8 * np.abs(baseline - truth).mean()
    assert evaluate(p.energy, truth, mu.values)["precision"] > 0.5


def test_batch_size_does_not_change_predictions(shipped):
    _, p, structs, _ = shipped
    one = p.predict(structs[:7], batch_size=1)
    many = p.predict(structs[:7], batch_size=64)
    np.testing.assert_allclose(one.values, many.values, rtol=1e-4, atol=1e-5)


def test_metrics_peaks():
    e = energy_grid("O")
    y = np.exp(-(((e - 531.0) / 0.6) ** 2)) + 0.5 * np.exp(-(((e - 540.0) / 2.0) ** 2))
    assert peak_positions(e, y).tolist() == pytest.approx([531.0, 540.0], abs=0.26)
    same = evaluate(e, y[None], y[None])
    assert same["recall"] == same["precision"] == 1.0 and same["mae"] == 0.0
    shifted = np.interp(e - 2.0, e, y)  # every peak 2 eV higher
    moved = evaluate(e, y[None], shifted[None])
    assert moved["recall"] == moved["precision"] == 0.0


def test_training_is_seeded_and_reproducible():
    from xas_bluesky.science.model.training import TrainConfig, load_examples, train_member

    examples = load_examples("N")
    train = [e for e in examples if e.split == "train"][:24]
    val = [e for e in examples if e.split == "val"][:8]
    cfg = TrainConfig(epochs=2, batch_size=8, dim=8)
    a, ha = train_member(train, val, cfg, len(energy_grid("N")))
    b, hb = train_member(train, val, cfg, len(energy_grid("N")))
    assert ha["val_loss"] == hb["val_loss"]
    for (k, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), k


def test_schnet_variant_sees_geometry_not_orientation_and_round_trips(tmp_path):
    # the 3D variant (benchmarks/variants.py): its spectra must not change when a molecule is
    # rotated and moved, must change when an atom moves, and a saved member must load back
    from xas_bluesky.science.model.checkpoint import load_ensemble, save_ensemble
    from xas_bluesky.science.model.schnet import molecule_pairs
    from xas_bluesky.science.model.training import (
        TrainConfig,
        load_examples,
        predict_examples,
        train_member,
    )

    batch = torch.tensor([0, 0, 0, 1, 1, 2])
    pairs = {tuple(p) for p in molecule_pairs(batch).t().tolist()}
    assert pairs == {(i, j) for i in range(6) for j in range(6) if i != j and batch[i] == batch[j]}

    examples = load_examples("N")
    train = [e for e in examples if e.split == "train"][:24]
    val = [e for e in examples if e.split == "val" and e.graph.num_nodes > 2][:4]
    cfg = TrainConfig(arch="schnet", epochs=2, batch_size=8, dim=8)
    model, _ = train_member(train, val, cfg, len(energy_grid("N")))
    before = predict_examples([model], val)
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    rot = torch.from_numpy(q.astype(np.float32))
    for e in val:
        e.graph.pos = e.graph.pos @ rot.T + torch.tensor([1.0, -2.0, 0.5])
    np.testing.assert_allclose(predict_examples([model], val), before, rtol=1e-4, atol=1e-5)
    val[0].graph.pos[0] += torch.tensor([0.3, 0.0, 0.0])
    assert not np.allclose(predict_examples([model], val)[0], before[0], atol=1e-5)
    save_ensemble(tmp_path, [model], {"edge": "N", "energy": energy_grid("N").tolist()})
    (loaded,), meta = load_ensemble(tmp_path)
    assert meta["config"]["arch"] == "schnet"
    np.testing.assert_allclose(
        predict_examples([loaded], val), predict_examples([model], val), rtol=1e-2, atol=1e-3
    )
    # the prediction path (structures -> graphs with positions -> spectra) takes it as it is
    p = Predictor.load("N", device="cpu", directory=tmp_path)
    sample = heldout_samples("N")[1][0]
    s = structure_from_xyz(sample["name"], sample["symbols"], np.asarray(sample["xyz"]), "N")
    mu = p.predict([s]).values[0]
    assert mu.shape == energy_grid("N").shape and np.isfinite(mu).all()


def test_bondless_molecules_do_not_depend_on_their_batch():
    # water alone has no bond (hydrogens are node features): the message-passing rounds must
    # still run, as they did in training, whatever else is in the batch
    p = Predictor.load("O", device="cpu")
    water = structure_from_xyz(
        "water", ["O", "H", "H"], np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0.0]]), "O"
    )
    ethanol = structure_from_xyz(
        "ethanol",
        ["C", "C", "O", "H", "H", "H", "H", "H", "H"],
        np.array(
            [
                [-0.05, -0.47, 0.0],
                [1.29, 0.26, 0.0],
                [2.31, -0.73, 0.0],
                [-0.88, 0.24, 0.0],
                [-0.13, -1.11, 0.88],
                [-0.13, -1.11, -0.88],
                [1.37, 0.9, 0.89],
                [1.37, 0.9, -0.89],
                [3.16, -0.27, 0.0],
            ]
        ),
        "O",
    )
    alone = p.predict([water], batch_size=1).values[0]
    mixed = p.predict([ethanol, water, ethanol], batch_size=3).values[1]
    np.testing.assert_allclose(alone, mixed, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("edge", ["O", "N"])
def test_committed_data_still_hold_what_the_shipped_model_saw(edge):
    # `xas-bluesky train --reproduce` retrains from exactly these files: none may have changed
    from xas_bluesky.apps.train import _shipped_recipe

    paths, settings, members, version = _shipped_recipe(edge)
    assert paths and members >= 3 and version == Predictor.load(edge, "cpu").model_version
    assert settings["seed"] == 0 and settings["epochs"] >= 1


def test_train_cli_writes_beside_not_over_the_shipped_model_and_trains_jointly(tmp_path):
    import json
    import subprocess
    import sys

    from data_helpers import small_feff_file

    # a small data set: the sites of the first 60 N molecules of the first committed file
    data = small_feff_file(tmp_path / "small.jsonl.gz", "N", 60)
    shipped = model_dir("N") / "ensemble.pt"
    before = shipped.read_bytes()
    cmd = [sys.executable, "-m", "xas_bluesky.apps.cli", "train", "--edge", "N"]
    cmd += ["--members", "1", "--epochs", "2", "--dim", "8", "--data", str(data), "--joint"]
    cmd += ["--isomer-sets", "0"]  # no pass over QM9 where it is installed (30 s)
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "models" / "N" / "ensemble.pt").is_file()
    meta = json.loads((tmp_path / "models" / "N" / "metadata.json").read_text())
    assert meta["data_files"] == ["small.jsonl.gz"] and meta["members"] == 1
    assert meta["train_config"]["joint"] and meta["n_train_other_edge"]["sites"] > 0
    assert shipped.read_bytes() == before
    assert "in models/N" in run.stdout
