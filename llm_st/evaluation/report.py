"""Plain-text tables of results, one row per method."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}%" if pct else f"{value:.3f}"


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


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
            _count(r.get("trainable")),
            _count(r.get("total")),
            "-" if secs is None else f"{secs:.1f}s",
        ]
        body.append(cells)
    widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(header), line(["-" * w for w in widths])] + [line(b) for b in body]
    notes = [f"  [{r['method']}] {r['note']}" for r in rows if r.get("note")]
    return "\n".join(out + ([""] + notes if notes else []))
