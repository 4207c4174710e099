"""Non-learned baselines: last value, seasonal naive, weekly historical average, VAR.

All work on the scaled scale like every other method and follow the
``[B, L, N, C] -> [B, H, N, C]`` interface of :class:`llm_st.models.base.STModel`.
They are the floor every learned model must clear (the copy-last row of the
BasicTS tables; the historical average and VAR rows of DCRNN, Li et al., ICLR 2018).
"""

from __future__ import annotations

import numpy as np
import torch

from llm_st.data.container import STData
from llm_st.data.scalers import Scaler
from llm_st.data.timefeatures import time_features
from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import register_model


def last_observed(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, N, C]``: last observed value of each series of ``x`` ``[B, L, N, C]`` (0 if none)."""
    L = x.shape[1]
    steps = torch.arange(L, device=x.device).view(1, L, 1, 1)
    last = torch.where(mask, steps, torch.full_like(steps, -1)).amax(dim=1)  # [B, N, C]
    picked = torch.gather(x, 1, last.clamp(min=0).unsqueeze(1)).squeeze(1)
    return torch.where(last >= 0, picked, torch.zeros_like(picked))


@register_model("last_value")
class LastValue(STModel):
    """Repeat the last observed value of the history over the horizon (copy-last)."""

    learned = False

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        last = last_observed(batch["x"], batch["x_mask"].bool())
        return last.unsqueeze(1).expand(-1, self.info.horizon, -1, -1).clone()


@register_model("seasonal_naive")
class SeasonalNaive(STModel):
    """``y[t + h] = x[t + h - period]``: the value one season before (default: one day).

    Needs ``history >= period``. The test windows are those whose targets lie in the
    test rows, so building this method with a longer history than the others
    scores it on exactly the same targets.
    """

    learned = False

    def __init__(self, info: DataInfo, period: int | None = None):
        super().__init__(info)
        self.period = period or info.steps_per_day
        if self.period is None:
            raise ConfigError(
                "seasonal_naive needs a period and the data frequency is unknown",
                "set model.period",
            )
        if info.history < self.period:
            raise ConfigError(
                f"seasonal_naive with period {self.period} needs history >= {self.period}, got "
                f"{info.history}",
                f"set data.history to {self.period} for this method (the test targets stay the "
                "same)",
            )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, L, H = batch["x"], self.info.history, self.info.horizon
        # for horizons longer than a season, repeat the last season
        idx = L - self.period + (torch.arange(H, device=x.device) % self.period)
        return x[:, idx]


@register_model("historical_average")
class HistoricalAverage(STModel):
    """Mean of the training rows at the same slot of the week, per node and channel.

    A slot is (day of week, step of day) from ``y_time``; slots never observed in
    training fall back to the series' overall training mean.
    """

    learned = False

    def __init__(self, info: DataInfo, weekly: bool = True):
        super().__init__(info)
        if info.steps_per_day is None:
            raise ConfigError(
                "historical_average needs a regular frequency that divides a day",
                "give the data timestamps or a freq",
            )
        self.weekly = weekly
        self.num_slots = info.steps_per_day * (7 if weekly else 1)
        self.register_buffer(
            "table", torch.zeros(self.num_slots, info.num_nodes, info.num_channels)
        )

    def _slots(self, times: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        spd = self.info.steps_per_day
        step = (
            (times[..., 0] * spd + 0.5).astype(np.int64)
            if isinstance(times, np.ndarray)
            else (times[..., 0] * spd + 0.5).long()
        )
        step = step % spd
        if not self.weekly:
            return step
        dow = (
            times[..., 1].astype(np.int64)
            if isinstance(times, np.ndarray)
            else times[..., 1].long()
        )
        return dow * spd + step

    def fit_data(self, train: STData, scaler: Scaler) -> None:
        slots = self._slots(time_features(train))  # [T]
        values = np.asarray(scaler.transform(train.values), np.float64)
        mask = train.mask
        S = self.num_slots
        sums = np.zeros((S,) + values.shape[1:])
        counts = np.zeros((S,) + values.shape[1:])
        np.add.at(sums, slots, np.where(mask, values, 0.0))
        np.add.at(counts, slots, mask)
        overall = np.where(mask, values, 0).sum(0) / np.maximum(mask.sum(0), 1)
        table = np.where(counts > 0, sums / np.maximum(counts, 1), overall[None])
        self.table.copy_(torch.from_numpy(table.astype(np.float32)))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.table[self._slots(batch["y_time"])]  # [B, H, N, C]


@register_model("var")
class VAR(STModel):
    """Vector autoregression of order ``p`` over all ``N * C`` series, fit on the train split.

    ``z[t] = sum_k A_k z[t - k] + b`` fit in closed form with a small ridge term
    (``ridge * trace / dim``) for stability; forecasts are rolled out recursively over
    the horizon. Parameters: ``p * (N C)^2 + N C``, so it suits graphs of up to a few
    hundred series.
    """

    learned = False

    def __init__(self, info: DataInfo, order: int = 3, ridge: float = 1e-2):
        super().__init__(info)
        if info.history < order:
            raise ConfigError(
                f"var order {order} exceeds the history {info.history}",
                "lower model.order or raise data.history",
            )
        self.order, self.ridge = order, ridge
        d = info.num_nodes * info.num_channels
        self.register_buffer("coef", torch.zeros(order * d + 1, d))

    def fit_data(self, train: STData, scaler: Scaler) -> None:
        z = np.asarray(scaler.transform(train.values), np.float64)
        z = np.where(train.mask, z, 0.0).reshape(train.num_steps, -1)  # missing -> the scaled mean
        p, T = self.order, z.shape[0]
        design = np.concatenate(
            [z[p - k - 1 : T - k - 1] for k in range(p)] + [np.ones((T - p, 1))], axis=1
        )
        target = z[p:]
        gram = design.T @ design
        gram += self.ridge * np.trace(gram) / gram.shape[0] * np.eye(gram.shape[0])
        self.coef.copy_(
            torch.from_numpy(np.linalg.solve(gram, design.T @ target).astype(np.float32))
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"]
        B, N, C = x.shape[0], self.info.num_nodes, self.info.num_channels
        lags = [x[:, -k - 1].reshape(B, -1) for k in range(self.order)]  # most recent first
        ones = torch.ones(B, 1, dtype=x.dtype, device=x.device)
        out = []
        for _ in range(self.info.horizon):
            nxt = torch.cat(lags + [ones], dim=1) @ self.coef
            out.append(nxt)
            lags = [nxt] + lags[:-1]
        return torch.stack(out, dim=1).reshape(B, self.info.horizon, N, C)
