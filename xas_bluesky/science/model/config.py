"""Training settings of the XANES ensemble (no heavy imports: the CLI reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Settings of one training run (the shipped ensembles use the defaults)."""

    readout: str = "site"
    #: ``"mpnn"`` (bond graph, :class:`~xas_bluesky.science.model.network.XasMPNN`, shipped) or
    #: ``"schnet"`` (all atom pairs by distance, :class:`~xas_bluesky.science.model.schnet.XasSchNet`)
    arch: str = "mpnn"
    dim: int = 32
    steps: int = 3
    edge_hidden: int = 32
    env: bool = True
    epochs: int = 200
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-5
    deriv_weight: float = 1.0
    jitter: float = 0.01  # Angstrom, on bond lengths
    seed: int = 0
    #: also train on the other edge's training molecules (one network for O and N: the grids
    #: have the same length and the absorber's element is among its node features)
    joint: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ("mpnn", "schnet"):
            raise ValueError(f"arch must be 'mpnn' or 'schnet', not {self.arch!r}")
        if self.arch == "schnet" and self.readout != "site":
            raise ValueError("the SchNet variant has the site readout only")
        if self.readout != "site":  # the absorber's surroundings feed the site head only
            self.env = False
