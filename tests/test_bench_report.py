"""The bench layer's text tables: the gap to a published figure, the results summary of a
benchmark folder, and where the standard recipes are."""

from __future__ import annotations

from pathlib import Path

from llm_st.bench.report import gap
from llm_st.config import recipes_root


def test_gap_to_a_published_figure():
    assert gap(0.370, 0.375) == "-1.3%"  # 100 * (0.370 / 0.375 - 1) = -1.33
    assert gap(0.401, 0.399) == "+0.5%"  # +0.50
    assert gap(0.399, 0.399) == "+0.0%"


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
