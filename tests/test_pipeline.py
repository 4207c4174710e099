"""The forecasting pipeline: runs reloaded bit for bit, every family behind one API."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from llm_st.config import recipe_from_dict
from llm_st.data import load
from llm_st.data.container import STData
from llm_st.engine import build_task, fit_and_evaluate
from llm_st.engine.artifacts import MANIFEST, pretrained_parts, trained_keys
from llm_st.engine.seeding import seed_everything
from llm_st.errors import ConfigError, DataError, ModelLoadError
from llm_st.evaluation.evaluate import score_forecast
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model
from llm_st.objectives import build_objective
from llm_st.pipeline import ForecastPipeline, evaluate_run
from llm_st.pipeline.forecast import history_batch
from llm_st.zeroshot import ZeroShotForecaster

DATA = "synthetic-traffic:num_nodes=5,num_days=3"
TINY_TRAINING = {"max_steps": 4, "eval_every": 4, "batch_size": 16, "eval_batch_size": 256}


def train_in_memory(tmp_path, model: dict, objective: dict | None = None):
    """Train a recipe with the engine into ``tmp_path/run``; return the recipe, the task and
    the trained model as it is in memory (``.objective``: the trained objective)."""
    recipe = recipe_from_dict(
        {
            "name": f"{model['name']}-test",
            "data": {"spec": DATA, "history": 12, "horizon": 6},
            "model": model,
            "objective": objective or {"name": "regression"},
            "training": {**TINY_TRAINING, "device": "cpu"},
        }
    )
    seed_everything(0)
    task = build_task(recipe.data)
    info = DataInfo.from_data(task.data, task.history, task.horizon)
    net = build_model(
        recipe.model.name, info, backbone=recipe.model.backbone, **recipe.model.params
    )
    objective = build_objective(recipe.objective.name, info, net, **recipe.objective.params)
    metrics = fit_and_evaluate(
        net, task, recipe.training, objective, tmp_path / "run", horizons=(3, 6), recipe=recipe
    )
    net.objective = [objective]  # a list: not registered as a sub-module
    return recipe, task, net, metrics


@torch.no_grad()
def in_memory_forecast(net, task, cutoffs: np.ndarray) -> np.ndarray:
    """``[W, H, N, C]`` forecasts of the trained model itself, original scale."""
    net.eval()
    batch = history_batch(task.data, cutoffs, task.history, task.horizon, task.scaler)
    return task.scaler.inverse_transform(net(batch).float()).numpy()


FAMILIES = {
    "trained baseline": {"name": "dlinear"},
    "graph model": {"name": "stid", "params": {"series_dim": 8, "num_layers": 1}},
    "gpt4ts": {
        "name": "gpt4ts",
        "backbone": {"source": "tiny-gpt2", "num_layers": 1},
        "params": {"patch_len": 4, "stride": 4},
    },
    "timellm": {
        "name": "timellm",
        "backbone": {"source": "tiny-llama", "num_layers": 1},
        "params": {"patch_len": 4, "stride": 4, "num_prototypes": 8, "d_ff": 8},
    },
    "stllm": {
        "name": "stllm",
        "backbone": {"source": "tiny-gpt2", "num_layers": 1},
        "params": {"channels": 8},
    },
    "lora": {
        "name": "gpt4ts",
        "backbone": {"source": "tiny-llama", "num_layers": 1, "freeze": "lora", "lora": {"r": 2}},
        "params": {"patch_len": 4, "stride": 4},
    },
    "qlora": {
        "name": "gpt4ts",
        "backbone": {"source": "tiny-llama", "num_layers": 1, "freeze": "qlora", "lora": {"r": 2}},
        "params": {"patch_len": 4, "stride": 4},
    },
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_from_run_forecasts_equal_the_trained_model(tmp_path, family):
    recipe, task, net, _ = train_in_memory(tmp_path, FAMILIES[family])
    cutoffs = task.dataset("test").index.starts[[0, 7, 30]] + task.history - 1
    expected = in_memory_forecast(net, task, cutoffs)

    pipeline = ForecastPipeline.from_run(tmp_path / "run", device="cpu")
    forecast = pipeline.predict(task.data, at=cutoffs)
    assert forecast.shape == (3, 6, 5, 1)
    np.testing.assert_array_equal(forecast.point, expected)  # bit for bit
    np.testing.assert_array_equal(forecast.target_start, cutoffs + 1)
    stamps = task.data.timestamps.values
    np.testing.assert_array_equal(forecast.target_times[:, 0], stamps[cutoffs + 1])
    np.testing.assert_array_equal(forecast.cutoffs, stamps[cutoffs])

    # the run keeps what trained, not the frozen backbone
    left_out = set(pipeline.model.state_dict()) - set(trained_keys(pipeline.model))
    parts = pretrained_parts(net)
    assert bool(parts) == bool(left_out)
    assert all(any(k.startswith(p + ".") for p in parts) for k in left_out)


def test_timestamps_of_a_forecast_past_the_end(tmp_path):
    _, task, net, _ = train_in_memory(tmp_path, FAMILIES["trained baseline"])
    pipeline = ForecastPipeline.from_run(tmp_path / "run", device="cpu")
    data = task.data
    forecast = pipeline.predict(data)  # after the last row: the future
    last = data.timestamps[-1]
    assert list(forecast.target_times[0]) == list(
        pd.date_range(last, periods=7, freq="5min")[1:].values
    )
    assert forecast.target_start[0] == data.num_steps
    np.testing.assert_array_equal(
        forecast.point, in_memory_forecast(net, task, np.asarray([data.num_steps - 1]))
    )
    # an array [T, N] forecasts the same numbers, with row numbers for times
    values = np.where(data.mask, data.values, np.nan)[:, :, 0]  # missing as NaN
    with pytest.warns(UserWarning, match="masked as missing"):
        from_array = pipeline.predict(values)
    np.testing.assert_array_equal(from_array.point, forecast.point)
    assert list(from_array.target_times[0]) == list(range(data.num_steps, data.num_steps + 6))
    # by timestamp: the same window as by row
    at = str(data.timestamps[200])
    np.testing.assert_array_equal(
        pipeline.predict(data, at=[at]).point, pipeline.predict(data, at=[200]).point
    )


def test_engine_test_metrics_equal_evaluate_of_the_run(tmp_path):
    _, _, _, metrics = train_in_memory(tmp_path, FAMILIES["graph model"])
    result = evaluate_run(tmp_path / "run", device="cpu", progress=False)
    assert result["num_windows"] == metrics["num_test_windows"]
    for key, values in metrics["test"].items():
        for name, value in values.items():
            assert result["metrics"][key][name] == pytest.approx(value, rel=1e-6, abs=1e-9)


def test_a_run_refuses_another_backbone(tmp_path):
    train_in_memory(tmp_path, FAMILIES["gpt4ts"])
    with pytest.raises(ModelLoadError, match="another config"):
        ForecastPipeline.from_run(tmp_path / "run", device="cpu", backbone="tiny-llama")
    manifest = (tmp_path / "run" / MANIFEST).read_text()
    assert "config_hash" in manifest and "tiny-gpt2" in manifest


def test_lora_adapter_loads_with_peft(tmp_path):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModel

    from llm_st.backbones.tiny import tiny_model_dir

    train_in_memory(tmp_path, FAMILIES["lora"])
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    pipeline = ForecastPipeline.from_run(tmp_path / "run", device="cpu")
    ours = pipeline.model.body
    config = AutoConfig.from_pretrained(tiny_model_dir("tiny-llama"))
    config.num_hidden_layers = 1
    base = AutoModel.from_pretrained(tiny_model_dir("tiny-llama"), config=config)
    theirs = PeftModel.from_pretrained(base, adapter).eval()
    lora_b = [p for n, p in theirs.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # trained, not the zero init
    embeds = torch.randn(2, 5, ours.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(inputs_embeds=embeds, use_cache=False).last_hidden_state
        torch.testing.assert_close(ours(embeds), expected, rtol=0, atol=1e-6)


def test_baseline_and_zero_shot_answer_the_same_calls(tmp_path):
    data = load(DATA)
    task = build_task(recipe_from_dict({"data": {"spec": DATA}, "model": {"name": "var"}}).data)
    cutoffs = task.dataset("test").index.starts[[0, 5]] + task.history - 1

    var = ForecastPipeline.from_method("var", history=12, horizon=12, device="cpu")
    var.fit(task.train_data(), task.scaler)
    model = build_model("var", DataInfo.from_data(data, 12, 12))
    model.fit_data(task.train_data(), task.scaler)
    np.testing.assert_array_equal(
        var.predict(data, at=cutoffs).point, in_memory_forecast(model, task, cutoffs)
    )

    zero = ForecastPipeline.from_pretrained("tiny-gpt2", 12, 6, device="cpu", num_samples=2, seed=3)
    forecast = zero.predict(data, at=cutoffs, progress=False)
    direct = ZeroShotForecaster.from_pretrained(
        "tiny-gpt2", device="cpu", num_samples=2, seed=3, batch_size=8
    )
    expected = direct.forecast_windows(data, cutoffs - 11, 12, 6, progress=False)
    np.testing.assert_array_equal(forecast.point, expected.point)
    assert forecast.samples.shape == (2, 2, 6, 5, 1) and forecast.quantiles is not None
    assert score_forecast(forecast, task)["num_windows"] == 2


def test_predict_df_returns_one_row_per_series_and_future_step():
    times = pd.date_range("2024-03-01", periods=60, freq="h")
    rng = np.random.default_rng(0)
    frame = pd.concat(
        pd.DataFrame({"unique_id": uid, "ds": times, "y": rng.normal(size=60) + k})
        for k, uid in enumerate(["a", "b", "c"])
    )
    pipeline = ForecastPipeline.from_method("last_value", history=4, horizon=5, device="cpu")
    out = pipeline.predict_df(frame)
    assert len(out) == 3 * 5
    assert list(out.columns[:3]) == ["unique_id", "ds", "cutoff"]
    for uid, rows in out.groupby("unique_id"):
        assert list(rows["ds"]) == list(pd.date_range(times[-1], periods=6, freq="h")[1:])
        last = frame[frame.unique_id == uid]["y"].iloc[-1]
        np.testing.assert_allclose(rows["mean"], last, rtol=1e-6)


def test_bad_cutoffs_and_channels_are_refused(tmp_path):
    _, task, _, _ = train_in_memory(tmp_path, FAMILIES["trained baseline"])
    pipeline = ForecastPipeline.from_run(tmp_path / "run", device="cpu")
    with pytest.raises(DataError, match="rows of history"):
        pipeline.predict(task.data, at=[5])
    two = STData(np.ones((100, 5, 2), np.float32))
    with pytest.raises(DataError, match="1 channel"):
        pipeline.predict(two)
    with pytest.raises(DataError, match="not a time step"):
        pipeline.predict(task.data, at=["1999-01-01"])


def test_node_agnostic_models_forecast_other_graphs(tmp_path):
    _, _, _, _ = train_in_memory(tmp_path, FAMILIES["gpt4ts"])
    pipeline = ForecastPipeline.from_run(tmp_path / "run", device="cpu")
    other = load("synthetic-traffic:num_nodes=4,num_days=2,seed=4")
    forecast = pipeline.predict(other)
    assert forecast.shape == (1, 6, 4, 1) and np.isfinite(forecast.point).all()

    stid = tmp_path / "stid"
    stid.mkdir()
    train_in_memory(stid, FAMILIES["graph model"])
    per_node = ForecastPipeline.from_run(stid / "run", device="cpu")
    with pytest.raises(DataError, match="weights per node"):
        per_node.predict(other)


def test_a_whole_model_run_from_before_manifests_still_loads(tmp_path):
    from llm_st.engine import save_weights

    _, task, net, _ = train_in_memory(tmp_path, FAMILIES["graph model"])
    run = tmp_path / "run"
    (run / MANIFEST).unlink()
    save_weights(net.state_dict(), run / "model.safetensors")
    cutoffs = np.asarray([400, 500])
    forecast = ForecastPipeline.from_run(run, device="cpu").predict(task.data, at=cutoffs)
    np.testing.assert_array_equal(forecast.point, in_memory_forecast(net, task, cutoffs))


def test_the_top_level_package_exposes_what_a_user_needs():
    import llm_st
    from llm_st.data.task import prepare_task
    from llm_st.engine import train
    from llm_st.forecast import Forecast

    assert llm_st.ForecastPipeline is ForecastPipeline and llm_st.Forecast is Forecast
    assert llm_st.load is load and llm_st.prepare_task is prepare_task
    assert llm_st.train is train and llm_st.ZeroShotForecaster is ZeroShotForecaster
    assert llm_st.build_model is build_model and "dlinear" in llm_st.list_models()
    assert set(llm_st.__all__) <= set(dir(llm_st))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        llm_st.nothing  # noqa: B018


def test_a_diffusion_run_forecasts_samples_and_quantiles(tmp_path):
    objective = {"name": "diffusion", "params": {"steps": 4, "hidden": 8, "layers": 1}}
    _, task, net, _ = train_in_memory(tmp_path, FAMILIES["trained baseline"], objective)
    cutoffs = np.asarray([300, 400])
    batch = history_batch(task.data, cutoffs, 12, 6, task.scaler)
    torch.manual_seed(5)
    with torch.no_grad():
        expected = net.objective[0].eval().sample(net.eval(), batch, 7)
    expected = task.scaler.inverse_transform(expected).numpy()

    pipeline = ForecastPipeline.from_run(tmp_path / "run", device="cpu")
    torch.manual_seed(5)
    forecast = pipeline.predict(task.data, at=cutoffs, num_samples=7, quantile_levels=(0.1, 0.9))
    np.testing.assert_array_equal(forecast.samples, expected)
    np.testing.assert_allclose(forecast.point, np.median(expected, 0), rtol=1e-6)
    assert forecast.quantiles.shape == (2, 2, 6, 5, 1)
    assert np.all(forecast.quantile(0.1) <= forecast.quantile(0.9))
    assert score_forecast(forecast, task)["crps"] > 0

    point_run = tmp_path / "point"
    point_run.mkdir()
    train_in_memory(point_run, FAMILIES["trained baseline"])
    with pytest.raises(ConfigError, match="point forecasts only"):
        ForecastPipeline.from_run(point_run / "run", device="cpu").predict(task.data, num_samples=3)


def test_a_lora_run_exports_to_one_merged_model(tmp_path):
    from transformers import AutoModel

    from llm_st.pipeline.export import export_merged

    _, task, _, _ = train_in_memory(tmp_path, FAMILIES["lora"])
    cutoffs = np.asarray([300, 350, 400])
    lora = ForecastPipeline.from_run(tmp_path / "run", device="cpu").predict(task.data, at=cutoffs)
    out = export_merged(tmp_path / "run", tmp_path / "served")
    merged = ForecastPipeline.from_run(out, device="cpu")
    assert not any("lora_" in n for n, _ in merged.model.named_parameters())
    np.testing.assert_allclose(merged.predict(task.data, at=cutoffs).point, lora.point, rtol=1e-5)
    hf = AutoModel.from_pretrained(out / "backbone")  # what a serving stack loads
    assert hf.config.num_hidden_layers == 1 and not any("lora" in n for n in hf.state_dict())
    with pytest.raises(ConfigError, match="not empty"):
        export_merged(tmp_path / "run", out)

    point = tmp_path / "no-lora"
    point.mkdir()
    train_in_memory(point, FAMILIES["gpt4ts"])
    with pytest.raises(ConfigError, match="no LoRA backbone"):
        export_merged(point / "run", tmp_path / "x")
