import numpy as np
import pandas as pd
import pytest

from llm_st import Adjacency, DataError, STData
from llm_st.data.container import grid_adjacency


def make(T=20, N=4, C=2, **kw):
    rng = np.random.default_rng(0)
    return STData(
        rng.normal(size=(T, N, C)),
        timestamps=pd.date_range("2024-01-01", periods=T, freq="15min"),
        **kw,
    )


def test_basic_fields_and_freq():
    d = make()
    assert d.shape == (20, 4, 2) and d.values.dtype == np.float32
    assert d.freq == "15min" and d.steps_per_day() == 96
    assert d.node_ids == ["0", "1", "2", "3"] and d.channels == ["c0", "c1"]
    assert d.missing_fraction == 0.0


def test_null_value_and_nan_are_masked():
    v = np.ones((5, 2, 1))
    v[0, 0, 0] = 0.0
    v[1, 1, 0] = np.nan
    with pytest.warns(UserWarning, match="1 NaN/infinite"):
        d = STData(v, null_value=0.0)
    assert d.mask.sum() == 8
    assert not d.mask[0, 0, 0] and not d.mask[1, 1, 0]
    assert d.values[1, 1, 0] == 0.0
    assert d.missing_fraction == pytest.approx(2 / 10)


def test_views_share_memory():
    d = make()
    s = d.time_slice(5, 10)
    assert np.shares_memory(s.values, d.values) and np.shares_memory(s.mask, d.mask)
    assert s.num_steps == 5 and s.timestamps[0] == d.timestamps[5]
    n = d.select_nodes(slice(1, 3))
    assert np.shares_memory(n.values, d.values) and n.node_ids == ["1", "2"]


def test_select_nodes_keeps_graph_consistent():
    adj = np.array([[0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 3], [4, 0, 0, 0]], dtype=float)
    d = make(adjacency=adj, coords=np.arange(8.0).reshape(4, 2))
    sub = d.select_nodes([2, 1])
    np.testing.assert_array_equal(sub.adjacency.to_dense(), [[0, 0], [2, 0]])
    np.testing.assert_array_equal(sub.coords, [[4, 5], [2, 3]])
    np.testing.assert_array_equal(sub.values, d.values[:, [2, 1]])


def test_adjacency_dense_roundtrip_and_neighbors():
    m = np.array([[1, 0.5, 0.0], [0.2, 1, 0.9], [0.0, 0.3, 1]], dtype=np.float32)
    a = Adjacency.from_dense(m)
    np.testing.assert_array_equal(a.to_dense(), m)
    assert a.num_edges == 4  # off-diagonal non-zeros
    assert not a.is_symmetric()
    idx, w = a.neighbors(1)
    np.testing.assert_array_equal(idx, [2, 0])  # max(out, in): 0.9 vs 0.5
    np.testing.assert_allclose(w, [0.9, 0.5])
    idx, _ = a.neighbors(1, k=1, direction="in")
    np.testing.assert_array_equal(idx, [0])


def test_grid_roundtrip_and_adjacency():
    frames = np.random.default_rng(1).random((6, 2, 3, 4)).astype(np.float32)
    d = STData.from_grid(frames, channels=["inflow", "outflow"])
    assert d.shape == (6, 12, 2) and d.grid_shape == (3, 4)
    np.testing.assert_array_equal(d.to_grid(), frames)
    # 3x4 grid: 3*3 horizontal + 2*4 vertical undirected edges = 17, stored both ways
    assert d.num_edges == 34 and grid_adjacency(3, 4).is_symmetric()
    assert d.values[0, 1 * 4 + 2, 0] == frames[0, 0, 1, 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"adjacency": np.eye(3)}, "adjacency is for 3 nodes but the data have 4"),
        ({"node_ids": ["a", "b"]}, "2 node ids for 4 nodes"),
        (
            {"timestamps": pd.DatetimeIndex(["2024-01-02", "2024-01-01", "2024-01-03"])},
            "not sorted",
        ),
        (
            {"timestamps": pd.DatetimeIndex(["2024-01-01", "2024-01-01", "2024-01-03"])},
            "duplicated",
        ),
        ({"coords": np.zeros((3, 2))}, "coords must have shape"),
    ],
)
def test_bad_input_errors(kwargs, message):
    T = len(kwargs["timestamps"]) if "timestamps" in kwargs else 10
    with pytest.raises(DataError, match=message):
        STData(np.ones((T, 4, 1)), **kwargs)


def test_node_without_observations_is_an_error():
    v = np.ones((10, 3, 1))
    v[:, 1] = np.nan
    with (
        pytest.warns(UserWarning),
        pytest.raises(DataError, match="1 node.*no observations.*drop_empty_nodes"),
    ):
        STData(v, node_ids=["a", "b", "c"])


def test_bad_shapes():
    with pytest.raises(DataError, match="from_grid"):
        STData(np.ones((2, 3, 4, 5)))
    with pytest.raises(DataError, match="empty"):
        STData(np.ones((0, 3, 1)))
