"""The one spatio-temporal data type of llm-st.

:class:`STData` holds a multivariate series on a set of nodes: ``values`` of shape
``[T, N, C]`` (time steps, nodes, channels) with an observation mask, timestamps,
node ids, channel names and, optionally, a graph over the nodes, node coordinates,
node metadata and a free-text description. Grid data ``(T, C, H, W)`` map onto it
with the cells as nodes in row-major order and a 4-neighbour grid graph.

Views (:meth:`STData.time_slice`, :meth:`STData.select_nodes` with a slice) share
memory with the parent; nothing copies the full array where a view serves.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from llm_st.errors import DataError


@dataclass(frozen=True)
class Adjacency:
    """A weighted, directed graph over ``num_nodes`` nodes in coordinate (COO) form.

    Edge ``i`` goes from ``src[i]`` to ``dst[i]`` with weight ``weight[i]`` (the
    entry ``A[src, dst]`` of the dense matrix). COO keeps graphs with thousands of
    nodes small; :meth:`to_dense` gives the matrix where a model needs it.
    """

    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    num_nodes: int

    def __post_init__(self) -> None:
        src = np.asarray(self.src, dtype=np.int64)
        dst = np.asarray(self.dst, dtype=np.int64)
        weight = np.asarray(self.weight, dtype=np.float32)
        if not (src.shape == dst.shape == weight.shape) or src.ndim != 1:
            raise DataError(
                f"adjacency edge arrays differ in shape (src {src.shape}, dst {dst.shape}, "
                f"weight {weight.shape})",
                "pass three 1-D arrays of the same length",
            )
        if len(src) and (
            min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= self.num_nodes
        ):
            raise DataError(
                f"adjacency has an edge to node {int(max(src.max(), dst.max()))} outside "
                f"0..{self.num_nodes - 1}",
                "use 0-based node indices below the number of nodes",
            )
        if not np.all(np.isfinite(weight)):
            raise DataError(
                "adjacency has NaN or infinite edge weights",
                "replace them by 0 (no edge) or a finite weight",
            )
        object.__setattr__(self, "src", src)
        object.__setattr__(self, "dst", dst)
        object.__setattr__(self, "weight", weight)

    @classmethod
    def from_dense(cls, matrix: np.ndarray) -> Adjacency:
        """Build from a dense ``[N, N]`` matrix; zero entries are "no edge"."""
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise DataError(
                f"adjacency matrix must be square [N, N], got shape {matrix.shape}",
                "pass an N x N matrix whose rows and columns follow the node order",
            )
        if not np.all(np.isfinite(matrix)):
            raise DataError(
                "adjacency matrix has NaN or infinite entries",
                "replace them by 0 (no edge) or a finite weight",
            )
        src, dst = np.nonzero(matrix)
        return cls(src, dst, matrix[src, dst], matrix.shape[0])

    @classmethod
    def from_edges(
        cls,
        src: Sequence[int] | np.ndarray,
        dst: Sequence[int] | np.ndarray,
        weight: Sequence[float] | np.ndarray | None = None,
        num_nodes: int | None = None,
        symmetric: bool = False,
    ) -> Adjacency:
        """Build from an edge list; ``symmetric=True`` adds every reverse edge once."""
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        weight = np.ones(len(src), np.float32) if weight is None else np.asarray(weight, np.float32)
        if num_nodes is None:
            num_nodes = int(max(src.max(initial=-1), dst.max(initial=-1)) + 1)
        if symmetric:
            src, dst, weight = (
                np.concatenate([src, dst]),
                np.concatenate([dst, src]),
                np.concatenate([weight, weight]),
            )
        # one entry per (src, dst): the last weight given wins, as in a dense assignment
        key = src * num_nodes + dst
        _, last = np.unique(key[::-1], return_index=True)
        keep = np.sort(len(key) - 1 - last)
        return cls(src[keep], dst[keep], weight[keep], num_nodes)

    @property
    def num_edges(self) -> int:
        """Number of edges between distinct nodes (self-loops are not counted)."""
        return int(np.count_nonzero(self.src != self.dst))

    def to_dense(self, dtype: Any = np.float32) -> np.ndarray:
        out = np.zeros((self.num_nodes, self.num_nodes), dtype=dtype)
        out[self.src, self.dst] = self.weight
        return out

    def is_symmetric(self) -> bool:
        fwd = dict(
            zip(
                zip(self.src.tolist(), self.dst.tolist(), strict=True),
                self.weight.tolist(),
                strict=True,
            )
        )
        return all(fwd.get((d, s)) == w for (s, d), w in fwd.items())

    def subgraph(self, nodes: np.ndarray) -> Adjacency:
        """The graph induced by ``nodes`` (indices in the new order)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        remap = np.full(self.num_nodes, -1, dtype=np.int64)
        remap[nodes] = np.arange(len(nodes))
        keep = (remap[self.src] >= 0) & (remap[self.dst] >= 0)
        return Adjacency(
            remap[self.src[keep]], remap[self.dst[keep]], self.weight[keep], len(nodes)
        )

    def neighbors(
        self, node: int, k: int | None = None, direction: str = "both"
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most strongly connected neighbours of ``node`` (self excluded).

        ``direction`` is ``"out"`` (edges node -> j), ``"in"`` (j -> node) or ``"both"``
        (the larger of the two weights). Returns ``(indices, weights)`` sorted by
        weight, strongest first, ties broken by index.
        """
        if direction not in ("out", "in", "both"):
            raise DataError(
                f"unknown neighbour direction {direction!r}", "use 'out', 'in' or 'both'"
            )
        weights: dict[int, float] = {}
        if direction in ("out", "both"):
            sel = (self.src == node) & (self.dst != node)
            for j, w in zip(self.dst[sel].tolist(), self.weight[sel].tolist(), strict=True):
                weights[j] = max(weights.get(j, -np.inf), w)
        if direction in ("in", "both"):
            sel = (self.dst == node) & (self.src != node)
            for j, w in zip(self.src[sel].tolist(), self.weight[sel].tolist(), strict=True):
                weights[j] = max(weights.get(j, -np.inf), w)
        order = sorted(weights, key=lambda j: (-weights[j], j))[: k if k is not None else None]
        return np.asarray(order, dtype=np.int64), np.asarray(
            [weights[j] for j in order], dtype=np.float32
        )


def grid_adjacency(height: int, width: int) -> Adjacency:
    """4-neighbour graph of an ``height x width`` grid, cells numbered row-major."""
    idx = np.arange(height * width).reshape(height, width)
    right = (idx[:, :-1].ravel(), idx[:, 1:].ravel())
    down = (idx[:-1, :].ravel(), idx[1:, :].ravel())
    src = np.concatenate([right[0], down[0]])
    dst = np.concatenate([right[1], down[1]])
    return Adjacency.from_edges(src, dst, num_nodes=height * width, symmetric=True)


@dataclass
class STData:
    """Spatio-temporal data: ``values[t, n, c]`` with mask, time, nodes, channels and graph.

    Parameters
    ----------
    values
        ``[T, N, C]`` array, stored as float32. NaN and infinite entries are masked
        (with a warning) and stored as 0.
    mask
        ``[T, N, C]`` boolean, ``True`` where observed. Default: finite entries that
        differ from ``null_value``.
    timestamps
        ``T`` strictly increasing, unique timestamps (anything ``pd.DatetimeIndex`` takes).
    freq
        Pandas frequency string (``"5min"``, ``"h"``); inferred from ``timestamps`` when omitted.
    node_ids, channels
        Names of the ``N`` nodes and ``C`` channels
        (default ``"0".."N-1"`` and ``"value"``/``"c0"..``).
    adjacency
        :class:`Adjacency` or a dense ``[N, N]`` matrix (zero = no edge).
    coords
        ``[N, 2]`` node coordinates (latitude, longitude for sensors; row, column for grid cells).
    node_meta
        Data frame with one row per node (road type, district, ...).
    description
        Free text about the dataset, used by prompts.
    null_value
        The value that means "missing" in the source (``0.0`` for METR-LA / PEMS speeds).
    grid_shape
        ``(H, W)`` when the nodes are the cells of a grid (see :meth:`from_grid`).
    """

    values: np.ndarray
    mask: np.ndarray | None = None
    timestamps: pd.DatetimeIndex | None = None
    freq: str | None = None
    node_ids: list[str] | None = None
    channels: list[str] | None = None
    adjacency: Adjacency | np.ndarray | None = None
    coords: np.ndarray | None = None
    node_meta: pd.DataFrame | None = None
    description: str = ""
    name: str = "data"
    null_value: float | None = None
    grid_shape: tuple[int, int] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        if values.ndim == 2:
            values = values[:, :, None]
        if values.ndim != 3:
            raise DataError(
                f"values must have shape [T, N, C] (or [T, N]), got {values.ndim} dimensions "
                f"{values.shape}",
                "reshape to [time, nodes, channels]; for grids (T, C, H, W) use STData.from_grid",
            )
        if not np.issubdtype(values.dtype, np.number) and values.dtype != bool:
            raise DataError(
                f"values must be numeric, got dtype {values.dtype}",
                "convert the columns to numbers first",
            )
        values = values.astype(np.float32, copy=False)
        T, N, C = values.shape
        if T == 0 or N == 0 or C == 0:
            raise DataError(
                f"values are empty (shape {values.shape})",
                "pass at least one time step, node and channel",
            )
        given = None if self.mask is None else np.asarray(self.mask, dtype=bool)
        if given is not None and given.ndim == 2:
            given = given[:, :, None]
        if given is not None and given.shape != values.shape:
            raise DataError(
                f"mask shape {given.shape} differs from values shape {values.shape}",
                "pass a mask of the same [T, N, C] shape",
            )
        # finiteness and the default mask are computed in row blocks: a full temporary
        # boolean array would add a quarter of the values' size to the peak memory
        block = max(1, (1 << 22) // max(1, N * C))
        n_bad = sum(
            int(values[t : t + block].size - np.count_nonzero(np.isfinite(values[t : t + block])))
            for t in range(0, T, block)
        )
        null = None if self.null_value is None else np.float32(self.null_value)
        if n_bad:
            warnings.warn(
                f"{self.name}: {n_bad} NaN/infinite values ({n_bad / values.size:.2%}) were "
                "masked as missing "
                "and stored as 0",
                stacklevel=3,
            )
            finite = np.isfinite(values)
            values = np.where(finite, values, np.float32(0))
            mask = finite if given is None else given & finite
            if given is None and null is not None:
                mask &= values != null
        elif given is not None:
            mask = given
        else:
            mask = np.empty(values.shape, dtype=bool)
            for t in range(0, T, block):
                v = values[t : t + block]
                mask[t : t + block] = (
                    np.isfinite(v) if null is None else np.isfinite(v) & (v != null)
                )
        self.values, self.mask = values, mask

        empty = np.flatnonzero(~mask.any(axis=(0, 2)))
        self.node_ids = (
            [str(i) for i in range(N)] if self.node_ids is None else [str(i) for i in self.node_ids]
        )
        if len(self.node_ids) != N:
            raise DataError(
                f"{len(self.node_ids)} node ids for {N} nodes",
                "pass one id per node, in the node order of values",
            )
        if len(set(self.node_ids)) != N:
            raise DataError("node ids are not unique", "give every node its own id")
        if len(empty):
            shown = ", ".join(self.node_ids[i] for i in empty[:5]) + (
                " ..." if len(empty) > 5 else ""
            )
            raise DataError(
                f"{self.name}: {len(empty)} node(s) have no observations at all ({shown})",
                "drop them before building the data (loaders take drop_empty_nodes=True) or "
                "check the null value",
            )
        if self.channels is None:
            self.channels = ["value"] if C == 1 else [f"c{i}" for i in range(C)]
        self.channels = [str(c) for c in self.channels]
        if len(self.channels) != C:
            raise DataError(
                f"{len(self.channels)} channel names for {C} channels", "pass one name per channel"
            )

        if self.timestamps is not None:
            ts = pd.DatetimeIndex(self.timestamps)
            if len(ts) != T:
                raise DataError(
                    f"{len(ts)} timestamps for {T} time steps",
                    "pass one timestamp per row of values",
                )
            if ts.hasnans:
                raise DataError(
                    "timestamps contain missing values (NaT)",
                    "fill or drop the rows without a time",
                )
            if not ts.is_unique:
                dup = ts[ts.duplicated()][0]
                raise DataError(
                    f"timestamps are duplicated (first: {dup})",
                    "aggregate or drop the duplicated rows",
                )
            if not ts.is_monotonic_increasing:
                pos = int(np.flatnonzero(np.diff(ts.asi8) < 0)[0])
                raise DataError(
                    f"timestamps are not sorted (row {pos + 1}: {ts[pos + 1]} comes after "
                    f"{ts[pos]})",
                    "sort the rows by time before loading",
                )
            self.timestamps = ts
            if self.freq is None and T >= 3:
                inferred = pd.tseries.frequencies.to_offset(pd.Series(ts).diff().mode().iloc[0])
                # the modal step is the frequency only if the index is regular
                if (ts[-1] - ts[0]) == inferred * (T - 1):
                    self.freq = inferred.freqstr
        if self.freq is not None:
            try:
                self.freq = pd.tseries.frequencies.to_offset(self.freq).freqstr
            except ValueError as exc:
                raise DataError(
                    f"unknown frequency {self.freq!r}",
                    "use a pandas frequency such as '5min', '15min' or 'h'",
                ) from exc

        if isinstance(self.adjacency, np.ndarray):
            self.adjacency = Adjacency.from_dense(self.adjacency)
        if self.adjacency is not None and self.adjacency.num_nodes != N:
            raise DataError(
                f"adjacency is for {self.adjacency.num_nodes} nodes but the data have {N}",
                "pass the adjacency of exactly these sensors, in the same order",
            )
        if self.coords is not None:
            self.coords = np.asarray(self.coords, dtype=np.float64)
            if self.coords.shape != (N, 2):
                raise DataError(
                    f"coords must have shape ({N}, 2), got {self.coords.shape}",
                    "pass one (lat, lon) pair per node",
                )
        if self.node_meta is not None and len(self.node_meta) != N:
            raise DataError(
                f"node_meta has {len(self.node_meta)} rows for {N} nodes", "pass one row per node"
            )
        if self.grid_shape is not None:
            h, w = self.grid_shape
            if h * w != N:
                raise DataError(
                    f"grid_shape {self.grid_shape} has {h * w} cells but the data have {N} nodes",
                    "pass H, W with H*W == N",
                )
            self.grid_shape = (int(h), int(w))

    # ----------------------------------------------------------------- shape
    @property
    def num_steps(self) -> int:
        return self.values.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.values.shape[1]

    @property
    def num_channels(self) -> int:
        return self.values.shape[2]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.values.shape  # type: ignore[return-value]

    @property
    def start(self) -> pd.Timestamp | None:
        return None if self.timestamps is None else self.timestamps[0]

    @property
    def missing_fraction(self) -> float:
        return 1.0 - float(np.count_nonzero(self.mask)) / self.mask.size

    @property
    def num_edges(self) -> int:
        return 0 if self.adjacency is None else self.adjacency.num_edges

    def steps_per_day(self) -> int | None:
        """Time steps in one day; ``None`` if the frequency is unknown or does not divide a day."""
        if self.freq is None:
            return None
        step = pd.Timedelta(pd.tseries.frequencies.to_offset(self.freq))
        n = pd.Timedelta(days=1) / step
        return int(n) if n >= 1 and float(n).is_integer() else None

    # ----------------------------------------------------------------- views
    def _derive(self, **changes: Any) -> STData:
        """A new container sharing every field not in ``changes``, without re-validation."""
        new = object.__new__(STData)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    def time_slice(self, start: int | None = None, stop: int | None = None) -> STData:
        """Rows ``start:stop`` as a view (no copy of values or mask)."""
        sl = slice(start, stop)
        if len(range(*sl.indices(self.num_steps))) == 0:
            raise DataError(
                f"time slice {start}:{stop} of {self.num_steps} steps is empty",
                "choose borders inside the series",
            )
        return self._derive(
            values=self.values[sl],
            mask=self.mask[sl],
            timestamps=None if self.timestamps is None else self.timestamps[sl],
        )

    def select_nodes(self, nodes: slice | Sequence[int] | np.ndarray) -> STData:
        """A subset of nodes (a view for a slice, else a copy); graph and metadata follow."""
        idx = np.arange(self.num_nodes)[nodes]
        if idx.size == 0:
            raise DataError("node selection is empty", "select at least one node")
        sel = nodes if isinstance(nodes, slice) else idx
        return self._derive(
            values=self.values[:, sel],
            mask=self.mask[:, sel],
            node_ids=[self.node_ids[i] for i in idx],
            adjacency=None if self.adjacency is None else self.adjacency.subgraph(idx),
            coords=None if self.coords is None else self.coords[idx],
            node_meta=None
            if self.node_meta is None
            else self.node_meta.iloc[idx].reset_index(drop=True),
            grid_shape=self.grid_shape
            if idx.size == self.num_nodes and np.all(idx == np.arange(self.num_nodes))
            else None,
        )

    def select_channels(self, channels: Sequence[int | str] | slice) -> STData:
        """A subset of channels by index or name."""
        if isinstance(channels, slice):
            idx = np.arange(self.num_channels)[channels]
            sel: Any = channels
        else:
            idx = np.asarray(
                [self.channels.index(c) if isinstance(c, str) else int(c) for c in channels]
            )
            sel = idx
        return self._derive(
            values=self.values[:, :, sel],
            mask=self.mask[:, :, sel],
            channels=[self.channels[i] for i in idx],
        )

    def with_values(self, values: np.ndarray, mask: np.ndarray | None = None) -> STData:
        """Same time, nodes and graph with new values of the same ``[T, N, *]`` leading shape."""
        values = np.asarray(values, dtype=np.float32)
        if values.shape[:2] != self.values.shape[:2]:
            raise DataError(
                f"new values have shape {values.shape}, expected [{self.num_steps}, "
                f"{self.num_nodes}, C]",
                "keep time and node axes",
            )
        changes: dict[str, Any] = {
            "values": values,
            "mask": self.mask if mask is None else np.asarray(mask, bool),
        }
        if values.shape[2] != self.num_channels:
            changes["channels"] = [f"c{i}" for i in range(values.shape[2])]
        return self._derive(**changes)

    # ----------------------------------------------------------------- grids
    @classmethod
    def from_grid(
        cls,
        frames: np.ndarray,
        channels: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> STData:
        """Grid data ``(T, C, H, W)`` (TaxiBJ / BikeNYC layout) as nodes = cells, row-major."""
        frames = np.asarray(frames)
        if frames.ndim != 4:
            raise DataError(
                f"grid data must have shape (T, C, H, W), got {frames.shape}",
                "add a channel axis for single-channel grids",
            )
        T, C, H, W = frames.shape
        values = frames.reshape(T, C, H * W).transpose(0, 2, 1)
        rows, cols = np.divmod(np.arange(H * W), W)
        kwargs.setdefault("adjacency", grid_adjacency(H, W))
        kwargs.setdefault("coords", np.stack([rows, cols], axis=1).astype(np.float64))
        kwargs.setdefault("node_ids", [f"r{r}c{c}" for r, c in zip(rows, cols, strict=True)])
        return cls(
            values=values,
            channels=list(channels) if channels is not None else None,
            grid_shape=(H, W),
            **kwargs,
        )

    def to_grid(self, values: np.ndarray | None = None) -> np.ndarray:
        """Back to frames ``(T, C, H, W)``; ``values`` ``[T, N, C]`` default to the data's own."""
        if self.grid_shape is None:
            raise DataError(
                f"{self.name} is not grid data", "build it with STData.from_grid to keep H and W"
            )
        v = self.values if values is None else np.asarray(values)
        H, W = self.grid_shape
        return v.transpose(0, 2, 1).reshape(v.shape[0], v.shape[2], H, W)

    # ----------------------------------------------------------------- summary
    def describe(self) -> dict[str, Any]:
        """Plain-data summary (what ``llm-st data describe --json`` prints)."""
        observed = self.values[self.mask]
        return {
            "name": self.name,
            "num_steps": self.num_steps,
            "num_nodes": self.num_nodes,
            "num_channels": self.num_channels,
            "channels": list(self.channels),
            "freq": self.freq,
            "start": None if self.start is None else self.start.isoformat(),
            "end": None if self.timestamps is None else self.timestamps[-1].isoformat(),
            "missing_fraction": round(self.missing_fraction, 6),
            "num_edges": self.num_edges,
            "has_coords": self.coords is not None,
            "grid_shape": list(self.grid_shape) if self.grid_shape else None,
            "null_value": self.null_value,
            "value_mean": float(observed.mean()) if observed.size else None,
            "value_std": float(observed.std()) if observed.size else None,
            "description": self.description,
        }

    def __repr__(self) -> str:
        T, N, C = self.shape
        return (
            f"STData(name={self.name!r}, T={T}, N={N}, C={C}, freq={self.freq!r}, "
            f"start={self.start}, edges={self.num_edges}, missing={self.missing_fraction:.2%})"
        )
