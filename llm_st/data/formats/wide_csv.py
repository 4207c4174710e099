"""Time x node CSV without a timestamp column (T-GCN's ``los_speed.csv``) + matrix CSV.

Sniffing rule: a ``.csv`` whose first row below the header holds numbers only (empty
fields allowed). A header-only file also matches, so that its loader can say that
the rows are missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_st.data.container import STData
from llm_st.data.formats._common import (
    build,
    csv_head,
    is_number,
    numeric_frame,
    read_csv_frame,
    require_file,
    timestamps,
)
from llm_st.data.formats.base import FileFormat, register_format
from llm_st.data.graphs import check_graph_size, read_matrix_csv

LAYOUT = (
    "a header of node ids and one row of numbers per time step, e.g. '773869,767541' "
    "then '64.4,67.1'"
)


def load_wide_csv(
    path: str | Path,
    adj_csv: str | Path | None = None,
    start: Any = None,
    freq: str | None = None,
    header: bool = True,
    *,
    null_value: float | None = None,
    name: str | None = None,
    description: str = "",
    drop_empty_nodes: bool = False,
) -> STData:
    """Time x node CSV without a timestamp column (T-GCN's ``los_speed.csv`` layout).

    Parameters
    ----------
    path
        ``T`` rows of ``N`` numbers; with ``header=True`` the first row holds the node ids.
    adj_csv
        ``N x N`` matrix CSV without header (0/1 or weighted; zero = no edge), rows and
        columns in the column order of ``path``.
    start, freq
        First timestamp and step (the file has none); without ``start`` the data carry
        no timestamps.
    """
    path = require_file(path, "wide CSV")
    frame = read_csv_frame(path, LAYOUT, header=0 if header else None)
    values = numeric_frame(
        frame,
        path,
        "keep one numeric column per node (files with a timestamp column: format='ett_csv', "
        "time_col=<its name>)",
    )
    adjacency = None
    if adj_csv is not None:
        adjacency = read_matrix_csv(adj_csv, "adjacency CSV")
        check_graph_size(adjacency, values.shape[1], Path(adj_csv))
    return build(
        values[:, :, None],
        name=name or path.stem,
        drop_empty_nodes=drop_empty_nodes,
        null_value=null_value,
        node_ids=[str(c) for c in frame.columns] if header else None,
        adjacency=adjacency,
        timestamps=timestamps(start, values.shape[0], freq),
        freq=freq,
        description=description,
    )


def _sniff(path: Path) -> bool:
    head = csv_head(path, rows=2)
    if len(head) < 2:
        return len(head) == 1
    return all(not f or is_number(f) for f in head[1])


FORMAT = register_format(
    FileFormat(
        name="wide_csv",
        extensions=(".csv",),
        sniff=_sniff,
        load=load_wide_csv,
        layout=LAYOUT + " (los_speed.csv; graph: adj_csv=, timestamps: start= and freq=)",
        priority=50,
    )
)
