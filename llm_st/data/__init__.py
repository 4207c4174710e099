"""ST data: the container, loaders per published format, llm-st's own file format and
the named-dataset registry with its single entry point :func:`load`."""

from llm_st.data.container import Adjacency, STData, grid_adjacency
from llm_st.data.io import load_npz, save_npz
from llm_st.data.loaders import (
    gaussian_kernel_adjacency,
    load_distance_graph,
    load_ett_csv,
    load_file,
    load_graph_pickle,
    load_grid,
    load_long_frame,
    load_metr_la_style,
    load_pems_npz,
    load_sensor_locations,
    load_sz_taxi,
    load_timestamped_csv,
    load_wide_csv,
)
from llm_st.data.registry import DatasetSpec, SplitSpec, data_root, get_spec, list_datasets, load
from llm_st.data.safe_pickle import load_plain_pickle

__all__ = [
    "Adjacency",
    "DatasetSpec",
    "STData",
    "SplitSpec",
    "data_root",
    "gaussian_kernel_adjacency",
    "get_spec",
    "grid_adjacency",
    "list_datasets",
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
    "save_npz",
]
