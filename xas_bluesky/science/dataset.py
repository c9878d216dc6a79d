"""The FEFF10 site-spectrum data set: loading, molecular spectra and the split by molecule.

Files are JSON lines in the schema of ``qm9_feff10_sites.jsonl.gz`` (one line per absorbing site;
see ``docs/data.rst``).  The molecular spectrum of an edge is the mean of its sites' spectra on the
model grid, as in Carbone et al. (2020).  The split is by molecule and by a hash of its QM9 index,
so it never changes when the data set grows: a molecule held out once is held out forever, and
the shipped demo samples (held-out molecules) are never training data.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xas_bluesky.science.grids import energy_grid, to_grid

__all__ = [
    "SiteRecord",
    "Molecule",
    "split_of",
    "iter_site_records",
    "load_molecules",
    "default_data_files",
    "data_hash",
    "split_counts",
]

#: fractions of molecules in the train / validation / test (held-out) splits
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def split_of(qm9_index: int) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a molecule, fixed by a hash of its QM9 index."""
    h = int.from_bytes(hashlib.sha256(f"qm9-{int(qm9_index)}".encode()).digest()[:8], "big")
    u = h / 2**64
    if u < SPLIT_FRACTIONS[0]:
        return "train"
    if u < SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]:
        return "val"
    return "test"


@dataclass
class SiteRecord:
    """One FEFF run: one absorbing site of one molecule."""

    qm9_index: int
    smiles: str
    element: str
    site: int
    symbols: list[str]
    xyz: np.ndarray
    omega: np.ndarray
    mu: np.ndarray


@dataclass
class Molecule:
    """A molecule with the FEFF spectra of its sites for one edge."""

    qm9_index: int
    smiles: str
    element: str
    symbols: list[str]
    xyz: np.ndarray
    sites: dict[int, np.ndarray] = field(default_factory=dict)  # site -> mu on the grid
    n_sites_expected: int = 0

    @property
    def name(self) -> str:
        return f"qm9_{self.qm9_index:06d}"

    @property
    def split(self) -> str:
        return split_of(self.qm9_index)

    @property
    def complete(self) -> bool:
        """Whether every site of the edge's element has a spectrum (failed runs leave gaps)."""
        return len(self.sites) == self.n_sites_expected

    def spectrum(self) -> np.ndarray:
        """Molecular spectrum: the mean of the site spectra on the grid."""
        return np.mean(np.stack([self.sites[s] for s in sorted(self.sites)]), axis=0)


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def iter_site_records(
    paths: Iterable[str | os.PathLike], element: str | None = None
) -> Iterator[SiteRecord]:
    """Successful site records of ``paths`` (failed runs and cut-off lines are skipped)."""
    for path in map(Path, paths):
        with _open_text(path) as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not r.get("ok") or (element and r["element"] != element):
                    continue
                yield SiteRecord(
                    int(r["qm9_index"]),
                    r["smiles"],
                    r["element"],
                    int(r["site"]),
                    list(r["symbols"]),
                    np.asarray(r["xyz"], dtype=float),
                    np.asarray(r["omega"], dtype=float),
                    np.asarray(r["mu"], dtype=float),
                )


def default_data_files(root: str | os.PathLike | None = None) -> list[Path]:
    """The committed FEFF data files (``data/feff/*.jsonl.gz`` of the source tree)."""
    if root is None:
        root = Path(__file__).resolve().parents[2] / "data" / "feff"
    return sorted(Path(root).glob("*.jsonl.gz"))


def load_molecules(paths: Iterable[str | os.PathLike], element: str) -> list[Molecule]:
    """Group the site spectra of ``element``'s K edge by molecule, on the model grid.

    A site that appears in several files (a rerun) is taken once.  Molecules are returned sorted
    by QM9 index.
    """
    grid = energy_grid(element)
    mols: dict[int, Molecule] = {}
    for rec in iter_site_records(paths, element):
        mol = mols.get(rec.qm9_index)
        if mol is None:
            mol = mols[rec.qm9_index] = Molecule(
                rec.qm9_index,
                rec.smiles,
                element,
                rec.symbols,
                rec.xyz,
                n_sites_expected=sum(s == element for s in rec.symbols),
            )
        mol.sites.setdefault(rec.site, to_grid(rec.omega, rec.mu, grid))
    return [mols[k] for k in sorted(mols)]


def data_hash(paths: Iterable[str | os.PathLike]) -> str:
    """SHA-256 over the files' bytes, in sorted name order (recorded in checkpoints)."""
    h = hashlib.sha256()
    for p in sorted(map(Path, paths), key=lambda p: p.name):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def split_counts(molecules: Iterable[Molecule]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for m in molecules:
        counts[m.split] += 1
    return dict(counts)
