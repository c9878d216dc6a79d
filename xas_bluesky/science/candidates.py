"""Candidate structures and their predicted spectra, predicted once per (model, geometry).

:class:`PredictionCache` turns structures (or a structure file) into a :class:`CandidateSet`:
the model's mean and spread of each candidate on the model's grid, with the comparator's
calibration of that model.  Predictions are kept in memory and, through a
:class:`PredictionStore` (tiled's is :class:`xas_bluesky.beamline.catalog.TiledPredictionStore`),
looked up before and saved after a forward pass.  Pure science: no Bluesky, no EPICS.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from xas_bluesky.science.compare import calibration_for
from xas_bluesky.science.structures import Structure, StructureError, read_structures

__all__ = [
    "CandidateSet",
    "PredictionStore",
    "PredictionCache",
    "structure_key",
    "model_calibration",
]

logger = logging.getLogger(__name__)

#: candidate files whose CandidateSet a PredictionCache keeps
_MAX_FILES = 16


def structure_key(structure: Structure) -> str:
    """Identity of a structure for the prediction cache: its elements and geometry (to 1e-4 A).

    The model sees only atoms and geometry, so two names of one geometry share a prediction.
    """
    h = hashlib.sha1()
    h.update(",".join(structure.symbols).encode())
    h.update(np.round(np.asarray(structure.xyz, dtype=float), 4).tobytes())
    return h.hexdigest()[:20]


def model_calibration(model: Any) -> dict[str, Any]:
    """The comparator keywords of a model (its checkpoint's calibration), ``{}`` when unknown.

    ``model`` is a predictor, its metadata dict, or a stored calibration dict.
    """
    try:
        return calibration_for(model)
    except Exception:  # a model without metadata: the comparator's defaults apply
        logger.exception("no calibration for model %r", getattr(model, "model_version", model))
        return {}


@dataclass
class CandidateSet:
    """Predicted spectra of a set of candidate structures on the model's grid."""

    names: list[str]
    smiles: list[str]
    energy: np.ndarray
    mean: np.ndarray  # (C, E)
    std: np.ndarray | None  # (C, E)
    edge: str
    model_version: str | None
    source: str = ""
    keys: list[str] = field(default_factory=list)  # structure keys
    skipped: list[str] = field(default_factory=list)  # why some input structures were left out
    calibration: dict = field(default_factory=dict)  # comparator keywords of the model
    #: candidates merged into another of the same geometry (``"b -> a|b"``)
    merged: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def deduplicated(self, sep: str = "|") -> CandidateSet:
        """One candidate per geometry (:func:`structure_key`): the first of each, its names
        joined with ``sep`` (``"a|b"``), so that two names of one molecule do not split its
        probability.  ``self`` when no two keys are equal (or there are no keys)."""
        if not self.keys or len(set(self.keys)) == len(self.keys):
            return self
        first: dict[str, int] = {}
        groups: list[list[int]] = []
        for i, k in enumerate(self.keys):
            if k in first:
                groups[first[k]].append(i)
            else:
                first[k] = len(groups)
                groups.append([i])
        keep = [g[0] for g in groups]
        names = [sep.join(dict.fromkeys(self.names[i] for i in g)) for g in groups]
        merged = [f"{self.names[i]} -> {names[n]}" for n, g in enumerate(groups) for i in g[1:]]
        return CandidateSet(
            names=names,
            smiles=[self.smiles[i] for i in keep],
            energy=self.energy,
            mean=self.mean[keep],
            std=None if self.std is None else self.std[keep],
            edge=self.edge,
            model_version=self.model_version,
            source=self.source,
            keys=[self.keys[i] for i in keep],
            skipped=list(self.skipped),
            calibration=dict(self.calibration),
            merged=list(self.merged) + merged,
        )

    @property
    def ident(self) -> str:
        """A digest of edge, model and structures: one comparator serves one candidate set."""
        h = hashlib.sha1(f"{self.edge}|{self.model_version}|".encode())
        h.update("|".join(self.keys or self.names).encode())
        return h.hexdigest()[:16]


class PredictionStore(Protocol):
    """Where predictions outlive the process (tiled: :mod:`xas_bluesky.beamline.catalog`)."""

    def load(
        self, *, model_version: str, edge: str, keys: Sequence[str]
    ) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """Stored ``{key: (mean row, std row or None)}`` of the structures ``keys``."""
        ...

    def save(
        self,
        structures: Sequence[Structure],
        mean: np.ndarray,
        std: np.ndarray | None,
        *,
        energy: np.ndarray,
        edge: str,
        model_version: str,
        keys: Sequence[str],
        calibration: dict,
    ) -> object:
        """Store the predictions of ``structures`` (rows of ``mean`` / ``std``)."""
        ...


def _load_predictor(edge: str):
    # torch is imported only when a prediction is needed (the CLI starts without it)
    from xas_bluesky.science.model.predictor import Predictor

    return Predictor.load(edge)


class PredictionCache:
    """Predictions of candidate structures, made once per (model version, structure).

    Parameters
    ----------
    predictor_factory
        ``edge -> predictor`` with ``.predict(structures, return_std=True)``, ``.energy``,
        ``.model_version`` (default
        :meth:`~xas_bluesky.science.model.predictor.Predictor.load`).
    store
        Where predictions are also looked up and saved (a :class:`PredictionStore`), or None.
    batch_size
        Structures per forward pass.
    """

    def __init__(
        self,
        predictor_factory: Callable[[str], Any] | None = None,
        store: PredictionStore | None = None,
        batch_size: int = 1024,
    ):
        self._factory = predictor_factory or _load_predictor
        self.store = store
        self.batch_size = batch_size
        self._predictors: dict[str, Any] = {}
        self._rows: dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None]] = {}
        self._files: dict[tuple, CandidateSet] = {}
        self._lock = threading.RLock()  # one build at a time: the demo's thread and the worker
        #: structures predicted by the model (not found in a cache), for tests and logs
        self.n_predicted = 0

    def predictor(self, edge: str):
        """The predictor of ``edge``, loaded once."""
        if edge not in self._predictors:
            self._predictors[edge] = self._factory(edge)
        return self._predictors[edge]

    def from_file(self, path: str | os.PathLike, edge: str) -> CandidateSet:
        """Candidates of an XYZ/SDF/SMILES file; invalid structures are skipped and listed in
        :attr:`CandidateSet.skipped` (an error only when none is left)."""
        path = Path(path)
        stat = path.stat()
        memo = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, edge)
        with self._lock:
            if memo in self._files:
                return self._files[memo]
            skipped: list[str] = []
            structures = read_structures(
                path, edge=edge, skip_invalid=True, on_skip=lambda e: skipped.append(str(e))
            )
            if not structures:
                raise StructureError(
                    f"{path.name}: no valid candidate structure ({len(skipped)} bad)"
                )
            cands = self._from_structures(structures, edge, source=str(path)).deduplicated()
            cands.skipped = skipped
            if len(self._files) >= _MAX_FILES:  # a long session names many files: keep the newest
                self._files.pop(next(iter(self._files)))
            self._files[memo] = cands
            return cands

    def from_structures(
        self, structures: Sequence[Structure], edge: str, source: str = ""
    ) -> CandidateSet:
        """Predicted spectra of ``structures`` (cached ones are not predicted again)."""
        with self._lock:
            return self._from_structures(structures, edge, source)

    def _from_structures(
        self, structures: Sequence[Structure], edge: str, source: str
    ) -> CandidateSet:
        predictor = self.predictor(edge)
        version = str(getattr(predictor, "model_version", None))
        energy = np.asarray(predictor.energy, dtype=float)
        calibration = model_calibration(predictor)
        keys = [structure_key(s) for s in structures]
        missing = [i for i, k in enumerate(keys) if (version, k) not in self._rows]
        if missing and self.store is not None:
            missing = self._from_store(version, edge, keys, missing)
        if missing:
            todo = [structures[i] for i in missing]
            mean, std = predictor.predict(todo, batch_size=self.batch_size, return_std=True)
            mean = np.asarray(mean, dtype=np.float32)
            std = None if std is None else np.asarray(std, dtype=np.float32)
            self.n_predicted += len(todo)
            for j, i in enumerate(missing):
                self._rows[(version, keys[i])] = (mean[j], None if std is None else std[j])
            if self.store is not None:
                try:
                    self.store.save(
                        todo, mean, std, energy=energy, edge=edge, model_version=version,
                        keys=[keys[i] for i in missing], calibration=calibration,
                    )  # fmt: skip
                except Exception:  # the cache in memory still works
                    logger.exception("could not store predictions")
        rows = [self._rows[(version, k)] for k in keys]
        mean = np.stack([r[0] for r in rows])
        # the else branch has every row's std
        std = (
            None
            if any(r[1] is None for r in rows)
            else np.stack(cast("list[np.ndarray]", [r[1] for r in rows]))
        )
        return CandidateSet(
            names=[s.name for s in structures],
            smiles=[_smiles(s) for s in structures],
            energy=energy,
            mean=mean,
            std=std,
            edge=edge,
            model_version=version,
            source=source,
            keys=keys,
            calibration=calibration,
        )

    def _from_store(self, version: str, edge: str, keys: list[str], missing: list[int]):
        assert self.store is not None
        try:
            found = self.store.load(
                model_version=version, edge=edge, keys=[keys[i] for i in missing]
            )
        except Exception:
            logger.exception("could not look up stored predictions")
            return missing
        for k, (m, s) in found.items():
            self._rows[(version, k)] = (m, s)
        return [i for i in missing if keys[i] not in found]


def _smiles(structure: Structure) -> str:
    try:
        return str(structure.smiles)
    except Exception:
        return ""
