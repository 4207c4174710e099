"""The one training loop of llm-st, on Accelerate.

:class:`Trainer` trains any :class:`~llm_st.models.base.STModel` with any
:class:`~llm_st.objectives.Objective` on a :class:`~llm_st.data.task.ForecastTask`:
AdamW, warm-up + schedule, gradient clipping and accumulation, mixed precision,
early stopping and best-weight selection on the validation split only. The same
code runs on CPU, on one GPU and on several processes (``torchrun`` /
``accelerate launch``); model and objective form one module, so they share one
optimizer, one DDP wrapper and one checkpoint.

Resumability: at every evaluation a checkpoint holds model, optimizer, scheduler
and RNG states (Accelerate's ``save_state``), the best weights and the
:class:`TrainState` (counters, early-stopping state, log history). The data order
of an epoch is a pure function of ``(seed, epoch)``
(:func:`~llm_st.engine.seeding.epoch_order`), so a resumed run replays exactly the
batches the uninterrupted one would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from llm_st.config import TrainingConfig
from llm_st.data.task import ForecastTask
from llm_st.engine.accel import lr_schedule, make_accelerator, param_groups
from llm_st.engine.artifacts import (
    keep_trained_on_save,
    logical_numel,
    save_data_info,
    save_model,
    trained_state,
)
from llm_st.engine.checkpoint import CheckpointManager, load_weights, save_weights
from llm_st.engine.rundir import RunDir, atomic_write_json
from llm_st.engine.seeding import epoch_order, process_batches, seed_everything
from llm_st.errors import ConfigError
from llm_st.evaluation.evaluate import evaluate, mean_loss
from llm_st.models.base import STModel
from llm_st.objectives import ForecastObjective, Objective, build_objective

logger = logging.getLogger("llm_st")


class TrainModule(nn.Module):
    """Model and objective as one module: ``forward(batch) -> objective.loss(model, batch)``."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.objective.loss(self.model, batch)


@dataclass
class TrainState:
    """Everything besides Accelerate's states that a resumed run needs (JSON-serializable)."""

    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch done (a whole accumulation group)
    step: int = 0  # optimizer steps done
    samples: int = 0  # training windows processed, all processes
    train_time_s: float = 0.0  # time in training steps (evaluation excluded)
    best_score: float | None = None
    best_epoch: float | None = None
    best_step: int | None = None
    best_val: dict[str, Any] | None = None  # {"loss": float, "metrics": {...} | None}
    evals_since_best: int = 0
    done: bool = False
    stopped_early: bool = False
    world_size: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def count_parameters(module: nn.Module) -> dict[str, int]:
    """``{"trainable", "total"}`` parameter counts (shared ones once, 4-bit weights unpacked)."""
    params = list(module.parameters())
    return {
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "total": sum(logical_numel(p) for p in params),
    }


def _epoch_value(epoch: int, batch: int, batches: int) -> float | int:
    """Epoch progress as reported: an int at epoch ends, else a fraction."""
    return epoch if batch == 0 else round(epoch + batch / batches, 4)


class Trainer:
    """Train ``model`` with ``objective`` on ``task``; select on validation; test once.

    Parameters
    ----------
    model
        Any STModel (``learned = False`` models are only fit with ``fit_data``).
    objective
        What to minimize; default: ``regression`` with MAE.
    task
        Data, split, scaler and windows.
    config
        Optimization, schedule, early stopping and hardware.
    run_dir
        Where checkpoints, ``log.jsonl`` and ``model.safetensors`` go; None keeps the
        run in memory (no checkpoints, no resume).
    horizons
        Horizon steps reported besides the average.
    on_step
        Called with the optimizer step count after every optimizer step (progress
        hooks; raising ``KeyboardInterrupt`` there interrupts the run).
    accelerator
        An Accelerator to share (default: one made from ``config``).
    """

    def __init__(
        self,
        model: STModel,
        objective: Objective | None,
        task: ForecastTask,
        config: TrainingConfig,
        run_dir: str | Path | RunDir | None = None,
        horizons: Sequence[int] = (3, 6, 12),
        on_step: Callable[[int], None] | None = None,
        accelerator: Accelerator | None = None,
    ):
        self.model = model
        self.objective = objective if objective is not None else build_objective("regression")
        self.task = task
        self.config = config
        self.run_dir = RunDir(run_dir) if isinstance(run_dir, (str, Path)) else run_dir
        self.horizons = tuple(horizons)
        self.on_step = on_step
        self.accelerator = accelerator or make_accelerator(config)
        self.state = TrainState(
            world_size=self.accelerator.num_processes, config=dataclasses.asdict(config)
        )
        self.module = TrainModule(model, self.objective)
        self._best: dict[str, torch.Tensor] | None = None
        self._batches_per_epoch = 1
        self._ckpts = CheckpointManager(self.run_dir.checkpoints) if self.run_dir else None

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per evaluation: epoch, step, train_loss, val_loss, val_mae, lr, ..."""
        return self.state.history

    # ------------------------------------------------------------------ public
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train (or, for ``learned = False`` models, fit on the training rows).

        On return the model holds the best weights (by ``config.select_metric`` on the
        validation split). ``resume=True`` continues from the run directory's latest
        checkpoint (or starts when there is none).

        Returns
        -------
        dict
            ``best_epoch``, ``best_step``, ``selected_on``, ``val`` (metrics of the best
            weights), ``val_loss``, ``epochs``, ``steps``, ``stopped_early``,
            ``train_time_s``, ``samples_per_s``.
        """
        acc, cfg = self.accelerator, self.config
        seed_everything(cfg.seed + acc.process_index)
        self.model.fit_data(self.task.train_data(), self.task.scaler)
        self.module.to(acc.device)
        if not self.model.learned:
            return self._fit_summary(self._validate_without_training())
        val = self.task.split.val
        if val[1] <= val[0]:
            raise ConfigError(
                "the validation split is empty; early stopping and best-weight selection need one",
                "use ratios with a validation part, e.g. [0.7, 0.1, 0.2]",
            )
        if count_parameters(self.module)["trainable"] == 0:
            raise ConfigError(
                f"{type(self.model).__name__} has no trainable parameters",
                "unfreeze some parameters or use a model with learned = False",
            )
        train_set = self.task.dataset("train")
        batches = len(
            process_batches(
                np.arange(len(train_set)), cfg.batch_size, acc.process_index, acc.num_processes
            )
        )
        self._batches_per_epoch = batches
        steps_per_epoch = math.ceil(batches / cfg.grad_accum)
        total = cfg.max_steps or cfg.epochs * steps_per_epoch
        optimizer = torch.optim.AdamW(param_groups(self.module, cfg.weight_decay), lr=cfg.lr)
        scheduler = lr_schedule(optimizer, cfg.scheduler, cfg.warmup_steps, total)
        self._wrapped, self._optimizer, self._scheduler = acc.prepare(
            self.module, optimizer, scheduler
        )
        # checkpoints keep what trains, not the frozen pretrained weights
        hook = acc.register_save_state_pre_hook(keep_trained_on_save(acc.unwrap_model))
        try:
            if resume:
                self._restore()
            if not self.state.done:
                self._train(train_set, total)
        finally:
            hook.remove()
        if self._best is None:
            warnings.warn(
                "no evaluation gave a finite validation score; keeping the last weights",
                stacklevel=2,
            )
        else:
            self.module.load_state_dict(self._best, strict=False)
        self._save_final_weights()
        # drop the optimizer state and wrappers (a later phase prepares its own)
        acc.free_memory()
        self._wrapped = self._optimizer = self._scheduler = None
        return self._fit_summary(self.state.best_val)

    def test(self, part: str = "test") -> dict[str, Any]:
        """Masked metrics of the current weights on all windows of ``part`` (see ``evaluate``)."""
        with self.accelerator.autocast():
            return evaluate(
                self.model,
                self.task,
                part,
                self.config.eval_batch_size,
                self.accelerator.device,
                self.horizons,
            )

    # ------------------------------------------------------------------ loop
    def _train(self, train_set: Any, total: int) -> None:
        acc, cfg, st = self.accelerator, self.config, self.state
        rank, world = acc.process_index, acc.num_processes
        bar = tqdm(
            total=total,
            initial=st.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (acc.is_main_process and sys.stderr.isatty()),
        )
        sums: dict[str, torch.Tensor] = {}
        self.module.train()
        clock = time.perf_counter()
        while not st.done:
            order = epoch_order(len(train_set), cfg.seed, st.epoch)
            batches = process_batches(order, cfg.batch_size, rank, world)
            for i in range(st.batch_in_epoch, len(batches)):
                group = min(cfg.grad_accum, len(batches) - i // cfg.grad_accum * cfg.grad_accum)
                sync = (i + 1) % cfg.grad_accum == 0 or i == len(batches) - 1
                batch = {
                    k: v.to(acc.device, non_blocking=True) for k, v in train_set[batches[i]].items()
                }
                with nullcontext() if sync else acc.no_sync(self._wrapped):
                    loss, logs = self._wrapped(batch)
                    acc.backward(loss / group)
                for key, value in {"loss": loss, **logs}.items():
                    value = torch.as_tensor(value, device=acc.device).detach().float()
                    sums[key] = sums.get(key, 0) + torch.stack([value, torch.ones_like(value)])
                st.samples += len(batches[i]) * world
                if not sync:
                    continue
                if cfg.grad_clip is not None:
                    acc.clip_grad_norm_(self._wrapped.parameters(), cfg.grad_clip)
                self._optimizer.step()
                self._scheduler.step()
                self._optimizer.zero_grad(set_to_none=True)
                st.step += 1
                st.batch_in_epoch = i + 1
                if st.batch_in_epoch == len(batches):
                    st.epoch, st.batch_in_epoch = st.epoch + 1, 0
                bar.update(1)
                if self.on_step is not None:
                    self.on_step(st.step)
                end_of_epoch = st.batch_in_epoch == 0
                if (
                    (cfg.eval_every is None and end_of_epoch)
                    or (cfg.eval_every is not None and st.step % cfg.eval_every == 0)
                    or st.step >= total
                ):
                    st.train_time_s += time.perf_counter() - clock
                    record = self._evaluate(sums, total, len(batches))
                    bar.set_postfix(val_loss=f"{record['val_loss']:.4g}")
                    sums = {}
                    self._checkpoint()
                    clock = time.perf_counter()
                    if st.done:
                        break
        bar.close()

    def _evaluate(self, sums: dict[str, torch.Tensor], total: int, batches: int) -> dict[str, Any]:
        """Score the validation split, update best weights and early stopping, log."""
        acc, cfg, st = self.accelerator, self.config, self.state
        record: dict[str, Any] = {
            "epoch": _epoch_value(st.epoch, st.batch_in_epoch, batches),
            "step": st.step,
            "lr": self._scheduler.get_last_lr()[0],
        }
        for key in sorted(sums):
            value, count = acc.reduce(sums[key], reduction="sum").tolist()
            record[f"train_{key}"] = value / count
        val = self._validate()
        record["val_loss"] = val["loss"]
        if val["metrics"] is not None:
            record.update({f"val_{k}": v for k, v in val["metrics"]["avg"].items()})
        score = record["val_loss"] if cfg.select_metric == "val_loss" else record["val_mae"]
        if math.isfinite(score) and (st.best_score is None or score < st.best_score):
            st.best_score, st.best_epoch, st.best_step = score, record["epoch"], st.step
            st.best_val, st.evals_since_best = val, 0
            self._best = self._trained_state()
        else:
            st.evals_since_best += 1
        stop = cfg.patience is not None and st.evals_since_best >= cfg.patience
        st.stopped_early = stop and st.step < total
        st.done = stop or st.step >= total
        record["time_s"] = round(st.train_time_s, 3)
        st.history.append(record)
        logger.info(
            "step %d epoch %s: %s",
            st.step,
            record["epoch"],
            ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k.startswith("val_")),
        )
        return record

    def _validate(self) -> dict[str, Any]:
        """``{"loss": float, "metrics": dict | None}`` on the validation split."""
        acc, cfg, model = self.accelerator, self.config, self.model
        self.module.eval()
        args = (self.task, "val", cfg.eval_batch_size, acc.device, self.horizons)
        with acc.autocast():
            if isinstance(self.objective, ForecastObjective):
                result = evaluate(model, *args, loss_fn=self.objective.forecast_loss)
                out = {"loss": result["loss"], "metrics": result["metrics"]}
            else:
                loss = mean_loss(
                    lambda b: self.objective.loss(model, b)[0],
                    self.task.dataset("val"),
                    cfg.eval_batch_size,
                    acc.device,
                )
                metrics = (
                    evaluate(model, *args)["metrics"] if cfg.select_metric == "val_mae" else None
                )
                out = {"loss": loss, "metrics": metrics}
        self.module.train()
        return out

    def _validate_without_training(self) -> dict[str, Any]:
        with self.accelerator.autocast():
            result = evaluate(
                self.model,
                self.task,
                "val",
                self.config.eval_batch_size,
                self.accelerator.device,
                self.horizons,
            )
        self._save_final_weights()
        return {"loss": None, "metrics": result["metrics"]}

    def _trained_state(self) -> dict[str, torch.Tensor]:
        """CPU copy of what a run keeps (:func:`~llm_st.engine.artifacts.trained_state`):
        frozen pretrained weights never change, so best weights need not copy them."""
        return {k: v.to("cpu", copy=True) for k, v in trained_state(self.module).items()}

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> None:
        """Write the resumable state atomically (every process takes part)."""
        if self._ckpts is None:
            return
        acc, st = self.accelerator, self.state
        if acc.is_main_process:
            self._ckpts.begin(st.step)
        acc.wait_for_everyone()
        staging = self._ckpts.staging_dir(st.step)
        acc.save_state(str(staging))
        if acc.is_main_process:
            save_weights(self._best or {}, staging / "best.safetensors")
            atomic_write_json(staging / "trainer_state.json", dataclasses.asdict(st))
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._ckpts.commit(st.step)
            self.run_dir.write_log(st.history)
        acc.wait_for_everyone()

    def _restore(self) -> None:
        """Load the latest checkpoint of the run directory, if there is one."""
        latest = self._ckpts.latest() if self._ckpts is not None else None
        if latest is None:
            logger.info("no checkpoint to resume from; starting the run")
            return
        saved = TrainState(**json.loads((latest / "trainer_state.json").read_text()))
        changed = sorted(
            k for k, v in saved.config.items() if k != "device" and self.state.config.get(k) != v
        )
        if changed:
            raise ConfigError(
                f"the checkpoint in {str(latest)!r} was trained with other settings ({changed})",
                "resume with the same training settings, or start over with --overwrite",
            )
        if saved.world_size != self.state.world_size:
            warnings.warn(
                f"resuming a {saved.world_size}-process run on "
                f"{self.state.world_size} processes: batches and random states differ "
                "from the uninterrupted run",
                stacklevel=3,
            )
        self.accelerator.load_state(str(latest), strict=False)
        saved.world_size = self.state.world_size
        self.state = saved
        best = load_weights(latest / "best.safetensors")
        self._best = best or None
        if self.run_dir is not None and self.accelerator.is_main_process:
            self.run_dir.write_log(saved.history)
        logger.info("resumed from %s (step %d, epoch %d)", latest, saved.step, saved.epoch)

    def _save_final_weights(self) -> None:
        if self.run_dir is None or not self.accelerator.is_main_process:
            return
        save_model(self.model, self.run_dir.path)
        save_data_info(self.model.info, self.run_dir.path)
        if any(True for _ in self.objective.state_dict()):
            save_weights(self.objective.state_dict(), self.run_dir / "objective.safetensors")

    def _fit_summary(self, val: dict[str, Any] | None) -> dict[str, Any]:
        st, learned = self.state, self.model.learned
        return {
            "best_epoch": st.best_epoch,
            "best_step": st.best_step,
            "selected_on": self.config.select_metric if learned else None,
            "val": None if val is None else val["metrics"],
            "val_loss": None if val is None else val["loss"],
            "epochs": _epoch_value(st.epoch, st.batch_in_epoch, self._batches_per_epoch),
            "steps": st.step,
            "stopped_early": st.stopped_early,
            "train_time_s": st.train_time_s,
            "samples_per_s": st.samples / st.train_time_s if st.train_time_s > 0 else None,
        }
