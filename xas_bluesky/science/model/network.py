"""The message-passing network: Gilmer et al.'s edge network + GRU + Set2Set.

Gilmer, Schoenholz, Riley, Vinyals, Dahl, "Neural Message Passing for Quantum Chemistry", ICML 2017
(arXiv:1704.01212), as used for XANES by Carbone, Topsakal, Lu and Yoo, Phys. Rev. Lett. 124,
156401 (2020), and as in PyTorch Geometric's ``examples/qm9_nn_conv.py``: node features are
embedded, then ``steps`` rounds of an edge-conditioned convolution (``NNConv``: the message from
atom j to atom i is ``h_j @ W(e_ij)``, with the matrix ``W`` made by a small network from the bond's
features) each followed by a GRU update, then a ``Set2Set`` readout over the whole molecule.

Two heads share this trunk (``readout``):

``"site"``
    one spectrum per absorbing atom, from that atom's state joined to the molecule's Set2Set
    summary and (``env=True``, shipped) to the atom's 3D surroundings
    (:func:`~xas_bluesky.science.graphs.site_environment`, through one dense layer); the
    molecular spectrum is the mean over the sites, as FEFF's is.
``"molecule"``
    the molecular spectrum straight from the Set2Set summary.

The edge network's matrices depend only on the bonds, so they are made once per forward pass and
shared by the message-passing rounds (PyG's ``NNConv`` remakes them every round: same result, three
times the cost).  :class:`EdgeConv` is ``NNConv(aggr="mean")`` with that change; a test checks that
they agree.  Only torch and torch_geometric are imported, so a machine without RDKit can run it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn.aggr import Set2Set

from xas_bluesky.science.graphs import BOND_TYPES, ELEMENTS, ENV_DIM, MAX_H, N_HYBRID

__all__ = [
    "XasMPNN",
    "EdgeConv",
    "rbf",
    "molecular_from_sites",
    "site_spectra",
]

#: radial basis of bond lengths: Gaussians centred from 1.0 to 1.7 A
RBF_CENTRES = torch.linspace(1.0, 1.7, 16)
RBF_WIDTH = 0.05


def rbf(length: torch.Tensor) -> torch.Tensor:
    """Bond lengths (Angstrom) expanded in Gaussians, shape (n_edges, 16)."""
    c = RBF_CENTRES.to(length.device, length.dtype)
    return torch.exp(-(((length[:, None] - c[None, :]) / RBF_WIDTH) ** 2))


def _scatter_mean(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(n, src.shape[1], dtype=src.dtype, device=src.device)
    out.index_add_(0, index, src)
    count = torch.zeros(n, dtype=src.dtype, device=src.device)
    count.index_add_(0, index, torch.ones_like(index, dtype=src.dtype))
    return out / count.clamp(min=1)[:, None]


class EdgeConv(nn.Module):
    """``NNConv(dim, dim, aggr="mean")`` taking the edge matrices precomputed.

    ``out_i = h_i @ root + mean_j (h_j @ (W_ij + W0)) + bias``, with ``W0`` (optional) a matrix
    shared by all edges: the edge network's output bias, kept apart so that the per-edge matrices
    are one plain matrix product (adding a bias to an (n_edges, dim * dim) array costs as much
    memory traffic as making it).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.root = nn.Linear(dim, dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(
        self,
        h: torch.Tensor,
        edge_index: torch.Tensor,
        w: torch.Tensor,
        w0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        src, dst = edge_index
        msg = torch.bmm(h[src].unsqueeze(1), w).squeeze(1)
        if w0 is not None:
            msg = msg + (h @ w0)[src]
        return self.root(h) + _scatter_mean(msg, dst, h.shape[0]) + self.bias


def molecular_from_sites(site_y: torch.Tensor, site_graph: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of the site spectra of each molecule, shape (n, n_energy)."""
    return _scatter_mean(site_y, site_graph, n)


class XasMPNN(nn.Module):
    """Structure-to-spectrum network.

    Parameters
    ----------
    n_out : int
        Number of energies of the output grid.
    dim : int
        Width of the atom states.
    steps : int
        Message-passing rounds.
    readout : {"site", "molecule"}
        Spectrum per absorbing site (molecular = their mean) or per molecule.
    edge_hidden : int
        Hidden width of the edge network (its output, a dim x dim matrix per bond, dominates the
        cost of a forward pass).
    env : bool
        Site readout only: also feed the head each absorber's 3D surroundings
        (:func:`xas_bluesky.science.graphs.site_environment`, through one dense layer).
    """

    def __init__(
        self,
        n_out: int,
        dim: int = 64,
        steps: int = 3,
        readout: str = "site",
        edge_hidden: int = 128,
        env: bool = False,
    ):
        super().__init__()
        if readout not in ("site", "molecule"):
            raise ValueError(f"readout must be 'site' or 'molecule', not {readout!r}")
        if env and readout != "site":
            raise ValueError("the absorber environment (env=True) needs the site readout")
        self.n_out, self.dim, self.steps, self.readout = n_out, dim, steps, readout
        self.edge_hidden, self.env = edge_hidden, env
        self.sizes = (len(ELEMENTS), N_HYBRID, 2, MAX_H + 1, 2)
        self.embed = nn.ModuleList(nn.Embedding(s, dim) for s in self.sizes)
        n_edge = len(BOND_TYPES) + len(RBF_CENTRES)
        self.edge_net = nn.Sequential(
            nn.Linear(n_edge, edge_hidden), nn.ReLU(), nn.Linear(edge_hidden, dim * dim)
        )
        self.conv = EdgeConv(dim)
        self.gru = nn.GRU(dim, dim)
        self.set2set = Set2Set(dim, processing_steps=3)
        n_in = 3 * dim if readout == "site" else 2 * dim
        if env:
            self.env_net = nn.Sequential(nn.Linear(ENV_DIM, dim), nn.ReLU())
            n_in += dim
        self.head = nn.Sequential(
            nn.Linear(n_in, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, n_out)
        )

    def config(self) -> dict:
        return {
            "n_out": self.n_out,
            "dim": self.dim,
            "steps": self.steps,
            "readout": self.readout,
            "edge_hidden": self.edge_hidden,
            "env": self.env,
        }

    def edge_features(self, edge_type: torch.Tensor, edge_len: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(edge_type, len(BOND_TYPES)).to(edge_len.dtype)
        return torch.cat([onehot, rbf(edge_len)], dim=1)

    def trunk(self, g) -> tuple[torch.Tensor, torch.Tensor]:
        """Atom states (n_nodes, dim) and molecule summaries (n_graphs, 2 dim)."""
        h = sum(emb(g.x[:, k]) for k, emb in enumerate(self.embed))
        h = torch.relu(h)
        n_graphs = int(g.num_graphs)
        # the rounds run even when the batch has no bond (water, ammonia alone): the root term
        # and the GRU still transform the states, and skipping them would make a molecule's
        # spectrum depend on what else is in its batch
        first, last = self.edge_net[0], self.edge_net[2]
        assert isinstance(last, nn.Linear)  # built so in __init__
        z = torch.relu(first(self.edge_features(g.edge_type, g.edge_len)))
        w = torch.mm(z, last.weight.t()).view(-1, self.dim, self.dim)
        w0 = last.bias.view(self.dim, self.dim)
        state = h.unsqueeze(0)
        for _ in range(self.steps):
            m = torch.relu(self.conv(h, g.edge_index, w, w0))
            h, state = self.gru(m.unsqueeze(0), state)
            h = h.squeeze(0)
        summary = self.set2set(h, g.batch, dim_size=n_graphs)
        return h, summary

    def forward(self, g) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Predict.

        Returns
        -------
        molecular : torch.Tensor
            (n_graphs, n_out) molecular spectra.
        site : torch.Tensor or None
            (n_sites, n_out) site spectra (``readout="site"``), sites in node order.
        site_graph : torch.Tensor or None
            (n_sites,) graph of each site.
        """
        h, summary = self.trunk(g)
        if self.readout == "molecule":
            return nn.functional.softplus(self.head(summary)), None, None
        return site_spectra(g, h, summary, self.head, self.env_net if self.env else None)


def site_spectra(
    g, h: torch.Tensor, summary: torch.Tensor, head: nn.Module, env_net: nn.Module | None
):
    """The site readout shared by the architectures: ``head`` on each absorber's state, its
    molecule's summary and (``env_net`` given) its 3D surroundings through ``env_net``.

    Returns the molecular spectra, the site spectra and each site's graph (see
    :meth:`XasMPNN.forward`).
    """
    sites = torch.nonzero(g.x[:, 4] == 1).squeeze(1)
    site_graph = g.batch[sites]
    parts = [h[sites], summary[site_graph]]
    if env_net is not None:
        parts.append(env_net(g.site_env))
    site = nn.functional.softplus(head(torch.cat(parts, dim=1)))
    return molecular_from_sites(site, site_graph, int(g.num_graphs)), site, site_graph
