"""Predicted spectra in HDF5: chunked, appendable and resumable (``predict --out FILE.h5``).

Layout (``shared/notes/CLI.md``): ``energy`` (E,), ``mu`` and ``std`` (N, E) float32, ``names``
and ``smiles`` (N,) UTF-8 strings, one row per structure in input order.  The root's attributes
say what the rows are (edge, model version, energy axis, source file) and how far the input was
read: ``rows`` and ``records_read`` are written last by every append, after the data, so a file
whose writer was killed mid-append reopens at the last append that finished (the datasets'
extra rows are cut back), and ``records_read`` is where the input resumes (it counts the
skipped invalid structures too, which have no row).

A plain HDF5 file with fixed-shape float datasets and variable-length strings, readable by
h5py, h5netcdf-style readers and tiled's HDF5 adapter as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PredictionFile", "PredictionFileError", "read_predictions"]

#: rows per HDF5 chunk of ``mu`` / ``std`` (197 energies: ~0.8 MB of float32 per chunk)
ROWS_PER_CHUNK = 1024


class PredictionFileError(ValueError):
    """The file cannot be written or resumed as asked (exists, differs, unreadable)."""


@dataclass
class _Header:
    edge: str
    model_version: str
    source: str


class PredictionFile:
    """An open prediction file that rows are appended to.

    Use :meth:`create` or :meth:`resume`; :meth:`append` commits a block of rows, and
    :meth:`close` marks the file complete (or leaves it resumable).
    """

    def __init__(self, h5, path: Path):
        self._h5 = h5
        self.path = path

    # ----------------------------------------------------------------- opening
    @classmethod
    def create(
        cls, path: str | os.PathLike, energy: np.ndarray, *, edge: str, model_version: str,
        source: str,
    ) -> PredictionFile:  # fmt: skip
        """A new file; an existing one is an error (``--resume`` continues it)."""
        import h5py

        path = Path(path)
        if path.exists():
            raise PredictionFileError(
                f"{path}: exists; --resume continues it, or remove it to start again"
            )
        energy = np.asarray(energy, dtype=float)
        h5 = h5py.File(path, "w")
        try:
            h5.create_dataset("energy", data=energy).attrs["units"] = "eV"
            e = energy.size
            for name in ("mu", "std"):
                h5.create_dataset(
                    name, shape=(0, e), maxshape=(None, e), dtype="float32",
                    chunks=(ROWS_PER_CHUNK, e),
                )  # fmt: skip
            text = h5py.string_dtype("utf-8")
            for name in ("names", "smiles"):
                h5.create_dataset(
                    name, shape=(0,), maxshape=(None,), dtype=text, chunks=(ROWS_PER_CHUNK,)
                )
            h5["mu"].attrs["description"] = "ensemble mean of the predicted site-averaged mu(E)"
            h5["std"].attrs["description"] = "ensemble standard deviation of the prediction"
            h5.attrs.update(
                {
                    "edge": edge,
                    "model_version": model_version,
                    "energy_axis": "FEFF10 absolute (about 10-13 eV below tabulated edges)",
                    "source": source,
                    "rows": 0,
                    "records_read": 0,
                    "complete": False,
                    "producer": "xas-bluesky predict",
                }
            )
            h5.flush()
        except BaseException:
            h5.close()
            path.unlink(missing_ok=True)
            raise
        return cls(h5, path)

    @classmethod
    def resume(
        cls, path: str | os.PathLike, energy: np.ndarray, *, edge: str, model_version: str,
        source: str,
    ) -> PredictionFile:  # fmt: skip
        """Reopen a file to append after its committed rows (created when it is missing).

        Refused when it holds another edge, model version, energy grid or source file: the
        rows would not belong together.
        """
        import h5py

        path = Path(path)
        if not path.exists():
            return cls.create(path, energy, edge=edge, model_version=model_version, source=source)
        try:
            h5 = h5py.File(path, "r+")
        except OSError as exc:
            raise PredictionFileError(f"{path}: cannot be reopened to resume ({exc})") from None
        try:
            have = _Header(
                str(h5.attrs.get("edge")), str(h5.attrs.get("model_version")),
                str(h5.attrs.get("source")),
            )  # fmt: skip
            want = _Header(edge, model_version, source)
            for field in ("edge", "model_version", "source"):
                if getattr(have, field) != getattr(want, field):
                    raise PredictionFileError(
                        f"{path}: its {field} is {getattr(have, field)!r}, this run's "
                        f"{getattr(want, field)!r}: not resumable, write another file"
                    )
            if not np.array_equal(h5["energy"][()], np.asarray(energy, dtype=float)):
                raise PredictionFileError(f"{path}: another energy grid: not resumable")
            rows = int(h5.attrs["rows"])
            for name in ("mu", "std", "names", "smiles"):
                if h5[name].shape[0] != rows:  # an append that did not finish
                    h5[name].resize(rows, axis=0)
            h5.attrs["complete"] = False
            h5.flush()
        except BaseException:
            h5.close()
            raise
        return cls(h5, path)

    # ----------------------------------------------------------------- writing
    @property
    def rows(self) -> int:
        """Rows committed."""
        return int(self._h5.attrs["rows"])

    @property
    def records_read(self) -> int:
        """Input records (structures, valid or not) the committed rows account for."""
        return int(self._h5.attrs["records_read"])

    def append(
        self, names: list[str], smiles: list[str], mu: np.ndarray, std: np.ndarray,
        records: int,
    ) -> None:  # fmt: skip
        """Commit rows for the next ``records`` input records (``len(names)`` of them valid)."""
        mu = np.asarray(mu, dtype=np.float32)
        std = np.asarray(std, dtype=np.float32)
        n = len(names)
        if not (len(smiles) == mu.shape[0] == std.shape[0] == n) or records < n:
            raise ValueError("append: names, smiles, mu and std differ in length")
        h5, r = self._h5, self.rows
        if n:
            for name, values in (("mu", mu), ("std", std), ("names", names), ("smiles", smiles)):
                h5[name].resize(r + n, axis=0)
                h5[name][r : r + n] = values
        # the commit: counters after the data, then to disk
        h5.attrs["rows"] = r + n
        h5.attrs["records_read"] = self.records_read + records
        h5.flush()

    def close(self, complete: bool = False) -> None:
        """Close; ``complete`` marks that the whole input is in the file."""
        if self._h5.id.valid:
            self._h5.attrs["complete"] = bool(complete)
            self._h5.close()

    def __enter__(self) -> PredictionFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_predictions(path: str | os.PathLike, rows: slice | None = None) -> dict[str, Any]:
    """The file's arrays (``rows`` of them: all by default) and attributes, as a dict."""
    import h5py

    sel = rows if rows is not None else slice(None)
    with h5py.File(path, "r") as h5:
        out: dict[str, Any] = {"energy": h5["energy"][()]}
        out["mu"] = h5["mu"][sel]
        out["std"] = h5["std"][sel]
        out["names"] = [v.decode() for v in h5["names"][sel]]
        out["smiles"] = [v.decode() for v in h5["smiles"][sel]]
        out["attrs"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in h5.attrs.items()}
    return out
