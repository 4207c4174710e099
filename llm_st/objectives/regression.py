"""Point forecasting with a masked MAE, MSE or Huber loss on the scaled targets.

MAE is the loss of the ST graph literature (DCRNN, Graph WaveNet, BasicTS); the
long-term-series recipes (DLinear, PatchTST, GPT4TS, Time-LLM) use MSE.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo
from llm_st.objectives.base import ForecastObjective
from llm_st.objectives.registry import register_objective

LOSSES = ("mae", "mse", "huber")


@register_objective("regression")
class Regression(ForecastObjective):
    """Masked point loss of ``model(batch)`` against ``batch["y_scaled"]`` where observed.

    Parameters
    ----------
    loss
        ``"mae"`` (default), ``"mse"`` or ``"huber"``.
    huber_delta
        Threshold of the Huber loss, on the scaled scale.

    The loss is ``sum(err * mask) / sum(mask)``: a batch without observed targets
    gives 0 (with a graph), not NaN.
    """

    def __init__(
        self,
        info: DataInfo | None = None,
        model: nn.Module | None = None,
        loss: str = "mae",
        huber_delta: float = 1.0,
    ):
        super().__init__(info, model)
        if loss not in LOSSES:
            raise ConfigError(
                f"unknown regression loss {loss!r}", f"use one of {', '.join(LOSSES)}"
            )
        if huber_delta <= 0:
            raise ConfigError(f"huber_delta must be positive, got {huber_delta}", "use e.g. 1.0")
        self.kind = loss
        self.huber_delta = float(huber_delta)

    def forecast_loss(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch["y_scaled"].to(pred.dtype)
        mask = batch["y_mask"].bool()
        if self.kind == "mae":
            err = (pred - target).abs()
        elif self.kind == "mse":
            err = (pred - target).square()
        else:
            err = F.huber_loss(pred, target, reduction="none", delta=self.huber_delta)
        # where() rather than a product: unobserved targets must not leak NaN into the gradient
        total = torch.where(mask, err, torch.zeros_like(err)).float().sum()
        return total / mask.sum().clamp(min=1)

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The observed targets, over which the loss is a mean."""
        return batch["y_mask"].sum()
