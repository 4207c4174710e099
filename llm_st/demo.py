"""``llm-st demo``: the main job on built-in data, every method family in one table.

On ``synthetic-traffic`` (a road graph with rush hours, congestion that spreads
along edges, incidents and sensor dropouts) it fits and scores the non-learned
baselines, baselines trained from scratch, a zero-shot LLM and a frozen-LLM adapter
(GPT4TS on the pretrained all-MiniLM-L6-v2) with its three ablations (no LLM, one
attention layer, random weights), all under the ST graph protocol: chronological
70/10/20 split, one z-score fit on the training rows, masked MAE / RMSE / MAPE on the
original scale at
horizons 3 / 6 / 12 (15 / 30 / 60 minutes) and their 12-step average.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from llm_st.data import load
from llm_st.data.task import ForecastTask, prepare_task
from llm_st.evaluation.evaluate import evaluate
from llm_st.evaluation.report import format_table
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model

HISTORY, HORIZON = 12, 12


def _count_params(model: Any) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _naive_rows(task: ForecastTask) -> list[dict[str, Any]]:
    rows = []
    per_day = task.data.steps_per_day()
    for name, history in (
        ("last_value", HISTORY),
        ("seasonal_naive", per_day),
        ("historical_average", HISTORY),
        ("var", HISTORY),
    ):
        t0 = time.perf_counter()
        model = build_model(name, DataInfo.from_data(task.data, history, HORIZON))
        model.fit_data(task.train_data(), task.scaler)
        result = evaluate(model, task, history=history)
        rows.append(
            {
                "method": name,
                "family": "non-learned",
                "metrics": result["metrics"],
                "trainable": 0,
                "total": sum(b.numel() for b in model.buffers()),
                "seconds": time.perf_counter() - t0,
                "note": f"sees the last {history} steps (one day); same test targets"
                if history != HISTORY
                else None,
            }
        )
    return rows


# Learned baselines with short step budgets so the demo stays within a few minutes on two
# cores; Graph WaveNet is narrowed (its paper width costs ~1 s a step on one CPU core).
LEARNED = (
    ("dlinear", {}, 400, 1e-2),
    ("stid", {}, 300, 2e-3),
    (
        "graph_wavenet",
        {
            "residual_channels": 16,
            "dilation_channels": 16,
            "skip_channels": 64,
            "end_channels": 128,
        },
        120,
        2e-3,
    ),
)


def _learned_rows(task: ForecastTask, quick: bool) -> list[dict[str, Any]]:
    from llm_st.config import TrainingConfig
    from llm_st.engine import fit_and_evaluate

    rows = []
    for name, hparams, steps, lr in LEARNED:
        t0 = time.perf_counter()
        model = build_model(name, DataInfo.from_data(task.data, HISTORY, HORIZON), **hparams)
        budget = steps // 3 if quick else steps
        training = TrainingConfig(
            max_steps=budget,
            eval_every=max(10, budget // 4),
            lr=lr,
            batch_size=32,
            patience=100,
            seed=0,
        )
        result = fit_and_evaluate(model, task, training)
        rows.append(
            {
                "method": name,
                "family": "trained from scratch",
                "metrics": result["test"],
                "trainable": result["params"]["trainable"],
                "total": result["params"]["total"],
                "seconds": time.perf_counter() - t0,
                "note": f"{result['steps']} optimizer steps (demo budget), weights of the best "
                "validation check",
            }
        )
    return rows


def _zero_shot_rows(task: ForecastTask, quick: bool, model: str | None) -> list[dict[str, Any]]:
    from llm_st.zeroshot import zero_shot_demo_row

    nodes = list(range(2 if quick else 8))
    windows = 1 if quick else 4
    row = zero_shot_demo_row(
        task, model, max_windows=windows, nodes=nodes, num_samples=2 if quick else 5
    )
    row["family"] = "zero-shot LLM"
    row["note"] = f"{row['note']}; scored on {windows} test windows x {len(nodes)} sensors only"
    return [row]


def _adapter_rows(task: ForecastTask, quick: bool) -> list[dict[str, Any]]:
    from llm_st.evaluation.ablation import adapter_demo_rows

    return adapter_demo_rows(task, quick=quick)


def run_demo(
    quick: bool = False,
    seed: int = 0,
    zero_shot_model: str | None = None,
    print_fn: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every section on synthetic-traffic, print one table, return its rows."""
    size = "num_nodes=12,num_days=14" if quick else "num_nodes=64,num_days=28"
    data = load(f"synthetic-traffic:{size},seed={seed}")
    task = prepare_task(data, HISTORY, HORIZON)
    print_fn(f"llm-st demo on {data!r}")
    print_fn(
        f"protocol: chronological split rows {task.split.to_dict()}, z-score fit on train, "
        f"history {HISTORY}, horizon {HORIZON}, masked metrics on the original scale "
        f"({task.dataset('test').__len__()} test windows x {data.num_nodes} sensors)"
    )
    sections = (
        ("non-learned baselines", lambda: _naive_rows(task)),
        ("baselines trained from scratch", lambda: _learned_rows(task, quick)),
        ("zero-shot LLM", lambda: _zero_shot_rows(task, quick, zero_shot_model)),
        ("LLM adapter and the Tan et al. ablations", lambda: _adapter_rows(task, quick)),
    )
    rows: list[dict[str, Any]] = []
    for title, section in sections:
        print_fn(f"running {title} ...")
        rows += section()
    print_fn("")
    print_fn(format_table(rows))
    return rows
