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


def test_two_edge_plan_steers_between_the_edges_on_the_gain_pvs(setup):
    """``two_edge_xanes_scan``: two runs open at once, one per edge, sharing a sample_uid; every
    point after the coarse passes goes where the published gain per second is highest, and the
    plan stops on the joint posterior or the shared budget."""
    from bluesky import RunEngine

    from xas_bluesky.beamline.analysis import subscribe_live_analysis
    from xas_bluesky.beamline.epics.devices import MatchScores
    from xas_bluesky.beamline.plans import two_edge_xanes_scan
    from xas_bluesky.science.adaptive import TwoEdgePolicy

    devs, sample, cands = setup["devs"], setup["sample"], str(setup["cands"])
    RE = RunEngine({}, context_managers=[])
    raw: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: raw.append((name, doc)))
    prefix = unique_prefix("TE")
    analysis = subscribe_live_analysis(
        RE, score_prefix=prefix, port=next_ca_port(), candidates=cands, cache=shared_cache(),
    )  # fmt: skip
    budget = 40
    try:
        scores = MatchScores(prefix, name="scores", wait_timeout=30)
        scores.wait_for_connection(timeout=10)
        run_uids = RE(two_edge_xanes_scan(
            devs.mono, devs.det, scores, sample=sample, sample_changer=devs.sample_changer,
            candidates=cands, max_points=budget, mono_speed=200.0, md={"operator": "test"},
            threshold=0.99,  # unreachable (the joint caps near 0.96): every point is steered
        ))  # fmt: skip
        assert analysis.wait_idle(60)
        joint_pv = scores.joint_best_name.get(use_monitor=False)
    finally:
        analysis.shutdown()

    starts = {d["uid"]: d for n, d in raw if n == "start"}
    stops = {d["run_start"]: d for n, d in raw if n == "stop"}
    assert len(starts) == 2 and set(stops) == set(starts)
    by_edge = {d["xas_element"]: d for d in starts.values()}
    assert set(by_edge) == {"O", "N"}
    assert by_edge["O"]["sample_uid"] == by_edge["N"]["sample_uid"]
    assert by_edge["O"]["operator"] == "test"
    streams = {d["uid"]: (d["run_start"], d["name"]) for n, d in raw if n == "descriptor"}
    policy = TwoEdgePolicy(max_points=budget, mono_speed=200.0, threshold=0.99)
    n_coarse = {e: len(policy.first_pass(e)) for e in ("O", "N")}
    # replay the documents in order: every steered point must be the rule's choice from the
    # offers (next energy, gain) and the joint the plan had read before it
    measured: dict[str, list[float]] = {"O": [], "N": []}
    offers: dict = {}
    joint, mono, steered, gains = float("nan"), None, 0, []
    for n, d in raw:
        if n != "event":
            continue
        run, stream = streams[d["descriptor"]]
        edge = starts[run]["xas_element"]
        if stream == "adaptive":
            if d["data"]["scores_run_uid"] == run:  # a reading of the other run is read again
                nxt = d["data"]["scores_next_energy"]
                offers[edge] = (nxt if np.isfinite(nxt) else None, d["data"]["scores_next_gain"])
                joint = d["data"]["scores_joint_best_prob"]
                gains.append(d["data"]["scores_next_gain"])
            continue
        energy = d["data"]["mono_energy_setpoint"]  # what the plan chose (the readback rounds)
        if all(len(measured[e]) >= n_coarse[e] for e in ("O", "N")):
            want, decision = policy.decide(
                {e: np.array(v) for e, v in measured.items()}, joint, offers, mono
            )
            assert want == edge and decision.energy == pytest.approx(energy, abs=1e-6)
            steered += 1
        measured[edge].append(energy)
        mono = energy
    total = len(measured["O"]) + len(measured["N"])
    assert steered > 0 and total <= budget
    assert all(len(measured[e]) >= n_coarse[e] for e in ("O", "N"))
    assert all(np.isfinite(g) and g >= 0 for g in gains) and max(gains) > 0
    reason = stops[by_edge["O"]["uid"]]["reason"]
    assert reason == stops[by_edge["N"]["uid"]]["reason"]
    assert reason.startswith(("confident", "budget")), reason
    uids = {e: by_edge[e]["uid"] for e in ("O", "N")}
    assert set(run_uids) == set(uids.values())
    # the joint of the two open runs: the analysis combined them by their shared sample_uid,
    # and the plan saw it (it steered on the edges' gains and stopped on the joint or budget)
    assert analysis.joint_results[uids["O"]].run_uids == uids
    assert analysis.joint_results[uids["N"]].run_uids == uids
    assert np.isfinite(joint)
    final = analysis.joint_results[uids[edge]]  # the edge measured last
    assert joint_pv == final.names[int(final.order()[0])]
    print(reason, {e: len(v) for e, v in measured.items()}, joint_pv == sample)


def test_bluesky_adaptive_optimize_chooses_the_next_edge_of_a_sample(setup):
    """bluesky-adaptive 1.0 itself (``plans.optimize``) runs the identification: the optimizer
    suggests the sample's O edge, then -- not yet sure -- its N edge; each acquisition is an
    adaptive scan steered by the score PVs, the outcomes are read from them, and the two runs
    combine into the joint because they share the sample's ``sample_uid``."""
    pytest.importorskip("bluesky_adaptive")
    from bluesky import RunEngine
    from bluesky_adaptive.plans import optimize
    from bluesky_adaptive.protocols import OptimizationProblem, Optimizer

    from xas_bluesky.beamline.analysis import subscribe_live_analysis
    from xas_bluesky.beamline.epics.devices import MatchScores
    from xas_bluesky.beamline.plans.agent import IdentificationOptimizer, XASAcquisition

    devs, sample, cands = setup["devs"], setup["sample"], str(setup["cands"])
    RE = RunEngine({}, context_managers=[])
    raw: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: raw.append((name, doc)))
    prefix = unique_prefix("AG")
    analysis = subscribe_live_analysis(
        RE, score_prefix=prefix, port=next_ca_port(), candidates=cands, cache=shared_cache(),
    )  # fmt: skip
    optimizer = IdentificationOptimizer([sample], edges=("O", "N"), threshold=0.999)
    assert isinstance(optimizer, Optimizer)
    try:
        scores = MatchScores(prefix, name="scores", wait_timeout=30)
        scores.wait_for_connection(timeout=10)
        acquire = XASAcquisition(
            devs.mono, devs.det, scores, devs.sample_changer, candidates=cands, max_points=20
        )
        problem = OptimizationProblem(
            optimizer=optimizer, actuators=[devs.sample_changer], sensors=[scores],
            evaluation_function=acquire.evaluate, acquisition_plan=acquire,
        )  # fmt: skip
        RE(optimize(problem, iterations=None))
        assert analysis.wait_idle(60)
    finally:
        analysis.shutdown()

    starts = [d for n, d in raw if n == "start"]
    xas = [d for d in starts if d.get("xas_element")]
    assert [d["xas_element"] for d in xas] == ["O", "N"]
    assert xas[0]["sample_uid"] == xas[1]["sample_uid"]
    assert [d.get("plan_name") for d in starts if not d.get("xas_element")] == ["optimize"]
    assert optimizer.should_stop()[0]
    ((sid, params, best),) = optimizer.get_best_points()
    assert params == {"sample": sample, "edge": "N"} and sid == f"{sample}:N"
    # the outcome is what the analysis published: the N run's joint with the O run
    joint = analysis.joint_results[best["run_uid"]]
    assert joint.run_uids == {"O": xas[0]["uid"], "N": xas[1]["uid"]}
    assert best["joint_best_name"] == joint.names[int(joint.order()[0])]
    assert best["joint_best_probability"] == pytest.approx(
        float(joint.joint.probabilities[int(joint.order()[0])]), rel=1e-4
    )
    assert best["best_name"] == analysis.results[best["run_uid"]].best_name
    # the optimize run recorded both steps (bluesky-adaptive's own events)
    opt_uid = next(d["uid"] for d in starts if d.get("plan_name") == "optimize")
    opt_streams = {d["uid"] for n, d in raw if n == "descriptor" and d["run_start"] == opt_uid}
    assert sum(1 for n, d in raw if n == "event" and d["descriptor"] in opt_streams) >= 1
