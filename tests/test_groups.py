"""Functional groups (SMARTS labels, probabilities) and the in_library test of the open-world
analysis."""

from __future__ import annotations

import numpy as np
import pytest

from xas_bluesky.contracts import GROUPS
from xas_bluesky.science.groups import (
    OTHER,
    SITE_RULES,
    GroupLibrary,
    group_matrix,
    groups_of,
    site_groups,
)

# --------------------------------------------------------------------------- SMARTS labels

LABELS = [
    # (SMILES, edge, the molecule's groups)
    ("CC(C)=O", "O", {"carbonyl"}),  # acetone
    ("CC=O", "O", {"carbonyl"}),  # acetaldehyde
    ("CC(=O)O", "O", {"carboxyl"}),  # acetic acid
    ("CC(=O)OC", "O", {"carboxyl"}),  # methyl acetate
    ("CCO", "O", {"alcohol"}),  # ethanol
    ("Oc1ccccc1", "O", {"alcohol"}),  # phenol
    ("CCOCC", "O", {"ether"}),  # diethyl ether
    ("C1CO1", "O", {"ether"}),  # oxirane
    ("c1ccoc1", "O", {"aromatic-O"}),  # furan
    ("CC(N)=O", "O", {"amide"}),  # acetamide
    ("NC(N)=O", "O", {"amide"}),  # urea
    ("COC(N)=O", "O", {"carbamate"}),  # methyl carbamate
    ("COC(=O)OC", "O", {"carbonate"}),  # dimethyl carbonate
    ("CC=NO", "O", {"N-O"}),  # acetaldoxime
    ("OCC(=O)C", "O", {"alcohol", "carbonyl"}),  # hydroxyacetone: a mixture
    ("CC(N)=O", "N", {"amide"}),  # acetamide
    ("CN", "N", {"amine"}),  # methylamine
    ("CN(C)C", "N", {"amine"}),  # trimethylamine
    ("Nc1ccccc1", "N", {"amine"}),  # aniline
    ("CC#N", "N", {"nitrile"}),  # acetonitrile
    ("c1ccncc1", "N", {"aromatic-N"}),  # pyridine
    ("CC=NC", "N", {"aromatic-N"}),  # N-methyl ethanimine
    ("CC(C)=N", "N", {"aromatic-N"}),  # propan-2-imine
    ("c1cc[nH]c1", "N", {"pyrrole-N"}),  # pyrrole
    ("c1c[nH]cn1", "N", {"pyrrole-N", "aromatic-N"}),  # imidazole: one of each
    ("O=c1cccc[nH]1", "N", {"amide"}),  # 2-pyridone: a lactam
    ("NCC#N", "N", {"amine", "nitrile"}),  # aminoacetonitrile
]


@pytest.mark.parametrize(("smiles", "edge", "expected"), LABELS)
def test_groups_of_known_molecules(smiles, edge, expected):
    assert groups_of(smiles, edge) == expected


def test_both_oxygens_of_acids_and_esters_are_carboxyl():
    for smiles in ("CC(=O)O", "CC(=O)OC", "OC=O"):
        sites = site_groups(smiles, "O")
        assert len(sites) == 2
        assert set(sites.values()) == {"carboxyl"}, smiles


def test_site_groups_of_a_structure_follow_its_atom_order():
    from rdkit import Chem

    from xas_bluesky.science.structures import structure_from_mol

    # 4-hydroxybutan-2-one: one carbonyl O, one alcohol O, hydrogens added after the heavy atoms
    s = structure_from_mol("m", Chem.MolFromSmiles("CC(=O)CCO"), "O")
    sites = site_groups(s, "O")
    assert sorted(sites) == s.sites("O")
    by_neighbours = {}
    for i, g in sites.items():
        atom = s.mol.GetAtomWithIdx(i)
        by_neighbours[g] = sum(n.GetSymbol() == "H" for n in atom.GetNeighbors())
    assert by_neighbours == {"carbonyl": 0, "alcohol": 1}
    assert groups_of(s, "O") == {"carbonyl", "alcohol"}


def test_every_rule_names_a_contract_group_and_the_required_ones_are_there():
    required = {
        "O": {"carbonyl", "carboxyl", "alcohol", "ether", "amide"},
        "N": {"amine", "amide", "nitrile", "aromatic-N", "pyrrole-N"},
    }
    for edge, rules in SITE_RULES.items():
        assert required[edge] <= set(GROUPS[edge])
        assert {g for g, _ in rules} <= set(GROUPS[edge])
        assert OTHER not in GROUPS[edge]
        assert len(set(GROUPS[edge])) == len(GROUPS[edge])


def test_a_site_no_rule_matches_is_other_and_not_a_group():
    assert site_groups("O", "O") == {0: OTHER}  # water: no rule
    assert groups_of("O", "O") == set()
    assert site_groups("CON", "O") == {1: "N-O"}  # methoxyamine
    assert groups_of("C", "O") == set()  # no O at all
    assert groups_of("[N+](C)(C)(C)C", "N") == {"amine"}


def test_group_matrix_and_library_round_trip(tmp_path):
    m = group_matrix([{"carbonyl"}, {"alcohol", "ether"}, set(), {"unknown-name"}], "O")
    names = GROUPS["O"]
    assert m.shape == (4, len(names))
    assert m[0, names.index("carbonyl")] and m[0].sum() == 1
    assert m[1].sum() == 2 and m[2].sum() == 0 and m[3].sum() == 0
    lib = GroupLibrary(
        "O",
        np.arange(5.0),
        ["a", "b", "c", "d"],
        ["C", "C", "C", "C"],
        m,
        np.ones((4, 5), np.float32),
        None,
        "test",
    )
    lib.save(tmp_path / "lib.npz")
    back = GroupLibrary.load(tmp_path / "lib.npz")
    assert back.names == lib.names and np.array_equal(back.groups, m) and back.std is None
    assert back.subset([1]).names == ["b"] and back.subset([1]).groups[0].sum() == 2


@pytest.mark.parametrize("edge", ["O", "N"])
def test_shipped_libraries_hold_training_molecules_only(edge):
    from xas_bluesky.resources import library_file
    from xas_bluesky.science.dataset import split_of
    from xas_bluesky.science.groups import shipped_feff_library

    with np.load(library_file(edge)) as f:
        names = [str(n) for n in f["names"]]
        assert f["counts"].sum() == f["z"].size == f["xyz_1e4"].shape[0]
    assert len(names) >= 9000
    feff = shipped_feff_library(edge)
    assert len(feff) >= 800 and feff.std is None
    assert feff.groups.any(axis=1).mean() > 0.99
    for n in names + feff.names:
        assert split_of(int(n.removeprefix("qm9_"))) == "train", n
