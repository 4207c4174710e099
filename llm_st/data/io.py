"""llm-st's own lossless file format for :class:`~llm_st.data.container.STData`.

One ``.npz`` archive of plain arrays plus a JSON metadata string, readable with
``np.load(allow_pickle=False)`` (nothing in it is unpickled):

=================  ==============================================================
array              content
=================  ==============================================================
``values``         ``[T, N, C]`` float32
``mask``           ``[T, N, C]`` bool
``timestamps``     ``[T]`` datetime64 (UTC wall time when the index has a time zone)
``adj_src``        ``[E]`` int64, with ``adj_dst`` and ``adj_weight`` (float32)
``coords``         ``[N, 2]`` float64
``__llm_st_meta__``  0-d string: JSON with name, description, freq, node ids,
                   channels, null value, grid shape, adjacency size, time zone,
                   node metadata (pandas "table" JSON: records plus their schema)
                   and the JSON-serialisable extras
=================  ==============================================================
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llm_st.data.container import Adjacency, STData
from llm_st.errors import DataError, DataNotFoundError

META_KEY = "__llm_st_meta__"
FORMAT = "llm-st-npz"
FORMAT_VERSION = 1


def _json_extras(extras: dict[str, Any], name: str) -> dict[str, Any]:
    """The entries of ``extras`` that survive a JSON round trip (others: skipped, warned)."""
    kept, skipped = {}, []
    for key, value in extras.items():
        try:
            if json.loads(json.dumps(value)) != value:
                raise TypeError
        except (TypeError, ValueError):
            skipped.append(str(key))
            continue
        kept[str(key)] = value
    if skipped:
        warnings.warn(
            f"{name}: extras {', '.join(skipped)} are not plain JSON data and were not saved",
            stacklevel=3,
        )
    return kept


def save_npz(data: STData, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` (``.npz``) losslessly and atomically.

    The archive is written to a temporary file in the target folder and moved into
    place with ``os.replace``, so a crash never leaves a half-written file at ``path``.

    Parameters
    ----------
    data
        The data to save; ``values`` ``[T, N, C]``.
    path
        Target file, ending in ``.npz``.
    overwrite
        Replace an existing file; by default an existing file is an error.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() != ".npz":
        raise DataError(f"llm-st data files end in .npz, got {path}", f"save to {path.name}.npz")
    if path.exists() and not overwrite:
        raise DataError(
            f"{path} already exists (FileExistsError)",
            "pass overwrite=True to replace it, or choose another path",
        )
    if not path.parent.is_dir():
        raise DataNotFoundError(f"folder {path.parent} does not exist", "create it first")

    arrays: dict[str, np.ndarray] = {"values": data.values, "mask": data.mask}
    tz = None
    if data.timestamps is not None:
        tz = None if data.timestamps.tz is None else str(data.timestamps.tz)
        naive = data.timestamps if tz is None else data.timestamps.tz_convert(None)
        arrays["timestamps"] = naive.to_numpy()
    adjacency = data.adjacency
    if adjacency is not None:
        arrays.update(adj_src=adjacency.src, adj_dst=adjacency.dst, adj_weight=adjacency.weight)
    if data.coords is not None:
        arrays["coords"] = data.coords
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": data.name,
        "description": data.description,
        "freq": data.freq,
        "node_ids": list(data.node_ids),
        "channels": list(data.channels),
        "null_value": data.null_value,
        "grid_shape": None if data.grid_shape is None else list(data.grid_shape),
        "adjacency_num_nodes": None if adjacency is None else adjacency.num_nodes,
        "tz": tz,
        "node_meta": None
        if data.node_meta is None
        else data.node_meta.to_json(orient="table", index=False),
        "extras": _json_extras(data.extras, data.name),
    }
    arrays[META_KEY] = np.array(json.dumps(meta))

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_npz(path: str | Path) -> STData:
    """Read a file written by :func:`save_npz` (``np.load(allow_pickle=False)``).

    Returns
    -------
    STData
        Equal to the saved data in values, mask, timestamps, frequency, node ids,
        channels, adjacency, coordinates, grid shape, node metadata, name,
        description, null value and the JSON extras.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(
            f"llm-st data file not found: {path}", "check the path (save it with save_npz)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(
            f"cannot read {path} as .npz without unpickling: {exc}", "check the file"
        ) from exc
    if META_KEY not in arrays:
        raise DataError(
            f"{path} is not an llm-st data file (no {META_KEY} entry)",
            "load published formats with llm_st.data.load or llm_st.data.load_file",
        )
    meta = json.loads(str(arrays[META_KEY]))
    if meta.get("format") != FORMAT or meta.get("version", 0) > FORMAT_VERSION:
        raise DataError(
            f"{path} has format {meta.get('format')!r} version {meta.get('version')}, this llm-st "
            f"reads {FORMAT!r} up to version {FORMAT_VERSION}",
            "upgrade llm-st",
        )
    timestamps = None
    if "timestamps" in arrays:
        timestamps = pd.DatetimeIndex(arrays["timestamps"])
        if meta["tz"] is not None:
            timestamps = timestamps.tz_localize("UTC").tz_convert(meta["tz"])
    adjacency = None
    if meta["adjacency_num_nodes"] is not None:
        adjacency = Adjacency(
            arrays["adj_src"], arrays["adj_dst"], arrays["adj_weight"], meta["adjacency_num_nodes"]
        )
    node_meta = None
    if meta["node_meta"] is not None:
        node_meta = pd.read_json(io.StringIO(meta["node_meta"]), orient="table")
    return STData(
        values=arrays["values"],
        mask=arrays["mask"],
        timestamps=timestamps,
        freq=meta["freq"],
        node_ids=meta["node_ids"],
        channels=meta["channels"],
        adjacency=adjacency,
        coords=arrays.get("coords"),
        node_meta=node_meta,
        description=meta["description"],
        name=meta["name"],
        null_value=meta["null_value"],
        grid_shape=None if meta["grid_shape"] is None else tuple(meta["grid_shape"]),
        extras=meta["extras"],
    )
