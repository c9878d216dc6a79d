"""QM9 molecules with their DFT geometries, read from the ``qm9pack`` package (extra ``qm9``).

QM9: Ramakrishnan, Dral, Rupp, von Lilienfeld, Sci. Data 1, 140022 (2014), CC BY 4.0.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

__all__ = ["formula", "isomers", "iter_qm9", "qm9_data_dir"]


def qm9_data_dir() -> Path:
    """Folder of the CSV files shipped by ``qm9pack``."""
    import importlib.util

    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("qm9pack is not installed: pip install 'xas-bluesky[qm9]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:(?:\*\^|[eE])[-+]?\d+)?")


def _parse_floats(text: str) -> list[list[float]]:
    """Parse QM9's coordinate lists, which use Mathematica number forms (``1.``, ``2.3*^-6``)."""
    values = [float(v.replace("*^", "e")) for v in _NUMBER.findall(text)]
    return [values[i : i + 3] for i in range(0, len(values), 3)]


def iter_qm9(elements: tuple[str, ...] = ("O", "N")) -> Iterator[dict]:
    """Yield QM9 molecules containing any of ``elements`` as ``qm9_index``, ``smiles``, ``symbols``,
    ``xyz`` (Angstrom) dicts, in QM9 order."""
    csv.field_size_limit(1 << 27)
    for part in sorted(qm9_data_dir().glob("qm9_part*.csv")):
        with open(part, newline="") as fh:
            for row in csv.DictReader(fh):
                symbols = json.loads(row["Elements"].replace("'", '"'))
                if not any(s in elements for s in symbols):
                    continue
                yield {
                    "qm9_index": int(row["Index"]),
                    "smiles": row["SMILES"],
                    "symbols": symbols,
                    "xyz": _parse_floats(row["XYZ_Ang"]),
                }


def formula(symbols) -> str:
    """Hill-free molecular formula key of a list of element symbols (``C2H6O1``, sorted)."""
    symbols = list(symbols)
    return "".join(f"{el}{symbols.count(el)}" for el in sorted(set(symbols)))


def isomers(formulas, elements: tuple[str, ...] = ("O", "N")) -> dict[str, list[dict]]:
    """QM9 molecules (as :func:`iter_qm9` yields them) of each formula key in ``formulas``.

    One pass over QM9 (about half a minute): the isomer candidate sets of the identification
    benchmark and of the comparator's calibration.
    """
    wanted: dict[str, list[dict]] = {f: [] for f in formulas}
    for m in iter_qm9(elements):
        found = wanted.get(formula(m["symbols"]))
        if found is not None:
            found.append(m)
    return wanted
