"""XDI and Athena files of a run (science.xasfiles, the export's Athena writers), from plain
documents and columns: no tiled, no IOCs.  The files are read back with xraylarch's readers
(``read_xdi`` in Python and through the XDI C library ``libxdifile`` with its validation,
``read_athena``) when xraylarch is installed; the rest runs without it."""

from __future__ import annotations

import ctypes
import dataclasses
import gzip
import time

import numpy as np
import pytest

from xas_bluesky.beamline.plans.regions import default_regions, region_points
from xas_bluesky.science.spectra import normalize
from xas_bluesky.science.xasfiles import (
    athena_text,
    from_run,
    write_athena,
    write_xdi,
    xdi_text,
)

SAMPLE = "qm9_011315"
OFFSET = 0.37
CREATOR = "xas-bluesky/9.9 Bluesky/1.15"


def _documents(mode="TEY", *, bad=(), **start_kw):
    """A grid XANES run of held-out ``SAMPLE`` on the simulated beamline's detectors, as a
    start document, a stop document and primary-stream columns (in measured order)."""
    from sim_iocs.physics import Beam, Sample, heldout_spectra

    true = region_points(default_regions("O"))[0]
    rng = np.random.default_rng(3)
    sample = Sample(SAMPLE, heldout_spectra(SAMPLE, "O"))
    counts = [Beam().measure(sample, float(e), 400.0, 1.0, rng) for e in true]
    signal_key = {"TEY": "tey", "PFY": "pfy", "TRANS": "it"}[mode]
    i0 = np.array([c["i0"] for c in counts])
    sig = np.array([c[signal_key] for c in counts])
    for k in bad:
        i0[k] = 0.0
    order = rng.permutation(true.size)  # an adaptive scan's order
    t0 = time.time()
    start = {
        "uid": "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
        "time": t0,
        "scan_id": 42,
        "plan_name": "xanes_scan",
        "beamline_id": "SST-1 (sim)",
        "data_session": "pass-314159",
        "xas_element": "O",
        "xas_edge": "K",
        "xas_mode": mode,
        "xas_fields": {"energy": "mono_energy", "i0": "det_i0", "signal": f"det_{signal_key}"},
        "xas_e0": 530.0,
        "sample_name": "slot3",
        "energy_offset": OFFSET,
        "xdi": {
            "Element": {"symbol": "O", "edge": "K"},
            "Mono": {"name": "grating monochromator"},
            "Detector": {"I0": "gold-mesh drain current (det_i0)", "TEY": "sample drain"},
            "Sample": {"name": "slot3"},
        },
        **start_kw,
    }
    stop = {"time": t0 + 120.0, "exit_status": "success"}
    columns = {
        "mono_energy": (true - OFFSET)[order],
        "det_i0": i0[order],
        f"det_{signal_key}": sig[order],
    }
    return start, stop, columns, (true, i0, sig)


def test_from_run_calibrates_sorts_and_normalises():
    start, stop, columns, (true, i0, sig) = _documents(bad=(5,))
    data = from_run(start, stop, columns)
    keep = np.arange(true.size) != 5
    np.testing.assert_allclose(data.energy, true[keep], atol=1e-9)  # readback + offset, sorted
    np.testing.assert_array_equal(data.i0, i0[keep])
    np.testing.assert_allclose(data.mu, sig[keep] / i0[keep])
    assert data.dropped == 1 and any("left out" in c for c in data.comments)
    assert data.mode == "TEY" and data.element == "O" and data.label == "slot3 scan 42"
    n = data.normalization
    assert n is not None and n.e0 == 530.0
    ref = normalize(true[keep], sig[keep] / i0[keep], "O")
    np.testing.assert_allclose(n.norm, ref.norm)
    md = data.metadata
    assert md["Element"] == {"symbol": "O", "edge": "K"}
    assert md["Bluesky"]["data_session"] == "pass-314159" and md["Bluesky"]["scan_id"] == "42"
    assert md["Beamline"]["name"] == "SST-1 (sim)" and md["Scan"]["edge_energy"] == "530.000"
    assert md["Scan"]["start_time"].startswith(time.strftime("%Y-"))

    trans = from_run(*_documents("TRANS")[:3])
    np.testing.assert_allclose(trans.mu, np.log(trans.i0 / trans.signal))
    with pytest.raises(KeyError, match="not an XAS run"):
        from_run({"uid": "x"}, None, {})
    with pytest.raises(KeyError, match="det_tey"):
        from_run(start, stop, {"mono_energy": columns["mono_energy"], "det_i0": i0})


def _xdi_rows(text):
    return np.loadtxt([ln for ln in text.splitlines() if not ln.startswith("#")])


def test_xdi_layout():
    data = from_run(*_documents()[:3])
    text = xdi_text(data, creator=CREATOR)
    lines = text.splitlines()
    assert lines[0] == f"# XDI/1.0 {CREATOR}"
    assert lines[1:5] == [
        "# Column.1: energy eV",
        "# Column.2: i0",
        "# Column.3: itey",
        "# Column.4: mutey",
    ]
    assert "# Element.symbol: O" in lines and "# Element.edge: K" in lines
    assert "# Mono.name: grating monochromator" in lines
    assert "# Sample.name: slot3" in lines and "# Bluesky.scan_id: 42" in lines
    head = lines.index("# ///")
    sep = next(i for i, ln in enumerate(lines) if ln.startswith("#----"))
    assert head < sep and lines[sep + 1] == "# energy i0 itey mutey"
    rows = _xdi_rows(text)
    assert rows.shape == (data.energy.size, 4)
    np.testing.assert_allclose(rows[:, 0], data.energy, atol=1e-4)
    np.testing.assert_allclose(rows[:, 3], data.mu, rtol=1e-7)
    fluo = from_run(*_documents("PFY")[:3])
    assert "# Column.3: ifluor" in xdi_text(fluo).splitlines()


def test_athena_text_layout(tmp_path):
    data = from_run(*_documents()[:3])
    text = athena_text([data, data])
    assert text.startswith("# Athena project file -- Demeter version")
    assert text.count("[record]") == 2 and text.count("$old_group = ") == 2
    keys = [ln.split("'")[1] for ln in text.splitlines() if ln.startswith("$old_group")]
    assert len(set(keys)) == 2 and all(len(k) == 5 and k.isalpha() for k in keys)
    path = write_athena(tmp_path / "a.prj", [data])
    assert gzip.open(path, "rt").read().startswith("# Athena project file")


# -- read back with xraylarch ---------------------------------------------------------------


def _larch():
    return pytest.importorskip("larch", reason="xraylarch is not installed (extra larch)")


def _libxdifile_check(path):
    """XDI's own C library on the file: read, validate every item, the required metadata."""
    import larch.io.xdi as lxdi

    lib = lxdi.get_xdilib()
    lib.XDI_required_metadata.restype = ctypes.c_int
    lib.XDI_validate_item.restype = ctypes.c_int
    pxdi = ctypes.pointer(lxdi.XDIFileStruct())
    status = lib.XDI_readfile(str(path).encode(), pxdi)
    assert status == 0, lxdi.bytes2str(lib.XDI_errorstring(status))
    xdi = pxdi.contents
    families = lxdi.tostrlist(xdi.meta_families, xdi.nmetadata)
    keywords = lxdi.tostrlist(xdi.meta_keywords, xdi.nmetadata)
    values = lxdi.tostrlist(xdi.meta_values, xdi.nmetadata)
    warnings = []
    for fam, key, val in zip(families, keywords, values, strict=True):
        if lib.XDI_validate_item(pxdi, fam.encode(), key.encode(), val.encode()) != 0:
            warnings.append(f"{fam}.{key}: {lxdi.tostr(xdi.error_message)}")
    required = lib.XDI_required_metadata(pxdi)
    lib.XDI_cleanup(pxdi, 0)
    return warnings, required


@pytest.mark.larch
def test_xdi_reads_back_with_larch_and_libxdifile(tmp_path):
    _larch()
    from larch.io import read_xdi

    data = from_run(*_documents()[:3])
    path = write_xdi(tmp_path / "run.xdi", data, creator=CREATOR)
    for use_pyxdi in (True, False):  # Larch's Python reader, then the C library's
        group = read_xdi(str(path), use_pyxdi=use_pyxdi)
        assert group.array_labels == ["energy", "i0", "itey", "mutey"]
        np.testing.assert_allclose(group.energy, data.energy, atol=1e-4)
        np.testing.assert_allclose(group.i0, data.i0, rtol=1e-7)
        np.testing.assert_allclose(group.mutey, data.mu, rtol=1e-7)
        assert (group.element, group.edge) == ("O", "K")
        assert group.attrs["sample"]["name"] == "slot3"
        assert group.attrs["bluesky"]["data_session"] == "pass-314159"
    warnings, required = _libxdifile_check(path)
    assert warnings == []  # every item valid, the Bluesky namespace versioned on line 1
    assert required == 4  # Element.symbol and .edge present; only Mono.d_spacing (a grating)
    # a crystal mono's d-spacing makes the file complete
    start, stop, columns, _ = _documents()
    start["xdi"]["Mono"] = {"name": "Si(111)", "d_spacing": "3.135600"}
    path = write_xdi(tmp_path / "si.xdi", from_run(start, stop, columns), creator=CREATOR)
    assert _libxdifile_check(path) == ([], 0)


def _athena_group(path):
    from larch.io import read_athena

    project = read_athena(str(path))
    (name,) = project.groups
    return project.groups[name]


@pytest.mark.larch
@pytest.mark.parametrize("writer", ["xas-bluesky", "larch"])
def test_athena_reads_back_with_larch(tmp_path, writer):
    """Both Athena writers (this package's, used without xraylarch, and Larch's create_athena,
    used with it) give a project Larch's read_athena reads: the data, E0 and the windows."""
    _larch()
    from xas_bluesky.apps.export import write_athena_with_larch

    start, stop, columns, _ = _documents(
        bad=(7,), sample_name="it's O\\N"
    )  # quotes and backslashes in the label survive
    data = from_run(start, stop, columns)
    path = tmp_path / "run.prj"
    if writer == "larch":
        write_athena_with_larch(path, data)
    else:
        write_athena(path, [data])
    group = _athena_group(path)
    np.testing.assert_allclose(group.energy, data.energy, atol=1e-9)
    np.testing.assert_allclose(group.mu, data.mu, rtol=1e-12)
    np.testing.assert_allclose(group.i0, data.i0, rtol=1e-12)
    assert group.atsym == "O" and group.edge == "K"
    bkg = group.athena_params.bkg
    n = data.normalization
    assert float(bkg.e0) == pytest.approx(n.e0)
    assert (float(bkg.pre1), float(bkg.pre2)) == (pytest.approx(n.pre1), pytest.approx(n.pre2))
    assert (float(bkg.nor1), float(bkg.nor2)) == (pytest.approx(n.norm1), pytest.approx(n.norm2))
    assert str(bkg.z) == "O"  # not Larch's guess from E0 on xraydb's table
    # this package's writer escapes them; Larch's does not, so the export drops them there
    assert group.label == ("it's O\\N scan 42" if writer == "xas-bluesky" else "its ON scan 42")
    # read_athena re-normalises with those windows (a pre-edge line, Athena has no level):
    # with a line of our own, it is our normalisation
    line = normalize(data.energy, data.mu, "O", line_span=0.0)
    assert line.npre == 1
    again = dataclasses.replace(data, normalization=line)
    path2 = tmp_path / "line.prj"
    if writer == "larch":
        write_athena_with_larch(path2, again)
    else:
        write_athena(path2, [again])
    np.testing.assert_allclose(_athena_group(path2).norm, line.norm, atol=1e-3)
