"""``xas-bluesky export`` and ``query --run`` against a real tiled server: raw runs of the XANES
plan on the simulated beamline, written by a real RunEngine through TiledWriter, named by uid,
uid prefix or scan id."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sim_iocs.launcher import PROBE_PV, sim_ioc_args
from xas_bluesky.beamline import catalog
from xas_bluesky.contracts import MatchSummary
from xas_bluesky.science.xasfiles import from_run
from xas_bluesky.testing import IOCFactory

pytestmark = pytest.mark.system  # real IOCs, tiled, RunEngine

SAMPLES = {"O": "qm9_011315", "N": "qm9_011512"}
TRUE_OFFSET = 0.4


@pytest.fixture(scope="module")
def runs(ca_env, tiled_server, tmp_path_factory):
    """Three XANES runs in tiled: O (scan 1), O again (scan 2, the latest of the O sample) and N
    (scan 3, its own data_session), plus runs written with chosen uids to share a prefix."""
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    from xas_bluesky.beamline.devices import make_devices
    from xas_bluesky.beamline.plans import xanes_scan
    from xas_bluesky.science.grids import ONSET_EV

    tmp = tmp_path_factory.mktemp("export")
    client = tiled_server.client()
    writer = TiledWriter(client)  # synchronous: every document is in tiled when RE returns
    factory = IOCFactory(tmp / "ioc-logs")
    slots = [f"s_{e}=heldout:{e}:{name}" for e, name in SAMPLES.items()]
    try:
        proc = factory(
            sim_ioc_args(slots=slots, clock=200.0, seed=5, offset=TRUE_OFFSET), probe=PROBE_PV
        )
        b = make_devices(proc.info["prefix"])
        b.mono.calib_offset.put(TRUE_OFFSET)
        RE = RunEngine({}, call_returns_result=False)
        RE.md.update({"beamline_id": "xas-bluesky-test", "data_session": "pass-100001"})
        docs: list = []
        RE.subscribe(writer)
        RE.subscribe(lambda name, doc: docs.append((name, doc)))
        uids = []
        for edge, session in (("O", None), ("O", None), ("N", "pass-200002")):
            uids += RE(
                xanes_scan(
                    b.mono,
                    b.det,
                    edge=edge,
                    regions=_regions(ONSET_EV[edge]),
                    sample=f"s_{edge}",
                    sample_changer=b.sample_changer,
                    data_session=session,
                )
            )
    finally:
        factory.stop_all()
    _write_fake_runs(writer)
    return client, uids, docs


def _regions(e0):
    """A coarse scan, onset - 4 to onset + 45 eV (54 points): the layout of the default one."""
    from xas_bluesky.beamline.plans import Region

    return [
        Region(e0 - 4, e0 - 1, 1.0),
        Region(e0 - 1, e0 + 15, 0.5),
        Region(e0 + 15, e0 + 45, 2.0),
    ]


#: uids that share the prefix "feedbeef": two XAS runs and one that is not an XAS run
FAKE = {
    "feedbeef-0000-4000-8000-000000000001": True,
    "feedbeef-1111-4000-8000-000000000002": True,
    "feedbeef-2222-4000-8000-000000000003": False,
}


def _write_fake_runs(writer):
    from event_model import compose_run

    from xas_bluesky.science.grids import energy_grid

    for k, (uid, xas) in enumerate(FAKE.items()):
        md = {"scan_id": 900 + k}
        if xas:
            md.update(
                xas_element="O",
                xas_mode="TEY",
                xas_fields={"energy": "e", "i0": "i0", "signal": "s"},
                energy_offset=0.0,
            )
        bundle = compose_run(uid=uid, metadata=md)
        writer("start", bundle.start_doc)
        keys = {k: {"source": "sim", "dtype": "number", "shape": []} for k in ("e", "i0", "s")}
        desc = bundle.compose_descriptor(name="primary", data_keys=keys)
        writer("descriptor", desc.descriptor_doc)
        for e in energy_grid("O")[::8]:
            mu = 1.0 if e > 531 else 0.1
            data = {"e": float(e), "i0": 1e6, "s": 1e4 * mu}
            writer("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0)))
        writer("stop", bundle.compose_stop())


def _cli(tiled_server, command, *args):
    return subprocess.run(
        [sys.executable, "-m", "xas_bluesky.apps.cli", command, "--tiled-uri", tiled_server.uri,
         "--api-key", tiled_server.api_key, *args],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_start_documents_carry_xdi_metadata_and_data_session(runs):
    client, uids, _ = runs
    o1, o2, n = (client[u].metadata["start"] for u in uids)
    assert [s["scan_id"] for s in (o1, o2, n)] == [1, 2, 3]
    assert o1["xdi"] == {
        "Element": {"symbol": "O", "edge": "K"},
        "Mono": {"name": "grating monochromator"},
        "Detector": {
            "I0": "gold-mesh drain current (det_i0)",
            "TEY": "total electron yield, sample drain current (det_tey)",
        },
        "Sample": {"name": "s_O"},
    }
    assert n["xdi"]["Element"]["symbol"] == "N"
    assert o1["data_session"] == "pass-100001"  # RE.md
    assert n["data_session"] == "pass-200002"  # the plan's argument wins over RE.md


def test_resolve_run(runs):
    client, uids, _ = runs
    assert catalog.resolve_run(client, uids[0]) == uids[0]
    assert catalog.resolve_run(client, uids[2][:8].upper()) == uids[2]
    assert catalog.resolve_run(client, "2") == uids[1]
    assert catalog.resolve_run(client, 3) == uids[2]
    assert catalog.resolve_run(client, "feedbeef-1") == "feedbeef-1111-4000-8000-000000000002"
    # the non-XAS run shares the prefix but is not counted
    with pytest.raises(catalog.AmbiguousRun, match="2 XAS runs start with it") as err:
        catalog.resolve_run(client, "feedbeef")
    assert "feedbeef-0000-4000-8000-000000000001 (scan 900)" in str(err.value)
    with pytest.raises(catalog.RunNotFound, match="feedbeef-2222"):
        catalog.resolve_run(client, "feedbeef-2222")
    with pytest.raises(catalog.RunNotFound, match="not a uid"):
        catalog.resolve_run(client, "%")
    with pytest.raises(catalog.RunNotFound):
        catalog.resolve_run(client, "99999")  # no such scan id, no uid starting with it


def test_export_xdi_by_scan_id(runs, tiled_server, tmp_path):
    client, uids, docs = runs
    path = tmp_path / "scan2.xdi"
    out = _cli(tiled_server, "export", "--run", "2", "--xdi", str(path))
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)  # JSON only on stdout
    assert summary["run_uid"] == uids[1] and summary["scan_id"] == 2
    assert summary["format"] == "xdi" and summary["file"] == str(path.resolve())
    assert summary["normalized"] and summary["e0"] == 530.0 and summary["dropped"] == 0
    # the file's numbers are the run's events, energy calibrated
    events = [d for n, d in docs if n == "event" and d["descriptor"] == _primary(docs, uids[1])]
    energy = np.sort([e["data"]["mono_energy"] for e in events]) + TRUE_OFFSET
    assert summary["points"] == len(events)
    text = path.read_text()
    assert text.startswith("# XDI/1.0 xas-bluesky/") and " Bluesky/" in text.splitlines()[0]
    rows = np.loadtxt([ln for ln in text.splitlines() if not ln.startswith("#")])
    np.testing.assert_allclose(rows[:, 0], energy, atol=1e-4)
    for line in (
        "# Element.symbol: O",
        "# Element.edge: K",
        "# Sample.name: s_O",
        "# Bluesky.data_session: pass-100001",
        f"# Bluesky.uid: {uids[1]}",
        "# Beamline.name: xas-bluesky-test",
    ):
        assert line in text.splitlines()
    larch_io = pytest.importorskip("larch.io", reason="xraylarch is not installed (extra larch)")
    group = larch_io.read_xdi(str(path), use_pyxdi=False)  # XDI's C library
    assert (group.element, group.edge) == ("O", "K")
    np.testing.assert_allclose(group.energy, energy, atol=1e-4)
    np.testing.assert_allclose(group.mutey, group.itey / group.i0, rtol=1e-6)


def _primary(docs, uid):
    return next(
        d["uid"]
        for n, d in docs
        if n == "descriptor" and d["run_start"] == uid and d["name"] == "primary"
    )


def test_export_athena_by_prefix(runs, tiled_server, tmp_path):
    client, uids, _ = runs
    path = tmp_path / "n.prj"
    out = _cli(tiled_server, "export", "--run", uids[2][:6], "--athena", str(path))
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["run_uid"] == uids[2] and summary["format"] == "athena"
    start, stop, columns = catalog.read_run(client, uids[2])
    data = from_run(start, stop, columns)
    larch_io = pytest.importorskip("larch.io", reason="xraylarch is not installed (extra larch)")
    assert summary["writer"] == "larch"
    project = larch_io.read_athena(str(path))
    (group,) = project.groups.values()
    np.testing.assert_allclose(group.energy, data.energy, atol=1e-9)
    np.testing.assert_allclose(group.mu, data.mu, rtol=1e-12)
    assert group.atsym == "N" and float(group.athena_params.bkg.e0) == 399.0


def test_cli_errors(runs, tiled_server, tmp_path):
    ambiguous = _cli(tiled_server, "export", "--run", "feedbeef", "--xdi", str(tmp_path / "a"))
    assert ambiguous.returncode == 1 and ambiguous.stdout == ""
    (line,) = ambiguous.stderr.strip().splitlines()  # one line, naming the matches
    assert "ambiguous" in line and "feedbeef-0000" in line and "feedbeef-1111" in line
    missing = _cli(tiled_server, "export", "--run", "abcdef12", "--xdi", str(tmp_path / "a"))
    assert missing.returncode == 1 and "abcdef12" in missing.stderr
    nodir = _cli(tiled_server, "export", "--run", "1", "--xdi", str(tmp_path / "no" / "a.xdi"))
    assert nodir.returncode == 1 and "no such directory" in nodir.stderr
    both = _cli(tiled_server, "export", "--run", "1", "--xdi", "a", "--athena", "b")
    assert both.returncode == 2  # argparse: one format at a time


def test_query_run_by_prefix_and_scan_id(runs, tiled_server):
    """``query --run`` takes a prefix or a scan id too (the match record is stored by hand
    here; the live analysis storing it is tested in test_catalog.py)."""
    client, uids, _ = runs
    ranking = [
        {"name": "a", "smiles": "O", "probability": 0.75},
        {"name": "b", "smiles": "CO", "probability": 0.25},
    ]
    catalog.store_match(client, MatchSummary(run_uid=uids[0], best_name="a"), ranking)
    for spec in (uids[0], uids[0][:7], "1"):
        out = _cli(tiled_server, "query", "--run", spec)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["run_uid"] == uids[0] and data["ranking"] == ranking
    ambiguous = _cli(tiled_server, "query", "--run", "feedbeef")
    assert ambiguous.returncode == 1 and "ambiguous" in ambiguous.stderr
    nomatch = _cli(tiled_server, "query", "--run", "2")  # a run, but no match stored for it
    assert nomatch.returncode == 1 and uids[1] in nomatch.stderr


def test_export_athena_without_larch(runs, tmp_path, monkeypatch):
    """Without xraylarch the package's own writer makes the project (read back by Larch's
    read_athena where xraylarch is installed, as in CI)."""
    import importlib.util

    from xas_bluesky.apps import export

    client, uids, _ = runs
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "larch" else real(name, *a)
    )
    path = tmp_path / "own.prj"
    summary = export.export_run(client, "1", athena=str(path))
    assert summary["writer"] == "xas-bluesky" and summary["run_uid"] == uids[0]
    data = from_run(*catalog.read_run(client, uids[0]))
    larch_io = pytest.importorskip("larch.io", reason="xraylarch is not installed (extra larch)")
    (group,) = larch_io.read_athena(str(path)).groups.values()
    np.testing.assert_allclose(group.mu, data.mu, rtol=1e-12)
    assert group.label == "s_O scan 1"
