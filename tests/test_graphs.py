"""Molecular graphs: features, invariances, batching, and the edge-network convolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.nn import NNConv

from xas_bluesky.science.graphs import collate, load_graphs, molecule_graph, save_graphs
from xas_bluesky.science.model.network import EdgeConv, XasMPNN
from xas_bluesky.science.structures import structure_from_smiles, structure_from_xyz


def _rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _canonical(g) -> tuple:
    """Graph content independent of node numbering: nodes and edges keyed by atom index."""
    atom = g.atom_index.tolist()
    nodes = sorted((atom[k], tuple(row)) for k, row in enumerate(g.x.tolist()))
    edges = sorted(
        (atom[a], atom[b], t, round(length, 4))
        for a, b, t, length in zip(
            *g.edge_index.tolist(), g.edge_type.tolist(), g.edge_len.tolist(), strict=True
        )
    )
    sites = [atom[k] for k, row in enumerate(g.x.tolist()) if row[4]]
    env = sorted(
        (a, tuple(np.round(row, 4))) for a, row in zip(sites, g.site_env.tolist(), strict=True)
    )
    return nodes, edges, env


def test_acetamide_graph_features():
    s = structure_from_smiles("CC(=O)N", "acetamide")
    g = molecule_graph(s, "O")
    assert g.num_nodes == 4 and g.edge_index.shape == (2, 6)  # heavy atoms, both directions
    # element, hybridisation (sp3=3, sp2=2), aromatic, H count, absorber flag
    assert g.x.tolist() == [[0, 3, 0, 3, 0], [0, 2, 0, 0, 0], [2, 2, 0, 0, 1], [1, 2, 0, 2, 0]]
    double = g.edge_type.tolist().index(1)
    assert {g.edge_index[0, double].item(), g.edge_index[1, double].item()} == {1, 2}
    assert 1.18 < g.edge_len[double].item() < 1.30
    assert molecule_graph(s, "N").x[:, 4].tolist() == [0, 0, 0, 1]


def test_site_environment_sees_the_neighbours_in_space():
    from xas_bluesky.science.graphs import ENV_CENTRES, ENV_ELEMENTS

    s = structure_from_smiles("CO", "methanol")
    g = molecule_graph(s, "O")
    env = g.site_env.numpy().reshape(1, len(ENV_ELEMENTS), len(ENV_CENTRES))[0]
    r_co = float(g.edge_len[0])
    # the O sees its C at the C-O bond length and no N, O or F; its own H at ~0.96 A, and the
    # three CH3 hydrogens ~2 A away (beyond every bond the graph has) as three times as much
    assert abs(ENV_CENTRES[np.argmax(env[1])] - r_co) <= 0.1
    assert env[2:].max() == 0.0
    own_h = env[0][np.argmin(np.abs(ENV_CENTRES - 1.0))]
    methyl_h = env[0][np.abs(ENV_CENTRES - 2.0) < 0.25].max()
    assert own_h > 0.5 and 2.0 < methyl_h / own_h < 4.0


def test_aromatic_graph():
    g = molecule_graph(structure_from_smiles("c1ccncc1", "pyridine"), "N")
    assert g.x[:, 2].tolist() == [1] * 6 and set(g.edge_type.tolist()) == {3}


def test_invariant_to_rotation_translation_and_atom_order():
    s = structure_from_smiles("OCC(=O)C1=CNC=C1", "test molecule")
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(s.symbols))
    moved = s.xyz @ _rotation(rng).T + np.array([3.0, -7.0, 11.0])
    t = structure_from_xyz("moved", [s.symbols[i] for i in perm], moved[perm])
    g0, g1 = molecule_graph(s, "O"), molecule_graph(t, "O")
    # same graph once nodes are named by their atom in the original order
    inv = np.argsort(perm)
    g1.atom_index = torch.as_tensor(perm)[g1.atom_index]
    assert _canonical(g0) == _canonical(g1)
    assert inv.shape == perm.shape
    # and so the same prediction
    torch.manual_seed(0)
    model = XasMPNN(50, dim=16, env=True).eval()
    with torch.inference_mode():
        y0 = model(collate([g0]))[0]
        y1 = model(collate([g1]))[0]
    torch.testing.assert_close(y0, y1, rtol=1e-5, atol=1e-5)


def test_batching_matches_single_graphs():
    from xas_bluesky.science.graphs import graph_arrays

    structures = [
        structure_from_smiles(smi, smi)
        for smi in ("CO", "CC(=O)OC", "CN", "O=C1CCC1", "OC1=CC=CC=C1")  # CN: no O to absorb
    ]
    graphs = [molecule_graph(s, "O") for s in structures]
    # the bulk path (absorber surroundings for a whole chunk at once) gives the same graphs
    bulk = graph_arrays(structures, "O")
    for g, b in zip(graphs, bulk, strict=True):
        assert b.site_env.dtype == np.float32 and b.site_env.shape == tuple(g.site_env.shape)
        np.testing.assert_array_equal(b.site_env, g.site_env.numpy())
    torch.manual_seed(1)
    for readout, env in (("site", True), ("site", False), ("molecule", False)):
        model = XasMPNN(30, dim=16, readout=readout, env=env).eval()
        with torch.inference_mode():
            joint = model(collate(graphs))[0]
            alone = torch.cat([model(collate([g]))[0] for g in graphs])
            from_bulk = model(collate(bulk))[0]
        torch.testing.assert_close(joint, alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(from_bulk, joint, rtol=1e-5, atol=1e-5)


def test_edge_conv_equals_pyg_nnconv():
    torch.manual_seed(2)
    dim, n_edge_feat = 8, 5
    edge_nn = torch.nn.Sequential(torch.nn.Linear(n_edge_feat, dim * dim))
    ref = NNConv(dim, dim, edge_nn, aggr="mean")
    mine = EdgeConv(dim)
    with torch.no_grad():
        mine.root.weight.copy_(ref.lin.weight)
        mine.bias.copy_(ref.bias if ref.bias is not None else ref.lin.bias)
    h = torch.randn(7, dim)
    ei = torch.tensor([[0, 1, 1, 2, 3, 4, 5, 6, 0], [1, 0, 2, 1, 4, 3, 6, 5, 2]])
    ea = torch.randn(ei.shape[1], n_edge_feat)
    w = edge_nn(ea).view(-1, dim, dim)
    torch.testing.assert_close(mine(h, ei, w), ref(h, ei, ea), rtol=1e-5, atol=1e-5)


def test_save_and_load_graphs(tmp_path):
    graphs = [molecule_graph(structure_from_smiles(s, s), "N") for s in ("CC#N", "NCC=O")]
    save_graphs(tmp_path / "g.pt", graphs, ["a", "b"], "N")
    back, names, edge = load_graphs(tmp_path / "g.pt")
    assert names == ["a", "b"] and edge == "N"
    for g, h in zip(graphs, back, strict=True):
        assert _canonical(g) == _canonical(h)


def test_graph_modules_do_not_import_rdkit():
    import subprocess
    import sys

    code = (
        "import sys; import xas_bluesky.science.graphs, xas_bluesky.science.model.predictor;"
        "sys.exit(1 if 'rdkit' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("edge", ["O", "N"])
def test_no_absorber_no_site(edge):
    g = molecule_graph(structure_from_smiles("CCC", "propane"), edge)
    assert int(g.x[:, 4].sum()) == 0


def test_features_agree_with_rdkit():
    """The graph's own hybridisation / aromaticity / H-count rules reproduce RDKit's perception."""
    from rdkit import Chem

    from xas_bluesky.resources import candidates_file
    from xas_bluesky.science.graphs import graph_arrays
    from xas_bluesky.science.structures import read_structures

    hyb = {
        Chem.HybridizationType.SP: 1,
        Chem.HybridizationType.SP2: 2,
        Chem.HybridizationType.SP3: 3,
    }
    structs = read_structures(candidates_file("N"))
    n_atoms = differ = 0
    for s, g in zip(structs, graph_arrays(structs, "N"), strict=True):
        for row, a in zip(g.x.tolist(), g.atom_index.tolist(), strict=True):
            atom = s.mol.GetAtomWithIdx(a)
            n_atoms += 1
            differ += row[1:4] != [
                hyb.get(atom.GetHybridization(), 0),
                int(atom.GetIsAromatic()),
                min(atom.GetTotalNumHs(includeNeighbors=True), 4),
            ]
    assert n_atoms > 4000 and differ <= 0.002 * n_atoms


@pytest.mark.parametrize(
    ("smiles", "aromatic"),
    [
        ("c1ccoc1", 5),  # furan
        ("c1cc[nH]c1", 5),  # pyrrole
        ("O=c1cccc[nH]1", 6),  # 2-pyridone: the exocyclic C=O gives no pi electron
        ("c1ccc2ccccc2c1", 10),  # naphthalene, whichever Kekule structure
        ("C1=CCC=C1", 0),  # cyclopentadiene
        ("O=C1C=CC=C1", 0),  # cyclopentadienone: 4 pi electrons
    ],
)
def test_aromaticity_rule(smiles, aromatic):
    g = molecule_graph(structure_from_smiles(smiles, smiles), "O")
    assert int(g.x[:, 2].sum()) == aromatic
