"""Scalers fit on the training split only, with the observation mask.

Statistics are kept with shape ``[N or 1, C or 1]`` so they broadcast against any
array whose last two axes are (nodes, channels): the raw ``[T, N, C]`` values, a
batch ``[B, L, N, C]`` or a forecast ``[B, H, N, C]``. ``transform`` and
``inverse_transform`` take numpy arrays or torch tensors (on any device/dtype).

``axis`` says over which nodes/channels one statistic is shared:

- ``"global"``: one statistic for all nodes and channels (the ST graph protocol);
- ``"node"``: one per node (the long-term-series protocol, nodes = variables);
- ``"channel"``: one per channel, shared by all nodes;
- ``"node_channel"``: one per (node, channel).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from llm_st.errors import ConfigError, DataError

AXES = ("global", "node", "channel", "node_channel")
# axes of a [T, N, C] array reduced for each choice of shared statistic
_REDUCE = {"global": (0, 1, 2), "node": (0, 2), "channel": (0, 1), "node_channel": (0,)}


def _like(stat: np.ndarray, x: Any) -> Any:
    """``stat`` as the same array type, device and dtype as ``x``."""
    if isinstance(x, np.ndarray):
        return stat.astype(
            x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32, copy=False
        )
    import torch

    return torch.as_tensor(
        stat, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device
    )


class Scaler:
    """Base: subclasses set ``kind`` and compute ``(shift, scale)``; ``z = (x - shift) / scale``."""

    kind: ClassVar[str] = "base"

    def __init__(self, axis: str = "global", use_mask: bool = True):
        if axis not in AXES:
            raise ConfigError(f"unknown scaler axis {axis!r}", f"use one of {', '.join(AXES)}")
        self.axis = axis
        self.use_mask = use_mask
        self.shift: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    def _stats(self, chunks: Any, reduce: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``(shift, scale)`` (dims kept) from ``chunks()``, which yields ``(values, mask)``."""
        raise NotImplementedError

    def fit(self, values: np.ndarray, mask: np.ndarray | None = None) -> Scaler:
        """Fit on ``values`` ``[T, N, C]`` (the training rows).

        ``mask`` excludes missing entries when ``use_mask``.

        Statistics accumulate in float64 over blocks of rows, so fitting never copies the
        whole array.
        """
        values = np.asarray(values)
        if values.ndim != 3:
            raise DataError(
                f"scaler expects [T, N, C] values, got shape {values.shape}",
                "fit on STData.values of the train split",
            )
        use = mask is not None and self.use_mask
        if use and np.shape(mask) != values.shape:
            raise DataError(
                f"mask shape {np.shape(mask)} differs from values {values.shape}",
                "pass the mask of the same rows",
            )
        block = max(1, (1 << 20) // max(1, values.shape[1] * values.shape[2]))

        def chunks():
            for t in range(0, values.shape[0], block):
                v = values[t : t + block].astype(np.float64)
                yield v, (np.asarray(mask[t : t + block], bool) if use else np.ones(v.shape, bool))

        reduce = _REDUCE[self.axis]
        counts = sum(m.sum(axis=reduce, keepdims=True) for _, m in chunks())
        if np.any(counts == 0):
            raise DataError(
                f"scaler axis {self.axis!r}: some node/channel has no observed value in the "
                "fitting rows",
                "use axis='global' or a longer training split",
            )
        shift, scale = self._stats(chunks, reduce)
        scale = np.where(scale > 1e-8, scale, 1.0)  # a constant series is shifted but not blown up
        self.shift = shift.reshape(shift.shape[1:]).astype(np.float32)
        self.scale = scale.reshape(scale.shape[1:]).astype(np.float32)
        return self

    def _check_fitted(self) -> None:
        if self.shift is None:
            raise ConfigError(
                f"{type(self).__name__} is not fitted", "call fit(train_values, train_mask) first"
            )

    def transform(self, x: Any) -> Any:
        self._check_fitted()
        out = x - _like(self.shift, x)
        out /= _like(self.scale, out)  # in place: one temporary per call, not two
        return out

    def inverse_transform(self, z: Any) -> Any:
        self._check_fitted()
        out = z * _like(self.scale, z)
        out += _like(self.shift, out)
        return out

    def subset(self, nodes: np.ndarray | None = None, channels: np.ndarray | None = None) -> Scaler:
        """The scaler of a subset of nodes and channels (indices into the fitted ones).

        Shared statistics (one for all nodes, or all channels) are kept as they are.
        """
        self._check_fitted()
        if self.kind == "none":
            return self
        shift, scale = self.shift, self.scale
        if nodes is not None and shift.shape[0] > 1:
            shift, scale = shift[nodes], scale[nodes]
        if channels is not None and shift.shape[1] > 1:
            shift, scale = shift[:, channels], scale[:, channels]
        out = make_scaler(self.kind, self.axis, self.use_mask)
        out.shift, out.scale = shift, scale
        return out

    # ------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "kind": self.kind,
            "axis": self.axis,
            "use_mask": self.use_mask,
            "shift": self.shift.tolist(),
            "scale": self.scale.tolist(),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Scaler:
        scaler = make_scaler(d["kind"], d["axis"], d.get("use_mask", True))
        if d["kind"] != "none":
            scaler.shift = np.asarray(d["shift"], np.float32)
            scaler.scale = np.asarray(d["scale"], np.float32)
        return scaler

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @staticmethod
    def load(path: str | Path) -> Scaler:
        return Scaler.from_dict(json.loads(Path(path).read_text()))


class StandardScaler(Scaler):
    """z-score: ``(x - mean) / std`` (population std)."""

    kind = "standard"

    def _stats(self, chunks, reduce):
        # two passes (mean, then squared deviations) for numerical stability
        n = total = 0
        for v, m in chunks():
            n = n + m.sum(axis=reduce, keepdims=True)
            total = total + np.where(m, v, 0).sum(axis=reduce, keepdims=True)
        mean = total / n
        sq = sum(
            np.where(m, (v - mean) ** 2, 0).sum(axis=reduce, keepdims=True) for v, m in chunks()
        )
        return mean, np.sqrt(sq / n)


class MinMaxScaler(Scaler):
    """Min-max to ``[0, 1]``: ``(x - min) / (max - min)``."""

    kind = "minmax"

    def _stats(self, chunks, reduce):
        lo = hi = None
        for v, m in chunks():
            c_lo = np.where(m, v, np.inf).min(axis=reduce, keepdims=True)
            c_hi = np.where(m, v, -np.inf).max(axis=reduce, keepdims=True)
            lo = c_lo if lo is None else np.minimum(lo, c_lo)
            hi = c_hi if hi is None else np.maximum(hi, c_hi)
        return lo, hi - lo


class IdentityScaler(Scaler):
    """No scaling; keeps the same interface."""

    kind = "none"

    def fit(self, values: np.ndarray, mask: np.ndarray | None = None) -> Scaler:
        self.shift = np.zeros((1, 1), np.float32)
        self.scale = np.ones((1, 1), np.float32)
        return self

    def transform(self, x: Any) -> Any:
        return x

    def inverse_transform(self, z: Any) -> Any:
        return z


SCALERS: dict[str, type[Scaler]] = {
    cls.kind: cls for cls in (StandardScaler, MinMaxScaler, IdentityScaler)
}


def make_scaler(kind: str = "standard", axis: str = "global", use_mask: bool = True) -> Scaler:
    """Scaler by name: ``standard``, ``minmax`` or ``none``."""
    if kind not in SCALERS:
        raise ConfigError(f"unknown scaler {kind!r}", f"use one of {', '.join(SCALERS)}")
    return SCALERS[kind](axis=axis, use_mask=use_mask)
