"""A forecasting task: data + chronological split + scaler fit on train + window sizes.

This is the one place where the evaluation protocol (``docs/protocol.md``) is put
together, so every method (baseline, prompt, adapter) sees the same windows,
the same scaling and the same test targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llm_st.config import SCALER_FITS
from llm_st.data.container import STData
from llm_st.data.scalers import Scaler, make_scaler
from llm_st.data.splits import Split, chronological_split, train_fraction_split
from llm_st.data.windows import WindowDataset, WindowIndex
from llm_st.errors import ConfigError

METRIC_SCALES = ("original", "normalized")


@dataclass
class ForecastTask:
    """Everything fixed by the protocol before a method is chosen.

    ``metric_scale`` is ``"original"`` (ST graph protocol: metrics after inverse
    scaling) or ``"normalized"`` (long-term-series protocol: metrics on the scaled values).
    """

    data: STData
    split: Split
    scaler: Scaler
    history: int
    horizon: int
    stride: int = 1
    metric_scale: str = "original"
    val_stride: int = 1

    def __post_init__(self) -> None:
        for name in ("stride", "val_stride"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"{name}={getattr(self, name)} must be at least 1",
                    "use 1 (every window) or a small prime such as 7 or 11",
                )
        if self.metric_scale not in METRIC_SCALES:
            raise ConfigError(
                f"unknown metric scale {self.metric_scale!r}",
                f"use one of {', '.join(METRIC_SCALES)}",
            )

    def index(self, part: str, history: int | None = None) -> WindowIndex:
        """Windows with targets in ``part``: train every ``stride`` rows, validate every
        ``val_stride`` rows (a budget: early stopping on a subset), test every row."""
        stride = {"train": self.stride, "val": self.val_stride}.get(part, 1)
        return WindowIndex.for_split(
            self.data, self.split, part, history or self.history, self.horizon, stride
        )

    def dataset(self, part: str, history: int | None = None) -> WindowDataset:
        """Windows of ``part``; ``history`` overrides the task's (same targets, longer context)."""
        return WindowDataset(self.data, self.index(part, history), self.scaler)

    def train_data(self) -> STData:
        return self.data.time_slice(*self.split.train)

    @property
    def null_value(self) -> float | None:
        return self.data.null_value


def prepare_task(
    data: STData,
    history: int,
    horizon: int,
    ratios: Sequence[float] | None = None,
    borders: Sequence[int] | None = None,
    scaler: dict[str, Any] | None = None,
    metric_scale: str | None = None,
    stride: int = 1,
    train_fraction: float | None = None,
    fitted_scaler: Scaler | None = None,
    val_stride: int = 1,
    scaler_fit: str = "split",
) -> ForecastTask:
    """Split ``data``, fit the scaler on the training rows (with the mask) and fix the windows.

    Split, scaler and metric scale default to the named dataset's standard protocol
    (``data.extras["protocol"]``, set by :func:`llm_st.data.load`), else 70/10/20, one
    global z-score and metrics on the original scale.

    ``train_fraction`` (few-shot) keeps the first fraction of the training windows only
    (:func:`~llm_st.data.splits.train_fraction_split`; validation and test unchanged).
    ``scaler_fit`` says which rows the scaler is fit on then: ``"split"`` (default) the
    whole training split, as the published Time-LLM and GPT4TS loaders do, so normalized
    metrics are on the same scale as the full setting's and the papers'; ``"trained"`` only
    the rows trained on, so nothing of the dropped rows is used (its normalized metrics are
    on another scale, not comparable with the full setting's).

    ``val_stride``: validate (early stopping, best weights) on every ``val_stride``-th
    validation window only, a budget for slow models; the test scores every window.

    ``fitted_scaler``: a scaler fit elsewhere (e.g. a trained run's, for zero-shot transfer
    to these data), used as it is: nothing is fit on ``data`` (``scaler`` is ignored).
    """
    protocol = data.extras.get("protocol", {})
    if ratios is None and borders is None:
        ratios, borders = protocol.get("ratios"), protocol.get("borders")
        if ratios is None and borders is None:
            ratios = (0.7, 0.1, 0.2)
    if scaler_fit not in SCALER_FITS:
        raise ConfigError(
            f"unknown scaler_fit {scaler_fit!r}", f"use one of {', '.join(SCALER_FITS)}"
        )
    full = chronological_split(data.num_steps, ratios=ratios, borders=borders)
    split = full
    if train_fraction is not None:
        split = train_fraction_split(full, train_fraction, history)
    if fitted_scaler is not None:
        fitted = fitted_scaler
    else:
        sc = dict(protocol.get("scaler", {"kind": "standard", "axis": "global", "use_mask": True}))
        sc.update(scaler or {})
        fitted = make_scaler(
            sc.get("kind", "standard"), sc.get("axis", "global"), sc.get("use_mask", True)
        )
        train = data.time_slice(*(full if scaler_fit == "split" else split).train)
        fitted.fit(train.values, train.mask)
    return ForecastTask(
        data=data,
        split=split,
        scaler=fitted,
        history=history,
        horizon=horizon,
        stride=stride,
        metric_scale=metric_scale or protocol.get("metric_scale", "original"),
        val_stride=val_stride,
    )
