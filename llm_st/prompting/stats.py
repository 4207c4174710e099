"""Input statistics for prompt-as-prefix (Time-LLM), vectorized over a batch of series.

Time-LLM (Jin et al., ICLR 2024) prefixes its input with the minimum, maximum and
median of the history, the direction of its trend and the top-5 lags of its
autocorrelation computed by FFT. :func:`series_statistics` computes all of them for
``B`` series at once with numpy array operations (no Python loop over series).

Differences from Time-LLM's code, on purpose: statistics are on the original scale of
the history (Time-LLM uses its normalized input); missing values (NaN) are skipped; the
autocorrelation is the linear (zero-padded), mean-centred one over lags ``1..T-1``
(Time-LLM's circular one of the raw input always ranks lag 0 first and mirrors lag
``k`` at ``T - k``); and an exactly zero trend is called ``"flat"``.
"""

from __future__ import annotations

import warnings

import numpy as np

from llm_st.errors import DataError


def first_last_observed(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last observed value per row of ``x`` ``[B, T]`` (NaN for empty rows)."""
    observed = ~np.isnan(x)
    rows = np.arange(x.shape[0])
    first = np.argmax(observed, axis=1)
    last = x.shape[1] - 1 - np.argmax(observed[:, ::-1], axis=1)
    empty = ~observed.any(axis=1)
    return np.where(empty, np.nan, x[rows, first]), np.where(empty, np.nan, x[rows, last])


def autocorrelation(x: np.ndarray) -> np.ndarray:
    """Linear autocorrelation ``[B, T]`` of mean-centred rows of ``x`` ``[B, T]`` by FFT.

    ``acf[b, k] = sum_t (x[b, t] - m_b) (x[b, t + k] - m_b)`` over pairs where both are
    observed (missing values count as the mean), normalized by the lag-0 value (0 for a
    constant row).
    """
    x = np.asarray(x, dtype=np.float64)
    B, T = x.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        centred = np.nan_to_num(x - np.nanmean(x, axis=1, keepdims=True))
    size = 1 << int(np.ceil(np.log2(max(2 * T - 1, 1))))
    spectrum = np.fft.rfft(centred, n=size, axis=1)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=1)[:, :T]
    zero = acf[:, :1]
    return np.where(zero > 1e-12 * T, acf / np.where(zero > 0, zero, 1.0), 0.0)


def top_lags(x: np.ndarray, k: int = 5) -> np.ndarray:
    """``[B, min(k, T-1)]`` int64 lags ``>= 1`` with the largest autocorrelation, largest
    first (ties: smaller lag first)."""
    acf = autocorrelation(x)[:, 1:]
    order = np.argsort(-acf, axis=1, kind="stable")
    return (order[:, : min(k, acf.shape[1])] + 1).astype(np.int64)


def trend_words(trend: np.ndarray) -> np.ndarray:
    """``"upward"``, ``"downward"`` or ``"flat"`` for each trend value (NaN -> ``"flat"``)."""
    trend = np.nan_to_num(np.asarray(trend, dtype=np.float64))
    return np.where(trend > 0, "upward", np.where(trend < 0, "downward", "flat"))


def series_statistics(x: np.ndarray, num_lags: int = 5) -> dict[str, np.ndarray]:
    """Time-LLM's input statistics for each row of ``x`` ``[B, T]`` (NaN = missing).

    Returns
    -------
    dict
        ``min``, ``max``, ``median`` ``[B]`` float64 over observed values; ``trend`` ``[B]``
        last minus first observed value (Time-LLM's sum of first differences);
        ``trend_word`` ``[B]`` str; ``lags`` ``[B, num_lags]`` int64 (see :func:`top_lags`).
        Rows without observations give NaN statistics.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(
            f"series statistics need [B, T] series, got shape {x.shape}",
            "flatten the leading axes first",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN
        minimum, maximum, median = (
            np.nanmin(x, axis=1),
            np.nanmax(x, axis=1),
            np.nanmedian(x, axis=1),
        )
    first, last = first_last_observed(x)
    trend = last - first
    return {
        "min": minimum,
        "max": maximum,
        "median": median,
        "trend": trend,
        "trend_word": trend_words(trend),
        "lags": top_lags(x, num_lags),
    }
