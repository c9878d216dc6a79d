"""Accuracy of the shipped ensembles on the held-out (test) molecules, judged as in the paper.

Carbone, Topsakal, Lu, Yoo, Phys. Rev. Lett. 124, 156401 (2020) report that 90% of the predicted
peak positions fall within 1 eV of FEFF's.  For every edge this prints, on the test split of
``xas_bluesky.science.dataset.split_of`` (molecules no member trained on, complete ones only):

- true peaks within 1 eV: the fraction of FEFF's peaks (prominence >= 5% of the spectrum's
  maximum) with a predicted peak within 1 eV;
- predicted peaks within 1 eV: the fraction of predicted peaks with a FEFF peak within 1 eV (the
  paper's figure);
- the mean absolute error of mu;

for the model and two baselines: the mean training spectrum, and the spectrum of the nearest
training molecule by RDKit Morgan fingerprint (radius 2, 2048 bits, Tanimoto).

Run: ``.venv/bin/python benchmarks/accuracy.py [--edge O N]``.
"""

from __future__ import annotations

import argparse

import numpy as np

from xas_bluesky.science import dataset
from xas_bluesky.science.model.metrics import evaluate
from xas_bluesky.science.model.predictor import Predictor
from xas_bluesky.science.structures import structure_from_xyz

PAPER = 0.90


def _fingerprints(smiles: list[str]):
    from rdkit import Chem, DataStructs  # noqa: F401
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    return [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in smiles]


def nearest_neighbour(train_smiles, train_spectra, test_smiles) -> np.ndarray:
    """Spectrum of the most similar training molecule (Tanimoto on Morgan fingerprints)."""
    from rdkit import DataStructs

    fp_train = _fingerprints(train_smiles)
    out = []
    for fp in _fingerprints(test_smiles):
        sims = DataStructs.BulkTanimotoSimilarity(fp, fp_train)
        out.append(train_spectra[int(np.argmax(sims))])
    return np.stack(out)


def _line(label: str, m: dict) -> str:
    return (
        f"  {label:<28} true peaks within 1 eV {100 * m['recall']:5.1f}%   "
        f"predicted peaks within 1 eV {100 * m['precision']:5.1f}%   MAE {m['mae']:.4f}"
    )


def run(edge: str, candidates=()) -> dict:
    mols = dataset.load_molecules(dataset.default_data_files(), edge)
    train = [m for m in mols if m.split == "train"]
    test = [m for m in mols if m.split == "test" and m.complete]
    p = Predictor.load(edge, device="cpu")
    structs = [structure_from_xyz(m.name, m.symbols, m.xyz, edge) for m in test]
    truth = np.stack([m.spectrum() for m in test])
    train_spectra = np.stack([m.spectrum() for m in train])
    results = {
        "model (ensemble mean)": evaluate(p.energy, truth, p.predict(structs).values),
    }
    for candidate in candidates:  # retrained ensembles beside the shipped one, same molecules
        q = Predictor.load(edge, device="cpu", directory=f"{candidate}/{edge}")
        arch = q.metadata.get("config", {}).get("arch", "mpnn")
        results[f"candidate {arch} {q.model_version[:8]}"] = evaluate(
            q.energy, truth, q.predict(structs).values
        )
    results |= {
        "mean training spectrum": evaluate(
            p.energy, truth, np.broadcast_to(train_spectra.mean(0), truth.shape)
        ),
        "nearest training molecule": evaluate(
            p.energy,
            truth,
            nearest_neighbour([m.smiles for m in train], train_spectra, [m.smiles for m in test]),
        ),
    }
    m = results["model (ensemble mean)"]
    print(
        f"{edge} K edge: {len(test)} held-out molecules ({m['true_peaks']} FEFF peaks, "
        f"{m['predicted_peaks']} predicted), model {p.model_version} trained on "
        f"{p.metadata['n_train_molecules']} molecules / {p.metadata['n_train_sites']} sites"
    )
    for label, r in results.items():
        print(_line(label, r))
    print(f"  {'paper (Carbone et al. 2020)':<28} predicted peaks within 1 eV {100 * PAPER:5.1f}%")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edge", nargs="+", default=["O", "N"], choices=["O", "N"])
    ap.add_argument(
        "--candidate",
        metavar="DIR",
        nargs="+",
        default=[],
        help="also score the ensembles in DIR/<edge> (train --out), each",
    )
    args = ap.parse_args()
    for edge in args.edge:
        run(edge, args.candidate)


if __name__ == "__main__":
    main()
