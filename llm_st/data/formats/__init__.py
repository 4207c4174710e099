"""File formats as plug-ins: one module per format, each registering a :class:`FileFormat`.

:func:`load_file` asks the registered formats in priority order and loads a file with
the first whose extension and sniffing rule match (``format=<name>`` forces one):

===============  =====  ==================  =================================================
format           prio.  extensions          layout (loader)
===============  =====  ==================  =================================================
``native_npz``   10     .npz                llm-st's own archive (:func:`~llm_st.data.io.load_npz`)
``sz_taxi``      20     .npz                ``SZ_taxi.npz`` (:func:`load_sz_taxi`)
``pems_npz``     30     .npz                ``data`` ``(T, N, C)`` (:func:`load_pems_npz`)
``dcrnn_h5``     30     .h5 .hdf5           pandas frame, METR-LA (:func:`load_metr_la_style`)
``ett_csv``      30     .csv                ``date`` + value columns (:func:`load_timestamped_csv`)
``long_frame``   40     .csv .parquet .pq   ``unique_id, ds, y`` (:func:`load_long_frame`)
``wide_csv``     50     .csv                node columns, no time (:func:`load_wide_csv`)
``grid``         60     .npz .h5 .hdf5      ``data`` ``(T, C, H, W)`` (:func:`load_grid`)
===============  =====  ==================  =================================================

Every module of this package except :mod:`~llm_st.data.formats.base` and the private
helpers is imported here and registers its format, so a new format is one new module
ending in a :func:`register_format` call (or that call at run time, from user code).
Loaders never reorder rows: unsorted or duplicated timestamps reach
:class:`~llm_st.data.container.STData`, which rejects them with the offending row.
Nodes without a single observation are rejected too, unless ``drop_empty_nodes=True``
drops them (with a warning) together with their graph rows, coordinates and ids.
"""

import importlib
import pkgutil

from llm_st.data.formats.base import (
    FileFormat,
    detect_format,
    get_format,
    list_formats,
    load_file,
    register_format,
    unregister_format,
)
from llm_st.data.formats.dcrnn_h5 import load_metr_la_style
from llm_st.data.formats.ett_csv import load_ett_csv, load_timestamped_csv
from llm_st.data.formats.grid import load_grid
from llm_st.data.formats.long_frame import load_long_frame
from llm_st.data.formats.pems_npz import load_pems_npz
from llm_st.data.formats.sz_taxi import load_sz_taxi
from llm_st.data.formats.wide_csv import load_wide_csv


def _import_format_modules() -> None:
    """Import every format module of this package; each registers its format."""
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_format_modules()

__all__ = [
    "FileFormat",
    "detect_format",
    "get_format",
    "list_formats",
    "load_ett_csv",
    "load_file",
    "load_grid",
    "load_long_frame",
    "load_metr_la_style",
    "load_pems_npz",
    "load_sz_taxi",
    "load_timestamped_csv",
    "load_wide_csv",
    "register_format",
    "unregister_format",
]
