import numpy as np
import pandas as pd
import pytest
import torch

from llm_st import ConfigError, DataError, STData
from llm_st.data.scalers import Scaler, make_scaler
from llm_st.data.splits import chronological_split
from llm_st.data.task import prepare_task
from llm_st.data.timefeatures import time_features
from llm_st.data.windows import WindowDataset, WindowIndex


def ramp(T=100, N=3, C=1, freq="h", start="2024-01-01"):
    values = np.arange(T * N * C, dtype=np.float64).reshape(T, N, C)
    return STData(values, timestamps=pd.date_range(start, periods=T, freq=freq))


def test_ratio_split_borders():
    s = chronological_split(1000, ratios=(0.7, 0.1, 0.2))
    assert (s.train, s.val, s.test) == ((0, 700), (700, 800), (800, 1000))


def test_ett_border_split():
    s = chronological_split(17420, borders=(8640, 2880, 2880))
    assert s.test == (11520, 14400)


@pytest.mark.parametrize("kw", [{"ratios": (0.8, 0.3, 0.1)}, {"borders": (10, 10, 100)}, {}])
def test_bad_split(kw):
    with pytest.raises(ConfigError):
        chronological_split(100, **kw)


@pytest.mark.parametrize("kind", ["standard", "minmax", "none"])
@pytest.mark.parametrize("axis", ["global", "node", "channel", "node_channel"])
def test_scaler_roundtrip_numpy_and_torch(kind, axis, tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(50, 4, 3)) * 10 + 5).astype(np.float32)
    mask = rng.random(x.shape) > 0.1
    s = make_scaler(kind, axis).fit(x, mask)
    np.testing.assert_allclose(s.inverse_transform(s.transform(x)), x, rtol=1e-5, atol=1e-4)
    t = torch.from_numpy(x[None])  # a batch [1, T, N, C] broadcasts too
    np.testing.assert_allclose(s.transform(t).numpy()[0], s.transform(x), rtol=1e-6, atol=1e-6)
    s.save(tmp_path / "scaler.json")
    again = Scaler.load(tmp_path / "scaler.json")
    np.testing.assert_array_equal(again.transform(x), s.transform(x))


def test_standard_scaler_uses_mask_and_train_only():
    x = np.array([1.0, 2.0, 3.0, 100.0]).reshape(4, 1, 1)
    mask = np.array([True, True, True, False]).reshape(4, 1, 1)
    s = make_scaler("standard").fit(x, mask)
    assert s.shift.item() == pytest.approx(2.0)
    assert s.scale.item() == pytest.approx(np.std([1.0, 2.0, 3.0]), rel=1e-6)
    nomask = make_scaler("standard", use_mask=False).fit(x, mask)  # DCRNN: zeros/missing included
    assert nomask.shift.item() == pytest.approx(26.5)


def test_per_node_scaler_stats():
    x = np.stack([np.arange(10.0), np.arange(10.0) * 3], axis=1)[:, :, None]
    s = make_scaler("standard", "node").fit(x)
    np.testing.assert_allclose(s.shift.ravel(), [4.5, 13.5])
    np.testing.assert_allclose(
        s.scale.ravel(), [np.std(np.arange(10.0)), 3 * np.std(np.arange(10.0))], rtol=1e-6
    )


def test_scaler_blocks_match_one_shot():
    # more rows than one accumulation block to exercise the chunked path
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5000, 1000, 1)).astype(np.float32)
    s = make_scaler("standard").fit(x)
    assert s.shift.item() == pytest.approx(float(x.astype(np.float64).mean()), abs=1e-6)
    assert s.scale.item() == pytest.approx(float(x.astype(np.float64).std()), rel=1e-6)


def test_window_index_targets_inside_split():
    idx = WindowIndex(100, history=12, horizon=4, start=70, stop=90)
    targets_start = idx.starts + 12
    assert targets_start.min() == 70 and (targets_start + 4).max() == 90
    strict = WindowIndex(100, 12, 4, start=70, stop=90, history_in_split=True)
    assert strict.starts.min() == 70 and len(strict) == 90 - 70 - 16 + 1
    assert len(WindowIndex(100, 12, 4, stride=5)) == len(range(0, 100 - 16 + 1, 5))


def test_window_too_short_error():
    with pytest.raises(DataError, match="too short for a window of history 80"):
        WindowIndex(50, 80, 4)


def test_window_batch_contents_and_scaling():
    d = ramp(T=60, N=2)
    s = make_scaler("standard").fit(d.values)
    ds = WindowDataset(d, WindowIndex(60, 5, 3), s)
    b = ds.batch([0, 10])
    np.testing.assert_array_equal(b["y"][1, :, 1, 0], d.values[15:18, 1, 0])
    np.testing.assert_allclose(s.inverse_transform(b["x"])[1], d.values[10:15], rtol=1e-6)
    np.testing.assert_allclose(s.inverse_transform(b["y_scaled"]), b["y"], rtol=1e-5)
    t = ds[3]
    assert tuple(t["x"].shape) == (5, 2, 1) and t["x"].dtype == torch.float32


def test_window_missing_history_is_zero_and_masked():
    v = np.arange(40.0).reshape(20, 2, 1) + 1
    v[3, 0, 0] = 0.0
    d = STData(v, null_value=0.0)
    ds = WindowDataset(d, WindowIndex(20, 5, 2), make_scaler("standard").fit(d.values, d.mask))
    b = ds.batch([0])
    assert b["x"][0, 3, 0, 0] == 0.0 and not b["x_mask"][0, 3, 0, 0] and b["x_mask"].sum() == 9


def test_window_batches_do_not_copy_the_series():
    d = ramp(T=2000, N=50)
    ds = WindowDataset(d, WindowIndex(2000, 12, 12), None)
    assert ds.index.starts.nbytes < d.values.nbytes / 10  # only start rows are stored


def test_time_features():
    d = ramp(T=30, freq="h", start="2024-01-01 00:00")  # a Monday
    f = time_features(d)
    assert f[0].tolist() == [0.0, 0.0]
    assert f[6, 0] == pytest.approx(0.25) and f[25].tolist() == pytest.approx([1 / 24, 1.0])
    nots = STData(np.ones((30, 1, 1)), freq="h")
    np.testing.assert_allclose(time_features(nots), f)


def test_prepare_task_protocol():
    d = ramp(T=200, N=3)
    task = prepare_task(d, history=12, horizon=3)
    assert task.split.train == (0, 140)
    assert task.scaler.shift.item() == pytest.approx(d.values[:140].mean())
    test = task.dataset("test")
    assert test.index.starts[0] + 12 == 160 and test.index.starts[-1] + 15 == 200
    longer = task.dataset("test", history=24)
    np.testing.assert_array_equal(longer.index.starts + 24, test.index.starts + 12)  # same targets
