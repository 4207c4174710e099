"""llm-st demo: every section runs on built-in data and the table is consistent."""

import math

import pandas as pd
import pytest

from llm_st.demo import run_demo
from llm_st.errors import ConfigError


def test_demo_quick_table(tmp_path):
    lines: list[str] = []
    out = tmp_path / "demo"
    rows = run_demo(quick=True, out=out, device="cpu", print_fn=lines.append)
    by_name = {r["method"]: r for r in rows}
    assert {
        "last_value",
        "seasonal_naive",
        "historical_average",
        "var",
        "dlinear",
        "stid",
        "graph_wavenet",
    } <= set(by_name)
    adapter = [r for r in rows if r["method"].startswith("gpt4ts[")]
    assert len(adapter) == 4  # pretrained + the three ablations
    assert len({r["method"] for r in adapter}) == 4
    zero_shot = [r for r in rows if r["family"] == "zero-shot LLM"]
    finetuned = [r for r in rows if r["family"] == "fine-tuned LLM"]
    assert len(zero_shot) == 1 and len(finetuned) == 1
    # constrained decoding always parses, before and after fine-tuning
    assert zero_shot[0]["valid_fraction"] == 1.0 == finetuned[0]["valid_fraction"]
    assert "pre-trained here" in zero_shot[0]["note"]
    # the LM rows and their last-value reference score the same windows and sensors
    subset = by_name["last_value (LM subset)"]
    assert zero_shot[0]["num_windows"] == subset["num_windows"] == finetuned[0]["num_windows"]
    assert zero_shot[0]["num_series"] == subset["num_series"] == finetuned[0]["num_series"]
    assert 0 < finetuned[0]["trainable"] < finetuned[0]["total"]  # LoRA weights only
    for r in rows:
        for key in ("h3", "h6", "h12", "avg"):
            m = r["metrics"][key]
            assert all(math.isfinite(m[k]) and m[k] > 0 for k in ("mae", "rmse", "mape"))
            assert m["rmse"] >= m["mae"]  # RMSE >= MAE for any error distribution
    # a trained model beats copying the last value over the whole horizon even on a demo budget
    assert by_name["stid"]["metrics"]["avg"]["mae"] < by_name["last_value"]["metrics"]["avg"]["mae"]
    lv = by_name["last_value"]["metrics"]
    # copying the last value gets worse with the horizon on data with rush hours
    assert lv["h3"]["mae"] < lv["h6"]["mae"] < lv["h12"]["mae"]
    # the weekly profile does not depend on the horizon: its error is flat
    ha = by_name["historical_average"]["metrics"]
    assert abs(ha["h3"]["mae"] - ha["h12"]["mae"]) < 0.1 * ha["avg"]["mae"]
    table = "\n".join(lines)
    assert all(name in table for name in by_name)

    # the best trained run is written and used as a user would: loaded and forecasting
    best = min((r for r in rows if "run_dir" in r), key=lambda r: r["metrics"]["avg"]["mae"])
    assert f"best trained run: {best['run_dir']}" in table
    assert {p.name for p in out.iterdir()} == {
        "table.txt",
        "forecast.csv",
        "dlinear",
        "stid",
        "graph_wavenet",
        "text_lm-qlora",
        "figures",
    }
    # the report's figures of the demo's rows, printed where they are
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["accuracy_vs_cost.png", "horizon_steps.png"]
    assert all((out / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    assert "horizon_steps.png" in table
    forecast = pd.read_csv(out / "forecast.csv")
    assert len(forecast) == 12 * 12 and forecast["mean"].between(0, 120).all()  # mph
    assert (out / "table.txt").read_text().startswith("method")
    with pytest.raises(ConfigError, match="not empty"):  # earlier results are never overwritten
        run_demo(quick=True, out=out)
