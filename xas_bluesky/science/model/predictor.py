"""Batched prediction of XANES with a shipped ensemble, on the GPU when there is one.

>>> from xas_bluesky.science.structures import read_structures
>>> from xas_bluesky.science.model.predictor import Predictor
>>> p = Predictor.load("O")
>>> mu, std = p.predict(read_structures("mols.xyz", edge="O"), return_std=True)

``mu`` is an ``xarray.DataArray`` (structure x energy) with the structures' names, SMILES and
in-domain flags as coordinates and ``model_version`` / ``edge`` as attributes.  Only
:meth:`Predictor.predict` touches the structures' RDKit molecules; :meth:`Predictor.predict_graphs`
works from prebuilt graphs on a machine without RDKit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from xas_bluesky.science.graphs import collate, graph_arrays
from xas_bluesky.science.model.checkpoint import load_ensemble, model_dir

__all__ = ["Predictor", "best_device", "join_predictions"]


def best_device() -> str:
    """``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def join_predictions(parts: list, n_energy: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) pairs of consecutive batches joined into one (mean, std), each (n, n_energy)."""
    if not parts:
        empty = np.empty((0, n_energy), dtype=np.float32)
        return empty, empty.copy()
    return np.concatenate([m for m, _ in parts]), np.concatenate([s for _, s in parts])


class Predictor:
    """An ensemble of trained networks for one edge.

    Attributes
    ----------
    edge : str
    energy : numpy.ndarray
        The output grid (eV, FEFF10's absolute axis).
    model_version : str
        Hash of the ensemble's weights.
    metadata : dict
        The checkpoint's metadata (data hash, metrics, training figures).
    device : torch.device
    """

    def __init__(self, models: list, metadata: dict, device: str | torch.device = "cpu"):
        self.models = models
        self.metadata = metadata
        self.device = torch.device(device)
        self.edge: str = metadata["edge"]
        self.energy = np.asarray(metadata["energy"], dtype=float)
        self.model_version: str = metadata["model_version"]

    @classmethod
    def load(cls, edge: str, device: str | None = None, directory=None) -> Predictor:
        """The shipped ensemble of ``edge`` (``"O"`` or ``"N"``), read from the package (no network).

        ``device`` defaults to ``"cuda"`` when available, else ``"cpu"``.
        """
        from xas_bluesky.science.grids import EDGES

        if edge not in EDGES:
            raise ValueError(f"unknown edge {edge!r}: expected one of {', '.join(EDGES)}")
        device = device or best_device()
        models, meta = load_ensemble(directory or model_dir(edge), device)
        return cls(models, meta, device)

    @property
    def default_batch_size(self) -> int:
        """256 molecules on the CPU (their edge matrices stay in cache), 16384 on a GPU."""
        return 16384 if self.device.type == "cuda" else 256

    def predict_graphs(
        self, graphs: Sequence, batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and standard deviation of prebuilt graphs, each (n, n_energy)."""
        batch_size = max(1, batch_size or self.default_batch_size)
        return self.predict_batches(
            collate(list(graphs[k : k + batch_size])) for k in range(0, len(graphs), batch_size)
        )

    def predict_batches(self, batches: Iterable) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_batch` of each collated batch, joined: mean and std, each (n, n_energy)."""
        return join_predictions([self.predict_batch(b) for b in batches], len(self.energy))

    def predict_batch(self, batch) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and standard deviation of one collated batch
        (:func:`xas_bluesky.science.graphs.collate`), each (n_graphs, n_energy)."""
        with torch.inference_mode():
            g = batch.to(self.device)
            ys = torch.stack([m(g)[0] for m in self.models])
            return ys.mean(0).cpu().numpy(), ys.std(0, unbiased=False).cpu().numpy()

    def graphs(self, structures: Sequence) -> list:
        """Graphs of ``structures`` for this edge; a structure without an absorbing atom is an error."""
        from xas_bluesky.science.structures import StructureError

        for s in structures:
            if self.edge not in s.symbols:
                raise StructureError(
                    f"structure {s.name!r}: no {self.edge} atom to absorb at the {self.edge} K edge"
                )
        return graph_arrays(structures, self.edge)

    def predict(
        self, structures: Sequence, batch_size: int | None = None, return_std: bool = False
    ):
        """Predicted spectra of ``structures``.

        Parameters
        ----------
        structures : sequence of Structure
        batch_size : int, optional
            Molecules per forward pass (default :attr:`default_batch_size`).
        return_std : bool
            Also return the ensemble's per-energy standard deviation.

        Returns
        -------
        xarray.DataArray or (xarray.DataArray, xarray.DataArray)
            dims ``(structure, energy)``; coords ``energy``, ``name``, ``smiles``, ``in_domain``;
            attrs ``model_version``, ``edge``, ``units``.
        """
        mean, std = self.predict_graphs(self.graphs(structures), batch_size)
        out = self._wrap(mean, structures, "mu")
        return (out, self._wrap(std, structures, "mu_std")) if return_std else out

    def _wrap(self, values: np.ndarray, structures: Sequence, name: str):
        import xarray as xr

        return xr.DataArray(
            values,
            dims=("structure", "energy"),
            coords={
                "energy": self.energy,
                "name": ("structure", [s.name for s in structures]),
                "smiles": ("structure", [s.smiles for s in structures]),
                "in_domain": ("structure", np.array([bool(s.in_domain) for s in structures])),
            },
            name=name,
            attrs={"model_version": self.model_version, "edge": self.edge, "units": "mu (FEFF)"},
        )
