"""``llm-st train`` end to end: files, metrics consistent with ``evaluate``, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llm_st.cli import main
from llm_st.config import load_recipe
from llm_st.engine import build_task, count_parameters
from llm_st.evaluation.evaluate import evaluate
from llm_st.models.registry import list_models
from llm_st.pipeline import ForecastPipeline

DATA = "synthetic-traffic:num_nodes=6,num_days=3"
METRIC_KEYS = {
    "test",
    "val",
    "val_loss",
    "num_test_windows",
    "metric_scale",
    "best_epoch",
    "best_step",
    "selected_on",
    "params",
    "train_time_s",
    "samples_per_s",
    "peak_rss_mb",
    "peak_cuda_mb",
    "world_size",
    "mixed_precision",
    "model",
    "objective",
    "learned",
    "name",
    "run_dir",
    "total_time_s",
}


def recipe_file(tmp_path: Path, model: str, params: dict, training: dict | None = None) -> Path:
    raw = {
        "name": f"{model}-tiny",
        "data": {"spec": DATA, "history": 12, "horizon": 6, "horizons": [3, 6]},
        "model": {"name": model, "params": params},
        "training": {"eval_batch_size": 128, "device": "cpu", **(training or {})},
    }
    path = tmp_path / f"{model}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def reload_and_evaluate(out: Path) -> tuple[dict, dict]:
    """The run's metrics.json and ``evaluate`` of the run loaded by ``from_run``."""
    metrics = json.loads((out / "metrics.json").read_text())
    pipeline = ForecastPipeline.from_run(out, device="cpu")
    recipe = load_recipe(out / "recipe.yaml")
    task = build_task(recipe.data)
    assert json.loads((out / "scaler.json").read_text()) == task.scaler.to_dict()
    direct = evaluate(
        pipeline.model,
        task,
        batch_size=recipe.training.eval_batch_size,
        horizons=tuple(recipe.data.horizons),
    )
    params = count_parameters(pipeline.model)
    assert params == {k: metrics["params"][k] for k in ("trainable", "total")}
    return metrics, direct


def test_train_fits_a_baseline_and_refuses_to_overwrite(tmp_path, capsys):
    recipe = recipe_file(tmp_path, "var", {"order": 2})
    out = tmp_path / "run"
    assert (
        main(
            ["train", "--recipe", str(recipe), "--out", str(out), "--set", "model.params.ridge=0.1"]
        )
        == 0
    )
    assert "var: test MAE" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {
        "recipe.yaml",
        "scaler.json",
        "model.safetensors",
        "manifest.json",
        "data_info.json",
        "data_info.npz",
        "metrics.json",
    }
    metrics, direct = reload_and_evaluate(out)
    assert METRIC_KEYS <= set(metrics)
    assert set(metrics["test"]) == {"h3", "h6", "avg"}
    assert metrics["test"] == direct["metrics"]
    assert metrics["num_test_windows"] == direct["num_windows"]
    assert metrics["learned"] is False and metrics["params"]["total"] == 0  # VAR keeps buffers
    assert load_recipe(out / "recipe.yaml").model.params == {"order": 2, "ridge": 0.1}

    assert main(["train", "--recipe", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and "--resume" in err
    assert (
        main(
            [
                "train",
                "--recipe",
                str(recipe),
                "--out",
                str(out),
                "--overwrite",
                "--set",
                "model.params.ridge=0.1",
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["test"] == metrics["test"]


def test_train_bad_input_gives_one_line_and_status_2(tmp_path, capsys):
    assert (
        main(["train", "--recipe", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.yaml" in err and "does not exist" in err
    recipe = recipe_file(tmp_path, "var", {})
    assert (
        main(
            [
                "train",
                "--recipe",
                str(recipe),
                "--out",
                str(tmp_path / "o"),
                "--set",
                "training.lr=fast",
            ]
        )
        == 2
    )
    assert "training.lr='fast'" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--recipe",
                str(recipe),
                "--out",
                str(tmp_path / "o"),
                "--set",
                "model.params.lags=3",
            ]
        )
        == 2
    )
    assert "lags" in capsys.readouterr().err
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.skipif("dlinear" not in list_models(), reason="needs the dlinear model")
def test_train_a_learned_model_with_pretraining_then_resume_a_finished_run(tmp_path, capsys):
    recipe = recipe_file(
        tmp_path,
        "dlinear",
        {"kernel_size": 5},
        {"epochs": 2, "lr": 1e-2, "batch_size": 64, "patience": None},
    )
    out = tmp_path / "run"
    pretrain = "objective.pretrain={name: regression, params: {loss: mse}, epochs: 1}"
    args = ["train", "--recipe", str(recipe), "--out", str(out), "--set", pretrain]
    assert main(args) == 0
    metrics, direct = reload_and_evaluate(out)
    assert metrics["test"] == direct["metrics"] and metrics["learned"] is True
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    best = min(log, key=lambda r: r["val_loss"])
    assert metrics["best_epoch"] == best["epoch"] and metrics["val_loss"] == best["val_loss"]
    assert metrics["val"]["avg"]["mae"] == best["val_mae"]
    assert metrics["params"]["trainable"] == metrics["params"]["total"] > 0
    assert metrics["samples_per_s"] > 0 and metrics["peak_rss_mb"] > 0
    assert metrics["pretrain"]["steps"] > 0 and metrics["pretrain"]["epochs"] == 1
    assert (out / "pretrain" / "model.safetensors").exists()
    assert len((out / "pretrain" / "log.jsonl").read_text().splitlines()) == 1
    capsys.readouterr()
    # resuming a finished run retrains nothing and reports the same numbers
    assert main(args + ["--resume"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    for key in ("test", "val", "best_epoch", "steps", "pretrain"):
        assert again[key] == metrics[key], key
    assert [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()] == log
    # and a resume with another recipe is refused
    assert main(args + ["--resume", "--set", "training.epochs=3"]) == 2
    assert "training.epochs" in capsys.readouterr().err
