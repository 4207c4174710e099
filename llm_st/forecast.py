"""The one forecast type of llm-st: point, quantiles and samples over windows.

Axis order (documented once, used everywhere)::

    point      [W, H, N, C]      windows, horizon steps, nodes, channels
    quantiles  [Q, W, H, N, C]   one slice per level in ``quantile_levels``
    samples    [S, W, H, N, C]   sample paths (NaN where a sample was not produced)
    valid      [W, H, N, C]      True where the point forecast came from the model

``target_times`` ``[W, H]`` are the times of the forecast steps and ``cutoffs`` ``[W]``
the time of the last history step of each window (timestamps as ``datetime64[ns]``,
or row numbers as int64 when the data have no timestamps). :meth:`Forecast.to_frame`
gives the long layout Nixtla and Chronos users know: ``unique_id, ds, cutoff`` and one
column for the point forecast and per quantile.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llm_st.errors import DataError

DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

_ARRAYS = ("point", "quantiles", "samples", "valid", "target_times", "cutoffs", "target_start")


@dataclass
class Forecast:
    """Forecasts of ``W`` windows x ``H`` steps x ``N`` nodes x ``C`` channels.

    Parameters
    ----------
    point
        ``[W, H, N, C]`` point forecast (the median for sample forecasts).
    quantiles
        ``[Q, W, H, N, C]`` or None.
    quantile_levels
        The ``Q`` levels in (0, 1), increasing.
    samples
        ``[S, W, H, N, C]`` or None.
    valid
        ``[W, H, N, C]`` bool; default: ``point`` is finite.
    target_times
        ``[W, H]`` times of the forecast steps (``datetime64[ns]`` or int64 rows); default
        row numbers ``0..H-1`` per window.
    cutoffs
        ``[W]`` time of the last history step of each window; default one step before
        ``target_times[:, 0]`` for row numbers.
    node_ids, channels
        Names of the ``N`` nodes and ``C`` channels.
    target_start
        ``[W]`` int64 row of the first forecast step in the source data, when known.
    point_name
        Column name of the point forecast in :meth:`to_frame` (``"median"``, ``"mean"``).
    meta
        JSON-serializable facts (model, template, fraction of valid outputs, ...).
    """

    point: np.ndarray
    quantiles: np.ndarray | None = None
    quantile_levels: tuple[float, ...] = ()
    samples: np.ndarray | None = None
    valid: np.ndarray | None = None
    target_times: np.ndarray | None = None
    cutoffs: np.ndarray | None = None
    node_ids: list[str] | None = None
    channels: list[str] | None = None
    target_start: np.ndarray | None = None
    point_name: str = "median"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.point = np.asarray(self.point, dtype=np.float32)
        if self.point.ndim != 4:
            raise DataError(
                f"forecast point must be [W, H, N, C], got shape {self.point.shape}",
                "add the missing axes (e.g. point[None] for one window)",
            )
        W, H, N, C = self.point.shape
        self.quantile_levels = tuple(float(q) for q in self.quantile_levels)
        if self.quantiles is not None:
            self.quantiles = np.asarray(self.quantiles, dtype=np.float32)
            if self.quantiles.shape != (len(self.quantile_levels), W, H, N, C):
                raise DataError(
                    f"quantiles have shape {self.quantiles.shape}, expected "
                    f"{(len(self.quantile_levels), W, H, N, C)} for levels {self.quantile_levels}",
                    "pass one [W, H, N, C] slice per quantile level",
                )
            levels = np.asarray(self.quantile_levels)
            if np.any((levels <= 0) | (levels >= 1)) or np.any(np.diff(levels) <= 0):
                raise DataError(
                    f"quantile levels {self.quantile_levels} are not increasing inside (0, 1)",
                    "pass sorted levels such as (0.1, 0.5, 0.9)",
                )
        if self.samples is not None:
            self.samples = np.asarray(self.samples, dtype=np.float32)
            if self.samples.ndim != 5 or self.samples.shape[1:] != self.point.shape:
                raise DataError(
                    f"samples have shape {self.samples.shape}, expected [S, {W}, {H}, {N}, {C}]",
                    "put the sample axis first",
                )
        self.valid = np.isfinite(self.point) if self.valid is None else np.asarray(self.valid, bool)
        if self.valid.shape != self.point.shape:
            raise DataError(
                f"valid has shape {self.valid.shape}, expected {self.point.shape}",
                "pass a [W, H, N, C] mask",
            )
        if self.target_times is None:
            self.target_times = np.tile(np.arange(H, dtype=np.int64), (W, 1))
        self.target_times = np.asarray(self.target_times)
        if self.target_times.shape != (W, H):
            raise DataError(
                f"target_times have shape {self.target_times.shape}, expected ({W}, {H})",
                "pass one time per window and horizon step",
            )
        if self.cutoffs is None:
            if np.issubdtype(self.target_times.dtype, np.datetime64):
                raise DataError(
                    "cutoffs are required with timestamps",
                    "pass the time of the last history step per window",
                )
            self.cutoffs = self.target_times[:, 0] - 1
        self.cutoffs = np.asarray(self.cutoffs)
        if self.cutoffs.shape != (W,):
            raise DataError(
                f"cutoffs have shape {self.cutoffs.shape}, expected ({W},)",
                "pass one cutoff per window",
            )
        self.node_ids = (
            [str(i) for i in range(N)] if self.node_ids is None else [str(i) for i in self.node_ids]
        )
        self.channels = ["value"] if self.channels is None and C == 1 else self.channels
        self.channels = (
            [f"c{i}" for i in range(C)]
            if self.channels is None
            else [str(c) for c in self.channels]
        )
        if len(self.node_ids) != N or len(self.channels) != C:
            raise DataError(
                f"{len(self.node_ids)} node ids and {len(self.channels)} channels for a "
                f"forecast with N={N}, C={C}",
                "pass one id per node and one name per channel",
            )
        if self.target_start is not None:
            self.target_start = np.asarray(self.target_start, dtype=np.int64).reshape(W)

    # ----------------------------------------------------------------- builders
    @classmethod
    def from_samples(
        cls,
        samples: np.ndarray,
        quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
        keep_samples: bool = True,
        **kwargs: Any,
    ) -> Forecast:
        """Median and quantiles of ``samples`` ``[S, W, H, N, C]``, ignoring NaN samples.

        Entries where every sample is NaN get a NaN point (and ``valid`` False).
        """
        samples = np.asarray(samples, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN entries stay NaN
            point = np.nanmedian(samples, axis=0)
            quantiles = (
                np.nanquantile(samples, list(quantile_levels), axis=0)
                if len(quantile_levels)
                else None
            )
        return cls(
            point=point,
            quantiles=quantiles,
            quantile_levels=tuple(quantile_levels),
            samples=samples if keep_samples else None,
            point_name="median",
            **kwargs,
        )

    # ----------------------------------------------------------------- shape
    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(W, H, N, C)``."""
        return self.point.shape  # type: ignore[return-value]

    @property
    def num_samples(self) -> int:
        return 0 if self.samples is None else self.samples.shape[0]

    def quantile(self, level: float) -> np.ndarray:
        """The ``[W, H, N, C]`` forecast at one stored quantile level."""
        matches = [i for i, q in enumerate(self.quantile_levels) if abs(q - level) < 1e-9]
        if self.quantiles is None or not matches:
            raise DataError(
                f"quantile {level} is not stored", f"use one of {list(self.quantile_levels)}"
            )
        return self.quantiles[matches[0]]

    # ----------------------------------------------------------------- views
    def to_frame(self) -> pd.DataFrame:
        """Long data frame: one row per (window, node, channel, step).

        Columns ``unique_id`` (node id, or ``node/channel`` with several channels),
        ``ds`` (time of the step), ``cutoff`` (last history time of the window),
        ``<point_name>`` and ``q0.1``, ``q0.5``, ... per quantile level. Rows are
        ordered by window, node, channel, step.
        """
        W, H, N, C = self.shape

        def long(a: np.ndarray) -> np.ndarray:  # [W, H, N, C] -> rows in (W, N, C, H) order
            return a.transpose(0, 2, 3, 1).reshape(-1)

        ids = np.asarray(
            self.node_ids if C == 1 else [f"{n}/{c}" for n in self.node_ids for c in self.channels]
        )
        columns: dict[str, Any] = {
            "unique_id": np.repeat(np.tile(ids, W), H),
            "ds": np.repeat(self.target_times[:, None, :], N * C, axis=1).reshape(-1),
            "cutoff": np.repeat(self.cutoffs, N * C * H),
            self.point_name: long(self.point),
        }
        if self.quantiles is not None:
            for level, values in zip(self.quantile_levels, self.quantiles, strict=True):
                columns[f"q{level:g}"] = long(values)
        return pd.DataFrame(columns)

    # ----------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` file (no pickled objects; names and ``meta`` as text)."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            name: getattr(self, name) for name in _ARRAYS if getattr(self, name) is not None
        }
        arrays["quantile_levels"] = np.asarray(self.quantile_levels, dtype=np.float64)
        arrays["node_ids"] = np.asarray(self.node_ids, dtype=str)
        arrays["channels"] = np.asarray(self.channels, dtype=str)
        arrays["header"] = np.asarray(
            json.dumps({"point_name": self.point_name, "meta": self.meta}, default=str)
        )
        np.savez_compressed(path, **arrays)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: str | Path) -> Forecast:
        """Read a file written by :meth:`save` (``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        header = json.loads(str(arrays.pop("header")))
        return cls(
            **{name: arrays.get(name) for name in _ARRAYS},
            quantile_levels=tuple(arrays["quantile_levels"].tolist()),
            node_ids=arrays["node_ids"].tolist(),
            channels=arrays["channels"].tolist(),
            point_name=header["point_name"],
            meta=header["meta"],
        )

    def __repr__(self) -> str:
        W, H, N, C = self.shape
        return (
            f"Forecast(W={W}, H={H}, N={N}, C={C}, quantiles={list(self.quantile_levels)}, "
            f"samples={self.num_samples}, valid={float(self.valid.mean()):.1%})"
        )
