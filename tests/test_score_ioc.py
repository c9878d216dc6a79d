"""The score PVs: in-process host, read-only to clients, restart, the MatchScores device."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from live_helpers import wait_for

from xas_bluesky.beamline.epics.score_ioc import ScoreServer
from xas_bluesky.contracts import PV_SUFFIXES, TOP_K, MatchSummary
from xas_bluesky.testing import next_ca_port, unique_prefix

pytestmark = pytest.mark.system  # real IOCs, tiled, RunEngine or the shipped weights

LONG_NAME = "dsgdb9nsd_" + "x" * 80  # longer than a DBR_STRING's 39 characters
LONG_SMILES = "O=C1NC(=O)C2=C1C=CC=C2" * 4


def _update(n: int, uid: str = "run-1", **kw) -> MatchSummary:
    base = dict(
        run_uid=uid,
        n_events=n,
        best_name=LONG_NAME,
        best_smiles=LONG_SMILES,
        best_probability=0.5 + 0.01 * n,
        entropy=1.25,
        next_energy=531.5,
        offset_ev=-0.3,
        last_energy=530.0 + n,
        n_candidates=3,
        top_names=[LONG_NAME, "b", "c"],
        top_probabilities=[0.6, 0.3, 0.1],
        status="Running",
        message="ok",
    )
    base.update(kw)
    return MatchSummary(**base)


@pytest.fixture
def score_server(ca_env):
    server = ScoreServer(unique_prefix("S"), port=next_ca_port()).start()
    try:
        yield server
    finally:
        server.stop()


def test_pvs_served_and_read_only(score_server):
    import epics

    p = score_server.prefix
    score_server.publish(_update(4))
    assert wait_for(lambda: epics.caget(p + "Match:NPoints-I", use_monitor=False) == 4)
    assert epics.caget(p + "Match:Best-Name", as_string=True, use_monitor=False) == LONG_NAME
    assert epics.caget(p + "Match:BestSmiles-Name", as_string=True) == LONG_SMILES
    assert epics.caget(p + "Match:RunUID-I", as_string=True, use_monitor=False) == "run-1"
    top = epics.caget(p + "Match:TopNames-Wfm", as_string=True, use_monitor=False)
    assert top.split("\n") == [LONG_NAME, "b", "c"]
    scores = epics.caget(p + "Match:TopScores-Wfm", use_monitor=False)
    assert len(scores) == TOP_K
    np.testing.assert_allclose(scores[:3], [0.6, 0.3, 0.1])
    assert all(math.isnan(s) for s in scores[3:])
    assert epics.caget(p + "Match:BestProb-I", use_monitor=False) == pytest.approx(0.54)
    assert epics.caget(p + "Match:Status-Sts", as_string=True, use_monitor=False) == "Running"
    for suffix in PV_SUFFIXES.values():  # every PV answers
        assert epics.caget(p + suffix, timeout=2) is not None, suffix
    # only the analysis changes them
    for suffix in ("Match:BestProb-I", "Match:NPoints-I", "Match:Status-Sts"):
        with pytest.raises(epics.ca.CASeverityException, match="Write access denied"):
            epics.caput(p + suffix, 1, wait=True, timeout=2)
    assert epics.caget(p + "Match:NPoints-I", use_monitor=False) == 4


def test_heartbeat_and_status(score_server):
    import epics

    p = score_server.prefix
    h0 = epics.caget(p + "Match:Heartbeat-I", use_monitor=False)
    assert wait_for(lambda: epics.caget(p + "Match:Heartbeat-I", use_monitor=False) > h0, 3.0)
    score_server.set_status("Error", "candidate 'x': bad geometry")
    assert wait_for(
        lambda: epics.caget(p + "Match:Status-Sts", as_string=True, use_monitor=False) == "Error"
    )
    msg = epics.caget(p + "Match:Message-Name", as_string=True, use_monitor=False)
    assert "bad geometry" in msg


def test_restart_serves_last_and_new_updates(score_server):
    """The IOC's server stops and starts again mid-run: last values come back, updates resume."""
    import epics

    p = score_server.prefix
    arrivals = []
    pv = epics.PV(p + "Match:NPoints-I", auto_monitor=True)
    pv.add_callback(lambda value=None, **kw: arrivals.append(value))
    score_server.publish(_update(5))
    assert wait_for(lambda: 5 in arrivals)
    score_server.stop()
    assert epics.caget(p + "Match:NPoints-I", timeout=0.5, use_monitor=False) is None
    score_server.publish(_update(6))  # published while down: kept for the restart
    restarts = score_server.restarts
    score_server.start()
    assert score_server.restarts == restarts + 1  # the demo's ``ioc_restarts``
    assert wait_for(lambda: epics.caget(p + "Match:NPoints-I", use_monitor=False) == 6, 25)
    score_server.publish(_update(7))
    assert wait_for(lambda: 7 in arrivals, 25)  # the old monitor reconnected and sees new updates


def test_match_scores_device(score_server):
    from ophyd.status import StatusTimeoutError

    from xas_bluesky.beamline.epics.devices import MatchScores

    scores = MatchScores(score_server.prefix, name="scores", wait_timeout=3.0)
    scores.wait_for_connection(timeout=5)
    score_server.publish(_update(2, uid="abc"))
    st = scores.scored.set(("abc", 2))
    st.wait(5)
    assert scores.best_name.get() == LONG_NAME
    assert scores.top_names_list() == [LONG_NAME, "b", "c"]
    reading = scores.read()
    assert reading["scores_best_prob"]["value"] == pytest.approx(0.52)

    # waits for the point to be scored (published later from another thread)
    st = scores.scored.set(("abc", 3))
    assert not st.done
    threading.Timer(0.2, lambda: score_server.publish(_update(3, uid="abc"))).start()
    st.wait(5)
    assert scores.npoints.get() == 3

    # a wrong run never satisfies it
    with pytest.raises(StatusTimeoutError):
        scores.scored.set(("other-run", 1), timeout=0.5).wait(3)


def test_standalone_serve_ioc(ioc_factory):
    import epics

    proc = ioc_factory(["-m", "xas_bluesky.apps.cli", "serve-ioc"], probe="Match:NPoints-I")
    p = proc.info["prefix"]
    assert epics.caget(p + "Match:Status-Sts", as_string=True, use_monitor=False) == "Idle"
    with pytest.raises(epics.ca.CASeverityException, match="Write access denied"):
        epics.caput(p + "Match:NPoints-I", 3, wait=True, timeout=2)
