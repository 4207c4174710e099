"""STGCN: spatio-temporal convolution blocks with Chebyshev graph convolution.

Yu, Yin and Zhu, "Spatio-Temporal Graph Convolutional Networks: A Deep Learning
Framework for Traffic Forecasting", IJCAI 2018 (reference code:
VeritasYin/STGCN_IJCAI-18; multi-step output block of hazdzz/STGCN as used by
BasicTS, whose benchmark numbers the guide quotes).

Layout inside the model is ``[B, F, T, N]`` (features, time, nodes).

- ST-Conv block (channels ``(c_t, c_s, c_o)``, 64/16/64 in the paper): gated
  temporal convolution ``(P + x_in) * sigmoid(Q)`` (GLU, kernel ``Kt = 3``, no
  padding, ``x_in`` the input aligned to the output channels by a 1x1 conv or zero
  padding), Chebyshev graph convolution of order ``Ks = 3`` with a residual
  connection and ReLU, a second gated temporal convolution, LayerNorm over
  ``[N, c_o]`` and dropout. Each block shortens the time axis by ``2 (Kt - 1)``.
- Output block: a gated temporal convolution whose kernel spans the remaining
  ``Ko = L - 2 (Kt - 1) * blocks`` steps, LayerNorm, ``Linear -> ReLU -> Linear`` to
  ``H * C`` values per node.
- Graph convolution ``sum_k theta_k T_k(L~) x`` with the Chebyshev polynomials
  ``T_0 = I, T_1 = L~, T_k = 2 L~ T_{k-1} - T_{k-2}`` of the scaled Laplacian
  ``L~ = 2 L / lambda_max - I``, ``L = I - D^-1/2 W D^-1/2`` of the symmetrized
  adjacency ``W = (A + A^T) / 2`` without self loops (isolated nodes get
  ``L_ii = 1``).

Shapes: ``forward``: ``x [B, L, N, C] -> [B, H, N, C]``; ``embed``: ``[B, N, end_channels[1]]``,
the hidden layer of the output block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import register_model


def scaled_laplacian(adjacency: np.ndarray) -> np.ndarray:
    """``[N, N]`` scaled normalized Laplacian ``2 L / lambda_max - I`` of the symmetrized graph."""
    a = np.asarray(adjacency, dtype=np.float64)
    w = (a + a.T) / 2
    np.fill_diagonal(w, 0.0)
    deg = w.sum(axis=1)
    inv_sqrt = np.divide(1.0, np.sqrt(deg), out=np.zeros_like(deg), where=deg > 0)
    lap = np.eye(len(w)) - inv_sqrt[:, None] * w * inv_sqrt[None, :]
    lambda_max = np.linalg.eigvalsh(lap).max()
    return 2.0 * lap / lambda_max - np.eye(len(w))


def chebyshev_polynomials(adjacency: np.ndarray, order: int) -> np.ndarray:
    """``[order, N, N]`` float32: ``T_0 .. T_{order-1}`` of :func:`scaled_laplacian`."""
    if order < 1:
        raise ConfigError(f"Chebyshev order must be >= 1, got {order}", "use Ks = 3 as the paper")
    lap = scaled_laplacian(adjacency)
    polys = [np.eye(len(lap)), lap][:order]
    while len(polys) < order:
        polys.append(2.0 * lap @ polys[-1] - polys[-2])
    return np.stack(polys).astype(np.float32)


class _Align(nn.Module):
    """Match channels for a residual: 1x1 conv when shrinking, zero padding when growing."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.c_out = c_out
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=1) if c_in > c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            return self.conv(x)
        return F.pad(x, (0, 0, 0, 0, 0, self.c_out - x.shape[1]))


class TemporalGLU(nn.Module):
    """Gated temporal conv ``(P + x_in) * sigmoid(Q)``: ``[B, c_in, T, N] -> [B, c_out, T-Kt+1, N]``

    ``x_in`` is the input aligned to ``c_out`` channels, cut to the output steps.
    """

    def __init__(self, kt: int, c_in: int, c_out: int):
        super().__init__()
        self.kt = kt
        self.align = _Align(c_in, c_out)
        self.conv = nn.Conv2d(c_in, 2 * c_out, kernel_size=(kt, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = self.conv(x).chunk(2, dim=1)
        return (p + self.align(x)[:, :, self.kt - 1 :]) * torch.sigmoid(q)


class ChebGraphConv(nn.Module):
    """Chebyshev graph conv, ``relu(sum_k T_k x theta_k + b + x_in)``, ``[B, F, T, N]``."""

    def __init__(self, c_in: int, c_out: int, ks: int):
        super().__init__()
        self.align = _Align(c_in, c_out)
        bound = 1.0 / math.sqrt(ks * c_in)
        self.theta = nn.Parameter(torch.empty(ks, c_in, c_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(c_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, cheb: torch.Tensor) -> torch.Tensor:
        xk = torch.einsum("kmn,bctn->bkctm", cheb, x)  # T_k x along the node axis
        out = torch.einsum("bkctm,kco->botm", xk, self.theta) + self.bias[:, None, None]
        return F.relu(out + self.align(x))


class STConvBlock(nn.Module):
    """Temporal GLU -> Chebyshev graph conv -> temporal GLU -> LayerNorm([N, c_o]) -> dropout."""

    def __init__(
        self, kt: int, ks: int, num_nodes: int, c_in: int, channels: Sequence[int], dropout: float
    ):
        super().__init__()
        c_t, c_s, c_o = channels
        self.temporal1 = TemporalGLU(kt, c_in, c_t)
        self.graph = ChebGraphConv(c_t, c_s, ks)
        self.temporal2 = TemporalGLU(kt, c_s, c_o)
        self.norm = nn.LayerNorm([num_nodes, c_o])
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cheb: torch.Tensor) -> torch.Tensor:
        x = self.temporal2(self.graph(self.temporal1(x), cheb))
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.dropout(x)


@register_model("stgcn")
class STGCN(STModel):
    """STGCN(Cheb) with the BasicTS/hazdzz defaults.

    Parameters
    ----------
    info : DataInfo
        ``info.adjacency`` is required.
    kt : int
        Temporal kernel (3).
    ks : int
        Chebyshev polynomials ``T_0 .. T_{Ks-1}`` (3).
    blocks : sequence of (c_t, c_s, c_o)
        Channels of each ST-Conv block (two blocks of 64, 16, 64).
    end_channels : (int, int)
        Widths of the output block's temporal conv and hidden layer (128, 128).
    dropout : float
        Dropout after each ST-Conv block (0.5).
    """

    def __init__(
        self,
        info: DataInfo,
        kt: int = 3,
        ks: int = 3,
        blocks: Sequence[Sequence[int]] = ((64, 16, 64), (64, 16, 64)),
        end_channels: Sequence[int] = (128, 128),
        dropout: float = 0.5,
    ):
        super().__init__(info)
        if info.adjacency is None:
            raise ConfigError(
                "stgcn needs a graph and the data has no adjacency",
                "load data with an adjacency (e.g. a distance.csv / adj_mx.pkl, or a grid) "
                "or use graph_wavenet (adaptive adjacency) or stid, which need none",
            )
        ko = info.history - 2 * (kt - 1) * len(blocks)
        if ko < 1:
            raise ConfigError(
                f"stgcn with kt={kt} and {len(blocks)} blocks consumes "
                f"{2 * (kt - 1) * len(blocks)} steps, more than the history {info.history}",
                "raise data.history, lower model.kt or use fewer model.blocks",
            )
        self.register_buffer("cheb", torch.from_numpy(chebyshev_polynomials(info.adjacency, ks)))
        c_in, layers = info.num_channels, []
        for channels in blocks:
            layers.append(STConvBlock(kt, ks, info.num_nodes, c_in, channels, dropout))
            c_in = channels[-1]
        self.blocks = nn.ModuleList(layers)
        self.out_temporal = TemporalGLU(ko, c_in, end_channels[0])
        self.out_norm = nn.LayerNorm([info.num_nodes, end_channels[0]])
        self.fc1 = nn.Linear(end_channels[0], end_channels[1])
        self.fc2 = nn.Linear(end_channels[1], info.horizon * info.num_channels)
        self.embed_dim = end_channels[1]

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, N, end_channels[1]]``: the hidden layer of the output block."""
        x = batch["x"].permute(0, 3, 1, 2)  # [B, C, L, N]
        for block in self.blocks:
            x = block(x, self.cheb)
        x = self.out_temporal(x)[:, :, 0].transpose(1, 2)  # [B, N, end_channels[0]]
        return F.relu(self.fc1(self.out_norm(x)))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.fc2(self.embed(batch))  # [B, N, H*C]
        B, N = out.shape[:2]
        return out.reshape(B, N, self.info.horizon, self.info.num_channels).transpose(1, 2)
