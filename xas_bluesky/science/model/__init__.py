"""The structure-to-spectrum network, its training, checkpoints and the batched predictor.

Modules: :mod:`.network` (the MPNN), :mod:`.training`, :mod:`.checkpoint`, :mod:`.metrics` (peak
positions within 1 eV, as Carbone et al. 2020 judge them), :mod:`.predictor` (:class:`Predictor`).
Importing this package does not import RDKit.
"""

from __future__ import annotations

__all__ = ["Predictor"]


def __getattr__(name: str):
    if name == "Predictor":
        from xas_bluesky.science.model.predictor import Predictor

        return Predictor
    raise AttributeError(name)
