"""Functional groups (SMARTS labels, probabilities) and the in_library test of the open-world
analysis."""

from __future__ import annotations

import numpy as np
import pytest

from xas_bluesky.contracts import GROUPS
from xas_bluesky.science.compare import Comparator
from xas_bluesky.science.compare.novelty import (
    NoveltyCalibration,
    NoveltyTrial,
    OpenWorld,
    assess,
    column_evidence,
    combine_group_probabilities,
    fit_combination,
    fit_groups,
    fit_in_library,
    group_probabilities,
    group_set_probabilities,
    top_group_reliability,
)
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


# --------------------------------------------------------------------------- probabilities


def test_group_probabilities_sum_sensibly():
    rng = np.random.default_rng(0)
    groups = rng.random((50, 4)) < 0.4
    groups[np.flatnonzero(groups.sum(1) == 0), 0] = True  # every molecule has a group
    ev = rng.normal(0.0, 3.0, 50)
    ref = np.arange(50)
    p = group_probabilities(ev, groups, ref)
    assert np.all((p >= 0) & (p <= 1))
    post = np.exp(ev - ev.max())
    post /= post.sum()
    # independent per-group probabilities: they sum to the expected number of groups (>= 1)
    assert p.sum() == pytest.approx(post @ groups.sum(1))
    assert p.sum() >= 1.0
    # the distribution over whole group sets is a distribution
    edge_groups = np.zeros((50, len(GROUPS["N"])), bool)
    edge_groups[:, :4] = groups
    sets = group_set_probabilities(ev, edge_groups, ref, "N")
    assert sum(sets.values()) == pytest.approx(1.0)
    assert list(sets.values()) == sorted(sets.values(), reverse=True)
    # the floor mixes in the reference's shares
    pf = group_probabilities(ev, groups, ref, floor=0.2)
    assert pf == pytest.approx(0.8 * p + 0.2 * groups.mean(0))
    # a posterior on one molecule gives exactly its groups
    sharp = np.full(50, -1e6)
    sharp[7] = 0.0
    assert group_probabilities(sharp, groups, ref) == pytest.approx(groups[7].astype(float))


def test_column_evidence_marginalises_the_offset_at_the_effective_temperature():
    table = np.array([[0.0, -60.0], [-60.0, -60.0]])
    lp = np.log([0.5, 0.5])
    ev = column_evidence(table, lp, 6, 1.0, 1.0)
    assert ev[0] == pytest.approx(np.log(0.5 + 0.5 * np.exp(-60)))
    # 12 points at gamma = 1: T = 2
    assert column_evidence(table, lp, 12, 1.0, 1.0)[1] == pytest.approx(-30.0)


def test_top_group_reliability():
    probs = [np.array([0.9, 0.2]), np.array([0.8, 0.1]), np.array([0.3, 0.6])]
    truth = [np.array([True, False]), np.array([False, True]), np.array([False, True])]
    rep = top_group_reliability(probs, truth, n_bins=10)
    assert rep["top1"] == pytest.approx(2 / 3)
    assert rep["ece"] == pytest.approx((abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.6)) / 3)


# --------------------------------------------------------------------------- synthetic world

ENERGY = np.arange(0.0, 40.0, 0.25)


def synthetic_world(rng, n):
    """n molecules: an edge step and two resonances; group 0 when the first resonance sits below
    12 eV, group 1 when the second is strong (groups of the O edge's first two names)."""
    spectra, groups = [], []
    for _ in range(n):
        p1, p2 = rng.uniform(6.0, 18.0), rng.uniform(18.0, 32.0)
        a2 = rng.uniform(0.2, 1.5)
        mu = (
            1.0 / (1.0 + np.exp(-(ENERGY - 8.0) / 0.8))
            + 1.5 * np.exp(-0.5 * ((ENERGY - p1) / 0.8) ** 2)
            + a2 * np.exp(-0.5 * ((ENERGY - p2) / 1.5) ** 2)
        )
        spectra.append(mu)
        row = np.zeros(len(GROUPS["O"]), bool)
        row[0], row[1] = p1 < 12.0, a2 > 0.85
        if not row.any():
            row[2] = True
        groups.append(row)
    return np.array(spectra), np.array(groups)


def measure(mu, rng, energies, offset=0.4, scale=0.03, bg=0.1, noise=0.01):
    y = scale * np.interp(energies + offset, ENERGY, mu) + bg + 1e-4 * energies
    sig = np.full(energies.size, noise * scale)
    return y + sig * rng.standard_normal(energies.size), sig


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(3)
    spectra, groups = synthetic_world(rng, 460)
    # the model's "predictions": the true spectra with a smooth error
    pred = spectra + 0.03 * rng.standard_normal(spectra.shape).cumsum(1) / 10
    std = np.full(spectra.shape, 0.03)
    names = [f"m{i}" for i in range(len(spectra))]
    cmp = Comparator(ENERGY, pred, std, names, temperature=1.0, temperature_exponent=1.0)
    return rng, spectra, groups, cmp, pred


REF = np.arange(300)  # the reference library; molecules 300.. are the unknowns / candidates


def trials_of(world, samples, with_truth: bool, n_cand=40):
    rng, spectra, groups, cmp, _ = world
    out = []
    pool = np.arange(300, 460)
    energies = np.arange(2.0, 36.0, 0.5)
    for s in samples:
        others = rng.choice(pool[pool != s], n_cand - int(with_truth), replace=False)
        cand = np.r_[[s], others] if with_truth else others
        cmp.reset()
        cmp.add_points(energies, *measure(spectra[s], rng, energies))
        cmp.result()
        out.append(
            NoveltyTrial(
                cmp.log_likelihood_table(),
                cmp.n_points,
                groups[s],
                groups,
                np.setdiff1d(np.arange(460), np.r_[cand, [s]]),
                cand,
                with_truth,
                int(s) if with_truth else None,
            )
        )
    return out


def test_in_library_tells_a_candidate_set_with_the_truth_from_one_without(world):
    rng, spectra, groups, cmp, _ = world
    train = trials_of(world, range(300, 340), True) + trials_of(world, range(340, 380), False)
    _, (w0, wb, wm), rep = fit_in_library(train, cmp.log_prior, 1.0, temperature=1.0)
    assert rep["in_accepted"] > 0.8 and rep["out_rejected"] > 0.8
    cal = NoveltyCalibration("O", temperature=1.0, in_temperature=1.0, in_coef=(w0, wb, wm))
    # fresh samples, through assess() on the comparator's own state
    energies = np.arange(2.0, 36.0, 0.5)
    p_in, p_out = [], []
    for s in range(380, 420):
        for with_truth, store in ((True, p_in), (False, p_out)):
            others = rng.choice(np.setdiff1d(np.arange(300, 460), [s]), 39, replace=False)
            cand = np.r_[[s], others] if with_truth else np.r_[others, rng.integers(420, 460)]
            cmp.reset()
            cmp.add_points(energies, *measure(spectra[s], rng, energies))
            ref = np.setdiff1d(REF, cand)
            res = assess(cmp, groups, cand, cal, reference=ref)
            assert 0.0 <= res.in_library <= 1.0
            store.append(res.in_library)
            if with_truth:
                assert res.best_candidate is not None
    p_in, p_out = np.array(p_in), np.array(p_out)
    assert np.mean(p_in >= 0.5) >= 0.85
    assert np.mean(p_out < 0.5) >= 0.85
    assert p_in.mean() > p_out.mean() + 0.4


def test_groups_of_an_unknown_molecule_from_the_reference(world):
    rng, spectra, groups, cmp, _ = world
    trials = [
        NoveltyTrial(t.table, t.n_points, t.truth_groups, groups, REF)
        for t in trials_of(world, range(300, 360), False)
    ]
    t0, gamma, eps, rep = fit_groups(trials, cmp.log_prior, exponents=(1.0,))
    assert rep["top1"] >= 0.9
    cal = NoveltyCalibration("O", temperature=t0, exponent=gamma, floor=eps)
    hits = []
    energies = np.arange(2.0, 36.0, 0.5)
    for s in range(360, 420):
        cmp.reset()
        cmp.add_points(energies, *measure(spectra[s], rng, energies))
        res = assess(cmp, groups, None, cal, reference=REF)
        assert np.isnan(res.in_library)
        assert res.top_group == GROUPS["O"][int(np.argmax(res.group_probabilities))]
        assert np.all((res.group_probabilities >= 0) & (res.group_probabilities <= 1))
        hits.append(groups[s][GROUPS["O"].index(res.top_group)])
    assert np.mean(hits) >= 0.9


def test_assess_checks_its_inputs(world):
    _, _, groups, cmp, _ = world
    cal = NoveltyCalibration("O")
    with pytest.raises(ValueError, match="groups must be"):
        assess(cmp, groups[:, :3], None, cal)
    with pytest.raises(ValueError, match="no reference"):
        assess(cmp, groups, np.arange(460), cal)


def test_combination_of_two_libraries():
    pm, pf = np.array([0.9, 0.2, 0.5]), np.array([0.7, 0.0, 0.5])
    assert np.array_equal(combine_group_probabilities(pm, None, (3.0, 2.0)), pm)
    # the identity map: the plain mean
    assert combine_group_probabilities(pm, pf, (0.0, 1.0)) == pytest.approx(0.5 * (pm + pf), 1e-5)
    sharper = combine_group_probabilities(pm, pf, (0.0, 2.0))
    assert sharper[0] > 0.8 and sharper[1] < 0.1 and sharper[2] == pytest.approx(0.5)
    # fitted on probabilities that are already calibrated: about the identity
    rng = np.random.default_rng(1)
    p = rng.uniform(0.02, 0.98, (4000, 3))
    truth = rng.random(p.shape) < p
    a, b = fit_combination(list(p), list(p), list(truth))
    assert abs(a) < 0.15 and abs(b - 1.0) < 0.1
    # over-confident inputs are tempered (b < 1)
    over = 1.0 / (1.0 + np.exp(-3.0 * np.log(p / (1 - p))))
    assert fit_combination(list(over), list(over), list(truth))[1] < 0.5


def test_open_world_end_to_end(world):
    """OpenWorld over a model library + candidates and a FEFF library, on the synthetic world."""
    rng, spectra, groups, cmp, pred = world
    train = trials_of(world, range(300, 340), True) + trials_of(world, range(340, 380), False)
    t_in, coef, _ = fit_in_library(train, cmp.log_prior, 1.0, temperature=1.0)
    ref_trials = [NoveltyTrial(t.table, t.n_points, t.truth_groups, groups, REF) for t in train]
    t0, gamma, eps, _ = fit_groups(ref_trials, cmp.log_prior)
    cal = NoveltyCalibration(
        "O",
        temperature=t0,
        exponent=gamma,
        floor=eps,
        feff_temperature=t0,
        feff_exponent=gamma,
        feff_floor=eps,
        combine=(0.0, 1.0),
        in_temperature=t_in,
        in_coef=coef,
    )
    std = np.full(pred.shape, 0.03)
    names = [f"m{i}" for i in range(len(pred))]
    lib = GroupLibrary("O", ENERGY, names[:300], names[:300], groups[:300], pred[:300], std[:300])
    feff = GroupLibrary("O", ENERGY, names[:300], names[:300], groups[:300], spectra[:300], None)
    energies = np.arange(2.0, 36.0, 0.5)
    hits, p_in = [], []
    for s in range(400, 430):
        cand = np.r_[[s], rng.choice(np.setdiff1d(np.arange(300, 460), [s]), 39, replace=False)]
        ow = OpenWorld(
            lib,
            pred[cand],
            std[cand],
            [names[c] for c in cand],
            groups[cand],
            feff_library=feff,
            calibration=cal,
            temperature=1.0,
            temperature_exponent=1.0,
        )
        ow.add_points(energies, *measure(spectra[s], rng, energies))
        res = ow.result()
        assert res.feff_group_probabilities is not None
        assert res.candidate_group_probabilities is not None
        assert np.all((res.group_probabilities >= 0) & (res.group_probabilities <= 1))
        hits.append(groups[s][GROUPS["O"].index(res.top_group)])
        p_in.append(res.in_library)
        assert res.best_candidate is not None and res.best_candidate >= 300
        assert res.best_reference < 300
        assert set(res.as_dict()) == {
            "group_probabilities",
            "top_group",
            "top_probability",
            "in_library",
        }
    assert np.mean(hits) >= 0.9
    assert np.mean(np.array(p_in) >= 0.5) >= 0.85


def _model_version(edge):
    import json

    from xas_bluesky.resources import RESOURCES

    return json.loads((RESOURCES / "models" / edge / "metadata.json").read_text())["model_version"]


@pytest.mark.parametrize("edge", ["O", "N"])
def test_shipped_calibration_belongs_to_the_shipped_model(edge):
    from xas_bluesky.resources import open_world_calibration

    assert open_world_calibration(edge) is not None
    cal = NoveltyCalibration.shipped(edge)
    assert cal.edge == edge
    assert cal.temperature > 0 and cal.feff_temperature > 0 and cal.in_temperature > 0
    assert 0.0 <= cal.floor < 1.0 and 0.0 <= cal.feff_floor < 1.0
    assert len(cal.in_coef) == 3 and cal.combine[1] > 0
    # refit (benchmarks/groups.py --calibrate) when the ensemble changes
    assert _model_version(edge) in cal.source


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


@pytest.mark.parametrize("edge", ["O", "N"])
def test_groups_of_heldout_feff_spectra_from_the_shipped_feff_library(edge):
    """Real spectra: held-out FEFF samples, measured on a 0.5 eV grid with 1% noise and an
    offset, against the shipped FEFF library at its shipped calibration."""
    from xas_bluesky.resources import heldout_samples
    from xas_bluesky.science.groups import shipped_feff_library
    from xas_bluesky.science.structures import structure_from_xyz

    cal = NoveltyCalibration.shipped(edge)
    feff = shipped_feff_library(edge)
    as_model = NoveltyCalibration(
        edge,
        temperature=cal.feff_temperature,
        exponent=cal.feff_exponent,
        floor=cal.feff_floor,
    )
    cmp = Comparator(feff.energy, feff.mean, None, feff.names, temperature=5.0)
    energy, samples = heldout_samples(edge)
    rng = np.random.default_rng(0)
    mono = np.arange(energy[0] + 2.0, energy[-1] - 2.0, 0.5)
    hits, conf = [], []
    for s in samples[:20]:
        truth = groups_of(structure_from_xyz(s["name"], s["symbols"], np.asarray(s["xyz"])), edge)
        y = 0.02 * np.interp(mono + 0.3, energy, s["mu"]) + 0.05
        sig = np.full(mono.size, 2e-4)
        cmp.reset()
        cmp.add_points(mono, y + sig * rng.standard_normal(mono.size), sig)
        res = assess(cmp, feff.groups, None, as_model)
        hits.append(res.top_group in truth)
        conf.append(res.top_probability)
    assert np.mean(hits) >= 0.85
    assert 0.7 <= np.mean(conf) <= 1.0
