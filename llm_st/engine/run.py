"""Whole runs: a recipe (or a built model) in, a run directory and test metrics out."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator

from llm_st.config import HARDWARE_SETTINGS, DataConfig, Recipe, TrainingConfig, save_recipe
from llm_st.data.container import STData
from llm_st.data.task import ForecastTask, prepare_task
from llm_st.engine.accel import make_accelerator
from llm_st.engine.rundir import RunDir, atomic_write_json
from llm_st.engine.seeding import seed_everything
from llm_st.engine.trainer import Trainer, count_parameters
from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo, STModel
from llm_st.objectives import Objective, build_objective

logger = logging.getLogger("llm_st")


def build_task(config: DataConfig, data: STData | None = None) -> ForecastTask:
    """The forecasting task a recipe's data section describes (``data`` skips loading)."""
    if data is None:
        from llm_st.data import load

        data = load(config.spec, data_dir=config.data_dir)
    return prepare_task(
        data,
        config.history,
        config.horizon,
        ratios=config.ratios,
        borders=config.borders,
        scaler=config.scaler,
        metric_scale=config.metric_scale,
        stride=config.stride,
        train_fraction=config.train_fraction,
        val_stride=config.val_stride,
        scaler_fit=config.scaler_fit,
    )


def peak_memory_mb(device: torch.device) -> dict[str, float | None]:
    """Peak resident memory of this process and, on CUDA, peak allocated GPU memory (MiB)."""
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:  # not on Windows
        rss = None
    cuda = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"peak_rss_mb": rss, "peak_cuda_mb": cuda}


def open_run_dir(
    path: str | Path, accelerator: Accelerator, resume: bool = False, overwrite: bool = False
) -> RunDir:
    """:meth:`RunDir.prepare` done safely by several processes.

    Every process checks (so all raise the same error, none waits forever at a
    barrier); then the main process alone deletes (``overwrite``) and creates.
    """
    run = RunDir(path)
    run.check(resume, overwrite)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run.prepare(resume, overwrite)
    accelerator.wait_for_everyone()
    return run


def fit_and_evaluate(
    model: STModel,
    task: ForecastTask,
    training: TrainingConfig | None = None,
    objective: Objective | None = None,
    run_dir: str | Path | RunDir | None = None,
    horizons: Sequence[int] = (3, 6, 12),
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    accelerator: Accelerator | None = None,
    header: dict[str, Any] | None = None,
    started: float | None = None,
    recipe: Recipe | None = None,
) -> dict[str, Any]:
    """Fit ``model`` (train it, or ``fit_data`` when it learns nothing), then test it once.

    The best weights (selected on the validation split) are evaluated on the whole
    test split with :func:`~llm_st.evaluation.evaluate.evaluate`. With ``run_dir``
    the run writes ``model.safetensors``, ``scaler.json``, ``log.jsonl``, checkpoints
    and ``metrics.json`` there (see :mod:`llm_st.engine.artifacts`), and ``recipe`` as
    ``recipe.yaml`` when given: the recipe that builds ``model`` and ``task``, so that
    :meth:`llm_st.pipeline.ForecastPipeline.from_run` can load the run. A path is opened
    with :func:`open_run_dir` (refused if it holds results, unless ``resume``); a
    :class:`RunDir` is used as it is.

    Returns
    -------
    dict
        The content of ``metrics.json``: ``test`` and ``val`` (``{"avg": {mae, mse,
        rmse, mape}, "h3": ...}``), ``val_loss``, ``num_test_windows``,
        ``metric_scale``, ``best_epoch``, ``best_step``, ``selected_on``, ``epochs``,
        ``steps``, ``stopped_early``, ``params`` (trainable / total of the model,
        objective), ``train_time_s``, ``samples_per_s`` (after warm-up, see
        :func:`~llm_st.engine.trainer.timed_warmup_steps`), ``micro_batch_size``,
        ``peak_rss_mb``, ``peak_cuda_mb``, ``world_size``, ``mixed_precision``, ``model``,
        ``objective``, ``learned``, ``total_time_s`` (since ``started``, a
        ``time.perf_counter()`` value; default: the call), after the items of ``header``.
    """
    started = time.perf_counter() if started is None else started
    training = training or TrainingConfig()
    acc = accelerator or make_accelerator(training)
    if isinstance(run_dir, (str, Path)):
        run_dir = open_run_dir(run_dir, acc, resume)
    trainer = Trainer(model, objective, task, training, run_dir, horizons, on_step, acc)
    if acc.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(acc.device)
    fit = trainer.fit(resume=resume)
    test = trainer.test()
    metrics = {
        **(header or {}),
        "model": getattr(model, "registry_name", type(model).__name__),
        "objective": trainer.objective.name,
        "learned": model.learned,
        "test": test["metrics"],
        "num_test_windows": test["num_windows"],
        # a model that answers in text: answers that parsed, nodes forecast
        **{k: test[k] for k in ("valid_fraction", "num_nodes") if k in test},
        "metric_scale": test["metric_scale"],
        **fit,
        "params": {
            **count_parameters(model),
            "objective": count_parameters(trainer.objective)["total"],
        },
        **peak_memory_mb(acc.device),
        "world_size": acc.num_processes,
        "mixed_precision": acc.mixed_precision,
        "total_time_s": time.perf_counter() - started,
    }
    if run_dir is not None and acc.is_main_process:
        if recipe is not None and not (run_dir / "recipe.yaml").is_file():
            save_recipe(recipe, run_dir / "recipe.yaml")
        task.scaler.save(run_dir / "scaler.json")
        atomic_write_json(run_dir / "metrics.json", metrics)
    acc.wait_for_everyone()
    return metrics


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resumable(saved: Path, recipe: Any, where: str | Path) -> None:
    """Refuse to resume the run in ``where`` with another recipe than the one it was started
    with (``saved``, its YAML; nothing to check when it is missing). ``recipe`` is any recipe
    with ``to_dict()``; the training settings of :data:`~llm_st.config.HARDWARE_SETTINGS`
    (device, compile, micro-batches) may change."""
    if not saved.is_file():
        return
    before = _flatten(yaml.safe_load(saved.read_text()) or {})
    current = _flatten(recipe.to_dict())
    free = {f"training.{name}" for name in HARDWARE_SETTINGS}
    changed = sorted(
        k for k in set(before) | set(current) if k not in free and before.get(k) != current.get(k)
    )
    if changed:
        raise ConfigError(
            f"the recipe differs from the one {str(where)!r} was started with at {changed}",
            "resume with the same recipe, or start over with --overwrite or another --out",
        )


def train(
    recipe: Recipe,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    data: STData | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run a recipe into ``out_dir``: data, model, optional pre-training, training, test.

    ``out_dir`` must not hold results unless ``overwrite`` (replace them) or
    ``resume`` (continue the interrupted run bit for bit, on the same hardware).
    ``data`` replaces loading ``recipe.data.spec``. Every process of a distributed
    launch calls this; only the main process writes files.

    Returns the metrics written to ``metrics.json`` (see :func:`fit_and_evaluate`),
    plus ``name``, ``run_dir`` and, with a pre-training objective, ``pretrain`` (its
    fit summary).
    """
    started = time.perf_counter()
    cfg = recipe.training
    acc = make_accelerator(cfg)
    if resume:
        check_resumable(Path(out_dir) / "recipe.yaml", recipe, out_dir)
    run = open_run_dir(out_dir, acc, resume, overwrite)
    if acc.is_main_process:
        save_recipe(recipe, run / "recipe.yaml")
    acc.wait_for_everyone()

    seed_everything(cfg.seed)
    task = build_task(recipe.data, data)
    info = DataInfo.from_data(task.data, task.history, task.horizon)
    from llm_st.models.registry import build_model

    model = build_model(
        recipe.model.name, info, backbone=recipe.model.backbone, **recipe.model.params
    )
    horizons = recipe.data.report_horizons()
    extra: dict[str, Any] = {}
    pre = recipe.objective.pretrain
    if pre is not None and not model.learned:
        logger.warning(
            "model %s learns nothing; skipping the pretrain objective", recipe.model.name
        )
    elif pre is not None:
        seed_everything(cfg.seed)
        pre_objective = build_objective(pre.name, info, model, **pre.params)
        pre_cfg = dataclasses.replace(
            cfg, epochs=pre.epochs, max_steps=None, select_metric="val_loss"
        )
        pre_run = RunDir(run / "pretrain")
        if acc.is_main_process:
            pre_run.path.mkdir(exist_ok=True)
        trainer = Trainer(model, pre_objective, task, pre_cfg, pre_run, horizons, accelerator=acc)
        extra["pretrain"] = trainer.fit(resume=resume)
    seed_everything(cfg.seed)
    objective = build_objective(recipe.objective.name, info, model, **recipe.objective.params)
    return fit_and_evaluate(
        model,
        task,
        cfg,
        objective,
        run,
        horizons,
        resume,
        on_step,
        acc,
        header={"name": recipe.name, "run_dir": str(run.path), **extra},
        started=started,
    )
