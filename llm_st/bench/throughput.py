"""Training throughput: llm-st's engine beside a plain PyTorch loop of the same model.

:func:`engine_vs_plain` trains one adapter (GPT4TS by default, on ETTh1 with history 336
and horizon 96, batches of 256 windows, a GPT-2-small-shaped backbone keeping 6 blocks)
twice per precision, from the same seed on the same windows:

- ``engine``: :class:`~llm_st.engine.trainer.Trainer`, the path of ``llm-st train``
  (optionally also ``engine+compile``, with ``training.compile``);
- ``plain``: the loop a user would otherwise write (:func:`plain_loop`): a ``DataLoader``
  over the same windows, ``torch.optim.AdamW`` with its defaults, the masked MAE,
  ``torch.autocast`` for bf16, the same gradient clipping and learning rate.

Both leave out the same warm-up steps
(:func:`~llm_st.engine.trainer.timed_warmup_steps`) and wait for the device before
reading the clock. The default backbone has random weights (throughput does not depend
on them): a GPT-2-small config written to a temporary directory, loaded in the
``random_init`` mode of :class:`~llm_st.backbones.spec.BackboneSpec`.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from llm_st.config import DataConfig, TrainingConfig
from llm_st.data.task import ForecastTask
from llm_st.engine.accel import resolve_device
from llm_st.engine.run import build_task
from llm_st.engine.seeding import seed_everything
from llm_st.engine.trainer import Trainer, timed_warmup_steps
from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model

logger = logging.getLogger("llm_st")

PRECISIONS = {"fp32": "no", "bf16": "bf16"}
"""Precision names of the table -> ``training.mixed_precision``."""
GRAD_CLIP = 1.0
"""Gradient-norm clipping of both loops (the clipping is part of the work compared)."""


def gpt2_small_config() -> Any:
    """The shape of GPT-2 small: width 768, 12 heads, 12 blocks, 1024 positions."""
    from transformers import GPT2Config

    return GPT2Config(n_embd=768, n_head=12, n_layer=12, n_positions=1024)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _as_is(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``collate_fn`` for a dataset whose ``__getitems__`` already returns the batch."""
    return batch


def plain_loop(
    model: nn.Module,
    task: ForecastTask,
    batch_size: int,
    steps: int,
    precision: str,
    device: torch.device,
    lr: float = 1e-4,
    seed: int = 0,
) -> float:
    """Train ``model`` for ``steps`` optimizer steps in a plain PyTorch loop; samples/s.

    Masked MAE on the scaled targets, ``torch.optim.AdamW(lr)`` over the trainable
    parameters, gradient norm clipped to :data:`GRAD_CLIP`, ``torch.autocast`` to
    bfloat16 for ``precision="bf16"``; shuffled ``DataLoader`` batches of the training
    windows. Returns the training windows per second over the steps after
    :func:`~llm_st.engine.trainer.timed_warmup_steps`.
    """
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    loader = torch.utils.data.DataLoader(
        task.dataset("train"),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=_as_is,
    )
    warmup = timed_warmup_steps(steps)
    done = timed = 0
    start = _clock(device) if warmup == 0 else None
    while done < steps:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
                pred = model(batch)
                mask = batch["y_mask"]
                err = (pred - batch["y_scaled"].to(pred.dtype)).abs()
                loss = torch.where(mask, err, 0).float().sum() / mask.sum().clamp(min=1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if start is not None:
                timed += len(pred)
            if done == warmup:
                start = _clock(device)
            if done == steps:
                break
    return timed / (_clock(device) - start)


def engine_vs_plain(
    adapter: str = "gpt4ts",
    backbone: str | Any | None = None,
    data: str = "ETTh1",
    history: int = 336,
    horizon: int = 96,
    batch: int = 256,
    blocks: int = 6,
    precisions: Sequence[str] = ("fp32", "bf16"),
    steps: int = 30,
    device: str = "auto",
    compile: bool = False,
    repeats: int = 1,
    params: Mapping[str, Any] | None = None,
    data_dir: str | None = None,
    lr: float = 1e-4,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Training samples/s of the engine and of a plain loop on the same model and data.

    Parameters
    ----------
    adapter
        Registered method built on a backbone (``gpt4ts``, ...).
    backbone
        A tiny name, model directory or hub id (its pretrained weights), or a Hugging Face
        config (random weights, written to a temporary directory); None: GPT-2 small's
        shape (:func:`gpt2_small_config`).
    data, history, horizon, data_dir
        The dataset (named, synthetic or a file) and windows, under the protocol's split.
    batch
        Training windows per batch (per optimizer step).
    blocks
        Backbone blocks kept (``backbone.num_layers``).
    precisions
        ``"fp32"`` and / or ``"bf16"`` (autocast; on the CPU too).
    steps
        Optimizer steps of each loop; the first ``timed_warmup_steps(steps)`` are not timed.
    device
        ``auto`` (the GPU when there is one), ``cpu`` or ``cuda``.
    compile
        Also time the engine with ``training.compile`` (row ``engine+compile``).
    repeats
        Runs of each loop, taken in turn (in reversed order every other time); the median
        samples/s is reported (on a shared machine other processes slow single runs down by
        a factor of 2 and more).
    params
        Further arguments of the adapter.
    lr, seed
        Learning rate (constant) and seed of both loops.

    Returns
    -------
    list of dict
        Per precision: ``{"loop": "plain" | "engine" | "engine+compile", "precision",
        "samples_per_s", "ratio", "runs"}``, ``ratio`` being samples/s over the plain
        loop's at that precision and ``runs`` the samples/s of each run.
    """
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ConfigError(f"unknown precisions {unknown}", f"use some of {list(PRECISIONS)}")
    if steps < 2:
        raise ConfigError(f"steps={steps} leaves no step to time after warm-up", "use >= 2")
    if repeats < 1:
        raise ConfigError(f"repeats={repeats} runs nothing", "use repeats >= 1")
    target = resolve_device(device)
    task = build_task(DataConfig(spec=data, history=history, horizon=horizon, data_dir=data_dir))
    info = DataInfo.from_data(task.data, task.history, task.horizon)
    with tempfile.TemporaryDirectory(prefix="llm-st-bench-") as tmp:
        if backbone is None or not isinstance(backbone, str):
            (backbone if backbone is not None else gpt2_small_config()).save_pretrained(tmp)
            spec = {"source": tmp, "num_layers": blocks, "mode": "random_init"}
        else:
            spec = {"source": backbone, "num_layers": blocks}

        def build() -> nn.Module:
            seed_everything(seed)
            return build_model(adapter, info, backbone=spec, **(params or {}))

        loops = ["plain", "engine"] + (["engine+compile"] if compile else [])
        rows = []
        for precision in precisions:
            runs: dict[str, list[float]] = {loop: [] for loop in loops}
            # alternate which loop goes first, so neither always meets the other's leftovers
            for loop in itertools.chain(*(loops[:: (-1) ** r] for r in range(repeats))):
                model = build()
                if loop == "plain":
                    speed = plain_loop(model, task, batch, steps, precision, target, lr, seed)
                else:
                    config = TrainingConfig(
                        max_steps=steps,
                        batch_size=batch,
                        eval_batch_size=batch,
                        lr=lr,
                        scheduler="constant",
                        grad_clip=GRAD_CLIP,
                        mixed_precision=PRECISIONS[precision],
                        patience=None,
                        compile=loop == "engine+compile",
                        device=target.type,
                        seed=seed,
                    )
                    speed = Trainer(model, None, task, config).fit()["samples_per_s"]
                logger.info("%s %s: %.1f samples/s", loop, precision, speed)
                runs[loop].append(speed)
                del model
                if target.type == "cuda":
                    torch.cuda.empty_cache()
            median = {loop: statistics.median(runs[loop]) for loop in loops}
            rows += [
                {
                    "loop": loop,
                    "precision": precision,
                    "samples_per_s": median[loop],
                    "ratio": median[loop] / median["plain"],
                    "runs": runs[loop],
                }
                for loop in loops
            ]
    return rows
