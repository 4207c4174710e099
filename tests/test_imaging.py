"""Series <-> image geometry of VisionTS (llm_st.tokens.imaging)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_st.errors import ConfigError, DataError
from llm_st.tokens.imaging import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    default_period,
    find_period,
    fold,
    image_layout,
    image_to_series,
    series_to_image,
    unfold,
)

GREY_OFFSET = sum(IMAGENET_MEAN) / 3
GREY_SCALE = sum(IMAGENET_STD) / 3


@settings(max_examples=60, deadline=None)
@given(
    period=st.integers(1, 40),
    cycles=st.integers(1, 12),
    lead=st.lists(st.integers(1, 3), max_size=2),
    use_torch=st.booleans(),
)
def test_fold_unfold_round_trip_is_exact(period, cycles, lead, use_torch):
    length = period * cycles
    x = np.random.default_rng(period * 100 + cycles).normal(size=(*lead, length))
    if use_torch:
        x = torch.from_numpy(x)
    grid = fold(x, period)
    assert tuple(grid.shape) == (*lead, period, cycles)
    back = unfold(grid)
    assert tuple(back.shape) == tuple(x.shape)
    assert (back == x).all()
    assert (fold(back, period) == grid).all()


@settings(max_examples=30, deadline=None)
@given(period=st.integers(1, 30), cycles=st.integers(1, 10))
def test_fold_puts_phase_in_rows_and_periods_in_columns(period, cycles):
    grid = fold(np.arange(period * cycles), period)
    rows, cols = np.meshgrid(np.arange(period), np.arange(cycles), indexing="ij")
    np.testing.assert_array_equal(grid, cols * period + rows)


def test_fold_rejects_a_length_that_is_not_a_multiple_of_the_period():
    with pytest.raises(DataError, match="3 steps left over"):
        fold(np.zeros(27), 8)
    with pytest.raises(ConfigError):
        fold(np.zeros(8), 0)


def test_layout_matches_a_hand_computation():
    # L=96, H=24, P=24 on a 224 image of 16-px patches: 4 context and 1 horizon column;
    # int(4/5 * 14 * 0.4) = int(4.48) = 4 patch columns (64 px) hold the context, and the
    # 160 masked px hold round(160 * 4 / 64) = 10 period columns
    lay = image_layout(96, 24, 24, 224, 16)
    assert (lay.pad_left, lay.context_cols, lay.horizon_cols) == (0, 4, 1)
    assert (lay.context_patches, lay.context_width, lay.forecast_cols) == (4, 64, 10)
    # L=50, P=12 -> 10 steps of padding, 5 columns; H=40 -> 4 columns;
    # int(5/9 * 14 * 0.4) = 3 patch columns (48 px); round(176 * 5 / 48) = 18
    lay = image_layout(50, 40, 12, 224, 16)
    assert (lay.pad_left, lay.context_cols, lay.horizon_cols) == (10, 5, 4)
    assert (lay.context_patches, lay.context_width, lay.forecast_cols) == (3, 48, 18)
    visible = lay.visible_patches().view(14, 14)
    assert visible[:, :3].all() and not visible[:, 3:].any()


def test_layout_rejects_impossible_geometry():
    # 4 patch columns, one context column in one of them: the 3 masked columns hold
    # 3 period columns, but H=64 with P=8 needs 8
    with pytest.raises(DataError, match="needs 8 period column"):
        image_layout(8, 64, 8, 32, 8)
    with pytest.raises(ConfigError, match="period 20"):
        image_layout(16, 4, 20, 32, 8)
    with pytest.raises(ConfigError, match="align_const"):
        image_layout(16, 4, 4, 32, 8, align_const=0.0)
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        image_layout(16, 4, 4, 30, 8)
    with pytest.raises(ConfigError, match="interpolation"):
        image_layout(16, 4, 4, 32, 8, interpolation="area")
    with pytest.raises(DataError, match="float tensor"):
        series_to_image(torch.zeros(16), 4, 4, 32, 8)


def _exact_geometry(x: torch.Tensor, horizon: int = 16, **kw):
    """P = S = 16 and one pixel column per period: rendering involves no resizing."""
    images, lay = series_to_image(x, horizon, 16, 16, 4, **kw)
    assert (lay.context_width, lay.context_cols) == (4, 4)
    assert lay.forecast_cols == 16 - 4
    return images, lay


def test_images_are_grey_and_imagenet_normalized():
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    images, lay = _exact_geometry(x)
    assert images.shape == (2, 3, 16, 16)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    grey = images * std + mean
    torch.testing.assert_close(grey[:, 0], grey[:, 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(grey[:, 0], grey[:, 2], rtol=0, atol=1e-6)
    # pixel (row i, column j) of the context is step j * P + i, drawn as 0.449 + 0.226 v
    b, i, j = 1, 5, 2
    v = float(x[b, j * 16 + i])
    for c in range(3):
        expected = (GREY_OFFSET + GREY_SCALE * v - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert float(images[b, c, i, j]) == pytest.approx(expected, abs=1e-5)
    # the masked area is blank: v = 0, grey level 0.449
    torch.testing.assert_close(grey[:, :, :, 4:], torch.full_like(grey[:, :, :, 4:], GREY_OFFSET))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_round_trip_is_exact_without_resizing(interpolation):
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    images, lay = _exact_geometry(x, horizon=20, interpolation=interpolation)
    back = image_to_series(images, lay)
    assert back.shape == (3, 64 + 20)
    torch.testing.assert_close(back[:, :64], x, rtol=0, atol=1e-5)
    torch.testing.assert_close(back[:, 64:], torch.zeros(3, 20), rtol=0, atol=1e-5)


def _smooth(length: int, period: int) -> torch.Tensor:
    """``[1, L]``: a daily cycle with growing amplitude and a trend (``period`` 24), or
    one slow sine over the whole window (``period`` 1, where time runs along the pixels)."""
    t = torch.arange(length, dtype=torch.float32)
    if period == 1:
        return torch.sin(2 * math.pi * t / length)[None]
    return (torch.sin(2 * math.pi * t / period) * (1 + t / length) + 0.5 * t / length)[None]


@pytest.mark.parametrize(
    ("length", "horizon", "period"), [(96, 24, 24), (336, 96, 24), (100, 30, 24), (48, 12, 1)]
)
def test_round_trip_of_a_smooth_series_is_close_at_mae_resolution(length, horizon, period):
    x = _smooth(length, period)
    images, lay = series_to_image(x, horizon, period, 224, 16)
    err = (image_to_series(images, lay)[:, :length] - x).abs().max()
    assert err < 0.02 * x.abs().max()


def test_round_trip_error_shrinks_with_the_image_size():
    x = _smooth(100, 24)
    errors = []
    for size in (32, 64, 224):
        images, lay = series_to_image(x, 30, 24, size, 8)
        errors.append(float((image_to_series(images, lay)[:, :100] - x).abs().max()))
    assert errors[0] > errors[1] > errors[2]


def test_forecast_is_read_from_the_masked_columns_only():
    x = torch.randn(2, 100, generator=torch.Generator().manual_seed(2))
    images, lay = series_to_image(x, 30, 24, 64, 8)
    base = image_to_series(images, lay)
    w = lay.context_width
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    context_changed = images.clone()
    context_changed[..., :w] += noise[..., :w]
    out = image_to_series(context_changed, lay)
    assert torch.equal(out[:, 100:], base[:, 100:])
    assert (out[:, :100] - base[:, :100]).abs().max() > 0.1
    masked_changed = images.clone()
    masked_changed[..., w:] += noise[..., w:]
    out = image_to_series(masked_changed, lay)
    assert torch.equal(out[:, :100], base[:, :100])
    assert (out[:, 100:] - base[:, 100:]).abs().min() > 0


@pytest.mark.parametrize(
    ("length", "horizon", "period", "size", "patch", "atol"),
    [(64, 32, 16, 16, 4, 1e-5), (100, 30, 24, 64, 8, 0.05), (96, 24, 24, 224, 16, 0.01)],
)
def test_a_periodic_image_continuation_forecasts_a_periodic_series(
    length, horizon, period, size, patch, atol
):
    # A series that repeats every P steps folds into identical columns. An MAE that
    # continues that texture fills the masked columns with copies of the last context
    # pixel column; reading them back must give the next H steps of the series.
    phase = torch.arange(period) / period
    profile = torch.sin(2 * math.pi * phase) + 0.3 * phase
    full = profile.repeat(math.ceil((length + horizon) / period) + 1)[None, : length + horizon]
    images, lay = series_to_image(full[:, :length], horizon, period, size, patch)
    w = lay.context_width
    continued = images.clone()
    continued[..., w:] = images[..., w - 1 : w]
    forecast = image_to_series(continued, lay)[:, length:]
    torch.testing.assert_close(forecast, full[:, length:], rtol=0, atol=atol)


def test_find_period_picks_the_daily_cycle():
    rng = np.random.default_rng(0)
    t = np.arange(24 * 20)
    daily = np.sin(2 * np.pi * t / 24) + 0.2 * rng.normal(size=(3, t.size))
    assert find_period(daily) == 24
    assert find_period(torch.from_numpy(daily), candidates=[12, 24, 168]) == 24
    # a strong weekly cycle beats a weak daily one among the calendar candidates
    t = np.arange(168 * 6)
    hourly = 2 * np.sin(2 * np.pi * t / 168) + 0.3 * np.sin(2 * np.pi * t / 24)
    assert find_period(hourly, candidates=[24, 168]) == 168
    # 96 steps resolve period 24 only to bin 4 (22..27 share it); 24 lies on the bin
    assert find_period(np.sin(2 * np.pi * np.arange(96) / 24)) == 24


def test_find_period_rejects_unusable_input():
    with pytest.raises(DataError, match="no candidate period"):
        find_period(np.zeros(20), candidates=[11, 50])
    with pytest.raises(DataError, match="NaN"):
        find_period(np.array([1.0, np.nan, 2.0, 3.0, 4.0, 5.0]))


def test_default_period_needs_two_days_of_history():
    assert default_period(24, 96) == 24
    assert default_period(24, 48) == 24
    assert default_period(24, 47) == 1
    assert default_period(288, 12) == 1
    assert default_period(None, 500) == 1
