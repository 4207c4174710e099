"""Named datasets: specs, protocol values, data-root resolution and the load() entry point."""

import pickle

import numpy as np
import pandas as pd
import pytest

from llm_st.data import (
    DatasetSpec,
    SplitSpec,
    data_root,
    default_data_dir,
    get_spec,
    list_datasets,
    load,
    locate_files,
    save_npz,
)
from llm_st.data.splits import chronological_split
from llm_st.data.synthetic import generate
from llm_st.data.task import prepare_task
from llm_st.errors import ConfigError, DataError, DataNotFoundError

NAMES = ["ETTh1", "ETTh2", "LosLoop", "SZ-taxi", "METR-LA", "PEMS-BAY", "PEMS04", "PEMS08"]


def test_names_and_case_insensitive_lookup():
    assert list_datasets() == NAMES
    assert get_spec("etth1").name == "ETTh1" and get_spec(" pems-bay ").name == "PEMS-BAY"
    with pytest.raises(DataError, match=r"unknown dataset 'METR_LA'; use one of ETTh1, .*PEMS08"):
        get_spec("METR_LA")
    with pytest.raises(DataError, match=r"unknown dataset 'NoSuchSet'.*METR-LA"):
        load("NoSuchSet")


def test_protocol_values():
    ett = get_spec("ETTh1")
    split = chronological_split(17420, **ett.split.as_kwargs())
    assert (split.train, split.val, split.test) == ((0, 8640), (8640, 11520), (11520, 14400))
    assert dict(ett.scaler) == {"kind": "standard", "axis": "node", "use_mask": True}
    assert ett.metric_scale == "normalized" and ett.freq == "h" and ett.null_value is None
    for name in ("METR-LA", "PEMS-BAY"):
        spec = get_spec(name)
        assert spec.split.ratios == (0.7, 0.1, 0.2) and spec.null_value == 0.0
        assert dict(spec.scaler) == {"kind": "standard", "axis": "global", "use_mask": False}
        assert spec.metric_scale == "original" and spec.freq == "5min"
    # the ratios apply to the raw rows: METR-LA's 34,272 give 23,990 / 3,427 / 6,855
    split = chronological_split(34272, **get_spec("METR-LA").split.as_kwargs())
    assert split.train == (0, 23990) and split.val == (23990, 27417)
    assert get_spec("PEMS04").start == "2018-01-01" and get_spec("PEMS08").start == "2016-07-01"
    assert all(get_spec(n).split.ratios == (0.6, 0.2, 0.2) for n in ("PEMS04", "PEMS08"))
    assert get_spec("LosLoop").start == "2012-03-01 00:00" and get_spec("SZ-taxi").freq == "15min"
    assert get_spec("SZ-taxi").null_value == 0.0


def test_specs_are_frozen_and_validated():
    spec = get_spec("METR-LA")
    with pytest.raises(TypeError):
        spec.scaler["use_mask"] = True  # read-only: the registry is shared
    with pytest.raises(AttributeError):
        spec.freq = "1min"
    assert hash(spec) == hash(get_spec("metr-la"))
    with pytest.raises(ConfigError, match="exactly one of ratios or borders"):
        SplitSpec(ratios=(0.7, 0.1, 0.2), borders=(1, 2, 3))
    with pytest.raises(ConfigError, match="summing to 1"):
        SplitSpec(ratios=(0.7, 0.2, 0.2))
    split = SplitSpec(ratios=(1, 0, 0))
    with pytest.raises(ConfigError, match=r"X: unknown format 'xlsx'; use one of native_npz, "):
        DatasetSpec("X", {"data": "x.xlsx"}, "xlsx", "h", None, split, None, "")
    with pytest.raises(ConfigError, match="have no 'data' role"):
        DatasetSpec("X", {"main": "x.csv"}, "wide_csv", "h", None, split, None, "")


def test_named_datasets_name_the_format_of_their_main_file():
    formats = {name: get_spec(name).format for name in NAMES}
    assert formats == {
        "ETTh1": "ett_csv",
        "ETTh2": "ett_csv",
        "LosLoop": "wide_csv",
        "SZ-taxi": "sz_taxi",
        "METR-LA": "dcrnn_h5",
        "PEMS-BAY": "dcrnn_h5",
        "PEMS04": "pems_npz",
        "PEMS08": "pems_npz",
    }
    # the other roles are the loaders' keyword arguments
    assert dict(get_spec("METR-LA").files) == {
        "data": "METR-LA/metr-la.h5",
        "adj_pkl_path": "METR-LA/adj_mx.pkl",
        "locations_csv": "METR-LA/graph_sensor_locations.csv",
    }
    assert set(get_spec("PEMS08").files) == {"data", "distance_csv"}


def test_data_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_ST_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # argument > $LLM_ST_DATA > $XDG_CACHE_HOME/llm-st/data > ~/.cache/llm-st/data
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root("~/mine") == tmp_path / "home" / "mine"
    assert data_root() == tmp_path / "env"
    monkeypatch.setenv("LLM_ST_DATA", "")  # empty counts as unset
    assert data_root() == tmp_path / "xdg" / "llm-st" / "data" == default_data_dir()
    monkeypatch.delenv("LLM_ST_DATA")
    assert data_root() == tmp_path / "xdg" / "llm-st" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_root() == tmp_path / "home" / ".cache" / "llm-st" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as XDG says
    assert data_root() == tmp_path / "home" / ".cache" / "llm-st" / "data"


def test_missing_named_dataset_says_what_where_and_how(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError) as err:
        load("PEMS04", data_dir=tmp_path)
    message = str(err.value)
    assert (
        f"dataset PEMS04: PEMS04/PEMS04.npz, PEMS04/distance.csv not found in {tmp_path} "
        "(given by data_dir / --data-dir)" in message
    )
    assert "get it from github.com/Davidham3/ASTGCN-2019-mxnet under data/PEMS0X/" in message
    assert f"place them at {tmp_path / 'PEMS04' / 'PEMS04.npz'}, " in message
    assert "--data-dir / $LLM_ST_DATA at the folder that holds PEMS04/" in message
    assert "hf download" not in message  # no Hugging Face repository is known for PeMS

    monkeypatch.delenv("LLM_ST_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(DataNotFoundError) as err:
        load("ETTh1")
    message = str(err.value)
    root = tmp_path / "xdg" / "llm-st" / "data"
    assert f"ETT/ETTh1.csv not found in {root} (the default, as neither" in message
    assert "github.com/zhouhaoyi/ETDataset under ETT-small/" in message
    assert f"place them at {root / 'ETT' / 'ETTh1.csv'}" in message


def test_missing_files_with_a_known_hub_repository_show_the_download(tmp_path):
    spec = DatasetSpec(
        name="Toy",
        files={"data": "Toy/toy.csv", "adj_csv": "Toy/adj.csv"},
        format="wide_csv",
        freq="5min",
        start="2020-01-01",
        split=SplitSpec(ratios=(0.7, 0.1, 0.2)),
        null_value=None,
        description="toy speeds",
        source="get it from github.com/example/toy",
        hf_repo="example/toy-speeds",
    )
    with pytest.raises(DataNotFoundError) as err:
        locate_files(spec, tmp_path)
    assert (
        f"(hf download example/toy-speeds --repo-type dataset --local-dir {tmp_path / 'Toy'})"
        in str(err.value)
    )
    folder = tmp_path / "Toy"
    folder.mkdir()
    (folder / "toy.csv").write_text("a,b\n1,2\n3,4\n")
    (folder / "adj.csv").write_text("1,1\n0,1\n")
    assert locate_files(spec, tmp_path) == {
        "data": folder / "toy.csv",
        "adj_csv": folder / "adj.csv",
    }
    data = load(spec, data_dir=tmp_path, null_value=2.0)  # keyword arguments override the spec
    assert data.name == "Toy" and data.description == "toy speeds" and data.freq == "5min"
    assert data.timestamps[1] == pd.Timestamp("2020-01-01 00:05")
    assert data.num_edges == 1  # 0 -> 1; self-loops are not counted
    assert not data.mask[0, 1, 0] and data.mask.sum() == 3 and data.extras["spec"] == "Toy"


def test_optional_locations_may_be_absent(tmp_path):
    folder = tmp_path / "METR-LA"
    folder.mkdir()
    frame = pd.DataFrame(
        np.arange(1.0, 13.0).reshape(4, 3),
        index=pd.date_range("2012-03-01", periods=4, freq="5min"),
        columns=["1", "2", "3"],
    )
    frame.to_hdf(folder / "metr-la.h5", key="df")
    with (folder / "adj_mx.pkl").open("wb") as fh:
        pickle.dump(
            [["1", "2", "3"], {"1": 0, "2": 1, "3": 2}, np.eye(3, dtype=np.float32)], fh, protocol=2
        )
    data = load("METR-LA", data_dir=tmp_path)
    assert data.coords is None and data.num_edges == 0 and data.extras["spec"] == "METR-LA"
    np.testing.assert_array_equal(data.values[:, :, 0], frame.to_numpy(np.float32))


def test_synthetic_names_with_parameters():
    data = load("synthetic-traffic:num_nodes=6,num_days=1,seed=3")
    reference = generate("synthetic-traffic", seed=3, num_nodes=6, num_days=1)
    assert data.shape == reference.shape and data.num_nodes == 6
    np.testing.assert_array_equal(data.values, reference.values)
    # keyword arguments override the parameters in the name
    assert load("synthetic-traffic:num_nodes=6,num_days=1", num_nodes=5).num_nodes == 5
    with pytest.raises(ConfigError, match="'num_nodes' is not key=value"):
        load("synthetic-traffic:num_nodes")
    with pytest.raises(DataError, match="unknown synthetic dataset 'synthetic-weather'"):
        load("synthetic-weather")


def test_real_named_datasets_carry_their_spec_and_protocol(shared_data, tmp_path):
    for name in ("ETTh2", "SZ-taxi"):
        data = load(name, data_dir=shared_data)
        assert data.name == name and data.extras["spec"] == name
        assert data.description == get_spec(name).description
    assert data.extras["protocol"] == {
        "ratios": [0.7, 0.1, 0.2],
        "scaler": {"kind": "standard", "axis": "global", "use_mask": True},
        "metric_scale": "original",
    }
    ett = load("ETTh1", data_dir=shared_data)
    task = prepare_task(ett, history=96, horizon=24)
    assert task.split.test == (11520, 14400) and task.metric_scale == "normalized"
    # per-variable statistics, fitted on the 8,640 training rows only
    train = ett.values[:8640, :, 0].astype(np.float64)
    np.testing.assert_allclose(task.scaler.shift.ravel(), train.mean(axis=0), rtol=1e-5)
    # the protocol survives llm-st's own file format (plain JSON, no warning)
    back = load(str(save_npz(ett, tmp_path / "etth1.npz")))
    assert back.extras == ett.extras
