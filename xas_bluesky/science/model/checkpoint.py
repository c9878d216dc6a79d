"""Ensemble checkpoints shipped in ``xas_bluesky/resources/models/<edge>/``.

``ensemble.pt`` holds the members' weights and the metadata (``torch.load(weights_only=True)``
reads it: no code is unpickled); ``metadata.json`` repeats the metadata for people and tools.
The model version is a hash of the weights, so a retrained ensemble always gets a new one
(predictions are cached per model version and structure).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from xas_bluesky.science.model.network import XasMPNN
from xas_bluesky.science.model.schnet import XasSchNet

__all__ = [
    "model_dir",
    "weights_version",
    "save_ensemble",
    "load_ensemble",
    "round_to_shipped",
    "model_from_config",
]

WEIGHTS_FILE = "ensemble.pt"
METADATA_FILE = "metadata.json"


def model_dir(edge: str) -> Path:
    """Directory of the shipped ensemble of ``edge``."""
    from xas_bluesky.resources import RESOURCES

    return RESOURCES / "models" / edge


def weights_version(states: list[dict]) -> str:
    """A short hash of the members' weights (name, shape and bytes of every tensor)."""
    h = hashlib.sha256()
    for state in states:
        for name in sorted(state):
            t = state[name].detach().cpu().contiguous()
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def model_from_config(config: dict) -> nn.Module:
    """The network a checkpoint's ``config`` describes (no ``arch``: :class:`XasMPNN`)."""
    config = dict(config)
    arch = config.pop("arch", "mpnn")
    if arch == "schnet":
        return XasSchNet(**config)
    if arch != "mpnn":
        raise ValueError(f"unknown architecture {arch!r}")
    return XasMPNN(**config)


def _half(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    return t.half() if t.is_floating_point() else t.clone()


def round_to_shipped(model: nn.Module) -> nn.Module:
    """Round a model's weights to the float16 values :func:`save_ensemble` stores."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    return model


def save_ensemble(directory: str | os.PathLike, models: list[nn.Module], metadata: dict) -> dict:
    """Write ``ensemble.pt`` and ``metadata.json``; returns the metadata as written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # float16 halves the package's size; train_ensemble rounds the members to it before it
    # evaluates them, so the recorded metrics are those of the shipped weights
    states = [{k: _half(v) for k, v in m.state_dict().items()} for m in models]
    config = models[0].config()  # type: ignore[operator]  # both architectures have one
    metadata = dict(metadata, model_version=weights_version(states), config=config)
    metadata = json.loads(json.dumps(metadata, default=str))  # plain types for weights_only
    path = directory / WEIGHTS_FILE
    torch.save({"metadata": metadata, "members": states}, path)
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return metadata


def load_ensemble(
    directory: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[list[nn.Module], dict]:
    """Members (in eval mode, on ``device``) and metadata of a saved ensemble."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path} (run: xas-bluesky train)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["metadata"]
    models = []
    for state in blob["members"]:
        m = model_from_config(meta["config"])
        m.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        models.append(m.to(device).eval())
    meta["model_version"] = weights_version(blob["members"])
    return models, meta
