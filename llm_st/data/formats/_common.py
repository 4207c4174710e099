"""Helpers shared by the format modules and :mod:`llm_st.data.graphs`.

File checks, cheap looks into CSV / ``.npz`` / HDF5 / Parquet files for the sniffing
rules and error messages, CSV reading that turns empty and header-only files into
:class:`~llm_st.errors.DataError`, and :func:`build`, which every loader ends with.
"""

from __future__ import annotations

import csv
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from llm_st.data.container import Adjacency, STData
from llm_st.errors import DataError, DataNotFoundError

# where the published files come from, for "file not found" messages
SOURCE_DCRNN = (
    "get it from github.com/liyaguang/DCRNN (metr-la.h5 / pems-bay.h5 through the links in its "
    "README, adj_mx*.pkl, graph_sensor_*.csv and distances_*.csv under data/sensor_graph/)"
)
SOURCE_ASTGCN = "get it from github.com/Davidham3/ASTGCN-2019-mxnet under data/PEMS0X/"
SOURCE_TGCN = "get it from github.com/lehaifeng/T-GCN under data/"
SOURCE_SZ_TAXI = "get it from github.com/Bounger2/ST-CGCN under data/SZ_taxi/"
SOURCE_ETT = "get it from github.com/zhouhaoyi/ETDataset under ETT-small/"
CHECK_PATH = "check the path"

_SNIFF_BYTES = 1 << 16  # how much of a text file the sniffing rules read at most


# --------------------------------------------------------------------------- files
def require_file(path: str | Path, what: str, how: str = CHECK_PATH) -> Path:
    """``path`` as a :class:`Path`; :class:`DataNotFoundError` naming ``what`` if it is no file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"{what} not found: {path}", how)
    return path


def is_blank(path: Path) -> bool:
    """True for a file without any content but whitespace (an empty file, too)."""
    size = path.stat().st_size
    if size > _SNIFF_BYTES:
        return False
    return not path.read_bytes().strip()


def shorten(items: Sequence[Any], limit: int = 10) -> str:
    """The first ``limit`` items joined by commas, for error messages."""
    names = [str(i) for i in items]
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- CSV
def csv_head(path: Path, rows: int = 2) -> list[list[str]]:
    """The first ``rows`` non-blank rows of a CSV, fields stripped; ``[]`` if unreadable.

    Reads at most the first 64 KiB, so sniffing a large file stays cheap.
    """
    try:
        with path.open(newline="") as fh:
            text = fh.read(_SNIFF_BYTES)
    except (OSError, UnicodeDecodeError):
        return []
    lines = text.splitlines()
    if len(text) == _SNIFF_BYTES and lines:
        lines = lines[:-1]  # the last line may be cut off
    head = []
    for row in csv.reader(lines):
        fields = [f.strip() for f in row]
        if any(fields):
            head.append(fields)
        if len(head) == rows:
            break
    return head


def csv_columns(path: Path) -> list[str]:
    """The fields of the first non-blank line of a CSV (its header, if it has one)."""
    head = csv_head(path, rows=1)
    return head[0] if head else []


def has_header(path: Path) -> bool:
    """True when the first field of the first line of a CSV is not a number."""
    columns = csv_columns(path)
    return bool(columns) and not is_number(columns[0])


def read_csv_frame(path: Path, layout: str, **read_kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv(path, **read_kwargs)`` with at least one data row, or a :class:`DataError`.

    Parameters
    ----------
    path
        The CSV file.
    layout
        What a valid file looks like, for the message (e.g. ``"a header 'date,OT' and one
        row per time step such as '2016-07-01 00:00:00,30.5'"``).
    """
    try:
        frame = pd.read_csv(path, **read_kwargs)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty: no header and no rows", f"write {layout}") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path} is not a well-formed CSV: {' '.join(str(exc).split())}", f"write {layout}"
        ) from exc
    if len(frame) == 0:
        raise DataError(
            f"{path} has a header ({shorten(frame.columns)}) but no data rows",
            f"add one row per time step: {layout}",
        )
    return frame


def numeric_frame(frame: pd.DataFrame, source: Path | str, fix: str) -> np.ndarray:
    """The frame's values as float64 ``[T, columns]``; non-numeric columns are an error.

    The message names the non-numeric columns and the first value that is not a number.
    """
    bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        column = frame[bad[0]]
        text = np.flatnonzero(column.notna() & pd.to_numeric(column, errors="coerce").isna())
        example = (
            f" (column {bad[0]!r} has {column.iloc[text[0]]!r} in data row {text[0] + 1})"
            if len(text)
            else ""
        )
        raise DataError(f"{source}: non-numeric column(s) {shorten(bad, 5)}{example}", fix)
    return frame.to_numpy(dtype=np.float64)


def timestamps(start: Any, periods: int, freq: str | None) -> pd.DatetimeIndex | None:
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


# --------------------------------------------------------------------------- archives
def npz_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Array name -> shape of an ``.npz`` archive, from the ``.npy`` headers only.

    ``None`` when the file is not a readable zip of ``.npy`` files.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            shapes = {}
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shapes[member[: -len(".npy")]] = read_header(fh)[0]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None
    return shapes


def main_array_ndims(path: Path, key: str = "data") -> set[int]:
    """Dimensions of array ``key`` of an ``.npz``, or of all its arrays when ``key`` is absent.

    Empty for files that are not ``.npz`` archives.
    """
    shapes = npz_shapes(path) or {}
    if key in shapes:
        return {len(shapes[key])}
    return {len(shape) for shape in shapes.values()}


def read_npz_array(path: Path, key: str) -> tuple[np.ndarray, list[str]]:
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


def hdf_contents(path: Path) -> tuple[bool, dict[str, tuple[int, ...]]] | None:
    """Whether an HDF5 file holds pandas objects, and its top-level dataset shapes.

    ``None`` when the file is not readable as HDF5.
    """
    try:
        with h5py.File(path, "r") as f:
            pandas_file = any("pandas_type" in f[k].attrs for k in f.keys())
            shapes = {k: f[k].shape for k in f.keys() if isinstance(f[k], h5py.Dataset)}
    except OSError:
        return None
    return pandas_file, shapes


def parquet_columns(path: Path) -> list[str] | None:
    """Column names from a Parquet file's schema, ``None`` when it is no Parquet file."""
    import pyarrow
    import pyarrow.parquet

    try:
        return list(pyarrow.parquet.read_schema(path).names)
    except (OSError, pyarrow.ArrowException):
        return None


def peek(path: Path) -> str:
    """What a file looks like inside, in a few words, for "no format recognises it" messages."""
    if is_blank(path):
        return "the file is empty"
    shapes = npz_shapes(path)
    if shapes is not None:
        arrays = [f"{name} {shape}" for name, shape in shapes.items()]
        return f"zip archive with arrays: {shorten(arrays, 6) or 'none'}"
    hdf = hdf_contents(path)
    if hdf is not None:
        kind = "pandas HDF5 file" if hdf[0] else "HDF5 file"
        datasets = [f"{name} {shape}" for name, shape in hdf[1].items()]
        return f"{kind} with top-level datasets: {shorten(datasets, 6) or 'none'}"
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1":
        return f"Parquet file with columns: {shorten(parquet_columns(path) or [])}"
    columns = csv_columns(path)
    if columns:
        return f"first line: {shorten(columns)}"
    return f"{path.stat().st_size} bytes that are neither text nor a known archive"


# --------------------------------------------------------------------------- result
def build(
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
    as missing, as do ``False`` entries of ``mask``. ``adjacency`` (``[N, N]`` or
    :class:`Adjacency`) and ``coords`` (``[N, 2]``) lose the dropped nodes' rows too.
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
            warnings.warn(
                f"{name}: dropped {len(dropped)} node(s) without any observation "
                f"({shorten(dropped, 5)})",
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
