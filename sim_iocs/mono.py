"""The simulated grating monochromator on its own (``python -m sim_iocs.mono --prefix M: --list-pvs``).

PVs: ``Energy-SP`` (put-completion), ``Energy-RB``, ``Moving-Sts``, ``DoneMoving-Sts``,
``Velo-SP``, ``Settle-SP``, ``Sim:Offset-SP``, ``Calib:Offset-SP``.  The full beamline, whose
detectors see this mono's true energy, is :mod:`sim_iocs.beamline`.
"""

from __future__ import annotations

import numpy as np
from caproto.server import template_arg_parser

from sim_iocs.groups import MonoGroup, SimState
from sim_iocs.physics import Clock
from xas_bluesky.beamline.epics.server import run_ioc

__all__ = ["MonoIOC", "main"]


class MonoIOC(MonoGroup):
    """A grating monochromator with limits, put-completion and a calibration offset."""

    def __init__(self, *args, state: SimState, **kwargs):
        self.state = state
        super().__init__(*args, **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser, split_args = template_arg_parser(
        default_prefix="MONO:", desc=MonoIOC.__doc__, argv=argv, supported_async_libs=["asyncio"]
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", type=float, default=1.0)
    parser.add_argument("--offset", type=float, default=None)
    parser.add_argument("--no-tune", action="store_true")
    args = parser.parse_args(argv)
    ioc_options, run_options = split_args(args)
    offset = args.offset
    if offset is None:
        offset = float(np.random.default_rng([args.seed, 1]).uniform(-1.0, 1.0))
    state = SimState(
        clock=Clock(args.clock),
        rng=np.random.default_rng(args.seed),
        samples={},
        current="",
        true_offset=offset,
    )
    run_ioc(MonoIOC(state=state, **ioc_options), run_options, tuned=not args.no_tune)


if __name__ == "__main__":
    main()
