"""PeMS ``.npz`` as published with ASTGCN (PEMS03/04/07/08) + ``distance.csv``.

Sniffing rule: an ``.npz`` whose array ``data`` (or, without ``data``, any array) has
2 or 3 dimensions, ``(T, N)`` or ``(T, N, C)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_st.data.container import STData
from llm_st.data.formats._common import (
    SOURCE_ASTGCN,
    build,
    main_array_ndims,
    read_npz_array,
    require_file,
    timestamps,
)
from llm_st.data.formats.base import FileFormat, register_format
from llm_st.data.graphs import load_distance_graph
from llm_st.errors import DataError

PEMS_CHANNELS = ("flow", "occupancy", "speed")


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
        Gaussian-kernel graph by :func:`~llm_st.data.graphs.gaussian_kernel_adjacency`
        (edges directed as listed, diagonal 1). Note that the PeMS files list direct
        neighbours only, so the threshold drops the longer links: 209 of PEMS04's 340
        listed pairs and 137 of PEMS08's 277 distinct ones keep a weight >= 0.1.
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
    path = require_file(npz_path, "PeMS .npz file", SOURCE_ASTGCN)
    array, _ = read_npz_array(path, key)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise DataError(
            f"{path}: array {key!r} has shape {array.shape}, expected (T, N, C)",
            "grid arrays (T, C, H, W) load with format='grid'",
        )
    if channels is None and array.shape[2] == len(PEMS_CHANNELS):
        channels = list(PEMS_CHANNELS)
    adjacency = None
    if distance_csv is not None:
        adjacency = load_distance_graph(
            distance_csv, num_nodes=array.shape[1], sigma=sigma, threshold=threshold
        )
    return build(
        array,
        name=name or path.stem,
        drop_empty_nodes=drop_empty_nodes,
        null_value=null_value,
        adjacency=adjacency,
        timestamps=timestamps(start, array.shape[0], freq),
        freq=freq,
        channels=channels,
        description=description,
    )


def _sniff(path: Path) -> bool:
    return bool(main_array_ndims(path) & {2, 3})


FORMAT = register_format(
    FileFormat(
        name="pems_npz",
        extensions=(".npz",),
        sniff=_sniff,
        load=load_pems_npz,
        layout="array 'data' of shape (T, N, C) or (T, N) (PEMS04.npz; graph: distance_csv=, "
        "timestamps: start= and freq=)",
        priority=30,
    )
)
