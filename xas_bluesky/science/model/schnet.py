"""A 3D message-passing network with the site readout: SchNet's continuous-filter convolutions.

Schütt, Kindermans, Sauceda, Chmiela, Tkatchenko, Müller, "SchNet: A continuous-filter
convolutional neural network for modeling quantum interactions", NeurIPS 2017 (arXiv:1706.08566),
and J. Chem. Phys. 148, 241722 (2018), with PyTorch Geometric's ``InteractionBlock`` and
``GaussianSmearing`` (``torch_geometric.nn.models.schnet``).  Where :class:`XasMPNN` passes messages
along the bonds only (their type and length), SchNet passes them between every pair of atoms of a
molecule within ``cutoff``, filtered by their distance: the geometry, not the bond perception,
carries the structure.

Nodes are the heavy atoms with the same features as :class:`XasMPNN` (element, hybridisation,
aromaticity, H count, absorber flag); their positions are ``g.pos``
(:class:`~xas_bluesky.science.graphs.GraphArrays`).  The readout is :func:`~xas_bluesky.science.model.network.site_spectra`: one
spectrum per absorber from its state, the molecule's Set2Set summary and its 3D surroundings.

It is measured against :class:`XasMPNN` by ``benchmarks/variants.py --variants site schnet`` (see
``docs/model.rst``); a checkpoint of either architecture loads and predicts through
:class:`~xas_bluesky.science.model.predictor.Predictor`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn.aggr import Set2Set
from torch_geometric.nn.models.schnet import GaussianSmearing, InteractionBlock

from xas_bluesky.science.graphs import ELEMENTS, ENV_DIM, MAX_H, N_HYBRID
from xas_bluesky.science.model.network import site_spectra

__all__ = ["XasSchNet", "molecule_pairs"]


def molecule_pairs(batch: torch.Tensor) -> torch.Tensor:
    """Every ordered pair (i, j), i != j, of nodes of one graph: shape (2, n_pairs).

    Molecules are small (QM9: at most 9 heavy atoms), so all pairs are cheap and no neighbour
    search (``torch-cluster``'s ``radius_graph``) is needed; the cutoff is applied afterwards.
    """
    n = batch.shape[0]
    counts = torch.bincount(batch)
    start = torch.cumsum(counts, 0) - counts
    per_node = counts[batch]  # pairs each node is the source of (its molecule's size)
    src = torch.repeat_interleave(torch.arange(n, device=batch.device), per_node)
    first = torch.cumsum(per_node, 0) - per_node
    dst = torch.arange(src.shape[0], device=batch.device) - torch.repeat_interleave(first, per_node)
    dst = dst + torch.repeat_interleave(start[batch], per_node)
    keep = src != dst
    return torch.stack([src[keep], dst[keep]])


class XasSchNet(nn.Module):
    """SchNet trunk with the site readout.

    Parameters
    ----------
    n_out : int
        Number of energies of the output grid.
    dim : int
        Width of the atom states.
    steps : int
        Interaction blocks.
    n_filters : int
        Width of the continuous filters.
    n_gaussians : int
        Gaussians of the distance expansion, 0 to ``cutoff``.
    cutoff : float
        Interaction radius (Angstrom); the filters go smoothly to zero there (cosine cutoff).
    env : bool
        Also feed the head each absorber's 3D surroundings, as :class:`XasMPNN` does.
    """

    readout = "site"

    def __init__(
        self,
        n_out: int,
        dim: int = 64,
        steps: int = 3,
        n_filters: int = 64,
        n_gaussians: int = 50,
        cutoff: float = 5.0,
        env: bool = True,
    ):
        super().__init__()
        self.n_out, self.dim, self.steps, self.env = n_out, dim, steps, env
        self.n_filters, self.n_gaussians, self.cutoff = n_filters, n_gaussians, cutoff
        sizes = (len(ELEMENTS), N_HYBRID, 2, MAX_H + 1, 2)
        self.embed = nn.ModuleList(nn.Embedding(s, dim) for s in sizes)
        self.distance = GaussianSmearing(0.0, cutoff, n_gaussians)
        self.interactions = nn.ModuleList(
            InteractionBlock(dim, n_gaussians, n_filters, cutoff) for _ in range(steps)
        )
        self.set2set = Set2Set(dim, processing_steps=3)
        n_in = 3 * dim
        if env:
            self.env_net = nn.Sequential(nn.Linear(ENV_DIM, dim), nn.ReLU())
            n_in += dim
        self.head = nn.Sequential(
            nn.Linear(n_in, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, n_out)
        )

    def config(self) -> dict:
        return {
            "arch": "schnet",
            "n_out": self.n_out,
            "dim": self.dim,
            "steps": self.steps,
            "n_filters": self.n_filters,
            "n_gaussians": self.n_gaussians,
            "cutoff": self.cutoff,
            "env": self.env,
        }

    def trunk(self, g) -> tuple[torch.Tensor, torch.Tensor]:
        """Atom states (n_nodes, dim) and molecule summaries (n_graphs, 2 dim)."""
        if getattr(g, "pos", None) is None:
            raise ValueError("XasSchNet needs the atoms' positions (g.pos) in the graph")
        h = sum(emb(g.x[:, k]) for k, emb in enumerate(self.embed))
        pairs = molecule_pairs(g.batch)
        dist = (g.pos[pairs[0]] - g.pos[pairs[1]]).norm(dim=1)
        near = dist < self.cutoff
        pairs, dist = pairs[:, near], dist[near]
        attr = self.distance(dist)
        for block in self.interactions:
            h = h + block(h, pairs, dist, attr)  # SchNet's residual update
        summary = self.set2set(h, g.batch, dim_size=int(g.num_graphs))
        return h, summary

    def forward(self, g) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Molecular spectra, site spectra and each site's graph (as :meth:`XasMPNN.forward`)."""
        h, summary = self.trunk(g)
        return site_spectra(g, h, summary, self.head, self.env_net if self.env else None)
