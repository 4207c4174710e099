"""Calendar features per time step: time of day and day of week."""

from __future__ import annotations

import numpy as np

from llm_st.data.container import STData

TIME_FEATURE_NAMES = ("time_of_day", "day_of_week")


def time_features(data: STData) -> np.ndarray:
    """``[T, 2]`` float32: time of day in ``[0, 1)`` and day of week ``0..6`` (Monday = 0).

    Without timestamps the time of day is derived from the row index and the
    frequency (the series is taken to start at midnight on a Monday); without a
    frequency either, both features are 0.
    """
    T = data.num_steps
    if data.timestamps is not None:
        ts = data.timestamps
        seconds = ts.hour * 3600 + ts.minute * 60 + ts.second
        return np.stack(
            [np.asarray(seconds, np.float32) / 86400.0, np.asarray(ts.day_of_week, np.float32)],
            axis=1,
        )
    per_day = data.steps_per_day()
    if per_day is None:
        return np.zeros((T, 2), np.float32)
    step = np.arange(T)
    return np.stack([(step % per_day) / per_day, (step // per_day) % 7], axis=1).astype(np.float32)
