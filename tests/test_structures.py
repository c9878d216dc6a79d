"""Reading and validating structures: real files, real RDKit."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from xas_bluesky.resources import candidates_file
from xas_bluesky.science.graphs import molecule_graph
from xas_bluesky.science.structures import (
    StructureError,
    StructureLimits,
    perceive_bonds,
    read_structures,
    structure_from_mol,
    structure_from_smiles,
    structure_from_xyz,
)

ETHANOL = """9
ethanol
C\t-0.0487\t-0.4153\t0.0000
C 1.4588D+00 -0.4016e0 0.0000
O  1.9155 0.9398 0.0000
H -0.4190 -1.4437 0.0000
H -0.4221 0.0924 0.8873
H -0.4221 0.0924 -0.8873
H 1.8186 -0.9239 0.8904
H 1.8186 -0.9239 -0.8904
H 2.8795 0.9053 0.0000
"""

ACETONITRILE = """6
acetonitrile
C 0.0000 0.0000 -1.4507
C 0.0000 0.0000 0.0085
N 0.0000 0.0000 1.1683
H 1.0279 0.0000 -1.8204
H -0.5140 0.8902 -1.8204
H -0.5140 -0.8902 -1.8204
"""


def test_xyz_multiframe_wild_formatting(tmp_path):
    path = tmp_path / "mols.xyz"
    path.write_text("\n" + ETHANOL + "\n\n" + ACETONITRILE + "\n\n\n")
    structs = read_structures(path)
    assert [s.name for s in structs] == ["ethanol", "acetonitrile"]
    eth, acn = structs
    assert eth.symbols[:3] == ["C", "C", "O"] and eth.xyz.shape == (9, 3)
    assert eth.xyz[1, 0] == pytest.approx(1.4588)  # Fortran D exponent
    assert eth.smiles == "CCO" and acn.smiles == "CC#N"
    assert eth.in_domain and eth.domain_notes == []
    # bonds with orders on the RDKit molecule, hydrogens kept in input order
    bond = acn.mol.GetBondBetweenAtoms(1, 2)
    assert bond.GetBondType() == Chem.BondType.TRIPLE
    assert acn.mol.GetNumAtoms() == 6 and acn.mol.GetAtomWithIdx(3).GetSymbol() == "H"
    assert eth.sites("O") == [2] and acn.sites("O") == []


def test_edge_without_absorber_is_an_error(tmp_path):
    path = tmp_path / "mols.xyz"
    path.write_text(ETHANOL + ACETONITRILE)
    with pytest.raises(StructureError) as err:
        read_structures(path, edge="O")
    msg = str(err.value)
    assert "acetonitrile" in msg and "no O atom" in msg and "\n" not in msg
    skipped = []
    structs = read_structures(path, edge="O", skip_invalid=True, on_skip=skipped.append)
    assert [s.name for s in structs] == ["ethanol"]
    assert len(skipped) == 1 and "acetonitrile" in str(skipped[0])


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("3\nbad_element\nO 0 0 0\nCl 1.6 0 0\nH -0.9 0.3 0\n", "element Cl is not one"),
        ("3\ntoo_close\nO 0 0 0\nH 0.3 0 0\nH -0.9 0.3 0\n", "atoms 1 and 2 are 0.30 A apart"),
        ("3\nnan_coords\nO 0 0 0\nH nan 0 0\nH -0.9 0.3 0\n", "NaN"),
        ("5\ntruncated\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n", "truncated frame, 5 atoms"),
        ("x\nnot_a_count\nO 0 0 0\n", "expected an atom count"),
    ],
)
def test_invalid_xyz(tmp_path, text, needle):
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    with pytest.raises(StructureError, match=needle) as err:
        read_structures(path, edge="O")
    assert "\n" not in str(err.value)


WATER = "3\n{}\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"


def test_xyz_frame_with_too_many_atom_lines_is_one_bad_structure(tmp_path):
    """A frame announcing 2 atoms with 3 atom lines fails on its own, named, and reading goes on
    at the next frame; an earlier bad frame's error still comes first."""
    bad = "2\nbadcount\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"
    path = tmp_path / "count.xyz"
    path.write_text(WATER.format("water_a") + bad + "\n" + WATER.format("water_b"))
    with pytest.raises(StructureError) as err:
        read_structures(path, edge="O")
    msg = str(err.value)
    assert "'badcount'" in msg and "frame 2" in msg and "line 6" in msg and "\n" not in msg
    assert "3 atom lines where 2 were announced" in msg
    skipped = []
    structs = read_structures(path, edge="O", skip_invalid=True, on_skip=skipped.append)
    assert [s.name for s in structs] == ["water_a", "water_b"]
    assert [str(e) for e in skipped] == [msg]
    # the errors come in file order: the bad frame after a too-close one does not hide it
    too_close = "3\ntoo_close\nO 0 0 0\nH 0.2 0 0\nH -0.9 0.3 0\n"
    path.write_text(WATER.format("water_a") + too_close + bad + WATER.format("water_b"))
    with pytest.raises(StructureError, match="'too_close': atoms 1 and 2"):
        read_structures(path, edge="O")
    skipped.clear()
    structs = read_structures(path, edge="O", skip_invalid=True, on_skip=skipped.append)
    assert [s.name for s in structs] == ["water_a", "water_b"] and len(skipped) == 2


def test_xyz_junk_between_frames_is_skipped_alone(tmp_path):
    path = tmp_path / "junk.xyz"
    junk, footer = "some words that are not a frame\n", "end of the file here\n"
    path.write_text(WATER.format("water_a") + junk + WATER.format("water_b") + footer)
    skipped = []
    structs = read_structures(path, edge="O", skip_invalid=True, on_skip=skipped.append)
    assert [s.name for s in structs] == ["water_a", "water_b"]
    assert len(skipped) == 2 and all("expected an atom count" in str(e) for e in skipped)
    assert "line 6" in str(skipped[0]) and "frame 2" in str(skipped[0])


def _water_cluster(n: int) -> str:
    """``n`` water molecules 3.1 A apart on a cubic grid, as one XYZ frame."""
    side = int(np.ceil(n ** (1 / 3)))
    lines = [str(3 * n), f"cluster_{n}"]
    for i, j, k in list(np.ndindex(side, side, side))[:n]:
        x, y, z = 3.1 * i, 3.1 * j, 3.1 * k
        lines += [f"O {x} {y} {z}", f"H {x + 0.96} {y} {z}", f"H {x - 0.24} {y + 0.93} {z}"]
    return "\n".join(lines) + "\n"


def test_one_large_xyz_frame_costs_only_its_own_work(tmp_path):
    """A 300-atom frame among QM9-size ones is read on its own: flagged out of domain, the
    others as read without it, and no padding of them to 300 atoms (hundreds of MB before)."""
    import tracemalloc

    lines = candidates_file("O").read_text().splitlines()
    frames, k = [], 0
    for _ in range(200):
        n = int(lines[k])
        frames.append("\n".join(lines[k : k + 2 + n]) + "\n")
        k += 2 + n
    small, big = tmp_path / "small.xyz", tmp_path / "big.xyz"
    small.write_text("".join(frames))
    big.write_text("".join(frames[:100]) + _water_cluster(100) + "".join(frames[100:]))
    tracemalloc.start()
    try:
        structs = read_structures(big, edge="O")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    cluster = structs.pop(100)
    assert cluster.name == "cluster_100" and len(cluster.symbols) == 300
    assert not cluster.in_domain
    assert cluster.domain_notes == ["100 heavy atoms (trained on <= 9)", "100 fragments"]
    assert len(cluster.bonds[0]) == 200 and (cluster.bonds[1] == 1).all()
    alone = read_structures(small, edge="O")
    assert [s.name for s in structs] == [s.name for s in alone]
    for a, b in zip(structs, alone, strict=True):
        assert (a.in_domain, a.domain_notes, a.smiles) == (b.in_domain, b.domain_notes, b.smiles)
    assert peak < 100e6


def test_smiles_file(tmp_path):
    path = tmp_path / "mols.smi"
    path.write_text("CC(=O)N acetamide\n\nOCC\nnot_a_smiles broken\n")
    with pytest.raises(StructureError, match="'broken': unparsable SMILES"):
        read_structures(path, edge="O")
    errors = []
    structs = read_structures(path, edge="O", skip_invalid=True, on_skip=errors.append)
    assert [s.name for s in structs] == ["acetamide", "smi_3"]
    assert len(errors) == 1
    acetamide = structs[0]
    assert acetamide.smiles == "CC(N)=O"
    assert acetamide.mol.GetConformer().Is3D() and len(acetamide.symbols) == 9
    # seeded embedding: the same file gives the same geometry
    again = read_structures(path, edge="O", skip_invalid=True)[0]
    np.testing.assert_allclose(again.xyz, acetamide.xyz)
    # a real 3D geometry: the C=O bond is where MMFF puts it
    assert 1.18 < np.linalg.norm(acetamide.xyz[1] - acetamide.xyz[2]) < 1.30


def test_sdf_file(tmp_path):
    path = tmp_path / "mols.sdf"
    writer = Chem.SDWriter(str(path))
    for smi, name in (("OC1=CC=CC=C1", "phenol"), ("N#CC=O", "formyl cyanide")):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(mol, randomSeed=1)
        mol.SetProp("_Name", name)
        writer.write(mol)
    writer.close()
    structs = read_structures(path, edge="N", skip_invalid=True)
    assert [s.name for s in structs] == ["formyl cyanide"]
    phenol = read_structures(path)[0]
    assert phenol.name == "phenol" and phenol.smiles == "Oc1ccccc1"
    assert sum(a.GetIsAromatic() for a in phenol.mol.GetAtoms()) == 6


def test_out_of_domain_is_flagged_not_rejected():
    big = structure_from_smiles("CCCCCCCCCCO", "decanol", edge="O")
    assert not big.in_domain and "11 heavy atoms" in big.domain_notes[0]
    charged = structure_from_smiles("CC(=O)[O-]", "acetate", edge="O")
    assert not charged.in_domain and any("charged" in n for n in charged.domain_notes)
    ok = structure_from_smiles("CC(=O)O", "acetic acid", edge="O")
    assert ok.in_domain


def test_smiles_fragments_are_embedded_apart_and_flagged():
    s = structure_from_smiles("CCO.O", "ethanol water", edge="O")
    assert not s.in_domain and "2 fragments" in s.domain_notes
    assert s.symbols == [a.GetSymbol() for a in s.mol.GetAtoms()]
    assert s.symbols[:4] == ["C", "C", "O", "O"]
    frag_of = np.zeros(len(s.symbols), dtype=int)
    for f, atoms in enumerate(Chem.GetMolFrags(s.mol)):
        frag_of[list(atoms)] = f
    d = np.linalg.norm(s.xyz[:, None] - s.xyz[None], axis=-1)
    assert d[frag_of[:, None] != frag_of[None, :]].min() > 8.0  # beyond the 6 A surroundings
    assert 1.35 < d[1, 2] < 1.50  # each fragment a real geometry
    # the graph: ethanol's nodes and a water's, as for the molecules on their own
    x = molecule_graph(s, "O").x.tolist()
    assert x == molecule_graph(structure_from_smiles("CCO"), "O").x.tolist() + [[2, 3, 0, 2, 1]]
    pair = structure_from_smiles("O.O", edge="O")
    assert not pair.in_domain and len(pair.symbols) == 6


def test_dative_bond_is_read_charge_separated_and_flagged():
    dative = structure_from_smiles("C[N](C)(C)->O", "TMAO", edge="O")
    charged = structure_from_smiles("C[N+](C)(C)[O-]", "TMAO", edge="O")
    assert not dative.in_domain and any("dative bond" in n for n in dative.domain_notes)
    assert dative.smiles == "C[N+](C)(C)[O-]" and len(dative.symbols) == 14  # no H on the O
    assert molecule_graph(dative, "O").x.tolist() == molecule_graph(charged, "O").x.tolist()


def test_zero_order_bond_is_left_out_and_flagged():
    mol = Chem.RWMol(Chem.MolFromSmiles("O.O"))
    mol.AddBond(0, 1, Chem.BondType.ZERO)
    s = structure_from_mol("water dimer", mol.GetMol(), edge="O")
    assert not s.in_domain and "zero-order bond 1-2 (left out)" in s.domain_notes
    assert s.mol.GetNumBonds() == 4 and len(s.symbols) == 6


@pytest.mark.parametrize(("smiles", "kind"), [("C$C", "QUADRUPLE"), ("C~C", "UNSPECIFIED")])
def test_unsupported_smiles_bond_is_an_error(smiles, kind):
    with pytest.raises(StructureError, match=f"bond 1-2 has a query or unsupported.*{kind}"):
        structure_from_smiles(smiles)


def test_sdf_query_bond_is_named(tmp_path):
    """An SDF 'any' bond (type 8) gets no hydrogens stacked on its atoms: a clear error."""
    path = tmp_path / "mols.sdf"
    blocks = []
    for smi, name in (("CC(=O)OC", "querybond"), ("CCO", "ethanol")):
        mol = Chem.MolFromSmiles(smi)  # hydrogens implicit, as in many SDF files
        AllChem.EmbedMolecule(mol, randomSeed=1)
        mol.SetProp("_Name", name)
        lines = Chem.MolToMolBlock(mol).splitlines()
        if name == "querybond":
            row = 4 + mol.GetNumAtoms() + mol.GetBondBetweenAtoms(1, 3).GetIdx()
            lines[row] = lines[row][:6] + "  8" + lines[row][9:]
        blocks.append("\n".join(lines) + "\n$$$$\n")
    path.write_text("".join(blocks))
    with pytest.raises(StructureError) as err:
        read_structures(path, edge="O")
    msg = str(err.value)
    assert "'querybond'" in msg and "bond 2-4" in msg and "SDF bond type 8" in msg
    assert [s.name for s in read_structures(path, edge="O", skip_invalid=True)] == ["ethanol"]


def test_bond_perception_matches_qm9_smiles():
    """Bonds from the DFT geometry reproduce QM9's own SMILES (stereo aside) for the data set."""
    from xas_bluesky.science import dataset
    from xas_bluesky.science.structures import structure_from_xyz

    mols = dataset.load_molecules(dataset.default_data_files(), "N")
    assert len(mols) > 300

    def flat(smiles: str) -> str:
        return Chem.MolToSmiles(Chem.MolFromSmiles(smiles), isomericSmiles=False)

    agree = sum(
        flat(structure_from_xyz(m.name, m.symbols, m.xyz).smiles) == flat(m.smiles) for m in mols
    )
    assert agree >= 0.995 * len(mols)


def test_candidate_library_reads_in_domain():
    structs = read_structures(candidates_file("O"), edge="O")
    assert len(structs) >= 500
    assert sum(s.in_domain for s in structs) >= 0.98 * len(structs)


def test_perceive_bonds_kekule_and_strained_rings():
    # benzene: six C-C bonds, alternating orders that fill every valence
    ring = np.array([[np.cos(a), np.sin(a), 0.0] for a in np.arange(6) * np.pi / 3]) * 1.39
    hs = ring * (1 + 1.09 / 1.39)
    pairs, orders = perceive_bonds(["C"] * 6 + ["H"] * 6, np.vstack([ring, hs]))
    cc = [o for (a, b), o in zip(pairs, orders, strict=True) if a < 6 and b < 6]
    assert len(cc) == 6 and sorted(cc) == [1, 1, 1, 2, 2, 2]
    # a nitro group cannot be filled with neutral valences: None (RDKit's charged perception)
    s = structure_from_smiles("C[N+](=O)[O-]", "nitromethane")
    _, orders = perceive_bonds(s.symbols, s.xyz)
    assert orders is None


def test_a_conjugated_system_deeper_than_the_recursion_limit_is_flagged_not_fatal():
    # the bond-order search recurses once per double bond: a polyene of ~2,000 carbons passed
    # Python's limit; the limit is set here 120 frames above the caller's to reach it with 401
    import inspect
    import sys

    n = 401  # C0H2=C1H-...=C399H-C400H=O
    symbols, xyz = [], []
    for k in range(n):
        x, y = k * 1.21, 0.0 if k % 2 == 0 else 0.70
        symbols += ["C", "H"]
        xyz += [[x, y, 0.0], [x, y - 1.09 if k % 2 == 0 else y + 1.09, 0.0]]
    symbols += ["H", "O"]
    xyz += [[-0.95, 0.55, 0.0], [n * 1.21 - 0.1, 0.70, 0.0]]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack(0)) + 120)
    try:
        big = StructureLimits(max_atoms=1000)  # 804 atoms: over the default limit of 500
        s = structure_from_xyz("polyene", symbols, np.array(xyz), "O", big)
    finally:
        sys.setrecursionlimit(limit)
    assert not s.in_domain and "402 heavy atoms" in s.domain_notes[0]


# -- bounds: a candidate file named in a start document must not take the process down ---------
@pytest.mark.parametrize("waters", [1000, 4000])
def test_a_structure_over_the_atom_limit_is_refused_in_one_line(tmp_path, waters):
    """A 3,000-atom frame (2 GB before) and a 12,000-atom one (MemoryError at a 6 GB cap): one
    invalid structure each, refused before any distance is computed; the file's other frames are
    read."""
    import time
    import tracemalloc

    path = tmp_path / "big.xyz"
    path.write_text(ETHANOL + _water_cluster(waters) + ACETONITRILE)
    skipped: list[StructureError] = []
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        structs = read_structures(path, skip_invalid=True, on_skip=skipped.append)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5
    assert [s.name for s in structs] == ["ethanol", "acetonitrile"]
    (err,) = skipped
    assert str(err) == (
        f"structure 'cluster_{waters}': {3 * waters:,} atoms, over the limit of 500 "
        "(StructureLimits)"
    )
    assert peak < 50e6
    with pytest.raises(StructureError, match="over the limit of 500"):
        read_structures(path)


def test_a_large_smiles_is_refused_before_embedding():
    """HO(CH2)39OH: 121 atoms with hydrogens, over the 100 atoms that may be embedded in 3D
    (ETKDG + MMFF took 25 s for a 121-atom SMILES); refused at once, with the limit named."""
    import time

    smiles = "O" + "C" * 39 + "O"
    t0 = time.perf_counter()
    with pytest.raises(StructureError) as info:
        structure_from_smiles(smiles, "long", edge="O")
    assert time.perf_counter() - t0 < 1
    assert str(info.value) == (
        "structure 'long': 121 atoms to embed in 3D, over the limit of 100 (StructureLimits)"
    )
    assert "\n" not in str(info.value)
    # configurable: a smaller molecule under a smaller limit
    with pytest.raises(StructureError, match="9 atoms to embed in 3D, over the limit of 8"):
        structure_from_smiles("CCO", edge="O", limits=StructureLimits(max_embed_atoms=8))


def test_file_size_and_structure_count_limits(tmp_path):
    path = tmp_path / "two.xyz"
    path.write_text(ETHANOL + ACETONITRILE)
    with pytest.raises(StructureError, match=r"two.xyz: 0.0 MB, over the limit of 0.0 MB"):
        read_structures(path, limits=StructureLimits(max_file_bytes=100))
    with pytest.raises(StructureError, match="more than 1 structures, the limit for one file"):
        read_structures(path, skip_invalid=True, limits=StructureLimits(max_structures=1))
    assert len(read_structures(path, limits=StructureLimits(max_structures=2))) == 2
