"""Both K edges of one sample, live: a real RunEngine measures the O and then the N edge of a
held-out molecule on the simulated beamline; the analysis combines the runs of the same
``sample_uid`` and publishes the joint posterior on ``Match:Joint:*`` (Channel Access)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from live_helpers import candidates_with, shared_cache

from sim_iocs.launcher import PROBE_PV, sim_ioc_args
from xas_bluesky.resources import heldout_samples, two_edge_candidates
from xas_bluesky.testing import IOCFactory, next_ca_port, unique_prefix

pytestmark = pytest.mark.system  # real IOCs, RunEngine and the shipped weights


@pytest.fixture(scope="module")
def setup(ca_env, tmp_path_factory):
    from xas_bluesky.beamline.devices import make_devices

    tmp = tmp_path_factory.mktemp("joint")
    both = two_edge_candidates(tmp / "both.xyz")
    names_o = {s["name"] for s in heldout_samples("O")[1]}
    names_n = {s["name"] for s in heldout_samples("N")[1]}
    sample = sorted(names_o & names_n & set(both.read_text().split()))[3]
    cands = candidates_with(both, tmp / "cands.xyz", sample, 24)
    factory = IOCFactory(tmp / "ioc-logs")
    try:
        proc = factory(
            sim_ioc_args(slots=[f"{sample}=heldout:{sample}"], sample=sample, clock=400.0,
                         seed=5, offset=0.2),
            probe=PROBE_PV,
        )  # fmt: skip
        devs = make_devices(proc.info["prefix"], name_prefix="")
        for edge in ("O", "N"):  # predicted before the scans
            shared_cache().from_file(cands, edge)
        yield {"devs": devs, "sample": sample, "cands": cands}
    finally:
        factory.stop_all()


def test_two_edges_of_one_sample_give_a_joint_posterior_on_the_pvs(setup):
    from bluesky import RunEngine

    from xas_bluesky.beamline.analysis import subscribe_live_analysis
    from xas_bluesky.beamline.epics.devices import MatchScores
    from xas_bluesky.beamline.plans import grid_xanes_scan
    from xas_bluesky.science.compare.joint import joint_result

    devs, sample, cands = setup["devs"], setup["sample"], str(setup["cands"])
    RE = RunEngine({}, context_managers=[])
    docs: list[tuple[str, dict]] = []  # the analysis runs' documents
    prefix = unique_prefix("JT")
    analysis = subscribe_live_analysis(
        RE, score_prefix=prefix, port=next_ca_port(), candidates=cands, cache=shared_cache(),
        analysis_callbacks=[lambda name, doc: docs.append((name, doc))],
    )  # fmt: skip
    sample_uid = str(uuid.uuid4())
    common = dict(sample=sample, sample_changer=devs.sample_changer, candidates=cands, step=1.0)

    def scan(edge: str, uid: str) -> str:
        (run,) = RE(grid_xanes_scan(devs.mono, devs.det, edge=edge, md={"sample_uid": uid},
                                    **common))  # fmt: skip
        assert analysis.wait_idle(60)
        return run

    try:
        scores = MatchScores(prefix, name="scores", wait_timeout=30)
        scores.wait_for_connection(timeout=10)
        run_o = scan("O", sample_uid)
        # one edge: no joint, and nothing stale on the joint PVs
        assert scores.joint_edges.get(use_monitor=False) == ""
        assert scores.joint_ncandidates.get(use_monitor=False) == 0
        run_n = scan("N", sample_uid)
        pv = {
            "edges": scores.joint_edges.get(use_monitor=False),
            "best": scores.joint_best_name.get(use_monitor=False),
            "p": float(scores.joint_best_prob.get(use_monitor=False)),
            "n": int(scores.joint_ncandidates.get(use_monitor=False)),
            "top": (scores.joint_top_names.get(use_monitor=False) or "").split("\n"),
            "scores": np.asarray(scores.joint_top_scores.get(use_monitor=False), float),
        }
        # another sample at the N edge: its own scores, no joint with the first sample's O
        run_other = scan("N", str(uuid.uuid4()))
        after_other = scores.joint_edges.get(use_monitor=False)
    finally:
        analysis.shutdown()

    r_o, r_n = analysis.results[run_o], analysis.results[run_n]
    assert r_o is not None and r_n is not None
    # the joint on the PVs is the science layer's joint of the two runs' final results
    expect = joint_result({"N": r_n, "O": r_o})
    order = np.argsort(-expect.probabilities, kind="stable")
    assert pv["edges"] == "N,O" and pv["n"] == 24
    assert pv["best"] == expect.best_name == sample, (pv, r_o.best_name, r_n.best_name)
    assert pv["p"] == pytest.approx(expect.best_probability, rel=1e-3)
    assert pv["top"][:3] == [expect.names[i] for i in order[:3]]
    assert pv["scores"][:3] == pytest.approx(expect.probabilities[order[:3]], rel=1e-3)
    # two spectra of the molecule tell it from the others at least as well as either alone
    i_o, i_n = r_o.names.index(sample), r_n.names.index(sample)
    assert pv["p"] >= min(r_o.probabilities[i_o], r_n.probabilities[i_n])
    assert run_other in analysis.results and run_other not in analysis.joint_results
    assert after_other == ""
    assert analysis.joint_results[run_n].run_uids == {"N": run_n, "O": run_o}
    # the analysis run of the N edge carries the joint (the sample's match record in tiled
    # carries its ranking: tests/test_catalog.py's real tiled checks the record's keys)
    streams = {d["uid"]: d for n, d in docs if n == "descriptor"}
    joint_events = [
        d["data"] for n, d in docs
        if n == "event" and "joint_edges" in streams[d["descriptor"]]["data_keys"]
        and d["data"]["joint_edges"]
    ]  # fmt: skip
    assert joint_events and joint_events[-1]["joint_best_name"] == sample
