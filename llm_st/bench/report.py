"""Every results table llm-st prints: the demo's, the benchmarks' and the ablations'.

One module, so that a number looks the same wherever it is printed: metrics with three
decimals (MAPE in percent), parameter counts as ``12.3k`` / ``1.23M``, times in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}%" if pct else f"{value:.3f}"


def count(n: int | None) -> str:
    """A parameter count as ``950``, ``12.3k`` or ``1.23M``."""
    if n is None:
        return "-"
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}" if unit == "M" else f"{n / size:.1f}{unit}"
    return str(n)


def text_table(head: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, ["-" * w for w in widths], *rows]
    )


def format_table(
    rows: Sequence[dict[str, Any]], horizons: Sequence[str] = ("h3", "h6", "h12", "avg")
) -> str:
    """One line per method: MAE / RMSE / MAPE at each horizon key, parameters and time.

    Each row has ``method``, ``metrics`` (as returned by
    :func:`llm_st.evaluation.evaluate.evaluate`), and optionally ``family``,
    ``trainable``, ``total`` (parameter counts), ``seconds`` and ``note``.
    """
    keys = [h for h in horizons if any(h in r["metrics"] for r in rows)]
    header = (
        ["method", "family"] + [f"{h} MAE/RMSE/MAPE" for h in keys] + ["trainable", "total", "time"]
    )
    body = []
    for r in rows:
        cells = [r["method"], r.get("family", "")]
        for h in keys:
            m = r["metrics"].get(h)
            cells.append(
                "-"
                if m is None
                else f"{_fmt(m['mae'])} / {_fmt(m['rmse'])} / {_fmt(m['mape'], pct=True)}"
            )
        secs = r.get("seconds")
        cells += [
            count(r.get("trainable")),
            count(r.get("total")),
            "-" if secs is None else f"{secs:.1f}s",
        ]
        body.append(cells)
    notes = [f"  [{r['method']}] {r['note']}" for r in rows if r.get("note")]
    return "\n".join([text_table(header, body)] + ([""] + notes if notes else []))


def gap(value: float, reference: float) -> str:
    """``value`` relative to ``reference`` in percent, one decimal: ``+1.3%``, ``-0.8%``."""
    return f"{100 * (value / reference - 1):+.1f}%"


def ablation_verdicts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per adapter: each ablation's test error relative to the pretrained run.

    The error is MSE for normalized-scale rows, MAE otherwise (the training losses of the
    two protocols); a negative change means the ablation forecasts better.
    """
    metric = "mse" if rows[0]["metric_scale"] == "normalized" else "mae"
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        by_mode = {r["mode"]: r["test"]["avg"][metric] for r in rows if r["model"] == model}
        if "pretrained" not in by_mode or len(by_mode) < 2:
            continue
        base = by_mode["pretrained"]
        changes = [
            f"{mode} {gap(v, base)}"
            for mode, v in by_mode.items()
            if mode != "pretrained" and math.isfinite(v)
        ]
        best = min(by_mode, key=by_mode.get)
        lines.append(
            f"{model}: test {metric.upper()} vs pretrained: {', '.join(changes)}; best: {best}"
        )
    return lines


def is_missing(value: Any) -> bool:
    """Whether a table value is missing (None, NaN, pandas' NA or NaT)."""
    import pandas as pd

    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):  # an array or another container: not one missing value
        return False


def cell_text(value: Any) -> str:
    """A table cell: the value as text, empty where it is missing."""
    return "" if is_missing(value) else str(value)


def results_summary(table: Any, metric: str = "mae", step: str = "avg") -> str:
    """Mean ± std over seeds of ``metric`` at ``step`` per protocol, dataset and method, from
    a benchmark's results table (:func:`llm_st.bench.runner.collect_results`), the best per
    protocol and dataset marked ``*``; then the cells that did not finish."""
    done = table[
        (table["status"] == "done") & (table["metric"] == metric) & (table["horizon_step"] == step)
    ]
    keys = ["protocol", "protocol_param", "dataset", "horizon", "method"]
    stats = done.groupby(keys, dropna=False, sort=False)["value"].agg(["mean", "std", "count"])
    stats = stats.reset_index()
    best = stats.groupby(keys[:4], dropna=False, sort=False)["mean"].transform("min")
    sizes = stats.groupby(keys[:4], dropna=False, sort=False)["mean"].transform("size")
    rows = []
    for r, lowest, size in zip(stats.itertuples(), best, sizes, strict=True):
        spread = f" ± {r.std:.4g}" if r.count > 1 else ""
        mark = "*" if r.mean == lowest and size > 1 else ""
        rows.append(
            [r.protocol, cell_text(r.protocol_param), r.dataset, cell_text(r.horizon), r.method,
             f"{r.mean:.4g}{spread}{mark}", str(r.count)]
        )  # fmt: skip
    head = ["protocol", "param", "dataset", "horizon", "method", f"{step} {metric.upper()}"]
    out = [text_table([*head, "seeds"], rows)] if rows else ["no finished cell"]
    for r in table[table["status"] != "done"].drop_duplicates("cell_id").itertuples():
        out.append(f"  {r.status}: {r.cell_id} {cell_text(r.error)}".rstrip())
    return "\n".join(out)


# ------------------------------------------------------------------ the benchmark report
HIGHER_IS_BETTER = frozenset(
    {"precision", "recall", "f1", "auc", "auroc", "auprc", "roc_auc", "pr_auc", "accuracy"}
)
"""Metrics where a larger value is better (detection scores); every other metric is an
error (MAE, MSE, RMSE, MAPE, CRPS, ...), where smaller is better."""

MAIN_METRICS = ("mae", "mse", "rmse", "mape", "crps", "precision", "recall", "f1", "auc")
"""The metrics the report's tables show, in this order, where a protocol scores them."""

STAT_KEYS = ("protocol", "protocol_param", "dataset", "horizon", "method")
"""The columns that name one configuration of a results table (then step and metric)."""


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better (:data:`HIGHER_IS_BETTER`)."""
    return str(metric).lower() in HIGHER_IS_BETTER


def seed_stats(table: Any) -> Any:
    """Mean, standard deviation and count over seeds of each finished metric of a results
    table (:func:`llm_st.bench.runner.collect_results`).

    One row per :data:`STAT_KEYS` x ``horizon_step`` x ``metric``, in the table's order,
    with ``mean``, ``std`` (the sample standard deviation, ``ddof=1``, as
    :func:`results_summary` prints it; NaN for one seed), ``seeds``, the first
    ``backbone_mode``, ``trainable_params`` / ``total_params`` of the first seed and the
    mean ``train_time_s`` / ``peak_memory_mb`` over the seeds' cells.
    """
    import pandas as pd

    done = table[(table["status"] == "done") & table["metric"].notna()]
    keys = [*STAT_KEYS, "horizon_step", "metric"]
    columns = [*keys, "mean", "std", "seeds", "backbone_mode", "trainable_params"]
    columns += ["total_params", "train_time_s", "peak_memory_mb"]
    if done.empty:
        return pd.DataFrame(columns=columns)
    grouped = done.groupby(keys, dropna=False, sort=False)
    stats = grouped["value"].agg(mean="mean", std="std", seeds="count").reset_index()
    cells = done.drop_duplicates("cell_id")
    costs = cells.groupby(list(STAT_KEYS), dropna=False, sort=False).agg(
        backbone_mode=("backbone_mode", "first"),
        trainable_params=("trainable_params", "first"),
        total_params=("total_params", "first"),
        train_time_s=("train_time_s", "mean"),
        peak_memory_mb=("peak_memory_mb", "mean"),
    )
    stats = stats.merge(costs.reset_index(), on=list(STAT_KEYS), how="left", sort=False)
    return stats[columns]


def ablation_comparison(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ablation of each adapter against its pretrained run, with the seed spread.

    ``rows``: as for :func:`ablation_verdicts` (``model``, ``mode``, ``test``,
    ``metric_scale``), plus ``test_std`` and ``seeds``. The error compared is the one
    :func:`ablation_verdicts` compares (MSE on the normalized scale, MAE otherwise). A
    difference *exceeds the seed spread* when it is larger than the sum of the two
    standard deviations (the ±1 std intervals do not overlap); with one seed the spread
    is unknown.

    Returns
    -------
    list of dict
        One per adapter and mode other than ``pretrained``: ``model``, ``mode``,
        ``metric``, ``value`` / ``std``, ``pretrained`` / ``pretrained_std``,
        ``difference`` (value - pretrained), ``gap`` (:func:`gap`), ``spread`` (the sum
        of the stds, None with one seed), ``exceeds_spread`` (bool, None with one seed)
        and ``verdict`` (a phrase).
    """
    if not rows:
        return []
    metric = "mse" if rows[0]["metric_scale"] == "normalized" else "mae"
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = {r["mode"]: r for r in rows if r["model"] == model}
        if "pretrained" not in mine or len(mine) < 2:
            continue
        base = mine["pretrained"]
        b_value = base["test"]["avg"][metric]
        b_std = (base.get("test_std") or {}).get("avg", {}).get(metric)
        for mode, row in mine.items():
            if mode == "pretrained":
                continue
            value = row["test"]["avg"][metric]
            std = (row.get("test_std") or {}).get("avg", {}).get(metric)
            known = (
                min(row.get("seeds", 1), base.get("seeds", 1)) > 1
                and std is not None
                and b_std is not None
                and math.isfinite(std)
                and math.isfinite(b_std)
            )
            diff = value - b_value
            spread = std + b_std if known else None
            exceeds = None if spread is None else bool(abs(diff) > spread)
            if exceeds is None:
                verdict = "one seed: spread unknown"
            elif not exceeds:
                verdict = "within the seed spread"
            elif diff < 0:
                verdict = f"{mode} better beyond the seed spread"
            else:
                verdict = "pretrained better beyond the seed spread"
            out.append(
                {
                    "model": model,
                    "mode": mode,
                    "metric": metric,
                    "value": value,
                    "std": std,
                    "pretrained": b_value,
                    "pretrained_std": b_std,
                    "difference": diff,
                    "gap": gap(value, b_value) if b_value else "-",
                    "spread": spread,
                    "exceeds_spread": exceeds,
                    "verdict": verdict,
                }
            )
    return out


def adapter_verdict(comparisons: Sequence[dict[str, Any]]) -> str:
    """One adapter's overall verdict from its :func:`ablation_comparison` entries: does
    its pretrained backbone beat every ablation beyond the seed spread (Tan et al.'s
    question)?"""
    if not comparisons:
        return "no ablation to compare with"
    if any(c["exceeds_spread"] is None for c in comparisons):
        return "undecided: one seed, so no seed spread to compare the differences with"
    better = [c["mode"] for c in comparisons if c["exceeds_spread"] and c["difference"] < 0]
    worse = [c["mode"] for c in comparisons if c["exceeds_spread"] and c["difference"] > 0]
    if better:
        return (
            f"the pretrained backbone does not help: {', '.join(better)} forecast(s) better "
            "beyond the seed spread"
        )
    if len(worse) == len(comparisons):
        return "the pretrained backbone helps: every ablation is worse beyond the seed spread"
    tied = [c["mode"] for c in comparisons if not c["exceeds_spread"]]
    return (
        f"no evidence that the pretrained backbone helps: {', '.join(tied)} within the seed spread"
    )
