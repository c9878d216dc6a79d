"""A million predictions in tiled: written through its HTTP API, or registered as the HDF5 file.

Two ways to put ``--n`` predicted spectra (mean and ensemble spread on the model's 197-point
grid, with names and SMILES) into a tiled catalog, one after the other in this one script, each
into a fresh real tiled server (SQLite catalog, or PostgreSQL with ``--catalog postgresql``):

- ``write``: :func:`xas_bluesky.beamline.catalog.store_predictions`, the path the live analysis
  and ``xas-bluesky predict --tiled-uri`` take: arrays of 2,000 rows with their names, SMILES,
  InChIKeys and formulas in the node's metadata, so that ``xas-bluesky query`` finds a
  molecule.  Prints the time (the RDKit identifiers apart), the bytes the catalog and its files
  take, and the time of ``query_predictions`` by SMILES and ``load_predictions`` of 100 keys
  with the whole set stored.
- ``register`` (the baseline): the HDF5 file that ``xas-bluesky predict --out FILE.h5`` writes,
  registered as it is (tiled's HDF5 adapter; the server may read its directory): the time of
  writing the file, of registering it, the catalog's growth, and a read of 10,000 rows through
  the server, checked against h5py.

The rows: the shipped candidate library's predictions, cycled, each copy with its own small
smooth perturbation (distinct rows; the chemistry, hence the identifiers, of the library's
molecules).  Pause the background FEFF job while it runs (``--pause PID``).

Run: ``.venv/bin/python benchmarks/tiled_million.py [--n 1000000] [--catalog sqlite]
[--ways write register] [--pause PID]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLOCK = 10_000  # rows made and handed on at a time: memory stays bounded


class Row:
    """What :func:`~xas_bluesky.beamline.catalog.molecule_ids` reads of a structure."""

    __slots__ = ("name", "mol", "smiles")

    def __init__(self, name: str, mol, smiles: str):
        self.name, self.mol, self.smiles = name, mol, smiles


def library(edge: str):
    """The shipped candidates (structures) and their predictions."""
    from xas_bluesky.resources import candidates_file
    from xas_bluesky.science.candidates import PredictionCache
    from xas_bluesky.science.structures import read_structures

    path = candidates_file(edge)
    structs = {s.name: s for s in read_structures(path, edge=edge, skip_invalid=True)}
    cands = PredictionCache().from_file(path, edge)
    mols = [structs[n] for n in cands.names]
    return cands, mols


def blocks(cands, n: int, seed: int = 0):
    """``(start, names, smiles, mean, std)`` blocks of ``BLOCK`` rows, ``n`` in all."""
    rng = np.random.default_rng(seed)
    e = cands.energy
    base = len(cands.names)
    for a in range(0, n, BLOCK):
        idx = np.arange(a, min(a + BLOCK, n))
        src = idx % base
        c = rng.uniform(e[0], e[-1], size=(idx.size, 1))
        w = rng.uniform(1.0, 6.0, size=(idx.size, 1))
        h = rng.normal(0.0, 0.02, size=(idx.size, 1))
        mean = cands.mean[src] + (h * np.exp(-0.5 * ((e[None, :] - c) / w) ** 2))
        names = [f"j{k}_{cands.names[s]}" for k, s in zip(idx, src, strict=True)]
        smiles = [cands.smiles[s] for s in src]
        yield a, names, smiles, mean.astype(np.float32), cands.std[src].astype(np.float32)


def du(path: Path) -> int:
    """Bytes under ``path`` (files only)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def start(directory: Path, catalog: str, readable=()):
    from xas_bluesky.services import start_postgres, start_tiled

    pg = None
    uri = None
    if catalog == "postgresql":
        # a top-level directory of its own, handed to the cluster's user (as root, ``postgres``:
        # it could not enter this script's 0700 temporary directory)
        pg = start_postgres(tempfile.mkdtemp(prefix="tiled_million_pg_"))
        uri = pg.uri
    server = start_tiled(directory / "tiled", catalog=uri, readable=readable)
    return server, pg


def way_write(args, cands, mols, directory: Path) -> None:
    from xas_bluesky.beamline.catalog import (
        load_predictions,
        molecule_ids,
        query_predictions,
        store_predictions,
    )

    # the identifiers are RDKit's work, per row whatever the catalog: timed apart
    for m in mols:  # the library's molecules made once (as the rows share them)
        molecule_ids(Row("x", m.mol, m.smiles))
    t0 = time.perf_counter()
    for m in mols:
        molecule_ids(Row("x", m.mol, m.smiles))
    ids_per_row = (time.perf_counter() - t0) / len(mols)

    server, pg = start(directory, args.catalog)
    try:
        client = server.client()
        before = du(server.directory)
        t0 = time.perf_counter()
        nodes = 0
        keys_probe: list[str] = []
        for a, names, _smiles, mean, std in blocks(cands, args.n):
            rows = [Row(nm, mols[(a + i) % len(mols)].mol, mols[(a + i) % len(mols)].smiles)
                    for i, nm in enumerate(names)]  # fmt: skip
            keys = [f"bench-{a + i}" for i in range(len(names))]
            if a == 0:
                keys_probe = keys[:50]
            nodes += len(
                store_predictions(
                    client,
                    rows,
                    mean,
                    std,
                    energy=cands.energy,
                    edge=cands.edge,
                    model_version=cands.model_version,
                    keys=keys,
                )  # fmt: skip
            )
            done = a + len(names)
            if done % (args.n // 10 or BLOCK) < BLOCK:
                el = time.perf_counter() - t0
                print(f"  write: {done:,} rows in {el:.0f} s ({done / el:,.0f} rows/s)", flush=True)
        secs = time.perf_counter() - t0
        keys_probe += [f"bench-{args.n - 1 - i}" for i in range(50)]
        size = du(server.directory) - before
        print(
            f"write   {args.catalog:10} {args.n:>9,} rows  {nodes} nodes  {secs:8.1f} s  "
            f"{args.n / secs:8,.0f} rows/s  (RDKit identifiers ~{ids_per_row * 1e3:.2f} ms/row "
            f"of it: {ids_per_row * args.n:.0f} s)  {size / 1e6:8.1f} MB "
            f"({size / args.n:,.0f} B/row; catalog {catalog_size(server, pg) / 1e6:.1f} MB)"
        )
        t0 = time.perf_counter()
        found = query_predictions(client, smiles=cands.smiles[0], edge=cands.edge)
        q = time.perf_counter() - t0
        want = sum(1 for k in range(args.n) if k % len(cands.names) == 0 or
                   cands.smiles[k % len(cands.names)] == cands.smiles[0])  # fmt: skip
        print(f"  query_predictions by SMILES: {len(found):,} rows found ({want:,} stored) "
              f"in {q:.1f} s")  # fmt: skip
        # the baseline: the query as it was before the server-side prefilter, every array's
        # metadata listed and its rows checked here
        from xas_bluesky.beamline.catalog import _ids_of_smiles, _prediction_nodes

        t0 = time.perf_counter()
        skeleton = _ids_of_smiles(cands.smiles[0])[1].split("-")[0]
        rows_all = sum(
            sum(1 for k in node.metadata["inchikeys"] if k.split("-")[0] == skeleton)
            for _, node in _prediction_nodes(client, edge=cands.edge)
        )
        q = time.perf_counter() - t0
        print(f"  baseline, every array's metadata listed: {rows_all:,} rows in {q:.1f} s")
        # a molecule stored nowhere: the server's prefilter answers without sending any array
        # (the rows above cycle 600 molecules, so every array holds each one: the worst case)
        t0 = time.perf_counter()
        none = query_predictions(client, smiles="OCCOCCOCCOCCO", edge=cands.edge)
        q = time.perf_counter() - t0
        print(f"  query_predictions of a molecule not stored: {len(none)} rows in {q:.2f} s")
        t0 = time.perf_counter()
        sum(1 for _ in _prediction_nodes(client, edge=cands.edge))
        q = time.perf_counter() - t0
        print(f"  baseline for it (every array's metadata listed): {q:.1f} s")
        t0 = time.perf_counter()
        got = load_predictions(
            client, model_version=cands.model_version, edge=cands.edge, keys=keys_probe
        )
        q = time.perf_counter() - t0
        print(f"  load_predictions of {len(keys_probe)} keys (first and last rows): "
              f"{len(got)} found in {q:.1f} s")  # fmt: skip
    finally:
        server.stop()
        if pg is not None:
            pg.stop()
            shutil.rmtree(pg.directory, ignore_errors=True)


def catalog_size(server, pg) -> int:
    """The catalog's bytes: the SQLite file, or the PostgreSQL cluster's ``base`` directory
    (its databases' files, without the write-ahead log)."""
    if pg is None:
        return du(server.directory / "catalog.db")
    return du(Path(pg.directory) / "pgdata" / "base")


def way_register(args, cands, directory: Path) -> None:
    from tiled.client.register import register

    from xas_bluesky.science.prediction_file import PredictionFile, read_predictions

    files = directory / "files"
    files.mkdir()
    path = files / "predictions.h5"
    t0 = time.perf_counter()
    with PredictionFile.create(
        path, cands.energy, edge=cands.edge, model_version=cands.model_version,
        source="benchmarks/tiled_million.py",
    ) as out:  # fmt: skip
        for _a, names, smiles, mean, std in blocks(cands, args.n):
            out.append(names, smiles, mean, std, len(names))
        out.close(complete=True)
    write_s = time.perf_counter() - t0
    server, pg = start(directory, args.catalog, readable=[files])
    try:
        client = server.client()
        before = catalog_size(server, pg)
        t0 = time.perf_counter()
        asyncio.run(register(client, path))
        reg_s = time.perf_counter() - t0
        grew = catalog_size(server, pg) - before
        node = client[path.stem]
        t0 = time.perf_counter()
        mu = np.asarray(node["mu"][:10_000])
        read_s = time.perf_counter() - t0
        same = np.array_equal(mu, read_predictions(path, rows=slice(0, 10_000))["mu"])
        print(
            f"register {args.catalog:10} {args.n:>9,} rows  file written in {write_s:.1f} s "
            f"({du(path) / 1e6:.1f} MB, {du(path) / args.n:,.0f} B/row), registered in "
            f"{reg_s:.2f} s (catalog {before / 1e3:.0f} -> {(before + grew) / 1e3:.0f} kB); 10,000 rows of mu read through "
            f"tiled in {read_s:.2f} s, {'the same as h5py reads' if same else 'NOT the same'}"
        )
    finally:
        server.stop()
        if pg is not None:
            pg.stop()
            shutil.rmtree(pg.directory, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--edge", default="O")
    ap.add_argument("--catalog", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--ways", nargs="+", choices=["write", "register"],
                    default=["register", "write"])  # fmt: skip
    ap.add_argument("--pause", type=int, help="PID to SIGSTOP while measuring (the FEFF job)")
    args = ap.parse_args()

    cands, mols = library(args.edge)
    print(f"# {args.n:,} rows of {args.edge} predictions ({len(cands.names)} library molecules "
          f"cycled), {cands.energy.size} energies, catalog {args.catalog}")  # fmt: skip
    if args.pause:
        os.kill(args.pause, signal.SIGSTOP)
    directory = Path(tempfile.mkdtemp(prefix="tiled_million_"))
    try:
        for way in args.ways:
            sub = directory / way
            sub.mkdir()
            if way == "register":
                way_register(args, cands, sub)
            else:
                way_write(args, cands, mols, sub)
            shutil.rmtree(sub, ignore_errors=True)
    finally:
        if args.pause:
            os.kill(args.pause, signal.SIGCONT)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
