"""The model's predictions of the shipped reference library, cached on disk per edge and model.

The open-world analysis (:mod:`xas_bluesky.science.compare.novelty`) scores a measurement
against the GNN's predictions of ~10,000 training-split QM9 molecules
(:func:`~xas_bluesky.science.groups.shipped_library`).  Predicting them costs minutes on a CPU,
so they are computed once per edge and model version and kept as ``.npz``
(:meth:`~xas_bluesky.science.groups.GroupLibrary.save`) under
``$XDG_CACHE_HOME/xas_bluesky/libraries`` (``~/.cache/...``): the cache ``xas-bluesky match``
and the live analysis share.

``python -m xas_bluesky.science.library_cache --edge O [--cache DIR]`` fills the cache (the live
analysis starts it so, in a low-priority process of its own, when the library is missing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "default_library_cache",
    "library_path",
    "shipped_model_version",
    "shipped_metadata",
    "load_cached_library",
    "predict_library",
    "main",
]

logger = logging.getLogger(__name__)


def default_library_cache() -> Path:
    """``$XDG_CACHE_HOME/xas_bluesky/libraries`` (``~/.cache/...`` by default)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "xas_bluesky" / "libraries"


def library_path(edge: str, model_version: str, cache: str | os.PathLike | None = None) -> Path:
    """Where the library of ``edge`` predicted by model ``model_version`` is cached."""
    root = Path(cache) if cache is not None else default_library_cache()
    return root / f"library_{edge}_{model_version}.npz"


def shipped_metadata(edge: str) -> dict[str, Any]:
    """The metadata of the shipped ensemble of ``edge`` (without loading the weights)."""
    from xas_bluesky.science.model.checkpoint import model_dir

    return dict(json.loads((model_dir(edge) / "metadata.json").read_text()))


def shipped_model_version(edge: str) -> str:
    """The model version of the shipped ensemble of ``edge`` (read from its metadata, without
    loading the weights)."""
    return str(shipped_metadata(edge)["model_version"])


def load_cached_library(
    edge: str, model_version: str, cache: str | os.PathLike | None = None
) -> Any:
    """The cached :class:`~xas_bluesky.science.groups.GroupLibrary`, or None when there is none
    (or it is unreadable: a damaged file is logged and treated as missing)."""
    from xas_bluesky.science.groups import GroupLibrary

    path = library_path(edge, model_version, cache)
    if not path.is_file():
        return None
    try:
        return GroupLibrary.load(path)
    except Exception as exc:
        logger.warning("%s: unreadable (%s): treated as missing", path, exc)
        return None


def predict_library(
    edge: str, cache: str | os.PathLike | None = None, predictor: Any = None
) -> Any:
    """Predict the shipped library of ``edge`` and cache it (written atomically: a reader never
    sees half a file); returns the :class:`~xas_bluesky.science.groups.GroupLibrary`.

    A cache that cannot be written is logged; the library is returned all the same.
    """
    from xas_bluesky.science.groups import shipped_library

    if predictor is None:
        from xas_bluesky.science.model.predictor import Predictor

        predictor = Predictor.load(edge)
    lib = shipped_library(edge, predictor)
    path = library_path(edge, predictor.model_version, cache)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        lib.save(tmp)
        tmp.replace(path)
    except OSError as exc:
        logger.warning("could not cache the library in %s: %s", path, exc)
    return lib


def main(argv: list[str] | None = None) -> int:
    """Fill the cache for one edge (``python -m xas_bluesky.science.library_cache``)."""
    p = argparse.ArgumentParser(
        prog="python -m xas_bluesky.science.library_cache",
        description="predict the shipped open-world reference library of an edge and cache it",
    )
    p.add_argument("--edge", choices=["O", "N"], required=True)
    p.add_argument("--cache", default=None, help=f"directory (default {default_library_cache()})")
    args = p.parse_args(argv)
    version = shipped_model_version(args.edge)
    path = library_path(args.edge, version, args.cache)
    if path.is_file():
        print(f"{path}: already cached", file=sys.stderr)
        return 0
    print(f"predicting the {args.edge} reference library into {path}", file=sys.stderr)
    predict_library(args.edge, args.cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
