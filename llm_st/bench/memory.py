"""Peak memory and step time of the LLM adapters under each way of holding their backbone.

:func:`memory_table` trains each cell (adapter x backbone policy x gradient checkpointing x
blocks kept) for a step or two, forward + backward + AdamW, in a fresh Python process, on
a backbone of a given shape with random weights (LLaMA-7B's by default: width 4096, MLP
11008, 32 heads, vocabulary 32000), and measures what it holds at its peak and how long
its last step took:

- CUDA: ``torch.cuda.max_memory_allocated`` over the step (weights included);
- CPU: the peak resident set size of the process over the step, its high-water mark
  reset (``/proc/self/clear_refs``) after the model is built, so loading does not count.
  glibc is told to map every allocation above 64 KiB on its own
  (``MALLOC_MMAP_THRESHOLD_``), so a freed tensor leaves the resident set at once and the
  peak is that of the live tensors, not of a fragmented heap.

Memory grows linearly with the blocks kept, so two block counts (2 and 4) give the cost of
a block and of everything outside the blocks, and a projection to all 32 blocks of the
paper's setting (Time-LLM: history 512, batch 24 on ETTh1's 7 series) without building
it. The adapters' hyper-parameters are their shipped ETTh1 recipes
(``alignment/<adapter>/ETTh1/config.yaml``); the backbone is a LLaMA config written to a
temporary folder with the tiny LLaMA test tokenizer (prompts are tokenized into somewhat
more tokens than LLaMA's own tokenizer makes) and loaded from there, through the same
path as a downloaded model (``mode: random_init``).

Policies are ``<freeze>[-<dtype>]`` names (:func:`policy_fields`): ``frozen-bf16`` (the
frozen backbone in bfloat16, Time-LLM's setting), ``qfrozen`` (frozen in 4-bit),
``qlora`` (LoRA on 4-bit weights), ``layernorm-bf16``, ``lora-bf16``, ...; the 4-bit
layers compute in bfloat16 unless a suffix says otherwise.

On the CPU the full shape is too slow for a table: ``scale`` divides the width, the MLP
and the head count (the head width, vocabulary, sequence lengths and batch stay), and the
rows say what ran.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llm_st.backbones.frozen import FREEZE_POLICIES
from llm_st.backbones.lora import QFROZEN
from llm_st.errors import ConfigError

LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_heads": 32, "vocab_size": 32000}
"""The shape of LLaMA-7B (``huggyllama/llama-7b``, Time-LLM's backbone)."""
_SHORT_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_QUANTIZED = ("qlora", QFROZEN)
_MARK = "llm-st-memory-cell "
"""Prefix of the one line of JSON a cell's process prints with its measurements."""


def policy_fields(policy: str) -> dict[str, Any]:
    """The backbone fields of a policy name ``<freeze>[-<dtype>]``.

    ``<freeze>`` is a freezing policy of :data:`~llm_st.backbones.frozen.FREEZE_POLICIES`,
    ``<dtype>`` one of ``fp32``, ``bf16``, ``fp16``: the dtype of the weights, or for the
    4-bit policies the compute dtype (default ``bf16`` for those, ``fp32`` for the others).

    Raises
    ------
    ConfigError
        An unknown policy or dtype.
    """
    freeze, _, short = policy.partition("-")
    if freeze not in FREEZE_POLICIES or (short and short not in _SHORT_DTYPES):
        raise ConfigError(
            f"unknown memory-bench policy {policy!r}",
            f"use <freeze>[-<dtype>] with freeze one of {', '.join(FREEZE_POLICIES)} and "
            f"dtype one of {', '.join(_SHORT_DTYPES)}, e.g. frozen-bf16 or qfrozen",
        )
    quantized = freeze in _QUANTIZED
    dtype = _SHORT_DTYPES[short or ("bf16" if quantized else "fp32")]
    if quantized:
        return {"freeze": freeze, "lora": {"compute_dtype": dtype}}
    return {"freeze": freeze, "dtype": dtype}


def write_shape(
    directory: str | Path,
    hidden_size: int,
    intermediate_size: int,
    num_heads: int,
    vocab_size: int,
    num_layers: int = 32,
) -> Path:
    """Write a LLaMA model folder without weights: its config and the tiny LLaMA tokenizer.

    Loaded with ``mode: random_init`` it is a backbone of that shape with random weights.
    """
    from transformers import LlamaConfig

    from llm_st.backbones.hub import load_tokenizer

    directory = Path(directory)
    tokenizer = load_tokenizer("tiny-llama")
    LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        num_hidden_layers=num_layers,
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# ---------------------------------------------------------------------- one cell
def _status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status``, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise ConfigError(f"/proc/self/status has no {field}", "measure CPU memory on Linux")


def _reset_peak(device: torch.device) -> float:
    """Start measuring a peak here; the memory in use now (MiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so RSS is what is used
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark := RSS now
    except OSError as exc:
        raise ConfigError(
            f"cannot reset this process's peak resident memory ({exc})",
            "measure CPU memory on Linux (glibc, /proc), or on a CUDA GPU",
        ) from exc
    return _status_mb("VmRSS")


def _peak(device: torch.device) -> float:
    """The peak since :func:`_reset_peak` (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status_mb("VmHWM")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(
    batch: int, history: int, horizon: int, nodes: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A window batch ``[batch, history, nodes, 1]`` of noisy daily sine waves and a target."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(history, dtype=torch.float32).view(1, -1, 1, 1)
    phase = 6 * torch.rand(batch, 1, nodes, 1, generator=g)
    x = torch.sin(2 * torch.pi * t / 24 + phase) + 0.2 * torch.randn(
        batch, history, nodes, 1, generator=g
    )
    inputs = {
        "x": x,
        "x_mask": torch.ones_like(x, dtype=torch.bool),
        "x_time": torch.zeros(batch, history, 2),
    }
    target = torch.randn(batch, horizon, nodes, 1, generator=g)
    return {k: v.to(device) for k, v in inputs.items()}, target.to(device)


def measure_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Build one cell's model and train it for ``cell["steps"]`` steps; what it held and took.

    ``cell`` holds ``adapter``, ``policy``, ``blocks``, ``checkpointing``, ``source`` (a
    folder of :func:`write_shape`), ``history``, ``nodes``, ``batch``, ``device``, ``steps``
    and ``threads`` (None: torch's default).

    Returns
    -------
    dict
        ``peak_mb`` (the peak over the steps), ``before_mb`` (in use before the first step:
        the weights, and on the CPU the process itself), ``baseline_mb`` (in use before the
        model was built), ``step_s`` (seconds of the last step; the first one also creates
        AdamW's state), ``sequences`` and ``tokens`` (the backbone's input ``[sequences,
        tokens, D]``), ``trainable`` (parameters).
    """
    from llm_st.bench.recipes import recipe_path
    from llm_st.config import load_recipe
    from llm_st.models.base import DataInfo
    from llm_st.models.registry import build_model

    if cell["threads"] is not None:
        torch.set_num_threads(cell["threads"])
    device = torch.device(cell["device"])
    baseline = _reset_peak(device)
    recipe = load_recipe(recipe_path(cell["adapter"], "ETTh1"))
    info = DataInfo(
        num_nodes=cell["nodes"],
        num_channels=1,
        history=cell["history"],
        horizon=recipe.data.horizon,
        steps_per_day=24,
        name="ETTh1",
    )
    spec = {
        "source": cell["source"],
        "num_layers": cell["blocks"],
        "mode": "random_init",
        "gradient_checkpointing": cell["checkpointing"],
        **policy_fields(cell["policy"]),
    }
    torch.manual_seed(0)
    model = build_model(cell["adapter"], info, backbone=spec, **recipe.model.params)
    model.to(device).train()
    shapes: list[torch.Size] = []
    model.body.register_forward_pre_hook(lambda _m, args: shapes.append(args[0].shape))
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4)
    inputs, target = _batch(cell["batch"], cell["history"], info.horizon, cell["nodes"], device)
    before = _reset_peak(device)
    for _ in range(cell["steps"]):
        _synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(inputs), target).backward()
        optimizer.step()
        _synchronize(device)
        seconds = time.perf_counter() - start
    return {
        "peak_mb": round(_peak(device), 1),
        "before_mb": round(before, 1),
        "baseline_mb": round(baseline, 1),
        "step_s": round(seconds, 3),
        "sequences": int(shapes[-1][0]),
        "tokens": int(shapes[-1][1]),
        "trainable": sum(p.numel() for p in trained),
    }


def _run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure_cell` in a fresh Python process (peaks of one cell only); a cell that
    fails (e.g. out of GPU memory) gives ``{"error": its last line}``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    done = subprocess.run(
        [sys.executable, "-m", "llm_st.bench.memory", json.dumps(cell)],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
    if done.returncode or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last[:300]}
    return json.loads(lines[-1][len(_MARK) :])


# ---------------------------------------------------------------------- the table
def project(rows: Sequence[dict[str, Any]], blocks: int) -> dict[str, Any]:
    """The least-squares line of ``peak_mb`` and ``step_s`` over the block counts of
    ``rows`` (the measured rows of one adapter, policy and checkpointing), at ``blocks``.

    Returns
    -------
    dict
        ``peak_mb`` and ``step_s`` at ``blocks``, ``per_block_mb`` (the slope) and
        ``outside_mb`` (the line at 0 blocks: weights, activations and optimizer state
        outside the blocks, and the one block being recomputed under checkpointing).

    Raises
    ------
    ConfigError
        Fewer than two distinct block counts.
    """
    ks = [float(r["blocks"]) for r in rows]
    if len(set(ks)) < 2:
        raise ConfigError(
            f"a projection needs two block counts or more, got {sorted(set(ks))}",
            "measure e.g. blocks=(2, 4)",
        )
    mean_k = sum(ks) / len(ks)
    spread = sum((k - mean_k) ** 2 for k in ks)

    def line(key: str) -> tuple[float, float]:
        values = [float(r[key]) for r in rows]
        mean = sum(values) / len(values)
        slope = sum((k - mean_k) * (v - mean) for k, v in zip(ks, values, strict=True)) / spread
        return slope, mean - slope * mean_k

    memory, seconds = line("peak_mb"), line("step_s")
    return {
        "peak_mb": round(memory[1] + memory[0] * blocks, 1),
        "step_s": round(seconds[1] + seconds[0] * blocks, 3),
        "per_block_mb": round(memory[0], 1),
        "outside_mb": round(memory[1], 1),
    }


def memory_table(
    adapters: Sequence[str] = ("timellm", "gpt4ts"),
    blocks: Sequence[int] = (2, 4),
    policies: Sequence[str] = ("frozen-bf16", "qfrozen", "qlora"),
    checkpointing: Sequence[bool] = (False, True),
    hidden_size: int = LLAMA_7B["hidden_size"],
    intermediate_size: int = LLAMA_7B["intermediate_size"],
    num_heads: int = LLAMA_7B["num_heads"],
    vocab_size: int = LLAMA_7B["vocab_size"],
    scale: int = 1,
    history: int = 512,
    batch: int = 24,
    nodes: int = 7,
    device: str = "auto",
    project_to: int = 32,
    steps: int = 2,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Peak memory and step time of every cell, and their projection to ``project_to`` blocks.

    Parameters
    ----------
    adapters
        Adapters with an ETTh1 recipe (``timellm``, ``gpt4ts``, ``stllm``).
    blocks
        Block counts ``k`` to measure (the first ``k`` blocks of the shape).
    policies
        Policy names of :func:`policy_fields`.
    checkpointing
        Gradient checkpointing off and / or on.
    hidden_size, intermediate_size, num_heads, vocab_size
        The backbone's shape (LLaMA-7B's).
    scale
        Divides ``hidden_size``, ``intermediate_size`` and ``num_heads`` (a CPU-sized model
        with LLaMA's head width).
    history, batch, nodes
        Windows of ``history`` steps, ``batch`` windows of ``nodes`` series a step
        (Time-LLM's ETTh1 setting: 512, 24, 7).
    device
        ``"auto"`` (CUDA when there is a GPU), ``"cuda"`` or ``"cpu"``.
    project_to
        Block count of the projected rows (LLaMA-7B has 32).
    steps
        Training steps per cell (the peak is over all, the time is the last one's).
    threads
        torch CPU threads of each cell's process (None: torch's default).

    Returns
    -------
    list of dict
        One row per measured cell (``kind: "measured"``: ``adapter``, ``policy``,
        ``checkpointing``, ``blocks``, the figures of :func:`measure_cell`, or ``error``),
        then one per adapter, policy and checkpointing (``kind: "projected"``, ``blocks:
        project_to``, the figures of :func:`project`) where two block counts were
        measured. Every row also holds the shape that ran (``device``, ``hidden_size``,
        ``intermediate_size``, ``num_heads``, ``vocab_size``, ``scale``, ``history``,
        ``batch``, ``nodes``).

    Raises
    ------
    ConfigError
        A bad policy name, a ``scale`` that does not divide the shape, no step, or an
        unknown device.
    """
    from llm_st.engine.accel import resolve_device

    for policy in policies:
        policy_fields(policy)
    if steps < 1:
        raise ConfigError(f"steps={steps}: a cell trains for one step at least", "use steps=2")
    shape = {
        "hidden_size": hidden_size // scale,
        "intermediate_size": intermediate_size // scale,
        "num_heads": num_heads // scale,
        "vocab_size": vocab_size,
    }
    if scale < 1 or any(v % scale for v in (hidden_size, intermediate_size, num_heads)):
        raise ConfigError(
            f"scale={scale} does not divide the shape ({hidden_size}, {intermediate_size}, "
            f"{num_heads} heads)",
            "use a scale that divides the width, the MLP and the head count, e.g. 8 for LLaMA-7B",
        )
    where = str(resolve_device(device))
    common = {
        "device": where,
        **shape,
        "scale": scale,
        "history": history,
        "batch": batch,
        "nodes": nodes,
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llm-st-memory-") as tmp:
        source = str(write_shape(tmp, **shape))
        for adapter in adapters:
            for policy in policies:
                for ckpt in checkpointing:
                    measured = []
                    for k in blocks:
                        cell = {
                            "adapter": adapter,
                            "policy": policy,
                            "blocks": k,
                            "checkpointing": ckpt,
                            "source": source,
                            "history": history,
                            "nodes": nodes,
                            "batch": batch,
                            "device": where,
                            "steps": steps,
                            "threads": threads,
                        }
                        keys = ("adapter", "policy", "checkpointing", "blocks")
                        row = {**{k: cell[k] for k in keys}, "kind": "measured", **common}
                        row.update(_run_cell(cell))
                        rows.append(row)
                        if "error" not in row:
                            measured.append(row)
                    if len({r["blocks"] for r in measured}) >= 2:
                        rows.append(
                            {
                                "adapter": adapter,
                                "policy": policy,
                                "checkpointing": ckpt,
                                "blocks": project_to,
                                "kind": "projected",
                                **common,
                                **project(measured, project_to),
                            }
                        )
    return rows


if __name__ == "__main__":  # one cell, in the process _run_cell starts
    print(_MARK + json.dumps(measure_cell(json.loads(sys.argv[1]))), flush=True)
