"""ST data: the container, file formats as plug-ins (:mod:`llm_st.data.formats`), the
graphs that come with them, llm-st's own file format and the named-dataset registry
with its single entry point :func:`load`."""

from llm_st.data.container import Adjacency, STData, grid_adjacency
from llm_st.data.formats import (
    FileFormat,
    detect_format,
    get_format,
    list_formats,
    load_ett_csv,
    load_file,
    load_grid,
    load_long_frame,
    load_metr_la_style,
    load_pems_npz,
    load_sz_taxi,
    load_timestamped_csv,
    load_wide_csv,
    register_format,
    unregister_format,
)
from llm_st.data.graphs import (
    gaussian_kernel_adjacency,
    load_distance_graph,
    load_graph_pickle,
    load_sensor_locations,
)
from llm_st.data.io import load_npz, save_npz
from llm_st.data.registry import (
    DatasetSpec,
    SplitSpec,
    data_root,
    default_data_dir,
    get_spec,
    list_datasets,
    load,
    locate_files,
)
from llm_st.data.safe_pickle import load_plain_pickle

__all__ = [
    "Adjacency",
    "DatasetSpec",
    "FileFormat",
    "STData",
    "SplitSpec",
    "data_root",
    "default_data_dir",
    "detect_format",
    "gaussian_kernel_adjacency",
    "get_format",
    "get_spec",
    "grid_adjacency",
    "list_datasets",
    "list_formats",
    "load",
    "load_distance_graph",
    "load_ett_csv",
    "load_file",
    "load_graph_pickle",
    "load_grid",
    "load_long_frame",
    "load_metr_la_style",
    "load_npz",
    "load_pems_npz",
    "load_plain_pickle",
    "load_sensor_locations",
    "load_sz_taxi",
    "load_timestamped_csv",
    "load_wide_csv",
    "locate_files",
    "register_format",
    "save_npz",
    "unregister_format",
]
