"""``xas-bluesky simulate``: grow the FEFF10 training set from QM9, resumably, in parallel."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="run FEFF10 on QM9 molecules (or an XYZ file) and append site spectra to a JSONL file",
        description=(
            "One FEFF10 run per O/N absorbing site, written as one JSON line per site (the schema of "
            "qm9_feff10_sites.jsonl.gz). Sites already in --out or --skip files are not run again, "
            "so an interrupted batch resumes where it stopped. Needs the 'simulate' extra."
        ),
    )
    p.add_argument("--out", required=True, help="JSONL file to append to (created if missing)")
    p.add_argument("--qm9", type=int, default=0, help="number of random QM9 molecules to take")
    p.add_argument("--qm9-index", type=int, nargs="*", default=[], help="explicit QM9 indices")
    p.add_argument("--offset", type=int, default=0, help="skip this many molecules of the draw")
    p.add_argument("--seed", type=int, default=0, help="seed of the random QM9 draw")
    p.add_argument(
        "--molecules",
        help="JSONL of molecules (qm9_index, smiles, symbols, xyz) instead of the QM9 draw",
    )
    p.add_argument("--elements", default="O,N", help="absorbing elements (default O,N)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument(
        "--skip", nargs="*", default=[], help="JSONL(.gz) files whose molecules/sites are skipped"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xas_bluesky.science.feff import (
        check_output,
        completed_keys,
        feff_available,
        run_sites,
        site_jobs,
    )

    if not feff_available():
        from xas_bluesky.apps.cli import CLIError

        raise CLIError("feff10-rs is not installed (pip install 'xas-bluesky[simulate]')", 2)
    try:  # before the QM9 draw, which takes a while
        check_output(args.out)
    except ValueError as exc:
        from xas_bluesky.apps.cli import CLIError

        raise CLIError(f"--out {exc}", 2) from None
    elements = tuple(e.strip() for e in args.elements.split(",") if e.strip())
    done = completed_keys([args.out, *args.skip])
    done_mols = {k[0] for k in completed_keys(args.skip)}
    wanted = set(args.qm9_index)
    if args.molecules:
        with open(args.molecules) as fh:
            mols = [json.loads(line) for line in fh if line.strip()]
    else:
        from xas_bluesky.science.qm9 import iter_qm9

        mols = list(iter_qm9(elements))
    mols = [m for m in mols if m["qm9_index"] not in done_mols]
    if wanted:
        chosen = [m for m in mols if m["qm9_index"] in wanted]
    elif args.molecules:
        chosen = mols
    else:
        random.Random(args.seed).shuffle(mols)
        chosen = mols[args.offset : args.offset + args.qm9]
    jobs = list(site_jobs(chosen, elements))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    def progress(i: int, n: int, rec: dict) -> None:
        state = "ok" if rec["ok"] else "FAILED"
        print(
            f"[{i}/{n}] qm9 {rec['qm9_index']} {rec['element']} site {rec['site']}: "
            f"{state} ({rec['seconds']:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    n = run_sites(jobs, args.out, workers=args.workers, done=done, progress=progress)
    print(f"simulate: {n} sites run, appended to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # lets a bare machine run it without the CLI's heavier imports
    _parser = argparse.ArgumentParser(prog="xas-bluesky")
    add_parser(_parser.add_subparsers())
    _args = _parser.parse_args()
    sys.exit(_args.func(_args))
