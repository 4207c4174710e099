"""Grids ``(T, C, H, W)`` in ``.npz`` or ``.h5`` (the TaxiBJ / BikeNYC layout).

Sniffing rule: an ``.npz`` or a non-pandas HDF5 file whose array / dataset ``data`` (or,
without ``data``, any top-level one) has 4 dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from llm_st.data.container import STData
from llm_st.data.formats._common import (
    hdf_contents,
    main_array_ndims,
    read_npz_array,
    require_file,
    timestamps,
)
from llm_st.data.formats.base import FileFormat, register_format
from llm_st.errors import DataError

TAXIBJ_SLOT = "30min"


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
    path = require_file(path, "grid file")
    suffix = path.suffix.lower()
    dates = None
    if suffix == ".npz":
        frames, names = read_npz_array(path, key)
        if date_key in names:
            dates, _ = read_npz_array(path, date_key)
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
            "add a channel axis for single-channel grids; (T, N, C) series load with "
            "format='pems_npz'",
        )
    if dates is not None:
        freq = freq or TAXIBJ_SLOT
        stamps = _slot_timestamps(dates, freq, path)
        if len(stamps) != frames.shape[0]:
            raise DataError(
                f"{path}: {len(stamps)} dates for {frames.shape[0]} frames", "check the file"
            )
    else:
        stamps = timestamps(start, frames.shape[0], freq)
    return STData.from_grid(
        frames,
        channels=channels,
        timestamps=stamps,
        freq=freq,
        null_value=null_value,
        name=name or path.stem,
        description=description,
    )


def _sniff(path: Path) -> bool:
    if path.name.lower().endswith(".npz"):
        return 4 in main_array_ndims(path)
    contents = hdf_contents(path)
    if contents is None or contents[0]:
        return False
    shapes = contents[1]
    ndims = {len(shapes["data"])} if "data" in shapes else {len(s) for s in shapes.values()}
    return 4 in ndims


FORMAT = register_format(
    FileFormat(
        name="grid",
        extensions=(".npz", ".h5", ".hdf5"),
        sniff=_sniff,
        load=load_grid,
        layout="array / dataset 'data' of shape (T, C, H, W), optional 'date' of YYYYMMDDSS "
        "strings (TaxiBJ; another array: key=)",
        priority=60,
    )
)
