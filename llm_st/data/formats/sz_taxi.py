"""SZ-taxi as published with ST-CGCN / T-GCN: ``SZ_taxi.npz`` + ``sz_adj.csv``.

Sniffing rule: the published name ``SZ_taxi.npz`` (any case) with an array ``data`` of
2 or 3 dimensions. The content alone cannot tell it from a single-channel PeMS
archive, and the two need different timestamps and channel names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_st.data.container import STData
from llm_st.data.formats._common import (
    SOURCE_SZ_TAXI,
    SOURCE_TGCN,
    build,
    npz_shapes,
    read_npz_array,
    require_file,
    timestamps,
)
from llm_st.data.formats.base import FileFormat, register_format
from llm_st.data.graphs import check_graph_size, read_matrix_csv
from llm_st.errors import DataError


def load_sz_taxi(
    npz_path: str | Path,
    adj_csv: str | Path | None = None,
    start: Any = "2015-01-01",
    freq: str = "15min",
    *,
    null_value: float | None = 0.0,
    name: str = "SZ-taxi",
    description: str = "",
    drop_empty_nodes: bool = False,
) -> STData:
    """SZ-taxi: taxi speeds on 156 Shenzhen roads, January 2015, every 15 minutes.

    ``SZ_taxi.npz`` holds ``data`` float64 ``(2976, 156, 1)`` (31 days x 96 steps) and
    ``sz_adj.csv`` a 156 x 156 0/1 matrix without header (not symmetric, zero diagonal).

    Zeros are treated as missing (``null_value=0.0``). The file has 24.8% zeros, and
    they look like "no taxi on this road in this interval", not like a speed:

    - they concentrate on some roads: 31 roads have none, 37 roads have more than
      half zeros, one 96%; no road is zero throughout;
    - they come in short runs (median 2 steps = 30 minutes) at every time of day (19% to
      33% of the roads per 15-minute slot), not in night-time or jam episodes;
    - slow traffic is recorded as small positive speeds (down to ~1e-17), so an exact
      0.0 is not the bottom of the speed range but the absence of a probe.

    Treating them as speeds (as T-GCN does) trains and scores models on "predicting
    the absence of taxis"; the project's protocol reports masked metrics on the
    original scale instead. Pass ``null_value=None`` to keep zeros as observations.

    Returns
    -------
    STData
        ``[2976, 156, 1]`` speeds, channel ``"speed"``.
    """
    path = require_file(npz_path, "SZ-taxi .npz file", SOURCE_SZ_TAXI)
    array, _ = read_npz_array(path, "data")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise DataError(
            f"{path}: array 'data' has shape {array.shape}, expected (T, N, 1)", "check the file"
        )
    adjacency = None
    if adj_csv is not None:
        adjacency = read_matrix_csv(adj_csv, "SZ-taxi adjacency CSV", SOURCE_TGCN)
        check_graph_size(adjacency, array.shape[1], Path(adj_csv))
    return build(
        array,
        name=name,
        drop_empty_nodes=drop_empty_nodes,
        null_value=null_value,
        adjacency=adjacency,
        timestamps=timestamps(start, array.shape[0], freq),
        freq=freq,
        channels=["speed"] if array.shape[2] == 1 else None,
        description=description,
    )


def _sniff(path: Path) -> bool:
    shapes = npz_shapes(path) or {}
    return path.stem.lower() == "sz_taxi" and len(shapes.get("data", ())) in (2, 3)


FORMAT = register_format(
    FileFormat(
        name="sz_taxi",
        extensions=(".npz",),
        sniff=_sniff,
        load=load_sz_taxi,
        layout="SZ_taxi.npz with array 'data' of shape (T, N, 1) (graph: adj_csv=)",
        priority=20,
    )
)
