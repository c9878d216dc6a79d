"""The simulated beamline over real Channel Access: limits, put-completion, fresh reads, noise,
sample changer, bad spectrum files."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from sim_iocs.launcher import PROBE_PV, sim_ioc_args
from sim_iocs.physics import (
    Beam,
    Sample,
    SpectrumError,
    heldout_spectra,
    load_spectrum_csv,
    parse_slot_spec,
)
from xas_bluesky.apps.cli import main
from xas_bluesky.science.spectra import mu_from_channels
from xas_bluesky.services import free_ports, loopback_ca_env
from xas_bluesky.testing import IOCFactory

pytestmark = pytest.mark.system  # real IOCs, tiled, RunEngine or the shipped weights

CLOCK = 100.0


@pytest.fixture(scope="module")
def sim(ca_env, tmp_path_factory):
    """One sim beamline IOC (clock x100) for this module, and its connected ophyd devices
    (an IOC start costs seconds on a busy 2-core machine; each test sets what it relies on)."""
    from xas_bluesky.beamline.devices import make_devices

    factory = IOCFactory(tmp_path_factory.mktemp("ioc-logs"))
    try:
        proc = factory(sim_ioc_args(clock=CLOCK, seed=3, offset=0.4), probe=PROBE_PV)
        yield proc.info["prefix"], make_devices(proc.info["prefix"])
    finally:
        factory.stop_all()


def _write_ca(pv, value):
    from caproto.sync.client import write

    # repeater=False: the session's repeater runs; never let caproto spawn an orphan one
    return write(pv, value, notify=True, timeout=5, repeater=False)


def test_out_of_range_put_gets_ca_error(sim):
    from caproto import ErrorResponseReceived
    from caproto.sync.client import read

    prefix, devs = sim
    with pytest.raises(ErrorResponseReceived, match="ECA_PUTFAIL"):
        _write_ca(prefix + "Mono:Energy-SP", 5000.0)
    assert read(prefix + "Mono:Energy-SP", repeater=False).data[0] == pytest.approx(530.0)
    # ophyd knows the limits from the PV's control limits and refuses before any put
    assert devs.mono.limits == (250.0, 1500.0)
    with pytest.raises(ValueError, match="outside"):
        devs.mono.set(100.0)


def test_mono_put_completion_waits_for_the_move(sim):
    import epics

    prefix, devs = sim
    devs.mono.velocity.put(0.1)  # 5 eV at 0.1 eV/s = 50 simulated s = 0.5 real s at x100
    t0 = time.perf_counter()
    status = devs.mono.set(535.0)
    time.sleep(0.15)
    assert epics.caget(prefix + "Mono:Moving-Sts", use_monitor=False) == 1
    assert not status.done
    status.wait(10)
    elapsed = time.perf_counter() - t0
    assert elapsed >= 0.45, f"put completed after {elapsed:.2f} s, before the move ended"
    assert epics.caget(prefix + "Mono:Moving-Sts", use_monitor=False) == 0
    assert devs.mono.read()["mono_energy"]["value"] == pytest.approx(535.0, abs=0.02)
    devs.mono.velocity.put(10.0)


def test_detector_reads_fresh_values_after_acquire(sim):
    import epics

    prefix, devs = sim
    devs.det.count_time.put(0.5)
    before = devs.det.count.get()
    seen = []
    for _ in range(4):
        devs.det.trigger().wait(10)
        reading = devs.det.read()
        # exactly what the IOC holds now, not a monitor value from before the put
        assert reading["det_tey"]["value"] == epics.caget(prefix + "Det:TEY-I", use_monitor=False)
        seen.append((reading["det_i0"]["value"], reading["det_tey"]["value"]))
    assert len(set(seen)) == 4, "successive acquisitions gave repeated (stale) values"
    assert devs.det.count.get() == before + 4


def test_noise_is_about_one_percent_of_edge_step(sim):
    """Repeated counts at default count time: std of TEY/I0 over the edge step ~ 0.01."""
    prefix, devs = sim
    devs.sample_changer.set("ref_O").wait(10)
    devs.det.count_time.put(1.0)

    def mus(energy, n):
        devs.mono.set(energy).wait(10)
        out = []
        for _ in range(n):
            devs.det.trigger().wait(10)
            r = devs.det.read()
            out.append(r["det_tey"]["value"] / r["det_i0"]["value"])
        return np.asarray(out)

    pre, post = mus(527.0, 30), mus(570.0, 30)
    noise = post.std(ddof=1) / (post.mean() - pre.mean())
    assert 0.005 < noise < 0.02, f"noise {noise:.4f} of the edge step"


def test_noise_model_every_mode():
    """The detector model alone (many counts): ~1% of the step per point in TEY, PFY, TRANS."""
    beam, rng = Beam(), np.random.default_rng(0)
    sample = Sample("ref", heldout_spectra("qm9_006870", "O"))
    pre = [beam.measure(sample, 527.0, 400.0, 1.0, rng) for _ in range(400)]
    post = [beam.measure(sample, 570.0, 400.0, 1.0, rng) for _ in range(400)]
    for mode, key in (("TEY", "tey"), ("PFY", "pfy"), ("TRANS", "it")):
        a = mu_from_channels(mode, [c["i0"] for c in pre], [c[key] for c in pre]).mu
        b = mu_from_channels(mode, [c["i0"] for c in post], [c[key] for c in post]).mu
        noise = b.std() / abs(b.mean() - a.mean())
        assert 0.006 < noise < 0.015, f"{mode}: {noise:.4f}"


def test_i0_follows_ring_current(sim):
    prefix, devs = sim
    ring = devs.ring_current.get()
    assert 390.0 < ring <= 400.0
    devs.det.trigger().wait(10)
    i0 = devs.det.i0.get()
    assert i0 == pytest.approx(2.0e6 * ring / 400.0 * (530.0 / 500.0) ** -0.5, rel=0.12)


def test_counters_saturate_in_alarm_and_glitches_spoil_one_count(sim):
    """24-bit scalers: control limits 0 and 2^24 - 1 (in the descriptor), a count beyond full
    scale reads 2^24 - 1 in MAJOR alarm; Sim:Glitch-SP spoils the next count only and the
    detector's *_severity data keys carry each reading's alarm."""
    import epics

    prefix, devs = sim
    det = devs.det
    assert det.describe()["det_tey"]["upper_ctrl_limit"] == 2**24 - 1
    det.count_time.put(20.0)  # I0 ~ 4e7 counts: over full scale
    try:
        det.trigger().wait(10)
        r = det.read()
        assert r["det_i0"]["value"] == 2**24 - 1 and r["det_i0_severity"]["value"] == 2
        assert r["det_tey_severity"]["value"] == 0
    finally:
        det.count_time.put(1.0)
    for glitch, check in (
        ("tey:saturate", lambda r: r["det_tey"] == 2**24 - 1 and r["det_tey_severity"] == 2),
        ("tey:negative", lambda r: r["det_tey"] < 0 and r["det_tey_severity"] == 0),
        ("i0:tiny", lambda r: 0 < r["det_i0"] < 1e-300),
        (
            "pfy:major,i0:invalid",
            lambda r: r["det_pfy_severity"] == 2 and r["det_i0_severity"] == 3,
        ),
    ):
        epics.caput(prefix + "Det:Sim:Glitch-SP", glitch, wait=True)
        det.trigger().wait(10)
        reading = {k: v["value"] for k, v in det.read().items()}
        assert check(reading), (glitch, reading)
        det.trigger().wait(10)  # once only
        after = {k: v["value"] for k, v in det.read().items()}
        assert after["det_i0"] > 1e5 and after["det_tey"] > 0
        assert all(after[f"det_{c}_severity"] == 0 for c in ("i0", "tey", "pfy", "it"))
    from caproto import ErrorResponseReceived

    with pytest.raises(ErrorResponseReceived, match="ECA_PUTFAIL"):  # an unknown glitch
        _write_ca(prefix + "Det:Sim:Glitch-SP", "tey:melt")


def test_a_beam_dump_drops_the_ring_current_and_i0_then_refills(sim):
    """Ring:Sim:Dump-SP = N: the ring current reads 0 at once (a suspender sees it), I0 counts
    dark only, and after N simulated seconds the ring is full again."""
    import time

    import epics

    prefix, devs = sim
    dump_s = 100.0  # 1 s of real time at x100
    epics.caput(prefix + "Ring:Sim:Dump-SP", dump_s, wait=True)
    assert devs.ring_current.get() == 0.0
    devs.det.trigger().wait(10)
    assert devs.det.i0.get() < 1000  # dark counts only
    time.sleep(dump_s / CLOCK + 0.3)
    assert devs.ring_current.get() > 390.0
    devs.det.trigger().wait(10)
    assert devs.det.i0.get() > 1e6


def test_sample_changer_slots_and_refusals(sim, tmp_path):
    from caproto import ErrorResponseReceived

    prefix, devs = sim
    names = devs.sample_changer.slot_names()
    assert {"blank", "ref_O", "ref_N"} <= set(names) and len(names) > 20
    with pytest.raises(ValueError, match="not in the beam"):
        devs.sample_changer.set("no_such_slot").wait(10)
    bad = tmp_path / "bad.csv"
    bad.write_text("energy_eV,mu\n530,nan\n531,1\n")
    with pytest.raises(ErrorResponseReceived):
        _write_ca(prefix + "Sample:Sim:Load-Cmd", f"mine={bad}")
    good = tmp_path / "good.csv"
    e = np.linspace(526, 575, 50)
    good.write_text("energy_eV,mu\n" + "\n".join(f"{x},{float(x > 530)}" for x in e))
    _write_ca(prefix + "Sample:Sim:Load-Cmd", f"mine={good}")
    devs.sample_changer.set("mine").wait(10)
    assert devs.sample_changer.read()["sample_changer_slot"]["value"] == "mine"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("e,mu\n1,2\n", "header must be"),
        ("energy_eV,mu\n530,1\nabc,2\n", "not two numbers"),
        ("energy_eV,mu\n" + "".join(f"{530 + k},{k}\n" for k in range(3)), "at least 5 points"),
        ("energy_eV,mu\n" + "".join(f"{530 - k},{k}\n" for k in range(6)), "strictly increasing"),
        ("energy_eV,mu\n" + "".join(f"{5 + k},{k}\n" for k in range(6)), "outside the mono"),
        ("energy_eV,mu\n" + "".join(f"{530 + k},inf\n" for k in range(6)), "non-finite"),
    ],
)
def test_bad_spectrum_file_is_refused(tmp_path, text, message):
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(SpectrumError, match=message):
        load_spectrum_csv(path)


def test_ioc_refuses_bad_slot_at_start(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("energy_eV,mu\n530,1\n")
    out = subprocess.run(
        [sys.executable, "-m", "sim_iocs.beamline", "--slot", f"x={path}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "at least 5 points" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(SpectrumError, match="expected NAME="):
        parse_slot_spec("nameonly")


def test_sim_beamline_cli_bad_file_one_line_error(capsys):
    assert main(["sim-beamline", "--slot", "x=/no/such.csv"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "/no/such.csv: no such file" in err


def test_sim_beamline_cli_serves_and_stops_on_sigterm(tmp_path):
    """``xas-bluesky sim-beamline`` prints prefixes and ports, serves, and on SIGTERM stops the
    IOC and the repeater it started."""
    import os
    import signal

    from caproto.sync.client import read

    port, rep = free_ports(2)
    cmd = [sys.executable, "-m", "xas_bluesky.apps.cli", "sim-beamline", "--prefix", "CLIT:"]
    cmd += ["--port", str(port), "--repeater-port", str(rep), "--offset", "0.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = {}
        for line in proc.stdout:  # blocks until the IOC answered and the info is printed
            key, _, value = line.strip().partition(" ")
            info[key] = value
            if key == "export" and value.startswith("EPICS_CA_REPEATER_PORT"):
                break
        assert info["prefix"] == "CLIT:" and info["mono"] == "CLIT:Mono:"
        assert int(info["server_port"]) == port and float(info["true_offset_eV"]) == 0.5
        saved = dict(os.environ)
        os.environ.update(loopback_ca_env(port, rep))
        try:
            value = read("CLIT:Mono:Sim:Offset-SP", timeout=5, repeater=False).data[0]
        finally:
            os.environ.clear()
            os.environ.update(saved)
        assert value == pytest.approx(0.5)
        ioc_pid = int(info["pid"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(ioc_pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_standalone_mono_ioc(ioc_factory):
    """``python -m sim_iocs.mono`` (the example of docs/testing.rst) serves the mono alone."""
    from caproto import ErrorResponseReceived

    proc = ioc_factory(
        ["-m", "sim_iocs.mono", "--clock", "100", "--offset", "-0.2"], probe="Energy-RB"
    )
    prefix = proc.info["prefix"]
    from xas_bluesky.beamline.devices import Mono

    mono = Mono(prefix, name="mono")
    mono.wait_for_connection(timeout=10)
    mono.set(410.0).wait(10)
    assert mono.read()["mono_energy"]["value"] == pytest.approx(410.0, abs=0.02)
    with pytest.raises(ErrorResponseReceived):
        _write_ca(prefix + "Energy-SP", 2000.0)
    assert _write_ca(prefix + "Sim:Offset-SP", 0.3) is not None


def test_stock_epics_motor_drives_the_sim_mono(sim):
    # a beamline's mono is a motor record: ophyd's EpicsMotor, unchanged, must move this one too
    import epics
    from ophyd import EpicsMotor
    from ophyd.utils import LimitError

    prefix, devs = sim
    motor = EpicsMotor(prefix + "Mono:Energy", name="mono_motor")
    motor.wait_for_connection(timeout=10)
    assert motor.limits == (250.0, 1500.0)
    assert motor.egu == "eV"
    motor.move(537.5, wait=True, timeout=20)
    assert motor.position == pytest.approx(537.5, abs=0.02)
    # one axis: the plain readback PV and the plugin's Mono device see the same move
    assert epics.caget(prefix + "Mono:Energy-RB", use_monitor=False) == pytest.approx(
        537.5, abs=0.02
    )
    assert devs.mono.read()["mono_energy"]["value"] == pytest.approx(537.5, abs=0.02)
    devs.mono.set(531.0).wait(20)
    assert motor.user_readback.get(use_monitor=False) == pytest.approx(531.0, abs=0.02)
    with pytest.raises(LimitError):
        motor.move(5000.0, wait=True, timeout=5)
