"""Loaders: the real benchmark files under $LLM_ST_DATA, small files in the published
layouts where the real ones are too large to carry, and every bad input's error."""

import csv
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from llm_st.data import (
    gaussian_kernel_adjacency,
    load,
    load_distance_graph,
    load_ett_csv,
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
from llm_st.errors import DataError, DataNotFoundError

ETT_COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


# --------------------------------------------------------------------------- real files
@pytest.mark.parametrize("name", ["ETTh1", "ETTh2"])
def test_real_ett(shared_data, name):
    path = shared_data / "ETT" / f"{name}.csv"
    data = load_ett_csv(path)
    assert data.shape == (17420, 7, 1) and data.values.dtype == np.float32
    assert data.node_ids == ETT_COLUMNS and data.channels == ["value"]
    assert data.freq == "h"
    assert data.timestamps[0] == pd.Timestamp("2016-07-01 00:00")
    assert data.timestamps[-1] == pd.Timestamp("2018-06-26 19:00")
    assert np.all(np.diff(data.timestamps.asi8) == np.diff(data.timestamps.asi8)[0])
    with path.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["date", *ETT_COLUMNS]
    for i in (0, 1, 17419):
        np.testing.assert_array_equal(
            data.values[i, :, 0], np.float32([float(x) for x in rows[i + 1][1:]])
        )
    assert data.mask.all()


def test_real_losloop(shared_data):
    folder = shared_data / "LosLoop"
    data = load("LosLoop", data_dir=shared_data)
    assert data.shape == (2016, 207, 1) and data.extras["spec"] == "LosLoop"
    assert data.freq == "5min"
    assert data.timestamps[0] == pd.Timestamp("2012-03-01 00:00")
    assert data.timestamps[-1] == pd.Timestamp("2012-03-07 23:55")
    with (folder / "los_speed.csv").open() as fh:
        header, first = next(csv.reader(fh)), next(csv.reader(fh))
    assert data.node_ids == header and header[0] == "773869"
    np.testing.assert_array_equal(data.values[0, :, 0], np.float32([float(x) for x in first]))
    assert data.mask.all()  # imputed, no zeros
    dense = data.adjacency.to_dense()
    raw = np.loadtxt(folder / "los_adj.csv", delimiter=",")
    assert dense.shape == (207, 207) and np.allclose(dense, raw)
    # README calls it 0/1; the published file is a weighted kernel: symmetric, diagonal 1, (0, 1]
    assert np.all(np.diag(dense) == 1) and np.allclose(dense, dense.T)
    assert dense.min() == 0 and dense.max() == 1 and data.adjacency.num_edges == 2833 - 207


def test_real_sz_taxi(shared_data):
    folder = shared_data / "SZ-taxi"
    raw = np.load(folder / "SZ_taxi.npz", allow_pickle=False)["data"]
    assert raw.shape == (2976, 156, 1) and raw.dtype == np.float64
    data = load("SZ-taxi", data_dir=shared_data)
    assert data.shape == (2976, 156, 1) and data.channels == ["speed"] and data.null_value == 0.0
    assert data.freq == "15min"
    assert data.timestamps[0] == pd.Timestamp("2015-01-01 00:00")
    assert data.timestamps[-1] == pd.Timestamp("2015-01-31 23:45")
    zeros = float((raw == 0).mean())
    assert 0.24 < zeros < 0.26 and data.missing_fraction == pytest.approx(zeros)
    assert np.all(data.values[data.mask] > 0)
    np.testing.assert_array_equal(data.values, raw.astype(np.float32))
    dense = data.adjacency.to_dense()
    assert dense.shape == (156, 156) and set(np.unique(dense)) == {0.0, 1.0}
    assert np.all(np.diag(dense) == 0) and not data.adjacency.is_symmetric()
    # zeros as observations on request
    assert load_sz_taxi(folder / "SZ_taxi.npz", null_value=None).missing_fraction == 0.0


def test_real_metr_la_graph_and_locations(shared_data):
    folder = shared_data / "METR-LA"
    ids, adj = load_graph_pickle(folder / "adj_mx.pkl")
    assert len(ids) == 207 and adj.dtype == np.float32 and adj.shape == (207, 207)
    assert np.all(np.diag(adj) == 1) and not np.allclose(adj, adj.T)
    assert ids == (folder / "graph_sensor_ids.txt").read_text().strip().split(",")
    locations = load_sensor_locations(folder / "graph_sensor_locations.csv")
    assert len(locations) == 207 and list(locations.index[:2]) == ["773869", "767541"]
    np.testing.assert_array_equal(locations.loc["773869"].to_numpy(), [34.15497, -118.31829])


def test_real_pems_bay_graph_from_distances(shared_data):
    folder = shared_data / "PEMS-BAY"
    ids, adj = load_graph_pickle(folder / "adj_mx_bay.pkl")
    assert len(ids) == 325 and adj.shape == (325, 325) and adj.dtype == np.float32
    locations = load_sensor_locations(folder / "graph_sensor_locations_bay.csv")  # no header
    assert len(locations) == 325 and locations.index[0] == "400001"
    np.testing.assert_array_equal(locations.loc["400001"].to_numpy(), [37.364085, -121.901149])
    assert len((folder / "distances_bay_2017.csv").read_text().splitlines()) == 8358
    kernel = load_distance_graph(folder / "distances_bay_2017.csv", node_ids=ids)
    assert kernel.num_nodes == 325
    dense = kernel.to_dense()
    # DCRNN's published graph is this kernel (sigma = std of the distances, threshold 0.1)
    np.testing.assert_array_equal(dense > 0, adj > 0)
    np.testing.assert_allclose(dense, adj, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "rows", "distinct", "nodes"), [("PEMS04", 340, 340, 307), ("PEMS08", 295, 277, 170)]
)
def test_real_pems_distances(shared_data, name, rows, distinct, nodes):
    path = shared_data / name / "distance.csv"
    table = pd.read_csv(path)
    assert list(table.columns) == ["from", "to", "cost"] and len(table) == rows
    assert int(table[["from", "to"]].max().max()) == nodes - 1
    last = table.drop_duplicates(["from", "to"], keep="last")
    assert len(last) == distinct
    graph = load_distance_graph(path, num_nodes=nodes)
    sigma = last["cost"].std(ddof=0)
    expected = np.exp(-((last["cost"].to_numpy() / sigma) ** 2))
    kept = expected >= 0.1
    dense = graph.to_dense()
    assert graph.num_nodes == nodes and np.all(np.diag(dense) == 1)
    assert graph.num_edges == int(kept.sum())
    np.testing.assert_allclose(
        dense[last["from"].to_numpy()[kept], last["to"].to_numpy()[kept]], expected[kept], rtol=1e-6
    )


# --------------------------------------------------------------------------- Gaussian kernel
def test_gaussian_kernel_three_nodes_by_hand():
    src, dst, dist = [0, 1, 0], [1, 2, 2], [1.0, 2.0, 3.0]
    # sigma = std(1, 2, 3) = sqrt(2/3): w01 = exp(-1.5); w12 = exp(-6), w02 = exp(-13.5) < 0.1
    dense = gaussian_kernel_adjacency(src, dst, dist, num_nodes=3).to_dense()
    expected = np.array([[1, np.exp(-1.5), 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    np.testing.assert_allclose(dense, expected, rtol=1e-6)
    # sigma = 2: w01 = exp(-1/4), w12 = exp(-1), w02 = exp(-9/4) = 0.105 (kept at 0.1, not 0.2)
    dense = gaussian_kernel_adjacency(src, dst, dist, 3, sigma=2.0).to_dense()
    expected = np.array([[1, np.exp(-0.25), np.exp(-2.25)], [0, 1, np.exp(-1)], [0, 0, 1]])
    np.testing.assert_allclose(dense, expected, rtol=1e-6)
    assert (
        gaussian_kernel_adjacency(src, dst, dist, 3, sigma=2.0, threshold=0.2).to_dense()[0, 2] == 0
    )
    # a repeated pair keeps its last distance
    dense = gaussian_kernel_adjacency([0, 0], [1, 1], [5.0, 2.0], 2, sigma=2.0).to_dense()
    assert dense[0, 1] == pytest.approx(np.exp(-1))
    with pytest.raises(DataError, match="sigma=0.0 is not positive"):
        gaussian_kernel_adjacency([0], [1], [3.0], 2)
    with pytest.raises(DataError, match="non-negative"):
        gaussian_kernel_adjacency([0], [1], [-3.0], 2, sigma=1.0)


# --------------------------------------------------------------------------- written files
SENSORS = ["773869", "767541", "767542", "717447", "717446"]


def _speed_frame(num_steps: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    speeds = rng.uniform(20, 70, size=(num_steps, len(SENSORS))).round(2)
    speeds[2, 1] = speeds[5, 3] = 0.0  # missing readings
    index = pd.date_range("2012-03-01", periods=num_steps, freq="5min")
    return pd.DataFrame(speeds, index=index, columns=SENSORS)


def _write_dcrnn(folder: Path, h5: str, pkl: str, locations: str, key: str, header: bool):
    """Small files in the METR-LA / PEMS-BAY layout; the graph lists the sensors reversed."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = _speed_frame()
    frame.to_hdf(folder / h5, key=key)
    graph_ids = SENSORS[::-1]
    adj = np.arange(25, dtype=np.float32).reshape(5, 5) / 25 + np.eye(5, dtype=np.float32)
    with (folder / pkl).open("wb") as fh:
        pickle.dump([graph_ids, {s: i for i, s in enumerate(graph_ids)}, adj], fh, protocol=2)
    lat = {s: 34.0 + i / 10 for i, s in enumerate(SENSORS)}
    lines = ["index,sensor_id,latitude,longitude"] if header else []
    for i, s in enumerate(graph_ids):
        lines.append((f"{i}," if header else "") + f"{s},{lat[s]},{-118.0 - lat[s] / 100}")
    (folder / locations).write_text("\n".join(lines) + "\n")
    return frame, graph_ids, adj, lat


def _check_dcrnn(data, frame, graph_ids, adj, lat):
    assert data.shape == (12, 5, 1) and data.node_ids == SENSORS and data.channels == ["speed"]
    np.testing.assert_array_equal(data.values[:, :, 0], frame.to_numpy(np.float32))
    assert not data.mask[2, 1, 0] and not data.mask[5, 3, 0] and data.mask.sum() == 60 - 2
    assert data.null_value == 0.0 and data.freq == "5min"
    pd.testing.assert_index_equal(data.timestamps, frame.index, check_freq=False)
    pos = [graph_ids.index(s) for s in SENSORS]
    np.testing.assert_array_equal(data.adjacency.to_dense(), adj[np.ix_(pos, pos)])
    np.testing.assert_allclose(data.coords[:, 0], [lat[s] for s in SENSORS])


def test_metr_la_style_files_through_registry_and_path(tmp_path):
    expected = _write_dcrnn(
        tmp_path / "METR-LA", "metr-la.h5", "adj_mx.pkl", "graph_sensor_locations.csv", "df", True
    )
    data = load("metr-la", data_dir=tmp_path)
    _check_dcrnn(data, *expected)
    assert (
        data.name == "METR-LA"
        and data.extras["spec"] == "METR-LA"
        and "Los Angeles" in data.description
    )
    folder = tmp_path / "METR-LA"
    direct = load(
        str(folder / "metr-la.h5"),
        adj_pkl_path=folder / "adj_mx.pkl",
        locations_csv=folder / "graph_sensor_locations.csv",
    )
    _check_dcrnn(direct, *expected)
    assert direct.name == "metr-la" and "spec" not in direct.extras


def test_pems_bay_style_files_through_registry(tmp_path):
    expected = _write_dcrnn(
        tmp_path / "PEMS-BAY",
        "pems-bay.h5",
        "adj_mx_bay.pkl",
        "graph_sensor_locations_bay.csv",
        "speed",
        False,
    )
    _check_dcrnn(load("PEMS-BAY", data_dir=tmp_path), *expected)


def test_metr_la_style_id_mismatch_and_malicious_graph(tmp_path):
    folder = tmp_path / "METR-LA"
    _write_dcrnn(folder, "metr-la.h5", "adj_mx.pkl", "graph_sensor_locations.csv", "df", True)
    ids = ["1", "2", "3", "4", "5"]
    with (tmp_path / "other.pkl").open("wb") as fh:
        pickle.dump(
            [ids, {s: i for i, s in enumerate(ids)}, np.eye(5, dtype=np.float32)], fh, protocol=2
        )
    with pytest.raises(DataError, match=r"sensor ids .* differ: only in data \['773869'"):
        load_metr_la_style(folder / "metr-la.h5", tmp_path / "other.pkl")

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with (folder / "adj_mx.pkl").open("wb") as fh:
        pickle.dump([SENSORS, Payload(), np.eye(5)], fh, protocol=2)
    with pytest.raises(DataError, match=r"refused to unpickle global (posix|os)\.system"):
        load("METR-LA", data_dir=tmp_path)
    assert not marker.exists()


def _write_pems(path: Path, num_steps: int = 24, num_nodes: int = 4) -> np.ndarray:
    rng = np.random.default_rng(2)
    data = rng.uniform(1, 300, size=(num_steps, num_nodes, 3))
    data[4, 0, 0] = 0.0
    np.savez(path, data=data)
    return data


def test_pems_npz_through_registry_and_path(tmp_path):
    folder = tmp_path / "PEMS04"
    folder.mkdir()
    raw = _write_pems(folder / "PEMS04.npz")
    (folder / "distance.csv").write_text(
        "from,to,cost\n0,1,100.0\n1,2,200.0\n0,2,300.0\n2,3,100.0\n"
    )
    data = load("PEMS04", data_dir=tmp_path)
    assert data.shape == (24, 4, 3) and data.channels == ["flow", "occupancy", "speed"]
    assert data.timestamps[0] == pd.Timestamp("2018-01-01") and data.freq == "5min"
    assert data.timestamps[-1] == pd.Timestamp("2018-01-01 01:55")
    np.testing.assert_array_equal(data.values, raw.astype(np.float32))
    assert not data.mask[4, 0, 0] and data.mask.sum() == raw.size - 1
    sigma = np.std([100.0, 200.0, 300.0, 100.0])
    expected = np.eye(4)
    for i, j, d in [(0, 1, 100.0), (1, 2, 200.0), (0, 2, 300.0), (2, 3, 100.0)]:
        w = np.exp(-((d / sigma) ** 2))
        expected[i, j] = w if w >= 0.1 else 0.0
    np.testing.assert_allclose(data.adjacency.to_dense(), expected, rtol=1e-6)
    assert expected[0, 2] == 0  # 300 m is beyond 1.52 sigma

    generic = load(str(folder / "PEMS04.npz"))
    assert generic.timestamps is None and generic.adjacency is None
    np.testing.assert_array_equal(generic.values, data.values)
    started = load(str(folder / "PEMS04.npz"), start="2016-07-01", freq="5min")
    assert started.timestamps[1] == pd.Timestamp("2016-07-01 00:05")


def test_pems08_registry_start(tmp_path):
    folder = tmp_path / "PEMS08"
    folder.mkdir()
    _write_pems(folder / "PEMS08.npz", num_nodes=3)
    (folder / "distance.csv").write_text("from,to,cost\n0,1,10.0\n1,2,20.0\n")
    data = load("PEMS08", data_dir=tmp_path)
    assert data.timestamps[0] == pd.Timestamp("2016-07-01") and data.num_nodes == 3


def test_grid_npz_and_taxibj_h5(tmp_path):
    frames = np.arange(4 * 2 * 3 * 2, dtype=np.float64).reshape(4, 2, 3, 2) + 1
    np.savez(tmp_path / "grid.npz", data=frames)
    data = load(str(tmp_path / "grid.npz"), start="2015-01-01", freq="h")
    assert data.shape == (4, 6, 2) and data.grid_shape == (3, 2)
    np.testing.assert_array_equal(data.to_grid(), frames.astype(np.float32))
    assert data.values[0, 1, 0] == frames[0, 0, 0, 1]  # cell (row 0, col 1) is node 1
    assert data.timestamps[-1] == pd.Timestamp("2015-01-01 03:00")

    with h5py.File(tmp_path / "BJ13_M32x32_T30_InOut.h5", "w") as f:
        f["data"] = frames
        f["date"] = np.array([b"2013070101", b"2013070102", b"2013070148", b"2013070201"])
    bj = load(str(tmp_path / "BJ13_M32x32_T30_InOut.h5"), channels=["inflow", "outflow"])
    assert list(bj.timestamps) == list(
        pd.to_datetime(
            ["2013-07-01 00:00", "2013-07-01 00:30", "2013-07-01 23:30", "2013-07-02 00:00"]
        )
    )
    assert bj.freq == "30min" and bj.channels == ["inflow", "outflow"]
    np.testing.assert_array_equal(bj.to_grid(), frames.astype(np.float32))
    with pytest.raises(DataError, match="slot numbers run 1..48, but a day has 24 slots"):
        load_grid(tmp_path / "BJ13_M32x32_T30_InOut.h5", freq="h")
    with pytest.raises(DataError, match="no dataset 'flows'"):
        load_grid(tmp_path / "BJ13_M32x32_T30_InOut.h5", key="flows")


def _long_frame() -> pd.DataFrame:
    ds = pd.date_range("2024-01-01", periods=4, freq="D")
    rows = [(uid, t, 10.0 * k + i) for k, uid in enumerate(["b", "a"]) for i, t in enumerate(ds)]
    rows = [r for r in rows if not (r[0] == "a" and r[1] == ds[2])]  # one missing (series, time)
    frame = pd.DataFrame(rows, columns=["unique_id", "ds", "y"])
    return frame.sample(frac=1.0, random_state=0).reset_index(
        drop=True
    )  # long frames have no order


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_long_frame_files(tmp_path, suffix):
    frame = _long_frame()
    path = tmp_path / f"long{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    data = load(str(path))
    first_seen = list(dict.fromkeys(frame["unique_id"]))
    assert (
        data.node_ids == first_seen
        and data.shape == (4, 2, 1)
        and pd.Timedelta(data.freq) == pd.Timedelta(days=1)
    )
    b, a = data.node_ids.index("b"), data.node_ids.index("a")
    np.testing.assert_array_equal(data.values[:, b, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(data.values[[0, 1, 3], a, 0], [10, 11, 13])
    assert not data.mask[2, a, 0] and data.mask.sum() == 7


def test_long_frame_nan_duplicates_and_columns():
    frame = _long_frame()
    frame.loc[frame.index[0], "y"] = np.nan
    with pytest.warns(UserWarning, match="1 NaN/infinite values"):
        data = load_long_frame(frame)
    assert data.mask.sum() == 6
    twice = pd.concat([_long_frame(), _long_frame().iloc[:1]])
    with pytest.raises(DataError, match="has more than one row at"):
        load_long_frame(twice)
    with pytest.raises(DataError, match="lacks column"):
        load_long_frame(_long_frame().rename(columns={"y": "target"}))
    renamed = _long_frame().rename(columns={"unique_id": "id", "ds": "time", "y": "target"})
    assert load_long_frame(renamed, id_col="id", time_col="time", value_col="target").shape == (
        4,
        2,
        1,
    )


def _write_ett_like(path: Path, dates: list[str]) -> None:
    rows = ["date,HUFL,OT"] + [f"{d},{i + 1.5},{30 - i}" for i, d in enumerate(dates)]
    path.write_text("\n".join(rows) + "\n")


def test_timestamped_csv_layouts(tmp_path):
    path = tmp_path / "ett_like.csv"
    _write_ett_like(path, ["2016-07-01 00:00:00", "2016-07-01 01:00:00", "2016-07-01 02:00:00"])
    data = load(str(path))
    assert data.shape == (3, 2, 1) and data.node_ids == ["HUFL", "OT"] and data.freq == "h"
    np.testing.assert_array_equal(data.values[:, 1, 0], [30, 29, 28])
    wide = load_timestamped_csv(path, as_nodes=False)
    assert (
        wide.shape == (3, 1, 2)
        and wide.channels == ["HUFL", "OT"]
        and wide.node_ids == ["ett_like"]
    )


def test_wide_csv_with_adjacency(tmp_path):
    (tmp_path / "speed.csv").write_text("11,22,33\n60.5,61,62\n63,64,65.25\n")
    (tmp_path / "adj.csv").write_text("1,1,0\n1,1,1\n0,1,1\n")
    data = load(
        str(tmp_path / "speed.csv"), adj_csv=tmp_path / "adj.csv", start="2012-03-01", freq="5min"
    )
    assert data.node_ids == ["11", "22", "33"] and data.shape == (2, 3, 1)
    np.testing.assert_array_equal(data.values[:, 2, 0], [62, 65.25])
    assert data.timestamps[1] == pd.Timestamp("2012-03-01 00:05") and data.num_edges == 4
    headless = load_wide_csv(tmp_path / "speed.csv", header=False)
    assert (
        headless.shape == (3, 3, 1)
        and headless.node_ids == ["0", "1", "2"]
        and headless.timestamps is None
    )


# --------------------------------------------------------------------------- bad inputs
def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"data file not found: .*nothere\.csv"):
        load(str(tmp_path / "nothere.csv"))
    with pytest.raises(
        DataNotFoundError, match=r"PeMS \.npz file not found: .*PEMS04\.npz.*ASTGCN"
    ):
        load_pems_npz(tmp_path / "PEMS04.npz")
    with pytest.raises(DataNotFoundError, match=r"graph pickle not found.*liyaguang/DCRNN"):
        load_graph_pickle(tmp_path / "adj_mx.pkl")
    with pytest.raises(DataNotFoundError, match=r"ETT CSV not found.*ETDataset"):
        load_ett_csv(tmp_path / "ETTh1.csv")


def test_nan_values_are_masked_with_a_warning(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text(
        "date,a,b\n2020-01-01 00:00,1.0,2.0\n2020-01-01 01:00,,4.0\n2020-01-01 02:00,5.0,inf\n"
    )
    with pytest.warns(UserWarning, match=r"2 NaN/infinite values \(33\.33%\) were masked"):
        data = load(str(path))
    np.testing.assert_array_equal(data.mask[:, :, 0], [[True, True], [False, True], [True, False]])
    assert data.values[1, 0, 0] == 0 and data.values[2, 1, 0] == 0


def test_node_without_observations(tmp_path):
    raw = np.random.default_rng(3).uniform(1, 5, size=(6, 4, 3))
    raw[:, 2, :] = 0.0  # a dead detector: every reading is the null value
    np.savez(tmp_path / "dead.npz", data=raw)
    (tmp_path / "distance.csv").write_text("from,to,cost\n0,1,5.0\n1,2,5.0\n2,3,10.0\n3,0,10.0\n")
    with pytest.raises(
        DataError, match=r"1 node\(s\) have no observations at all \(2\).*drop_empty_nodes=True"
    ):
        load_pems_npz(tmp_path / "dead.npz", tmp_path / "distance.csv")
    with pytest.warns(UserWarning, match=r"dropped 1 node\(s\) without any observation \(2\)"):
        data = load_pems_npz(
            tmp_path / "dead.npz", tmp_path / "distance.csv", drop_empty_nodes=True
        )
    assert data.node_ids == ["0", "1", "3"]
    np.testing.assert_array_equal(data.values, raw[:, [0, 1, 3]].astype(np.float32))
    full = load_pems_npz(
        tmp_path / "dead.npz", tmp_path / "distance.csv", null_value=None
    ).adjacency.to_dense()
    np.testing.assert_array_equal(data.adjacency.to_dense(), full[np.ix_([0, 1, 3], [0, 1, 3])])


def test_adjacency_size_mismatch(tmp_path):
    (tmp_path / "speed.csv").write_text("a,b,c\n1,2,3\n4,5,6\n")
    (tmp_path / "adj.csv").write_text("1,0,0,0\n0,1,0,0\n0,0,1,0\n0,0,0,1\n")
    with pytest.raises(DataError, match=r"adj\.csv is for 4 nodes but the data have 3"):
        load_wide_csv(tmp_path / "speed.csv", tmp_path / "adj.csv")
    np.savez(tmp_path / "p.npz", data=np.ones((4, 3, 1)))
    (tmp_path / "distance.csv").write_text("from,to,cost\n0,5,1.0\n")
    with pytest.raises(DataError, match="edge to node 5 but the data have 3 nodes"):
        load_pems_npz(tmp_path / "p.npz", tmp_path / "distance.csv")


@pytest.mark.parametrize(
    ("dates", "message"),
    [
        (
            ["2016-07-01 00:00", "2016-07-01 02:00", "2016-07-01 01:00"],
            r"not sorted \(row 2: 2016-07-01 01:00:00",
        ),
        (
            ["2016-07-01 00:00", "2016-07-01 01:00", "2016-07-01 01:00"],
            r"duplicated \(first: 2016-07-01 01:00:00",
        ),
    ],
)
def test_unsorted_or_duplicated_timestamps_are_not_repaired(tmp_path, dates, message):
    _write_ett_like(tmp_path / "bad.csv", dates)
    with pytest.raises(DataError, match=message):
        load(str(tmp_path / "bad.csv"))
    frame = _speed_frame().iloc[:3]
    frame.index = pd.DatetimeIndex(dates)
    frame.to_hdf(tmp_path / "bad.h5", key="df")
    with pytest.raises(DataError, match=message):
        load(str(tmp_path / "bad.h5"))


def test_refused_npz_contents(tmp_path):
    np.savez(tmp_path / "objects.npz", data=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="without unpickling"):
        load_pems_npz(tmp_path / "objects.npz")
    np.savez(tmp_path / "named.npz", speed=np.ones((3, 2, 1)))
    with pytest.raises(DataError, match=r"has no array 'data' \(it has speed\).*key="):
        load(str(tmp_path / "named.npz"))
    assert load(str(tmp_path / "named.npz"), key="speed").shape == (3, 2, 1)
