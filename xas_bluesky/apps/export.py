"""``xas-bluesky export``: a raw XAS run from tiled as an XDI file or an Athena project.

``xas-bluesky export --run RUN (--athena FILE.prj | --xdi FILE.xdi)
(--tiled-uri URI [--api-key KEY] | --data-dir DIR)``

RUN is a uid, a unique uid prefix or a scan id (the latest run with it).  The run's primary
stream gives energy, I0 and the signal of its ``xas_mode`` (the start document's ``xas_fields``);
mu comes from :func:`~xas_bluesky.science.spectra.mu_from_channels`, the energy is the readback
plus the run's ``energy_offset``, and the spectrum is normalised by
:func:`~xas_bluesky.science.spectra.normalize` (the Athena record carries E0 and the windows).
The Athena project is written by xraylarch's ``create_athena`` when xraylarch is installed (the
extra ``larch``), else by :func:`xas_bluesky.science.xasfiles.write_athena`.

JSON only on stdout (``docs/cli.rst``)::

    {"run_uid", "scan_id", "format": "xdi" | "athena", "file", "writer": "xas-bluesky" | "larch",
     "points", "dropped", "normalized", "e0", "edge_step"}
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from xas_bluesky.apps.tiled_access import add_tiled_arguments, tiled_client


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="Write a raw XAS run from tiled as an XDI file or an Athena project",
        description=(
            "Write a raw XAS run from tiled as an XDI 1.0 file or an Athena project (summary "
            "JSON on stdout)."
        ),
    )
    add_tiled_arguments(p)
    p.add_argument(
        "--run", metavar="RUN", required=True, help="a uid, a unique uid prefix or a scan id"
    )
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--athena", metavar="FILE.prj", help="write an Athena project file")
    fmt.add_argument("--xdi", metavar="FILE.xdi", help="write an XDI 1.0 file")
    p.set_defaults(func=run)


def _creator() -> str:
    """The applications on an XDI file's first line (Bluesky's name: the extension namespace)."""
    import bluesky

    from xas_bluesky import __version__

    return f"xas-bluesky/{__version__} Bluesky/{bluesky.__version__}"


def write_athena_with_larch(path: Path, data) -> None:
    """The Athena project of one :class:`~xas_bluesky.science.xasfiles.XASData`, by xraylarch
    (``create_athena``, ``add_group``, ``save``), with this package's E0 and windows."""
    from larch import Group
    from larch.io import create_athena

    # Larch quotes the label without escaping: a quote or a backslash in it breaks the file
    label = data.label.replace("'", "").replace("\\", "")
    group = Group(
        name=label,
        filename=label,
        energy=data.energy,
        mu=data.mu,
        i0=data.i0,
        atsym=data.element,
        edge=data.edge,
    )
    n = data.normalization
    if n is not None:  # else Larch's pre_edge finds its own
        group.e0, group.edge_step = n.e0, n.edge_step
        group.pre_edge_details = Group(
            pre1=n.pre1, pre2=n.pre2, norm1=n.norm1, norm2=n.norm2, nnorm=n.nnorm, nvict=n.nvict
        )
    project = create_athena()  # no file name: one that exists would be read and appended to
    project.add_group(group)
    for record in project.groups.values():
        record.args["bkg_z"] = data.element  # Larch guesses it from E0 with xraydb's edges
    project.save(str(path))


def export_run(client, run: str, *, athena: str | None = None, xdi: str | None = None) -> dict:
    """Export ``run`` to ``athena`` or ``xdi``; the summary :func:`run` prints."""
    from xas_bluesky.beamline.catalog import read_run, resolve_run
    from xas_bluesky.science.xasfiles import from_run, write_athena, write_xdi

    uid = resolve_run(client, run)
    start, stop, columns = read_run(client, uid)
    data = from_run(start, stop, columns)
    if data.energy.size == 0:
        raise ValueError(f"run {uid}: no valid points to export")
    if xdi:
        path, fmt, writer = Path(xdi), "xdi", "xas-bluesky"
        write_xdi(path, data, creator=_creator())
    else:
        path, fmt = Path(str(athena)), "athena"
        if importlib.util.find_spec("larch") is not None:
            writer = "larch"
            write_athena_with_larch(path, data)
        else:
            writer = "xas-bluesky"
            write_athena(path, [data], creator=_creator())
    n = data.normalization
    return {
        "run_uid": uid,
        "scan_id": start.get("scan_id"),
        "format": fmt,
        "file": str(path.resolve()),
        "writer": writer,
        "points": int(data.energy.size),
        "dropped": data.dropped,
        "normalized": n is not None,
        "e0": None if n is None else n.e0,
        "edge_step": None if n is None else n.edge_step,
    }


def run(args: argparse.Namespace) -> int:
    from xas_bluesky.apps.cli import CLIError

    for target in (args.athena, args.xdi):
        if target and not Path(target).resolve().parent.is_dir():
            raise CLIError(f"{target}: no such directory {Path(target).resolve().parent}")
    with tiled_client(args) as (client, _uri):
        try:
            out = export_run(client, args.run, athena=args.athena, xdi=args.xdi)
        except KeyError as exc:
            raise CLIError(str(exc.args[0]) if exc.args else str(exc)) from None
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    json.dump(out, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
    return 0
