"""Ranges of a structure file that another process reads itself: for million-structure inputs.

:func:`~xas_bluesky.science.structures.read_records` hands out cheap records, but a distributed
run that ships them to its workers keeps paying for them in the sending process: dask's
in-process scheduler held every task's arguments, serialised and not, after the task was done
(~1.5 kB per structure: 1.5 GB at a million, measured with ``benchmarks/predict_million.py``).
So the sending process only finds where each chunk of records starts and ends in the file
(:func:`record_ranges`, with the reader's own framing, so damaged frames fall where they do in one
pass), and a task carries a :class:`RecordRange` of a few numbers; the worker reads and parses its
bytes (:func:`read_range`), giving exactly the records :func:`read_records` gives for them, with
the file's names and line numbers.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xas_bluesky.science.structures import (
    DEFAULT_LIMITS,
    StructureError,
    StructureLimits,
    _LineWindow,
    _reader_for,
    _sdf_records,
    _smi_records,
    _xyz_frames,
    _xyz_records,
)

__all__ = ["RecordRange", "record_ranges", "read_range"]


@dataclass(frozen=True)
class RecordRange:
    """Records ``first_record`` to ``first_record + n_records`` of a structure file.

    Attributes
    ----------
    path : str
        The file (absolute: the worker opens it).
    start, end : int
        Byte offsets: the records are ``file[start:end]``.
    first_record : int
        Index (from 0) of the range's first record in the file.
    first_line : int
        Index (from 0) of the range's first line (names and messages keep the file's lines).
    n_records : int
        How many records the range holds.
    """

    path: str
    start: int
    end: int
    first_record: int
    first_line: int
    n_records: int


def record_ranges(
    path: str | os.PathLike,
    chunk: int,
    skip: int = 0,
    limits: StructureLimits = DEFAULT_LIMITS,
) -> Iterator[RecordRange]:
    """Consecutive ranges of ``chunk`` records (the last one shorter), from record ``skip`` on.

    Streamed: about one frame (XYZ) or line is held at a time.  XYZ frames are found by the
    reader itself; SDF records end at ``$$$$`` lines; SMILES records are the reader's lines.

    Raises
    ------
    StructureError
        An unknown format or a missing file.
    """
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    path = Path(path).resolve()
    _reader_for(path)
    suffix = path.suffix.lower()
    starts = _xyz_starts(path, limits) if suffix == ".xyz" else (
        _sdf_starts(path) if suffix in (".sdf", ".mol") else _smi_starts(path, limits)
    )  # fmt: skip
    size = path.stat().st_size
    first: tuple[int, int, int] | None = None  # (record, line, offset) of the open range
    n = 0
    for record, line, offset in starts:
        if record < skip:
            continue
        if first is None:
            first, n = (record, line, offset), 0
        elif n == chunk:
            yield RecordRange(str(path), first[2], offset, first[0], first[1], n)
            first, n = (record, line, offset), 0
        n += 1
    if first is not None and n:
        yield RecordRange(str(path), first[2], size, first[0], first[1], n)


def _xyz_starts(path: Path, limits: StructureLimits) -> Iterator[tuple[int, int, int]]:
    with open(path, "rb") as fh:
        lines = _LineWindow(fh)
        for record, (k, _name, _build) in enumerate(_xyz_frames(path, lines, limits)):
            yield record, k, lines.offset(k)


def _smi_starts(path: Path, limits: StructureLimits) -> Iterator[tuple[int, int, int]]:
    # the range starts at its first record's line: blank and comment lines before it belong to
    # the range before (they hold no record), and line numbers are counted from the file's
    with open(path, "rb") as fh:
        records = _smi_records(fh, None, limits)
        for record, (offset, line, _name, _build) in enumerate(records):
            yield record, line, offset


def _sdf_starts(path: Path) -> Iterator[tuple[int, int, int]]:
    record, line, pos, start, start_line, content = 0, 0, 0, 0, 0, False
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.startswith(b"$$$$"):
                if content:
                    yield record, start_line, start
                    record += 1
                start, start_line, content = pos + len(raw), line + 1, False
            elif raw.strip():
                content = True
            pos += len(raw)
            line += 1
    if content:  # a last record without its $$$$ line: RDKit reads it too
        yield record, start_line, start


def read_range(
    rr: RecordRange, edge: str | None = None, limits: StructureLimits = DEFAULT_LIMITS
) -> list[tuple[str, object]]:
    """The ``(name, record)`` pairs of a range, as :func:`read_records` gives them.

    Raises
    ------
    StructureError
        The file cannot be read, or the range does not hold ``rr.n_records`` records (the file
        changed since the ranges were found).
    """
    path = Path(rr.path)
    try:
        with open(path, "rb") as fh:
            fh.seek(rr.start)
            data = fh.read(rr.end - rr.start)
    except OSError as exc:
        raise StructureError(f"{path}: cannot read ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    out: list[tuple[str, object]] = []
    if suffix == ".xyz":
        lines = _LineWindow(io.BytesIO(data), rr.first_line, rr.start)
        frames = _xyz_frames(path, lines, limits, first_frame=rr.first_record)
        out.extend(_xyz_records(path, ((name, build) for _k, name, build in frames)))
    elif suffix in (".sdf", ".mol"):
        from rdkit import Chem

        supplier = Chem.SDMolSupplier()
        supplier.SetData(data.decode("utf-8", "replace"), removeHs=False, sanitize=True)
        out.extend(_sdf_records(path, supplier, edge, limits, first=rr.first_record))
    else:
        records = _smi_records(io.BytesIO(data), edge, limits, rr.first_line, rr.start)
        out.extend((name, build) for _offset, _line, name, build in records)
    if len(out) != rr.n_records:
        raise StructureError(
            f"{path.name}: {len(out)} records in bytes {rr.start}-{rr.end} where "
            f"{rr.n_records} were found before (did the file change?)"
        )
    return out
