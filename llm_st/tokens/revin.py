"""Reversible instance normalization (RevIN; Kim et al., "Reversible Instance
Normalization for Accurate Time-Series Forecasting against Distribution Shift",
ICLR 2022).

Each input window is normalized by its own mean and standard deviation over time
before the model and the forecast is de-normalized with the same statistics after
it, so the model sees series without their level and scale. With a mask the
statistics use observed entries only, so missing entries (NaN or a null
placeholder such as 0.0) do not bias them.

:func:`instance_norm` / :func:`instance_denorm` are the stateless functions;
:class:`RevIN` is the module that adds the learnable affine map and keeps the
statistics between ``"norm"`` and ``"denorm"``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import nn

from llm_st.errors import ConfigError, DataError


class InstanceStats(NamedTuple):
    """Per-series statistics, with the reduced axis kept (size 1) so they broadcast."""

    mean: torch.Tensor
    std: torch.Tensor


def instance_norm(
    x: torch.Tensor,
    dim: int = 1,
    mask: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, InstanceStats]:
    """Normalize each series by its mean and standard deviation along ``dim``.

    ``std = sqrt(var + eps)`` with the biased (population) variance, as RevIN. The
    statistics are detached from the graph, as in the reference implementation.

    Parameters
    ----------
    x : torch.Tensor, e.g. ``[B, L, N, C]`` with ``dim=1``
    dim : int
        Time axis; statistics are taken over it for every other index.
    mask : torch.Tensor, optional
        Broadcastable to ``x``; nonzero marks observed entries. Statistics use only
        those; unobserved entries of the output are set to 0 (the series mean after
        normalization), so NaN placeholders do not reach the model. A series with no
        observed entry gets mean 0 and std ``sqrt(eps)``.
    eps : float

    Returns
    -------
    normed : torch.Tensor, shape of ``x``
    stats : InstanceStats
        ``mean`` and ``std`` of shape ``x.shape`` with ``dim`` set to 1.
    """
    with torch.no_grad():
        if mask is None:
            mean = x.mean(dim=dim, keepdim=True)
            var = x.var(dim=dim, keepdim=True, unbiased=False)
        else:
            observed = torch.broadcast_to(mask != 0, x.shape)
            weight = observed.to(x.dtype)
            count = weight.sum(dim=dim, keepdim=True).clamp_min(1)
            filled = torch.where(observed, x, 0)
            mean = filled.sum(dim=dim, keepdim=True) / count
            var = (weight * (filled - mean) ** 2).sum(dim=dim, keepdim=True) / count
        stats = InstanceStats(mean, torch.sqrt(var + eps))
    normed = (x - stats.mean) / stats.std
    if mask is not None:
        normed = torch.where(observed, normed, 0)
    return normed, stats


def instance_denorm(y: torch.Tensor, stats: InstanceStats) -> torch.Tensor:
    """Undo :func:`instance_norm`: ``y * std + mean``.

    ``y`` may have another length along the time axis (a forecast ``[B, H, N, C]``
    after normalizing a history ``[B, L, N, C]``): the statistics broadcast over it.
    """
    return y * stats.std + stats.mean


class RevIN(nn.Module):
    """Reversible instance normalization with a learnable per-channel affine map.

    Parameters
    ----------
    num_features : int
        Channels ``C`` (last axis); the affine weight and bias have shape ``[C]``.
    eps : float
        Added to the variance, and (squared) to the weight when inverting the affine
        map, as in the reference implementation.
    affine : bool
        Learn ``weight`` (init 1) and ``bias`` (init 0), applied after normalizing.

    Shapes
    ------
    ``[B, L, C]`` or ``[B, L, N, C]``: statistics over the time axis 1 for every
    ``(B, [N,] C)`` series. ``forward(x, "norm")`` stores them and
    ``forward(y, "denorm")`` applies them to ``y`` of shape ``[B, H, ..., C]``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        self.stats: InstanceStats | None = None

    def forward(
        self,
        x: torch.Tensor,
        mode: Literal["norm", "denorm"] = "norm",
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalize (storing the statistics) or de-normalize with the stored ones.

        Parameters
        ----------
        x : torch.Tensor ``[B, L, ..., C]``
        mode : {"norm", "denorm"}
        mask : torch.Tensor, optional
            Only for ``"norm"``: observed entries, as in :func:`instance_norm`.
        """
        if x.ndim < 3 or x.shape[-1] != self.num_features:
            raise DataError(
                f"RevIN({self.num_features}) got a tensor of shape {tuple(x.shape)}",
                f"pass [batch, time, ..., {self.num_features}] with channels last",
            )
        if mode == "norm":
            x, self.stats = instance_norm(x, dim=1, mask=mask, eps=self.eps)
            return x * self.weight + self.bias if self.affine else x
        if mode == "denorm":
            if self.stats is None:
                raise DataError(
                    "RevIN denorm called before norm",
                    'call forward(x, "norm") on the input window first',
                )
            if self.affine:
                x = (x - self.bias) / (self.weight + self.eps**2)
            return instance_denorm(x, self.stats)
        raise ConfigError(f"unknown RevIN mode {mode!r}", 'use "norm" or "denorm"')

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"
