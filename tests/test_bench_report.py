"""The bench layer's numbers: seed averages, the gaps to published figures, and the
baseline runner's rows against the metrics its run directories hold."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from llm_st.bench.baselines import expand_groups, find_recipes, run_baselines
from llm_st.bench.report import baseline_report, ett_table, gap
from llm_st.bench.seeds import mean_over_seeds
from llm_st.config import recipes_root

SPEC = "synthetic-traffic:num_nodes=4,num_days=3"


def _run(mae: float, rmse: float, seconds: float | None, seed: int) -> dict:
    return {
        "model": "dlinear",
        "seed": seed,
        "test": {"avg": {"mae": mae, "rmse": rmse}, "h3": {"mae": mae - 1, "rmse": rmse - 1}},
        "train_time_s": seconds,
    }


def test_mean_over_seeds_gives_the_mean_and_population_std():
    runs = [_run(1.0, 2.0, 10.0, 0), _run(2.0, 4.0, None, 1), _run(3.0, 9.0, 20.0, 2)]
    row = mean_over_seeds(runs)
    assert row["seeds"] == 3
    assert row["model"] == "dlinear" and row["seed"] == 0  # the first run's other fields
    assert math.isclose(row["test"]["avg"]["mae"], 2.0)
    assert math.isclose(row["test"]["avg"]["rmse"], 5.0)
    assert math.isclose(row["test"]["h3"]["mae"], 1.0)
    # population std: sqrt(((1-2)^2 + 0 + (3-2)^2) / 3), sqrt((9 + 1 + 16) / 3)
    assert math.isclose(row["test_std"]["avg"]["mae"], math.sqrt(2 / 3))
    assert math.isclose(row["test_std"]["avg"]["rmse"], math.sqrt(26 / 3))
    assert math.isclose(row["train_time_s"], 15.0)  # None (not measured) left out
    assert "seconds" not in row  # costs the runs do not have are not invented


def test_gap_to_a_published_figure():
    assert gap(0.370, 0.375) == "-1.3%"  # 100 * (0.370 / 0.375 - 1) = -1.33
    assert gap(0.401, 0.399) == "+0.5%"  # +0.50
    assert gap(0.399, 0.399) == "+0.0%"


def test_ett_table_shows_the_gaps_to_the_published_figures():
    row = {
        "model": "dlinear",
        "test": {"avg": {"mse": 0.370, "mae": 0.401}},
        "test_std": {"avg": {"mse": 0.002, "mae": 0.001}},
        "seeds": 3,
        "epochs": 6,
        "best_epoch": 4,
        "train_time_s": 41.6,
        "params": {"trainable": 64704},
    }
    unpublished = {**row, "model": "nlinear", "seeds": 1}
    head, rule, *body = [
        re.split(r" {2,}", line) for line in ett_table("ETTh1", [row, unpublished]).splitlines()
    ]
    assert head == [
        *("model", "MSE", "MAE", "published", "gap MSE", "gap MAE"),
        *("epochs (best)", "train time", "trainable"),
    ]
    assert body[0] == [
        "dlinear",
        "0.370 ± 0.002",
        "0.401 ± 0.001",
        "0.375 / 0.399",
        "-1.3%",
        "+0.5%",
        "6 (4)",
        "42s",
        "64704",
    ]
    assert body[1] == ["nlinear", "0.370", "0.401", "-", "-", "-", "6 (4)", "42s", "64704"]


def test_find_recipes_orders_the_baselines_and_groups_expand():
    paths = find_recipes("synthetic-traffic", ["dlinear", "no_such_model", "last_value"])
    assert [p.parts[-3] for p in paths] == ["last_value", "dlinear"]
    assert paths[0] == recipes_root() / "last_value" / "synthetic-traffic" / "config.yaml"
    assert expand_groups(["ETT", "LosLoop"]) == ["ETTh1", "ETTh2", "LosLoop"]


def test_baseline_run_rows_are_the_run_directories_metrics(tmp_path):
    lines: list[str] = []
    (result,) = run_baselines(
        ["synthetic-traffic"],
        tmp_path,
        ["dlinear", "last_value"],
        seeds=2,
        overrides=[
            f"data.spec={SPEC}",
            "training.epochs=1",
            "training.batch_size=64",
            "training.device=cpu",
        ],
        progress=lines.append,
    )
    assert result.skipped is None
    assert [r["model"] for r in result.rows] == ["last_value", "dlinear"]
    assert len(lines) == 3  # one run of last_value (learns nothing), two seeds of dlinear

    def saved(model: str, seed: int) -> dict:
        path = tmp_path / "synthetic-traffic" / model / f"seed{seed}" / "metrics.json"
        return json.loads(path.read_text())

    copy_last, linear = result.rows
    assert copy_last["seeds"] == 1 and copy_last["run_dirs"] == [
        str(tmp_path / "synthetic-traffic" / "last_value" / "seed0")
    ]
    assert copy_last["test"] == saved("last_value", 0)["test"]
    runs = [saved("dlinear", 0), saved("dlinear", 1)]
    assert runs[0]["test"] != runs[1]["test"]  # the seeds differ
    for key in ("h3", "h6", "h12", "avg"):
        maes = [r["test"][key]["mae"] for r in runs]
        assert math.isclose(linear["test"][key]["mae"], sum(maes) / 2)
        assert math.isclose(linear["test_std"][key]["mae"], abs(maes[0] - maes[1]) / 2)
    assert (linear["history"], linear["horizon"], linear["seeds"]) == (12, 12, 2)

    report = baseline_report(result)
    base, mae = copy_last["test"]["avg"]["mae"], linear["test"]["avg"]["mae"]
    assert report.splitlines()[0].startswith(
        f"== synthetic-traffic: history 12 -> horizon 12, {copy_last['num_test_windows']} test"
    )
    assert f"avg MAE vs last_value: dlinear {100 * (mae / base - 1):+.1f}%" in report
    std = linear["test_std"]["h3"]
    assert f"std of MAE/RMSE over 2 seeds: h3 {std['mae']:.3f}/{std['rmse']:.3f}" in report


def test_baseline_datasets_without_recipes_or_files_are_skipped_with_the_reason(tmp_path):
    results = list(
        run_baselines(["no-such-set", "ETTh1"], tmp_path / "out", ["dlinear"], data_dir=tmp_path)
    )
    assert [r.dataset for r in results] == ["no-such-set", "ETTh1"]
    assert results[0].skipped.startswith("no recipes under ")
    assert results[1].skipped.startswith("skipped, data not found (")
    assert "ETTh1" in results[1].skipped and not results[1].rows
    assert baseline_report(results[1]) == f"== ETTh1: {results[1].skipped}"
    assert not (tmp_path / "out").exists()


def test_recipes_root_is_the_checkouts_alignment_folder():
    assert recipes_root() == Path(__file__).resolve().parents[1] / "alignment"


def test_results_summary_averages_seeds_and_marks_the_best():
    import pandas as pd

    from llm_st.bench.report import results_summary

    rows = []
    for method, values in (("a", [1.0, 3.0]), ("b", [1.5, 1.7])):
        for seed, value in enumerate(values):
            for step, scale in (("avg", 1.0), ("h3", 0.5)):
                rows.append({
                    "protocol": "full", "protocol_param": None, "dataset": "d", "horizon": 12,
                    "method": method, "seed": seed, "horizon_step": step, "metric": "mae",
                    "value": value * scale, "status": "done", "cell_id": f"{method}{seed}",
                    "error": None,
                })  # fmt: skip
    rows.append({**rows[0], "method": "c", "status": "failed", "cell_id": "c0",
                 "metric": None, "value": None, "error": "ValueError: boom"})  # fmt: skip
    text = results_summary(pd.DataFrame(rows))
    lines = {line.split()[3]: line for line in text.splitlines() if line.startswith("full")}
    # a: mean 2, sample std sqrt(2); b: mean 1.6, std 0.1414, the best
    assert "2 ± 1.414" in lines["a"] and lines["a"].rstrip().endswith("2")
    assert "1.6 ± 0.1414*" in lines["b"]
    assert "failed: c0 ValueError: boom" in text
