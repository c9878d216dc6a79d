"""Pack the sites a running ``xas-bluesky simulate`` job appended to a JSONL file into a new
compressed batch under ``data/feff/`` -- only the sites not already in a committed batch.

    python tools/pack_feff_batch.py data/feff/running.jsonl --tag local
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from xas_bluesky.science.dataset import default_data_files
from xas_bluesky.science.feff import completed_keys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("source")
    ap.add_argument("--tag", default="local")
    args = ap.parse_args()
    files = default_data_files()
    done = completed_keys(files)
    new = []
    for line in Path(args.source).read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # the line being written right now
            continue
        key = (int(r["qm9_index"]), r["element"], int(r["site"]))
        if key not in done:
            done.add(key)
            new.append(line)
    if not new:
        print("nothing new")
        return
    root = files[0].parent
    n = 1 + sum(1 for f in files if f"_{args.tag}_" in f.name)
    out = root / f"qm9_feff10_sites_{args.tag}_{n:03d}.jsonl.gz"
    with gzip.open(out, "wt") as fh:
        fh.write("\n".join(new) + "\n")
    print(f"{out}: {len(new)} sites")


if __name__ == "__main__":
    main()
