"""Long data frame ``unique_id, ds, y`` (one row per series and time), as Nixtla and
Chronos users keep their data, in ``.csv`` or ``.parquet``.

Sniffing rule: the CSV header or the Parquet schema has the three columns
``unique_id``, ``ds`` and ``y``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llm_st.data.container import STData
from llm_st.data.formats._common import (
    build,
    csv_columns,
    numeric_frame,
    parquet_columns,
    read_csv_frame,
    require_file,
    shorten,
)
from llm_st.data.formats.base import FileFormat, register_format
from llm_st.errors import DataError

COLUMNS = ("unique_id", "ds", "y")
LAYOUT = (
    "columns 'unique_id,ds,y' and one row per series and time step, e.g. "
    "'sensor_1,2024-01-01 00:00,3.5'"
)


def load_long_frame(
    path_or_df: str | Path | pd.DataFrame,
    id_col: str = "unique_id",
    time_col: str = "ds",
    value_col: str = "y",
    *,
    freq: str | None = None,
    null_value: float | None = None,
    name: str | None = None,
    description: str = "",
    drop_empty_nodes: bool = False,
) -> STData:
    """Long data frame (one row per series and time), as Nixtla and Chronos users keep it.

    A long frame has no row order, so rows are placed by timestamp: time steps are the
    sorted union of all timestamps and nodes keep the order of first appearance of
    their id. A (series, time) pair absent from the frame is masked (no warning; that
    is how long frames say "missing"); NaN values are masked with a warning. A pair
    listed twice is an error.

    Parameters
    ----------
    path_or_df
        ``.csv`` / ``.parquet`` file or a ``pandas.DataFrame``.
    id_col, time_col, value_col
        Series id, timestamp and value columns (Nixtla names by default).
    freq
        Default: inferred from the union of timestamps (``None`` if irregular).

    Returns
    -------
    STData
        ``[T, N, 1]``, node ids = series ids.
    """
    if isinstance(path_or_df, pd.DataFrame):
        frame, source = path_or_df, "data frame"
    else:
        path = require_file(path_or_df, "long-format file")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            frame = read_csv_frame(path, LAYOUT)
        elif suffix in (".parquet", ".pq"):
            try:
                frame = pd.read_parquet(path)
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read {path} as Parquet: {exc}", "check the file") from exc
        else:
            raise DataError(
                f"unknown long-frame extension {suffix!r} of {path}", "use .csv or .parquet"
            )
        source = str(path)
    missing = [c for c in (id_col, time_col, value_col) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source} lacks column(s) {', '.join(missing)} (has {shorten(frame.columns)})",
            "pass id_col=, time_col=, value_col= naming the series id, time and value columns",
        )
    if len(frame) == 0:
        raise DataError(f"{source} has no rows", f"add rows: {LAYOUT}")
    if pd.api.types.is_numeric_dtype(frame[time_col]):
        raise DataError(
            f"{source}: {time_col!r} holds numbers, not timestamps",
            "convert it to datetimes (e.g. pd.date_range over the step index) before loading",
        )
    try:
        times = pd.DatetimeIndex(pd.to_datetime(frame[time_col]))
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"{source}: {time_col!r} is not parseable as timestamps: {exc}", "fix the dates"
        ) from exc
    numeric_frame(frame[[value_col]], source, "write numbers in the value column")
    ids = frame[id_col].astype(str).to_numpy()
    pairs = pd.DataFrame({"id": ids, "t": times})
    duplicated = pairs.duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise DataError(
            f"{source}: series {ids[row]!r} has more than one row at {times[row]}",
            "aggregate or drop the duplicated rows",
        )
    node_pos, node_ids = pd.factorize(ids)
    steps = times.unique().sort_values()
    time_pos = steps.get_indexer(times)
    values = np.zeros((len(steps), len(node_ids), 1), dtype=np.float64)
    present = np.zeros(values.shape, dtype=bool)
    values[time_pos, node_pos, 0] = frame[value_col].to_numpy(dtype=np.float64)
    present[time_pos, node_pos, 0] = True
    return build(
        values,
        name=name or (Path(source).stem if source != "data frame" else "data"),
        drop_empty_nodes=drop_empty_nodes,
        mask=present,
        null_value=null_value,
        node_ids=[str(i) for i in node_ids],
        timestamps=steps,
        freq=freq,
        description=description,
    )


def _sniff(path: Path) -> bool:
    if path.name.lower().endswith(".csv"):
        columns = csv_columns(path)
    else:
        columns = parquet_columns(path) or []
    return set(COLUMNS) <= set(columns)


FORMAT = register_format(
    FileFormat(
        name="long_frame",
        extensions=(".csv", ".parquet", ".pq"),
        sniff=_sniff,
        load=load_long_frame,
        layout=LAYOUT + " (other column names: id_col=, time_col=, value_col=)",
        priority=40,
    )
)
