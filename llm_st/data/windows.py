"""Sliding windows ``(history, horizon, stride)`` served without materializing them.

:class:`WindowIndex` holds only the start row of every window; :class:`WindowDataset`
gathers a batch of windows from the ``[T, N, C]`` array when it is asked for, so memory
stays ``O(T * N * C)`` whatever the number of windows. Scaling is applied per batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from llm_st.data.container import STData
from llm_st.data.scalers import Scaler
from llm_st.data.splits import Split
from llm_st.data.timefeatures import time_features
from llm_st.errors import ConfigError, DataError


class WindowIndex:
    """Start rows of the windows whose forecast targets fall in rows ``[start, stop)``.

    Window ``i`` has history rows ``[s, s + history)`` and target rows
    ``[s + history, s + history + horizon)`` with ``s = starts[i]``. By default the
    history may reach back before ``start`` (into an earlier split);
    ``history_in_split=True`` keeps the whole window inside ``[start, stop)``.
    """

    def __init__(
        self,
        num_steps: int,
        history: int,
        horizon: int,
        stride: int = 1,
        start: int = 0,
        stop: int | None = None,
        history_in_split: bool = False,
    ):
        if history < 1 or horizon < 1 or stride < 1:
            raise DataError(
                f"history={history}, horizon={horizon}, stride={stride} must all be positive",
                "use e.g. history=12, horizon=12, stride=1",
            )
        stop = num_steps if stop is None else min(stop, num_steps)
        first = start if history_in_split else max(0, start - history)
        last = stop - history - horizon
        if last < first:
            raise DataError(
                f"rows [{start}, {stop}) are too short for a window of history {history} + horizon "
                f"{horizon} (the series has {num_steps} steps)",
                "use a shorter history or horizon, a longer series, or a larger split",
            )
        self.history, self.horizon, self.stride = history, horizon, stride
        self.starts = np.arange(first, last + 1, stride, dtype=np.int64)

    @classmethod
    def for_split(
        cls,
        data: STData,
        split: Split,
        part: str,
        history: int,
        horizon: int,
        stride: int = 1,
        **kw: Any,
    ) -> WindowIndex:
        start, stop = split[part]
        return cls(data.num_steps, history, horizon, stride, start, stop, **kw)

    def __len__(self) -> int:
        return len(self.starts)


class WindowDataset(torch.utils.data.Dataset):
    """Windows of an :class:`STData` as batches.

    ``dataset[i]`` gives one window, ``dataset[[i, j, ...]]`` (and :meth:`batch`) a batch;
    each is a dict with

    - ``x``: ``[B, L, N, C]`` float32 history, scaled, missing entries set to 0;
    - ``x_mask``: ``[B, L, N, C]`` bool, observed history entries;
    - ``y``: ``[B, H, N, C]`` float32 targets on the original scale;
    - ``y_scaled``: ``[B, H, N, C]`` the targets scaled like ``x``;
    - ``y_mask``: ``[B, H, N, C]`` bool, observed targets;
    - ``x_time``, ``y_time``: ``[B, L, 2]`` / ``[B, H, 2]`` time of day in [0, 1) and day of week;
    - ``start``: ``[B]`` int64 start row of each window.

    A single index drops the leading ``B`` axis. ``batch`` returns numpy arrays,
    indexing returns torch tensors.
    """

    def __init__(
        self, data: STData, index: WindowIndex, scaler: Scaler | None = None, with_time: bool = True
    ):
        self.data = data
        self.index = index
        self.scaler = scaler
        self.times = time_features(data) if with_time else np.zeros((data.num_steps, 2), np.float32)
        self._offsets = np.arange(index.history + index.horizon)

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, idx: np.ndarray | list[int]) -> dict[str, np.ndarray]:
        starts = self.index.starts[np.asarray(idx, dtype=np.int64)]
        rows = starts[:, None] + self._offsets  # [B, L + H]
        values = self.data.values[rows]  # gathers only this batch: [B, L + H, N, C]
        mask = self.data.mask[rows]
        L = self.index.history
        x, y = values[:, :L], values[:, L:]
        # scale history and targets separately and zero missing history in place, so a
        # batch costs about twice its gathered size in temporaries
        x_scaled = x.copy() if self.scaler is None else self.scaler.transform(x)
        np.multiply(x_scaled, mask[:, :L], out=x_scaled)
        y_scaled = y if self.scaler is None else self.scaler.transform(y)
        times = self.times[rows]
        return {
            "x": x_scaled,
            "x_mask": mask[:, :L],
            "y": y,
            "y_scaled": y_scaled,
            "y_mask": mask[:, L:],
            "x_time": times[:, :L],
            "y_time": times[:, L:],
            "start": starts,
        }

    def __getitem__(self, i: int | list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        single = np.ndim(i) == 0
        out = self.batch(np.atleast_1d(i))
        return {k: torch.as_tensor(v[0] if single else v) for k, v in out.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        # torch's DataLoader fetches a whole batch through this in one gather
        return self[indices]


def pick_windows(num_windows: int, max_windows: int | None) -> np.ndarray:
    """Indices of at most ``max_windows`` windows spread evenly over ``num_windows``.

    All windows when ``max_windows`` is None or not smaller than ``num_windows``. The one
    rule for every fixed subset that is evaluated or trained on (windows, and nodes too):
    zero-shot and fine-tuned LMs decode, instruction datasets, pre-training checks.
    """
    if max_windows is None or max_windows >= num_windows:
        return np.arange(num_windows)
    if max_windows < 1:
        raise ConfigError(
            f"max_windows={max_windows} must be at least 1", "use e.g. --max-windows 8"
        )
    return np.unique(np.linspace(0, num_windows - 1, max_windows).round().astype(np.int64))
