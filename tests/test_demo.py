"""The main job end to end: ``xas-bluesky demo`` on the simulated beamline with real IOCs, a real
tiled server and the live analysis, then ``xas-bluesky query`` on what it stored."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from live_helpers import candidates_with

from xas_bluesky.resources import candidates_file, heldout_samples

CLI = [sys.executable, "-m", "xas_bluesky"]
SCORE_PVS = (
    "Best-Name",
    "BestProb-I",
    "Entropy-I",
    "NPoints-I",
    "NextEnergy-I",
    "RunUID-I",
    "TopNames-Wfm",
    "TopScores-Wfm",
    "Status-Sts",
    "Heartbeat-I",
)

pytestmark = pytest.mark.system  # real IOCs, tiled, RunEngine or the shipped weights


def _small_library(tmp_path, edge: str, sample: str, n: int = 40):
    """The first ``n`` frames of the shipped library, the sample among them."""
    return candidates_with(candidates_file(edge), tmp_path / "candidates.xyz", sample, n)


def _query(data, *extra) -> dict:
    """``xas-bluesky query --data-dir DATA ...`` (it starts tiled on the directory): its JSON."""
    q = subprocess.run(
        [*CLI, "query", "--data-dir", str(data), *extra], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert q.returncode == 0, q.stderr[-2000:]
    return json.loads(q.stdout)


@pytest.mark.slow
def test_adaptive_demo_end_to_end(tmp_path):
    edge = "N"
    _, samples = heldout_samples(edge)
    sample = samples[1]["name"]
    cands = _small_library(tmp_path, edge, sample)
    out, plot, data = tmp_path / "demo.json", tmp_path / "demo.png", tmp_path / "data"
    run = subprocess.run(
        [*CLI, "demo", "--edge", edge, "--sample", sample, "--candidates", str(cands),
         "--max-points", "20", "--data-dir", str(data), "--json", str(out), "--plot", str(plot),
         "--seed", "1"],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in (
        "sample",
        "edge",
        "mode",
        "seed",
        "points",
        "ranking",
        "pv",
        "latency_ms",
        "run_uid",
        "analysis_run_uid",
        "tiled_uri",
        "data_dir",
        "seconds",
        "measured",
    ):
        assert key in r, key
    assert (r["sample"], r["edge"], r["mode"], r["seed"]) == (sample, edge, "adaptive", 1)
    assert 14 <= r["points"] <= 20  # the coarse pass, then no more than the budget
    assert r["stop_reason"].startswith(("confident", "budget"))

    ranking = r["ranking"]
    assert len(ranking) == 40 and {e["name"] for e in ranking} >= {sample}
    probs = np.array([e["probability"] for e in ranking])
    assert np.all(np.diff(probs) <= 1e-12) and probs.sum() == pytest.approx(1.0, abs=1e-6)
    assert all(e["smiles"] for e in ranking)

    pv = r["pv"]
    for suffix in SCORE_PVS:
        assert f"XAS:Match:{suffix}" in pv, suffix
    assert pv["XAS:Match:NPoints-I"] == r["points"]
    assert pv["XAS:Match:RunUID-I"] == r["run_uid"]
    assert pv["XAS:Match:Best-Name"] == ranking[0]["name"]
    assert pv["XAS:Match:TopNames-Wfm"].split("\n")[0] == ranking[0]["name"]
    assert pv["XAS:Match:BestProb-I"] == pytest.approx(ranking[0]["probability"], rel=1e-6)

    assert r["latency_ms"]["n"] == r["points"] and r["latency_ms"]["median"] > 0
    m = r["measured"]
    assert len(m["energy_order_eV"]) == r["points"] and len(m["mu_norm"]) == r["points"]
    trace = r["probability_trace"]  # what the live plot's lower panel shows
    assert trace[-1][0] == r["points"]
    assert trace[-1][1] == pytest.approx(ranking[0]["probability"], rel=1e-6)
    assert plot.stat().st_size > 10_000

    # what the demo stored answers `xas-bluesky query` (which starts tiled on the directory)
    predictions = _query(data, "--edge", edge)["predictions"]
    names = {p["name"] for p in predictions}
    assert sample in names and len(names) >= 40
    assert all(p["edge"] == edge and p["model_version"] and p["inchikey"] for p in predictions)
    stored = _query(data, "--run", r["run_uid"])
    assert [e["name"] for e in stored["ranking"]] == [e["name"] for e in ranking]


def test_demo_refuses_unknown_sample(tmp_path):
    run = subprocess.run(
        [*CLI, "demo", "--sample", "no_such_molecule", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "no_such_molecule" in run.stderr
    assert "Traceback" not in run.stderr


def test_fault_schedule_is_drawn_from_the_seed():
    from xas_bluesky.apps.demo_faults import GLITCH_DRILL, fault_schedule

    a, b = fault_schedule(3, 14, 49), fault_schedule(3, 14, 49)
    assert a == b and a != fault_schedule(4, 14, 49)
    kinds = [f.kind for f in a]
    assert sorted(f.arg for f in a if f.kind == "glitch") == sorted(GLITCH_DRILL)
    assert kinds.count("dump") == kinds.count("stick") == kinds.count("ioc-restart") == 1
    assert len({f.point for f in a}) == len(a) and min(f.point for f in a) >= 3


@pytest.mark.slow
def test_fault_drill_names_the_clean_answer(tmp_path):
    """``demo --faults`` (glitches, a beam dump through the ring suspender, a stuck mono, a
    score-IOC restart) names the clean run's best candidate, same seed; the JSON's counters come
    from the analysis.  The two demos run side by side (each mostly waits on the sim clock)."""
    edge = "N"
    _, samples = heldout_samples(edge)
    sample = samples[1]["name"]
    cands = _small_library(tmp_path, edge, sample)
    procs = {}
    for tag in ("clean", "faults"):
        procs[tag] = subprocess.Popen(
            [*CLI, "demo", "--edge", edge, "--sample", sample, "--candidates", str(cands),
             "--max-points", "20", "--seed", "1", "--quiet", "--data-dir", str(tmp_path / tag),
             "--json", str(tmp_path / f"{tag}.json"), *(["--faults"] if tag == "faults" else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    out = {}
    for tag, proc in procs.items():
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, (tag, err[-3000:])
        out[tag] = json.loads((tmp_path / f"{tag}.json").read_text())
    clean, drill = out["clean"], out["faults"]
    for r in (clean, drill):
        for key in ("flagged_points", "gaps", "ioc_restarts"):
            assert isinstance(r[key], int), key
    assert (clean["flagged_points"], clean["gaps"], clean["ioc_restarts"]) == (0, 0, 0)
    assert clean["faults"] is None
    assert drill["ranking"][0]["name"] == clean["ranking"][0]["name"]
    injected = drill["faults"]["injected"]
    assert not [f for f in injected if f["error"]], injected
    glitches = sum(f["kind"] == "glitch" for f in injected)
    # each glitch that struck a point is one flagged point (a dump's point may be one more)
    assert glitches >= 3 and drill["flagged_points"] >= glitches
    assert drill["ioc_restarts"] == 1 and drill["gaps"] == 0
    assert drill["faults"]["suspensions"] >= 1  # the beam dump tripped the ring suspender
    stuck = next(f["point"] for f in injected if f["kind"] == "stick")
    order = drill["measured"]["energy_order_eV"]
    assert order[stuck - 1] == pytest.approx(order[stuck - 2], abs=1e-6)  # a repeated energy
    assert drill["pv"]["XAS:Match:NPoints-I"] == drill["points"]
    # a flagged point does not spend the budget: 20 scored points, more measured
    assert drill["points"] - drill["flagged_points"] <= 20
    if drill["stop_reason"].startswith("budget"):
        assert drill["points"] == 20 + drill["flagged_points"]
    assert drill["pv"]["XAS:Match:NFlagged-I"] == drill["flagged_points"]
    # the JSON's (and the plot's) spectrum is what was scored: no saturated count sets its step
    scored = drill["measured"]
    assert len(scored["energy_eV"]) == drill["points"] - drill["flagged_points"]
    assert max(scored["mu_norm"]) < 4.0


@pytest.mark.slow
def test_open_world_demo_without_candidates(tmp_path):
    """``demo --sample-spectrum FILE --no-candidates``: groups only (FEFF library: no model
    library cached in this XDG_CACHE_HOME), no ranking; the JSON's ``groups`` / ``in_library``
    keys, the group PVs, and ``query --run`` reading them back from tiled."""
    import os

    from xas_bluesky.contracts import GROUPS

    edge = "O"
    energy, samples = heldout_samples(edge)
    sample = samples[4]
    spectrum = tmp_path / "unknown.csv"
    rows = "".join(
        f"{float(e)!r},{float(m)!r}\n" for e, m in zip(energy, sample["mu"], strict=True)
    )
    spectrum.write_text("energy_eV,mu\n" + rows)
    out, data = tmp_path / "demo.json", tmp_path / "data"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    run = subprocess.run(
        [*CLI, "demo", "--edge", edge, "--sample-spectrum", str(spectrum), "--no-candidates",
         "--max-points", "16", "--data-dir", str(data), "--json", str(out), "--quiet"],
        capture_output=True, text=True, timeout=400, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["ranking"] == [] and r["in_library"] is None and r["no_candidates"] is True
    names = [g["name"] for g in r["groups"]]
    assert sorted(names) == sorted(GROUPS[edge])
    probs = [g["probability"] for g in r["groups"]]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
    assert r["groups_points"] == r["points"] == 16
    pv = r["pv"]
    assert pv["XAS:Match:Best-Name"] == ""
    assert pv["XAS:Match:Groups-Wfm"].split("\n") == names
    assert pv["XAS:Match:GroupScores-Wfm"][0] == pytest.approx(probs[0])
    assert pv["XAS:Match:Status-Sts"] in ("Done", 3)
    stored = _query(data, "--run", r["run_uid"])
    assert stored["ranking"] == [] and [g["name"] for g in stored["groups"]] == names
    assert stored["in_library"] is None


@pytest.mark.slow
def test_demo_measured_like_spectrum_on_the_experiment_axis(tmp_path):
    """A spectrum given on the experiment's axis, which the simulated beamline broadens 0.5 eV
    and shifts by +1 eV (a convention off by 1 eV): the live analysis marginalises the
    broadening (widths 0, 0.5, 1 eV) under the experiment axis' offset prior, and names it."""
    from xas_bluesky.science.compare.axis import AXIS_CONVENTIONS

    edge = "O"
    energy, samples = heldout_samples(edge)
    s = samples[3]
    exp_axis = np.asarray(energy) - AXIS_CONVENTIONS[edge].offset_ev  # FEFF -> experiment
    rows = "".join(f"{e!r},{m!r}\n" for e, m in zip(exp_axis.tolist(), s["mu"], strict=True))
    spectrum = tmp_path / "measured.csv"
    spectrum.write_text("energy_eV,mu\n" + rows)
    cands = _small_library(tmp_path, edge, s["name"], 30)
    out, data = tmp_path / "demo.json", tmp_path / "data"
    run = subprocess.run(
        [*CLI, "demo", "--edge", edge, "--sample-spectrum", str(spectrum), "--axis", "experiment",
         "--broadening", "0.5", "--axis-offset", "1.0", "--candidates", str(cands),
         "--max-points", "30", "--data-dir", str(data), "--json", str(out), "--quiet",
         "--no-groups", "--seed", "2"],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["axis"] == "experiment" and r["widths_ev"] == [0.0, 0.5, 1.0]
    assert r["broadening_ev"] == 0.5 and r["axis_offset_ev"] == 1.0
    names = [e["name"] for e in r["ranking"]]
    assert len(names) == 30 and names[0] == s["name"]
    assert r["pv"]["XAS:Match:Best-Name"] == names[0]
    # the shift the analysis found: the recorded energy is true - mono offset, the sample's
    # features sit 1 eV above FEFF's, and offset_ev moves the recorded axis onto the model's
    assert r["offset_ev"] == pytest.approx(r["true_offset_ev"] - 1.0, abs=0.5)


@pytest.mark.slow
def test_two_edge_demo_from_one_spectrum_per_edge(tmp_path):
    """``--edge O,N`` with ``--sample-spectrum O=... --sample-spectrum N=...``: one run per edge
    of one sample (both open in one plan), the joint ranking on top and in tiled, each edge's
    own under ``edges``."""
    from xas_bluesky.resources import two_edge_candidates

    both = two_edge_candidates(tmp_path / "both.xyz")
    spectra, names = {}, []
    for edge in ("O", "N"):
        energy, samples = heldout_samples(edge)
        names.append({s["name"]: s for s in samples})
    sample = sorted(set(names[0]) & set(names[1]) & set(both.read_text().split()))[5]
    for edge, by_name in zip(("O", "N"), names, strict=True):
        energy, _ = heldout_samples(edge)
        mu = by_name[sample]["mu"]
        rows = "".join(f"{float(e)!r},{float(m)!r}\n" for e, m in zip(energy, mu, strict=True))
        spectra[edge] = tmp_path / f"{sample}_{edge}.csv"
        spectra[edge].write_text("energy_eV,mu\n" + rows)
    cands = candidates_with(both, tmp_path / "cands.xyz", sample, 30)
    out, data = tmp_path / "demo.json", tmp_path / "data"
    run = subprocess.run(
        [*CLI, "demo", "--edge", "O,N", "--sample-spectrum", f"O={spectra['O']}",
         "--sample-spectrum", f"N={spectra['N']}", "--candidates", str(cands),
         "--max-points", "18", "--data-dir", str(data), "--json", str(out), "--quiet",
         "--plot", str(tmp_path / "demo.png")],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["edge"] == "O,N" and set(r["edges"]) == {"O", "N"}
    for name in ("demo.png", "demo_O.png", "demo_N.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name
    # one plan, both edges: each coarse pass, then each point where it tells most, within
    # both edges' budgets together
    assert r["points"] == r["edges"]["O"]["points"] + r["edges"]["N"]["points"] <= 36
    for edge in ("O", "N"):
        sub = r["edges"][edge]
        assert len(sub["ranking"]) == 30 and sub["points"] >= 14
        assert sub["run_uid"] != r["edges"]["O" if edge == "N" else "N"]["run_uid"]
        assert sub["stop_reason"].startswith(("confident", "budget"))
    ranking = r["ranking"]
    probs = np.array([e["probability"] for e in ranking])
    assert len(ranking) == 30 and probs.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.diff(probs) <= 1e-12)
    assert r["joint"]["edges"] == "N,O" and r["joint"]["n_candidates"] == 30
    pv = r["pv"]
    assert pv["XAS:Match:Joint:Best-Name"] == ranking[0]["name"]
    assert pv["XAS:Match:Joint:BestProb-I"] == pytest.approx(ranking[0]["probability"], rel=1e-6)
    assert pv["XAS:Match:Joint:NCandidates-I"] == 30
    # the joint is at least as sure of the sample as the less sure edge alone
    p_true = {e["name"]: e["probability"] for e in ranking}[sample]
    p_edges = [
        {e["name"]: e["probability"] for e in r["edges"][x]["ranking"]}[sample] for x in "ON"
    ]
    assert p_true >= min(p_edges), (p_true, p_edges)
    # tiled holds the sample's match record: the last edge's run carries the joint ranking
    stored = _query(data, "--run", r["run_uid"])
    joint = stored["metadata"]["joint"]
    assert [e["name"] for e in joint["ranking"]] == [e["name"] for e in ranking]
    assert stored["metadata"]["sample_uid"] == r["sample_uid"]
    # the sample's own record: both runs, and the joint over both
    by_sample = _query(data, "--sample", r["sample_uid"])
    assert {x["run_uid"] for x in by_sample["runs"]} == {r["edges"][e]["run_uid"] for e in "ON"}
    assert {x["edge"] for x in by_sample["runs"]} == {"O", "N"}
    assert set(by_sample["joint"]["run_uids"].values()) == {x["run_uid"] for x in by_sample["runs"]}
    assert [e["name"] for e in by_sample["ranking"]] == [e["name"] for e in ranking]
