"""Shared pieces of the tests that train or calibrate: a small FEFF data file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def small_feff_file(path: Path, element: str, n_molecules: int) -> Path:
    """Every site of the first ``n_molecules`` molecules with ``element`` in the first committed
    FEFF data file (their other edge's sites too), written to ``path`` (``.jsonl.gz``): a data
    set a test trains or calibrates on in seconds."""
    from xas_bluesky.science.dataset import default_data_files

    keep, rows = set(), []
    with gzip.open(default_data_files()[0], "rt") as fh:
        for line in fh:
            r = json.loads(line)
            if r["qm9_index"] in keep or (r["element"] == element and len(keep) < n_molecules):
                keep.add(r["qm9_index"])
                rows.append(line)
    with gzip.open(path, "wt") as fh:
        fh.writelines(rows)
    return path
