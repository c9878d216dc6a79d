"""Molecular structures from XYZ, SDF and SMILES files, validated for the XANES model.

A :class:`Structure` holds a named molecule with all its atoms (hydrogens included), its 3D
coordinates, its SMILES and an RDKit molecule with bonds.  Bonds of XYZ input are perceived from
the geometry (:func:`perceive_bonds`: covalent radii for connectivity, then bond orders that fill
every atom's usual valence, the shortest bonds taking the multiple bonds; RDKit's
``rdDetermineBonds`` is the fallback for charged species such as nitro groups).  SMILES get 3D
coordinates from RDKit's ETKDG and the MMFF force field, seeded, so a file always gives the same
structures.

Input the model cannot handle (an element it was not trained on, atoms on top of each other, NaN
coordinates, a cut-off frame or one with more atom lines than announced, an unparsable SMILES, a
query bond, no atom of the requested edge) raises :class:`StructureError` with a one-line message
naming the structure; an XYZ file is read on from the next frame after a bad one.  Input it can
handle but was not trained for (more than nine heavy atoms, charged atoms, unusual valences,
several fragments, dative or zero-order bonds) is kept and flagged: ``in_domain`` is False and
``domain_notes`` says why.

Reading is bounded (:class:`StructureLimits`): a file over ``max_file_bytes`` or with more than
``max_structures`` structures is refused as a whole, a structure of more than ``max_atoms`` atoms
(or, to be embedded in 3D from SMILES or a 2D record, more than ``max_embed_atoms``) is one
invalid structure, each with a one-line :class:`StructureError` -- a candidate file named in a
start document must not take the memory or the minutes of the process that reads it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np

__all__ = [
    "Structure",
    "StructureError",
    "StructureLimits",
    "TRAINED_ELEMENTS",
    "read_structures",
    "iter_structures",
    "structure_from_xyz",
    "structures_from_frames",
    "structure_from_smiles",
    "structure_from_mol",
    "perceive_bonds",
]

#: elements present in the training data (QM9: H, C, N, O, F)
TRAINED_ELEMENTS = ("H", "C", "N", "O", "F")
#: the training molecules (QM9) have at most this many heavy atoms
MAX_HEAVY_ATOMS = 9
#: atoms closer than this (Angstrom) are an error in the input, not a molecule
MIN_DISTANCE = 0.5
#: seed of the ETKDG embedding of SMILES, so a file always gives the same geometry
EMBED_SEED = 20200415
#: gap (Angstrom) between the bounding boxes of the fragments of an embedded SMILES such as
#: ``CCO.O``: beyond the 6 A surroundings of the absorbers in the graphs
_FRAGMENT_GAP = 8.0

_VALENCE = {"H": 1, "C": 4, "N": 3, "O": 2, "F": 1}
# single-bond covalent radii (Cordero et al., Dalton Trans. 2008, 2832), Angstrom
_RADIUS = {"H": 0.31, "C": 0.76, "N": 0.71, "O": 0.66, "F": 0.57}
_BOND_FACTOR = 1.25  # a pair is bonded when closer than 1.25 x the sum of the radii
_ATOMIC_NUMBER = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
_CODE = {s: k for k, s in enumerate(TRAINED_ELEMENTS)}
_RADII = np.array([_RADIUS[s] for s in TRAINED_ELEMENTS])
_VALENCES = np.array([_VALENCE[s] for s in TRAINED_ELEMENTS])
_BOND_LIMIT = _BOND_FACTOR * (_RADII[:, None] + _RADII[None, :])
_BOND_LIMIT[0, 0] = 0.0  # no H-H bonds in molecules of more than two atoms
# the batched perception pads the frames of a chunk to the largest: frames of more atoms than
# this go one at a time, and a chunk holds at most this many padded atom pairs (2,048 QM9 frames)
_BATCH_MAX_ATOMS = 64
_CHUNK_PAIRS = 2048 * 32 * 32
# the same with a padding code (no bonds, no valence) for the batched arrays
_BOND_LIMIT_PADDED = np.zeros((len(TRAINED_ELEMENTS) + 1,) * 2)
_BOND_LIMIT_PADDED[:-1, :-1] = _BOND_LIMIT
_VALENCES_PADDED = np.append(_VALENCES, 0)
_SYMBOL_OF_Z = {
    1: "H", 2: "He", 3: "Li", 4: "Be", 5: "B", 6: "C", 7: "N", 8: "O", 9: "F", 10: "Ne", 11: "Na",
    12: "Mg", 13: "Al", 14: "Si", 15: "P", 16: "S", 17: "Cl", 18: "Ar", 19: "K", 20: "Ca", 35: "Br",
    53: "I",
}  # fmt: skip


class StructureError(ValueError):
    """A structure the model cannot predict; the message is one line naming it and the problem."""


@dataclass(frozen=True)
class StructureLimits:
    """Bounds of what a structure file may ask of the reader.

    Parameters
    ----------
    max_atoms
        Atoms (hydrogens included) of one structure; the pairwise distances of 3,000 atoms
        alone take 2 GB.  The model was trained on at most 29.
    max_embed_atoms
        Atoms of a structure that must be embedded in 3D (SMILES, an SDF record without 3D
        coordinates): ETKDG and MMFF take seconds to tens of seconds beyond ~100 atoms.
    max_structures
        Structures of one file (the shipped libraries hold a few thousand).
    max_file_bytes
        Size of one file.
    """

    max_atoms: int = 500
    max_embed_atoms: int = 100
    max_structures: int = 200_000
    max_file_bytes: int = 200 * 1024**2


#: the limits the readers apply unless given others
DEFAULT_LIMITS = StructureLimits()


def _too_many_atoms(name: str, n: int, limit: int, what: str = "atoms") -> StructureError:
    return StructureError(
        f"structure {name!r}: {n:,} {what}, over the limit of {limit:,} (StructureLimits)"
    )


class Structure:
    """A named molecule ready for the model.

    Attributes
    ----------
    name : str
        From the input (XYZ comment line, SDF title, SMILES file's name column) or made up from
        the position in the file.
    symbols : list of str
        Element of every atom, hydrogens included, in input order.
    xyz : numpy.ndarray
        Coordinates, shape (n_atoms, 3), Angstrom.
    smiles : str
        Canonical SMILES (RDKit) of the molecule.
    mol : rdkit.Chem.Mol
        The molecule with explicit hydrogens, bonds and one conformer (atom order = ``symbols``).
    in_domain : bool
        False when the molecule is unlike the training molecules; it is predicted all the same.
    domain_notes : list of str
        Why it is out of domain (empty when in domain).
    bonds : tuple of numpy.ndarray or None
        ``(pairs, orders)`` perceived from the geometry (XYZ input), else None.

    Notes
    -----
    For XYZ input whose bonds were perceived without trouble, ``mol`` and ``smiles`` are made on
    first use: predicting needs neither (:func:`~xas_bluesky.science.graphs.molecule_graphs`
    works from ``bonds``), and making them is most of the cost of reading a structure.
    """

    __slots__ = ("name", "symbols", "xyz", "in_domain", "domain_notes", "bonds", "_mol", "_smiles")

    def __init__(
        self,
        name: str,
        symbols: list[str],
        xyz: np.ndarray,
        smiles: str | None = None,
        mol=None,
        in_domain: bool = True,
        domain_notes: list[str] | None = None,
        bonds: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.name = name
        self.symbols = list(symbols)
        self.xyz = np.asarray(xyz, dtype=float)
        self._smiles = smiles
        self._mol = mol
        self.in_domain = bool(in_domain)
        self.domain_notes = list(domain_notes or [])
        self.bonds = bonds
        if mol is None and bonds is None:
            raise ValueError("a Structure needs an RDKit molecule or perceived bonds")

    @property
    def mol(self):
        if self._mol is None:
            self._mol = _mol_from_bonds(self.symbols, self.xyz, *self.bonds)
        return self._mol

    @property
    def smiles(self) -> str:
        if self._smiles is None:
            self._smiles = _smiles_of(self.mol)
        return self._smiles

    @property
    def n_heavy(self) -> int:
        return sum(s != "H" for s in self.symbols)

    def sites(self, edge: str) -> list[int]:
        """Indices of the atoms of ``edge``'s element (the absorbing sites)."""
        return [i for i, s in enumerate(self.symbols) if s == edge]

    def __repr__(self) -> str:
        flag = "" if self.in_domain else f", out of domain: {'; '.join(self.domain_notes)}"
        return f"Structure({self.name!r}, {len(self.symbols)} atoms{flag})"


# ---------------------------------------------------------------------------------------------
# validation


def _check_atoms(
    name: str, symbols: list[str], xyz: np.ndarray, edge: str | None
) -> np.ndarray | None:
    """Raise :class:`StructureError` for input the model cannot take; returns the distances."""
    unknown = sorted({s for s in symbols if s not in _VALENCE})
    if unknown:
        raise StructureError(
            f"structure {name!r}: element {', '.join(unknown)} is not one the model was trained on "
            f"({', '.join(TRAINED_ELEMENTS)})"
        )
    if not np.isfinite(xyz).all():
        raise StructureError(f"structure {name!r}: coordinates are NaN or infinite")
    d = None
    if len(symbols) > 1:
        diff = xyz[:, None, :] - xyz[None, :, :]
        d = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        masked = d.copy()
        masked.flat[:: len(symbols) + 1] = np.inf
        k = int(np.argmin(masked))
        if masked.flat[k] < MIN_DISTANCE:
            i, j = divmod(k, len(symbols))
            raise StructureError(
                f"structure {name!r}: atoms {min(i, j) + 1} and {max(i, j) + 1} are "
                f"{d[i, j]:.2f} A apart (< {MIN_DISTANCE} A)"
            )
    if edge is not None and edge not in symbols:
        raise StructureError(f"structure {name!r}: no {edge} atom to absorb at the {edge} K edge")
    return d


def _domain_notes(mol, symbols: list[str]) -> list[str]:
    from rdkit import Chem

    notes = []
    n_heavy = sum(s != "H" for s in symbols)
    if n_heavy > MAX_HEAVY_ATOMS:
        notes.append(f"{n_heavy} heavy atoms (trained on <= {MAX_HEAVY_ATOMS})")
    charged = [a.GetIdx() + 1 for a in mol.GetAtoms() if a.GetFormalCharge() != 0]
    if charged:
        notes.append(f"charged atoms {charged}")
    odd = [
        a.GetIdx() + 1
        for a in mol.GetAtoms()
        if a.GetTotalValence() != _VALENCE[a.GetSymbol()] and a.GetFormalCharge() == 0
    ]
    if odd or any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
        notes.append(f"unusual valences at atoms {odd}")
    n_frags = len(Chem.GetMolFrags(mol))
    if n_frags > 1:
        notes.append(f"{n_frags} fragments")
    return notes


# ---------------------------------------------------------------------------------------------
# bonds from geometry


def perceive_bonds(
    symbols: list[str], xyz: np.ndarray, distances: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Bonds of a neutral molecule from its geometry.

    Parameters
    ----------
    symbols, xyz
        Elements (H, C, N, O, F) and coordinates in Angstrom.
    distances
        The interatomic distance matrix, when already at hand.

    Returns
    -------
    pairs : numpy.ndarray
        Bonded atom pairs, shape (n_bonds, 2), ``i < j``.
    orders : numpy.ndarray or None
        Bond order (1, 2, 3) of every pair such that every atom has its usual valence (H 1, C 4,
        N 3, O 2, F 1), or None when no such assignment exists (charged or unusual species).
    """
    n = len(symbols)
    codes = np.fromiter((_CODE[s] for s in symbols), dtype=np.int64, count=n)
    if distances is None:
        diff = xyz[:, None, :] - xyz[None, :, :]
        distances = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    d = distances
    limit = _BOND_LIMIT[codes[:, None], codes[None, :]]  # H-H pairs: no bond (unless H2)
    if n == 2:
        limit = _BOND_FACTOR * (_RADII[codes[:, None]] + _RADII[codes[None, :]])
    bonded = d < limit
    np.fill_diagonal(bonded, False)
    is_h = codes == 0
    multi = np.flatnonzero(is_h & (bonded.sum(1) > 1))
    for h in multi:  # a hydrogen keeps only its nearest partner
        nb = np.flatnonzero(bonded[h])
        keep = nb[np.argmin(d[h, nb])]
        bonded[h, nb] = bonded[nb, h] = False
        bonded[h, keep] = bonded[keep, h] = True
    valence = _VALENCES[codes]
    degree = bonded.sum(1)
    if (degree > valence).any():
        # strained rings (bicyclobutanes) bring non-bonded atoms within reach: drop the most
        # stretched bonds of over-bonded atoms until every atom fits its valence
        stretch = d / (_RADII[codes[:, None]] + _RADII[codes[None, :]])
        while (degree > valence).any():
            over = degree > valence
            mask = bonded & (over[:, None] | over[None, :])
            a, b = np.unravel_index(np.argmax(np.where(mask, stretch, -1.0)), d.shape)
            bonded[a, b] = bonded[b, a] = False
            degree = bonded.sum(1)
    i, j = np.nonzero(np.triu(bonded))
    pairs = np.stack([i, j], axis=1)
    return pairs, _bond_orders(pairs, valence - degree, d[i, j])


def _bond_orders(pairs: np.ndarray, free: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """Orders of ``pairs`` that use up every atom's free valence, or None if there are none."""
    fl = free.tolist()
    if not any(fl):
        return np.ones(len(pairs), dtype=np.int64)
    if min(fl) < 0:
        return None
    pl = pairs.tolist()
    ll = lengths.tolist()
    # bonds that can take extra order, shortest (most multiple) first
    cand = sorted((ll[k], k) for k, (a, b) in enumerate(pl) if fl[a] > 0 and fl[b] > 0)
    orders = [1] * len(pl)
    try:
        ok = _fill_valences(fl, [(pl[k][0], pl[k][1], k) for _, k in cand], orders)
    except RecursionError:  # a conjugated system of ~1,000+ bonds: as if no assignment was found
        ok = False
    return np.array(orders, dtype=np.int64) if ok else None


def _fill_valences(free: list[int], cand: list[tuple[int, int, int]], orders: list[int]) -> bool:
    """Raise bond orders along ``cand`` until no atom has free valence (backtracking search)."""
    budget = [5000]
    by_atom: dict[int, list[tuple[int, int, int]]] = {}
    for c in cand:  # each atom's candidate bonds, in ``cand``'s (shortest first) order
        by_atom.setdefault(c[0], []).append(c)
        by_atom.setdefault(c[1], []).append(c)
    if any(f and a not in by_atom for a, f in enumerate(free)):
        return False
    active = sorted(by_atom)

    def solve() -> bool:
        budget[0] -= 1
        if budget[0] < 0:
            return False
        # the atom with free valence and the fewest ways to use it
        best, best_opts = None, None
        for a in active:
            if free[a]:
                opts = [c for c in by_atom[a] if free[c[0]] and free[c[1]]]
                if not opts:
                    return False
                if best_opts is None or len(opts) < len(best_opts):
                    best, best_opts = a, opts
        if best is None:
            return True
        assert best_opts is not None  # set together with ``best``
        for a, b, k in best_opts:
            if orders[k] >= 3:
                continue
            orders[k] += 1
            free[a] -= 1
            free[b] -= 1
            if solve():
                return True
            orders[k] -= 1
            free[a] += 1
            free[b] += 1
        return False

    return solve()


def _bare_mol(symbols: list[str], xyz: np.ndarray):
    """An RDKit molecule of the atoms and their conformer, no bonds yet."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    rw = Chem.RWMol()
    for s in symbols:
        atom = Chem.Atom(_ATOMIC_NUMBER[s])
        atom.SetNoImplicit(True)
        rw.AddAtom(atom)
    conf = Chem.Conformer(len(symbols))
    for k, (x, y, z) in enumerate(xyz.tolist()):
        conf.SetAtomPosition(k, Point3D(x, y, z))
    rw.AddConformer(conf, assignId=True)
    return rw


def _mol_from_bonds(symbols: list[str], xyz: np.ndarray, pairs: np.ndarray, orders: np.ndarray):
    """The RDKit molecule of perceived bonds (every valence filled, so it sanitises)."""
    from rdkit import Chem

    rw = _bare_mol(symbols, xyz)
    btype = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    for (a, b), o in zip(pairs.tolist(), orders.tolist(), strict=True):
        rw.AddBond(a, b, btype[o])
    mol = rw.GetMol()
    Chem.SanitizeMol(mol)
    return mol


def _mol_from_geometry(symbols: list[str], xyz: np.ndarray, pairs: np.ndarray):
    """Bonds of what :func:`perceive_bonds` cannot fill with neutral valences.

    RDKit's charge-aware perception first (nitro groups, zwitterions); failing that, single bonds
    and a note.  Returns the molecule and the notes.
    """
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds

    RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]  # stubs omit rdBase re-export
    try:
        trial = Chem.Mol(_bare_mol(symbols, xyz))
        try:
            rdDetermineBonds.DetermineBonds(trial, charge=0)
            Chem.SanitizeMol(trial)
            Chem.RemoveStereochemistry(trial)  # as for every other structure read from XYZ
            return trial, []
        except Exception:  # noqa: BLE001 -- RDKit raises several types; fall back to single bonds
            pass
        rw = _bare_mol(symbols, xyz)
        for a, b in pairs.tolist():
            rw.AddBond(a, b, Chem.BondType.SINGLE)
        mol = rw.GetMol()
        notes = ["bond orders could not be assigned (single bonds used)"]
        try:
            Chem.SanitizeMol(mol)
        except Exception:  # noqa: BLE001 -- hypervalent atoms: keep what RDKit can perceive
            flags = Chem.SanitizeFlags.SANITIZE_ALL ^ Chem.SanitizeFlags.SANITIZE_PROPERTIES
            Chem.SanitizeMol(mol, flags, catchErrors=True)
            mol.UpdatePropertyCache(strict=False)
            notes.append("valences RDKit does not accept")
        return mol, notes
    finally:
        RDLogger.EnableLog("rdApp.*")  # type: ignore[attr-defined]  # stubs omit rdBase re-export


def _n_fragments(n: int, pairs: np.ndarray) -> int:
    """Number of connected pieces (union-find: linear in the bonds, for molecules of any size)."""
    root = list(range(n))

    def find(a: int) -> int:
        while root[a] != a:
            root[a] = a = root[root[a]]
        return a

    pieces = n
    for a, b in pairs.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            root[ra] = rb
            pieces -= 1
    return pieces


def _smiles_of(mol) -> str:
    from rdkit import Chem

    try:
        return Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))
    except Exception:  # noqa: BLE001 -- odd valences: the SMILES with its hydrogens
        return Chem.MolToSmiles(mol)


# ---------------------------------------------------------------------------------------------
# constructors


def structure_from_xyz(
    name: str,
    symbols: list[str],
    xyz: np.ndarray,
    edge: str | None = None,
    limits: StructureLimits = DEFAULT_LIMITS,
) -> Structure:
    """A validated :class:`Structure` from elements and coordinates (bonds perceived)."""
    result = structures_from_frames([(name, list(symbols), xyz)], edge, limits)[0]
    if isinstance(result, StructureError):
        raise result
    return result


def _structure_one(name: str, symbols: list[str], xyz: np.ndarray, edge: str | None) -> Structure:
    """One structure from XYZ data, every step on its own (the rare cases of the batch path)."""
    d = _check_atoms(name, symbols, xyz, edge)
    pairs, orders = perceive_bonds(symbols, xyz, d)
    if orders is None:
        mol, notes = _mol_from_geometry(symbols, xyz, pairs)
        notes += _domain_notes(mol, symbols)
        return Structure(name, symbols, xyz, None, mol, not notes, notes)
    return _neutral_structure(name, symbols, xyz, pairs, orders, _n_fragments(len(symbols), pairs))


def _neutral_structure(name, symbols, xyz, pairs, orders, n_frags: int) -> Structure:
    # every atom neutral with its usual valence: only size and fragments can be unusual
    notes = []
    n_heavy = sum(s != "H" for s in symbols)
    if n_heavy > MAX_HEAVY_ATOMS:
        notes.append(f"{n_heavy} heavy atoms (trained on <= {MAX_HEAVY_ATOMS})")
    if n_frags > 1:
        notes.append(f"{n_frags} fragments")
    return Structure(name, symbols, xyz, None, None, not notes, notes, bonds=(pairs, orders))


def structures_from_frames(
    frames: list[tuple[str, list[str], np.ndarray]],
    edge: str | None = None,
    limits: StructureLimits = DEFAULT_LIMITS,
) -> list[Structure | StructureError]:
    """Validate and perceive the bonds of many XYZ frames at once.

    The distance checks, connectivity and fragment counts are done on all frames together as
    padded arrays (one NumPy call for all instead of a dozen per molecule), in chunks of frames of
    similar size; only bond orders of unsaturated molecules, the rare molecules with over-bonded
    atoms, and molecules of more than 64 atoms take per-molecule Python.
    Gives exactly what :func:`structure_from_xyz` gives each frame (a test checks it).  A frame of
    more than ``limits.max_atoms`` atoms is an error, its distances never computed.

    Returns
    -------
    list
        A :class:`Structure`, or the :class:`StructureError` of an invalid frame, per frame.
    """
    out: list[Structure | StructureError | None] = [None] * len(frames)
    batch = []  # (frame index, codes, xyz)
    for k, (name, symbols, xyz) in enumerate(frames):
        if len(symbols) > limits.max_atoms:
            out[k] = _too_many_atoms(name, len(symbols), limits.max_atoms)
            continue
        xyz = np.asarray(xyz, dtype=float).reshape(-1, 3)
        try:
            codes = [_CODE[s] for s in symbols]
        except KeyError:
            codes = None
        if (
            codes is None
            or len(symbols) <= 2
            or len(symbols) > _BATCH_MAX_ATOMS
            or not np.isfinite(xyz).all()
        ):
            # errors, tiny and large molecules: the one-at-a-time path (says what is wrong, and
            # costs a large molecule only its own work, not the padding of a whole chunk)
            try:
                out[k] = _structure_one(name, symbols, xyz, edge)
            except StructureError as exc:
                out[k] = exc
            continue
        if edge is not None and edge not in symbols:
            out[k] = StructureError(
                f"structure {name!r}: no {edge} atom to absorb at the {edge} K edge"
            )
            continue
        batch.append((k, codes, xyz))
    # by size, so that a chunk pads its frames to about their own atom count
    batch.sort(key=lambda item: len(item[1]))
    lo = 0
    while lo < len(batch):
        hi = lo + 1
        while hi < len(batch) and (hi + 1 - lo) * len(batch[hi][1]) ** 2 <= _CHUNK_PAIRS:
            hi += 1
        _perceive_chunk(frames, batch[lo:hi], edge, out)
        lo = hi
    return cast("list[Structure | StructureError]", out)  # every frame's slot is filled by now


def _perceive_chunk(frames, chunk, edge, out) -> None:
    b, n = len(chunk), max(len(c) for _, c, _ in chunk)
    codes = np.full((b, n), len(TRAINED_ELEMENTS), dtype=np.int64)  # padding: its own code
    pos = np.zeros((b, n, 3))
    for r, (_, c, xyz) in enumerate(chunk):
        codes[r, : len(c)] = c
        pos[r, : len(c)] = xyz
    valid = codes < len(TRAINED_ELEMENTS)
    diff = pos[:, :, None, :] - pos[:, None, :, :]
    d = np.sqrt(np.einsum("bijk,bijk->bij", diff, diff))
    pair_ok = valid[:, :, None] & valid[:, None, :]
    pair_ok &= ~np.eye(n, dtype=bool)[None]
    masked = np.where(pair_ok, d, np.inf).reshape(b, -1)
    closest = masked.argmin(1)
    too_close = masked[np.arange(b), closest] < MIN_DISTANCE
    bonded = (d < _BOND_LIMIT_PADDED[codes[:, :, None], codes[:, None, :]]) & pair_ok
    degree = bonded.sum(2)
    valence = _VALENCES_PADDED[codes]
    is_h = codes == 0
    # hydrogens bonded twice and over-bonded atoms: the per-molecule rules
    odd = too_close | ((degree > 1) & is_h).any(1) | (degree > valence).any(1)
    # fragments: which atoms atom 0 reaches through bonds (repeated squaring of adjacency)
    reach = (bonded | np.eye(n, dtype=bool)[None]).astype(np.float32)
    for _ in range(max(1, int(np.ceil(np.log2(n))))):
        reach = np.minimum(reach @ reach, 1.0)
    connected = ((reach[:, 0] > 0) | ~valid).all(1)
    bb, ii, jj = np.nonzero(np.triu(bonded, 1))
    starts = np.searchsorted(bb, np.arange(b + 1)).tolist()
    pairs_all = np.stack([ii, jj], axis=1)
    lengths_all = d[bb, ii, jj]
    free_all = valence - degree
    for r, (k, c, xyz) in enumerate(chunk):
        name, symbols = frames[k][0], list(frames[k][1])
        if odd[r]:
            try:
                out[k] = _structure_one(name, symbols, xyz, edge)
            except StructureError as exc:
                out[k] = exc
            continue
        lo, hi = starts[r], starts[r + 1]
        pairs = pairs_all[lo:hi]
        m = len(c)
        orders = _bond_orders(pairs, free_all[r, :m], lengths_all[lo:hi])
        if orders is None:
            out[k] = _structure_one(name, symbols, xyz, edge)
            continue
        n_frags = 1 if connected[r] else _n_fragments(m, pairs)
        out[k] = _neutral_structure(name, symbols, xyz, pairs, orders, n_frags)


def structure_from_mol(
    name: str, mol, edge: str | None = None, limits: StructureLimits = DEFAULT_LIMITS
) -> Structure:
    """A validated :class:`Structure` from an RDKit molecule with bonds (3D made when missing).

    More atoms (hydrogens to be added included) than ``limits.max_atoms``, or than
    ``limits.max_embed_atoms`` when it must be embedded in 3D, raise :class:`StructureError`
    before any work."""
    from rdkit import Chem

    if any(a.GetSymbol() not in _VALENCE for a in mol.GetAtoms()):
        _check_atoms(name, [a.GetSymbol() for a in mol.GetAtoms()], np.zeros((0, 3)), edge)
    counted = Chem.Mol(mol)  # implicit hydrogens need a property cache the input may lack
    counted.UpdatePropertyCache(strict=False)
    n_atoms = counted.GetNumAtoms() + sum(a.GetTotalNumHs() for a in counted.GetAtoms())
    if n_atoms > limits.max_atoms:
        raise _too_many_atoms(name, n_atoms, limits.max_atoms)
    embed = mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D()
    if embed and n_atoms > limits.max_embed_atoms:
        raise _too_many_atoms(name, n_atoms, limits.max_embed_atoms, "atoms to embed in 3D")
    mol, bond_notes = _plain_bonds(name, mol)
    mol = Chem.AddHs(mol, addCoords=mol.GetNumConformers() > 0)
    if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
        mol = _embed(name, mol)
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    xyz = np.asarray(mol.GetConformer().GetPositions(), dtype=float)
    _check_atoms(name, symbols, xyz, edge)
    notes = _domain_notes(mol, symbols) + bond_notes
    return Structure(name, symbols, xyz, None, mol, not notes, notes)


def _plain_bonds(name: str, mol):
    """The molecule with single, double, triple and aromatic bonds only, and notes on the rest.

    The graphs know those four types.  A dative bond ``A->B`` becomes the charge-separated
    ``[A+]-[B-]`` (``C[N](C)(C)->O`` is trimethylamine N-oxide, ``C[N+](C)(C)[O-]``, and its O
    gets no hydrogen); zero-order, ionic and hydrogen bonds are dropped.  Both are noted, so the
    structure is flagged.  Query bonds (SDF types 5-8) and other types raise
    :class:`StructureError`: RDKit would add hydrogens for the valence they leave unfilled.
    """
    from rdkit import Chem, rdBase

    bt = Chem.BondType
    plain = (bt.SINGLE, bt.DOUBLE, bt.TRIPLE, bt.AROMATIC)
    odd = [b for b in mol.GetBonds() if b.HasQuery() or b.GetBondType() not in plain]
    if not odd:
        return mol, []
    rw = Chem.RWMol(mol)
    dative, dropped = [], []
    for b in odd:
        i, j, kind = b.GetBeginAtomIdx(), b.GetEndAtomIdx(), b.GetBondType()
        if not b.HasQuery() and kind == bt.DATIVE:
            rw.GetBondBetweenAtoms(i, j).SetBondType(bt.SINGLE)
            for k, dq in ((i, 1), (j, -1)):
                atom = rw.GetAtomWithIdx(k)
                atom.SetFormalCharge(atom.GetFormalCharge() + dq)
            dative.append(f"{i + 1}->{j + 1}")
        elif not b.HasQuery() and kind in (bt.ZERO, bt.IONIC, bt.HYDROGEN):
            rw.RemoveBond(i, j)
            dropped.append(f"{i + 1}-{j + 1}")
        else:
            what = b.GetPropsAsDict().get("_MolFileBondType")
            what = f"SDF bond type {what}" if what is not None else str(kind)
            raise StructureError(
                f"structure {name!r}: bond {i + 1}-{j + 1} has a query or unsupported bond type "
                f"({what}); only single, double, triple, aromatic and dative bonds are read"
            )
    mol = rw.GetMol()
    try:
        with rdBase.BlockLogs():  # the error below says it in one line
            Chem.SanitizeMol(mol)
    except Exception:  # noqa: BLE001 -- RDKit raises several types
        raise StructureError(
            f"structure {name!r}: RDKit rejects its valences with bonds "
            f"{', '.join(dative + dropped)} read as plain (dative ones as charge-separated)"
        ) from None
    notes = []
    if dative:
        notes.append(f"{_plural('dative bond', dative)} (read as charge-separated)")
    if dropped:
        notes.append(f"{_plural('zero-order bond', dropped)} (left out)")
    return mol, notes


def _plural(what: str, items: list[str]) -> str:
    return f"{what}{'s' if len(items) > 1 else ''} {', '.join(items)}"


def _embed(name: str, mol):
    """3D coordinates by ETKDG + MMFF, each fragment on its own and 8 A from the previous one.

    Embedded together, fragments would land on top of each other; 8 A apart, each is beyond the
    6 A reach of the other's absorber surroundings, as for separate molecules.
    """
    from rdkit import Chem

    mapping: list = []
    frags = Chem.GetMolFrags(mol, asMols=True, fragsMolAtomMapping=mapping)
    if len(frags) == 1:
        return _embed_one(name, mol)
    pos = np.zeros((mol.GetNumAtoms(), 3))
    x0 = 0.0
    for frag, atoms in zip(frags, mapping, strict=True):
        xyz = np.asarray(_embed_one(name, frag).GetConformer().GetPositions(), dtype=float)
        xyz[:, 0] += x0 - xyz[:, 0].min()
        pos[list(atoms)] = xyz
        x0 = xyz[:, 0].max() + _FRAGMENT_GAP
    conf = Chem.Conformer(mol.GetNumAtoms())
    conf.Set3D(True)
    for k, p in enumerate(pos.tolist()):
        conf.SetAtomPosition(k, p)
    mol.RemoveAllConformers()
    mol.AddConformer(conf, assignId=True)
    return mol


def _embed_one(name: str, mol):
    from rdkit.Chem import AllChem

    # the stubs of AllChem omit its star imports (rdDistGeom, rdForceFieldHelpers): hence the ignores
    params = AllChem.ETKDGv3()  # type: ignore[attr-defined]
    params.randomSeed = EMBED_SEED
    if AllChem.EmbedMolecule(mol, params) != 0:  # type: ignore[attr-defined]
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:  # type: ignore[attr-defined]
            raise StructureError(f"structure {name!r}: RDKit could not embed it in 3D")
    if AllChem.MMFFHasAllMoleculeParams(mol):  # type: ignore[attr-defined]
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)  # type: ignore[attr-defined]
    return mol


def structure_from_smiles(
    smiles: str,
    name: str | None = None,
    edge: str | None = None,
    limits: StructureLimits = DEFAULT_LIMITS,
) -> Structure:
    """A validated :class:`Structure` from SMILES, in 3D by ETKDG + MMFF (seeded); at most
    ``limits.max_embed_atoms`` atoms, hydrogens included."""
    from rdkit import Chem, RDLogger

    name = name or smiles
    RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]  # stubs omit rdBase re-export
    try:
        mol = Chem.MolFromSmiles(smiles)
    finally:
        RDLogger.EnableLog("rdApp.*")  # type: ignore[attr-defined]  # stubs omit rdBase re-export
    if mol is None:
        raise StructureError(f"structure {name!r}: unparsable SMILES {smiles!r}")
    return structure_from_mol(name, mol, edge, limits)


# ---------------------------------------------------------------------------------------------
# files

_FLOAT_FIX = re.compile(r"[dD]")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float(_FLOAT_FIX.sub("e", text))  # Fortran's 1.0D-03


def _symbol(text: str) -> str:
    if text.isdigit():
        return _SYMBOL_OF_Z.get(int(text), f"Z={text}")
    text = re.sub(r"[^A-Za-z].*$", "", text)  # labels such as C1, O_2
    return text[:1].upper() + text[1:].lower()


def _atom_count(line: str) -> int | None:
    """The atom count that starts a frame (a positive integer, maybe a comment), else None."""
    head = line.split()
    if not head or len(head) > 1 and not head[1].startswith(("#", "!")):
        return None
    try:
        n = int(head[0])
    except ValueError:
        return None
    return n if n >= 1 else None


def _is_atom_line(line: str) -> bool:
    """Whether ``line`` reads as an atom: a symbol and three coordinates (maybe more columns)."""
    parts = line.split()
    if len(parts) < 4:
        return False
    try:
        for v in parts[1:4]:
            _float(v)
    except ValueError:
        return False
    return True


def _next_frame(lines: _LineWindow, k: int) -> int:
    """The first line from ``k`` on that starts a plausible frame (a count, a title, an atom)."""
    while lines.has(k):
        if _atom_count(lines[k]) is not None and lines.has(k + 2) and _is_atom_line(lines[k + 2]):
            return k
        k += 1
    return k


class _LineWindow:
    """The lines of a file opened in binary, by absolute index, read as they are asked for.

    Lines before :meth:`release`'s index are freed, so a reader that releases each frame it has
    passed holds about one frame in memory however large the file (a million-structure input).
    Each line's byte offset is kept (:meth:`offset`), so that a range of frames can be handed
    to another process to read itself (:mod:`xas_bluesky.science.record_ranges`); a window on
    such a range starts at its first line's index and byte offset.
    """

    def __init__(self, fh, first_line: int = 0, start: int = 0) -> None:
        self._fh = fh
        self._buf: list[str] = []
        self._offsets: list[int] = []
        self._base = first_line
        self._drop_to = first_line
        self._pos = start
        self._eof = False

    def has(self, k: int) -> bool:
        while k - self._base >= len(self._buf) and not self._eof:
            block = self._fh.readlines(1 << 20)
            if block:
                for line in block:
                    self._offsets.append(self._pos)
                    self._pos += len(line)
                    self._buf.append(line.decode("utf-8", "replace").rstrip("\r\n"))
                self.release(self._drop_to)  # lines skipped unread stay unkept
            else:
                self._eof = True
        return k - self._base < len(self._buf)

    def offset(self, k: int) -> int:
        """Byte offset of line ``k`` (the end of the file past the last line)."""
        if not self.has(k):
            return self._pos
        return self._offsets[k - self._base]

    def __getitem__(self, k: int) -> str:
        if not self.has(k):
            raise IndexError(k)
        return self._buf[k - self._base]

    def span(self, lo: int, hi: int) -> list[str]:
        """Lines ``lo`` to ``hi`` (exclusive), fewer at the end of the file."""
        self.has(hi - 1)
        return self._buf[lo - self._base : hi - self._base]

    def release(self, k: int) -> None:
        """Forget the lines before ``k`` (those not read yet are dropped as they are read)."""
        self._drop_to = max(self._drop_to, k)
        drop = min(k - self._base, len(self._buf))
        if drop > 0:
            del self._buf[:drop]
            del self._offsets[:drop]
            self._base += drop


def _refuse(message: str) -> Structure:
    raise StructureError(message)


def _failing(message: str) -> Callable[[], tuple]:
    def build() -> tuple:
        raise StructureError(message)

    return build


def _iter_xyz(
    path: Path, edge: str | None, limits: StructureLimits = DEFAULT_LIMITS
) -> Iterator[tuple[str, Callable[[], tuple]]]:
    """Frames of an XYZ file, each a name and a ``build()`` that parses it or raises.

    A frame that cannot be read is one failing ``build()`` and reading goes on at the next line
    that starts a plausible frame, so that ``skip_invalid`` keeps the frames after it.  A frame of
    more than ``limits.max_atoms`` atoms is one failing ``build()``, its lines skipped unread.
    """
    with open(path, "rb") as fh:
        for _k, name, build in _xyz_frames(path, _LineWindow(fh), limits):
            yield name, build


def _xyz_frames(
    path: Path, lines: _LineWindow, limits: StructureLimits, first_frame: int = 0
) -> Iterator[tuple[int, str, Callable[[], tuple]]]:
    """``(first line, name, build)`` of each frame from the window's first line on; frames are
    numbered from ``first_frame + 1`` (unnamed ones are called ``<stem>_<number>``)."""
    k, frame = lines._base, first_frame
    while lines.has(k):
        lines.release(k)  # every frame before this line has been handed out
        if not lines[k].strip():
            k += 1
            continue
        frame += 1
        n = _atom_count(lines[k])
        if n is None:
            msg = (
                f"{path.name} line {k + 1}: expected an atom count to start frame {frame}, "
                f"found {lines[k].strip()[:40]!r}"
            )
            yield k, f"{path.stem}_{frame}", _failing(msg)
            k = _next_frame(lines, k + 1)
            continue
        name = lines[k + 1].strip() if lines.has(k + 1) else ""
        name = name or f"{path.stem}_{frame}"
        if n > limits.max_atoms:
            yield k, name, _failing(str(_too_many_atoms(name, n, limits.max_atoms)))
            k += 2 + n
            continue
        rows = []
        for line in lines.span(k + 2, k + 2 + n):
            parts = line.split()
            if len(parts) < 4:
                break  # a cut-off frame: the next frame (or the end) comes early
            rows.append(parts)
        start = k
        k += 2 + len(rows)
        if len(rows) == n:
            j = k
            while lines.has(j) and not lines[j].strip():
                j += 1
            if lines.has(j) and _atom_count(lines[j]) is None and _is_atom_line(lines[j]):
                # more atom lines than announced: which atoms belong to the frame is unknown
                extra = 0
                while lines.has(j + extra) and _is_atom_line(lines[j + extra]):
                    extra += 1
                msg = (
                    f"structure {name!r} ({path.name} line {start + 1}, frame {frame}): "
                    f"{n + extra} atom lines where {n} were announced"
                )
                yield start, name, _failing(msg)
                k = _next_frame(lines, j + extra)
                continue

        def build(rows=rows, name=name, n=n, start=start) -> tuple:
            if len(rows) < n:
                raise StructureError(
                    f"structure {name!r} ({path.name} line {start + 1}): truncated frame, "
                    f"{n} atoms announced, {len(rows)} found"
                )
            symbols = [p[0] if p[0] in _VALENCE else _symbol(p[0]) for p in rows]
            return name, symbols, rows, start

        yield start, name, build


def _coordinates(path: Path, name: str, rows: list[list[str]], start: int) -> np.ndarray:
    try:
        return np.array([[_float(v) for v in p[1:4]] for p in rows])
    except ValueError:
        raise StructureError(
            f"structure {name!r}: unreadable coordinates in {path.name} "
            f"lines {start + 3}-{start + 2 + len(rows)}"
        ) from None


def _iter_xyz_structures(
    path: Path, edge: str | None, limits: StructureLimits = DEFAULT_LIMITS
) -> Iterator[tuple[str, Callable[[], Structure]]]:
    """Frames of an XYZ file, validated and perceived in batches (:func:`structures_from_frames`)."""
    frames = _iter_xyz(path, edge, limits)
    while True:
        parsed: list = []
        for _name, build in frames:
            try:
                parsed.append(_XyzFrame(path, *build()))
            except StructureError as exc:
                parsed.append(exc)
            if len(parsed) == 2048:
                break
        if not parsed:
            return
        for result in _finish_xyz(parsed, edge, limits):
            name = result.args[0] if isinstance(result, StructureError) else result.name
            yield name, _returner(result)


@dataclass(frozen=True)
class _XyzFrame:
    """An XYZ frame read but not yet converted: its file, name, symbols, rows and first line."""

    path: Path
    name: str
    symbols: list[str]
    rows: list[list[str]]
    start: int


def _finish_xyz(
    parsed: list, edge: str | None, limits: StructureLimits
) -> list[Structure | StructureError]:
    """Frames (or the errors of unreadable ones) to structures, in order."""
    results: list = list(parsed)  # a StructureError or the parsed frame, in file order
    good = [k for k, p in enumerate(parsed) if isinstance(p, _XyzFrame)]
    # all coordinates of the batch in one conversion; per frame only if one is unreadable
    flat = [v for k in good for row in parsed[k].rows for v in row[1:4]]
    try:
        coords = np.array(flat, dtype=float).reshape(-1, 3)
    except ValueError:
        coords = None
    ready, where, at = [], [], 0
    for k in good:
        f = parsed[k]
        if coords is not None:
            xyz = coords[at : at + len(f.rows)]
            at += len(f.rows)
        else:
            try:
                xyz = _coordinates(f.path, f.name, f.rows, f.start)
            except StructureError as exc:
                results[k] = exc
                continue
        ready.append((f.name, f.symbols, xyz))
        where.append(k)
    for k, result in zip(where, structures_from_frames(ready, edge, limits), strict=True):
        results[k] = result
    return results


def _reader_for(path: Path):
    """The reader of ``path``'s format; an unknown format or a missing file is an error."""
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise StructureError(
            f"{path.name}: unknown structure format {path.suffix!r} (expected .xyz, .sdf or .smi)"
        )
    if not path.is_file():
        raise StructureError(f"{path}: no such file")
    return reader


def read_records(
    path: str | os.PathLike, edge: str | None = None, limits: StructureLimits = DEFAULT_LIMITS
) -> Iterator[tuple[str, object]]:
    """The structures of a file as cheap, picklable records, streamed (``(name, record)``).

    What :func:`iter_structures` does in one process, split in two: reading the file (this,
    fast, about one frame in memory) and turning records into structures
    (:func:`structures_from_records`: bond perception, 3D embedding -- the slow part), which may
    run elsewhere, on a chunk of records at a time.  No file-wide limit (``max_structures``,
    ``max_file_bytes``) applies: nothing here holds the file.
    """
    path = Path(path)
    reader = _reader_for(path)
    if reader is _iter_xyz_structures:
        yield from _xyz_records(path, _iter_xyz(path, edge, limits))
    else:
        yield from reader(path, edge, limits)  # picklable builds (partials)


def _xyz_records(
    path: Path, frames: Iterable[tuple[str, Callable[[], tuple]]]
) -> Iterator[tuple[str, _XyzFrame | StructureError]]:
    """XYZ frames (``(name, build)``) as records: the frame read, or the error of one that
    cannot be."""
    for name, build in frames:
        try:
            yield name, _XyzFrame(path, *build())
        except StructureError as exc:
            yield name, exc


def count_records(path: str | os.PathLike) -> int:
    """About how many structures a file holds, from a quick pass (for a progress bar's ETA).

    XYZ: frames by their atom-count lines; SDF: ``$$$$`` lines; SMILES: non-blank lines.  A
    damaged file can make it off by a few; nothing is parsed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    n = 0
    with open(path, errors="replace") as fh:
        if suffix == ".xyz":
            skip = 0
            for line in fh:
                if skip:
                    skip -= 1
                elif line.strip() and (atoms := _atom_count(line)) is not None:
                    n += 1
                    skip = atoms + 1
        elif suffix in (".sdf", ".mol"):
            n = sum(line.startswith("$$$$") for line in fh)
        else:
            n = sum(bool(line.strip()) and not line.startswith("#") for line in fh)
    return n


def structures_from_records(
    records: list, edge: str | None = None, limits: StructureLimits = DEFAULT_LIMITS
) -> list[Structure | StructureError]:
    """Records of :func:`read_records` to a :class:`Structure` or the error of each, in order."""
    out: list = [None] * len(records)
    frames = [k for k, r in enumerate(records) if isinstance(r, _XyzFrame | StructureError)]
    for k, result in zip(
        frames, _finish_xyz([records[k] for k in frames], edge, limits), strict=True
    ):
        out[k] = result
    for k, r in enumerate(records):
        if out[k] is None:
            try:
                out[k] = r()
            except StructureError as exc:
                out[k] = exc
    return out


def _returner(result):
    def build():
        if isinstance(result, StructureError):
            raise result
        return result

    return build


def _iter_sdf(
    path: Path, edge: str | None, limits: StructureLimits = DEFAULT_LIMITS
) -> Iterator[tuple[str, Callable[[], Structure]]]:
    from rdkit import Chem

    supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=True)
    yield from _sdf_records(path, supplier, edge, limits)


def _sdf_records(
    path: Path, supplier, edge: str | None, limits: StructureLimits, first: int = 0
) -> Iterator[tuple[str, Callable[[], Structure]]]:
    """The records of an RDKit ``SDMolSupplier`` over ``path`` (or over a range of it whose
    first record is number ``first + 1`` of the file: unnamed ones are ``<stem>_<number>``)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]  # stubs omit rdBase re-export
    try:
        for k in range(len(supplier)):
            mol = supplier[k]
            text = supplier.GetItemText(k)
            title = text.splitlines()[0].strip() if text.strip() else ""
            name = title or f"{path.stem}_{first + k + 1}"
            if mol is None:
                # a record RDKit rejects: find out whether an element or the chemistry is the cause
                raw = Chem.MolFromMolBlock(text, sanitize=False, removeHs=False)
                msg = f"structure {name!r}: unreadable SDF record {first + k + 1}"
                if raw is not None:
                    syms = [a.GetSymbol() for a in raw.GetAtoms()]
                    try:
                        _check_atoms(name, syms, raw.GetConformer().GetPositions(), edge)
                    except StructureError as exc:
                        msg = str(exc)
                    else:
                        msg += " (RDKit rejects its valences)"
                yield name, partial(_refuse, msg)
            else:  # partials, not closures: records that pickle (read_records)
                yield name, partial(structure_from_mol, name, mol, edge, limits)
    finally:
        RDLogger.EnableLog("rdApp.*")  # type: ignore[attr-defined]  # stubs omit rdBase re-export


def _iter_smi(
    path: Path, edge: str | None, limits: StructureLimits = DEFAULT_LIMITS
) -> Iterator[tuple[str, Callable[[], Structure]]]:
    with open(path, "rb") as fh:
        for _offset, _line, name, build in _smi_records(fh, edge, limits):
            yield name, build


def _smi_records(
    fh, edge: str | None, limits: StructureLimits, first_line: int = 0, start: int = 0
) -> Iterator[tuple[int, int, str, Callable[[], Structure]]]:
    """``(byte offset, line index, name, build)`` of each SMILES line of a binary file object
    (a range of a file starting at line ``first_line`` and byte ``start``: names keep the
    file's lines)."""
    pos = start
    for lineno, raw in enumerate(fh, start=first_line + 1):
        offset, pos = pos, pos + len(raw)
        parts = raw.decode("utf-8", "replace").split(None, 1)
        if not parts or parts[0].startswith("#"):
            continue
        if lineno == 1 and parts[0].lower() == "smiles":
            continue  # a header line
        smiles = parts[0]
        name = parts[1].strip() if len(parts) > 1 and parts[1].strip() else f"smi_{lineno}"
        yield offset, lineno - 1, name, partial(structure_from_smiles, smiles, name, edge, limits)


_READERS = {".xyz": _iter_xyz_structures, ".sdf": _iter_sdf, ".mol": _iter_sdf, ".smi": _iter_smi}


def iter_structures(
    path: str | os.PathLike,
    edge: str | None = None,
    skip_invalid: bool = False,
    on_skip: Callable[[StructureError], None] | None = None,
    limits: StructureLimits = DEFAULT_LIMITS,
) -> Iterator[Structure]:
    """Structures of ``path`` one at a time (see :func:`read_structures`)."""
    path = Path(path)
    reader = _reader_for(path)
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise StructureError(
            f"{path.name}: {size / 1024**2:,.1f} MB, over the limit of "
            f"{limits.max_file_bytes / 1024**2:,.1f} MB for a structure file (StructureLimits)"
        )
    count = 0
    for _name, build in reader(path, edge, limits):
        count += 1
        if count > limits.max_structures:
            raise StructureError(
                f"{path.name}: more than {limits.max_structures:,} structures, the limit for "
                "one file (StructureLimits): split it"
            )
        try:
            yield build()
        except StructureError as exc:
            if not skip_invalid:
                raise
            if on_skip is not None:
                on_skip(exc)


def read_structures(
    path: str | os.PathLike,
    edge: str | None = None,
    skip_invalid: bool = False,
    on_skip: Callable[[StructureError], None] | None = None,
    limits: StructureLimits = DEFAULT_LIMITS,
) -> list[Structure]:
    """Read and validate every structure of a file.

    Parameters
    ----------
    path
        Multi-frame XYZ (``.xyz``: line 2 of a frame is the name), SDF (``.sdf``/``.mol``: the
        title line is the name) or SMILES (``.smi``: SMILES, then an optional name; unnamed ones
        are called ``smi_<line>``).
    edge
        ``"O"`` or ``"N"``: a structure without an atom of that element is invalid.
    skip_invalid
        Skip invalid structures (calling ``on_skip`` with each error) instead of raising.
    on_skip
        Called with the :class:`StructureError` of each skipped structure.
    limits
        :class:`StructureLimits`: the file's size and structure count, each structure's atoms.

    Returns
    -------
    list of Structure

    Raises
    ------
    StructureError
        On the first invalid structure (unless ``skip_invalid``), or when the file cannot be read.
        A file that holds no structure at all is an error too, and so is one over ``limits``
        (its size or its count of structures; a structure over the atom limits is one invalid
        structure).
    """
    structures = list(iter_structures(path, edge, skip_invalid, on_skip, limits))
    if not structures and not skip_invalid:
        raise StructureError(f"{Path(path).name}: no structures in the file")
    return structures
