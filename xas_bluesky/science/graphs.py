"""Molecular graphs for the XANES network (PyTorch Geometric ``Data``).

Nodes are the heavy atoms (C, N, O, F); hydrogens enter as each atom's hydrogen count, as in the
molecular graphs of Carbone et al. (2020).  Every node carries five integer codes -- element,
hybridisation, aromaticity, number of hydrogens, absorber flag (an atom of the edge's element) --
that the network embeds; every bond is two directed edges with its type (single, double, triple,
aromatic) and its length in Angstrom, which the network expands in a radial basis.  Every
absorbing atom also carries its 3D surroundings, an element-resolved radial distribution of all
atoms within 6 A (:func:`site_environment`).  Nothing here depends on atom positions other than
through distances, so a graph is invariant to rotation and translation of the molecule, and
renumbering the atoms only renumbers the nodes.

The features come from the bonds with their (Kekule) orders alone, by the rules below, in plain
Python -- the same code for training and prediction, for XYZ input (bonds perceived from the
geometry) and for SDF/SMILES input (bonds from RDKit, kekulised):

hybridisation
    from the steric number, neighbours (hydrogens included) + lone pairs: 2 sp, 3 sp2, 4 sp3; an N
    or O whose lone pair is conjugated (a neighbour has a multiple bond, or the atom is aromatic)
    counts as sp2, as RDKit has it for amides, esters, enols and pyrroles.
aromaticity
    a 5- to 7-membered ring of atoms that can all be conjugated, with 4n+2 pi electrons (1 per
    atom with a double bond in the ring or to an aromatic atom, 2 per N/O lone pair, 0 per C with
    an exocyclic double bond, as in pyridone); repeated until no ring changes, so fused rings do
    not depend on which Kekule structure the bonds came in.

This is an order of magnitude faster than asking RDKit atom by atom (the whole ``predict`` command
runs at thousands of structures per second), and it never imports RDKit: graphs saved with
:func:`save_graphs` load and batch on a machine without it.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import torch
from torch_geometric.data import Data

__all__ = [
    "ELEMENTS",
    "N_HYBRID",
    "MAX_H",
    "BOND_TYPES",
    "ENV_DIM",
    "site_environment",
    "site_environments",
    "GraphArrays",
    "graph_from_bonds",
    "molecule_graph",
    "molecule_graphs",
    "graph_arrays",
    "graph_from_arrays",
    "collate",
    "batch_to_arrays",
    "batch_from_arrays",
    "save_graphs",
    "load_graphs",
]

#: heavy elements the graphs know, in the order of the element code
ELEMENTS = ("C", "N", "O", "F")
#: hybridisation codes: 0 other, 1 sp, 2 sp2, 3 sp3
N_HYBRID = 4
#: hydrogen counts above this share the last code
MAX_H = 4
#: bond type codes
BOND_TYPES = ("single", "double", "triple", "aromatic")

#: absorber environment: element-resolved radial distribution of all atoms (hydrogens included)
#: within ``ENV_CUTOFF`` of each absorbing atom, in Gaussians ``ENV_WIDTH`` wide
ENV_ELEMENTS = ("H", "C", "N", "O", "F")
ENV_CENTRES = np.linspace(0.8, 6.0, 27)
ENV_WIDTH = 0.2
ENV_CUTOFF = 6.0
ENV_DIM = len(ENV_ELEMENTS) * len(ENV_CENTRES)

_ELEMENT_CODE = {e: k for k, e in enumerate(ELEMENTS)}
_ENV_CODE = {e: k for k, e in enumerate(ENV_ELEMENTS)}
_VALENCE_ELECTRONS = {"C": 4, "N": 5, "O": 6, "F": 7}
_STERIC_HYBRID = {2: 1, 3: 2, 4: 3}


class GraphArrays(NamedTuple):
    """A molecular graph as plain arrays (what :func:`graph_from_arrays` puts in a ``Data``).

    ``x`` (n_heavy, 5) integer codes: element, hybridisation, aromatic, H count, absorber;
    ``edge_index`` (2, 2 n_bonds); ``edge_type`` (2 n_bonds,); ``edge_len`` (2 n_bonds,) in
    Angstrom; ``atom_index`` (n_heavy,): each node's atom index in the structure; ``site_env``
    (n_absorbers, ENV_DIM): :func:`site_environment` of the absorbing atoms, in node order;
    ``pos`` (n_heavy, 3) float32: the nodes' coordinates in Angstrom (what a 3D architecture
    reads, :class:`~xas_bluesky.science.model.schnet.XasSchNet`).
    """

    x: np.ndarray
    edge_index: np.ndarray
    edge_type: np.ndarray
    edge_len: np.ndarray
    atom_index: np.ndarray
    site_env: np.ndarray
    pos: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.x)

    def to_data(self) -> Data:
        return graph_from_arrays(*self)


def graph_from_bonds(
    symbols: list[str],
    xyz: np.ndarray,
    pairs,
    orders,
    edge: str,
    charges: list[int] | None = None,
    env: bool = True,
) -> GraphArrays:
    """The graph of a molecule given its bonds.

    Parameters
    ----------
    symbols, xyz
        All atoms (hydrogens included) and their coordinates (Angstrom).
    pairs, orders
        Bonded atom pairs and their Kekule bond orders (1, 2, 3).
    edge
        ``"O"`` or ``"N"``: its atoms get the absorber flag.
    charges
        Formal charges of the atoms (default all 0).
    env
        Compute ``site_env`` (else zeros, for :func:`graph_arrays` to fill in bulk).
    """
    heavy = [i for i, s in enumerate(symbols) if s != "H"]
    node_of = {a: k for k, a in enumerate(heavy)}
    n = len(heavy)
    n_h = [0] * n
    degree = [0] * n
    valence = [0] * n
    pi = [0] * n
    nbrs: list[list[int]] = [[] for _ in range(n)]
    order_of: dict[tuple[int, int], int] = {}
    bonds = []
    for (a, b), o in zip(_tolist(pairs), _tolist(orders), strict=True):
        ka, kb = node_of.get(a), node_of.get(b)
        for k in (ka, kb):
            if k is not None:
                degree[k] += 1
                valence[k] += o
                pi[k] += o - 1
        if ka is None:
            if kb is not None:
                n_h[kb] += 1
        elif kb is None:
            n_h[ka] += 1
        else:
            bonds.append((ka, kb, o))
            nbrs[ka].append(kb)
            nbrs[kb].append(ka)
            order_of[(ka, kb)] = order_of[(kb, ka)] = o
    sym = [symbols[a] for a in heavy]
    charge = [0] * n if charges is None else [int(charges[a]) for a in heavy]
    lone = [max(0, (_VALENCE_ELECTRONS[sym[k]] - charge[k] - valence[k]) // 2) for k in range(n)]
    aromatic, arom_bonds = _aromaticity(n, sym, nbrs, order_of, pi, lone)
    rows = []
    for k in range(n):
        hyb = _STERIC_HYBRID.get(degree[k] + lone[k], 0)
        if hyb == 3 and lone[k] and sym[k] in "NO" and (aromatic[k] or any(pi[j] for j in nbrs[k])):
            hyb = 2  # a conjugated lone pair
        if aromatic[k]:
            hyb = 2
        rows.append(
            (_ELEMENT_CODE[sym[k]], hyb, aromatic[k], min(n_h[k], MAX_H), int(sym[k] == edge))
        )
    src: list[int]
    dst: list[int]
    btype: list[int]
    src, dst, btype = [], [], []
    for u, v, o in bonds:
        t = 3 if (u, v) in arom_bonds else o - 1
        src += (u, v)
        dst += (v, u)
        btype += (t, t)
    heavy_idx = np.asarray(heavy, dtype=np.int64)
    ei = np.array([src, dst], dtype=np.int64).reshape(2, -1)
    pos = np.asarray(xyz, dtype=np.float64)[heavy_idx]
    diff = pos[ei[0]] - pos[ei[1]]
    lengths = np.sqrt(np.einsum("ij,ij->i", diff, diff)).astype(np.float32)
    x = np.array(rows, dtype=np.int64).reshape(n, 5)
    sites = heavy_idx[x[:, 4] == 1]
    site_env = (
        site_environment(symbols, xyz, sites)
        if env
        else np.zeros((len(sites), ENV_DIM), dtype=np.float32)
    )
    return GraphArrays(
        x,
        ei,
        np.array(btype, dtype=np.int64),
        lengths,
        heavy_idx,
        site_env,
        pos.astype(np.float32).reshape(n, 3),
    )


def site_environment(symbols: list[str], xyz: np.ndarray, sites) -> np.ndarray:
    """The 3D surroundings of absorbing atoms, shape (n_sites, ENV_DIM), float32.

    For each site and each element (H, C, N, O, F), the sum over that element's atoms within
    6 A of ``exp(-((r - r_k) / 0.2)^2)`` at 27 radii ``r_k`` from 0.8 to 6 A, smoothly cut off:
    the element-resolved radial distribution that XANES descriptors such as XANESNET's use
    (Rankine, Madkhali, Penfold, J. Phys. Chem. A 124, 4263 (2020)).  The bond graph alone does
    not see hydrogens' positions or atoms that are close in space but far along the bonds, both
    of which FEFF's multiple-scattering cluster does.  Distances only: invariant to rotation,
    translation and atom order.
    """
    return site_environments([(symbols, xyz, sites)])[0]


def site_environments(molecules, block: int = 512) -> list[np.ndarray]:
    """:func:`site_environment` of many ``(symbols, xyz, sites)`` at once (padded arrays: the
    per-call cost of NumPy, not the arithmetic, dominates for QM9-size molecules).

    Molecules go by size, at most ``block`` at a time and at most ``_ENV_PAIRS`` (site, atom)
    pairs of padded work, so that one large molecule pads only molecules of about its size."""
    order = sorted(range(len(molecules)), key=lambda m: len(molecules[m][0]))
    out: list[np.ndarray] = [np.zeros((0, ENV_DIM), dtype=np.float32)] * len(molecules)
    k = 0
    while k < len(order):
        j, sites = k, 0
        while j < len(order) and j - k < block:
            more = sites + len(molecules[order[j]][2])
            if j > k and more * len(molecules[order[j]][0]) > _ENV_PAIRS:
                break
            sites, j = more, j + 1
        part = order[k:j]
        for i, env in zip(part, _site_environments([molecules[i] for i in part]), strict=True):
            out[i] = env
        k = j
    return out


#: (site, atom) pairs of one padded block of :func:`site_environments`: ~15 MB of Gaussians
_ENV_PAIRS = 65536


def _site_environments(molecules) -> list[np.ndarray]:
    n_atoms = [len(sym) for sym, _, _ in molecules]
    n_sites = [len(sites) for _, _, sites in molecules]
    total = sum(n_sites)
    if not total:
        return [np.zeros((0, ENV_DIM), dtype=np.float32) for _ in molecules]
    width = max(n_atoms)
    pos = np.full((len(molecules), width, 3), 1e6)  # padding: far beyond the cut-off
    code = np.zeros((len(molecules), width), dtype=np.int64)
    for m, (sym, xyz, _) in enumerate(molecules):
        pos[m, : len(sym)] = xyz
        code[m, : len(sym)] = [_ENV_CODE[e] for e in sym]
    mol = np.repeat(np.arange(len(molecules)), n_sites)
    site = np.concatenate([np.asarray(s, dtype=np.int64) for _, _, s in molecules if len(s)])
    diff = pos[mol] - pos[mol, site][:, None, :]  # (total, width, 3)
    d = np.sqrt(np.einsum("saj,saj->sa", diff, diff))
    cut = np.where((d > 0.1) & (d < ENV_CUTOFF), 0.5 * (np.cos(np.pi * d / ENV_CUTOFF) + 1), 0.0)
    g = np.exp(-(((d[..., None] - ENV_CENTRES) / ENV_WIDTH) ** 2)) * cut[..., None]
    onehot = (code[mol][:, None, :] == np.arange(len(ENV_ELEMENTS))[None, :, None]).astype(float)
    env = np.matmul(onehot, g).reshape(total, ENV_DIM).astype(np.float32)
    return np.split(env, np.cumsum(n_sites)[:-1])


def _tolist(a) -> list:
    return a.tolist() if hasattr(a, "tolist") else list(a)


def _aromaticity(n, sym, nbrs, order_of, pi, lone) -> tuple[list[int], set]:
    """Aromatic atoms (0/1 each) and aromatic bonds (both directions), by the rule above."""
    aromatic = [0] * n
    arom_bonds: set[tuple[int, int]] = set()
    # atoms that can be part of a conjugated ring: one double bond, or an N/O lone pair
    cand = {
        k
        for k in range(n)
        if len(nbrs[k]) >= 2
        and (
            (pi[k] == 1 and all(order_of[(k, j)] != 3 for j in nbrs[k]))
            or (pi[k] == 0 and lone[k] and sym[k] in "NO")
        )
    }
    if len(cand) < 5:
        return aromatic, arom_bonds
    rings = _rings(cand, nbrs)
    if not rings:
        return aromatic, arom_bonds
    changed = True
    done: set[int] = set()
    while changed:
        changed = False
        for r, ring in enumerate(rings):
            if r in done:
                continue
            members = set(ring)
            electrons = 0
            for k in ring:
                if pi[k] == 1:
                    partner = next(j for j in nbrs[k] if order_of[(k, j)] == 2)
                    if partner in members or aromatic[partner]:
                        electrons += 1
                    elif sym[k] != "C":  # an exocyclic C=X gives 0, as in pyridone
                        electrons = -1
                        break
                else:
                    electrons += 2
            if electrons > 0 and electrons % 4 == 2:
                done.add(r)
                changed = True
                for i, k in enumerate(ring):
                    aromatic[k] = 1
                    j = ring[(i + 1) % len(ring)]
                    arom_bonds.add((k, j))
                    arom_bonds.add((j, k))
    return aromatic, arom_bonds


def _rings(cand: set[int], nbrs: list[list[int]], sizes: tuple[int, int] = (5, 7)) -> list[tuple]:
    """Simple cycles of ``sizes[0]``..``sizes[1]`` atoms within ``cand``, each once."""
    found: dict[frozenset, tuple] = {}
    for start in sorted(cand):
        stack: list[tuple[int, tuple[int, ...]]] = [(start, (start,))]
        while stack:
            node, path = stack.pop()
            for nb in nbrs[node]:
                if nb == start and len(path) >= sizes[0]:
                    found.setdefault(frozenset(path), path)
                elif nb > start and nb in cand and nb not in path and len(path) < sizes[1]:
                    stack.append((nb, (*path, nb)))
    return sorted(found.values())


def molecule_graph(structure, edge: str) -> Data:
    """The graph of a structure for ``edge``'s K edge, as a ``torch_geometric`` ``Data``.

    Parameters
    ----------
    structure : Structure
        Anything with ``symbols``, ``xyz`` and either perceived ``bonds`` or an RDKit ``mol``
        (atom order = ``symbols``).
    edge : str
        ``"O"`` or ``"N"``: its atoms get the absorber flag.

    Returns
    -------
    torch_geometric.data.Data
        ``x``, ``edge_index``, ``edge_type``, ``edge_len``, ``atom_index``, ``site_env`` as in
        :class:`GraphArrays`.
    """
    return _graph(structure, edge).to_data()


def _graph(structure, edge: str, env: bool = True) -> GraphArrays:
    bonds = getattr(structure, "bonds", None)
    if bonds is not None:
        return graph_from_bonds(structure.symbols, structure.xyz, bonds[0], bonds[1], edge, env=env)
    from rdkit import Chem

    mol = Chem.Mol(structure.mol)
    Chem.Kekulize(mol, clearAromaticFlags=True)
    pairs, orders = [], []
    for b in mol.GetBonds():
        pairs.append((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))
        orders.append(int(round(b.GetBondTypeAsDouble())))
    charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
    return graph_from_bonds(structure.symbols, structure.xyz, pairs, orders, edge, charges, env)


def molecule_graphs(structures, edge: str) -> list[Data]:
    """:func:`molecule_graph` of every structure."""
    return [g.to_data() for g in graph_arrays(structures, edge)]


def graph_arrays(structures, edge: str) -> list[GraphArrays]:
    """The graphs of ``structures`` as :class:`GraphArrays` (cheaper than ``Data`` to batch)."""
    graphs = [_graph(s, edge, env=False) for s in structures]
    envs = site_environments(
        [
            (s.symbols, s.xyz, g.atom_index[g.x[:, 4] == 1])
            for s, g in zip(structures, graphs, strict=True)
        ]
    )
    return [g._replace(site_env=e) for g, e in zip(graphs, envs, strict=True)]


def graph_from_arrays(
    x: np.ndarray,
    edge_index: np.ndarray,
    edge_type: np.ndarray,
    edge_len: np.ndarray,
    atom_index: np.ndarray,
    site_env: np.ndarray,
    pos: np.ndarray,
) -> Data:
    """A ``Data`` from a graph's arrays (see :class:`GraphArrays`)."""
    return Data(
        x=torch.as_tensor(x, dtype=torch.long),
        edge_index=torch.as_tensor(edge_index, dtype=torch.long).reshape(2, -1),
        edge_type=torch.as_tensor(edge_type, dtype=torch.long),
        edge_len=torch.as_tensor(edge_len, dtype=torch.float32),
        atom_index=torch.as_tensor(atom_index, dtype=torch.long),
        site_env=torch.as_tensor(site_env, dtype=torch.float32).reshape(-1, ENV_DIM),
        pos=torch.as_tensor(pos, dtype=torch.float32).reshape(-1, 3),
        num_nodes=len(x),
    )


def collate(graphs: list) -> Data:
    """Join graphs (``Data`` or :class:`GraphArrays`) into one disconnected graph.

    Adds ``batch`` (node -> graph) and ``num_graphs``; no PyG ``Batch`` bookkeeping, so it is
    cheap for thousands of small graphs.
    """
    if graphs and isinstance(graphs[0], GraphArrays):
        return _collate_arrays(graphs)
    sizes = torch.tensor([g.num_nodes for g in graphs], dtype=torch.long)
    offsets = torch.cumsum(sizes, 0) - sizes
    n_edges = torch.tensor([g.edge_index.shape[1] for g in graphs], dtype=torch.long)
    ei = torch.cat([g.edge_index for g in graphs], dim=1)
    ei = ei + torch.repeat_interleave(offsets, n_edges)
    out = Data(
        x=torch.cat([g.x for g in graphs]),
        edge_index=ei,
        edge_type=torch.cat([g.edge_type for g in graphs]),
        edge_len=torch.cat([g.edge_len for g in graphs]),
        atom_index=torch.cat([g.atom_index for g in graphs]),
        site_env=torch.cat([g.site_env for g in graphs]),
        pos=torch.cat([g.pos for g in graphs]),
        batch=torch.repeat_interleave(torch.arange(len(graphs)), sizes),
        num_nodes=int(sizes.sum()),
    )
    out.num_graphs = len(graphs)
    return out


def _collate_arrays(graphs: list[GraphArrays]) -> Data:
    sizes = np.fromiter((len(g.x) for g in graphs), dtype=np.int64, count=len(graphs))
    n_edges = np.fromiter(
        (g.edge_index.shape[1] for g in graphs), dtype=np.int64, count=len(graphs)
    )
    offsets = np.cumsum(sizes) - sizes
    ei = np.concatenate([g.edge_index for g in graphs], axis=1) + np.repeat(offsets, n_edges)
    out = Data(
        x=torch.from_numpy(np.concatenate([g.x for g in graphs])),
        edge_index=torch.from_numpy(ei),
        edge_type=torch.from_numpy(np.concatenate([g.edge_type for g in graphs])),
        edge_len=torch.from_numpy(np.concatenate([g.edge_len for g in graphs]).astype(np.float32)),
        atom_index=torch.from_numpy(np.concatenate([g.atom_index for g in graphs])),
        site_env=torch.from_numpy(
            np.concatenate([g.site_env for g in graphs]).astype(np.float32, copy=False)
        ),
        pos=torch.from_numpy(
            np.concatenate([g.pos for g in graphs]).astype(np.float32, copy=False)
        ),
        batch=torch.from_numpy(np.repeat(np.arange(len(graphs)), sizes)),
        num_nodes=int(sizes.sum()),
    )
    out.num_graphs = len(graphs)
    return out


_BATCH_KEYS = (*GraphArrays._fields, "batch")


def batch_to_arrays(batch: Data) -> dict[str, np.ndarray]:
    """A collated batch as a dict of NumPy arrays: a few large arrays that pickle fast, to hand a
    batch to another process."""
    out = {k: batch[k].numpy() for k in _BATCH_KEYS}
    out["num_graphs"] = np.int64(batch.num_graphs)
    return out


def batch_from_arrays(arrays: dict[str, np.ndarray]) -> Data:
    """The inverse of :func:`batch_to_arrays`."""
    out = Data(
        **{k: torch.from_numpy(arrays[k]) for k in _BATCH_KEYS},
        num_nodes=len(arrays["x"]),
    )
    out.num_graphs = int(arrays["num_graphs"])
    return out


def _as_arrays(g) -> GraphArrays:
    if isinstance(g, GraphArrays):
        return g
    return GraphArrays(*(getattr(g, k).numpy() for k in GraphArrays._fields))


def save_graphs(path: str | os.PathLike, graphs: list, names: list[str], edge: str) -> None:
    """Save prebuilt graphs (for a machine without RDKit: see ``benchmarks/inference.py``)."""
    arrays = [_as_arrays(g) for g in graphs]
    blob: dict[str, object] = {"edge": edge, "names": list(names)}
    for k in GraphArrays._fields:
        blob[k] = [torch.from_numpy(np.ascontiguousarray(getattr(g, k))) for g in arrays]
    torch.save(blob, path)


def load_graphs(path: str | os.PathLike) -> tuple[list[GraphArrays], list[str], str]:
    """Graphs (as :class:`GraphArrays`), names and edge saved by :func:`save_graphs`."""
    blob = torch.load(path, weights_only=True)
    missing = [k for k in GraphArrays._fields if k not in blob]
    if missing:
        raise ValueError(
            f"{path}: graph file without {', '.join(missing)} (saved by an older version): "
            "rebuild it with save_graphs (benchmarks/inference.py --save-graphs)"
        )
    cols = [[t.numpy() for t in blob[k]] for k in GraphArrays._fields]
    return [GraphArrays(*row) for row in zip(*cols, strict=True)], blob["names"], blob["edge"]
