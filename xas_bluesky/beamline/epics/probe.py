"""An independent Channel Access client that timestamps every monitor update of one PV.

Run in its own process (its own libca, its own GIL) so that what it measures is what any client
on the network would see: the demo and ``benchmarks/latency.py`` pair these arrival times with
the event documents' times to give the event -> score-PV latency.

    python -m xas_bluesky.beamline.epics.probe --pv XAS:Match:NPoints-I --out arrivals.jsonl

One JSON line per update: ``{"t": <time.time() at arrival>, "value": <value>}``.  The first line,
``{"connected": true}``, says the monitor is up.  Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pv", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the PV")
    args = ap.parse_args(argv)

    import epics  # after the caller's Channel Access environment is in place

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *a: stop.set())
    with open(args.out, "w", buffering=1) as fh:

        def on_update(value=None, **kw):  # CA thread: timestamp first, no CA calls here
            t = time.time()
            v = value.tolist() if hasattr(value, "tolist") else value
            fh.write(json.dumps({"t": t, "value": v}) + "\n")

        pv = epics.PV(args.pv, auto_monitor=True, callback=on_update)
        if not pv.wait_for_connection(args.timeout):
            raise SystemExit(f"probe: {args.pv} did not connect within {args.timeout:g} s")
        fh.write(json.dumps({"connected": True, "t": time.time()}) + "\n")
        while not stop.wait(0.2):
            pass
        pv.clear_callbacks()
        pv.disconnect()


def pair_latencies(event_times: dict[int, float], arrivals: list[dict]) -> list[float]:
    """Latency of each event ``k`` (1-based count, its document time): the first arrival whose
    value (a point count) reaches ``k``, minus the event's time, in seconds."""
    ups = sorted((a["t"], a["value"]) for a in arrivals if "value" in a)
    out = []
    j = 0
    for k in sorted(event_times):
        while j < len(ups) and (ups[j][1] or 0) < k:
            j += 1
        if j == len(ups):
            break
        out.append(ups[j][0] - event_times[k])
    return out


if __name__ == "__main__":
    main()
