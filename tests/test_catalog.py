"""Predictions and match results in a real tiled server; ``xas-bluesky query``.

The tests that store and query run twice: on a tiled server with its catalog in SQLite
(``tiled_server``) and on one with it in PostgreSQL (``tiled_server_pg``; skipped, saying why,
where PostgreSQL is not installed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from live_helpers import measure_plan, shared_cache, small_candidates

from xas_bluesky.beamline import catalog
from xas_bluesky.beamline.analysis import (
    AnalysisEngine,
    AnalysisRunSink,
    LiveXASAnalysis,
    TiledMatchSink,
)
from xas_bluesky.beamline.catalog import TiledPredictionStore
from xas_bluesky.science.candidates import PredictionCache

pytestmark = pytest.mark.system  # real IOCs, tiled, RunEngine or the shipped weights

ENERGIES = np.arange(527.0, 560.0, 0.5)


@pytest.fixture(scope="module")
def cand_file(tmp_path_factory):
    return small_candidates(tmp_path_factory.mktemp("cat") / "c12.xyz", 12, skip=40)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def tiled(request):
    """The session's tiled server with its catalog in SQLite, then the one on PostgreSQL."""
    return request.getfixturevalue(
        {"sqlite": "tiled_server", "postgresql": "tiled_server_pg"}[request.param]
    )


@pytest.fixture(scope="module")
def stored(tiled, cand_file):
    """The candidates predicted once and stored in tiled through a PredictionCache."""
    client = tiled.client()
    cache = PredictionCache(shared_cache().predictor, store=TiledPredictionStore(client))
    cands = cache.from_file(cand_file, "O")
    assert cache.n_predicted == len(cands)
    return client, cands


def _query_cli(server, *args):
    out = subprocess.run(
        [sys.executable, "-m", "xas_bluesky.apps.cli", "query", "--tiled-uri", server.uri,
         "--api-key", server.api_key, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return out


def test_predictions_stored_in_one_batch_and_reused(stored, cand_file):
    client, cands = stored
    nodes = catalog._prediction_nodes(client, edge="O", model_version=cands.model_version)
    mine = [(k, n) for k, n in nodes if set(n.metadata["structure_keys"]) & set(cands.keys)]
    assert len(mine) == 1  # one N x E array for the set
    key, node = mine[0]
    md = node.metadata
    assert node.shape == (len(cands), len(cands.energy))
    assert md["names"] == cands.names and md["edge"] == "O"
    assert all(len(k) == 27 for k in md["inchikeys"]) and all(md["formulas"])
    np.testing.assert_allclose(md["energy_eV"], cands.energy)
    np.testing.assert_allclose(node.read(), cands.mean, rtol=1e-6)

    # a fresh cache (a new process, say) finds them in tiled instead of predicting again
    fresh = PredictionCache(shared_cache().predictor, store=TiledPredictionStore(client))
    again = fresh.from_file(cand_file, "O")
    assert fresh.n_predicted == 0
    np.testing.assert_allclose(again.mean, cands.mean, rtol=1e-6)
    np.testing.assert_allclose(again.std, cands.std, rtol=1e-6)

    # and the set can be used directly from tiled
    from_tiled = catalog.load_candidate_set(client, key)
    assert from_tiled.names == cands.names
    np.testing.assert_allclose(from_tiled.mean, cands.mean, rtol=1e-6)


def test_query_by_edge_and_smiles(stored, tiled):
    from rdkit import Chem

    client, cands = stored
    entries = catalog.query_predictions(client, edge="O")
    assert {e["name"] for e in entries} >= set(cands.names)
    target = cands.smiles[3]
    # the same molecule written differently (random atom order) is found, and only it
    other = Chem.MolToSmiles(Chem.MolFromSmiles(target), doRandom=True, canonical=False)
    hits = catalog.query_predictions(client, smiles=other)
    assert [h["name"] for h in hits if h["name"] in cands.names] == [cands.names[3]]
    assert all(h["smiles"] == target for h in hits)
    assert catalog.query_predictions(client, edge="N", smiles=target) == []
    # the server's prefilter: only arrays whose identifiers hold the molecule's come back
    skeleton = hits[0]["inchikey"].split("-")[0]
    path = next(h["tiled"]["path"] for h in hits if h["name"] == cands.names[3])
    kept = catalog._prediction_nodes(client, edge="O", contains=("inchikeys", skeleton))
    assert path.split("/")[-1] in {k for k, _ in kept}
    assert all(skeleton in "".join(n.metadata["inchikeys"]) for _, n in kept)
    assert catalog._prediction_nodes(client, contains=("inchikeys", "QQQQQQQQQQQQQQ")) == []

    out = _query_cli(tiled, "--edge", "O", "--smiles", other)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)  # JSON only on stdout
    entry = next(e for e in data["predictions"] if e["name"] == cands.names[3])
    assert set(entry) >= {"name", "smiles", "inchikey", "formula", "edge", "model_version"}
    assert entry["tiled"]["path"].startswith("xas_predictions/") and entry["tiled"]["row"] == 3

    bad = _query_cli(tiled, "--smiles", "C1CC(")
    assert bad.returncode != 0 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "C1CC(" in bad.stderr


def test_match_results_and_analysis_run_in_tiled(stored, tiled, cand_file):
    """A live analysis with tiled: the ranking is stored per run, the analysis run (linked by
    original_run_uid) is written by TiledWriter, and ``query --run`` returns the ranking."""
    from bluesky import RunEngine
    from bluesky.callbacks.buffer import BufferingWrapper
    from bluesky_tiled_plugins import TiledWriter
    from tiled.queries import Key

    client, cands = stored
    writer = BufferingWrapper(TiledWriter(client))
    tiled.drains.append(lambda: writer.shutdown(wait=True))
    engine = AnalysisEngine(
        [TiledMatchSink(client), AnalysisRunSink([writer])],
        candidates=str(cand_file),
        cache=PredictionCache(shared_cache().predictor, store=TiledPredictionStore(client)),
        tiled_client=client,
    )
    analysis = LiveXASAnalysis(engine)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(analysis)
    (uid,) = RE(measure_plan(cands, 2, ENERGIES))
    analysis.close(60)
    writer.shutdown(wait=True)

    match = catalog.get_match(client, uid)
    result = engine.results[uid]
    assert match["ranking"][0]["name"] == result.best_name
    assert cands.names[2] in [r["name"] for r in match["ranking"][:3]]
    assert len(match["ranking"]) == len(cands)
    probs = [r["probability"] for r in match["ranking"]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-6
    md = match["metadata"]
    assert md["analysis_run_uid"] == engine.analysis_uids[uid]
    assert md["n_points"] == len(ENERGIES) and len(md["measured_energy_eV"]) == len(ENERGIES)

    runs = client.search(Key("start.original_run_uid") == uid)
    assert list(runs) == [engine.analysis_uids[uid]]
    arun = runs.values().first()
    assert arun.metadata["stop"]["exit_status"] == "success"
    table = arun["primary"].read()
    assert str(table["best_name"].values[-1]) == result.best_name
    assert int(table["n_events"].values[-1]) == len(ENERGIES)
    # its last event is the run's final word (the settled result), as the match record's
    top_p = [float(x) for x in str(table["top_probabilities"].values[-1]).split("\n")]
    assert top_p[0] == pytest.approx(md["best_probability"], rel=1e-5) and len(top_p) == 10
    assert str(table["status"].values[-1]) == "Done"

    out = _query_cli(tiled, "--run", uid)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["ranking"][0] == match["ranking"][0]
    assert data["metadata"]["run_uid"] == uid

    missing = _query_cli(tiled, "--run", "no-such-run")
    assert missing.returncode == 1 and "no-such-run" in missing.stderr and missing.stdout == ""


@pytest.mark.slow
def test_query_data_dir(tmp_path, cand_file):
    """``--data-dir`` starts the embedded tiled on the directory and stops it afterwards."""
    from xas_bluesky.services import start_tiled

    data_dir = tmp_path / "data"
    with start_tiled(data_dir) as server:
        client = server.client()
        cache = PredictionCache(shared_cache().predictor, store=TiledPredictionStore(client))
        cands = cache.from_file(cand_file, "O")
    out = subprocess.run(
        [sys.executable, "-m", "xas_bluesky.apps.cli", "query", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    names = [e["name"] for e in json.loads(out.stdout)["predictions"]]
    assert sorted(names) == sorted(cands.names)


def test_candidates_from_tiled_in_start_document(stored):
    """``candidates: "tiled:NODE"`` in the start document scores the stored predictions."""
    from bluesky import RunEngine
    from live_helpers import xas_md

    client, cands = stored
    nodes = catalog._prediction_nodes(client, edge="O", model_version=cands.model_version)
    key = next(k for k, n in nodes if set(n.metadata["structure_keys"]) == set(cands.keys))
    engine = AnalysisEngine(tiled_client=client, cache=PredictionCache())
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(engine)  # synchronous on the RunEngine's thread: fine for a test
    (uid,) = RE(measure_plan(cands, 4, ENERGIES, md=xas_md(candidates=f"tiled:{key}")))
    result = engine.results[uid]
    assert result.names == cands.names and not engine.errors
    assert cands.names[4] in [n for n, _ in result.top(3)]
    assert engine.cache.n_predicted == 0  # nothing predicted: all from tiled
    # the stored set carries the model's own calibration, as a freshly predicted one does
    assert engine.comparator_for(cands).temperature == pytest.approx(
        cands.calibration["temperature"]
    )


def test_runs_written_at_once_all_arrive(tiled):
    """Six writers append to six tables of one tiled server at once (two beamline sessions
    writing their runs, the analysis its match records): every row arrives and the server lives.
    tiled's own DuckDB storage shares one connection among its threads: the same load got 500s
    and killed the server within 2 s (``xas_bluesky.apps.tiled_serve`` gives each its own)."""
    import threading

    import pyarrow as pa
    from tiled.client import from_uri

    client = from_uri(tiled.uri, api_key=tiled.api_key)
    schema = pa.schema([("energy", pa.float64()), ("mu", pa.list_(pa.float64()))])
    keys = [f"concurrent_{k}_{np.random.default_rng().integers(1 << 30)}" for k in range(6)]
    errors: list[str] = []

    def write(key: str) -> None:
        try:
            table = client.create_appendable_table(schema, key=key)
            for i in range(40):
                row = {"energy": [530.0 + i], "mu": [[float(i)] * 5]}
                table.append_partition(0, pa.table(row, schema=schema))
        except Exception as exc:  # collected: the assertion below shows them
            errors.append(repr(exc)[:300])

    threads = [threading.Thread(target=write, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    for key in keys:
        df = client[key].read()
        assert list(df["energy"]) == [530.0 + i for i in range(40)]


def test_catalog_in_postgresql(tiled_server_pg, postgres_server):
    """On PostgreSQL the catalog really lies there (no SQLite file beside the data), and neither
    ``ps`` nor tiled's log shows the database password."""
    pg = postgres_server
    key = f"pg_{os.getpid()}_{np.random.default_rng().integers(1 << 30)}"
    tiled_server_pg.client().write_array(np.arange(3.0), key=key, metadata={"edge": "O"})
    assert not (tiled_server_pg.directory / "catalog.db").exists()
    found = subprocess.run(
        [str(pg.bindir / "psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user,
         "-d", pg.database, "-tAc", f"SELECT metadata->>'edge' FROM nodes WHERE key = '{key}'"],
        env={**os.environ, "PGPASSWORD": pg.password}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["O"]
    cmdline = Path(f"/proc/{tiled_server_pg.process.pid}/cmdline").read_bytes().decode()
    assert f"127.0.0.1:{pg.port}/{pg.database}" in cmdline and pg.password not in cmdline
    assert pg.password not in tiled_server_pg.process.log_path.read_text()


def test_missing_service_skips_here_and_fails_where_required(monkeypatch):
    """A test whose server is missing skips, unless XAS_BLUESKY_REQUIRE_SERVICES (CI) is set."""
    from xas_bluesky.testing import REQUIRE_SERVICES, service_missing

    monkeypatch.delenv(REQUIRE_SERVICES, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no server"):
        service_missing("no server")
    monkeypatch.setenv(REQUIRE_SERVICES, "1")
    with pytest.raises(pytest.fail.Exception, match="no server"):
        service_missing("no server")
    monkeypatch.setenv(REQUIRE_SERVICES, "0")
    with pytest.raises(pytest.skip.Exception):
        service_missing("no server")
