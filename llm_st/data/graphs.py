"""Graphs and sensor metadata that come with the data files, read once for every format.

=====================================  ==================================================
function                               reads
=====================================  ==================================================
:func:`load_graph_pickle`              DCRNN ``adj_mx.pkl`` (restricted unpickling)
:func:`load_distance_graph`            ``from, to, distance`` CSV -> Gaussian-kernel graph
:func:`gaussian_kernel_adjacency`      the DCRNN kernel on given pairs and distances
:func:`load_sensor_locations`          DCRNN ``graph_sensor_locations*.csv``
:func:`read_matrix_csv`                ``N x N`` matrix CSV without header (T-GCN)
=====================================  ==================================================
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llm_st.data.container import Adjacency
from llm_st.data.formats._common import (
    CHECK_PATH,
    SOURCE_DCRNN,
    has_header,
    read_csv_frame,
    require_file,
    shorten,
)
from llm_st.data.safe_pickle import load_plain_pickle
from llm_st.errors import DataError


def read_matrix_csv(path: str | Path, what: str, how: str = CHECK_PATH) -> np.ndarray:
    """A square ``[N, N]`` float64 matrix from a CSV of numbers without header.

    ``what`` names the file in messages (``"adjacency CSV"``), ``how`` says where to get
    it when it is missing.
    """
    path = require_file(path, what, how)
    layout = "write it as N rows of N comma-separated numbers, without header"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy's "input contained no data"
            matrix = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{what} {path} is not a matrix of numbers: {exc}", layout) from exc
    if matrix.size == 0:
        raise DataError(f"{what} {path} is empty", layout)
    if matrix.shape[0] != matrix.shape[1]:
        raise DataError(
            f"{what} {path} has shape {matrix.shape}, not N x N", "write a square matrix"
        )
    return matrix


def check_graph_size(adjacency: Adjacency | np.ndarray, num_nodes: int, source: Path) -> None:
    """Raise unless ``adjacency`` (``[N, N]`` or :class:`Adjacency`) has ``num_nodes`` nodes."""
    n = adjacency.num_nodes if isinstance(adjacency, Adjacency) else adjacency.shape[0]
    if n != num_nodes:
        raise DataError(
            f"adjacency {source} is for {n} nodes but the data have {num_nodes}",
            "pass the graph of exactly these nodes, in the same order as the data columns",
        )


def load_graph_pickle(adj_pkl_path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a DCRNN graph pickle (``adj_mx.pkl``, ``adj_mx_bay.pkl``).

    The file is a Python 2 pickle of ``[sensor_ids, sensor_id_to_ind, adj_mx]``; it is
    read with :func:`~llm_st.data.safe_pickle.load_plain_pickle`, which refuses anything
    but plain data.

    Returns
    -------
    sensor_ids : list[str]
        ``N`` sensor ids in the row order of the matrix (the order ``sensor_id_to_ind``
        gives, which is also the list order in the published files).
    adjacency : np.ndarray
        ``[N, N]`` float32; entry ``[i, j]`` is the weight of the edge ``i -> j``
        (thresholded Gaussian kernel of road distance, diagonal 1, not symmetric).
    """
    path = require_file(adj_pkl_path, "graph pickle", SOURCE_DCRNN)
    obj = load_plain_pickle(path)
    fix = "expected DCRNN's [sensor_ids, sensor_id_to_ind, adj_mx] list"
    if not (isinstance(obj, (list, tuple)) and len(obj) == 3):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a list of three items", fix)
    ids, id_to_ind, matrix = obj

    def as_str(x: Any) -> str:
        return x.decode("latin1") if isinstance(x, bytes) else str(x)

    if not isinstance(id_to_ind, dict) or not isinstance(matrix, np.ndarray):
        raise DataError(f"{path}: second item must be a dict and third a numpy array", fix)
    ids = [as_str(i) for i in ids]
    index = {as_str(k): int(v) for k, v in id_to_ind.items()}
    n = len(ids)
    if matrix.ndim != 2 or matrix.shape != (n, n):
        raise DataError(f"{path}: adjacency has shape {matrix.shape} for {n} sensor ids", fix)
    if set(index) != set(ids) or sorted(index.values()) != list(range(n)):
        raise DataError(
            f"{path}: sensor_id_to_ind does not map the {n} sensor ids to 0..{n - 1}", fix
        )
    by_row = [""] * n
    for sensor, row in index.items():
        by_row[row] = sensor
    return by_row, matrix.astype(np.float32, copy=False)


def gaussian_kernel_adjacency(
    src: Sequence[int] | np.ndarray,
    dst: Sequence[int] | np.ndarray,
    dist: Sequence[float] | np.ndarray,
    num_nodes: int,
    sigma: float | None = None,
    threshold: float = 0.1,
) -> Adjacency:
    """Thresholded Gaussian-kernel graph of road distances, as in DCRNN (Li et al., ICLR 2018).

    For every listed pair ``(i, j)`` with distance ``d_ij``::

        w_ij = exp(-(d_ij / sigma) ** 2),   kept only if w_ij >= threshold

    Exactly what is done:

    1. pairs listed more than once keep their last distance (as a dense assignment
       would; PEMS08's ``distance.csv`` lists 18 pairs twice);
    2. ``sigma`` defaults to the population standard deviation (``ddof=0``) of the
       distances of the distinct listed pairs, including any zero self-distances
       the file lists (DCRNN's ``gen_adj_mx.py`` does the same over its distance matrix);
    3. edges are directed ``i -> j`` as listed; unlisted pairs have no edge;
    4. the diagonal is set to 1 for every node, listed or not.

    On DCRNN's ``distances_bay_2017.csv`` this reproduces ``adj_mx_bay.pkl`` to float32
    rounding.

    Parameters
    ----------
    src, dst
        ``E`` 0-based node indices of the pairs.
    dist
        ``E`` non-negative distances (any unit; the kernel is scale-free).
    num_nodes
        ``N``, the number of nodes.
    sigma
        Kernel width in the unit of ``dist``; default as in step 2.
    threshold
        Weights below it are dropped (DCRNN's ``normalized_k``, 0.1).

    Returns
    -------
    Adjacency
        Directed graph with ``N`` self-loops of weight 1.
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    dist = np.asarray(dist, dtype=np.float64)
    if not (src.shape == dst.shape == dist.shape) or src.ndim != 1 or src.size == 0:
        raise DataError(
            f"src, dst and dist must be non-empty 1-D arrays of one length, got shapes "
            f"{src.shape}, {dst.shape}, {dist.shape}",
            "pass one (from, to, distance) triple per pair",
        )
    if not np.all(np.isfinite(dist)) or dist.min() < 0:
        raise DataError("distances must be finite and non-negative", "fix or drop the bad rows")
    key = src * num_nodes + dst
    _, first_in_reversed = np.unique(key[::-1], return_index=True)
    last = np.sort(len(key) - 1 - first_in_reversed)
    src, dst, dist = src[last], dst[last], dist[last]
    if sigma is None:
        sigma = float(dist.std())
    if not sigma > 0:
        raise DataError(
            f"Gaussian kernel width sigma={sigma} is not positive (all distances equal?)",
            "pass sigma explicitly, in the unit of the distances",
        )
    weight = np.exp(-np.square(dist / sigma))
    keep = weight >= threshold
    diag = np.arange(num_nodes)
    # the diagonal comes last so that it wins over any listed self-distance
    return Adjacency.from_edges(
        np.concatenate([src[keep], diag]),
        np.concatenate([dst[keep], diag]),
        np.concatenate([weight[keep], np.ones(num_nodes)]),
        num_nodes=num_nodes,
    )


def load_distance_graph(
    csv_path: str | Path,
    node_ids: Sequence[str] | None = None,
    num_nodes: int | None = None,
    sigma: float | None = None,
    threshold: float = 0.1,
) -> Adjacency:
    """Gaussian-kernel graph (:func:`gaussian_kernel_adjacency`) from a distance CSV.

    Reads three columns ``from, to, distance`` with or without a header row (detected
    from the first field). Two layouts:

    - PeMS (``PEMS04/distance.csv``: ``from,to,cost``): ``from``/``to`` are 0-based node
      indices; leave ``node_ids`` unset. ``num_nodes`` defaults to the largest index + 1.
    - DCRNN (``distances_bay_2017.csv``, no header): ``from``/``to`` are sensor ids; pass
      ``node_ids`` (the node order). Rows naming other sensors are skipped with a warning.
    """
    path = require_file(csv_path, "distance CSV", CHECK_PATH)
    frame = read_csv_frame(
        path,
        "one 'from,to,distance' row per pair, e.g. '0,1,352.3'",
        header=0 if has_header(path) else None,
        dtype=str,
    )
    if frame.shape[1] != 3:
        raise DataError(
            f"{path} has {frame.shape[1]} columns", "write three columns: from, to, distance"
        )
    frm, to = frame.iloc[:, 0].str.strip(), frame.iloc[:, 1].str.strip()
    dist = pd.to_numeric(frame.iloc[:, 2], errors="coerce").to_numpy()
    if node_ids is not None:
        index = {str(s): i for i, s in enumerate(node_ids)}
        src, dst = frm.map(index).to_numpy(), to.map(index).to_numpy()
        known = ~(pd.isna(src) | pd.isna(dst))
        if not known.all():
            warnings.warn(
                f"{path}: skipped {int((~known).sum())} of {len(known)} rows naming sensors "
                "outside node_ids",
                stacklevel=2,
            )
        src, dst, dist = src[known].astype(np.int64), dst[known].astype(np.int64), dist[known]
        num_nodes = len(index)
    else:
        try:
            src, dst = frm.astype(np.int64).to_numpy(), to.astype(np.int64).to_numpy()
        except ValueError as exc:
            raise DataError(
                f"{path}: from/to are not integer node indices ({exc})",
                "pass node_ids when the file names sensors by id",
            ) from exc
        largest = int(max(src.max(), dst.max()))
        num_nodes = largest + 1 if num_nodes is None else num_nodes
        if min(src.min(), dst.min()) < 0 or largest >= num_nodes:
            raise DataError(
                f"{path} has an edge to node {largest} but the data have {num_nodes} nodes",
                "use the distance file of this dataset (0-based indices below the node count)",
            )
    if np.isnan(dist).any():
        row = int(np.flatnonzero(np.isnan(dist))[0])
        raise DataError(f"{path}: distance in row {row + 1} is not a number", "fix or drop the row")
    return gaussian_kernel_adjacency(src, dst, dist, num_nodes, sigma=sigma, threshold=threshold)


def load_sensor_locations(path: str | Path) -> pd.DataFrame:
    """Sensor coordinates, indexed by sensor id (str), columns ``latitude, longitude``.

    Reads both DCRNN layouts: METR-LA's ``graph_sensor_locations.csv`` with header
    ``index,sensor_id,latitude,longitude`` and PEMS-BAY's ``graph_sensor_locations_bay.csv``
    without header (``sensor_id,latitude,longitude``).
    """
    path = require_file(path, "sensor locations CSV", SOURCE_DCRNN)
    layout = "one 'sensor_id,latitude,longitude' row per sensor, e.g. '773869,34.15,-118.32'"
    if has_header(path):
        frame = read_csv_frame(path, layout, dtype={"sensor_id": str})
        missing = {"sensor_id", "latitude", "longitude"} - set(frame.columns)
        if missing:
            raise DataError(
                f"{path} lacks column(s) {', '.join(sorted(missing))} "
                f"(has {shorten(frame.columns)})",
                "name the columns sensor_id, latitude, longitude",
            )
    else:
        frame = read_csv_frame(path, layout, header=None, dtype={0: str})
        if frame.shape[1] != 3:
            raise DataError(
                f"{path} has {frame.shape[1]} columns and no header",
                "write sensor_id, latitude, longitude (or add a header naming them)",
            )
        frame.columns = ["sensor_id", "latitude", "longitude"]
    frame["sensor_id"] = frame["sensor_id"].astype(str).str.strip()
    return frame.set_index("sensor_id")[["latitude", "longitude"]].astype(np.float64)


def coords_for(ids: Sequence[str], locations: pd.DataFrame, source: Path) -> np.ndarray:
    """``[N, 2]`` latitude, longitude of the sensors ``ids`` (in that order) from ``locations``."""
    missing = [i for i in ids if i not in locations.index]
    if missing:
        raise DataError(
            f"{source} has no location for {len(missing)} sensor(s) ({', '.join(missing[:5])})",
            "use the locations file of the same dataset",
        )
    return locations.loc[list(ids)].to_numpy()
