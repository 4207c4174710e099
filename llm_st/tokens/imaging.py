"""Series as images: fold by the period, render for a masked autoencoder, read back.

VisionTS (Chen et al., 2024, "VisionTS: Visual Masked Autoencoders Are Free-Lunch
Zero-Shot Time Series Forecasters") turns forecasting into image inpainting:

1. **Fold.** A series of ``L = P * n`` steps becomes a ``[P, n]`` grid, one column
   per period and one row per phase within the period (:func:`fold`), so a daily
   pattern becomes a texture that repeats from column to column. The context is
   padded on the left (copies of its first value) to a whole number of periods.
2. **Render.** The ``[P, n]`` grid is resized to the left ``context_patches`` patch
   columns of an ``S x S`` image; the remaining patch columns, at the same horizontal
   scale, hold the ``ceil(H / P)`` forecast columns and are masked. The grey image is
   replicated to the model's channels and normalized with the model's pixel mean and
   standard deviation (ImageNet's for ViT-MAE).
3. **Read back.** A reconstructed image is converted back to grey values, the
   context pixels are resized to the ``[P, n]`` context grid and the masked pixels to
   the forecast grid at the same scale, and both are unfolded (:func:`unfold`).

The geometry is VisionTS's (``align_const`` and the patch-aligned context width); two
details differ and are deliberate. VisionTS writes the scaled series ``v`` directly as
the *normalized* value of all three channels; here ``v`` is the intensity of a true
grey picture, ``g = mean(pixel_mean) + mean(pixel_std) * v``, normalized per channel,
which differs from VisionTS's input by a per-channel offset of at most 0.19 and a
scale within 1.5 % for ImageNet statistics. VisionTS resizes the whole reconstructed
image at once, so the first forecast steps blend in context pixels; here the context
and forecast pixel columns are resized separately, so the forecast is read from the
masked columns only.

Everything here works on ``torch`` tensors with time on the last axis; :func:`fold`,
:func:`unfold` and :func:`find_period` also take numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from llm_st.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Interpolation = Literal["bilinear", "bicubic", "nearest"]
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def fold(series: ArrayT, period: int) -> ArrayT:
    """Fold the last axis into one column per period.

    Parameters
    ----------
    series : ``[..., L]`` tensor or array, ``L`` a multiple of ``period``
    period : int
        ``P``, steps per column.

    Returns
    -------
    ``[..., P, L // P]`` with ``out[..., i, j] = series[..., j * P + i]``: rows are the
    phase within a period, columns the successive periods.
    """
    length = series.shape[-1]
    if period < 1:
        raise ConfigError(f"period must be >= 1, got {period}", "pass a positive number of steps")
    if length % period:
        raise DataError(
            f"cannot fold a series of {length} steps by period {period} "
            f"({length % period} steps left over)",
            "pad or trim the series to a multiple of the period first",
        )
    return series.reshape(*series.shape[:-1], length // period, period).swapaxes(-1, -2)


def unfold(grid: ArrayT) -> ArrayT:
    """Inverse of :func:`fold`: ``[..., P, n] -> [..., P * n]``, column after column."""
    return grid.swapaxes(-1, -2).reshape(*grid.shape[:-2], grid.shape[-2] * grid.shape[-1])


@dataclass(frozen=True)
class ImageLayout:
    """Where a context and its horizon sit in an ``S x S`` image (built by :func:`image_layout`).

    Attributes
    ----------
    context_len, horizon, period : int
        ``L``, ``H`` and ``P`` in steps.
    image_size, patch_size : int
        ``S`` and the MAE patch side, ``S`` a multiple of it.
    context_patches : int
        Patch columns that hold the context (visible to the MAE); the others are masked.
    pixel_mean, pixel_std : tuple of float
        Per-channel normalization of the model (its number of channels).
    interpolation : str
        ``torch.nn.functional.interpolate`` mode used both ways.
    """

    context_len: int
    horizon: int
    period: int
    image_size: int
    patch_size: int
    context_patches: int
    pixel_mean: tuple[float, ...] = IMAGENET_MEAN
    pixel_std: tuple[float, ...] = IMAGENET_STD
    interpolation: Interpolation = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ConfigError(
                f"unknown interpolation {self.interpolation!r}", f"use one of {_INTERPOLATIONS}"
            )
        if len(self.pixel_mean) != len(self.pixel_std) or not self.pixel_mean:
            raise ConfigError(
                f"pixel_mean has {len(self.pixel_mean)} entries, pixel_std {len(self.pixel_std)}",
                "give one mean and one standard deviation per image channel",
            )
        if not 1 <= self.context_patches < self.patches_per_side:
            raise ConfigError(
                f"context_patches={self.context_patches} is not in 1..{self.patches_per_side - 1}",
                "leave at least one patch column visible and one masked",
            )
        if self.forecast_cols < self.horizon_cols:
            raise DataError(
                f"horizon {self.horizon} needs {self.horizon_cols} period column(s) of "
                f"{self.period} steps but the image has room for {self.forecast_cols} after a "
                f"context of {self.context_len} steps ({self.context_cols} column(s) in "
                f"{self.context_patches} of {self.patches_per_side} patch columns)",
                "use a longer history, a shorter horizon, a smaller period or a larger align_const",
            )

    @property
    def pad_left(self) -> int:
        """Steps of left padding that make the context a whole number of periods."""
        return -self.context_len % self.period

    @property
    def context_cols(self) -> int:
        """Period columns of the (padded) context."""
        return (self.context_len + self.pad_left) // self.period

    @property
    def horizon_cols(self) -> int:
        """Period columns the horizon needs, ``ceil(H / P)``."""
        return -(-self.horizon // self.period)

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.patches_per_side**2

    @property
    def context_width(self) -> int:
        """Pixel columns of the context, ``context_patches * patch_size``."""
        return self.context_patches * self.patch_size

    @property
    def forecast_cols(self) -> int:
        """Period columns the masked pixels hold at the context's horizontal scale."""
        masked_width = self.image_size - self.context_width
        return round(masked_width * self.context_cols / self.context_width)

    def visible_patches(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``[num_patches]`` bool, ``True`` for the context patches, in row-major patch order."""
        cols = torch.arange(self.patches_per_side, device=device) < self.context_patches
        return cols.repeat(self.patches_per_side)

    def grey_level(self) -> tuple[float, float]:
        """``(offset, scale)``: value ``v`` is drawn as grey intensity ``offset + scale * v``."""
        channels = len(self.pixel_mean)
        return sum(self.pixel_mean) / channels, sum(self.pixel_std) / channels


def image_layout(
    context_len: int,
    horizon: int,
    period: int,
    image_size: int,
    patch_size: int,
    align_const: float = 0.4,
    pixel_mean: Sequence[float] = IMAGENET_MEAN,
    pixel_std: Sequence[float] = IMAGENET_STD,
    interpolation: Interpolation = "bilinear",
) -> ImageLayout:
    """VisionTS's layout: the context takes ``align_const`` of its share of the width.

    With ``n_in`` context and ``n_out = ceil(H / P)`` forecast period columns, the
    context gets ``max(1, int(n_in / (n_in + n_out) * patches_per_side * align_const))``
    patch columns. ``align_const < 1`` leaves the masked area wider than the horizon
    strictly needs, which VisionTS found to help (0.4 in its experiments).
    """
    if context_len < 1 or horizon < 1:
        raise DataError(
            f"context_len={context_len} and horizon={horizon} must be >= 1", "pass positive lengths"
        )
    if period < 1 or period > context_len:
        raise ConfigError(
            f"period {period} must lie in 1..context_len ({context_len})",
            "use a period the context holds at least once, or a longer history",
        )
    if not 0 < align_const <= 1:
        raise ConfigError(f"align_const must lie in (0, 1], got {align_const}", "VisionTS uses 0.4")
    if patch_size < 1 or image_size % patch_size:
        raise ConfigError(
            f"image_size {image_size} is not a multiple of patch_size {patch_size}",
            "use the image and patch size of the MAE configuration",
        )
    n_in = -(-context_len // period)
    n_out = -(-horizon // period)
    per_side = image_size // patch_size
    context_patches = max(1, int(n_in / (n_in + n_out) * per_side * align_const))
    return ImageLayout(
        context_len=context_len,
        horizon=horizon,
        period=period,
        image_size=image_size,
        patch_size=patch_size,
        context_patches=context_patches,
        pixel_mean=tuple(float(m) for m in pixel_mean),
        pixel_std=tuple(float(s) for s in pixel_std),
        interpolation=interpolation,
    )


def _resize(grid: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``[B, h, w] -> [B, *size]``, no antialiasing (torchvision ``Resize(antialias=False)``)."""
    align = None if mode == "nearest" else False
    return F.interpolate(grid.unsqueeze(1), size=size, mode=mode, align_corners=align).squeeze(1)


def _channel_stats(layout: ImageLayout, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(layout.pixel_mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    std = torch.tensor(layout.pixel_std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    return mean, std


def series_to_image(
    context: torch.Tensor,
    horizon: int,
    period: int,
    image_size: int,
    patch_size: int = 16,
    align_const: float = 0.4,
    pixel_mean: Sequence[float] = IMAGENET_MEAN,
    pixel_std: Sequence[float] = IMAGENET_STD,
    interpolation: Interpolation = "bilinear",
) -> tuple[torch.Tensor, ImageLayout]:
    """Render normalized contexts as MAE input images with the forecast area blank.

    Parameters
    ----------
    context : torch.Tensor ``[B, L]``
        Normalized series values ``v`` (VisionTS: z-scores times ``norm_const``), float.
    horizon, period, image_size, patch_size, align_const, pixel_mean, pixel_std, interpolation
        See :func:`image_layout`.

    Returns
    -------
    images : torch.Tensor ``[B, len(pixel_mean), S, S]``
        Channel ``c`` holds ``(g - pixel_mean[c]) / pixel_std[c]`` for the grey level
        ``g = mean(pixel_mean) + mean(pixel_std) * v``; pixel columns from
        ``layout.context_width`` on (the masked patches) hold ``v = 0``.
    layout : ImageLayout
    """
    if context.ndim != 2 or not context.is_floating_point():
        raise DataError(
            f"context must be a float tensor [batch, length], got {tuple(context.shape)} "
            f"{context.dtype}",
            "flatten nodes and channels into the batch axis and cast to float",
        )
    layout = image_layout(
        context.shape[1],
        horizon,
        period,
        image_size,
        patch_size,
        align_const,
        pixel_mean,
        pixel_std,
        interpolation,
    )
    padded = torch.cat([context[:, :1].expand(-1, layout.pad_left), context], dim=1)
    grid = _resize(fold(padded, period), (image_size, layout.context_width), interpolation)
    values = F.pad(grid, (0, image_size - layout.context_width))  # [B, S, S], masked area v = 0
    offset, scale = layout.grey_level()
    mean, std = _channel_stats(layout, values)
    return (offset + scale * values.unsqueeze(1) - mean) / std, layout


def image_to_series(images: torch.Tensor, layout: ImageLayout) -> torch.Tensor:
    """Read a (reconstructed) image back as the context followed by the forecast.

    Parameters
    ----------
    images : torch.Tensor ``[B, channels, S, S]``
        Normalized pixels, as :func:`series_to_image` makes them or an MAE reconstructs them.
    layout : ImageLayout
        The layout the images were rendered with.

    Returns
    -------
    torch.Tensor ``[B, L + H]``
        Series values ``v``: the first ``L`` steps come from the context pixel columns,
        the last ``H`` from the masked pixel columns only, each resized back to period
        columns at the scale of the rendering. Without resizing (``P == S`` and one
        pixel column per period) the context comes back exactly.
    """
    S, width = layout.image_size, layout.context_width
    if images.ndim != 4 or images.shape[1] != len(layout.pixel_mean) or images.shape[2:] != (S, S):
        raise DataError(
            f"images of shape {tuple(images.shape)} do not match the layout "
            f"[batch, {len(layout.pixel_mean)}, {S}, {S}]",
            "pass images rendered (or reconstructed) with this layout",
        )
    mean, std = _channel_stats(layout, images)
    offset, scale = layout.grey_level()
    values = ((images * std + mean).mean(dim=1) - offset) / scale  # [B, S, S]
    P = layout.period
    context = _resize(values[..., :width], (P, layout.context_cols), layout.interpolation)
    forecast = _resize(values[..., width:], (P, layout.forecast_cols), layout.interpolation)
    series = unfold(torch.cat([context, forecast], dim=-1))
    start = layout.pad_left
    return series[:, start : start + layout.context_len + layout.horizon]


def find_period(series: np.ndarray | torch.Tensor, candidates: Sequence[int] | None = None) -> int:
    """The candidate period with the strongest spectral peak, from the FFT of the series.

    The amplitude spectrum of each series (time on the last axis, mean removed) is
    averaged over all leading axes; candidate ``c`` scores the amplitude at the
    frequency bin nearest ``T / c``. Candidates that share the best bin (the FFT
    resolves periods only up to ``T / k``) are told apart by how close ``T / c`` lies
    to that bin.

    Parameters
    ----------
    series : ``[..., T]`` array or tensor (NaNs are not allowed; fill gaps first)
    candidates : sequence of int, optional
        Periods to choose from, each in ``2..T // 2`` (at least two cycles). Default:
        every integer in that range. Pass the calendar periods of the data frequency
        (e.g. ``[24, 168]`` for hourly data) to choose between those.

    Returns
    -------
    int
    """
    x = series.detach().cpu().numpy() if isinstance(series, torch.Tensor) else np.asarray(series)
    x = x.reshape(-1, x.shape[-1]).astype(np.float32, copy=False)
    T = x.shape[-1]
    if not np.all(np.isfinite(x)):
        raise DataError(
            "find_period got NaN or infinite values", "fill the gaps before detecting the period"
        )
    options = list(range(2, T // 2 + 1)) if candidates is None else [int(c) for c in candidates]
    valid = [c for c in options if 2 <= c <= T // 2]
    if not valid:
        raise DataError(
            f"no candidate period in {options[:10]} fits a series of {T} steps (need 2..{T // 2})",
            "pass a longer series or smaller candidate periods",
        )
    amplitude = np.abs(np.fft.rfft(x - x.mean(axis=-1, keepdims=True), axis=-1)).mean(axis=0)
    bins = [round(T / c) for c in valid]
    best = max(amplitude[k] for k in bins)
    ties = [(abs(T / c - k), c) for c, k in zip(valid, bins, strict=True) if amplitude[k] == best]
    return min(ties)[1]


def default_period(steps_per_day: int | None, context_len: int) -> int:
    """The data's daily period if the context holds at least two days, else 1 (no folding).

    Folding needs a few columns to show a texture; with fewer than two periods in the
    context the image would be a single padded column, so VisionTS's fallback for
    series without a usable season, ``P = 1`` (the series as one row), is used.
    """
    if steps_per_day is not None and steps_per_day >= 2 and context_len >= 2 * steps_per_day:
        return int(steps_per_day)
    return 1
