"""Calendar features per time step: time of day and day of week."""

from __future__ import annotations

import numpy as np
import pandas as pd

from llm_st.data.container import STData
from llm_st.errors import DataError

TIME_FEATURE_NAMES = ("time_of_day", "day_of_week")


def time_features(data: STData) -> np.ndarray:
    """``[T, 2]`` float32: time of day in ``[0, 1)`` and day of week ``0..6`` (Monday = 0).

    Without timestamps the time of day is derived from the row index and the
    frequency (the series is taken to start at midnight on a Monday); without a
    frequency either, both features are 0.
    """
    return time_features_at(data, np.arange(data.num_steps))


def step_times(data: STData, rows: np.ndarray) -> np.ndarray:
    """Times of rows ``rows`` (any shape), which may lie past the last row of ``data``.

    ``datetime64[ns]`` continued with the data's frequency when the data have timestamps,
    else the row numbers themselves (int64).

    Raises
    ------
    DataError
        Rows past the end of timestamped data without a regular frequency.
    """
    rows = np.asarray(rows, np.int64)
    if data.timestamps is None:
        return rows
    T = data.num_steps
    if rows.size == 0 or rows.max() < T:
        return data.timestamps.values[rows]
    if data.freq is None:
        raise DataError(
            f"{data.name}: the timestamps have no regular frequency, so the times after the "
            "last row are unknown",
            "give the data a frequency (STData(..., freq='5min')) or forecast inside the series",
        )
    step = pd.tseries.frequencies.to_offset(data.freq)
    last = rows.max() - T + 1
    future = pd.date_range(data.timestamps[-1], periods=last + 1, freq=step)[1:]
    table = np.concatenate([data.timestamps.values, future.values])
    return table[rows]


def time_features_at(data: STData, rows: np.ndarray) -> np.ndarray:
    """:func:`time_features` of rows ``rows`` ``[...]`` -> ``[..., 2]``, rows past the end
    of ``data`` included (continued with its frequency)."""
    rows = np.asarray(rows, np.int64)
    if data.timestamps is None:
        per_day = data.steps_per_day()
        if per_day is None:
            return np.zeros(rows.shape + (2,), np.float32)
        return np.stack([(rows % per_day) / per_day, (rows // per_day) % 7], -1).astype(np.float32)
    ts = pd.DatetimeIndex(step_times(data, rows.ravel()))
    seconds = ts.hour * 3600 + ts.minute * 60 + ts.second
    features = np.stack(
        [np.asarray(seconds, np.float32) / 86400.0, np.asarray(ts.day_of_week, np.float32)], 1
    )
    return features.reshape(rows.shape + (2,))
