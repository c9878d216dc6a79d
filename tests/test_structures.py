"""Reading and validating structures: real files, real RDKit."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from xas_bluesky.resources import candidates_file
from xas_bluesky.science.structures import (
    StructureError,
    perceive_bonds,
    read_structures,
    structure_from_smiles,
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
