"""DLinear and NLinear: one linear map over the time axis per series.

Zeng, Chen, Zhang and Xu, "Are Transformers Effective for Time Series
Forecasting?", AAAI 2023 (reference code: cure-lab/LTSF-Linear).

Both are channel independent: every ``(node, channel)`` series of the window
``[B, L, N, C]`` is mapped from its ``L`` history steps to its ``H`` future steps
by the same ``nn.Linear(L, H)``, or by its own one with ``individual=True``
(``N * C`` maps; the paper's ``individual`` is per variable, here per series).

- DLinear splits each series into a trend (moving average, kernel 25, the ends
  padded with copies of the first/last value) and a seasonal remainder, maps
  each with its own linear layer and adds the two forecasts.
- NLinear subtracts the last value of the history, applies one linear layer and
  adds the value back (a guard against distribution shift).

Both see the scaled history as given (missing entries are 0, the scaled mean).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import register_model


def moving_average(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Centred moving average along the last axis, the ends padded with edge copies.

    ``(kernel_size - 1) // 2`` copies of the first value go in front and the rest
    (``kernel_size // 2``) behind, so the output keeps the length of ``x`` for any
    kernel (for odd kernels this is exactly LTSF-Linear's ``moving_avg``).

    Parameters
    ----------
    x : torch.Tensor ``[..., L]``
    kernel_size : int

    Returns
    -------
    torch.Tensor ``[..., L]``
    """
    front = (kernel_size - 1) // 2
    end = kernel_size - 1 - front
    padded = torch.cat(
        [x[..., :1].expand(*x.shape[:-1], front), x, x[..., -1:].expand(*x.shape[:-1], end)], dim=-1
    )
    flat = padded.reshape(-1, 1, padded.shape[-1])
    return F.avg_pool1d(flat, kernel_size, stride=1).reshape(x.shape)


def series_decomposition(x: torch.Tensor, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(seasonal, trend)`` of ``x`` ``[..., L]``: trend = moving average, seasonal = x - trend."""
    trend = moving_average(x, kernel_size)
    return x - trend, trend


class SeriesLinear(nn.Module):
    """Linear map ``[B, S, L] -> [B, S, H]`` over the last axis, shared or one per series.

    Initialized like ``nn.Linear`` (weights and bias uniform in ``+-1/sqrt(L)``).
    """

    def __init__(self, num_series: int, in_len: int, out_len: int, individual: bool = False):
        super().__init__()
        shape = (num_series, out_len) if individual else (out_len,)
        self.weight = nn.Parameter(torch.empty(*shape, in_len))
        self.bias = nn.Parameter(torch.empty(*shape))
        self.individual = individual
        bound = 1.0 / math.sqrt(in_len)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.individual:
            return torch.einsum("bsl,shl->bsh", z, self.weight) + self.bias
        return F.linear(z, self.weight, self.bias)


class _SeriesModel(STModel):
    """Shared plumbing: ``[B, L, N, C]`` <-> ``[B, N*C, L]`` series and ``[B, N*C, H]`` back."""

    def _series(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"]
        return x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)

    def _unseries(self, y: torch.Tensor) -> torch.Tensor:
        B = y.shape[0]
        return y.transpose(1, 2).reshape(B, -1, self.info.num_nodes, self.info.num_channels)

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, N*C, F]`` linear features of the series ``z`` ``[B, N*C, L]``."""
        raise NotImplementedError

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, N, embed_dim]``: the linear features of the channels of each node, concatenated."""
        feats = self._features(self._series(batch))
        return feats.reshape(feats.shape[0], self.info.num_nodes, -1)


@register_model("dlinear")
class DLinear(_SeriesModel):
    """Moving-average decomposition + a linear layer each for the seasonal and trend parts.

    Parameters
    ----------
    info : DataInfo
    kernel_size : int
        Moving-average window of the trend (25 in the paper).
    individual : bool
        One pair of linear layers per ``(node, channel)`` series instead of shared ones.

    Shapes
    ------
    ``forward``: ``x [B, L, N, C] -> [B, H, N, C]``. ``embed``: ``[B, N, 2 * C * H]``, the
    seasonal and trend forecasts of each channel before they are added.
    """

    def __init__(self, info: DataInfo, kernel_size: int = 25, individual: bool = False):
        super().__init__(info)
        if kernel_size < 1:
            raise ConfigError(f"dlinear kernel_size must be >= 1, got {kernel_size}", "use e.g. 25")
        S, L, H = info.num_nodes * info.num_channels, info.history, info.horizon
        self.kernel_size = kernel_size
        self.seasonal = SeriesLinear(S, L, H, individual)
        self.trend = SeriesLinear(S, L, H, individual)
        self.embed_dim = 2 * info.num_channels * H

    def _parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seasonal, trend = series_decomposition(z, self.kernel_size)
        return self.seasonal(seasonal), self.trend(trend)

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._parts(z), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        seasonal, trend = self._parts(self._series(batch))
        return self._unseries(seasonal + trend)


@register_model("nlinear")
class NLinear(_SeriesModel):
    """Subtract the last history value, one linear layer over time, add the value back.

    Parameters
    ----------
    info : DataInfo
    individual : bool
        One linear layer per ``(node, channel)`` series instead of a shared one.

    Shapes
    ------
    ``forward``: ``x [B, L, N, C] -> [B, H, N, C]``. ``embed``: ``[B, N, C * H]``, the
    linear output before the last value is added back.
    """

    def __init__(self, info: DataInfo, individual: bool = False):
        super().__init__(info)
        S = info.num_nodes * info.num_channels
        self.linear = SeriesLinear(S, info.history, info.horizon, individual)
        self.embed_dim = info.num_channels * info.horizon

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z - z[..., -1:])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        z = self._series(batch)
        return self._unseries(self._features(z) + z[..., -1:])
