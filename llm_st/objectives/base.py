"""What every training objective shares: a loss over a batch, optionally samples.

An objective is a ``torch.nn.Module`` so it may own parameters (a reconstruction
head, a denoiser, a projection into a text space); the engine optimizes them
together with the model and saves them in the same checkpoint. It is called as

``objective.loss(model, batch) -> (loss, logs)``

with ``batch`` a dict from :class:`llm_st.data.windows.WindowDataset`
(``x`` ``[B, L, N, C]``, ``y_scaled`` / ``y_mask`` ``[B, H, N, C]``, ...), ``loss`` a
0-d tensor with a graph and ``logs`` a dict of floats or detached 0-d tensors
(the engine averages them between evaluations and logs them as ``train_<key>``;
tensors avoid a device sync per step). Return the same keys at every step: with
several processes the averages are summed across processes key by key.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from llm_st.data.task import ForecastTask
from llm_st.models.base import DataInfo


class Objective(nn.Module):
    """Base class; subclasses register with :func:`llm_st.objectives.register_objective`.

    Parameters
    ----------
    info
        Static facts of the data and task (sizes of heads the objective owns).
    model
        The model being trained, for objectives whose parts depend on it (e.g. its
        hidden size). It must not be stored as an attribute: that would register
        it a second time as a sub-module of the objective.
    """

    name: ClassVar[str] = "objective"
    probabilistic: ClassVar[bool] = False
    splittable: ClassVar[bool] = True
    """Whether the loss of a batch is a mean of terms of single windows, so that micro-batches
    weighted by :meth:`loss_weight` give the batch's loss (``training.micro_batch_size``);
    False where windows meet in the loss (in-batch negatives), which splitting changes."""

    def __init__(self, info: DataInfo | None = None, model: nn.Module | None = None):
        super().__init__()
        self.info = info

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(loss, logs)`` of ``model`` on ``batch``; ``loss`` is a differentiable 0-d tensor."""
        raise NotImplementedError

    def dataset(self, task: ForecastTask, part: str) -> Any:
        """What the engine trains on (``part="train"``) and takes the validation loss on
        (``"val"``): indexable by an array of indices, giving a batch dict whose tensors all
        have the batch on their first axis. Default: the task's windows."""
        return task.dataset(part)

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The number of terms (0-d tensor) that :meth:`loss` averages over ``batch``.

        The engine weights the losses of the micro-batches of a batch by it, so that they
        add up to the loss of the whole batch. Default: the number of windows.
        """
        return torch.tensor(float(len(batch["x"])), device=batch["x"].device)

    def sample(
        self, model: nn.Module, batch: dict[str, torch.Tensor], num_samples: int
    ) -> torch.Tensor:
        """``[S, B, H, N, C]`` forecast samples on the scaled scale (probabilistic objectives)."""
        raise NotImplementedError(f"objective {self.name!r} does not draw samples")


class ForecastObjective(Objective):
    """An objective whose loss depends only on the forecast ``model(batch)``.

    The engine then scores the validation loss and the validation metrics from one
    forward pass per batch instead of two.
    """

    def forecast_loss(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss of the forecast ``pred`` ``[B, H, N, C]`` (scaled) against ``batch``."""
        raise NotImplementedError

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.forecast_loss(model(batch), batch), {}
