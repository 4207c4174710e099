"""Accelerate set-up, optimizer and learning-rate schedule of the engine."""

from __future__ import annotations

import logging
import math
import os
import warnings

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from torch import nn

from llm_st.config import TrainingConfig
from llm_st.errors import ConfigError

logger = logging.getLogger("llm_st")


def _use_cpu(config: TrainingConfig) -> bool:
    env = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return config.device == "cpu" or env or not torch.cuda.is_available()


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``"auto"`` / None: the GPU when one is visible, else the CPU; otherwise ``device``.

    Raises
    ------
    ConfigError
        ``"cuda"`` without a visible GPU, or a name torch does not know.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}", "use auto, cpu or cuda") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(device)!r} was asked for but no CUDA GPU is visible",
            "use --device auto or cpu, or check CUDA_VISIBLE_DEVICES",
        )
    return device


def resolve_mixed_precision(requested: str, device_type: str) -> str:
    """The mixed precision to use: ``requested`` where ``device_type`` supports it, else ``"no"``.

    fp16 needs a CUDA GPU; bf16 needs a GPU that supports it (Ampere or newer) or
    the CPU (torch's CPU autocast). Otherwise a warning says so and training runs
    in full precision.
    """
    if requested == "no":
        return "no"
    if device_type == "cuda":
        ok = requested == "fp16" or torch.cuda.is_bf16_supported()
    else:
        ok = device_type == "cpu" and requested == "bf16"
    if not ok:
        warnings.warn(
            f"mixed_precision={requested!r} is not supported on this {device_type} device; "
            "training in full precision (mixed_precision='no')",
            stacklevel=3,
        )
        return "no"
    return requested


def make_accelerator(config: TrainingConfig) -> Accelerator:
    """An :class:`~accelerate.Accelerator` for ``config`` on CPU, one GPU or several processes.

    On a machine without CUDA the CPU flag is set, so that ``torchrun --nproc_per_node 2``
    gives one 2-process (MULTI_CPU, gloo) run instead of two independent ones.
    Gradient accumulation and scheduler stepping are done by the engine itself
    (``gradient_accumulation_steps=1``, ``step_scheduler_with_optimizer=False``).
    """
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "training.device='cuda' but no CUDA GPU is visible",
            "use device: auto or cpu, or check CUDA_VISIBLE_DEVICES",
        )
    cpu = _use_cpu(config)
    precision = resolve_mixed_precision(config.mixed_precision, "cpu" if cpu else "cuda")
    kwargs = dict(cpu=cpu, mixed_precision=precision, step_scheduler_with_optimizer=False)
    try:
        accelerator = Accelerator(**kwargs)
    except ValueError as exc:
        # Accelerate keeps one state per process; a run in the same process with other
        # precision/device settings must reset it (only possible without a process group).
        if "already been initialized" not in str(exc) or PartialState().num_processes > 1:
            raise
        logger.debug("resetting Accelerate's state for new settings %s", kwargs)
        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(**kwargs)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise ConfigError(
            f"{launched} processes were launched but Accelerate sees one",
            "set ACCELERATE_USE_CPU=1 (CPU) or launch with `accelerate launch`",
        )
    return accelerator


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two AdamW groups: matrices decay, biases and norm scales do not."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def make_optimizer(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``module`` (:func:`param_groups`).

    Fused (the whole update in one call per parameter group) where every trainable
    parameter is a floating-point tensor on one CUDA GPU or on the CPU, ``foreach``
    otherwise. On two CPU cores the fused step of GPT4TS's trainable parameters takes about a
    third of the time of the ``foreach`` or for-loop step; on a GPU it saves kernel
    launches. Create it after moving ``module`` to its device.
    """
    groups = param_groups(module, weight_decay)
    params = [p for group in groups for p in group["params"]]
    devices = {p.device.type for p in params}
    fused = devices in ({"cuda"}, {"cpu"}) and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None, foreach=None if fused else True)


def lr_schedule(
    optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then ``kind`` until ``total_steps``.

    ``cosine`` decays to 0 along a half cosine, ``linear`` to 0 along a line,
    ``constant`` keeps the peak. The factor is a closure, so the scheduler's state
    dict holds numbers only.
    """
    if 0 < total_steps <= warmup_steps:
        warnings.warn(
            f"warmup_steps={warmup_steps} is not below the {total_steps} optimizer steps of "
            "the run; the learning rate never leaves warm-up",
            stacklevel=2,
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if kind == "linear":
            return 1.0 - progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
