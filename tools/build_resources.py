"""Build the resources the package ships: held-out sample spectra and demo candidate libraries.

Run from the source tree after the FEFF data grows::

    python tools/build_resources.py            # needs the `qm9` extra for the candidate library

- ``xas_bluesky/resources/heldout_{edge}.json.gz``: molecular FEFF spectra of every complete molecule
  of the held-out split (never training data), on the model grid, with name, SMILES and geometry.
- ``xas_bluesky/resources/candidates_{edge}.xyz``: at least 500 QM9 molecules containing the edge's
  element, all from the held-out split (so never training data either), every held-out sample
  among them.  Line 2 of each frame is the name (``qm9_NNNNNN``).

With ``--open-world`` it builds only the references of the open-world analysis
(``xas_bluesky.science.compare.novelty``; refit its calibration afterwards with
``python benchmarks/groups.py --calibrate``):

- ``xas_bluesky/resources/library_{edge}.npz``: the model library's structures, 10,000 random
  training-split QM9 molecules with the edge's element (seed 0);
- ``xas_bluesky/resources/feff_library_{edge}.npz``: FEFF's spectra of the data set's complete
  training molecules with their functional groups (float16).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

from xas_bluesky.science.dataset import default_data_files, load_molecules, split_of
from xas_bluesky.science.grids import EDGES, energy_grid

RES = Path(__file__).resolve().parents[1] / "xas_bluesky" / "resources"


def xyz_frame(name: str, symbols, xyz) -> str:
    lines = [str(len(symbols)), name]
    lines += [f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in zip(symbols, xyz, strict=True)]
    return "\n".join(lines) + "\n"


def build_open_world(size: int) -> None:
    import numpy as np

    from xas_bluesky.science.groups import feff_library, qm9_structures, save_library_structures

    for edge in EDGES:
        structures = qm9_structures(edge, size, seed=0)
        save_library_structures(RES / f"library_{edge}.npz", structures)
        feff = feff_library(edge, "train")
        feff.save(RES / f"feff_library_{edge}.npz", dtype=np.float16)
        print(f"{edge}: model library {len(structures)} structures, FEFF library {len(feff)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-candidates", type=int, default=600)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--open-world", action="store_true", help="only the open-world libraries")
    ap.add_argument("--library-size", type=int, default=10000)
    args = ap.parse_args()
    if args.open_world:
        build_open_world(args.library_size)
        return
    files = default_data_files()
    for edge in EDGES:
        held = [m for m in load_molecules(files, edge) if m.split == "test" and m.complete]
        out = {
            "edge": edge,
            "energy": energy_grid(edge).round(4).tolist(),
            "samples": [
                {
                    "name": m.name,
                    "qm9_index": m.qm9_index,
                    "smiles": m.smiles,
                    "symbols": m.symbols,
                    "xyz": m.xyz.round(6).tolist(),
                    "mu": m.spectrum().round(5).tolist(),
                }
                for m in held
            ],
        }
        with gzip.open(RES / f"heldout_{edge}.json.gz", "wt") as fh:
            json.dump(out, fh, separators=(",", ":"))
        print(f"{edge}: {len(held)} held-out samples")

        from xas_bluesky.science.qm9 import iter_qm9

        pool = [m for m in iter_qm9((edge,)) if split_of(m["qm9_index"]) == "test"]
        chosen = {m.qm9_index for m in held}
        rng = random.Random(args.seed)
        rng.shuffle(pool)
        frames = [m for m in pool if m["qm9_index"] in chosen]
        for m in pool:
            if len(frames) >= max(args.n_candidates, len(chosen)):
                break
            if m["qm9_index"] not in chosen:
                frames.append(m)
        frames.sort(key=lambda m: m["qm9_index"])
        with open(RES / f"candidates_{edge}.xyz", "w") as fh:
            for m in frames:
                fh.write(xyz_frame(f"qm9_{m['qm9_index']:06d}", m["symbols"], m["xyz"]))
        print(f"{edge}: {len(frames)} candidates")


if __name__ == "__main__":
    main()
