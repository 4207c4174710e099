"""Non-learned baselines are exactly right where the answer is known."""

import numpy as np
import pandas as pd
import pytest
import torch

from llm_st import ConfigError, STData
from llm_st.data.task import prepare_task
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model, list_models


def periodic(days=21, per_day=24, N=3, weekly=False):
    T = days * per_day
    t = np.arange(T)
    base = np.sin(2 * np.pi * t / per_day)
    if weekly:
        base = base + (t // per_day % 7 >= 5) * 2.0  # weekends differ
    values = base[:, None, None] * (1 + np.arange(N))[None, :, None] + 10
    return STData(
        values, timestamps=pd.date_range("2024-01-01", periods=T, freq=f"{24 // per_day}h")
    )


def predict(name, data, history, horizon, **hp):
    task = prepare_task(data, history, horizon)
    model = build_model(name, DataInfo.from_data(data, history, horizon), **hp)
    model.fit_data(task.train_data(), task.scaler)
    ds = task.dataset("test")
    batch = ds[list(range(len(ds)))]
    with torch.no_grad():
        pred = task.scaler.inverse_transform(model(batch))
    return pred.numpy(), batch["y"].numpy()


def test_registry_lists_baselines():
    assert {"last_value", "seasonal_naive", "historical_average", "var"} <= set(list_models())
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        build_model("nope", DataInfo(1, 1, 2, 2))


def test_last_value_on_constant_series_is_exact():
    d = STData(np.full((100, 2, 1), 7.0), freq="h")
    pred, y = predict("last_value", d, 12, 6)
    np.testing.assert_allclose(pred, y, rtol=1e-6)


def test_last_value_skips_missing_last_step():
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    mask = torch.tensor([True, True, False]).view(1, 3, 1, 1)
    m = build_model("last_value", DataInfo(1, 1, 3, 2))
    out = m({"x": x, "x_mask": mask})
    assert out.flatten().tolist() == [2.0, 2.0]


def test_seasonal_naive_on_periodic_series_is_exact():
    d = periodic()
    pred, y = predict("seasonal_naive", d, 24, 12)
    np.testing.assert_allclose(pred, y, atol=1e-4)
    with pytest.raises(ConfigError, match="needs history >= 24"):
        build_model("seasonal_naive", DataInfo.from_data(d, 12, 12))


def test_historical_average_on_weekly_periodic_series_is_exact():
    d = periodic(days=35, weekly=True)
    pred, y = predict("historical_average", d, 12, 12)
    np.testing.assert_allclose(pred, y, atol=1e-4)
    # last value is clearly worse on the same data
    lv, _ = predict("last_value", d, 12, 12)
    assert np.abs(lv - y).mean() > 0.3


def test_var_recovers_a_linear_system():
    rng = np.random.default_rng(0)
    T, N = 3000, 3
    A = np.array([[-0.5, 0.3, 0.0], [0.0, -0.6, 0.2], [0.2, 0.0, 0.4]])
    z = np.zeros((T, N))
    for t in range(1, T):
        z[t] = A @ z[t - 1] + rng.normal(scale=0.1, size=N)
    d = STData(z[:, :, None], freq="h")
    pred, y = predict("var", d, 12, 1, order=1, ridge=1e-6)
    resid = pred - y
    # one-step error of the true model is the noise (std 0.1)
    assert np.sqrt((resid**2).mean()) == pytest.approx(0.1, rel=0.1)
    lv, _ = predict("last_value", d, 12, 1)
    assert np.sqrt(((lv - y) ** 2).mean()) > 0.15  # the naive floor is clearly worse
