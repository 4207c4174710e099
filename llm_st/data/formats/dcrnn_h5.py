"""METR-LA / PEMS-BAY as DCRNN publishes them: a pandas HDF5 frame, a graph pickle and
sensor locations.

Sniffing rule: an ``.h5`` / ``.hdf5`` file holding pandas objects (a top-level group
with a ``pandas_type`` attribute).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llm_st.data.container import STData
from llm_st.data.formats._common import (
    SOURCE_DCRNN,
    build,
    hdf_contents,
    numeric_frame,
    require_file,
)
from llm_st.data.formats.base import FileFormat, register_format
from llm_st.data.graphs import coords_for, load_graph_pickle, load_sensor_locations
from llm_st.errors import DataError


def load_metr_la_style(
    h5_path: str | Path,
    adj_pkl_path: str | Path | None = None,
    locations_csv: str | Path | None = None,
    *,
    key: str | None = None,
    freq: str | None = None,
    null_value: float | None = 0.0,
    name: str | None = None,
    description: str = "",
    drop_empty_nodes: bool = False,
) -> STData:
    """METR-LA / PEMS-BAY: pandas HDF5 frame + DCRNN graph pickle + sensor locations.

    Parameters
    ----------
    h5_path
        ``metr-la.h5`` / ``pems-bay.h5``: a pandas DataFrame (``DatetimeIndex`` x
        sensor-id columns) of speeds in mph, where 0.0 means missing.
    adj_pkl_path
        ``adj_mx.pkl`` (see :func:`load_graph_pickle`). The graph is reordered to the
        frame's columns by sensor id; differing id sets are an error.
    locations_csv
        Sensor coordinates (see :func:`load_sensor_locations`), aligned by sensor id.
    key
        HDF5 key of the frame (``"df"`` in metr-la.h5, ``"speed"`` in pems-bay.h5); only
        needed when the file holds several.
    freq
        Default: inferred from the index (5 minutes for both datasets).
    null_value
        Value meaning "missing" (0.0).

    Returns
    -------
    STData
        ``[T, N, 1]`` speeds, channel ``"speed"``, node ids = sensor ids.
    """
    path = require_file(h5_path, "pandas HDF5 file", SOURCE_DCRNN)
    try:
        frame = pd.read_hdf(path, key=key)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise DataError(
            f"cannot read a pandas DataFrame from {path}: {exc}",
            "pass key=<frame key> for files with several keys; grid arrays (dataset 'data') "
            "load with format='grid'",
        ) from exc
    if not isinstance(frame, pd.DataFrame) or not isinstance(frame.index, pd.DatetimeIndex):
        raise DataError(
            f"{path} holds a {type(frame).__name__} with a {type(frame.index).__name__} index",
            "store a DataFrame with a DatetimeIndex (rows) and sensor ids (columns)",
        )
    if frame.empty:
        raise DataError(
            f"{path} holds an empty frame ({len(frame)} rows, {frame.shape[1]} columns)",
            "store at least one row (time step) and one column (sensor)",
        )
    ids = [str(c) for c in frame.columns]
    values = numeric_frame(frame, path, "store numeric speeds only")[:, :, None]

    adjacency = None
    if adj_pkl_path is not None:
        graph_ids, matrix = load_graph_pickle(adj_pkl_path)
        position = {s: i for i, s in enumerate(graph_ids)}
        if set(graph_ids) != set(ids):
            only_data = [s for s in ids if s not in position][:5]
            only_graph = sorted(set(graph_ids) - set(ids))[:5]
            raise DataError(
                f"sensor ids of {path} ({len(ids)}) and {adj_pkl_path} ({len(graph_ids)}) differ: "
                f"only in data {only_data}, only in graph {only_graph}",
                "use the graph pickle that belongs to this data file",
            )
        order = np.asarray([position[s] for s in ids])
        adjacency = matrix[np.ix_(order, order)]
    coords = None
    if locations_csv is not None:
        coords = coords_for(ids, load_sensor_locations(locations_csv), Path(locations_csv))
    return build(
        values,
        name=name or path.stem,
        drop_empty_nodes=drop_empty_nodes,
        null_value=null_value,
        node_ids=ids,
        adjacency=adjacency,
        coords=coords,
        timestamps=frame.index,
        freq=freq,
        channels=["speed"],
        description=description,
    )


def _sniff(path: Path) -> bool:
    contents = hdf_contents(path)
    return contents is not None and contents[0]


FORMAT = register_format(
    FileFormat(
        name="dcrnn_h5",
        extensions=(".h5", ".hdf5"),
        sniff=_sniff,
        load=load_metr_la_style,
        layout="pandas HDF5 DataFrame, DatetimeIndex rows x sensor-id columns (metr-la.h5; "
        "graph: adj_pkl_path=, coordinates: locations_csv=)",
        priority=30,
    )
)
