"""llm-st's own .npz format: exact round trips, atomic writes, no silent overwrite."""

import numpy as np
import pandas as pd
import pytest

from llm_st.data import Adjacency, STData, detect_format, load, load_file, load_npz, save_npz
from llm_st.data.io import META_KEY
from llm_st.errors import DataError


def _graph_data(tz=None) -> STData:
    rng = np.random.default_rng(0)
    values = rng.normal(50, 10, size=(30, 4, 2)).astype(np.float32)
    values[3, 1, 0] = 0.0  # a missing reading (null value)
    mask = values != 0
    mask[7, 2, 1] = False  # masked although non-zero
    return STData(
        values=values,
        mask=mask,
        timestamps=pd.date_range("2012-03-01 00:05", periods=30, freq="5min", tz=tz),
        node_ids=["773869", "767541", "767542", "717447"],
        channels=["speed", "flow"],
        adjacency=Adjacency.from_edges(
            [0, 1, 2, 3], [1, 2, 3, 0], [0.5, 0.25, 1.0, 0.125], num_nodes=4
        ),
        coords=np.array(
            [[34.15497, -118.31829], [34.11621, -118.23799], [34.1, -118.2], [34.0, -118.1]]
        ),
        node_meta=pd.DataFrame(
            {
                "road": ["I-5", "I-10", "US-101", "I-405"],
                "lanes": [4, 3, 5, 4],
                "speed_limit": [65.0, 55.0, 60.5, 65.0],
            }
        ),
        description="Speeds in mph; Straße, 速度",
        name="toy-LA",
        null_value=0.0,
        extras={"spec": "METR-LA", "note": {"k": [1, 2]}},
    )


def _assert_same(a: STData, b: STData) -> None:
    assert a.values.dtype == b.values.dtype == np.float32
    assert np.array_equal(a.values, b.values) and np.array_equal(a.mask, b.mask)
    if a.timestamps is None:
        assert b.timestamps is None
    else:
        pd.testing.assert_index_equal(a.timestamps, b.timestamps, exact=True, check_freq=False)
    assert (a.freq, a.node_ids, a.channels, a.name, a.description) == (
        b.freq,
        b.node_ids,
        b.channels,
        b.name,
        b.description,
    )
    assert a.null_value == b.null_value and a.grid_shape == b.grid_shape
    if a.adjacency is None:
        assert b.adjacency is None
    else:
        assert a.adjacency.num_nodes == b.adjacency.num_nodes
        for field in ("src", "dst", "weight"):
            x, y = getattr(a.adjacency, field), getattr(b.adjacency, field)
            assert x.dtype == y.dtype and np.array_equal(x, y)
    assert (a.coords is None and b.coords is None) or np.array_equal(a.coords, b.coords)
    if a.node_meta is None:
        assert b.node_meta is None
    else:
        pd.testing.assert_frame_equal(a.node_meta, b.node_meta)


@pytest.mark.parametrize("tz", [None, "America/Los_Angeles"])
def test_round_trip_is_exact(tmp_path, tz):
    data = _graph_data(tz)
    path = save_npz(data, tmp_path / "toy.npz")
    back = load_npz(path)
    _assert_same(data, back)
    assert back.extras == {"spec": "METR-LA", "note": {"k": [1, 2]}}
    assert back.missing_fraction == pytest.approx(2 / data.values.size)
    # load() recognises the format by its metadata entry
    assert detect_format(path).name == "native_npz"
    _assert_same(data, load(str(path)))


def test_round_trip_grid_without_time(tmp_path):
    frames = np.arange(3 * 2 * 2 * 3, dtype=np.float32).reshape(3, 2, 2, 3) + 1
    data = STData.from_grid(frames, channels=["inflow", "outflow"], name="grid")
    back = load_npz(save_npz(data, tmp_path / "grid.npz"))
    _assert_same(data, back)
    assert back.grid_shape == (2, 3) and np.array_equal(back.to_grid(), frames)


def test_archive_holds_plain_arrays_only(tmp_path):
    path = save_npz(_graph_data(), tmp_path / "toy.npz")
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == {
            "values",
            "mask",
            "timestamps",
            "adj_src",
            "adj_dst",
            "adj_weight",
            "coords",
            META_KEY,
        }
        assert all(archive[k].dtype != object for k in archive.files)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    path = tmp_path / "toy.npz"
    first = _graph_data()
    save_npz(first, path)
    second = first.with_values(first.values + 1)
    with pytest.raises(DataError, match="already exists.*overwrite=True"):
        save_npz(second, path)
    assert np.array_equal(load_npz(path).values, first.values)
    save_npz(second, path, overwrite=True)
    assert np.array_equal(load_npz(path).values, first.values + 1)
    # the temporary file of each atomic write is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.npz"]


def test_non_json_extras_are_skipped_with_a_warning(tmp_path):
    data = _graph_data()
    data.extras = {"spec": "METR-LA", "array": np.zeros(3)}
    with pytest.warns(UserWarning, match="extras array are not plain JSON"):
        path = save_npz(data, tmp_path / "toy.npz")
    assert load_npz(path).extras == {"spec": "METR-LA"}


def test_bad_targets_and_foreign_archives(tmp_path):
    with pytest.raises(DataError, match=r"end in \.npz"):
        save_npz(_graph_data(), tmp_path / "toy.h5")
    np.savez(tmp_path / "other.npz", data=np.zeros((4, 2, 1)))
    with pytest.raises(DataError, match="not an llm-st data file"):
        load_npz(tmp_path / "other.npz")
    # without the metadata entry it is not sniffed as llm-st's own, and forcing it says why
    assert detect_format(tmp_path / "other.npz").name == "pems_npz"
    with pytest.raises(DataError, match=r"no __llm_st_meta__ entry.*llm_st\.data\.load_file"):
        load_file(tmp_path / "other.npz", format="native_npz")
