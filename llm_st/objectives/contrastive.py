"""Contrastive learning: two augmented views of a window should embed alike.

InfoNCE between views (van den Oord et al. 2018), in the instance-contrastive
form of SimCLR (Chen et al., ICML 2020) as used for series by TS-TCC (Eldele et
al., IJCAI 2021) and TS2Vec (Yue et al., AAAI 2022): each view of the history is
embedded by ``model.embed(batch) -> [B, N, D]``, pooled to one vector per window
(``pool="window"``, mean over nodes) or per ``(window, node)`` (``pool="node"``),
projected by an MLP head owned by the objective (``D -> D -> proj_dim``),
L2-normalized, and scored with the symmetric InfoNCE loss at temperature ``tau``
(0.1): the other view of the same instance is the positive, every other instance
of the batch a negative.

Augmentations are small pure functions ``(x, mask, generator, **params) -> (x, mask)``
on ``x`` / ``x_mask`` ``[B, L, N, C]``; each view applies all of ``augmentations``
in order, with independent randomness. Time features are left as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo
from llm_st.objectives.base import Objective
from llm_st.objectives.masked import models_with
from llm_st.objectives.registry import register_objective

Tensor = torch.Tensor


def jitter(
    x: Tensor, mask: Tensor, generator: torch.Generator | None = None, sigma: float = 0.1
) -> tuple[Tensor, Tensor]:
    """Add Gaussian noise ``N(0, sigma^2)`` to the observed entries."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * sigma
    return x + noise * mask, mask


def scaling(
    x: Tensor, mask: Tensor, generator: torch.Generator | None = None, sigma: float = 0.1
) -> tuple[Tensor, Tensor]:
    """Multiply each ``(window, node, channel)`` series by one factor ``~ N(1, sigma^2)``."""
    B, _, N, C = x.shape
    factor = 1 + sigma * torch.randn(
        B, 1, N, C, generator=generator, device=x.device, dtype=x.dtype
    )
    return x * factor, mask


def node_dropout(
    x: Tensor, mask: Tensor, generator: torch.Generator | None = None, p: float = 0.1
) -> tuple[Tensor, Tensor]:
    """Zero the whole history of each node with probability ``p`` (and mark it unobserved)."""
    B, _, N, _ = x.shape
    keep = torch.rand(B, 1, N, 1, generator=generator, device=x.device) >= p
    return x * keep, mask & keep


def crop_resize(x: Tensor, mask: Tensor, start: Tensor, length: Tensor) -> tuple[Tensor, Tensor]:
    """Stretch steps ``[start, start + length)`` of each window back to ``L`` steps.

    Linear interpolation at positions ``start + t (length - 1) / (L - 1)``,
    ``t = 0 .. L-1``; an output step is observed when both steps it interpolates are.

    Parameters
    ----------
    x, mask : torch.Tensor ``[B, L, N, C]``
    start, length : torch.Tensor ``[B]`` long, with ``1 <= length`` and ``start + length <= L``
    """
    B, L = x.shape[:2]
    t = torch.arange(L, device=x.device, dtype=x.dtype)
    pos = start[:, None].to(x.dtype) + t * ((length[:, None] - 1).to(x.dtype) / max(L - 1, 1))
    lo = pos.floor().long().clamp(0, L - 1)
    hi = (lo + 1).clamp(max=L - 1)
    w = (pos - lo.to(x.dtype)).view(B, L, 1, 1)

    def take(a: Tensor, idx: Tensor) -> Tensor:
        return torch.gather(a, 1, idx.view(B, L, 1, 1).expand_as(a))

    out = take(x, lo) * (1 - w) + take(x, hi) * w
    observed = take(mask, lo) & (take(mask, hi) | (w == 0))
    return out, observed


def temporal_crop(
    x: Tensor, mask: Tensor, generator: torch.Generator | None = None, min_ratio: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Crop a random span of ``>= min_ratio * L`` steps per window, resized back to ``L``."""
    B, L = x.shape[:2]
    shortest = max(1, math.ceil(min_ratio * L))
    u = torch.rand(B, 2, generator=generator, device=x.device)
    length = (shortest + (u[:, 0] * (L - shortest + 1)).long()).clamp(max=L)
    start = (u[:, 1] * (L - length + 1)).long().clamp(max=L - length)
    return crop_resize(x, mask, start, length)


Augmentation = Callable[..., tuple[Tensor, Tensor]]
AUGMENTATIONS: dict[str, tuple[Augmentation, str]] = {
    # name -> (function, the objective parameter that sets its strength)
    "jitter": (jitter, "jitter_sigma"),
    "scaling": (scaling, "scaling_sigma"),
    "node_dropout": (node_dropout, "node_drop"),
    "temporal_crop": (temporal_crop, "crop_min"),
}


def info_nce(
    a: Tensor, b: Tensor, temperature: float | Tensor, groups: Tensor | None = None
) -> Tensor:
    """Symmetric InfoNCE of paired embeddings ``a``, ``b`` ``[M, D]`` (row i of each is a pair).

    Cosine similarities ``s_ij = <a_i, b_j> / (|a_i| |b_j|)``; the loss is the mean of
    the cross-entropies of ``s / temperature`` row-wise (a -> b) and column-wise
    (b -> a). The target of row ``i`` is column ``i``; with ``groups`` ``[M]`` it is
    spread uniformly over the columns of ``i``'s group, so pairs with the same group
    id (e.g. identical descriptions) are not negatives of each other. Used by the
    contrastive objective (views) and the alignment objective (ST vs text).
    """
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    if groups is None:
        target = torch.arange(len(logits), device=logits.device)
    else:
        same = (groups[:, None] == groups[None, :]).to(logits.dtype)
        target = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@register_objective("contrastive")
class Contrastive(Objective):
    """Instance-contrastive pre-training of ``model.embed`` (module docstring).

    Parameters
    ----------
    info : DataInfo, optional
    model : nn.Module
        Must have ``embed(batch) -> [B, N, D]`` and ``embed_dim``.
    temperature : float
        InfoNCE temperature (0.1).
    pool : {"window", "node"}
        One instance per window (mean over nodes) or per (window, node).
    proj_dim : int
        Output width of the projection head (128).
    augmentations : sequence of str
        Applied in order to make each view; from ``jitter``, ``scaling``,
        ``node_dropout``, ``temporal_crop`` (default all four).
    jitter_sigma, scaling_sigma, node_drop, crop_min : float
        Strengths: noise std (0.1), factor std (0.1), node drop probability (0.1),
        shortest crop as a share of the history (0.5).
    """

    splittable = False  # every other window of the batch is a negative

    def __init__(
        self,
        info: DataInfo | None = None,
        model: nn.Module | None = None,
        temperature: float = 0.1,
        pool: str = "window",
        proj_dim: int = 128,
        augmentations: Sequence[str] = ("jitter", "scaling", "node_dropout", "temporal_crop"),
        jitter_sigma: float = 0.1,
        scaling_sigma: float = 0.1,
        node_drop: float = 0.1,
        crop_min: float = 0.5,
    ):
        super().__init__(info, model)
        if model is None or not hasattr(model, "embed") or not hasattr(model, "embed_dim"):
            raise ConfigError(
                f"contrastive learning needs a model with embed(batch), got "
                f"{getattr(model, 'registry_name', type(model).__name__)!r}",
                f"use one of: {', '.join(models_with(('embed',)))}",
            )
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}", "use e.g. 0.1")
        if pool not in ("window", "node"):
            raise ConfigError(f"unknown pool {pool!r}", 'use "window" or "node"')
        unknown = [a for a in augmentations if a not in AUGMENTATIONS]
        if unknown:
            raise ConfigError(
                f"unknown augmentations {unknown}", f"use some of {list(AUGMENTATIONS)}"
            )
        strengths = {
            "jitter_sigma": jitter_sigma,
            "scaling_sigma": scaling_sigma,
            "node_drop": node_drop,
            "crop_min": crop_min,
        }
        self.views = [(AUGMENTATIONS[a][0], strengths[AUGMENTATIONS[a][1]]) for a in augmentations]
        self.temperature, self.pool = temperature, pool
        d = model.embed_dim
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, proj_dim))

    def augment(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """A view of ``batch``: ``x`` / ``x_mask`` through every augmentation, the rest shared."""
        x = batch["x"]
        mask = batch.get("x_mask")
        mask = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
        for fn, strength in self.views:
            x, mask = fn(x, mask, generator, strength)
        return {**batch, "x": x, "x_mask": mask}

    def instances(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """``[M, proj_dim]`` projected embeddings, ``M = B`` or ``B * N`` by ``pool``."""
        h = model.embed(batch)  # [B, N, D]
        h = h.mean(dim=1) if self.pool == "window" else h.reshape(-1, h.shape[-1])
        return self.projection(h)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        z1 = self.instances(model, self.augment(batch))
        z2 = self.instances(model, self.augment(batch))
        loss = info_nce(z1, z2, self.temperature)
        positive = F.cosine_similarity(z1, z2, dim=-1).mean()
        return loss, {"info_nce": loss.detach(), "positive_similarity": positive.detach()}
