"""``xas-bluesky sim-beamline``: start the simulated XAS beamline IOCs on loopback.

Prints the PV prefixes, the ports and the Channel Access environment clients need, then serves
until Ctrl-C or SIGTERM, and stops every process it started (by PID).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading

from xas_bluesky.apps.cli import CLIError
from xas_bluesky.services import ServiceError, free_ports, start_repeater

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sim-beamline",
        help="Start the simulated XAS beamline IOCs",
        description=(
            "Serve the simulated soft X-ray XAS beamline (mono, I0/TEY/PFY/It counters, sample "
            "changer, ring current) over Channel Access on 127.0.0.1 until Ctrl-C or SIGTERM."
        ),
    )
    p.add_argument("--prefix", default="SIM:", help="PV prefix (default SIM:)")
    p.add_argument("--port", type=int, default=None, help="CA server port (default: a free one)")
    p.add_argument(
        "--repeater-port", type=int, default=None, help="CA repeater port (default: port + 1)"
    )
    p.add_argument(
        "--clock",
        type=float,
        default=None,
        help="simulated seconds per real second (default 20: a 491-point grid in ~1 min)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (noise, default offset)")
    p.add_argument(
        "--offset",
        type=float,
        default=None,
        help="mono's true calibration error, eV (default: random within +-1)",
    )
    p.add_argument(
        "--slot",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="add a sample slot: NAME=FILE.csv (energy_eV,mu on FEFF10's axis), "
        "NAME=heldout:[EDGE:]SAMPLE or NAME=blank (repeatable)",
    )
    p.add_argument("--sample", default=None, help="slot in the beam at start (default blank)")
    p.add_argument(
        "--broadening",
        type=float,
        default=0.0,
        metavar="EV",
        help="Gaussian FWHM (eV) convolved with every sample spectrum, like a real beamline "
        "(default 0: FEFF's spectra as they are)",
    )
    p.add_argument(
        "--axis-offset",
        type=float,
        default=0.0,
        metavar="EV",
        help="shift (eV) of every sample spectrum's energy axis (default 0)",
    )
    p.add_argument("--no-tune", action="store_true", help="caproto as shipped (Nagle on)")
    p.add_argument("--log-dir", default=None, help="write the IOC's log here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # here, not at the top: every ``xas-bluesky`` command imports this module to build its
    # parser, and the simulator brings numpy and the shipped spectra
    from sim_iocs.launcher import DEFAULT_CLOCK, SimBeamline
    from xas_bluesky.science.spectra import SpectrumError

    clock = DEFAULT_CLOCK if args.clock is None else args.clock
    if not clock > 0:
        raise CLIError(f"--clock must be positive, got {clock}")
    if not args.prefix or any(c.isspace() for c in args.prefix):
        raise CLIError(f"bad PV prefix {args.prefix!r}")
    if not (args.broadening >= 0 and math.isfinite(args.broadening)):
        raise CLIError(f"--broadening must be >= 0 eV, got {args.broadening}")
    if not math.isfinite(args.axis_offset):
        raise CLIError(f"--axis-offset must be finite, got {args.axis_offset}")
    port = args.port or free_ports(1)[0]
    repeater_port = args.repeater_port or port + 1
    sim = SimBeamline(
        args.prefix,
        slots=args.slot,
        sample=args.sample,
        clock=clock,
        seed=args.seed,
        offset=args.offset,
        port=port,
        repeater_port=repeater_port,
        log_dir=args.log_dir,
        tuned=not args.no_tune,
        broadening=args.broadening,
        axis_offset=args.axis_offset,
    )
    stop = threading.Event()

    def _on_signal(signum, frame):
        stop.set()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    repeater = None
    try:
        # ours, started first: else caproto's client spawns an orphan one while the IOC starts
        try:
            repeater = start_repeater(repeater_port)
        except RuntimeError as exc:
            raise CLIError(str(exc)) from None
        try:
            sim.start()
        except SpectrumError as exc:
            raise CLIError(str(exc)) from None
        except ServiceError as exc:
            raise CLIError(str(exc).splitlines()[0]) from None
        _print_info(sim)
        while not stop.is_set():
            if not sim.alive():
                assert sim.process is not None  # set by sim.start()
                raise CLIError(f"the IOC (PID {sim.process.pid}) exited unexpectedly")
            stop.wait(0.25)
        print("stopping", file=sys.stderr)
        return 0
    finally:
        sim.stop()
        if repeater is not None:
            repeater.stop()
        for s, handler in old.items():
            signal.signal(s, handler)


def _print_info(sim) -> None:
    env = sim.client_env()
    lines = [f"prefix {sim.prefix}"]
    lines += [f"{part} {prefix}" for part, prefix in sim.prefixes.items()]
    lines += [f"pid {sim.process.pid}", f"server_port {sim.port}"]
    lines += [f"repeater_port {sim.repeater_port}", f"true_offset_eV {sim.true_offset():.4f}"]
    lines += ["# Channel Access environment for clients:"]
    lines += [f"export {k}='{v}'" for k, v in env.items() if k.startswith("EPICS_CA_")]
    print("\n".join(lines), flush=True)
