"""Beamtime faults of the services, with real parts: tiled killed mid-run and back, the tiled
API key off the command line, match results retried, the backup replayed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from live_helpers import measure_plan, shared_cache, small_candidates, wait_for

from xas_bluesky.services import free_ports, start_tiled
from xas_bluesky.testing import next_ca_port, unique_prefix

pytestmark = pytest.mark.system  # real IOCs, tiled, RunEngine or the shipped weights

ENERGIES = np.arange(527.0, 560.0, 1.0)  # 33 points
KILL_AT = 10


class RestartableTiled:
    """A tiled server of our own that can be killed and started again on the same port,
    directory and API key."""

    def __init__(self, directory):
        self.directory = directory
        self.port = free_ports(1)[0]
        self.api_key = "k" + os.urandom(12).hex()
        self.server = None
        self.start()

    def start(self):
        self.server = start_tiled(self.directory, port=self.port, api_key=self.api_key)
        return self.server

    @property
    def uri(self):
        return self.server.uri

    def kill(self):
        """SIGKILL: no clean shutdown, as a crash or an OOM kill."""
        os.kill(self.server.process.pid, signal.SIGKILL)
        self.server.process.popen.wait(10)

    def stop(self):
        if self.server is not None:
            self.server.stop()


@pytest.fixture
def own_tiled(tmp_path):
    t = RestartableTiled(tmp_path / "tiled")
    try:
        yield t
    finally:
        t.stop()


@pytest.fixture
def fast_tiled_retries(monkeypatch):
    """tiled's client retries a failed request for up to 45 s (10 attempts): shortened here so
    that an outage of a minute outlasts every retry."""
    import tiled.client.utils as tcu

    monkeypatch.setattr(tcu, "TILED_RETRY_ATTEMPTS", 2)
    monkeypatch.setattr(tcu, "TILED_RETRY_TIMEOUT", 2.0)


def _events(docs):
    """(descriptor uid, seq_num) -> (time, data, timestamps) of the events among ``docs``."""
    from event_model import unpack_event_page

    out = {}
    for name, doc in docs:
        evs = (
            [doc]
            if name == "event"
            else list(unpack_event_page(doc))
            if name == "event_page"
            else []
        )
        for ev in evs:
            out[(ev["descriptor"], ev["seq_num"])] = (
                ev["time"],
                {k: _num(v) for k, v in ev["data"].items()},
                {k: _num(v) for k, v in ev["timestamps"].items()},
            )
    return out


def _num(v):
    if isinstance(v, float | int | np.generic):
        return "nan" if np.isnan(float(v)) else float(v)
    return v


def _compare_run(held, emitted):
    """Every document the RunEngine (or the analysis) emitted is in tiled, field for field."""
    held_by = {}
    for name, doc in held:
        held_by.setdefault(name, []).append(doc)
    em_by = {}
    for name, doc in emitted:
        em_by.setdefault(name, []).append(doc)
    assert held_by["start"] == em_by["start"]
    assert held_by.get("stop") == em_by.get("stop")
    em_desc = {d["uid"]: d for d in em_by["descriptor"]}
    for d in held_by["descriptor"]:
        e = em_desc[d["uid"]]
        assert d["data_keys"].keys() == e["data_keys"].keys()
        assert d["name"] == e["name"] and d["time"] == e["time"]
    ev_held, ev_em = _events(held), _events(emitted)
    assert ev_held.keys() == ev_em.keys()
    for key, (t, data, stamps) in ev_em.items():
        ht, hdata, hstamps = ev_held[key]
        assert ht == t and hdata == data and hstamps == stamps, key


def test_tiled_killed_mid_run_nothing_lost(own_tiled, fast_tiled_retries, ca_env, tmp_path):
    """tiled is SIGKILLed at point 10 of 33 and stays away until every retry is spent; the raw
    run, the analysis run and the match result end up in tiled all the same."""
    from bluesky import RunEngine
    from bluesky.callbacks.buffer import BufferingWrapper
    from bluesky_tiled_plugins import TiledWriter

    from xas_bluesky.beamline.analysis import AnalysisSession
    from xas_bluesky.beamline.backup import MATCHES_DIR, run_documents
    from xas_bluesky.beamline.catalog import get_match
    from xas_bluesky.science.candidates import PredictionCache

    backup = tmp_path / "backup"
    cand_file = small_candidates(tmp_path / "c16.xyz", 16)
    client = own_tiled.server.client()
    session = AnalysisSession(
        score_prefix=unique_prefix("B"), port=next_ca_port(), tiled_client=client,
        backup_directory=backup, cache=PredictionCache(shared_cache().predictor),
        candidates=str(cand_file),
    )  # fmt: skip
    analysis_docs = []
    session.runs_sink.callbacks.append(lambda n, d: analysis_docs.append((n, d)))
    raw_docs = []
    RE = RunEngine({}, call_returns_result=False)
    raw_writer = BufferingWrapper(TiledWriter(client, backup_directory=str(backup)))
    RE.subscribe(raw_writer)
    RE.subscribe(lambda n, d: raw_docs.append((n, d)))
    session.subscribe(RE)
    cands = session.cache.from_file(cand_file, "O")

    def between(k):
        if k == KILL_AT:
            # as at a beamline, tiled holds the start of both runs when it dies
            raw = raw_docs[0][1]["uid"]
            assert wait_for(lambda: raw in client and raw in session.analysis_uids, 60)
            assert wait_for(lambda: session.analysis_uids[raw] in client, 60)
            own_tiled.kill()

    try:
        (raw_uid,) = RE(measure_plan(cands, 5, ENERGIES, between=between, seed=5))
        assert session.wait_idle(60)
        # the writers give tiled up: every document of both runs is in the backup directory
        raw_writer.shutdown(wait=True)
        analysis_uid = session.analysis_uids[raw_uid]
        files = {p.name for p in backup.glob("*.jsonl")}
        assert files == {raw_uid[:8] + ".jsonl", analysis_uid[:8] + ".jsonl"}, files
        # the match result waits on disk, and the sink keeps retrying in this process
        assert wait_for(lambda: session.match_sink.last_error is not None, 30)
        assert (backup / MATCHES_DIR / f"{raw_uid}.json").exists()
        assert session.match_sink.pending == 1
        time.sleep(3)  # the outage outlasts the writers' retries and a few of the sink's

        own_tiled.start()  # back on the same port, directory and key
        # the match result goes in by itself, the process still running
        assert session.match_sink.flush(90), session.match_sink.last_error
        assert not (backup / MATCHES_DIR / f"{raw_uid}.json").exists()
        # before the replay: tiled holds the runs' start and descriptors only
        fresh = own_tiled.server.client()
        before = run_documents(fresh, raw_uid)
        n_before = sum(1 for n, _ in before if n == "event")
        has_stop_before = any(n == "stop" for n, _ in before)
        assert n_before == 0 and not has_stop_before

        out = subprocess.run(
            [sys.executable, "-m", "xas_bluesky.apps.cli", "replay", "--backup", str(backup),
             "--tiled-uri", own_tiled.uri],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "TILED_API_KEY": own_tiled.api_key},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert {r["uid"]: r["action"] for r in report["runs"]} == {
            raw_uid: "rewritten",
            analysis_uid: "rewritten",
        }
        # every raw and analysis document is in tiled now
        _compare_run(run_documents(fresh, raw_uid), raw_docs)
        _compare_run(run_documents(fresh, analysis_uid), analysis_docs)
        n_after = sum(1 for n, _ in run_documents(fresh, raw_uid) if n == "event")
        assert n_after == len(ENERGIES)
        match = get_match(fresh, raw_uid)
        result = session.results[raw_uid]
        assert match["metadata"]["analysis_run_uid"] == analysis_uid
        assert [r["name"] for r in match["ranking"][:3]] == [n for n, _ in result.top(3)]
        print(
            f"\ntiled outage: before replay {n_before}/{len(ENERGIES)} rows, stop "
            f"{has_stop_before}; after {n_after}/{len(ENERGIES)} rows, stop True, match stored"
        )
        # a second replay finds nothing left to do
        again = subprocess.run(
            [sys.executable, "-m", "xas_bluesky.apps.cli", "replay", "--backup", str(backup),
             "--tiled-uri", own_tiled.uri, "--api-key", own_tiled.api_key],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["runs"] == []
    finally:
        session.shutdown(30)


def test_match_record_survives_process_exit(own_tiled, tmp_path):
    """A match result kept on disk by one process is stored by the next sink on that directory."""
    from xas_bluesky.beamline.analysis.sinks import TiledMatchSink
    from xas_bluesky.beamline.backup import MATCHES_DIR, save_match_record
    from xas_bluesky.beamline.catalog import get_match, match_record
    from xas_bluesky.contracts import MatchSummary

    backup = tmp_path / "backup"
    summary = MatchSummary(run_uid="run-left-behind", n_events=3, status="Done", best_name="a")
    ranking = [{"name": "a", "smiles": "C", "probability": 0.9},
               {"name": "b", "smiles": "N", "probability": 0.1}]  # fmt: skip
    save_match_record(backup, match_record(summary, ranking, analysis_run_uid="an-1"))
    sink = TiledMatchSink(own_tiled.server.client(), backup_directory=backup)
    try:
        assert sink.flush(60), sink.last_error
    finally:
        sink.close()
    assert not list((backup / MATCHES_DIR).glob("*.json"))
    got = get_match(own_tiled.server.client(), "run-left-behind")
    assert [r["name"] for r in got["ranking"]] == ["a", "b"]


def test_tiled_api_key_not_on_command_line(own_tiled):
    """``ps`` shows the tiled server's command line to every user: the key is not on it."""
    pid = own_tiled.server.process.pid
    cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")
    assert own_tiled.api_key not in " ".join(cmdline)
    assert "--api-key" not in cmdline
    # the server does want the key: without it, a client is refused
    import httpx

    r = httpx.get(f"{own_tiled.uri}/api/v1/metadata/", timeout=10)
    assert r.status_code == 401
    r = httpx.get(
        f"{own_tiled.uri}/api/v1/metadata/",
        headers={"Authorization": f"Apikey {own_tiled.api_key}"},
        timeout=10,
    )
    assert r.status_code == 200
