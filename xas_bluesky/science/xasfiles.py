"""XAS data files of a measured run: XDI 1.0 text and Athena project files.

:func:`from_run` turns a run's start and stop documents and its primary-stream columns into an
:class:`XASData` (mu by :func:`~xas_bluesky.science.spectra.mu_from_channels` in the run's mode,
energies calibrated with its ``energy_offset``, normalised by
:func:`~xas_bluesky.science.spectra.normalize`); :func:`write_xdi` and :func:`write_athena` write
it.  Plain Python and numpy: the documents are dicts, the columns arrays, and xraylarch is not
needed (``xas-bluesky export`` uses Larch's own Athena writer when it is installed).

XDI 1.0 (https://github.com/XraySpectroscopy/XAS-Data-Interchange)::

    # XDI/1.0 xas-bluesky/0.1.0 Bluesky/1.15.1
    # Column.1: energy eV
    # Column.2: i0
    # Column.3: itey            (ifluor in PFY, itrans in transmission)
    # Column.4: mutey           (mufluor, mutrans)
    # Element.symbol: O
    # Element.edge: K
    # Mono.name: grating monochromator
    # Detector.I0: gold-mesh drain current (det_i0)
    # ...                       Sample.name, Scan.start_time, Scan.end_time, Scan.edge_energy,
    #                           Beamline.name, Facility.name, Bluesky.uid, Bluesky.scan_id, ...
    # ///
    # comments
    #----
    # energy i0 itey mutey
    526.0000  1.93e+06  ...

Athena project (``.prj``): the gzipped Perl-data text of Demeter's Athena, as Larch writes it
(``larch.io.create_athena``), one record per spectrum: ``@args`` (label, element, edge, E0, the
pre-edge and normalisation windows, the edge step), ``@x`` (energy), ``@y`` (mu), ``@i0`` and
``@signal`` (mu, as Larch writes it).  Athena fits its own pre-edge line in those windows; a
spectrum this package normalised with a level (a short pre-edge) gets Athena's line there.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from xas_bluesky.contracts import DEFAULT_MODE
from xas_bluesky.science.grids import ONSET_EV
from xas_bluesky.science.spectra import (
    Normalization,
    NormalizationError,
    mu_from_channels,
    normalize,
)

__all__ = [
    "XDI_COLUMNS",
    "CREATOR",
    "XASData",
    "from_run",
    "xdi_metadata",
    "xdi_text",
    "write_xdi",
    "athena_text",
    "write_athena",
    "MeasuredSpectrum",
    "read_xdi",
    "read_athena",
    "read_measured",
]

#: measurement mode -> XDI column names of the signal channel and of mu (XDI's dictionary has
#: ``ifluor``/``mufluor`` and ``itrans``/``mutrans``; TEY follows their pattern)
XDI_COLUMNS = {
    "TEY": ("itey", "mutey"),
    "PFY": ("ifluor", "mufluor"),
    "TRANS": ("itrans", "mutrans"),
}
_MODE_NAMES = {"TEY": "TEY", "PFY": "PFY", "TRANS": "TRANS", "TRANSMISSION": "TRANS"}
_NAMESPACE_ORDER = ("Element", "Mono", "Detector", "Sample", "Scan", "Beamline", "Facility")


@dataclass(frozen=True)
class XASData:
    """One measured spectrum, ready to be written.

    Attributes
    ----------
    energy : np.ndarray
        Photon energy (eV): the mono's readback plus the run's ``energy_offset``, increasing.
    i0, signal, mu : np.ndarray
        The incident-flux channel, the mode's signal channel and mu from them, per point.
    mode : str
        ``"TEY"``, ``"PFY"`` or ``"TRANS"``.
    element, edge : str
        The absorber and its edge (``"O"``, ``"K"``).
    label : str
        A name for the spectrum (the sample, the scan id): Athena's group label.
    metadata : dict
        XDI metadata by namespace, ``{"Element": {"symbol": "O", ...}, ...}``, values text.
    comments : list of str
        Free-text lines (XDI's user comments).
    normalization : Normalization or None
        :func:`~xas_bluesky.science.spectra.normalize`'s result, None where it failed (the reason
        is among the comments).
    dropped : int
        Points left out: bad readings (NaN, I0 <= 0 after dark subtraction, ...).
    """

    energy: np.ndarray
    i0: np.ndarray
    signal: np.ndarray
    mu: np.ndarray
    mode: str
    element: str
    edge: str = "K"
    label: str = ""
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)
    normalization: Normalization | None = None
    dropped: int = 0


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(float(t)).astimezone().isoformat(timespec="seconds")


def xdi_metadata(start: Mapping[str, Any], stop: Mapping[str, Any] | None = None) -> dict:
    """XDI metadata by namespace from a run's documents.

    The start document's ``xdi`` (written by the XANES plans) first; then what the documents say
    elsewhere fills the gaps: ``Element`` from ``xas_element`` / ``xas_edge``, ``Sample.name``,
    ``Scan.start_time`` / ``end_time`` (local time with its UTC offset, ISO 8601),
    ``Beamline.name`` from ``beamline_id``, ``Facility.name`` from ``facility``, and an extension
    namespace ``Bluesky`` (XDI wants its name among the versions of the first line, which
    :func:`xdi_text`'s ``creator`` gives): ``uid``, ``scan_id``, ``data_session``, ``plan_name``,
    ``mode``, ``energy_offset``.
    """
    md: dict[str, dict[str, str]] = {}
    for ns, tags in (start.get("xdi") or {}).items():
        if isinstance(tags, Mapping):
            md[str(ns)] = {str(k): str(v) for k, v in tags.items() if v is not None}

    def fill(ns: str, tag: str, value: Any) -> None:
        if value is not None and value != "":
            md.setdefault(ns, {}).setdefault(tag, str(value))

    fill("Element", "symbol", start.get("xas_element"))
    fill("Element", "edge", start.get("xas_edge") or "K")
    fill("Sample", "name", start.get("sample_name"))
    fill("Scan", "start_time", _iso(start.get("time")))
    fill("Scan", "end_time", _iso((stop or {}).get("time")))
    fill("Beamline", "name", start.get("beamline_id"))
    fill("Facility", "name", start.get("facility"))
    fill("Bluesky", "uid", start.get("uid"))
    fill("Bluesky", "scan_id", start.get("scan_id"))
    fill("Bluesky", "data_session", start.get("data_session"))
    fill("Bluesky", "plan_name", start.get("plan_name"))
    fill("Bluesky", "mode", start.get("xas_mode"))
    offset = start.get("energy_offset")
    if offset is not None:
        fill("Bluesky", "energy_offset", f"{float(offset):.4f} eV")
    return md


def from_run(
    start: Mapping[str, Any],
    stop: Mapping[str, Any] | None,
    columns: Mapping[str, ArrayLike],
) -> XASData:
    """An :class:`XASData` from a run's documents and primary-stream columns.

    Parameters
    ----------
    start, stop : mapping
        The run's start document (an XAS run: ``xas_fields``, ``xas_element``, ``xas_mode``,
        ``energy_offset``) and its stop document (or None).
    columns : mapping
        Data key -> array of the primary stream (at least the three of ``xas_fields``).

    Raises
    ------
    KeyError
        The start document has no ``xas_fields``, or a column it names is missing.
    """
    fields = start.get("xas_fields")
    if not isinstance(fields, Mapping) or not all(
        fields.get(k) for k in ("energy", "i0", "signal")
    ):
        raise KeyError(f"run {start.get('uid')!r} is not an XAS run: no xas_fields in its start")
    missing = [fields[k] for k in ("energy", "i0", "signal") if fields[k] not in columns]
    if missing:
        raise KeyError(f"run {start.get('uid')!r} has no data {', '.join(map(repr, missing))}")
    mode = _MODE_NAMES.get(str(start.get("xas_mode") or DEFAULT_MODE).upper())
    if mode is None:
        raise KeyError(f"run {start.get('uid')!r}: unknown xas_mode {start.get('xas_mode')!r}")
    element = str(start.get("xas_element") or "")
    offset = float(start.get("energy_offset") or 0.0)
    energy = np.asarray(columns[fields["energy"]], dtype=float) + offset
    i0 = np.asarray(columns[fields["i0"]], dtype=float)
    signal = np.asarray(columns[fields["signal"]], dtype=float)
    result = mu_from_channels(
        mode, i0, signal, strict=False, i0_name=fields["i0"], signal_name=fields["signal"]
    )
    keep = result.ok & np.isfinite(energy)
    order = np.argsort(energy[keep], kind="stable")
    energy, i0, signal, mu = (a[keep][order] for a in (energy, i0, signal, result.mu))
    dropped = int(keep.size - keep.sum())
    comments = [
        f"exported by xas-bluesky from run {start.get('uid')} (scan {start.get('scan_id')})",
        f"energy = {fields['energy']} + energy_offset ({offset:+.4f} eV); "
        + ("mu = ln(i0 / signal)" if mode == "TRANS" else "mu = signal / i0"),
    ]
    if dropped:
        comments.append(f"{dropped} point(s) left out: " + "; ".join(result.problems[:3]))
    norm = None
    e0 = start.get("xas_e0")  # the plans' onset; else the element's, else Larch's rule
    try:
        norm = normalize(
            energy,
            mu,
            element if element in ONSET_EV else None,
            e0=None if e0 is None else float(e0),
        )
    except NormalizationError as exc:
        comments.append(f"not normalised: {exc}")
    parts = [start.get("sample_name"), start.get("scan_id")]
    label = " scan ".join(str(p) for p in parts if p is not None) or str(start.get("uid", ""))[:8]
    md = xdi_metadata(start, stop)
    if norm is not None:
        md.setdefault("Scan", {}).setdefault("edge_energy", f"{norm.e0:.3f}")
    return XASData(
        energy=energy,
        i0=i0,
        signal=signal,
        mu=mu,
        mode=mode,
        element=element,
        edge=str(start.get("xas_edge") or "K"),
        label=label,
        metadata=md,
        comments=comments,
        normalization=norm,
        dropped=dropped,
    )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


#: the applications named on an XDI file's first line unless given: this package, and Bluesky,
#: whose name an extension namespace ``Bluesky`` needs there
CREATOR = "xas-bluesky Bluesky"


def xdi_text(data: XASData, *, creator: str = CREATOR) -> str:
    """The XDI 1.0 text of ``data``.

    ``creator`` follows ``XDI/1.0`` on the first line: the applications and their versions
    (``"xas-bluesky/0.1.0 Bluesky/1.15.1"``); an extension namespace of the metadata must be
    named there (XDI's rule), as ``Bluesky`` is in :data:`CREATOR`.
    """
    sig, mu = XDI_COLUMNS[data.mode]
    names = ("energy", "i0", sig, mu)
    lines = [f"# XDI/1.0 {creator}"]
    lines += ["# Column.1: energy eV", "# Column.2: i0", f"# Column.3: {sig}", f"# Column.4: {mu}"]
    order = [ns for ns in _NAMESPACE_ORDER if ns in data.metadata]
    order += sorted(ns for ns in data.metadata if ns not in _NAMESPACE_ORDER)
    for ns in order:
        for tag, value in data.metadata[ns].items():
            lines.append(f"# {ns}.{tag}: {_one_line(value)}")
    lines.append("# ///")
    lines += [f"# {_one_line(c)}" for c in data.comments] or ["# "]
    lines.append("#" + "-" * 40)
    lines.append("# " + " ".join(names))
    for row in zip(data.energy, data.i0, data.signal, data.mu, strict=True):
        lines.append(f"{row[0]:12.4f} {row[1]:15.8g} {row[2]:15.8g} {row[3]:15.8g}")
    return "\n".join(lines) + "\n"


def write_xdi(path: str | Path, data: XASData, *, creator: str = CREATOR) -> Path:
    """Write :func:`xdi_text` to ``path``; returns it."""
    path = Path(path)
    path.write_text(xdi_text(data, creator=creator))
    return path


def _hashkey(data: XASData, taken: set[str]) -> str:
    """Athena's group key: 5 lower-case letters, here derived from the run (reproducible)."""
    seed = data.metadata.get("Bluesky", {}).get("uid", "") + data.label
    n = 0
    while True:
        digest = hashlib.sha1(f"{seed}:{n}".encode()).digest()
        key = "".join(chr(97 + b % 26) for b in digest[:5])
        if key not in taken:
            return key
        n += 1


def _perl_str(value: Any) -> str:
    text = _one_line(str(value)).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _athena_args(data: XASData, key: str) -> dict[str, Any]:
    """The ``@args`` of one record: what Larch's ``make_athena_args`` sets that says something
    about the data (the rest Athena and Larch take as their defaults)."""
    md = data.metadata
    args: dict[str, Any] = {
        "label": data.label or key,
        "datagroup": key,
        "tag": key,
        "old_group": key,
        "file": md.get("Bluesky", {}).get("uid", ""),
        "source": md.get("Bluesky", {}).get("uid", ""),
        "beamline": md.get("Beamline", {}).get("name", ""),
        "annotation": "; ".join(
            f"{t} {v}" for t, v in md.get("Bluesky", {}).items() if t in ("uid", "scan_id")
        ),
        "atsym": data.element,
        "edge": data.edge,
        "bkg_z": data.element,
        "is_xmu": 1,
        "is_chi": 0,
        "is_nor": 0,
        "is_xanes": 1,
        "is_kev": 0,
        "npts": int(data.energy.size),
        "xmin": f"{data.energy.min():.1f}" if data.energy.size else "0",
        "xmax": f"{data.energy.max():.1f}" if data.energy.size else "0",
        "bkg_flatten": 1,
        "bkg_fixstep": 0,
    }
    n = data.normalization
    if n is not None:
        args.update(
            bkg_e0=n.e0,
            bkg_pre1=n.pre1,
            bkg_pre2=n.pre2,
            bkg_nor1=n.norm1,
            bkg_nor2=n.norm2,
            bkg_nnorm=max(0, min(3, n.nnorm)),
            bkg_step=n.edge_step,
            bkg_fitted_step=n.edge_step,
        )
    return args


def _perl_array(name: str, values: np.ndarray) -> str:
    return f"@{name} = (" + ",".join(f"'{float(v)!r}'" for v in values) + ");"


def athena_text(spectra: Sequence[XASData], *, creator: str = "xas-bluesky") -> str:
    """The (uncompressed) Athena project text of ``spectra``, one record each."""
    now = _dt.datetime.now().isoformat(timespec="seconds")
    lines = [
        "# Athena project file -- Demeter version 0.9.21",
        f"# This file created at {now}",
        f"# Using {creator}",
    ]
    taken: set[str] = set()
    for data in spectra:
        key = _hashkey(data, taken)
        taken.add(key)
        args = _athena_args(data, key)
        lines.append("")
        lines.append(f"$old_group = '{key}';")
        lines.append(
            "@args = ("
            + ", ".join(f"{_perl_str(k)}, {_perl_str(v)}" for k, v in args.items())
            + ");"
        )
        lines.append(_perl_array("x", data.energy))
        lines.append(_perl_array("y", data.mu))
        lines.append(_perl_array("i0", data.i0))
        lines.append(_perl_array("signal", data.mu))
        lines.append("[record] # ")
    lines += ["", "@journal = ();", "", "1;", "", "", "# Local Variables:",
              "# truncate-lines: t", "# End:", ""]  # fmt: skip
    return "\n".join(lines)


def write_athena(
    path: str | Path, spectra: Sequence[XASData], *, creator: str = "xas-bluesky"
) -> Path:
    """Write :func:`athena_text`, gzipped as Athena writes it, to ``path``; returns it."""
    path = Path(path)
    with gzip.open(path, "wt") as fh:
        fh.write(athena_text(spectra, creator=creator))
    return path


# ---------------------------------------------------------------------------------------------
# reading a finished measurement back: XDI, an Athena project's first group, or a CSV


@dataclass(frozen=True)
class MeasuredSpectrum:
    """A measured spectrum read from a file.

    Attributes
    ----------
    energy, mu : np.ndarray
        Strictly increasing energies (eV; rows sorted, repeated energies averaged) and mu.
    label : str
        The file's name for it (XDI ``Sample.name``, Athena's group label, the file stem).
    source : str
        The file.
    column : str
        What ``mu`` is (``"mu"`` for a CSV, an XDI column name, ``"itey/i0"``, Athena's ``y``).
    """

    energy: np.ndarray
    mu: np.ndarray
    label: str
    source: str
    column: str = "mu"


#: XDI columns read as mu, in this order of preference
XDI_MU_COLUMNS = ("mutey", "mufluor", "mutrans", "mu", "xmu", "normtey", "norm", "flat")


def _sorted_spectrum(energy: np.ndarray, mu: np.ndarray, source: str):
    from xas_bluesky.science.spectra import SpectrumError, check_spectrum

    e = np.asarray(energy, dtype=float)
    m = np.asarray(mu, dtype=float)
    ok = np.isfinite(e) & np.isfinite(m)
    e, m = e[ok], m[ok]
    if e.size == 0:
        raise SpectrumError(f"{source}: no finite data rows")
    order = np.argsort(e, kind="stable")
    e, m = e[order], m[order]
    uniq, inv = np.unique(e, return_inverse=True)
    if uniq.size < e.size:  # repeated energies (several passes): their mean
        m = np.bincount(inv, weights=m) / np.bincount(inv)
        e = uniq
    return check_spectrum(e, m, source=source)


def read_xdi(path: str | Path) -> MeasuredSpectrum:
    """The spectrum of an XDI file: energy and mu (the first of :data:`XDI_MU_COLUMNS`, else
    ``signal / i0`` for ``itey``/``ifluor`` or ``ln(i0 / itrans)``).

    Raises
    ------
    SpectrumError
        One line naming the file and the problem.
    """
    from xas_bluesky.science.spectra import SpectrumError

    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpectrumError(f"{path}: cannot read as XDI text ({type(exc).__name__})") from None
    lines = text.splitlines()
    if not lines or not lines[0].lstrip("#").strip().upper().startswith("XDI/"):
        raise SpectrumError(f"{path}: not an XDI file (no '# XDI/' first line)")
    columns: dict[int, str] = {}
    label = path.stem
    rows: list[list[float]] = []
    for lineno, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            body = stripped.lstrip("#").strip()
            tag, sep, value = body.partition(":")
            if sep and tag.strip().lower().startswith("column."):
                try:
                    columns[int(tag.strip().split(".")[1])] = value.split()[0].lower()
                except (ValueError, IndexError):
                    raise SpectrumError(f"{path}:{lineno}: bad column line {body!r}") from None
            elif sep and tag.strip().lower() == "sample.name" and value.strip():
                label = value.strip()
            continue
        try:
            rows.append([float(x) for x in stripped.split()])
        except ValueError:
            raise SpectrumError(f"{path}:{lineno}: not numbers: {stripped[:40]!r}") from None
    if not rows:
        raise SpectrumError(f"{path}: no data rows")
    width = min(len(r) for r in rows)
    if width < 2 or any(len(r) != len(rows[0]) for r in rows):
        raise SpectrumError(f"{path}: data rows must have the same number (>= 2) of columns")
    data = np.asarray(rows, dtype=float)
    index = {name: k - 1 for k, name in columns.items() if 1 <= k <= data.shape[1]}
    e_col = index.get("energy", 0)
    col = next((c for c in XDI_MU_COLUMNS if c in index), None)
    if col is not None:
        mu = data[:, index[col]]
    elif "i0" in index and ("itey" in index or "ifluor" in index):
        sig = "itey" if "itey" in index else "ifluor"
        with np.errstate(divide="ignore", invalid="ignore"):
            mu = data[:, index[sig]] / data[:, index["i0"]]
        col = f"{sig}/i0"
    elif "i0" in index and "itrans" in index:
        with np.errstate(divide="ignore", invalid="ignore"):
            mu = np.log(data[:, index["i0"]] / data[:, index["itrans"]])
        col = "ln(i0/itrans)"
    elif data.shape[1] == 2 and not columns:
        mu, col = data[:, 1], "column 2"
    else:
        names = ", ".join(columns.values()) or "none named"
        raise SpectrumError(f"{path}: no mu column (columns: {names})")
    e, m = _sorted_spectrum(data[:, e_col], mu, str(path))
    return MeasuredSpectrum(e, m, label, str(path), col)


def _perl_values(text: str, name: str, start: int) -> tuple[np.ndarray | None, int]:
    import re

    m = re.compile(rf"@{name}\s*=\s*\((.*?)\);", re.S).search(text, start)
    if m is None:
        return None, start
    vals = [v.strip().strip("'\"") for v in m.group(1).split(",") if v.strip()]
    return np.asarray([float(v) for v in vals], dtype=float), m.end()


def read_athena(path: str | Path) -> MeasuredSpectrum:
    """The first group of an Athena project (``.prj``, gzipped or not): its ``@x`` (energy)
    and ``@y`` (mu) arrays, labelled by its ``label`` argument.

    Raises
    ------
    SpectrumError
        One line naming the file and the problem.
    """
    import re

    from xas_bluesky.science.spectra import SpectrumError

    path = Path(path)
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        raise SpectrumError(
            f"{path}: cannot read as an Athena project ({type(exc).__name__})"
        ) from None
    first = text.find("$old_group")
    if "Athena project" not in text[:200] or first < 0:
        raise SpectrumError(f"{path}: not an Athena project file (no group)")
    label = path.stem
    args = re.compile(r"@args\s*=\s*\((.*?)\);", re.S).search(text, first)
    if args:
        lab = re.search(r"'label'\s*,\s*'((?:[^'\\]|\\.)*)'", args.group(1))
        if lab and lab.group(1).strip():
            label = lab.group(1).strip()
    try:
        x, _ = _perl_values(text, "x", first)
        y, _ = _perl_values(text, "y", first)
    except ValueError:
        raise SpectrumError(f"{path}: the first group's @x/@y are not numbers") from None
    if x is None or y is None:
        raise SpectrumError(f"{path}: the first group has no @x/@y arrays")
    if x.size != y.size:
        raise SpectrumError(f"{path}: the first group's @x and @y differ in length")
    e, m = _sorted_spectrum(x, y, str(path))
    return MeasuredSpectrum(e, m, label, str(path), "y")


def read_measured(path: str | Path) -> MeasuredSpectrum:
    """A finished measurement from a file: CSV ``energy_eV,mu``, XDI, or an Athena project
    (its first group), told apart by content (gzip or ``# Athena project``, ``# XDI/``) and
    otherwise read as CSV.

    Raises
    ------
    SpectrumError
        One line naming the file and the problem (no such file included).
    """
    from xas_bluesky.science.spectra import SpectrumError, load_spectrum_csv

    path = Path(path)
    if not path.is_file():
        raise SpectrumError(f"{path}: no such file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise SpectrumError(f"{path}: cannot read ({exc.strerror})") from None
    if head[:2] == b"\x1f\x8b" or head.lstrip().startswith(b"# Athena project"):
        return read_athena(path)
    if head.lstrip(b"# \t").upper().startswith(b"XDI/"):
        return read_xdi(path)
    if path.suffix.lower() in (".xdi", ".prj"):
        kind = "XDI" if path.suffix.lower() == ".xdi" else "an Athena project"
        raise SpectrumError(f"{path}: not {kind} file")
    e, m = load_spectrum_csv(path)
    return MeasuredSpectrum(e, m, path.stem, str(path), "mu")
