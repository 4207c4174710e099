"""CSV with a timestamp column and one numeric column per variable (the ETT layout).

Sniffing rule: a ``.csv`` whose header has a ``date`` column.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llm_st.data.container import STData
from llm_st.data.formats._common import (
    SOURCE_ETT,
    build,
    csv_columns,
    numeric_frame,
    read_csv_frame,
    require_file,
    shorten,
)
from llm_st.data.formats.base import FileFormat, register_format
from llm_st.errors import DataError


def _layout(time_col: str) -> str:
    return (
        f"a header '{time_col},<variable>,...' and one row per time step, e.g. "
        f"'{time_col},OT' then '2016-07-01 00:00:00,30.5'"
    )


def load_timestamped_csv(
    path: str | Path,
    time_col: str = "date",
    as_nodes: bool = True,
    *,
    freq: str | None = None,
    null_value: float | None = None,
    name: str | None = None,
    description: str = "",
    drop_empty_nodes: bool = False,
) -> STData:
    """CSV with a timestamp column and one numeric column per variable.

    Parameters
    ----------
    time_col
        Name of the timestamp column. Rows are kept in file order.
    as_nodes
        ``True``: ``[T, V, 1]``, each of the ``V`` variables is a node (node ids = column
        names). ``False``: ``[T, 1, V]``, one node (id = file stem) with ``V`` channels.
    freq
        Default: inferred from the timestamps.
    """
    path = require_file(path, "CSV file")
    frame = read_csv_frame(path, _layout(time_col))
    if time_col not in frame.columns:
        raise DataError(
            f"{path} has no column {time_col!r} (columns: {shorten(frame.columns)})",
            "pass time_col=<name of the timestamp column>",
        )
    variables = frame.drop(columns=[time_col])
    if variables.shape[1] == 0:
        raise DataError(
            f"{path} has only the timestamp column {time_col!r}, no values",
            f"add one numeric column per variable: {_layout(time_col)}",
        )
    try:
        stamps = pd.DatetimeIndex(pd.to_datetime(frame[time_col]))
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"{path}: column {time_col!r} is not parseable as timestamps: {exc}",
            "write dates such as '2016-07-01 00:00:00'",
        ) from exc
    values = numeric_frame(variables, path, f"keep only {time_col!r} and numeric columns")
    names = [str(c) for c in variables.columns]
    stem = name or path.stem
    return build(
        values[:, :, None] if as_nodes else values[:, None, :],
        name=stem,
        drop_empty_nodes=drop_empty_nodes,
        null_value=null_value,
        node_ids=names if as_nodes else [stem],
        channels=None if as_nodes else names,
        timestamps=stamps,
        freq=freq,
        description=description,
    )


def load_ett_csv(
    path: str | Path,
    *,
    freq: str | None = None,
    name: str | None = None,
    description: str = "",
    drop_empty_nodes: bool = False,
) -> STData:
    """ETT (ETTh1/ETTh2/ETTm1/ETTm2): ``date`` + ``HUFL,HULL,MUFL,MULL,LUFL,LULL,OT``.

    The 7 variables become 7 nodes with one channel each (``[T, 7, 1]``, node ids =
    column names), not one node with 7 channels: the long-term-series protocol
    (Informer, DLinear, PatchTST, GPT4TS, Time-LLM) forecasts each variable on its
    own (channel independence) and z-scores each variable separately, which in llm-st
    is a per-node model input and a per-node scaler (``axis="node"``).
    """
    path = require_file(path, "ETT CSV", SOURCE_ETT)
    return load_timestamped_csv(
        path,
        time_col="date",
        as_nodes=True,
        freq=freq,
        name=name,
        description=description,
        drop_empty_nodes=drop_empty_nodes,
    )


def _sniff(path: Path) -> bool:
    return "date" in csv_columns(path)


FORMAT = register_format(
    FileFormat(
        name="ett_csv",
        extensions=(".csv",),
        sniff=_sniff,
        load=load_timestamped_csv,
        layout=_layout("date") + " (ETTh1.csv; a timestamp column of another name: time_col=)",
        priority=30,
    )
)
