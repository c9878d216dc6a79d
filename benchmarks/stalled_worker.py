"""A remote worker stopped (SIGSTOP) during a run: how many events does its analysis get?

Starts a ``bluesky-0MQ-proxy``, an ``xas-bluesky worker`` process (score PVs on loopback) and,
with ``--tiled``, a tiled server that the RunEngine writes the raw run to and the worker reads
from; a RunEngine publishes ``--events`` points of a 16-candidate O K-edge run (soft signals, as
fast as it goes); the worker is SIGSTOPped from event ``--stall-from`` to ``--stall-to``.  Prints
JSON: events published, ``Match:NPoints-I`` (events the analysis handled), status and message.

``--pickle`` publishes with bluesky's default serializer, for the worker of the code before
msgpack (run it with that code first on ``PYTHONPATH``; the worker subprocess inherits it)::

    PYTHONPATH=/path/to/old python benchmarks/stalled_worker.py --pickle --events 20000
    python benchmarks/stalled_worker.py --tiled --events 20000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--stall-from", type=int, default=50)
    ap.add_argument("--stall-to", type=int, default=None, help="default: events - 50")
    ap.add_argument("--pickle", action="store_true", help="publish with pickle (old worker)")
    ap.add_argument("--tiled", action="store_true", help="a tiled server for both sides")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    stall_to = args.stall_to if args.stall_to is not None else args.events - 50

    from xas_bluesky.services import (
        apply_ca_env,
        free_ports,
        loopback_ca_env,
        start_repeater,
        start_tiled,
    )

    ca_port, rep_port, pin, pout = free_ports(4)
    env = loopback_ca_env(ca_port, rep_port)
    apply_ca_env(env)
    work = Path(tempfile.mkdtemp(prefix="xas-stall-"))
    procs: list[subprocess.Popen] = []
    tiled = None
    out: dict = {"events": args.events, "stalled": [args.stall_from, stall_to]}
    rep = start_repeater(rep_port)
    try:
        from xas_bluesky.resources import candidates_file

        lines = candidates_file("O").read_text().splitlines()
        frames, i = [], 0
        for _ in range(16):  # the first 16 molecules of the shipped O library
            m = int(lines[i])
            frames += lines[i : i + m + 2]
            i += m + 2
        cands_file = work / "c16.xyz"
        cands_file.write_text("\n".join(frames) + "\n")
        exe = str(Path(sys.executable).with_name("bluesky-0MQ-proxy"))
        log = open(work / "proxy.log", "ab")  # noqa: SIM115
        procs.append(
            subprocess.Popen([exe, "--in-address", f"127.0.0.1:{pin}",
                              "--out-address", f"127.0.0.1:{pout}"], stdout=log, stderr=log)
        )  # fmt: skip
        cmd = [sys.executable, "-m", "xas_bluesky.apps.cli", "worker", "--zmq",
               f"127.0.0.1:{pout}", "--prefix", "STALL:", "--port", str(ca_port),
               "--candidates", str(cands_file), "--edge", "O"]  # fmt: skip
        wenv = {**os.environ, **env}
        if args.tiled:
            tiled = start_tiled(work / "tiled")
            cmd += ["--tiled-uri", tiled.uri, "--backup-dir", str(work / "backup")]
            wenv["TILED_API_KEY"] = tiled.api_key
        wlog = open(work / "worker.log", "ab")  # noqa: SIM115
        worker = subprocess.Popen(cmd, env=wenv, stdout=wlog, stderr=wlog)
        procs.append(worker)

        from xas_bluesky.beamline.remote import wait_for_worker

        if not wait_for_worker("STALL:", timeout=300):
            raise SystemExit(f"worker not ready; see {work / 'worker.log'}")

        import bluesky.plan_stubs as bps
        import epics
        import numpy as np
        from bluesky import RunEngine
        from bluesky.callbacks.zmq import Publisher
        from ophyd import Signal

        from xas_bluesky.science.candidates import PredictionCache

        cands = PredictionCache().from_file(cands_file, "O")
        RE = RunEngine({}, call_returns_result=False)
        if args.pickle:
            publisher = Publisher(f"127.0.0.1:{pin}")
        else:
            from xas_bluesky.beamline.remote import make_publisher

            publisher = make_publisher(f"127.0.0.1:{pin}")
        RE.subscribe(publisher)
        writer = None
        if tiled is not None:
            from bluesky.callbacks.buffer import BufferingWrapper
            from bluesky_tiled_plugins import TiledWriter

            writer = BufferingWrapper(TiledWriter(tiled.client()))
            RE.subscribe(writer)
        time.sleep(1.0)  # the publisher's connection to the proxy
        e_sig, i0_sig, tey_sig = (Signal(name=n, value=0.0) for n in ("e", "i0", "tey"))
        energies = np.linspace(527.0, 560.0, args.events)
        rng = np.random.default_rng(0)
        md = {"xas_element": "O", "xas_edge": "K", "xas_mode": "TEY", "sample_name": "stall",
              "xas_fields": {"energy": "e", "i0": "i0", "signal": "tey"}}  # fmt: skip

        def plan():
            uid = yield from bps.open_run(md=md)
            for k, e in enumerate(energies):
                if k == args.stall_from:
                    os.kill(worker.pid, signal.SIGSTOP)
                elif k == stall_to:
                    os.kill(worker.pid, signal.SIGCONT)
                mu = float(np.interp(e, cands.energy, cands.mean[4]))
                i0 = float(rng.poisson(1e6))
                for sig, v in ((e_sig, float(e)), (i0_sig, i0),
                               (tey_sig, float(rng.poisson(i0 * (0.02 + 0.05 * mu))))):  # fmt: skip
                    sig.put(v)
                yield from bps.trigger_and_read([e_sig, i0_sig, tey_sig])
            yield from bps.close_run()
            return uid

        t0 = time.monotonic()
        (uid,) = RE(plan())
        out["run_seconds"] = round(time.monotonic() - t0, 1)
        if writer is not None:
            writer.shutdown(wait=True)
        deadline = time.monotonic() + args.timeout

        def get(suffix, **kw):
            return epics.caget("STALL:" + suffix, use_monitor=False, timeout=2, **kw)

        while time.monotonic() < deadline:
            if get("Match:RunUID-I", as_string=True) == uid and get(
                "Match:Status-Sts", as_string=True
            ) in ("Done", "Warning", "Error"):
                break
            time.sleep(0.5)
        time.sleep(2.0)
        out.update(
            npoints=get("Match:NPoints-I"),
            status=get("Match:Status-Sts", as_string=True),
            message=get("Match:Message-Name", as_string=True),
            serializer="pickle" if args.pickle else "msgpack",
            tiled=bool(args.tiled),
        )
        out["lost"] = args.events - int(out["npoints"] or 0)
        publisher.close()
    finally:
        for p in reversed(procs):
            try:
                os.kill(p.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if tiled is not None:
            tiled.stop()
        rep.stop()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
