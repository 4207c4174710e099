"""The one training loop of llm-st, on Accelerate.

:class:`Trainer` trains any :class:`~llm_st.models.base.STModel` with any
:class:`~llm_st.objectives.Objective` on a :class:`~llm_st.data.task.ForecastTask`:
AdamW, warm-up + schedule, gradient clipping and accumulation, mixed precision,
early stopping and best-weight selection on the validation split only. The same
code runs on CPU, on one GPU and on several processes (``torchrun`` /
``accelerate launch``); model and objective form one module, so they share one
optimizer, one DDP wrapper and one checkpoint.

Speed: AdamW is fused on CUDA (``foreach`` elsewhere), ``training.compile`` compiles
model and objective with ``torch.compile``, batches are copied from pinned memory
asynchronously, and nothing in a step waits for the GPU (logged losses and the clipped
gradient norm stay tensors until an evaluation). The batches of an optimizer step
(accumulated, on every process) are weighted by their share of the step's loss terms
(:meth:`Trainer._step_shares`), so a step's gradient is that of the mean over all its terms.
``training.micro_batch_size`` splits
batches into micro-batches whose gradients, weighted by
:meth:`~llm_st.objectives.Objective.loss_weight`, add up to the whole batch's
(``"auto"``: :func:`halve_on_oom` picks the size on a CUDA GPU). ``samples_per_s``
leaves out warm-up (:func:`timed_warmup_steps`). The engine never changes a model's
dtypes: under bf16 autocast, frozen float32 weights are cast on every step, while a
backbone loaded in bfloat16 (``backbone.dtype``) is used as it is.

Resumability: at every evaluation a checkpoint holds model, optimizer, scheduler
and RNG states (Accelerate's ``save_state``), the best weights and the
:class:`TrainState` (counters, early-stopping state, log history). The data order
of an epoch is a pure function of ``(seed, epoch)``
(:func:`~llm_st.engine.seeding.epoch_order`), so a resumed run replays exactly the
batches the uninterrupted one would have seen. A resumed run may change the settings of
:data:`~llm_st.config.HARDWARE_SETTINGS` (device, compilation, micro-batches), not others.
"""

from __future__ import annotations

import dataclasses
import gc
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
from typing import Any, TypeVar

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn
from tqdm.auto import tqdm

from llm_st.config import HARDWARE_SETTINGS, TrainingConfig
from llm_st.data.task import ForecastTask
from llm_st.engine.accel import lr_schedule, make_accelerator, make_optimizer
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

T = TypeVar("T")
Batch = dict[str, torch.Tensor]


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
    timed_samples: int = 0  # windows of the steps after warm-up (timed_warmup_steps)
    timed_time_s: float = 0.0  # time of those steps
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


def timed_warmup_steps(total: int) -> int:
    """Optimizer steps left out of ``samples_per_s`` at the start of a run of ``total`` steps.

    10 % of the steps, at least 1 and at most 10 (none in a one-step run): the first steps
    compile (``training.compile``), fill the memory allocators and pick kernels.
    """
    return 0 if total <= 1 else min(10, max(1, total // 10))


def batch_length(batch: Batch) -> int:
    """Windows (or examples) in ``batch``, whose tensors all have them on their first axis."""
    return len(next(iter(batch.values())))


def split_batch(batch: Batch, size: int) -> list[Batch]:
    """Consecutive micro-batches of ``size`` windows (the last may be smaller) of ``batch``,
    whose tensors all have the windows on their first axis."""
    n = batch_length(batch)
    return [{k: v[lo : lo + size] for k, v in batch.items()} for lo in range(0, n, size)]


def halve_on_oom(
    run: Callable[[int], T], size: int, before_retry: Callable[[], None] | None = None
) -> tuple[int, T]:
    """``(m, run(m))`` for the first ``m`` of ``size, size // 2, ..., 1`` at which ``run``
    does not raise :class:`torch.cuda.OutOfMemoryError`.

    Between tries the failed try's tensors are released (garbage collection, CUDA cache)
    after ``before_retry`` (e.g. dropping half-accumulated gradients). The error of size 1
    is raised.
    """
    while True:
        try:
            return size, run(size)
        except torch.cuda.OutOfMemoryError:
            if size == 1:
                raise
        # outside the except block: its traceback holds the frames, and so the activations,
        # of the failed try
        logger.info(
            "out of GPU memory with micro-batches of %d windows; trying %d", size, size // 2
        )
        size //= 2
        if before_retry is not None:
            before_retry()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


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
        self._micro: int | str | None = None  # windows per micro-batch; None: whole batches
        self._trainable: list[nn.Parameter] = []
        self._stepper: torch.optim.Optimizer | None = None  # what steps the optimizer
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
            ``train_time_s`` (training steps, evaluation and checkpoints excluded),
            ``samples_per_s`` (training windows per second of all processes over the steps
            after warm-up, see :func:`timed_warmup_steps`; None when no step was timed) and
            ``micro_batch_size`` (windows per micro-batch; None: whole batches).
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
        train_set = self.objective.dataset(self.task, "train")
        batches = len(
            process_batches(
                np.arange(len(train_set)), cfg.batch_size, acc.process_index, acc.num_processes
            )
        )
        self._batches_per_epoch = batches
        steps_per_epoch = math.ceil(batches / cfg.grad_accum)
        total = cfg.max_steps or cfg.epochs * steps_per_epoch
        optimizer = make_optimizer(self.module, cfg.lr, cfg.weight_decay)
        scheduler = lr_schedule(optimizer, cfg.scheduler, cfg.warmup_steps, total)
        self._wrapped, optimizer, self._scheduler = acc.prepare(self.module, optimizer, scheduler)
        self._trainable = [p for p in self._wrapped.parameters() if p.requires_grad]
        # Accelerate's plain optimizer wrapper matters only with a gradient scaler (fp16);
        # otherwise it calls the optimizer after looking up an optional package on every
        # step (importlib, ~0.3 ms) and inspecting zero_grad's signature on every call
        plain = type(optimizer) is AcceleratedOptimizer and acc.scaler is None
        self._stepper = optimizer.optimizer if plain else optimizer
        if cfg.compile:
            if acc.device.type == "cpu":
                warnings.warn(
                    "training.compile on the CPU: compiling takes seconds to minutes and the "
                    "compiled step is not always faster; compare samples_per_s without it",
                    stacklevel=2,
                )
            # in place (after Accelerate's mixed-precision wrapping, inside any DDP wrapper):
            # parameter names, state dicts and checkpoints stay those of the plain module
            self.module.compile()
        self._micro = self._micro_batch_size()
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
        self._wrapped = self._scheduler = self._stepper = None
        self._trainable = []
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
        # running sums of the logged values (device tensors: no sync per step), batch counts
        sums: dict[str, torch.Tensor | float] = {}
        counts: dict[str, int] = {}
        warmup, steps_here = timed_warmup_steps(total), 0
        self.module.train()
        clock = self._clock()
        timed_since = clock if warmup == 0 else None
        while not st.done:
            order = epoch_order(len(train_set), cfg.seed, st.epoch)
            batches = process_batches(order, cfg.batch_size, rank, world)
            # a resumed epoch starts at an accumulation group's first batch
            for first in range(st.batch_in_epoch, len(batches), cfg.grad_accum):
                group = batches[first : first + cfg.grad_accum]
                if steps_here == 0 and self._micro == "auto":
                    records = self._probe_step(train_set, group)
                else:
                    records = self._step(train_set, group)
                for record in records:
                    for key, value in record.items():
                        sums[key] = sums.get(key, 0.0) + value
                        counts[key] = counts.get(key, 0) + 1
                windows = sum(len(b) for b in group) * world
                st.samples += windows
                if timed_since is not None:
                    st.timed_samples += windows
                st.step += 1
                steps_here += 1
                st.batch_in_epoch = first + len(group)
                if st.batch_in_epoch == len(batches):
                    st.epoch, st.batch_in_epoch = st.epoch + 1, 0
                bar.update(1)
                if self.on_step is not None:
                    self.on_step(st.step)
                if steps_here == warmup:
                    timed_since = self._clock()
                end_of_epoch = st.batch_in_epoch == 0
                if (
                    (cfg.eval_every is None and end_of_epoch)
                    or (cfg.eval_every is not None and st.step % cfg.eval_every == 0)
                    or st.step >= total
                ):
                    now = self._clock()
                    st.train_time_s += now - clock
                    if timed_since is not None:
                        st.timed_time_s += now - timed_since
                    record = self._evaluate(sums, counts, total, len(batches))
                    bar.set_postfix(val_loss=f"{record['val_loss']:.4g}")
                    sums, counts = {}, {}
                    self._checkpoint()
                    clock = time.perf_counter()  # evaluation ended on the host
                    timed_since = clock if timed_since is not None else None
                    if st.done:
                        break
        bar.close()

    def _clock(self) -> float:
        """``time.perf_counter()`` once the device has done the work queued so far."""
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)
        return time.perf_counter()

    def _micro_batch_size(self) -> int | str | None:
        """``training.micro_batch_size`` as it applies here (None: whole batches)."""
        acc, size = self.accelerator, self.config.micro_batch_size
        if size == "auto":
            if acc.num_processes > 1:
                # an out-of-memory error on one process leaves the others waiting in a
                # collective: every process would have to agree on the size first
                warnings.warn(
                    "training.micro_batch_size=auto is not used with several processes; "
                    "training on whole batches (set a number of windows to split them)",
                    stacklevel=3,
                )
            return "auto" if acc.device.type == "cuda" and acc.num_processes == 1 else None
        if size is None or size >= self.config.batch_size:
            return None
        self._warn_if_not_splittable(size)
        return size

    def _warn_if_not_splittable(self, size: int) -> None:
        if not self.objective.splittable:
            warnings.warn(
                f"objective {self.objective.name!r} relates the windows of a batch to each "
                f"other; micro-batches of {size} windows change its loss, not only the memory "
                "it takes",
                stacklevel=4,
            )

    def _to_device(self, batch: Batch) -> Batch:
        device = self.accelerator.device
        if device.type == "cpu":
            return batch
        # a copy from pinned memory runs asynchronously (one from pageable memory waits for
        # the GPU), so the next batch is gathered while the GPU computes this one
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}

    def _step(self, train_set: Any, group: list[np.ndarray]) -> list[dict[str, Any]]:
        """One optimizer step on the batches of an accumulation ``group`` (indices of
        ``train_set``); returns the logs (``loss`` and the objective's) of each batch."""
        cfg = self.config
        batches = [train_set[idx] for idx in group]
        shares = self._step_shares(batches)
        records = [
            self._forward_backward(self._to_device(batch), share, sync=k == len(batches) - 1)
            for k, (batch, share) in enumerate(zip(batches, shares, strict=True))
        ]
        if cfg.grad_clip is not None:
            self.accelerator.clip_grad_norm_(self._trainable, cfg.grad_clip)
        self._stepper.step()
        self._scheduler.step()
        self._stepper.zero_grad(set_to_none=True)
        return records

    def _step_shares(self, batches: list[Batch]) -> list[torch.Tensor]:
        """The weight of each batch's loss in an optimizer step: ``world * w_b / W``.

        ``w_b`` is the objective's :meth:`~llm_st.objectives.Objective.loss_weight` of batch
        ``b`` (the number of terms its loss averages: windows, observed entries, answer
        tokens) and ``W`` the sum over the step's batches of every process. Data-parallel
        training averages the processes' gradients (a division by ``world``), so the
        gradient of a step is that of the mean over all its terms, as if one process had
        taken the whole step in one batch, whatever the batches' sizes (a short last batch,
        answers of different lengths on different processes). Computed on the host from the
        batches before they move to the device (one all-reduce of a number with several
        processes, none with one).
        """
        acc = self.accelerator
        # 0-d tensors, never read as numbers: nothing waits for the device
        weights = torch.stack([self.objective.loss_weight(b).float().cpu() for b in batches])
        total, world = weights.sum(), acc.num_processes
        if world > 1:
            total = acc.reduce(total.to(acc.device), reduction="sum").cpu()
        # no term anywhere: every loss is 0 and so is every share
        return list(world * weights / total.clamp(min=torch.finfo(torch.float32).tiny))

    def _probe_step(self, train_set: Any, group: list[np.ndarray]) -> list[dict[str, Any]]:
        """The first step under ``micro_batch_size: auto`` (CUDA): the largest micro-batch
        of ``batch_size``, ``batch_size // 2``, ... with which the step (forward, backward
        and the optimizer's first allocation of its state) fits in GPU memory."""
        fresh = not self._stepper.state  # a resumed run has loaded the optimizer's state

        def attempt(size: int) -> list[dict[str, Any]]:
            self._micro = size
            return self._step(train_set, group)

        def release() -> None:
            self._stepper.zero_grad(set_to_none=True)
            if fresh:  # a half-built AdamW state would be taken for a whole one
                self._stepper.state.clear()

        size, records = halve_on_oom(attempt, self.config.batch_size, release)
        self._micro = size if size < self.config.batch_size else None
        if self._micro is not None:
            self._warn_if_not_splittable(size)
        logger.info(
            "micro_batch_size auto: %d windows per micro-batch (batches of %d)",
            size,
            self.config.batch_size,
        )
        return records

    def _forward_backward(self, batch: Batch, scale: torch.Tensor, sync: bool) -> dict[str, Any]:
        """Add the gradient of ``scale * loss(batch)`` (``scale``: :meth:`_step_shares`);
        return the batch's logs (not synced).

        With micro-batches, micro-batch ``j``'s loss is weighted by its share
        ``w_j / sum(w)`` of the objective's :meth:`~llm_st.objectives.Objective.loss_weight`:
        for a loss that is a mean over ``w`` terms the shares add the micro-batch means up
        to the whole batch's mean, and so the gradients to the whole batch's gradient.
        ``sync``: the last backward of an optimizer step, where DDP averages gradients.
        """
        acc = self.accelerator
        n = batch_length(batch)
        if not isinstance(self._micro, int) or self._micro >= n:
            parts, shares = [batch], [None]
        else:
            parts = split_batch(batch, self._micro)
            weights = torch.stack([self.objective.loss_weight(p).float() for p in parts])
            # clamped for a batch without any term: every micro-batch loss is 0 there
            shares = list(weights / weights.sum().clamp(min=torch.finfo(torch.float32).tiny))
        logs: dict[str, Any] = {}
        for j, (part, share) in enumerate(zip(parts, shares, strict=True)):
            last = j == len(parts) - 1
            with nullcontext() if sync and last else acc.no_sync(self._wrapped):
                loss, part_logs = self._wrapped(part)
                acc.backward(loss * (scale if share is None else share * scale))
            for key, value in {"loss": loss, **part_logs}.items():
                value = value.detach().float() if torch.is_tensor(value) else float(value)
                logs[key] = value if share is None else logs.get(key, 0.0) + value * share
        return logs

    def _evaluate(
        self,
        sums: dict[str, torch.Tensor | float],
        counts: dict[str, int],
        total: int,
        batches: int,
    ) -> dict[str, Any]:
        """Score the validation split, update best weights and early stopping, log."""
        acc, cfg, st = self.accelerator, self.config, self.state
        record: dict[str, Any] = {
            "epoch": _epoch_value(st.epoch, st.batch_in_epoch, batches),
            "step": st.step,
            "lr": self._scheduler.get_last_lr()[0],
        }
        for key in sorted(sums):
            pair = torch.stack(
                [
                    torch.as_tensor(sums[key], dtype=torch.float32, device=acc.device),
                    torch.tensor(float(counts[key]), device=acc.device),
                ]
            )
            value, count = acc.reduce(pair, reduction="sum").tolist()
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
                    self.objective.dataset(self.task, "val"),
                    cfg.eval_batch_size,
                    acc.device,
                    weight_fn=self.objective.loss_weight,
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
            k
            for k, v in saved.config.items()
            if k not in HARDWARE_SETTINGS and self.state.config.get(k) != v
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
            "samples_per_s": st.timed_samples / st.timed_time_s if st.timed_time_s > 0 else None,
            "micro_batch_size": self._micro if isinstance(self._micro, int) else None,
        }
