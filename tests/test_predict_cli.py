"""``llm-st predict`` and ``llm-st evaluate`` as a user runs them, errors on one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from llm_st.cli import main
from llm_st.forecast import Forecast
from llm_st.pipeline import ForecastPipeline


def train_run(tmp_path, spec: str, history: int = 12, horizon: int = 6, name: str = "dlinear"):
    recipe = {
        "data": {"spec": spec, "history": history, "horizon": horizon},
        "model": {"name": name},
        "training": {"max_steps": 3, "eval_every": 3, "eval_batch_size": 512, "device": "cpu"},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert main(["train", "--recipe", str(path), "--out", str(out)]) == 0
    return out


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llm-st: error:"), err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def user_series() -> np.ndarray:
    t = np.arange(300)
    return np.stack([50 + 10 * np.sin(2 * np.pi * t / 24 + k) for k in range(3)], 1)


def test_predict_on_a_wide_and_a_long_csv_a_user_wrote(tmp_path, capsys, user_series):
    run = train_run(tmp_path, "synthetic-traffic:num_nodes=4,num_days=3")
    times = pd.date_range("2025-02-01", periods=300, freq="5min")
    wide = tmp_path / "wide.csv"
    pd.DataFrame(user_series, columns=["a", "b", "c"]).assign(date=times)[
        ["date", "a", "b", "c"]
    ].to_csv(wide, index=False)
    long = tmp_path / "long.csv"
    pd.DataFrame(
        {
            "unique_id": np.repeat(["a", "b", "c"], 300),
            "ds": np.tile(times, 3),
            "y": user_series.T.reshape(-1),
        }
    ).to_csv(long, index=False)

    outs = []
    for source, out in ((wide, tmp_path / "w.csv"), (long, tmp_path / "l.parquet")):
        args = ["predict", "--run", str(run), "--data", str(source), "--out", str(out)]
        assert main([*args, "--device", "cpu"]) == 0
        assert "1 window(s) x 6 steps x 3 nodes" in capsys.readouterr().out
        frame = pd.read_csv(out) if out.suffix == ".csv" else pd.read_parquet(out)
        assert len(frame) == 3 * 6 and sorted(frame.unique_id.unique()) == ["a", "b", "c"]
        assert pd.Timestamp(frame.ds.min()) == times[-1] + pd.Timedelta("5min")
        outs.append(frame.sort_values(["unique_id", "ds"])["mean"].to_numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6)  # same series, same forecast

    # several cut-offs by time, to npz
    npz = tmp_path / "cut.npz"
    at = f"{times[100]},{times[200]}"
    assert (
        main(["predict", "--run", str(run), "--data", str(wide), "--at", at, "--out", str(npz)])
        == 0
    )
    forecast = Forecast.load(npz)
    assert forecast.shape == (2, 6, 3, 1)
    assert list(pd.DatetimeIndex(forecast.cutoffs)) == [times[100], times[200]]


def test_predict_errors_are_one_line(tmp_path, capsys, user_series):
    run = train_run(tmp_path, "synthetic-traffic:num_nodes=4,num_days=3")
    data = tmp_path / "d.csv"
    pd.DataFrame(user_series).assign(date=pd.date_range("2025-01-01", periods=300, freq="h"))[
        ["date", 0, 1, 2]
    ].to_csv(data, index=False)
    out = tmp_path / "f.csv"
    base = ["predict", "--data", str(data), "--out", str(out)]

    assert main([*base, "--run", str(tmp_path / "missing")]) == 2
    one_line_error(capsys, "does not exist")
    assert main([*base, "--run", str(run), "--at", "3"]) == 2
    one_line_error(capsys, "rows of history", "row 11")
    grid = "synthetic-grid:height=3,width=3,num_days=2"
    assert main(["predict", "--run", str(run), "--data", grid, "--out", str(out)]) == 2
    one_line_error(capsys, "channel")
    assert main([*base, "--run", str(run)]) == 0
    capsys.readouterr()
    assert main([*base, "--run", str(run)]) == 2
    one_line_error(capsys, "already exists", "--overwrite")
    assert main([*base, "--run", str(run), "--overwrite"]) == 0


def test_evaluate_reproduces_the_run_and_baselines_need_no_run(tmp_path, capsys):
    run = train_run(tmp_path, "synthetic-traffic:num_nodes=4,num_days=3")
    metrics = json.loads((run / "metrics.json").read_text())
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--run", str(run), "--out", str(out), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["num_windows"] == metrics["num_test_windows"]
    assert result["metrics"]["avg"]["mae"] == pytest.approx(metrics["test"]["avg"]["mae"], 1e-6)
    assert main(["evaluate", "--run", str(run), "--out", str(out)]) == 2
    one_line_error(capsys, "already exists")

    data = "synthetic-traffic:num_nodes=4,num_days=3"
    assert main(["evaluate", "--method", "last_value", "--data", data]) == 0
    text = capsys.readouterr().out
    assert "last_value on synthetic-traffic" in text and "MAE" in text


def test_evaluate_an_etth1_run_on_etth2(tmp_path, capsys, shared_data):
    run = train_run(tmp_path, "ETTh1", history=48, horizon=24)
    args = ["evaluate", "--run", str(run), "--data", "ETTh2", "--data-dir", str(shared_data)]
    assert main([*args, "--out", str(tmp_path / "transfer.json")]) == 0
    transfer = json.loads((tmp_path / "transfer.json").read_text())
    assert transfer["dataset"] == "ETTh2" and transfer["metric_scale"] == "normalized"
    assert transfer["num_windows"] == 2880 - 24 + 1  # every ETTh2 test window (12/4/4 months)
    assert transfer["scaler"] == "run"
    assert main([*args, "--fit-scaler", "--out", str(tmp_path / "fit.json")]) == 0
    fitted = json.loads((tmp_path / "fit.json").read_text())
    assert fitted["scaler"] == "fit on ETTh2 train"
    # a scaler fit on ETTh1 puts ETTh2 on another scale: the two settings differ
    assert fitted["metrics"]["avg"]["mse"] != pytest.approx(transfer["metrics"]["avg"]["mse"])

    # by Python, the same numbers
    pipeline = ForecastPipeline.from_run(run, device="cpu")
    assert pipeline.info.num_nodes == 7 and pipeline.history == 48
    assert main(["evaluate", "--run", str(run), "--data", "synthetic-traffic"]) == 2
    one_line_error(capsys, "7 nodes")
