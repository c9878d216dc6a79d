"""Functional groups of the absorbing atoms: one definition, by RDKit SMARTS.

Every absorbing atom (site) of an edge gets exactly ONE group: the first rule of
:data:`SITE_RULES` ``[edge]`` whose SMARTS matches with the site as its first atom, else
:data:`OTHER`.  A molecule's groups are the set of its sites' groups (its spectrum is the mean of
its sites' spectra, so it carries every one of them).  The names are
:data:`xas_bluesky.contracts.GROUPS` (a contract: add, never rename).

O K edge (rules in this order):

``carboxyl``
    Both O of a carboxylic acid, carboxylate or ester (``C(=O)O`` whose carbon has no N and no
    second single O: anhydrides and lactones included).
``carbamate``, ``carbonate``
    Both kinds of O of ``N-C(=O)-O`` and of ``O-C(=O)-O``.
``amide``
    The O of ``C(=O)-N`` (amides, lactams, ureas, imides, pyridones).
``carbonyl``
    Any other ``C=O``: ketones, aldehydes (and ketenes, quinone-like ring carbonyls).
``N-O``
    An O bonded to N: oximes, hydroxylamines, isoxazoles, N-oxides and nitro groups.
``alcohol``
    An OH on carbon: alcohols, enols, phenols, hemiacetals.
``aromatic-O``
    The ring O of an aromatic ring: furans, oxazoles.
``ether``
    Any other O between two carbons: ethers, acetals, epoxides and oxetanes.

N K edge:

``nitrile``
    ``C#N`` (and isonitriles' N).
``amide``
    An N bonded to a ``C=O`` carbon: amides, lactams, ureas, carbamates, imides, pyridone NH.
``pyrrole-N``
    An aromatic N with three connections (``[nH]``, N-substituted): pyrroles, the NH of
    imidazoles and pyrazoles.
``aromatic-N``
    A two-connected sp2 N: pyridine-like aromatic N, imines, oximes, amidines' and
    hydrazones' ``=N``, azo N (and iminium N).
``amine``
    An sp3-like N with three single bonds: amines (anilines, amidines' and guanidines' ``-N``,
    hydrazines, hydroxylamines and ammonium N included).
``nitro``
    The N of a nitro group or another N-oxide.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from xas_bluesky.contracts import GROUPS

__all__ = [
    "GROUPS",
    "OTHER",
    "SITE_RULES",
    "site_groups",
    "groups_of",
    "group_matrix",
    "GroupLibrary",
    "feff_library",
    "qm9_structures",
    "predicted_library",
    "save_library_structures",
    "load_library_structures",
    "shipped_library",
    "shipped_feff_library",
]

#: the group of a site no rule matches (not a contract name: never a predicted group)
OTHER = "other"

_C_ACYL = "[#6X3;!$([#6]~[#7]);!$([#6](-[#8])-[#8])]"  # C(=O) with no N, not a carbonate
_C_CARBAMATE = "[#6X3;$([#6]~[#7])]"

#: per edge, (group, SMARTS) in priority order; the SMARTS' first atom is the absorbing site
SITE_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "O": (
        ("carboxyl", f"[OX1]={_C_ACYL}-[OX2]"),
        ("carboxyl", f"[OX2]-{_C_ACYL}=[OX1]"),
        ("carboxyl", f"[OX1]={_C_ACYL}-[OX1-]"),
        ("carboxyl", f"[OX1-]-{_C_ACYL}=[OX1]"),
        ("carbamate", f"[OX1]={_C_CARBAMATE}-[OX2]"),
        ("carbamate", f"[OX2]-{_C_CARBAMATE}=[OX1]"),
        ("carbonate", "[OX1]=[#6X3](-[OX2])-[OX2]"),
        ("carbonate", "[OX2]-[#6X3](-[OX2])=[OX1]"),
        ("amide", "[OX1]=[#6X3]~[#7]"),
        ("carbonyl", "[OX1]=[#6]"),
        ("N-O", "[#8]~[#7]"),
        ("alcohol", "[OX2;H1]-[#6]"),
        ("aromatic-O", "[o]"),
        ("ether", "[OX2](-[#6])-[#6]"),
    ),
    "N": (
        ("nitrile", "[NX1]#[#6]"),
        ("nitrile", "[NX2+]#[#6-]"),
        ("amide", "[#7X3;!$([#7]=*)]~[#6X3]=[OX1]"),
        ("nitro", "[#7X3](~[OX1])~[OX1]"),
        ("nitro", "[#7X4;+]-[OX1-]"),
        ("pyrrole-N", "[nX3]"),
        ("aromatic-N", "[nX2]"),
        ("aromatic-N", "[NX2]=[#6,#7]"),
        ("aromatic-N", "[NX3+]=[#6]"),
        ("amine", "[NX3;!$([#7]=*);!$([#7]#*)]"),
        ("amine", "[NX4+]"),
    ),
}


@lru_cache(maxsize=4)
def _compiled(edge: str) -> tuple[tuple[str, Any], ...]:
    from rdkit import Chem

    if edge not in SITE_RULES:
        raise ValueError(f"unknown edge {edge!r}: expected one of {', '.join(SITE_RULES)}")
    out = []
    for group, smarts in SITE_RULES[edge]:
        patt = Chem.MolFromSmarts(smarts)
        if patt is None:  # pragma: no cover -- a typo in the table
            raise ValueError(f"bad SMARTS for {edge} {group}: {smarts}")
        out.append((group, patt))
    return tuple(out)


def _as_mol(obj: Any):
    """An RDKit molecule (explicit H atoms) from a Structure, an RDKit Mol or a SMILES string."""
    from rdkit import Chem

    if isinstance(obj, str):
        mol = Chem.MolFromSmiles(obj)
        if mol is None:
            raise ValueError(f"not a SMILES: {obj!r}")
        return Chem.AddHs(mol)
    mol = getattr(obj, "mol", obj)
    if not isinstance(mol, Chem.Mol):
        raise TypeError(f"expected a Structure, an RDKit Mol or SMILES, got {type(obj).__name__}")
    return mol


def site_groups(structure: Any, edge: str) -> dict[int, str]:
    """The group of every absorbing atom of ``edge`` in a molecule.

    Parameters
    ----------
    structure : Structure, rdkit.Chem.Mol or str
        A :class:`~xas_bluesky.science.structures.Structure` (its ``mol``: atom order =
        ``symbols``, so the keys are its sites), an RDKit molecule or a SMILES string (hydrogens
        added; atom indices are then the SMILES' heavy-atom order).
    edge : str
        ``"O"`` or ``"N"``.

    Returns
    -------
    dict
        Atom index -> group name (one of ``GROUPS[edge]``, or :data:`OTHER`), in index order.
    """
    mol = _as_mol(structure)
    sites = [a.GetIdx() for a in mol.GetAtoms() if a.GetSymbol() == edge]
    out: dict[int, str] = {}
    for group, patt in _compiled(edge):
        todo = set(sites) - set(out)
        if not todo:
            break
        for match in mol.GetSubstructMatches(patt, uniquify=False):
            if match[0] in todo:
                out[match[0]] = group
                todo.discard(match[0])
    return {i: out.get(i, OTHER) for i in sites}


def groups_of(structure: Any, edge: str) -> set[str]:
    """The groups of a molecule at ``edge``: the set of its sites' groups, :data:`OTHER` left
    out (see :func:`site_groups` for the inputs)."""
    return set(site_groups(structure, edge).values()) - {OTHER}


def group_matrix(group_sets: Iterable[Iterable[str]], edge: str) -> np.ndarray:
    """(N, G) booleans: molecule n has group ``GROUPS[edge][g]``."""
    names: Sequence[str] = GROUPS[edge]
    index = {g: k for k, g in enumerate(names)}
    rows: list[list[bool]] = []
    for gs in group_sets:
        row = [False] * len(names)
        for g in gs:
            if g in index:
                row[index[g]] = True
        rows.append(row)
    return np.array(rows, dtype=bool).reshape(-1, len(names))


# ---------------------------------------------------------------------------------------------
# libraries: many molecules with their groups and spectra, the reference of the open-world tests


@dataclass
class GroupLibrary:
    """Spectra of many molecules of one edge with their groups: the reference the open-world
    analysis (:mod:`xas_bluesky.science.compare.novelty`) scores a measurement against.

    Attributes
    ----------
    edge : str
    energy : np.ndarray
        (E,) the model grid.
    names, smiles : list of str
        One per molecule (``qm9_NNNNNN`` for QM9 molecules).
    groups : np.ndarray
        (N, G) booleans over ``GROUPS[edge]`` (:func:`group_matrix`).
    mean : np.ndarray
        (N, E) spectra: the model's predictions, or FEFF's spectra.
    std : np.ndarray or None
        (N, E) the ensemble's spread; None for FEFF spectra.
    source : str
        ``"model:<model_version>"`` or ``"feff"``.
    """

    edge: str
    energy: np.ndarray
    names: list[str]
    smiles: list[str]
    groups: np.ndarray
    mean: np.ndarray
    std: np.ndarray | None
    source: str = ""

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index: Sequence[int] | np.ndarray) -> GroupLibrary:
        """The molecules ``index`` (in that order)."""
        idx = np.asarray(index, dtype=np.int64)
        return GroupLibrary(
            self.edge,
            self.energy,
            [self.names[i] for i in idx],
            [self.smiles[i] for i in idx],
            self.groups[idx],
            self.mean[idx],
            None if self.std is None else self.std[idx],
            self.source,
        )

    def save(self, path: str | os.PathLike, dtype: Any = np.float32) -> None:
        """Write the library as a compressed ``.npz`` (spectra as ``dtype``: float16 keeps
        3 digits, plenty for spectra in units of the edge step, at half the size)."""
        arrays: dict[str, Any] = {
            "edge": np.array(self.edge),
            "energy": self.energy,
            "names": np.array(self.names),
            "smiles": np.array(self.smiles),
            "groups": self.groups,
            "group_names": np.array(GROUPS[self.edge]),
            "mean": self.mean.astype(dtype),
            "source": np.array(self.source),
        }
        if self.std is not None:
            arrays["std"] = self.std.astype(dtype)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> GroupLibrary:
        """Read a library written by :meth:`save` (groups re-ordered to today's ``GROUPS``)."""
        with np.load(path) as z:
            edge = str(z["edge"])
            saved = [str(g) for g in z["group_names"]]
            cols = {g: k for k, g in enumerate(saved)}
            groups = np.zeros((z["groups"].shape[0], len(GROUPS[edge])), dtype=bool)
            for k, g in enumerate(GROUPS[edge]):
                if g in cols:
                    groups[:, k] = z["groups"][:, cols[g]]
            return cls(
                edge,
                np.asarray(z["energy"], dtype=float),
                [str(n) for n in z["names"]],
                [str(s) for s in z["smiles"]],
                groups,
                np.asarray(z["mean"], dtype=np.float32),
                np.asarray(z["std"], dtype=np.float32) if "std" in z else None,
                str(z["source"]),
            )


def feff_library(edge: str, split: str = "train", paths=None) -> GroupLibrary:
    """FEFF's spectra of the data set's complete molecules of ``split`` (no model involved).

    Parameters
    ----------
    edge : str
    split : str
        ``"train"``, ``"val"`` or ``"test"`` (:func:`xas_bluesky.science.dataset.split_of`).
    paths : list of paths, optional
        The FEFF data files; the committed ones when None.
    """
    from xas_bluesky.science import dataset
    from xas_bluesky.science.grids import energy_grid
    from xas_bluesky.science.structures import structure_from_xyz

    files = dataset.default_data_files() if paths is None else paths
    mols = [m for m in dataset.load_molecules(files, edge) if m.split == split and m.complete]
    sets = [groups_of(structure_from_xyz(m.name, m.symbols, m.xyz, edge), edge) for m in mols]
    return GroupLibrary(
        edge,
        energy_grid(edge),
        [m.name for m in mols],
        [m.smiles for m in mols],
        group_matrix(sets, edge),
        np.stack([m.spectrum() for m in mols]).astype(np.float32),
        None,
        "feff",
    )


def qm9_structures(
    edge: str,
    n: int | None = None,
    *,
    seed: int = 0,
    splits: Sequence[str] = ("train",),
    exclude: Iterable[int] = (),
) -> list:
    """Valid, in-domain QM9 structures with ``edge``'s element, of the given splits.

    Parameters
    ----------
    edge : str
    n : int, optional
        A random sample of this many (``seed``); all when None.
    splits : sequence of str
        Splits of :func:`~xas_bluesky.science.dataset.split_of` to draw from: the training
        split by default, so that no validation or held-out molecule is in a library.
    exclude : iterable of int
        QM9 indices left out.

    Returns
    -------
    list of Structure
        Named ``qm9_NNNNNN``, in QM9 order.
    """
    from xas_bluesky.science.dataset import split_of
    from xas_bluesky.science.qm9 import iter_qm9
    from xas_bluesky.science.structures import Structure, structures_from_frames

    skip = set(int(i) for i in exclude)
    pool = [
        m
        for m in iter_qm9((edge,))
        if edge in m["symbols"]
        and split_of(m["qm9_index"]) in splits
        and m["qm9_index"] not in skip
    ]
    if n is not None and n < len(pool):
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(pool), size=n, replace=False))
        pool = [pool[i] for i in pick]
    frames = [(f"qm9_{m['qm9_index']:06d}", m["symbols"], np.asarray(m["xyz"])) for m in pool]
    return [
        s for s in structures_from_frames(frames, edge) if isinstance(s, Structure) and s.in_domain
    ]


def predicted_library(edge: str, structures: Sequence, predictor=None) -> GroupLibrary:
    """The model's predictions (mean and ensemble spread) of ``structures`` with their groups.

    Parameters
    ----------
    edge : str
    structures : sequence of Structure
        E.g. :func:`qm9_structures`.
    predictor : Predictor, optional
        The shipped ensemble of ``edge`` when None.
    """
    if predictor is None:
        from xas_bluesky.science.model.predictor import Predictor

        predictor = Predictor.load(edge)
    mean, std = predictor.predict(list(structures), return_std=True)
    return GroupLibrary(
        edge,
        np.asarray(predictor.energy, dtype=float),
        [s.name for s in structures],
        [s.smiles for s in structures],
        group_matrix([groups_of(s, edge) for s in structures], edge),
        np.asarray(mean.values, dtype=np.float32),
        np.asarray(std.values, dtype=np.float32),
        f"model:{predictor.model_version}",
    )


def save_library_structures(path: str | os.PathLike, structures: Sequence) -> None:
    """Write structures compactly for :func:`load_library_structures` (``.npz``: names, atomic
    numbers, coordinates in units of 1e-4 A as int32): how the shipped model libraries are
    stored."""
    from rdkit import Chem

    table = Chem.GetPeriodicTable()
    counts = np.array([len(s.symbols) for s in structures], dtype=np.int32)
    z = np.array([table.GetAtomicNumber(x) for s in structures for x in s.symbols], np.uint8)
    xyz = np.concatenate([np.asarray(s.xyz) for s in structures])
    np.savez_compressed(
        path,
        names=np.array([s.name for s in structures]),
        counts=counts,
        z=z,
        xyz_1e4=np.round(xyz * 1e4).astype(np.int32),
    )


def load_library_structures(path: str | os.PathLike, edge: str | None = None) -> list:
    """The structures of :func:`save_library_structures` (bonds perceived again)."""
    from rdkit import Chem

    from xas_bluesky.science.structures import Structure, structures_from_frames

    table = Chem.GetPeriodicTable()
    with np.load(path) as f:
        names = [str(n) for n in f["names"]]
        counts = f["counts"]
        symbols = [table.GetElementSymbol(int(z)) for z in f["z"]]
        xyz = f["xyz_1e4"] / 1e4
    starts = np.concatenate([[0], np.cumsum(counts)])
    frames = [
        (n, symbols[a:b], xyz[a:b]) for n, a, b in zip(names, starts[:-1], starts[1:], strict=True)
    ]
    return [s for s in structures_from_frames(frames, edge) if isinstance(s, Structure)]


def shipped_library(edge: str, predictor=None) -> GroupLibrary:
    """The shipped reference library of ``edge``, predicted by ``predictor`` (the shipped
    ensemble when None): training-split QM9 molecules (``resources/library_<edge>.npz``), the
    library :data:`~xas_bluesky.resources.open_world_calibration` was fitted with.

    Predicting it takes seconds on a GPU, a minute or so on a CPU: build it once per session.
    """
    from xas_bluesky.resources import library_file

    return predicted_library(edge, load_library_structures(library_file(edge), edge), predictor)


def shipped_feff_library(edge: str) -> GroupLibrary:
    """FEFF's spectra of the data set's training molecules of ``edge``, shipped
    (``resources/feff_library_<edge>.npz``, :func:`feff_library` saved as float16): the FEFF
    library of the open-world analysis."""
    from xas_bluesky.resources import feff_library_file

    return GroupLibrary.load(feff_library_file(edge))
