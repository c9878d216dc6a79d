"""A minimal IOC for probing Channel Access: a setpoint whose value is echoed to a readback.

Used by the test fixtures and the caproto tuning benchmark; ``--no-tune`` runs caproto as shipped
(Nagle's algorithm on) for comparison.
"""

from __future__ import annotations

import sys

from caproto.server import PVGroup, ioc_arg_parser, pvproperty

from xas_bluesky.beamline.epics.server import run_ioc


class EchoIOC(PVGroup):
    """``{prefix}Setpoint`` is copied to ``{prefix}Readback``; ``{prefix}Counter`` counts puts."""

    setpoint = pvproperty(value=0.0, name="Setpoint", doc="value to echo")
    readback = pvproperty(value=0.0, name="Readback", read_only=True, doc="echo of Setpoint")
    counter = pvproperty(value=0, name="Counter", read_only=True, doc="number of puts")

    @setpoint.putter  # type: ignore[no-redef]  # caproto's idiom rebinds the name (no stubs)
    async def setpoint(self, instance, value):
        await self.readback.write(value)
        await self.counter.write(self.counter.value + 1)
        return value


def main(argv: list[str] | None = None) -> None:
    tune = True
    if argv is None:
        argv = sys.argv[1:]
    if "--no-tune" in argv:
        argv = [a for a in argv if a != "--no-tune"]
        tune = False
    sys.argv = [sys.argv[0], *argv]
    ioc_options, run_options = ioc_arg_parser(default_prefix="ECHO:", desc=EchoIOC.__doc__)
    ioc = EchoIOC(**ioc_options)
    run_ioc(ioc, run_options, tuned=tune)


if __name__ == "__main__":
    main()
