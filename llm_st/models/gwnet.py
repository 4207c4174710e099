"""Graph WaveNet: diffusion graph convolution + gated dilated temporal convolution.

Wu, Pan, Long, Jiang and Zhang, "Graph WaveNet for Deep Spatial-Temporal Graph
Modeling", IJCAI 2019 (reference code: nnzhan/Graph-WaveNet, ``model.py``).

Layout inside the model is the reference's ``[B, F, N, T]`` (features, nodes, time).

- Input: the ``C`` scaled values plus the time of day (the paper's second input
  channel; ``time_of_day_input=False`` drops it), a 1x1 start convolution to
  ``residual_channels``. Histories shorter than the receptive field are left-padded
  with zeros.
- ``blocks x layers`` gated TCN layers, dilations ``1, 2, 4, ...`` restarting in
  every block (``1, 2, 1, 2, ...`` for 2 layers), kernel 2:
  ``tanh(conv_f(x)) * sigmoid(conv_g(x))``. Receptive field
  ``1 + blocks * (kernel - 1) * (2**layers - 1)``: 13 for the defaults (4 x 2), which
  covers a 12-step history. With a longer history only its last ``receptive_field``
  steps reach the forecast (a warning says so; raise ``blocks``/``layers``).
- Skip connection of every layer (1x1 conv to ``skip_channels``, summed), then
  ``relu -> 1x1 (end_channels) -> relu -> 1x1 (H * C)``.
- After each TCN layer a graph convolution (mix-hop diffusion of order 2)
  ``mlp([x, A x, A^2 x for A in supports])`` + residual + BatchNorm. Supports are the
  forward and backward transition matrices ``D_out^-1 W`` and ``D_in^-1 W^T`` of
  ``info.adjacency`` (the reference's ``doubletransition``) and the self-adaptive
  ``softmax(relu(E1 E2^T))`` (row-wise softmax, node embeddings of dim 10, normal
  init). Without ``info.adjacency`` the adaptive matrix is the only support (the
  paper's "adaptive only" setting).

Shapes: ``forward``: ``x [B, L, N, C]`` (+ ``x_time [B, L, 2]``) -> ``[B, H, N, C]``;
``embed``: ``[B, N, end_channels]``, the hidden layer before the output convolution.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import register_model


def transition_matrices(adjacency: np.ndarray) -> np.ndarray:
    """``[2, N, N]``: forward ``D_out^-1 W`` and backward ``D_in^-1 W^T`` random-walk matrices.

    Rows of nodes without edges stay zero.
    """
    w = np.asarray(adjacency, dtype=np.float64)

    def row_normalize(a: np.ndarray) -> np.ndarray:
        deg = a.sum(axis=1, keepdims=True)
        return np.divide(a, deg, out=np.zeros_like(a), where=deg != 0)

    return np.stack([row_normalize(w), row_normalize(w.T)]).astype(np.float32)


def _diffuse(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``x' [B, F, N, T]`` with ``x'[:, :, w] = sum_v x[:, :, v] a[v, w]`` (reference ``nconv``)."""
    return torch.einsum("bfvt,vw->bfwt", x, a)


class DiffusionGraphConv(nn.Module):
    """Mix-hop diffusion ``mlp(concat[x, A_s x, ..., A_s^order x for each support s])``."""

    def __init__(self, c_in: int, c_out: int, num_supports: int, order: int, dropout: float):
        super().__init__()
        self.order = order
        self.mlp = nn.Conv2d((order * num_supports + 1) * c_in, c_out, kernel_size=1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, supports: list[torch.Tensor]) -> torch.Tensor:
        out = [x]
        for a in supports:
            h = x
            for _ in range(self.order):
                h = _diffuse(h, a)
                out.append(h)
        return self.dropout(self.mlp(torch.cat(out, dim=1)))


@register_model("graph_wavenet")
class GraphWaveNet(STModel):
    """Graph WaveNet with the reference defaults (METR-LA / PEMS-BAY setting).

    Parameters
    ----------
    info : DataInfo
    residual_channels, dilation_channels, skip_channels, end_channels : int
        Widths (32, 32, 256, 512).
    blocks, layers : int
        TCN blocks and layers per block (4, 2; receptive field 13).
    kernel_size : int
        Temporal kernel (2).
    dropout : float
        Dropout after each graph convolution (0.3).
    adaptive : bool
        Learn the self-adaptive adjacency.
    node_dim : int
        Dimension of the node embeddings ``E1, E2`` of the adaptive adjacency (10).
    order : int
        Diffusion steps per support (2).
    time_of_day_input : bool
        Feed the time of day as an extra input channel (the paper's setting).
    """

    def __init__(
        self,
        info: DataInfo,
        residual_channels: int = 32,
        dilation_channels: int = 32,
        skip_channels: int = 256,
        end_channels: int = 512,
        blocks: int = 4,
        layers: int = 2,
        kernel_size: int = 2,
        dropout: float = 0.3,
        adaptive: bool = True,
        node_dim: int = 10,
        order: int = 2,
        time_of_day_input: bool = True,
    ):
        super().__init__(info)
        N = info.num_nodes
        if info.adjacency is None and not adaptive:
            raise ConfigError(
                "graph_wavenet with adaptive=False needs a graph and the data has no adjacency",
                "set model.adaptive: true (learned adjacency only) or load data with an adjacency",
            )
        fixed = (
            np.zeros((0, N, N), np.float32)
            if info.adjacency is None
            else transition_matrices(info.adjacency)
        )
        self.register_buffer("supports", torch.from_numpy(fixed))
        if adaptive:
            self.nodevec1 = nn.Parameter(torch.randn(N, node_dim))
            self.nodevec2 = nn.Parameter(torch.randn(node_dim, N))
        self.adaptive = adaptive
        self.time_of_day_input = time_of_day_input
        num_supports = len(fixed) + int(adaptive)

        self.receptive_field = 1 + blocks * (kernel_size - 1) * (2**layers - 1)
        if info.history > self.receptive_field:
            warnings.warn(
                f"graph_wavenet's receptive field ({self.receptive_field} steps) is shorter than "
                f"the history ({info.history}): only the last {self.receptive_field} steps reach "
                "the forecast; raise model.blocks or model.layers to use all of it",
                stacklevel=2,
            )
        in_dim = info.num_channels + int(time_of_day_input)
        self.start_conv = nn.Conv2d(in_dim, residual_channels, kernel_size=1)
        self.filter_convs, self.gate_convs = nn.ModuleList(), nn.ModuleList()
        self.skip_convs, self.graph_convs, self.norms = (
            nn.ModuleList(),
            nn.ModuleList(),
            nn.ModuleList(),
        )
        for _ in range(blocks):
            for i in range(layers):
                conv = dict(kernel_size=(1, kernel_size), dilation=(1, 2**i))
                self.filter_convs.append(nn.Conv2d(residual_channels, dilation_channels, **conv))
                self.gate_convs.append(nn.Conv2d(residual_channels, dilation_channels, **conv))
                self.skip_convs.append(nn.Conv2d(dilation_channels, skip_channels, kernel_size=1))
        # the reference's graph conv + BatchNorm after the LAST layer feed nothing (the skip
        # is taken before them): they are left out rather than kept as dead parameters
        for _ in range(blocks * layers - 1):
            self.graph_convs.append(
                DiffusionGraphConv(
                    dilation_channels, residual_channels, num_supports, order, dropout
                )
            )
            self.norms.append(nn.BatchNorm2d(residual_channels))
        self.end_conv_1 = nn.Conv2d(skip_channels, end_channels, kernel_size=1)
        self.end_conv_2 = nn.Conv2d(end_channels, info.horizon * info.num_channels, kernel_size=1)
        self.embed_dim = end_channels

    def adaptive_adjacency(self) -> torch.Tensor:
        """``[N, N]`` self-adaptive adjacency ``softmax(relu(E1 E2^T))``, rows summing to 1."""
        return F.softmax(F.relu(self.nodevec1 @ self.nodevec2), dim=1)

    def _hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, end_channels, N]``: the last hidden layer at the last time step."""
        x = batch["x"]
        if self.time_of_day_input:
            tod = batch["x_time"][..., :1].to(x.dtype)  # [B, L, 1]
            x = torch.cat([x, tod.unsqueeze(2).expand(-1, -1, x.shape[2], -1)], dim=-1)
        x = x.permute(0, 3, 2, 1)  # [B, F, N, L]
        if x.shape[-1] < self.receptive_field:
            x = F.pad(x, (self.receptive_field - x.shape[-1], 0))
        x = self.start_conv(x)
        supports = list(self.supports)
        if self.adaptive:
            supports.append(self.adaptive_adjacency())
        skip = None
        for i, (filt, gate, skip_conv) in enumerate(
            zip(self.filter_convs, self.gate_convs, self.skip_convs, strict=True)
        ):
            residual = x
            x = torch.tanh(filt(x)) * torch.sigmoid(gate(x))
            s = skip_conv(x)
            skip = s if skip is None else s + skip[..., -s.shape[-1] :]
            if i < len(self.graph_convs):
                x = self.graph_convs[i](x, supports) + residual[..., -x.shape[-1] :]
                x = self.norms[i](x)
        hidden = F.relu(self.end_conv_1(F.relu(skip[..., -1:])))
        return hidden.squeeze(-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.end_conv_2(self._hidden(batch).unsqueeze(-1)).squeeze(-1)  # [B, H*C, N]
        B, N = out.shape[0], out.shape[-1]
        return out.reshape(B, self.info.horizon, self.info.num_channels, N).transpose(2, 3)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, N, end_channels]``: the hidden layer before the output convolution."""
        return self._hidden(batch).transpose(1, 2)
