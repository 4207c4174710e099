"""Loaders for the file formats ST benchmarks are published in.

Every loader returns an :class:`~llm_st.data.container.STData` (values ``[T, N, C]``)
and reads the files as their communities publish them:

===========================  ==========================================================
loader                       format
===========================  ==========================================================
:func:`load_metr_la_style`   pandas HDF5 frame (time x sensor ids) + DCRNN ``adj_mx.pkl``
:func:`load_pems_npz`        ``.npz`` key ``data`` ``(T, N, C)`` + ``distance.csv``
:func:`load_ett_csv`         ETT CSV: ``date`` column + one column per variable
:func:`load_wide_csv`        time x node CSV without timestamps (LosLoop) + matrix CSV
:func:`load_sz_taxi`         ``SZ_taxi.npz`` ``(T, N, 1)`` + matrix CSV
:func:`load_long_frame`      long frame ``unique_id, ds, y`` (Nixtla / Chronos users)
:func:`load_grid`            grids ``(T, C, H, W)`` in ``.npz`` or ``.h5`` (TaxiBJ)
:func:`load_file`            any of the above, chosen by extension and content
===========================  ==========================================================

Loaders never reorder rows: unsorted or duplicated timestamps reach
:class:`STData`, which rejects them with the offending row. Nodes without a single
observation are rejected too, unless ``drop_empty_nodes=True`` drops them (with a
warning) together with their graph rows, coordinates and ids.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from llm_st.data.container import Adjacency, STData
from llm_st.data.io import META_KEY, load_npz
from llm_st.data.safe_pickle import load_plain_pickle
from llm_st.errors import DataError, DataNotFoundError

log = logging.getLogger("llm_st")

PEMS_CHANNELS = ("flow", "occupancy", "speed")
TAXIBJ_SLOT = "30min"

# where the published files come from, for "file not found" messages
SOURCE_DCRNN = (
    "get it from github.com/liyaguang/DCRNN (metr-la.h5 / pems-bay.h5 through the links in its "
    "README, adj_mx*.pkl, graph_sensor_*.csv and distances_*.csv under data/sensor_graph/)"
)
SOURCE_ASTGCN = "get it from github.com/Davidham3/ASTGCN-2019-mxnet under data/PEMS0X/"
SOURCE_TGCN = "get it from github.com/lehaifeng/T-GCN under data/"
SOURCE_SZ_TAXI = "get it from github.com/Bounger2/ST-CGCN under data/SZ_taxi/"
SOURCE_ETT = "get it from github.com/zhouhaoyi/ETDataset under ETT-small/"
_CHECK_PATH = "check the path"


# --------------------------------------------------------------------------- helpers
def _require_file(path: str | Path, what: str, how: str = _CHECK_PATH) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"{what} not found: {path}", how)
    return path


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _has_header(path: Path) -> bool:
    """True when the first field of the first line of a CSV is not a number."""
    with path.open() as fh:
        first = fh.readline().split(",")[0].strip().strip('"')
    return not _is_number(first)


def _names(frame: pd.DataFrame, limit: int = 10) -> str:
    """The first ``limit`` column names of ``frame``, for error messages."""
    names = [str(c) for c in frame.columns]
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def _timestamps(start: Any, periods: int, freq: str | None) -> pd.DatetimeIndex | None:
    """``periods`` regular timestamps from ``start``, or ``None`` without a start."""
    if start is None:
        return None
    if freq is None:
        raise DataError(f"start {start!r} given without a frequency", "pass freq, e.g. freq='5min'")
    try:
        return pd.date_range(start=pd.Timestamp(start), periods=periods, freq=freq)
    except ValueError as exc:
        raise DataError(
            f"cannot build timestamps from start={start!r}, freq={freq!r}: {exc}",
            "pass a date such as '2012-03-01 00:00' and a pandas frequency such as '5min'",
        ) from exc


def _numeric_frame(df: pd.DataFrame, path: Path, fix: str) -> np.ndarray:
    """The frame's values as float64 ``[T, columns]``; non-numeric columns are an error."""
    bad = [str(c) for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        shown = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise DataError(f"{path}: non-numeric column(s) {shown}", fix)
    return df.to_numpy(dtype=np.float64)


def _read_matrix_csv(path: str | Path, what: str, how: str = _CHECK_PATH) -> np.ndarray:
    """A square ``[N, N]`` matrix from a CSV of numbers without header."""
    path = _require_file(path, what, how)
    try:
        matrix = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataError(
            f"{what} {path} is not a matrix of numbers: {exc}",
            "write it as N rows of N comma-separated numbers, without header",
        ) from exc
    if matrix.shape[0] != matrix.shape[1]:
        raise DataError(
            f"{what} {path} has shape {matrix.shape}, not N x N", "write a square matrix"
        )
    return matrix


def _check_graph_size(adjacency: Adjacency | np.ndarray, num_nodes: int, source: Path) -> None:
    n = adjacency.num_nodes if isinstance(adjacency, Adjacency) else adjacency.shape[0]
    if n != num_nodes:
        raise DataError(
            f"adjacency {source} is for {n} nodes but the data have {num_nodes}",
            "pass the graph of exactly these nodes, in the same order as the data columns",
        )


def _build(
    values: np.ndarray,
    *,
    name: str,
    drop_empty_nodes: bool = False,
    mask: np.ndarray | None = None,
    null_value: float | None = None,
    node_ids: Sequence[str] | None = None,
    adjacency: Adjacency | np.ndarray | None = None,
    coords: np.ndarray | None = None,
    **fields: Any,
) -> STData:
    """Make the :class:`STData`, first dropping nodes without observations if asked.

    ``values`` is ``[T, N, C]``; NaN/inf entries and entries equal to ``null_value`` count
    as missing, as do ``False`` entries of ``mask``.
    """
    if mask is not None and null_value is not None:
        mask = mask & (values != null_value)
    if drop_empty_nodes:
        observed = np.isfinite(values)
        if mask is not None:
            observed &= mask
        elif null_value is not None:
            observed &= values != null_value
        empty = ~observed.any(axis=(0, 2))
        if empty.all():
            raise DataError(
                f"{name}: no node has any observation", "check the file and the null value"
            )
        if empty.any():
            keep = np.flatnonzero(~empty)
            ids = [str(i) for i in range(values.shape[1])] if node_ids is None else list(node_ids)
            dropped = [ids[i] for i in np.flatnonzero(empty)]
            shown = ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else "")
            warnings.warn(
                f"{name}: dropped {len(dropped)} node(s) without any observation ({shown})",
                stacklevel=3,
            )
            values = values[:, keep]
            mask = None if mask is None else mask[:, keep]
            node_ids = [ids[i] for i in keep]
            if isinstance(adjacency, Adjacency):
                adjacency = adjacency.subgraph(keep)
            elif adjacency is not None:
                adjacency = np.asarray(adjacency)[np.ix_(keep, keep)]
            coords = None if coords is None else np.asarray(coords)[keep]
    return STData(
        values=values,
        mask=mask,
        null_value=null_value,
        node_ids=None if node_ids is None else list(node_ids),
        adjacency=adjacency,
        coords=coords,
        name=name,
        **fields,
    )


def _read_npz_array(path: Path, key: str) -> tuple[np.ndarray, list[str]]:
    """Array ``key`` of an ``.npz`` (never unpickling) and the names of all its arrays."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if key not in names:
                raise DataError(
                    f"{path} has no array {key!r} (it has {', '.join(names) or 'none'})",
                    "pass key=<name of the array that holds the series>",
                )
            return archive[key], names
    except DataError:
        raise
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise DataError(
            f"cannot read {path} without unpickling: {exc}", "save numeric arrays only"
        ) from exc
    except (OSError, EOFError) as exc:  # not a zip / truncated
        raise DataError(f"{path} is not a readable .npz archive: {exc}", "check the file") from exc


# --------------------------------------------------------------------------- graphs
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
    path = _require_file(adj_pkl_path, "graph pickle", SOURCE_DCRNN)
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
    path = _require_file(csv_path, "distance CSV", _CHECK_PATH)
    header = 0 if _has_header(path) else None
    frame = pd.read_csv(path, header=header, dtype=str)
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
    path = _require_file(path, "sensor locations CSV", SOURCE_DCRNN)
    if _has_header(path):
        frame = pd.read_csv(path, dtype={"sensor_id": str})
        missing = {"sensor_id", "latitude", "longitude"} - set(frame.columns)
        if missing:
            raise DataError(
                f"{path} lacks column(s) {', '.join(sorted(missing))} (has {_names(frame)})",
                "name the columns sensor_id, latitude, longitude",
            )
    else:
        frame = pd.read_csv(path, header=None, dtype={0: str})
        if frame.shape[1] != 3:
            raise DataError(
                f"{path} has {frame.shape[1]} columns and no header",
                "write sensor_id, latitude, longitude (or add a header naming them)",
            )
        frame.columns = ["sensor_id", "latitude", "longitude"]
    frame["sensor_id"] = frame["sensor_id"].astype(str).str.strip()
    return frame.set_index("sensor_id")[["latitude", "longitude"]].astype(np.float64)


def _coords_for(ids: Sequence[str], locations: pd.DataFrame, source: Path) -> np.ndarray:
    missing = [i for i in ids if i not in locations.index]
    if missing:
        raise DataError(
            f"{source} has no location for {len(missing)} sensor(s) ({', '.join(missing[:5])})",
            "use the locations file of the same dataset",
        )
    return locations.loc[list(ids)].to_numpy()


# --------------------------------------------------------------------------- formats
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
    path = _require_file(h5_path, "pandas HDF5 file", SOURCE_DCRNN)
    try:
        frame = pd.read_hdf(path, key=key)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise DataError(
            f"cannot read a pandas DataFrame from {path}: {exc}",
            "pass key=<frame key> for files with several keys; grid arrays (dataset 'data') "
            "load with load_grid",
        ) from exc
    if not isinstance(frame, pd.DataFrame) or not isinstance(frame.index, pd.DatetimeIndex):
        raise DataError(
            f"{path} holds a {type(frame).__name__} with a {type(frame.index).__name__} index",
            "store a DataFrame with a DatetimeIndex (rows) and sensor ids (columns)",
        )
    ids = [str(c) for c in frame.columns]
    values = _numeric_frame(frame, path, "store numeric speeds only")[:, :, None]

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
        coords = _coords_for(ids, load_sensor_locations(locations_csv), Path(locations_csv))
    return _build(
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


def load_pems_npz(
    npz_path: str | Path,
    distance_csv: str | Path | None = None,
    *,
    start: Any = None,
    freq: str = "5min",
    sigma: float | None = None,
    threshold: float = 0.1,
    key: str = "data",
    channels: Sequence[str] | None = None,
    null_value: float | None = 0.0,
    name: str | None = None,
    description: str = "",
    drop_empty_nodes: bool = False,
) -> STData:
    """PeMS ``.npz`` (PEMS03/04/07/08 as published with ASTGCN) + ``distance.csv``.

    Parameters
    ----------
    npz_path
        Archive whose array ``key`` (``"data"``) has shape ``(T, N, C)`` (or ``(T, N)``);
        PEMS04/08 have ``C = 3`` channels flow, occupancy, speed; PEMS03/07 one (flow).
    distance_csv
        ``from,to,cost`` with 0-based node indices and metres, turned into a thresholded
        Gaussian-kernel graph by :func:`gaussian_kernel_adjacency` (edges directed as
        listed, diagonal 1). Note that the PeMS files list direct neighbours only, so
        the threshold drops the longer links: 209 of PEMS04's 340 listed pairs and
        137 of PEMS08's 277 distinct ones keep a weight >= 0.1.
    start, freq
        First timestamp (PEMS04: 2018-01-01, PEMS08: 2016-07-01) and step; without
        ``start`` the data carry no timestamps.
    channels
        Channel names; default ``flow, occupancy, speed`` for 3 channels, else generic
        (pass ``["flow"]`` for PEMS03/07).
    null_value
        0.0: a zero reading means a failed detector (masked in metrics).

    Returns
    -------
    STData
        ``[T, N, C]``, node ids ``"0".."N-1"``.
    """
    path = _require_file(npz_path, "PeMS .npz file", SOURCE_ASTGCN)
    array, _ = _read_npz_array(path, key)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise DataError(
            f"{path}: array {key!r} has shape {array.shape}, expected (T, N, C)",
            "grid arrays (T, C, H, W) load with load_grid",
        )
    if channels is None and array.shape[2] == len(PEMS_CHANNELS):
        channels = list(PEMS_CHANNELS)
    adjacency = None
    if distance_csv is not None:
        adjacency = load_distance_graph(
            distance_csv, num_nodes=array.shape[1], sigma=sigma, threshold=threshold
        )
    return _build(
        array,
        name=name or path.stem,
        drop_empty_nodes=drop_empty_nodes,
        null_value=null_value,
        adjacency=adjacency,
        timestamps=_timestamps(start, array.shape[0], freq),
        freq=freq,
        channels=channels,
        description=description,
    )


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
    path = _require_file(npz_path, "SZ-taxi .npz file", SOURCE_SZ_TAXI)
    array, _ = _read_npz_array(path, "data")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise DataError(
            f"{path}: array 'data' has shape {array.shape}, expected (T, N, 1)", "check the file"
        )
    adjacency = None
    if adj_csv is not None:
        adjacency = _read_matrix_csv(adj_csv, "SZ-taxi adjacency CSV", SOURCE_TGCN)
        _check_graph_size(adjacency, array.shape[1], Path(adj_csv))
    return _build(
        array,
        name=name,
        drop_empty_nodes=drop_empty_nodes,
        null_value=null_value,
        adjacency=adjacency,
        timestamps=_timestamps(start, array.shape[0], freq),
        freq=freq,
        channels=["speed"] if array.shape[2] == 1 else None,
        description=description,
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
    path = _require_file(path, "CSV file")
    frame = pd.read_csv(path)
    if time_col not in frame.columns:
        raise DataError(
            f"{path} has no column {time_col!r} (columns: {_names(frame)})",
            "pass time_col=<name of the timestamp column>",
        )
    try:
        timestamps = pd.DatetimeIndex(pd.to_datetime(frame[time_col]))
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"{path}: column {time_col!r} is not parseable as timestamps: {exc}", "fix the dates"
        ) from exc
    variables = frame.drop(columns=[time_col])
    values = _numeric_frame(variables, path, f"keep only {time_col!r} and numeric columns")
    names = [str(c) for c in variables.columns]
    stem = name or path.stem
    return _build(
        values[:, :, None] if as_nodes else values[:, None, :],
        name=stem,
        drop_empty_nodes=drop_empty_nodes,
        null_value=null_value,
        node_ids=names if as_nodes else [stem],
        channels=None if as_nodes else names,
        timestamps=timestamps,
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
    path = _require_file(path, "ETT CSV", SOURCE_ETT)
    return load_timestamped_csv(
        path,
        time_col="date",
        as_nodes=True,
        freq=freq,
        name=name,
        description=description,
        drop_empty_nodes=drop_empty_nodes,
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
    path = _require_file(path, "wide CSV")
    frame = pd.read_csv(path, header=0 if header else None)
    values = _numeric_frame(
        frame,
        path,
        "keep one numeric column per node (files with a timestamp column: load_timestamped_csv)",
    )
    adjacency = None
    if adj_csv is not None:
        adjacency = _read_matrix_csv(adj_csv, "adjacency CSV")
        _check_graph_size(adjacency, values.shape[1], Path(adj_csv))
    return _build(
        values[:, :, None],
        name=name or path.stem,
        drop_empty_nodes=drop_empty_nodes,
        null_value=null_value,
        node_ids=[str(c) for c in frame.columns] if header else None,
        adjacency=adjacency,
        timestamps=_timestamps(start, values.shape[0], freq),
        freq=freq,
        description=description,
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
        path = _require_file(path_or_df, "long-format file")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            raise DataError(
                f"unknown long-frame extension {suffix!r} of {path}", "use .csv or .parquet"
            )
        source = str(path)
    missing = [c for c in (id_col, time_col, value_col) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source} lacks column(s) {', '.join(missing)} (has {_names(frame)})",
            "pass id_col=, time_col=, value_col= naming the series id, time and value columns",
        )
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
    if not pd.api.types.is_numeric_dtype(frame[value_col]):
        raise DataError(f"{source}: {value_col!r} is not numeric", "convert the values to numbers")
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
    return _build(
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


def _slot_timestamps(dates: np.ndarray, freq: str, source: Path) -> pd.DatetimeIndex:
    """TaxiBJ ``YYYYMMDDSS`` strings (``SS`` = 1-based slot of length ``freq``) to timestamps."""
    text = [d.decode("ascii") if isinstance(d, bytes) else str(d) for d in np.ravel(dates)]
    step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    per_day = int(pd.Timedelta(days=1) / step)
    try:
        days = pd.to_datetime([t[:8] for t in text], format="%Y%m%d")
        slots = np.asarray([int(t[8:]) for t in text])
    except ValueError as exc:
        raise DataError(
            f"{source}: dates are not YYYYMMDDSS strings ({exc})", "check the 'date' dataset"
        ) from exc
    if len(slots) and (slots.min() < 1 or slots.max() > per_day):
        raise DataError(
            f"{source}: slot numbers run {slots.min()}..{slots.max()}, "
            f"but a day has {per_day} slots of {freq}",
            "pass freq= the slot length (TaxiBJ: '30min', BikeNYC: 'h')",
        )
    return pd.DatetimeIndex(days + (slots - 1) * step)


def load_grid(
    path: str | Path,
    key: str = "data",
    *,
    date_key: str = "date",
    start: Any = None,
    freq: str | None = None,
    channels: Sequence[str] | None = None,
    null_value: float | None = None,
    name: str | None = None,
    description: str = "",
) -> STData:
    """Grid data ``(T, C, H, W)`` (TaxiBJ / BikeNYC layout) from ``.npz`` or ``.h5``.

    Cells become nodes in row-major order with a 4-neighbour graph
    (:meth:`STData.from_grid`). Empty cells cannot be dropped (the grid must stay whole).

    Parameters
    ----------
    key
        Array (``.npz``) or dataset (``.h5``) with the frames.
    date_key
        Optional array/dataset of ``YYYYMMDDSS`` byte strings (TaxiBJ), ``SS`` the 1-based
        slot of the day; used for timestamps when present.
    start, freq
        Without dates: first timestamp and step. With dates, ``freq`` is the slot length,
        default ``"30min"`` (TaxiBJ; BikeNYC uses ``"h"``).
    """
    path = _require_file(path, "grid file")
    suffix = path.suffix.lower()
    dates = None
    if suffix == ".npz":
        frames, names = _read_npz_array(path, key)
        if date_key in names:
            dates, _ = _read_npz_array(path, date_key)
    elif suffix in (".h5", ".hdf5"):
        try:
            with h5py.File(path, "r") as f:
                if key not in f or not isinstance(f[key], h5py.Dataset):
                    raise DataError(
                        f"{path} has no dataset {key!r} (it has {', '.join(f.keys()) or 'none'})",
                        "pass key=<dataset with the (T, C, H, W) frames>",
                    )
                frames = f[key][()]
                if date_key in f:
                    dates = f[date_key][()]
        except OSError as exc:
            raise DataError(f"{path} is not a readable HDF5 file: {exc}", "check the file") from exc
    else:
        raise DataError(f"unknown grid file extension {suffix!r} of {path}", "use .npz or .h5")
    if frames.ndim != 4:
        raise DataError(
            f"{path}: {key!r} has shape {frames.shape}, expected (T, C, H, W)",
            "add a channel axis for single-channel grids; (T, N, C) series load with load_pems_npz",
        )
    if dates is not None:
        freq = freq or TAXIBJ_SLOT
        timestamps = _slot_timestamps(dates, freq, path)
        if len(timestamps) != frames.shape[0]:
            raise DataError(
                f"{path}: {len(timestamps)} dates for {frames.shape[0]} frames", "check the file"
            )
    else:
        timestamps = _timestamps(start, frames.shape[0], freq)
    return STData.from_grid(
        frames,
        channels=channels,
        timestamps=timestamps,
        freq=freq,
        null_value=null_value,
        name=name or path.stem,
        description=description,
    )


# --------------------------------------------------------------------------- dispatch
SUPPORTED_EXTENSIONS = (".npz", ".h5", ".hdf5", ".csv", ".parquet", ".pq")


def _npz_contents(path: Path, key: str) -> tuple[list[str], int | None]:
    """Array names of an ``.npz`` and the number of dimensions of ``key`` (``None`` if absent).

    Reads only the ``.npy`` headers, not the arrays.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
            if key not in names:
                return names, None
            with archive.open(f"{key}.npy") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, _ = read_header(fh)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable .npz archive: {exc}", "check the file") from exc
    return names, len(shape)


def _is_pandas_hdf(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return any("pandas_type" in f[k].attrs for k in f.keys())
    except OSError as exc:
        raise DataError(f"{path} is not a readable HDF5 file: {exc}", "check the file") from exc


def load_file(path: str | Path, **kwargs: Any) -> STData:
    """Load a file, choosing the loader by extension and content.

    - ``.npz``: llm-st's own format (:func:`llm_st.data.io.load_npz`) if written by
      :func:`~llm_st.data.io.save_npz`; else array ``data`` with 2/3 dimensions as
      PeMS / SZ-taxi series (:func:`load_pems_npz`) or 4 as a grid (:func:`load_grid`);
    - ``.h5`` / ``.hdf5``: a pandas frame (:func:`load_metr_la_style`), else a grid;
    - ``.csv``: :func:`load_timestamped_csv` if there is a ``date`` column,
      :func:`load_long_frame` if there are ``unique_id, ds, y`` columns, else
      :func:`load_wide_csv`;
    - ``.parquet``: :func:`load_long_frame`.

    ``kwargs`` go to the chosen loader (e.g. ``start=``, ``freq=``, ``adj_csv=``).
    """
    path = _require_file(path, "data file")
    suffix = path.suffix.lower()
    loader: Any
    if suffix == ".npz":
        names, ndim = _npz_contents(path, kwargs.get("key", "data"))
        if META_KEY in names:
            loader = load_npz
        else:
            loader = load_grid if ndim == 4 else load_pems_npz
    elif suffix in (".h5", ".hdf5"):
        loader = load_metr_la_style if _is_pandas_hdf(path) else load_grid
    elif suffix == ".csv":
        columns = set(pd.read_csv(path, nrows=0).columns)
        if "date" in columns:
            loader = load_timestamped_csv
        elif {"unique_id", "ds", "y"} <= columns:
            loader = load_long_frame
        else:
            loader = load_wide_csv
    elif suffix in (".parquet", ".pq"):
        loader = load_long_frame
    else:
        raise DataError(
            f"unknown data file extension {suffix or '(none)'!r} of {path}",
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}, or call a loader of "
            "llm_st.data.loaders directly",
        )
    log.info("loading %s with %s", path, loader.__name__)
    return loader(path, **kwargs)
