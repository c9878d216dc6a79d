"""The whole simulated XAS beamline in one IOC process: mono, detectors, sample changer, ring.

::

    python -m sim_iocs.beamline --prefix SIM: --clock 20 --seed 0 --list-pvs \\
        --slot mine=spectrum.csv --slot ref=heldout:O:qm9_006870

PVs (``{P}`` the prefix): ``{P}Mono:Energy-SP/-RB``, ``{P}Mono:Moving-Sts``,
``{P}Mono:Calib:Offset-SP``, ``{P}Mono:Sim:Offset-SP``, ``{P}Det:Acquire-Cmd``,
``{P}Det:CountTime-SP``, ``{P}Det:I0-I``/``TEY-I``/``PFY-I``/``It-I``, ``{P}Sample:Slot-SP/-RB``,
``{P}Sample:Slots-Wfm``, ``{P}Ring:Current-I`` (the full list: ``--list-pvs``).

One process keeps the physics in one place: the detectors need the mono's true energy and the
sample's spectrum, and a single server is cheaper on a small machine than four.
"""

from __future__ import annotations

import sys

import numpy as np
from caproto.server import PVGroup, SubGroup, template_arg_parser

from sim_iocs.groups import DetectorGroup, MonoGroup, RingGroup, SampleChangerGroup, SimState
from sim_iocs.physics import (
    Clock,
    Sample,
    SpectrumError,
    _carbon_mu,
    heldout_names,
    measured_like,
    parse_slot_spec,
)
from xas_bluesky.beamline.epics.server import run_ioc
from xas_bluesky.resources import REFERENCE_SLOTS

__all__ = ["SimBeamlineIOC", "default_slots", "build_state", "main"]

#: reference slots: a known spectrum per edge, measured by ``calibrate_energy``
REFERENCES = {slot: f"heldout:{edge}:{name}" for edge, (slot, name) in REFERENCE_SLOTS.items()}


class SimBeamlineIOC(PVGroup):
    """A soft X-ray XAS beamline: grating mono, I0/TEY/PFY/It counters, sample changer, ring."""

    mono = SubGroup(MonoGroup, prefix="Mono:")
    det = SubGroup(DetectorGroup, prefix="Det:")
    sample = SubGroup(SampleChangerGroup, prefix="Sample:")
    ring = SubGroup(RingGroup, prefix="Ring:")

    def __init__(self, *args, state: SimState, **kwargs):
        self.state = state  # before super(): the subgroups are built there and look it up
        super().__init__(*args, **kwargs)


def default_slots() -> list[str]:
    """``blank``, the reference slots and every shipped held-out sample (all its edges)."""
    specs = ["blank=blank"] + [f"{k}={v}" for k, v in REFERENCES.items()]
    return specs + [f"{n}=heldout:{n}" for n in heldout_names()]


def build_state(
    slots: list[str] | None = None,
    *,
    seed: int = 0,
    clock: float = 1.0,
    offset: float | None = None,
    current: str | None = None,
    broadening: float = 0.0,
    axis_offset: float = 0.0,
) -> SimState:
    """The simulation state: slots from ``NAME=SOURCE`` specs (default :func:`default_slots`;
    given slots are added to the defaults), a seeded generator and the mono's true offset
    (default: seeded random within +-1 eV).

    ``broadening`` (Gaussian FWHM, eV) and ``axis_offset`` (eV) make every slot's spectra look
    measured (:func:`~sim_iocs.physics.measured_like`): broader, and shifted on the energy axis.
    """
    if not (broadening >= 0 and np.isfinite(broadening)):
        raise ValueError(f"broadening must be >= 0 eV, got {broadening}")
    if not np.isfinite(axis_offset):
        raise ValueError(f"axis offset must be finite, got {axis_offset}")
    samples: dict[str, Sample] = {}
    for spec in default_slots() + list(slots or []):
        name, spectra = parse_slot_spec(spec)
        spectra = [measured_like(x, broadening, axis_offset) for x in spectra]
        samples[name] = Sample(name, spectra)
    if offset is None:
        offset = float(np.random.default_rng([seed, 1]).uniform(-1.0, 1.0))
    _carbon_mu(500.0)  # xraydb opens its database lazily: not during the first count
    current = current or "blank"
    if current not in samples:
        raise SpectrumError(f"no slot named {current!r}")
    return SimState(
        clock=Clock(clock),
        rng=np.random.default_rng(seed),
        samples=samples,
        current=current,
        true_offset=offset,
        broadening=float(broadening),
        axis_offset=float(axis_offset),
    )


def add_sim_arguments(parser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (noise, default offset)")
    parser.add_argument(
        "--clock", type=float, default=1.0, help="simulated seconds per real second (default 1)"
    )
    parser.add_argument(
        "--offset", type=float, default=None, help="mono calibration error in eV (default: random)"
    )
    parser.add_argument(
        "--slot",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="add a slot: NAME=FILE.csv (energy_eV,mu), NAME=heldout:[EDGE:]SAMPLE or NAME=blank",
    )
    parser.add_argument("--sample", default=None, help="slot in the beam at start (default blank)")
    parser.add_argument(
        "--broadening",
        type=float,
        default=0.0,
        metavar="EV",
        help="Gaussian FWHM (eV) convolved with every sample spectrum (default 0)",
    )
    parser.add_argument(
        "--axis-offset",
        type=float,
        default=0.0,
        metavar="EV",
        help="shift (eV) of every sample spectrum's energy axis (default 0)",
    )
    parser.add_argument(
        "--no-tune", action="store_true", help="run caproto as shipped (benchmark baseline)"
    )


def main(argv: list[str] | None = None) -> None:
    parser, split_args = template_arg_parser(
        default_prefix="SIM:",
        desc=SimBeamlineIOC.__doc__,
        argv=argv,
        supported_async_libs=["asyncio"],
    )
    add_sim_arguments(parser)
    args = parser.parse_args(argv)
    ioc_options, run_options = split_args(args)
    try:
        state = build_state(
            args.slot,
            seed=args.seed,
            clock=args.clock,
            offset=args.offset,
            current=args.sample,
            broadening=args.broadening,
            axis_offset=args.axis_offset,
        )
    except (SpectrumError, ValueError) as exc:
        print(f"sim_iocs.beamline: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    ioc = SimBeamlineIOC(state=state, **ioc_options)
    run_ioc(ioc, run_options, tuned=not args.no_tune)


if __name__ == "__main__":
    main()
