"""The figures of a benchmark report (:mod:`llm_st.bench.document`), one function per plot.

Every function draws from a results table (:func:`llm_st.bench.runner.collect_results`)
or from prepared arrays, writes one PNG to ``path`` and returns the path, or returns None
when the table holds nothing to draw (the report then says the plot was skipped). The
figures are drawn on :class:`matplotlib.figure.Figure` objects, never through pyplot's
global state, so no window opens and no backend needs choosing.

Conventions shared by all of them: one color per method across every figure of a report
(:func:`method_colors`), means over seeds with error bars of one (sample) standard
deviation, metric axes labelled with their scale (:func:`metric_label`: ``MAE (original
units: mph)``, ``MAE (normalized)``), titles naming dataset and protocol.

- :func:`horizon_plot`: error per horizon step per method, one panel per dataset/protocol;
- :func:`cost_plot`: error against trainable parameters and training time (log x);
- :func:`forecast_examples_plot`: history, truth and forecasts of a few nodes and windows;
- :func:`sensor_map_plot`: the error of each node at its coordinates;
- :func:`few_shot_plot`: error against the fraction of training data;
- :func:`imputation_plot`: imputation error against the missing rate;
- :func:`shift_plot`: error per training objective without and with drift.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

from llm_st.bench.report import cell_text, is_missing

DPI = 110
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
METRIC_NAMES = {
    "mae": "MAE",
    "mse": "MSE",
    "rmse": "RMSE",
    "mape": "MAPE",
    "crps": "CRPS",
    "f1": "F1",
    "auc": "AUC",
    "precision": "precision",
    "recall": "recall",
}
SQUARED = frozenset({"mse"})
PERCENT = frozenset({"mape"})
UNITLESS = frozenset({"precision", "recall", "f1", "auc", "auroc", "auprc", "accuracy"})


# ------------------------------------------------------------------ shared helpers
def method_colors(methods: Sequence[str]) -> dict[str, Any]:
    """One color per method, in the given order (tab10, then tab20 for more than ten)."""
    names = list(dict.fromkeys(methods))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(names)}


def metric_label(metric: str, scale: str | None = None) -> str:
    """An axis label for ``metric`` with its scale in parentheses.

    ``scale``: ``"normalized"``, ``"original units: mph"``, ``"original units"`` or None.
    MSE gets squared units, MAPE is in percent, detection scores are unitless (0-1).
    """
    name = METRIC_NAMES.get(metric.lower(), metric)
    if metric.lower() in PERCENT:
        return f"{name} (%)"
    if metric.lower() in UNITLESS:
        return f"{name} (0-1)"
    if not scale:
        return name
    if metric.lower() in SQUARED and scale.startswith("original units:"):
        scale = f"{scale}²" if " " not in scale.split(":", 1)[1].strip() else f"({scale})²"
    return f"{name} ({scale})"


def _shown(metric: str, values: Any) -> Any:
    """Values as plotted: MAPE in percent."""
    return np.asarray(values, dtype=float) * (100.0 if metric.lower() in PERCENT else 1.0)


def _wrap(text: str, width: int = 42) -> str:
    return "\n".join(textwrap.wrap(str(text), width, break_long_words=True)) or str(text)


def _panels(n: int, ncols: int = 3, size: tuple[float, float] = (4.6, 3.4)) -> tuple[Figure, list]:
    """A figure with ``n`` axes in rows of ``ncols`` (unused ones removed)."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols + 0.6, size[1] * nrows + 0.9), dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def _legend_below(fig: Figure, handles: Mapping[str, Any], most: int = 4) -> int:
    """One legend for the whole figure, under the panels, in as many columns (up to
    ``most``) as the figure's width holds; returns its number of rows."""
    if not handles:
        return 0
    labels = list(handles)
    width = fig.get_figwidth() * 72 * 0.95  # points
    column = 6.0 * max(len(label) for label in labels) + 40  # text at 9 pt, handle, gap
    ncol = max(1, min(len(labels), most, int(width // column)))
    fig.legend(
        list(handles.values()), labels, loc="lower center", ncol=ncol, frameon=False,
        fontsize=9, bbox_to_anchor=(0.5, 0.0),
    )  # fmt: skip
    return math.ceil(len(labels) / ncol)


def _save(fig: Figure, path: str | Path, legend_rows: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bottom = 0.0
    if legend_rows:
        bottom = min(0.4, (0.32 * legend_rows + 0.15) / fig.get_figheight())
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def done_rows(table: pd.DataFrame, metric: str | None = None, step: str | None = None):
    """The finished rows of a results table, of ``metric`` and ``horizon_step`` ``step``."""
    rows = table[(table["status"] == "done") & table["metric"].notna()]
    if metric is not None:
        rows = rows[rows["metric"] == metric]
    if step is not None:
        rows = rows[rows["horizon_step"] == step]
    return rows


def _mean_std(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, sample std (NaN for one seed) and count of ``value`` per ``keys``."""
    return (
        rows.groupby(keys, dropna=False, sort=False)["value"]
        .agg(mean="mean", std="std", seeds="count")
        .reset_index()
    )


def step_number(step: Any) -> float | None:
    """``h3`` -> 3, ``12`` -> 12; None for ``avg`` and other names."""
    match = re.fullmatch(r"[A-Za-z_]*(\d+)", str(step))
    return float(match.group(1)) if match else None


def param_value(param: Any) -> float | None:
    """The number a protocol parameter label stands for: ``0.1`` -> 0.1, ``rate=0.25`` ->
    0.25, ``drift=0.5,seed=1`` -> 0.5 (a key naming a rate, drift, level or fraction
    first, else the first number); None when it holds none."""
    if is_missing(param):
        return None
    text = str(param).strip()
    try:
        return float(text)
    except ValueError:
        pass
    pairs = re.findall(r"([A-Za-z_]+)\s*[=:]\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)", text)
    for key, value in pairs:
        if re.search(r"rate|drift|level|fraction|ratio|strength", key, re.I):
            return float(value)
    number = re.search(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", text)
    return float(number.group(0)) if number else None


def _where(dataset: str, horizon: Any, several: bool) -> str:
    """A panel's dataset, with its horizon where the table has several for it."""
    if several and not is_missing(horizon):
        return f"{dataset} · horizon {int(horizon)}"
    return str(dataset)


def _several_horizons(rows: pd.DataFrame) -> bool:
    """Whether some dataset (of one protocol) has several horizons among ``rows``."""
    keys = [k for k in ("protocol", "dataset") if k in rows]
    return bool((rows.groupby(keys, dropna=False)["horizon"].nunique() > 1).any())


def _errorbar(ax, x, y, yerr, color, label, marker, xerr=None, line: bool = True) -> Any:
    yerr = None if yerr is None or np.all(np.isnan(yerr)) else np.nan_to_num(yerr)
    if xerr is not None:
        xerr = None if np.all(np.isnan(xerr)) else np.nan_to_num(xerr)
    return ax.errorbar(
        x, y, yerr=yerr, xerr=xerr, color=color, label=label, marker=marker, markersize=6,
        linestyle="-" if line else "none", linewidth=1.6, capsize=3, elinewidth=1,
    )  # fmt: skip


# ------------------------------------------------------------------ (1) horizon steps
def horizon_plot(
    table: pd.DataFrame,
    path: str | Path,
    metric: str = "mae",
    scales: Mapping[str, str] | None = None,
    protocols: Sequence[str] | None = None,
    max_panels: int = 12,
) -> Path | None:
    """Error per horizon step per method: lines over the steps the table has (``h1``,
    ``h3``, ...; ``avg`` left out), mean over seeds with std error bars, one panel per
    dataset x protocol (x protocol parameter, x horizon), at most ``max_panels``.

    ``scales``: dataset -> its scale text for the y label (:func:`metric_label`);
    ``protocols``: only these. None when the table has no per-step ``metric``.
    """
    rows = done_rows(table, metric)
    rows = rows[rows["horizon_step"].map(step_number).notna()]
    if protocols is not None:
        rows = rows[rows["protocol"].isin(list(protocols))]
    if rows.empty:
        return None
    rows = rows.assign(step=rows["horizon_step"].map(step_number))
    panel_keys = ["protocol", "protocol_param", "dataset", "horizon"]
    stats = _mean_std(rows, [*panel_keys, "method", "step"])
    panels = list(stats.groupby(panel_keys, dropna=False, sort=False))[:max_panels]
    several = _several_horizons(rows)
    colors = method_colors(table["method"].dropna().tolist())
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(colors)}
    fig, axes = _panels(len(panels))
    handles: dict[str, Any] = {}
    for ax, ((protocol, param, dataset, horizon), group) in zip(axes, panels, strict=True):
        methods = list(dict.fromkeys(group["method"]))
        steps = sorted(group["step"].unique())
        spacing = min(np.diff(steps)) if len(steps) > 1 else 1.0
        for i, method in enumerate(methods):
            g = group[group["method"] == method].sort_values("step")
            shift = (i - (len(methods) - 1) / 2) * 0.06 * spacing
            handles[method] = _errorbar(
                ax, g["step"] + shift, _shown(metric, g["mean"]), _shown(metric, g["std"]),
                colors[method], method, markers[method],
            )  # fmt: skip
        ax.set_xticks(steps)
        ax.set_xticklabels([f"{s:g}" for s in steps])
        ax.set_xlim(min(steps) - 0.5 * spacing, max(steps) + 0.5 * spacing)
        ax.set_xlabel("forecast step (steps after the cut-off)")
        ax.set_ylabel(metric_label(metric, (scales or {}).get(dataset)))
        detail = cell_text(param) if cell_text(param) and cell_text(param) != dataset else ""
        title = f"{_where(dataset, horizon, several)} · {protocol}" + (
            f" {detail}" if detail else ""
        )
        ax.set_title(_wrap(title), fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{METRIC_NAMES.get(metric, metric)} per forecast step", fontsize=12)
    rows = _legend_below(fig, handles, most=4)
    return _save(fig, path, rows)


# ------------------------------------------------------------------ (2) accuracy vs cost
def _plain(value: float, _: Any = None) -> str:
    """A tick label without powers: ``0.01``, ``5``, ``1k``, ``2.5M``."""
    if value == 0:
        return "0"
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:g}{unit}"
    return f"{value:g}"


def _symlog_axis(ax, values: np.ndarray, what: str) -> str:
    """A log x axis spanning at least a decade (so a power of ten is labelled); a
    symmetric-log one (0 in its linear part) when some value is 0."""
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if not positive.size:
        return what
    lo, hi = positive.min(), positive.max()
    if np.any(finite <= 0):
        linthresh = 10 ** math.floor(math.log10(lo))
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_xlim(-0.3 * linthresh, max(hi * 3, linthresh * 10))
        label = f"{what} (log scale; 0 = nothing trained)"
    else:
        ax.set_xscale("log")
        if hi / lo < 10:
            center = math.sqrt(lo * hi)
            ax.set_xlim(center / 4, center * 4)
        else:
            ax.set_xlim(lo / 2, hi * 2)
        label = f"{what} (log scale)"
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    lo_lim, hi_lim = ax.get_xlim()
    few = lo_lim > 0 and hi_lim / lo_lim <= 100  # two decades or less: label 2s and 5s too

    def minor(v: float, _: Any) -> str:
        lead = f"{v:.0e}"[0] if v > 0 else ""
        return _plain(v) if few and lead in ("2", "5") else ""

    ax.xaxis.set_minor_formatter(FuncFormatter(minor))
    return label


def cost_plot(
    table: pd.DataFrame,
    path: str | Path,
    metric: str = "mae",
    protocol: str = "full",
    scales: Mapping[str, str] | None = None,
    step: str = "avg",
) -> Path | None:
    """Accuracy against cost: the error (``metric`` at ``step``, mean over seeds, std
    error bars) against trainable parameters and against training time (log x, std
    error bars of the time over seeds), one point per method, one row of two panels per
    dataset of ``protocol``. None when ``protocol`` has no finished cell."""
    rows = done_rows(table, metric, step)
    rows = rows[rows["protocol"] == protocol]
    if rows.empty:
        return None
    keys = ["dataset", "horizon", "method"]
    stats = _mean_std(rows, keys)
    cells = rows.drop_duplicates("cell_id")
    costs = (
        cells.groupby(keys, dropna=False, sort=False)
        .agg(
            params=("trainable_params", "first"),
            time=("train_time_s", "mean"),
            time_std=("train_time_s", "std"),
        )
        .reset_index()
    )
    stats = stats.merge(costs, on=keys, how="left")
    panels = list(stats.groupby(["dataset", "horizon"], dropna=False, sort=False))
    several = _several_horizons(rows)
    colors = method_colors(table["method"].dropna().tolist())
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(colors)}
    fig = Figure(figsize=(10.5, 3.9 * len(panels) + 0.9), dpi=DPI)
    axes = fig.subplots(len(panels), 2, squeeze=False)
    handles: dict[str, Any] = {}
    for (ax_p, ax_t), ((dataset, horizon), group) in zip(axes, panels, strict=True):
        params = pd.to_numeric(group["params"], errors="coerce").to_numpy(float)
        times = group["time"].to_numpy(float)
        for (_, r), p, t in zip(group.iterrows(), params, times, strict=True):
            y, err = _shown(metric, [r["mean"]]), _shown(metric, [r["std"]])
            m = r["method"]
            if np.isfinite(p):
                handles[m] = _errorbar(ax_p, [p], y, err, colors[m], m, markers[m], line=False)
            if np.isfinite(t):
                handles[m] = _errorbar(
                    ax_t, [t], y, err, colors[m], m, markers[m], xerr=[r["time_std"]], line=False
                )
        ax_p.set_xlabel(_symlog_axis(ax_p, params, "trainable parameters"))
        ax_t.set_xlabel(_symlog_axis(ax_t, times, "training time (s)"))
        where = _where(dataset, horizon, several)
        for ax, what in ((ax_p, "trainable parameters"), (ax_t, "training time")):
            ax.set_ylabel(metric_label(metric, (scales or {}).get(dataset)))
            ax.set_title(_wrap(f"{where} ({protocol}): {METRIC_NAMES.get(metric, metric)} "
                               f"vs {what}", 50), fontsize=10)  # fmt: skip
            ax.grid(alpha=0.3, which="both")
    fig.suptitle("Accuracy vs cost (lower left is better)", fontsize=12)
    rows = _legend_below(fig, handles, most=4)
    return _save(fig, path, rows)


# ------------------------------------------------------------------ (3) forecast examples
@dataclass
class MethodForecast:
    """One method's forecasts of the example windows: ``point`` ``[W, H, N]`` (the median
    when sampled), the 10 % and 90 % quantiles ``lower`` / ``upper`` (or None)."""

    method: str
    point: np.ndarray
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    note: str = ""


def forecast_examples_plot(
    history: np.ndarray,
    truth: np.ndarray,
    forecasts: Sequence[MethodForecast],
    path: str | Path,
    node_names: Sequence[str],
    window_names: Sequence[str],
    ylabel: str,
    title: str,
    step_label: str = "steps from the cut-off",
    colors: Mapping[str, Any] | None = None,
) -> Path:
    """History, truth and each method's point forecast (and 10-90 % band where it has
    one) of a few windows (columns) and nodes (rows).

    ``history`` ``[W, L, N]`` and ``truth`` ``[W, H, N]`` on the original scale (NaN where
    missing); ``forecasts``: :class:`MethodForecast` of the same ``W, H, N``;
    ``colors``: method -> color (default :func:`method_colors` of the forecasts').
    """
    W, L, N = history.shape
    H = truth.shape[1]
    fig = Figure(figsize=(4.8 * W + 0.6, 2.7 * N + 1.3), dpi=DPI)
    axes = fig.subplots(N, W, squeeze=False, sharex=True)
    past, future = np.arange(-L + 1, 1), np.arange(1, H + 1)
    colors = {**method_colors([f.method for f in forecasts]), **(colors or {})}
    handles: dict[str, Any] = {}
    for n in range(N):
        for w in range(W):
            ax = axes[n, w]
            (line,) = ax.plot(
                np.r_[past, future], np.r_[history[w, :, n], truth[w, :, n]],
                color="black", linewidth=1.4, label="observed (history and truth)",
            )  # fmt: skip
            handles.setdefault("observed (history and truth)", line)
            ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
            for f in forecasts:
                color = colors[f.method]
                if f.lower is not None and f.upper is not None:
                    band = ax.fill_between(
                        future, f.lower[w, :, n], f.upper[w, :, n], color=color, alpha=0.2,
                        linewidth=0,
                    )  # fmt: skip
                    handles.setdefault(f"{f.method}: 10-90% band", band)
                name = f"{f.method}{f.note}"
                (line,) = ax.plot(
                    future, f.point[w, :, n], color=color, linewidth=1.8,
                    marker="o" if H <= 24 else None, markersize=3.5, label=name,
                )  # fmt: skip
                handles.setdefault(name, line)
            ax.set_title(_wrap(f"node {node_names[n]} · {window_names[w]}", 48), fontsize=9)
            if w == 0:
                ax.set_ylabel(ylabel)
            if n == N - 1:
                ax.set_xlabel(step_label)
            ax.grid(alpha=0.3)
    fig.suptitle(_wrap(title, 100), fontsize=12)
    rows = _legend_below(fig, handles, most=3)
    return _save(fig, path, rows)


# ------------------------------------------------------------------ (4) sensor map
def sensor_map_plot(
    coords: np.ndarray,
    errors: np.ndarray,
    path: str | Path,
    title: str,
    colorbar_label: str,
    edges: tuple[np.ndarray, np.ndarray] | None = None,
    node_ids: Sequence[str] | None = None,
    grid: bool = False,
) -> Path:
    """Each node at its coordinates (``coords`` ``[N, 2]``: latitude, longitude; row,
    column with ``grid``), colored by its error ``errors`` ``[N]`` (NaN: grey), the
    graph's ``edges`` (src, dst) drawn faintly, node ids written beside up to 40 nodes."""
    coords = np.asarray(coords, float)
    errors = np.asarray(errors, float)
    y, x = coords[:, 0], coords[:, 1]
    fig = Figure(figsize=(7.6, 6.2), dpi=DPI)
    ax = fig.subplots()
    if edges is not None:
        src, dst = (np.asarray(e, np.int64) for e in edges)
        keep = src != dst
        segments = np.stack(
            [np.stack([x[src[keep]], y[src[keep]]], 1), np.stack([x[dst[keep]], y[dst[keep]]], 1)],
            axis=1,
        )
        ax.add_collection(LineCollection(segments, colors="0.75", linewidths=0.7, zorder=1))
    known = np.isfinite(errors)
    if (~known).any():
        ax.scatter(x[~known], y[~known], s=40, color="0.6", zorder=2, label="no error known")
    points = ax.scatter(
        x[known], y[known], c=errors[known], cmap="YlOrRd", s=90,
        edgecolors="black", linewidths=0.6, zorder=3,
    )  # fmt: skip
    bar = fig.colorbar(points, ax=ax)
    bar.set_label(colorbar_label)
    if node_ids is not None and len(node_ids) <= 40:
        finite = np.isfinite(x) & np.isfinite(y)
        span = float(max(np.ptp(x[finite]), np.ptp(y[finite]))) if finite.any() else 0.0
        placed: list[tuple[float, float]] = []
        for xi, yi, name in zip(x, y, node_ids, strict=True):
            # a node (almost) on top of one labelled before gets its label below
            near = sum(abs(xi - a) + abs(yi - b) < 0.02 * (span or 1) for a, b in placed)
            placed.append((xi, yi))
            ax.annotate(str(name), (xi, yi), textcoords="offset points",
                        xytext=(6, 5 - 14 * near), fontsize=8, zorder=4)  # fmt: skip
    if grid:
        ax.set_xlabel("grid column")
        ax.set_ylabel("grid row")
        ax.invert_yaxis()
        ax.set_aspect("equal")
    else:
        ax.set_xlabel("longitude (°)")
        ax.set_ylabel("latitude (°)")
        lat = np.nanmean(y)
        if np.isfinite(lat) and abs(lat) < 85:
            ax.set_aspect(1 / math.cos(math.radians(lat)), adjustable="datalim")
        ax.ticklabel_format(useOffset=False)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_locator(MaxNLocator(6))
    ax.margins(0.08)
    ax.grid(alpha=0.3)
    ax.set_title(_wrap(title, 70), fontsize=11)
    return _save(fig, path)


# ------------------------------------------------------------------ (5)-(7) protocols
def _by_dataset_lines(
    stats: pd.DataFrame,
    x: str,
    path: str | Path,
    metric: str,
    scales: Mapping[str, str] | None,
    colors: dict[str, Any],
    xlabel: str,
    title: str,
    log_x: bool = False,
    percent_ticks: bool = False,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """One panel per dataset (x horizon): a line per method over ``x`` (methods nudged
    apart along x, so that equal curves stay visible), labelled ``labels[method]``."""
    panels = list(stats.groupby(["dataset", "horizon"], dropna=False, sort=False))
    several = _several_horizons(stats)
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(colors)}
    fig, axes = _panels(len(panels), ncols=2, size=(5.4, 3.8))
    handles: dict[str, Any] = {}
    for ax, ((dataset, horizon), group) in zip(axes, panels, strict=True):
        methods = list(dict.fromkeys(group["method"]))
        xs = sorted(group[x].unique())
        span = (max(xs) - min(xs)) or (abs(xs[0]) or 1.0)
        for i, method in enumerate(methods):
            g = group[group["method"] == method].sort_values(x)
            nudge = (i - (len(methods) - 1) / 2) * 0.012
            at = g[x] * (1 + 2 * nudge) if log_x else g[x] + nudge * span
            label = (labels or {}).get(method, method)
            handles[label] = _errorbar(
                ax, at, _shown(metric, g["mean"]), _shown(metric, g["std"]),
                colors.get(method), label, markers.get(method, "o"),
            )  # fmt: skip
        if log_x and all(v > 0 for v in xs):
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())
        if len(xs) == 1:  # one setting: the points around it, not spread over the axis
            ax.set_xlim(xs[0] - 0.5 * span, xs[0] + 0.5 * span)
        ax.set_xticks(xs)
        fmt = (lambda v, _: f"{100 * v:g}%") if percent_ticks else (lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(FuncFormatter(fmt))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric_label(metric, (scales or {}).get(dataset)))
        ax.set_title(_wrap(_where(dataset, horizon, several), 48), fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=12)
    rows = _legend_below(fig, handles, most=4)
    return _save(fig, path, rows)


def few_shot_plot(
    table: pd.DataFrame,
    path: str | Path,
    metric: str = "mae",
    scales: Mapping[str, str] | None = None,
    step: str = "avg",
    protocol: str = "few_shot",
    full: str = "full",
) -> Path | None:
    """Few-shot curves: the error (``metric`` at ``step``) against the fraction of the
    training data (log x), one line per method, one panel per dataset; the ``full``
    protocol's cells of the same dataset and method are the point at 1.0. None without
    finished ``few_shot`` cells."""
    rows = done_rows(table, metric, step)
    few = rows[rows["protocol"] == protocol]
    if few.empty:
        return None
    few = few.assign(fraction=few["protocol_param"].map(param_value))
    whole = rows[
        (rows["protocol"] == full)
        & rows["dataset"].isin(few["dataset"].unique())
        & rows["method"].isin(few["method"].unique())
    ].assign(fraction=1.0)
    both = pd.concat([few, whole])
    both = both[both["fraction"].notna()]
    stats = _mean_std(both, ["dataset", "horizon", "method", "fraction"])
    colors = method_colors(table["method"].dropna().tolist())
    return _by_dataset_lines(
        stats, "fraction", path, metric, scales, colors,
        "fraction of the training windows (log scale; 100% = full protocol)",
        f"Few-shot: {METRIC_NAMES.get(metric, metric)} vs training data",
        log_x=True, percent_ticks=True,
    )  # fmt: skip


def imputation_plot(
    table: pd.DataFrame,
    path: str | Path,
    metric: str = "mae",
    scales: Mapping[str, str] | None = None,
    step: str = "avg",
    protocol: str = "imputation",
    labels: Mapping[str, str] | None = None,
) -> Path | None:
    """Imputation error (``metric`` at ``step``) against the missing rate (the number in
    the protocol parameter; cells of a parameter without one, e.g. ``block``, are left
    out), one line per method (legend: ``labels[method]``, e.g. with its imputer), one
    panel per dataset. None without finished ``imputation`` cells at a rate."""
    rows = done_rows(table, metric, step)
    rows = rows[rows["protocol"] == protocol]
    if rows.empty:
        return None
    rows = rows.assign(rate=rows["protocol_param"].map(param_value))
    rows = rows[rows["rate"].notna()]
    if rows.empty:
        return None
    stats = _mean_std(rows, ["dataset", "horizon", "method", "rate"])
    colors = method_colors(table["method"].dropna().tolist())
    return _by_dataset_lines(
        stats, "rate", path, metric, scales, colors, "missing rate (fraction of entries masked)",
        f"Imputation: {METRIC_NAMES.get(metric, metric)} of the masked entries vs missing rate",
        percent_ticks=True, labels=labels,
    )  # fmt: skip


def shift_plot(
    table: pd.DataFrame,
    path: str | Path,
    objectives: Mapping[str, str] | None = None,
    metric: str = "mae",
    scales: Mapping[str, str] | None = None,
    step: str = "avg",
    protocol: str = "shift",
    full: str = "full",
) -> Path | None:
    """Training objective against distribution shift: grouped bars of the error
    (``metric`` at ``step``, std error bars), one group per method (labelled with its
    training objective, ``objectives``: method -> objective), one bar per drift level
    (the number in the protocol parameter). Without a level 0 among the ``shift`` cells,
    the ``full`` protocol's cells of the same dataset and method are the no-drift bar.
    One panel per dataset. None without finished ``shift`` cells."""
    rows = done_rows(table, metric, step)
    shifted = rows[rows["protocol"] == protocol]
    if shifted.empty:
        return None
    shifted = shifted.assign(drift=shifted["protocol_param"].map(param_value))
    shifted = shifted[shifted["drift"].notna()]
    if shifted.empty:
        return None
    parts = [shifted]
    for dataset in shifted["dataset"].unique():
        mine = shifted[shifted["dataset"] == dataset]
        if not (mine["drift"] == 0).any():
            base = rows[
                (rows["protocol"] == full)
                & (rows["dataset"] == dataset)
                & rows["method"].isin(mine["method"].unique())
            ]
            parts.append(base.assign(drift=0.0))
    stats = _mean_std(pd.concat(parts), ["dataset", "horizon", "method", "drift"])
    panels = list(stats.groupby(["dataset", "horizon"], dropna=False, sort=False))
    several = _several_horizons(stats)
    levels = sorted(stats["drift"].unique())
    cmap = colormaps["Blues"]
    shades = {d: cmap(0.35 + 0.6 * i / max(1, len(levels) - 1)) for i, d in enumerate(levels)}
    shades[0.0] = "0.7"
    n_methods = max(g["method"].nunique() for _, g in panels)
    fig, axes = _panels(len(panels), ncols=1, size=(max(6.5, 2.0 * n_methods + 1.5), 4.6))
    handles: dict[str, Any] = {}
    for ax, ((dataset, horizon), group) in zip(axes, panels, strict=True):
        methods = list(dict.fromkeys(group["method"]))
        order = sorted(methods, key=lambda m: ((objectives or {}).get(m, ""), methods.index(m)))
        width = 0.8 / len(levels)
        for j, level in enumerate(levels):
            g = group[group["drift"] == level].set_index("method")
            xs = [i + (j - (len(levels) - 1) / 2) * width for i in range(len(order))]
            mean = [g["mean"].get(m, np.nan) for m in order]
            std = [g["std"].get(m, np.nan) for m in order]
            label = "no drift" if level == 0 else f"drift {level:g}"
            bars = ax.bar(
                xs, _shown(metric, mean), width, yerr=np.nan_to_num(_shown(metric, std)),
                color=shades[level], edgecolor="black", linewidth=0.5, capsize=3, label=label,
            )  # fmt: skip
            handles[label] = bars
        known = {m: (objectives or {}).get(m) for m in order}
        labels = [_wrap(f"{known[m]} ({m})", 22) if known[m] else _wrap(m, 22) for m in order]
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(labels, fontsize=9)
        ax.set_xlabel("training objective (method)" if any(known.values()) else "method")
        ax.set_ylabel(metric_label(metric, (scales or {}).get(dataset)))
        where = _where(dataset, horizon, several)
        ax.set_title(_wrap(f"{where}: without and with drift", 70), fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Objective vs shift: {METRIC_NAMES.get(metric, metric)}", fontsize=12)
    rows = _legend_below(fig, handles, most=5)
    return _save(fig, path, rows)
