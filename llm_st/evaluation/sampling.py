"""Score a probabilistic objective's sample forecasts (e.g. ``diffusion``) with the one scorer.

A run trained with a probabilistic objective forecasts by drawing sample paths from the
objective (``objective.sample(model, batch, S)``), not with the model's own head (which
that objective does not train). :func:`evaluate_samples` scores the median of ``S``
samples as the point forecast, and the samples' CRPS, on every window of a split: the
windows, masks and metric scale of :func:`~llm_st.evaluation.evaluate.evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from llm_st.data.task import ForecastTask
from llm_st.evaluation.evaluate import Scorer, iterate_batches


@torch.no_grad()
def sample_median(
    model: torch.nn.Module, sampler: Any, batch: dict[str, torch.Tensor], num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(median [B, H, N, C], samples [S, B, H, N, C])`` on the scaled scale."""
    samples = sampler.sample(model, batch, num_samples).float()
    return samples.median(dim=0).values, samples


@torch.no_grad()
def evaluate_samples(
    model: torch.nn.Module,
    sampler: Any,
    task: ForecastTask,
    part: str = "test",
    num_samples: int = 16,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    horizons: Sequence[int] = (3, 6, 12),
) -> dict[str, Any]:
    """Masked metrics of the sample median of ``sampler`` on every window of ``part``.

    Returns :meth:`Scorer.result`'s dict (``metrics``, ``num_windows``, ``metric_scale``,
    ``crps``) plus ``num_samples``. Draws with torch's global generator: seed it first for
    reproducible numbers.
    """
    model.eval()
    sampler.eval()
    scorer = Scorer(task, horizons)
    for batch in iterate_batches(task.dataset(part), batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        point, samples = sample_median(model, sampler, batch, num_samples)
        scorer.update(point, batch["y_scaled"], batch["y_mask"], scale="scaled", samples=samples)
    return {**scorer.result(), "num_samples": num_samples}
