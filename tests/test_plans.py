"""XANES plans on a real RunEngine over the sim beamline: start documents, calibration, the
measurement chain (r >= 0.99 for both edges), pause/resume, a dead IOC.  The chain's functions
alone are tested in test_spectra.py."""

from __future__ import annotations

import numpy as np
import pytest

from sim_iocs.launcher import PROBE_PV, sim_ioc_args
from xas_bluesky.beamline.plans import (
    CalibrationError,
    Region,
    calibrate_energy,
    default_regions,
    grid_region,
    grid_xanes_scan,
    region_points,
    xanes_scan,
)
from xas_bluesky.contracts import START_KEYS
from xas_bluesky.resources import heldout_samples
from xas_bluesky.science.spectra import best_shift_pearson, mu_from_channels, normalize
from xas_bluesky.testing import IOCFactory

pytestmark = pytest.mark.system  # real IOCs, tiled, RunEngine or the shipped weights

CLOCK = 200.0
TRUE_OFFSET = 0.63
#: supplied spectra of the chain check: held-out samples that are not the reference slots
SUPPLIED = {"O": "qm9_011315", "N": "qm9_011512"}


def _write_csv(path, energy, mu):
    path.write_text(
        "energy_eV,mu\n" + "\n".join(f"{e:.3f},{m:.6f}" for e, m in zip(energy, mu, strict=True))
    )
    return path


def _supplied(edge):
    energy, samples = heldout_samples(edge)
    (mu,) = [s["mu"] for s in samples if s["name"] == SUPPLIED[edge]]
    return energy, np.asarray(mu)


@pytest.fixture(scope="module")
def beamline(ca_env, tmp_path_factory):
    """One sim beamline (clock x200, true offset 0.63 eV) with a supplied CSV spectrum per edge."""
    from xas_bluesky.beamline.devices import make_devices

    tmp = tmp_path_factory.mktemp("plans")
    slots = [f"supplied_{e}={_write_csv(tmp / f'{e}.csv', *_supplied(e))}" for e in SUPPLIED]
    factory = IOCFactory(tmp / "ioc-logs")
    try:
        proc = factory(
            sim_ioc_args(slots=slots, clock=CLOCK, seed=7, offset=TRUE_OFFSET), probe=PROBE_PV
        )
        yield make_devices(proc.info["prefix"])
    finally:
        factory.stop_all()


@pytest.fixture
def RE():
    from bluesky import RunEngine

    RE = RunEngine({})
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.docs = docs
    return RE


def _events(docs):
    return [d for n, d in docs if n == "event"]


def _primary(docs):
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    return [d for n, d in docs if n == "event" and streams[d["descriptor"]] == "primary"]


def test_region_points():
    e, d = region_points(grid_region("O", 0.1))
    assert e.size == 491 and e[0] == 526.0 and e[-1] == 575.0
    assert np.allclose(np.diff(e), 0.1)
    e, d = region_points(default_regions("O"))
    assert np.all(np.diff(e) > 0) and e[0] == 526.0 and e[-1] == 575.0
    assert set(d) == {1.0, 2.0}
    assert np.diff(e)[(e[:-1] > 530) & (e[:-1] < 544)].max() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="overlaps"):
        region_points([Region(526, 530, 1), Region(529, 531, 1)])
    with pytest.raises(ValueError):
        Region(530, 526, 1)
    with pytest.raises(ValueError):
        Region(526, 530, float("nan"))


def test_xanes_scan_start_document_and_events(beamline, RE):
    b = beamline
    regions = [Region(526, 529, 1.5, 0.5), Region(529, 533, 1.0, 1.0), Region(533, 545, 6.0, 2.0)]
    b.mono.calib_offset.put(0.25)
    RE(
        xanes_scan(
            b.mono,
            b.det,
            edge="O",
            regions=regions,
            sample="ref_O",
            sample_changer=b.sample_changer,
            candidates="candidates_O.xyz",
            readables=[b.ring_current],
        )
    )
    (start,) = [d for n, d in RE.docs if n == "start"]
    assert set(START_KEYS) <= set(start)
    assert start["xas_element"] == "O" and start["xas_edge"] == "K" and start["xas_mode"] == "TEY"
    assert start["xas_fields"] == {
        "energy": "mono_energy",
        "i0": "det_i0",
        "signal": "det_tey",
        "i0_alarm": "det_i0_severity",
        "signal_alarm": "det_tey_severity",
    }
    assert start["sample_name"] == "ref_O" and start["candidates"] == "candidates_O.xyz"
    assert start["energy_offset"] == pytest.approx(0.25)
    assert start["xas_regions"][1] == {"start": 529, "stop": 533, "step": 1.0, "dwell": 1.0}
    events = _events(RE.docs)
    energies = [e["data"]["mono_energy"] for e in events]
    assert np.allclose(energies, [526, 527.5, 529, 530, 531, 532, 533, 539, 545], atol=0.02)
    assert [e["data"]["det_count_time"] for e in events] == [0.5] * 2 + [1.0] * 4 + [2.0] * 3
    assert all(e["data"]["det_i0"] > 0 and e["data"]["ring_current"] > 390 for e in events)
    (stop,) = [d for n, d in RE.docs if n == "stop"]
    assert stop["exit_status"] == "success" and stop["num_events"]["primary"] == 9


def test_calibrate_energy_recovers_offset(beamline, RE):
    b = beamline
    b.mono.calib_offset.put(0.0)
    RE(calibrate_energy(b.mono, b.det, b.sample_changer, edge="O", store=RE.md))
    found = RE.md["energy_offset"]
    assert found == pytest.approx(TRUE_OFFSET, abs=0.05)
    assert b.mono.calib_offset.get() == pytest.approx(found)
    RE.docs.clear()
    RE(xanes_scan(b.mono, b.det, edge="O", regions=[Region(526, 530, 2.0, 0.1)]))
    (start,) = [d for n, d in RE.docs if n == "start"]
    assert start["energy_offset"] == pytest.approx(found)


def test_calibration_refuses_a_blank(beamline, RE):
    b = beamline
    b.mono.calib_offset.put(0.123)
    with pytest.raises(CalibrationError, match="calibration failed"):
        RE(
            calibrate_energy(
                b.mono,
                b.det,
                b.sample_changer,
                edge="O",
                slot="blank",
                regions=[Region(526, 545, 0.5, 0.2)],
                store=RE.md,
            )
        )
    assert "energy_offset" not in RE.md
    assert b.mono.calib_offset.get() == pytest.approx(0.123)
    assert RE.state == "idle"


def _chain_r(RE, b, edge, step):
    RE.docs.clear()
    RE(
        grid_xanes_scan(
            b.mono,
            b.det,
            edge=edge,
            step=step,
            sample=f"supplied_{edge}",
            sample_changer=b.sample_changer,
        )
    )
    (start,) = [d for n, d in RE.docs if n == "start"]
    f = start["xas_fields"]
    ev = _events(RE.docs)
    energy = np.array([e["data"][f["energy"]] for e in ev]) + start["energy_offset"]
    i0, signal = ([e["data"][f[k]] for e in ev] for k in ("i0", "signal"))
    mu = mu_from_channels("TEY", i0, signal, strict=False).mu
    n = normalize(energy, mu, edge)
    r, shift = best_shift_pearson(n.energy, n.norm, *_supplied(edge))
    return r, shift, start["energy_offset"]


@pytest.mark.parametrize("edge", ["O", "N"])
def test_measurement_chain_reproduces_supplied_spectrum(beamline, RE, edge):
    """Grid scan of a supplied spectrum, pre-edge/edge-step normalisation: r >= 0.99 after the
    best shift, at default counts (0.2 eV here; the 0.1 eV grid is the slow test)."""
    r, shift, recorded = _chain_r(RE, beamline, edge, 0.2)
    assert r >= 0.99, f"{edge}: r = {r:.4f} (shift {shift:+.2f} eV)"
    # true energy = readback + true offset: the best shift is what the recorded offset lacks
    assert shift == pytest.approx(TRUE_OFFSET - recorded, abs=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("edge", ["O", "N"])
def test_measurement_chain_full_grid(beamline, RE, edge):
    r, _, _ = _chain_r(RE, beamline, edge, 0.1)
    assert r >= 0.99, f"{edge}: r = {r:.4f}"


def _once_each(events, expected):
    """Every expected energy measured exactly once, in order: a list with counts, not a set
    (a set hides a point measured twice), and no seq_num twice."""
    from collections import Counter

    energies = [round(e["data"]["mono_energy"], 1) for e in events]
    counts = Counter(energies)
    assert [e for e, n in counts.items() if n > 1] == [], counts
    assert energies == [round(x, 1) for x in expected]
    seqs = [e["seq_num"] for e in events]
    assert seqs == list(range(1, len(expected) + 1))


def test_pause_and_resume(beamline, RE):
    import threading

    from bluesky.utils import RunEngineInterrupted

    b = beamline

    def pause_once(name, doc):
        if name == "event" and doc["seq_num"] == 3:
            # request_pause waits on the RunEngine's loop: call it from another thread
            threading.Thread(target=RE.request_pause).start()

    token = RE.subscribe(pause_once)
    with pytest.raises(RunEngineInterrupted):
        RE(xanes_scan(b.mono, b.det, edge="N", regions=[Region(396, 400, 0.5, 0.1)]))
    assert RE.state == "paused"
    RE.unsubscribe(token)
    RE.resume()
    assert RE.state == "idle"
    (stop,) = [d for n, d in RE.docs if n == "stop"]
    assert stop["exit_status"] == "success"
    _once_each(_primary(RE.docs), np.arange(396, 400.01, 0.5))


def test_suspender_holds_the_scan_while_the_beam_is_down(beamline, RE):
    import threading

    from bluesky.suspenders import SuspendBoolLow
    from ophyd import Signal

    b = beamline
    beam_ok = Signal(name="beam_ok", value=1)
    RE.install_suspender(SuspendBoolLow(beam_ok, sleep=0.05))
    suspended = []

    def dump_once(name, doc):
        if name == "event" and doc["seq_num"] == 2 and not suspended:
            suspended.append(True)
            beam_ok.put(0)
            threading.Timer(0.5, beam_ok.put, args=(1,)).start()

    RE.subscribe(dump_once)
    RE(xanes_scan(b.mono, b.det, edge="N", regions=[Region(396, 399, 0.5, 0.1)]))
    (stop,) = [d for n, d in RE.docs if n == "stop"]
    assert suspended and stop["exit_status"] == "success"
    _once_each(_primary(RE.docs), np.arange(396, 399.01, 0.5))


def test_ring_suspender_holds_the_scan_through_a_real_beam_dump(beamline, RE):
    """The simulated ring dumps (Ring:Sim:Dump-SP) right after point 3; the profile's kind of
    suspender (SuspendFloor on the monitored ring current) trips, the scan waits, resumes once
    the ring is refilled, and every energy is measured once, with the beam."""
    import time

    import epics
    from bluesky.suspenders import SuspendFloor
    from ophyd import EpicsSignalRO

    b = beamline
    prefix = b.ring_current.pvname[: -len("Ring:Current-I")]
    monitor = EpicsSignalRO(b.ring_current.pvname, name="ring_monitor", auto_monitor=True)
    monitor.wait_for_connection(timeout=10)
    susp = SuspendFloor(monitor, 100.0, resume_thresh=300.0, sleep=0.1)
    RE.install_suspender(susp)
    tripped = []

    def dump_once(name, doc):
        if name == "event" and doc["seq_num"] == 3 and not tripped:
            epics.caput(prefix + "Ring:Sim:Dump-SP", 0.6 * CLOCK, wait=True)  # 0.6 s real
            deadline = time.monotonic() + 5
            while not susp.tripped and time.monotonic() < deadline:
                time.sleep(0.005)
            tripped.append(susp.tripped)

    RE.subscribe(dump_once)
    try:
        RE(
            xanes_scan(b.mono, b.det, edge="N", regions=[Region(396, 399, 0.5, 0.1)],
                       ring_current=b.ring_current)
        )  # fmt: skip
    finally:
        RE.remove_suspender(susp)
    assert tripped == [True]
    (stop,) = [d for n, d in RE.docs if n == "stop"]
    assert stop["exit_status"] == "success"
    events = _primary(RE.docs)
    _once_each(events, np.arange(396, 399.01, 0.5))
    assert all(e["data"]["ring_current"] > 300 for e in events)  # nothing measured in the dump
    # the points after the dump came after the refill (0.6 s real)
    assert events[3]["time"] - events[2]["time"] >= 0.5


def test_dead_ioc_fails_the_run_not_the_runengine(ioc_factory, RE):
    from xas_bluesky.beamline.devices import make_devices

    proc = ioc_factory(sim_ioc_args(clock=CLOCK), probe=PROBE_PV)
    b = make_devices(proc.info["prefix"])

    def kill_after_two(name, doc):
        if name == "event" and doc["seq_num"] == 2:
            proc.stop()

    RE.subscribe(kill_after_two)
    with pytest.raises(Exception):  # noqa: B017 -- ophyd's disconnection/timeout errors vary
        RE(xanes_scan(b.mono, b.det, edge="O", regions=[Region(526, 536, 1.0, 0.1)]))
    assert RE.state == "idle"
    (stop,) = [d for n, d in RE.docs if n == "stop"]
    assert stop["exit_status"] == "fail"
    assert len(_events(RE.docs)) == 2
