"""Named datasets: specs, protocol values, data-root resolution and the load() entry point."""

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llm_st.data import (
    DatasetSpec,
    SplitSpec,
    data_root,
    get_spec,
    list_datasets,
    load,
    save_npz,
)
from llm_st.data.splits import chronological_split
from llm_st.data.synthetic import generate
from llm_st.data.task import prepare_task
from llm_st.errors import ConfigError, DataError, DataNotFoundError

REPO = Path(__file__).resolve().parents[1]
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
    with pytest.raises(ConfigError, match="unknown format 'xlsx'"):
        DatasetSpec(
            "X", {"data": "x.xlsx"}, "xlsx", "h", None, SplitSpec(ratios=(1, 0, 0)), None, ""
        )


def test_data_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_ST_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("LLM_ST_DATA")
    assert data_root() == REPO.parent / "shared" / "data"


def test_missing_named_dataset_says_what_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load("PEMS04", data_dir=tmp_path)
    message = str(err.value)
    assert f"PEMS04/PEMS04.npz, PEMS04/distance.csv not found in {tmp_path}" in message
    assert "Davidham3/ASTGCN-2019-mxnet" in message and "--data-dir / $LLM_ST_DATA" in message


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
