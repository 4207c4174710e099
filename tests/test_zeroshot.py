"""Zero-shot forecasting: constrained decoding parses; windows and metrics follow the task."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GenerationConfig, LogitsProcessorList

from llm_st.cli import main
from llm_st.data.container import Adjacency, STData
from llm_st.data.io import save_npz
from llm_st.data.task import prepare_task
from llm_st.data.windows import pick_windows
from llm_st.demo import zero_shot_rows
from llm_st.errors import ConfigError
from llm_st.evaluation.evaluate import score_forecast
from llm_st.forecast import Forecast
from llm_st.metrics import masked_mae
from llm_st.tokens.serialize import (
    LLMTIME_LLAMA,
    NumberSerializer,
    preset_for_tokenizer,
    token_texts,
)
from llm_st.zeroshot import NumberConstraint, NumberGrammar, ZeroShotForecaster

pytest_plugins = ["conftest_prompt"]  # tiny-model fixtures


def sensors(T: int = 400, N: int = 3) -> STData:
    """Daily-ish periodic speeds on 3 sensors in a line, zeros = missing."""
    t = np.arange(T)
    values = np.stack([50 + 10 * np.sin(2 * np.pi * t / 48 + n) for n in range(N)], axis=1)
    values[[30, 31, 380], 1] = 0.0
    return STData(
        values=values,
        timestamps=pd.date_range("2024-03-04", periods=T, freq="15min"),
        adjacency=Adjacency.from_edges([0, 1], [1, 2], [0.8, 0.6], num_nodes=N, symmetric=True),
        null_value=0.0,
        name="line",
        description="three sensors on one road.",
    )


@pytest.mark.parametrize("which", ["tiny_gpt2", "tiny_llama"])
def test_constrained_decoding_always_gives_exactly_the_horizon(request, which):
    model, tok = request.getfixturevalue(which)
    config = preset_for_tokenizer(tok)
    histories = np.array(
        [[12.5, 13.0, 14.25, 13.5], [-3.0, 0.5, 2.0, -1.0], [1000.0, 1010.0, 990.0, 1005.0]]
    )
    ser = NumberSerializer(config).fit(histories)
    prompts = list(ser.serialize(histories))
    horizon, samples = 5, 6
    grammar = NumberGrammar(tok, config, max_digits=ser.digits_needed(histories) + 1)
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    torch.manual_seed(0)
    ids = model.generate(
        **enc,
        generation_config=GenerationConfig(
            do_sample=True,
            temperature=1.5,  # flat sampling: the constraint alone keeps the text well formed
            max_new_tokens=horizon * grammar.max_tokens_per_value + 1,
            num_return_sequences=samples,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        logits_processor=LogitsProcessorList(
            [NumberConstraint(grammar, horizon, tok.eos_token_id)]
        ),
    )
    new = ids[:, enc["input_ids"].shape[1] :]
    texts = tok.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    repeated = np.repeat(np.arange(3), samples)
    parsed = ser.take(repeated).parse(texts, horizon)
    assert parsed.valid.all()  # 100 % parseable
    np.testing.assert_array_equal(parsed.num_values, horizon)  # exactly H values, nothing after
    assert all(t.count(config.value_end) == horizon for t in texts)
    ended = (new == tok.eos_token_id).any(dim=1)
    assert bool(ended.all())  # every row stopped by itself, within the token bound


def test_grammar_states_for_plain_digits(tiny_llama):
    tok = tiny_llama[1]
    grammar = NumberGrammar(tok, LLMTIME_LLAMA, max_digits=3)
    texts = token_texts(tok)

    def allowed(state):
        return {texts[i] for i in grammar.allowed_ids(state)}

    assert {"-", "1", "9"} <= allowed("") and "," not in allowed("")
    assert {"0", ","} <= allowed("00")
    assert allowed("000") == {","}  # at max_digits only the separator remains
    assert allowed("-") >= {"5"} and "-" not in allowed("-")
    comma = tok.convert_tokens_to_ids(",")
    assert grammar.step("000", comma) == ("", True)
    assert grammar.step("", comma) is None


@pytest.fixture(scope="module")
def task():
    return prepare_task(sensors(), history=24, horizon=6)


@pytest.fixture(scope="module")
def gpt2_forecast(tiny_gpt2, task):
    model, tok = tiny_gpt2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    forecaster = ZeroShotForecaster(model, tok, num_samples=5, batch_size=4, seed=3)
    forecast = forecaster.forecast(task, max_windows=3, progress=False)
    torch.set_num_threads(threads)
    return forecaster, forecast


def test_forecast_uses_the_task_windows_and_axis_order(gpt2_forecast, task):
    _, forecast = gpt2_forecast
    dataset = task.dataset("test")
    chosen = pick_windows(len(dataset), 3)
    assert forecast.shape == (3, 6, 3, 1)
    assert forecast.samples.shape == (5, 3, 6, 3, 1)
    assert forecast.quantiles.shape == (9, 3, 6, 3, 1)
    np.testing.assert_array_equal(forecast.target_start, dataset.index.starts[chosen] + 24)
    np.testing.assert_array_equal(
        forecast.target_times[:, 0], task.data.timestamps[forecast.target_start]
    )
    assert forecast.meta["valid_fraction"] == 1.0 and forecast.valid.all()
    np.testing.assert_allclose(forecast.point, np.median(forecast.samples, axis=0), rtol=1e-6)
    assert np.all(np.diff(forecast.quantiles, axis=0) >= 0)  # quantiles increase with the level
    frame = forecast.to_frame()
    assert list(frame.columns[:4]) == ["unique_id", "ds", "cutoff", "median"] and "q0.9" in frame
    assert len(frame) == 3 * 6 * 3
    row = frame.iloc[6 + 2]  # window 0, node 1, step 2
    assert row["unique_id"] == "1" and row["median"] == pytest.approx(forecast.point[0, 2, 1, 0])
    assert row["ds"] == task.data.timestamps[forecast.target_start[0] + 2]
    assert row["cutoff"] == task.data.timestamps[forecast.target_start[0] - 1]


def test_forecast_values_live_on_the_original_scale(gpt2_forecast):
    forecaster, forecast = gpt2_forecast
    # values ~40..60 are written as codes below 1000 (offset ~34, scale ~25); the grammar
    # allows one digit more, so even random weights stay below 99.999 * 25 + 34 ~ 2534
    assert np.all(np.abs(forecast.samples) < 3000)
    assert np.any(np.abs(forecast.samples) > 60)  # random weights do not just copy the history
    assert forecaster.serializer.digit_sep == " "


def test_sampling_is_reproducible_and_greedy_is_deterministic(tiny_llama, task):
    model, tok = tiny_llama
    a = ZeroShotForecaster(model, tok, num_samples=3, seed=7).forecast(
        task, max_windows=1, nodes=[0], progress=False
    )
    b = ZeroShotForecaster(model, tok, num_samples=3, seed=7).forecast(
        task, max_windows=1, nodes=[0], progress=False
    )
    np.testing.assert_array_equal(a.samples, b.samples)
    greedy = [
        ZeroShotForecaster(model, tok, num_samples=1, temperature=0.0, seed=seed).forecast(
            task, max_windows=1, nodes=["0"], progress=False
        )
        for seed in (1, 2)
    ]
    np.testing.assert_array_equal(greedy[0].samples, greedy[1].samples)
    with pytest.raises(ConfigError, match="greedy"):
        ZeroShotForecaster(model, tok, num_samples=2, temperature=0.0)


def test_evaluation_matches_a_numpy_computation(task):
    dataset = task.dataset("test")
    starts = dataset.index.starts[:4]
    rows = (starts + 24)[:, None] + np.arange(6)
    target = task.data.values[rows]  # [4, 6, 3, 1]
    rng = np.random.default_rng(0)
    samples = target[None] + rng.normal(0, 2, (7, *target.shape))
    forecast = Forecast.from_samples(samples, (0.1, 0.5, 0.9), target_start=starts + 24)
    forecast.node_ids = task.data.node_ids
    forecast.channels = task.data.channels
    result = score_forecast(forecast, task)
    mask = task.data.mask[rows]
    expected = np.abs(np.median(samples, 0) - target)[mask].mean()
    assert result["metrics"]["avg"]["mae"] == pytest.approx(expected, rel=1e-5)
    assert result["metrics"]["h3"]["mae"] == pytest.approx(
        np.abs(np.median(samples, 0) - target)[:, 2][mask[:, 2]].mean(), rel=1e-5
    )
    pairs = np.abs(samples[:, None] - samples[None]).mean(axis=(0, 1))
    crps = (np.abs(samples - target).mean(0) - 0.5 * pairs)[mask].mean()
    assert result["crps"] == pytest.approx(crps, rel=1e-4)
    point_only = Forecast(forecast.point, target_start=starts + 24, node_ids=task.data.node_ids)
    assert score_forecast(point_only, task)["crps"] == pytest.approx(
        float(masked_mae(point_only.point, target, mask)), rel=1e-5
    )


def test_forecast_file_round_trip(gpt2_forecast, tmp_path):
    _, forecast = gpt2_forecast
    path = forecast.save(tmp_path / "f.npz")
    back = Forecast.load(path)
    for name in (
        "point",
        "quantiles",
        "samples",
        "valid",
        "target_times",
        "cutoffs",
        "target_start",
    ):
        np.testing.assert_array_equal(getattr(back, name), getattr(forecast, name))
    assert back.quantile_levels == forecast.quantile_levels and back.node_ids == forecast.node_ids
    assert back.meta == json.loads(json.dumps(forecast.meta))
    with np.load(path, allow_pickle=False) as f:  # nothing pickled
        assert "header" in f.files


def test_long_prompts_are_cut_to_the_context(tiny_gpt2, task):
    model, tok = tiny_gpt2
    forecaster = ZeroShotForecaster(model, tok, template="stats", num_samples=2, max_context=400)
    forecast = forecaster.forecast(task, max_windows=1, nodes=[2], history=96, progress=False)
    assert forecast.meta["truncated_prompts"] == 1 and forecast.meta["valid_fraction"] == 1.0
    assert forecast.meta["mean_prompt_tokens"] < 400


def test_cli_zero_shot_writes_metrics_and_forecasts(tmp_path, tiny_cache, monkeypatch, capsys):
    monkeypatch.setenv("LLM_ST_CACHE", str(tiny_cache.parent))  # tiny models from the session build
    data_path = save_npz(sensors(), tmp_path / "line.npz")
    out = tmp_path / "run"
    argv = [
        "zero-shot",
        "--model",
        "tiny-llama",
        "--dataset",
        str(data_path),
        "--samples",
        "2",
        "--max-windows",
        "2",
        "--horizon",
        "4",
        "--history",
        "16",
        "--template",
        "spatial",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["valid_fraction"] == 1.0 and metrics["num_series"] == 2 * 3
    assert set(metrics["metrics"]) == {"h3", "avg"} and metrics["crps"] > 0
    frame = pd.read_csv(out / "forecast.csv")
    assert len(frame) == 2 * 3 * 4 and Forecast.load(out / "forecast.npz").shape == (2, 4, 3, 1)
    assert "valid 100.0%" in capsys.readouterr().out
    assert main(argv) == 2  # results are not overwritten silently


def test_demo_row_says_when_it_only_shows_the_machinery(tiny_cache, monkeypatch):
    monkeypatch.setenv("LLM_ST_CACHE", str(tiny_cache.parent))
    task = prepare_task(sensors(), history=12, horizon=3)
    row, reference = zero_shot_rows(
        task, quick=True, model="tiny-gpt2", horizons=(3,), device="cpu"
    )
    assert row["model"] == "tiny-gpt2" and "not a real forecast" in row["note"]
    assert row["valid_fraction"] == 1.0 and row["num_windows"] == 2
    assert np.isfinite(row["metrics"]["h3"]["mae"])
    # last value is scored on exactly the LM row's windows and sensors
    assert reference["method"] == "last_value (LM subset)"
    assert (reference["num_windows"], reference["num_series"]) == (2, row["num_series"])
