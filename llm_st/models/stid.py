"""STID: spatial and temporal identity embeddings + an MLP.

Shao, Zhang, Wang, Wei and Xu, "Spatial-Temporal Identity: A Simple yet
Effective Baseline for Multivariate Time Series Forecasting", CIKM 2022
(reference code: zezhishao/STID, ``stid_arch.py``).

For each node:

- series embedding: the flattened history ``[L * C_in]`` mapped to ``series_dim`` (the
  reference's ``embed_dim``) by a linear layer (the paper's 1x1 convolution); as the reference
  (``input_dim=3``) the history carries the time of day and day of week / 7 next to
  the ``C`` values, ``C_in = C + 2`` (``time_in_series=False`` drops them);
- spatial identity: a learned ``node_dim`` embedding per node;
- temporal identity: learned time-of-day (``steps_per_day`` slots) and
  day-of-week (7 slots) embeddings of the LAST history step ``x_time[:, -1]``;
- the concatenation (``hidden = series_dim + node_dim + tod_dim + dow_dim``) goes
  through ``num_layers`` residual MLP layers
  ``h + W2 dropout(relu(W1 h))`` and a linear regression to ``H * C`` values.

Embeddings are initialized Xavier-uniform as in the reference.

Shapes: ``forward``: ``x [B, L, N, C]``, ``x_time [B, L, 2]`` -> ``[B, H, N, C]``;
``embed``: ``[B, N, hidden]``, the encoder output.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import register_model


class ResidualMLP(nn.Module):
    """``h + fc2(dropout(relu(fc1(h))))`` on the last axis (STID's ``MultiLayerPerceptron``)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


def _xavier(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.xavier_uniform_(torch.empty(*shape)))


@register_model("stid")
class STID(STModel):
    """Spatial-temporal identity MLP.

    Parameters
    ----------
    info : DataInfo
    series_dim : int
        Width of the series embedding (32; ``embed_dim`` in the reference, renamed because
        ``embed_dim`` here is the width of :meth:`embed`, the encoder output).
    node_dim, tod_dim, dow_dim : int
        Widths of the node, time-of-day and day-of-week embeddings (32 each).
    num_layers : int
        Residual MLP layers (3).
    dropout : float
        Dropout inside each MLP layer (0.15).
    steps_per_day : int, optional
        Time-of-day slots; default ``info.steps_per_day``.
    time_of_day, day_of_week, node_embedding : bool
        Use each identity embedding (the paper's ablations switch them off).
    time_in_series : bool
        Feed time of day and day of week / 7 with the values into the series embedding.
    """

    def __init__(
        self,
        info: DataInfo,
        series_dim: int = 32,
        node_dim: int = 32,
        tod_dim: int = 32,
        dow_dim: int = 32,
        num_layers: int = 3,
        dropout: float = 0.15,
        steps_per_day: int | None = None,
        time_of_day: bool = True,
        day_of_week: bool = True,
        node_embedding: bool = True,
        time_in_series: bool = True,
    ):
        super().__init__(info)
        self.steps_per_day = steps_per_day or info.steps_per_day
        if time_of_day and not self.steps_per_day:
            raise ConfigError(
                "stid's time-of-day embedding needs steps_per_day; the data frequency is unknown",
                "set model.steps_per_day (e.g. 288 for 5-minute data) or model.time_of_day: false",
            )
        self.time_in_series = time_in_series
        c_in = info.num_channels + (2 if time_in_series else 0)
        self.series_embedding = nn.Linear(info.history * c_in, series_dim)
        self.node_emb = _xavier(info.num_nodes, node_dim) if node_embedding else None
        self.tod_emb = _xavier(self.steps_per_day, tod_dim) if time_of_day else None
        self.dow_emb = _xavier(7, dow_dim) if day_of_week else None
        hidden = (
            series_dim + node_dim * node_embedding + tod_dim * time_of_day + dow_dim * day_of_week
        )
        self.embed_dim = hidden
        self.encoder = nn.Sequential(*(ResidualMLP(hidden, dropout) for _ in range(num_layers)))
        self.regression = nn.Linear(hidden, info.horizon * info.num_channels)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, N, hidden]``: the encoded concatenation of series and identity embeddings."""
        x = batch["x"]
        B, L, N, _ = x.shape
        parts = []
        if self.time_in_series:
            t = batch["x_time"].to(x.dtype)  # [B, L, 2]
            t = torch.stack([t[..., 0], t[..., 1] / 7], dim=-1)
            x = torch.cat([x, t.unsqueeze(2).expand(B, L, N, 2)], dim=-1)
        parts.append(self.series_embedding(x.permute(0, 2, 1, 3).reshape(B, N, -1)))
        if self.node_emb is not None:
            parts.append(self.node_emb.expand(B, N, -1))
        last = batch["x_time"][:, -1]  # [B, 2], the paper's time of the last history step
        if self.tod_emb is not None:
            slot = (last[:, 0] * self.steps_per_day).round().long() % self.steps_per_day
            parts.append(self.tod_emb[slot].unsqueeze(1).expand(B, N, -1))
        if self.dow_emb is not None:
            day = last[:, 1].round().long().clamp(0, 6)
            parts.append(self.dow_emb[day].unsqueeze(1).expand(B, N, -1))
        return self.encoder(torch.cat(parts, dim=-1))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.regression(self.embed(batch))  # [B, N, H*C]
        B, N = out.shape[:2]
        return out.reshape(B, N, self.info.horizon, self.info.num_channels).transpose(1, 2)
