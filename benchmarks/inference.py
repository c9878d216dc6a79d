"""Inference speed of the shipped ensemble, against FEFF10 on the same molecules.

Prints plain lines:

- model throughput (spectra/s, full ensemble, prebuilt graphs) for batch sizes 1 .. 4096, with
  the peak memory (GPU: ``torch.cuda.max_memory_allocated``; CPU: the process's peak RSS);
- FEFF10's seconds per spectrum for a few sites of the same molecules (when ``feff10`` imports);
- the marginal throughput of the whole ``xas-bluesky predict`` command (reading, bond perception,
  graphs, the full ensemble, writing the CSV) for distinct structures: the difference of two runs
  of different sizes, so the fixed start-up cost (imports, loading weights) cancels.

The molecules are the shipped candidate libraries (QM9 molecules of the held-out split); distinct
structures for the command are made by rotating each one at random and moving every atom by up
to 0.01 A.

On a machine without RDKit (a GPU box), build the graphs here with ``--save-graphs FILE`` and run
there with ``--graphs FILE --device cuda``: then only the model is timed.

Run: ``.venv/bin/python benchmarks/inference.py [--edge O] [--threads 2]``; ``--baseline DIR``
times another checkpoint's model on the same graphs after the shipped one (the O MPNN ensemble
the SchNet one replaced: ``--baseline benchmarks/candidates/O_mpnn/O``).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xas_bluesky.science.graphs import load_graphs, save_graphs  # noqa: E402
from xas_bluesky.science.model.predictor import Predictor  # noqa: E402

BATCHES = (1, 4, 16, 64, 256, 1024, 4096)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _distinct_frames(edge: str, copies: int, seed: int = 0) -> str:
    """XYZ text of ``copies`` randomly rotated, jittered versions of each shipped candidate."""
    from xas_bluesky.resources import candidates_file

    lines = candidates_file(edge).read_text().splitlines()
    mols, k = [], 0
    while k < len(lines):
        n = int(lines[k])
        rows = [ln.split() for ln in lines[k + 2 : k + 2 + n]]
        mols.append(
            (lines[k + 1].strip(), [r[0] for r in rows], np.array([r[1:4] for r in rows], float))
        )
        k += 2 + n
    rng = np.random.default_rng(seed)
    out = []
    for c in range(copies):
        for name, symbols, xyz in mols:
            q, r = np.linalg.qr(rng.normal(size=(3, 3)))
            pos = (xyz - xyz.mean(0)) @ (q * np.sign(np.diag(r))).T
            pos += rng.uniform(-0.01, 0.01, size=pos.shape)
            out.append(f"{len(symbols)}\n{name}_r{c}")
            out += [
                f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in zip(symbols, pos, strict=True)
            ]
    return "\n".join(out) + "\n"


def model_throughput(p: Predictor, graphs: list, batches=BATCHES, min_seconds: float = 1.0) -> None:
    n_members = len(p.models)
    print(
        f"model: {n_members}-member ensemble on {p.device}, {torch.get_num_threads()} CPU threads"
    )
    for b in batches:
        pool = [graphs[i % len(graphs)] for i in range(max(b, 1))]
        p.predict_graphs(pool[:b], batch_size=b)  # warm-up
        if p.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(p.device)
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while True:
            p.predict_graphs(pool[:b], batch_size=b)
            n += b
            if p.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if dt >= min_seconds:
                break
        cpu = ""
        if p.device.type == "cpu":  # CPU time tells the cost apart from other load on the box
            cpu = f", {1e6 * (time.process_time() - c0) / n:7.0f} CPU-us/spectrum"
        print(
            f"batch {b:5d}: {n / dt:10.0f} spectra/s (ensemble, collate included){cpu}, "
            f"peak memory {_peak_memory_mb(p.device):8.1f} MB"
        )


def feff_seconds(edge: str, n_sites: int = 2) -> None:
    from xas_bluesky.resources import candidates_file
    from xas_bluesky.science.feff import SiteJob, feff_available, run_site
    from xas_bluesky.science.structures import read_structures

    if not feff_available():
        print("FEFF10: feff10 not importable, not timed")
        return
    from concurrent.futures import ProcessPoolExecutor

    from xas_bluesky.science import feff

    structs = read_structures(candidates_file(edge), edge=edge)[:n_sites]
    times = []
    # one worker, FEFF's own chatter on its stdout silenced as the simulate command does
    with ProcessPoolExecutor(max_workers=1, initializer=feff._quiet_worker) as pool:
        for s in structs:
            site = s.sites(edge)[0]
            xyz = tuple(map(tuple, s.xyz.tolist()))
            job = SiteJob(0, s.smiles, edge, site, tuple(s.symbols), xyz)
            rec = pool.submit(run_site, job).result()
            times.append(rec["seconds"])
            state = "ok" if rec["ok"] else "failed"
            print(f"FEFF10 {s.name} {edge} site {site}: {rec['seconds']:.1f} s ({state})")
    print(
        f"FEFF10: {np.mean(times):.1f} s per site spectrum on 1 core "
        "(a molecular spectrum needs every site)"
    )


def command_throughput(edge: str, small: int = 4, large: int = 24, repeats: int = 2) -> None:
    """Marginal spectra/s of ``xas-bluesky predict`` between two input sizes (2,400 and 14,400
    structures), as shipped (the network in a worker process) and with the worker switched off
    (everything in one process: the baseline)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths, per_copy = {}, _distinct_frames(edge, 1).count("_r0\n")
        for copies in (small, large):
            path = Path(tmp) / f"mols_{copies}.xyz"
            path.write_text(_distinct_frames(edge, copies))
            paths[copies] = path
        for mode, threshold in (("worker process", None), ("one process", str(2**62))):
            env = dict(os.environ)
            if threshold:
                env["XAS_BLUESKY_PREDICT_WORKER_MIN_BYTES"] = threshold
            runs = {}
            for copies, path in paths.items():
                n = copies * per_copy
                best, best_cpu = np.inf, np.inf
                for _ in range(repeats):
                    c0 = _children_cpu()
                    t0 = time.perf_counter()
                    subprocess.run(
                        [sys.executable, "-m", "xas_bluesky.apps.cli", "predict", "--edge", edge,
                         "--structures", str(path), "--out", str(Path(tmp) / "out.csv")],
                        check=True, capture_output=True, cwd=ROOT, env=env,
                    )  # fmt: skip
                    best = min(best, time.perf_counter() - t0)
                    best_cpu = min(best_cpu, _children_cpu() - c0)
                runs[copies] = (n, best, best_cpu)
                print(
                    f"predict command ({mode}): {n} structures in {best:.2f} s, "
                    f"{best_cpu:.2f} CPU-s (best of {repeats})"
                )
            (n1, t1, c1), (n2, t2, c2) = runs[small], runs[large]
            print(
                f"predict command ({mode}): marginal throughput {(n2 - n1) / (t2 - t1):.0f} "
                f"spectra/s (full ensemble, distinct structures, {os.cpu_count()} CPU cores), "
                f"fixed start-up {t1 - n1 * (t2 - t1) / (n2 - n1):.2f} s; "
                f"{1e6 * (c2 - c1) / (n2 - n1):.0f} CPU-us per extra spectrum"
            )


def _describe(p: Predictor) -> str:
    """Model version and architecture (checkpoints from before SchNet name none: MPNN)."""
    return f"{p.model_version} ({p.metadata['config'].get('arch', 'mpnn')})"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edge", default="O", choices=["O", "N"])
    ap.add_argument("--device", help="torch device (default: cuda if available)")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--save-graphs", help="build the benchmark graphs, save them here and stop")
    ap.add_argument("--graphs", help="prebuilt graphs (no RDKit needed): time the model only")
    ap.add_argument("--copies", type=int, default=7, help="rotated copies of the library to use")
    ap.add_argument("--no-command", action="store_true", help="skip the predict-command timing")
    ap.add_argument("--no-feff", action="store_true", help="skip FEFF10")
    ap.add_argument(
        "--baseline",
        help="another checkpoint directory (ensemble.pt, metadata.json): its model throughput is "
        "timed after the shipped one's, on the same graphs in the same process",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.graphs:
        graphs, names, edge = load_graphs(args.graphs)
        p = Predictor.load(edge, device=args.device)
        print(f"{len(graphs)} prebuilt {edge} graphs from {args.graphs}")
        if p.device.type == "cuda":
            print(f"device: {torch.cuda.get_device_name(p.device)}")
        model_throughput(p, graphs, batches=(*BATCHES, 16384, 65536))
        return
    from xas_bluesky.science.structures import read_structures

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mols.xyz"
        path.write_text(_distinct_frames(args.edge, args.copies))
        structs = read_structures(path, edge=args.edge)
    p = Predictor.load(args.edge, device=args.device)
    graphs = p.graphs(structs)
    if args.save_graphs:
        save_graphs(args.save_graphs, graphs, [s.name for s in structs], args.edge)
        print(f"saved {len(graphs)} {args.edge} graphs to {args.save_graphs}")
        return
    print(f"{args.edge} K edge, model {_describe(p)}, {len(structs)} distinct QM9-size molecules")
    model_throughput(p, graphs)
    if args.baseline:
        q = Predictor.load(args.edge, device=args.device, directory=args.baseline)
        print(f"baseline: model {_describe(q)}")
        model_throughput(q, graphs)
    if not args.no_feff:
        feff_seconds(args.edge)
    if not args.no_command:
        command_throughput(args.edge)


if __name__ == "__main__":
    main()
