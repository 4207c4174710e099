"""Fine-tuning cost: llm-st's engine beside the plain Hugging Face loop a user would write.

:func:`finetune_throughput` fine-tunes a causal LM on forecasting prompts (``text_lm`` with
the ``sft`` objective: one prompt per window and node, the answer the next ``horizon``
values as text) under each backbone policy (``full``, ``lora``, ``qlora``) at each model
size, twice, on the same batches in the same order, for the same optimizer steps:

- ``engine``: :class:`~llm_st.engine.trainer.Trainer`, the path of ``llm-st finetune``:
  the LM head is applied at the answer positions only
  (:meth:`~llm_st.models.text_lm.TextLM.lm_loss`), fused / foreach AdamW;
- ``plain``: the loop a user would otherwise write (:func:`plain_hf_loop`): the Hugging
  Face forward computing the loss itself (``model(input_ids, attention_mask, labels)``:
  logits over the whole vocabulary at every position), ``torch.optim.AdamW``, the same
  gradient clipping, learning rate and autocast, on the same model (the ``.lm`` of a
  :class:`~llm_st.models.text_lm.TextLM` built from the same spec and seed: the same
  peft LoRA / QLoRA layers).

Per run it reports tokens/s (real, non-pad tokens of the steps after
:func:`~llm_st.engine.trainer.timed_warmup_steps`, counted from the batches each loop
actually fed its model, over the time of those steps), the peak memory over the training
steps, trainable parameters and the size on disk of what the run keeps (the engine's
:func:`~llm_st.engine.artifacts.save_model`: the adapter alone under LoRA; the plain
loop's ``save_pretrained``).

Peak memory (:class:`PeakMemory`), everything in one process, one run after another:

- CUDA: ``torch.cuda.max_memory_allocated`` over the training steps (reset after the
  model is built), less what was allocated before the model was built: weights,
  gradients, optimizer state and activations, not the caching allocator's spare blocks;
- CPU: the highest resident set size of the process over the training steps, read from
  ``/proc/self/statm`` by a background thread every ``sample_interval_s`` (2 ms), less
  the resident size before the model was built (after ``gc`` and ``malloc_trim``). It
  includes what the allocators keep cached (glibc's heap, torch's CPU caches) and may
  miss a peak shorter than the interval: compare runs of the same table, not with the
  CUDA figures.

The models are LLaMA configs (:data:`LLAMA_SIZES`, vocabulary 32000 as LLaMA's) with
random weights (speed and memory do not depend on them), written once per size to a
temporary folder with the tiny LLaMA tokenizer (sentencepiece, one token per digit as
LLaMA's; it uses the first 800 ids of the vocabulary) and loaded from there as a
downloaded model is.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llm_st.config import TrainingConfig
from llm_st.engine.accel import resolve_device, resolve_mixed_precision
from llm_st.engine.artifacts import save_model
from llm_st.engine.run import build_task
from llm_st.engine.seeding import epoch_order, process_batches, seed_everything
from llm_st.engine.trainer import Trainer, count_parameters, timed_warmup_steps
from llm_st.errors import ConfigError

logger = logging.getLogger("llm_st")

LLAMA_SIZES: dict[str, dict[str, int]] = {
    "5M": {
        "hidden_size": 72,
        "intermediate_size": 192,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "25M": {
        "hidden_size": 288,
        "intermediate_size": 768,
        "num_hidden_layers": 6,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
    },
    "1.1B": {  # TinyLlama-1.1B's shape
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
    },
}
"""Named LLaMA shapes (``LlamaConfig`` fields; vocabulary 32000 unless a shape says)."""
VOCAB_SIZE = 32000
POLICIES = ("full", "lora", "qlora")
METHODS = ("engine", "plain")
PRECISIONS = {"fp32": "no", "bf16": "bf16"}
"""Precision names -> ``training.mixed_precision`` (bf16: autocast, and the frozen weights
of ``lora`` in bfloat16, the 4-bit layers of ``qlora`` computing in bfloat16)."""
GRAD_CLIP = 1.0
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
"""LoRA settings of the runs (those of the shipped ``text_lm`` recipes)."""


# ---------------------------------------------------------------------- memory
def _resident_mb() -> float:
    """Resident set size of this process now (MiB), from ``/proc/self/statm``."""
    with open("/proc/self/statm", "rb") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _trim() -> None:
    """Collect garbage and hand glibc's free heap back to the system (best effort)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class ResidentPeak:
    """The highest resident set size of this process while it runs, sampled by a thread.

    ``start()`` begins reading ``/proc/self/statm`` every ``interval_s``; :attr:`peak_mb`
    is the highest value read so far (it keeps rising while sampling goes on), ``stop()``
    ends the thread and returns it.
    """

    def __init__(self, interval_s: float = 0.002):
        if not Path("/proc/self/statm").exists():
            raise ConfigError(
                "/proc/self/statm is missing: cannot sample this process's resident memory",
                "measure CPU memory on Linux, or on a CUDA GPU",
            )
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _resident_mb())
            self._stop.wait(self.interval_s)

    def start(self) -> ResidentPeak:
        self.peak_mb = _resident_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.peak_mb = max(self.peak_mb, _resident_mb())
        return self.peak_mb


class PeakMemory:
    """Peak memory of one run above what the process held before it (module docstring).

    ``baseline()`` before the model is built, ``start()`` once it is built (just before the
    first training step), ``peak_mb()`` after the last step (cheap: it can be read inside
    a timed loop), ``stop()`` at the end.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.002):
        self.device = device
        self.interval_s = interval_s
        self.baseline_mb = 0.0
        self._sampler: ResidentPeak | None = None

    def baseline(self) -> float:
        _trim()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.baseline_mb = _resident_mb()
        return self.baseline_mb

    def start(self) -> None:
        _trim()  # garbage of the model's building is not the training's
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._sampler = ResidentPeak(self.interval_s).start()

    def peak_mb(self) -> float:
        """The peak so far, above the baseline (MiB, at least 0)."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            assert self._sampler is not None, "start() first"
            peak = max(self._sampler.peak_mb, _resident_mb())
        return max(0.0, peak - self.baseline_mb)

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def directory_mb(path: str | Path) -> float:
    """Bytes of the files under ``path`` (MiB)."""
    files = (p for p in Path(path).rglob("*") if p.is_file())
    return sum(p.stat().st_size for p in files) / 2**20


# ---------------------------------------------------------------------- models
def llama_shape(size: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(name, LlamaConfig fields)`` of a size: a name of :data:`LLAMA_SIZES`, or a mapping
    of ``LlamaConfig`` fields with an optional ``name`` (vocabulary 32000 unless given)."""
    if isinstance(size, str):
        if size not in LLAMA_SIZES:
            raise ConfigError(
                f"unknown model size {size!r}", f"use some of {', '.join(LLAMA_SIZES)}"
            )
        name, shape = size, dict(LLAMA_SIZES[size])
    else:
        shape = dict(size)
        name = str(shape.pop("name", "custom"))
    shape.setdefault("vocab_size", VOCAB_SIZE)
    return name, shape


def write_llama(directory: str | Path, shape: Mapping[str, Any]) -> tuple[Path, int]:
    """Write a LLaMA of ``shape`` with random weights (seed 0, float32) and the tiny LLaMA
    tokenizer into ``directory``; ``(directory, parameters)``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_st.backbones.hub import load_tokenizer

    directory = Path(directory)
    tokenizer = load_tokenizer("tiny-llama")
    config = LlamaConfig(
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    return directory, params


def backbone_spec(
    source: str | Path, policy: str, precision: str, checkpointing: bool
) -> dict[str, Any]:
    """The ``text_lm`` backbone of a run: ``full`` keeps float32 weights (autocast under
    bf16), ``lora`` holds its frozen weights in bfloat16 under bf16, ``qlora`` computes its
    4-bit layers in bfloat16 under bf16 (float32 otherwise); ``checkpointing`` applies to
    ``lora`` and ``qlora`` only."""
    spec: dict[str, Any] = {"source": str(source), "freeze": policy}
    if policy in ("lora", "qlora"):
        spec["lora"] = dict(LORA)
        spec["gradient_checkpointing"] = checkpointing
        if precision == "bf16":
            if policy == "lora":
                spec["dtype"] = "bfloat16"
            else:
                spec["lora"]["compute_dtype"] = "bfloat16"
    return spec


# ---------------------------------------------------------------------- the two loops
def _timed_figures(
    tokens: Sequence[int], examples: Sequence[int], warmup: int, seconds: float
) -> dict[str, Any]:
    timed_tokens, timed_examples = int(sum(tokens[warmup:])), int(sum(examples[warmup:]))
    return {
        "steps": len(tokens),
        "warmup_steps": warmup,
        "tokens": int(sum(tokens)),
        "timed_tokens": timed_tokens,
        "timed_examples": timed_examples,
        "timed_s": seconds,
        "tokens_per_s": timed_tokens / seconds,
        "examples_per_s": timed_examples / seconds,
    }


def engine_run(
    model: nn.Module,
    objective: Any,
    task: Any,
    config: TrainingConfig,
    memory: PeakMemory,
) -> dict[str, Any]:
    """Fine-tune ``model`` with the :class:`Trainer` for ``config.max_steps`` steps.

    Tokens are counted from the batches the engine passes to ``model.lm_loss`` (non-pad:
    ``attention_mask``); the time of the steps after warm-up is the engine's own
    (``samples_per_s`` is its ``timed_samples / timed_time_s``); the peak is read after
    the last optimizer step, before the final evaluation.
    """
    steps = config.max_steps
    if steps is None or steps < 2:
        raise ConfigError(f"max_steps={steps} leaves no step to time after warm-up", "use >= 2")
    tokens: list[Any] = []
    examples: list[int] = []
    done = {"steps": 0, "peak_mb": 0.0}
    lm_loss = model.lm_loss

    def counted(batch: dict[str, torch.Tensor]) -> Any:
        if done["steps"] < steps:  # not the final evaluation's batches
            tokens.append(batch["attention_mask"].sum())
            examples.append(len(batch["input_ids"]))
        return lm_loss(batch)

    def on_step(step: int) -> None:
        done["steps"] = step
        if step == steps:  # inside the engine's timed span: reading the peak is cheap
            done["peak_mb"] = memory.peak_mb()

    model.lm_loss = counted
    trainer = Trainer(model, objective, task, config, on_step=on_step)
    memory.start()
    try:
        summary = trainer.fit()
    finally:
        memory.stop()
        del model.lm_loss  # the method again
    if len(tokens) != steps:
        raise ConfigError(
            f"the engine ran {len(tokens)} batches in {steps} steps",
            "run without micro-batches or gradient accumulation",
        )
    state = trainer.state
    counts = [int(t) for t in torch.stack(tokens).cpu().tolist()]
    row = _timed_figures(counts, examples, timed_warmup_steps(steps), state.timed_time_s)
    if row["timed_examples"] != state.timed_samples:
        raise ConfigError(
            f"the engine timed {state.timed_samples} examples, the batches held "
            f"{row['timed_examples']}",
            "run on one process",
        )
    row["engine_samples_per_s"] = summary["samples_per_s"]
    row["peak_mb"] = done["peak_mb"]
    return row


def plain_hf_loop(
    lm: nn.Module,
    batches: Any,
    order: Sequence[np.ndarray],
    precision: str,
    device: torch.device,
    memory: PeakMemory,
    lr: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """Fine-tune the Hugging Face causal LM ``lm`` as a user would: one optimizer step per
    batch ``batches[idx]`` for ``idx`` in ``order``.

    ``lm(input_ids=..., attention_mask=..., labels=...).loss`` (the model shifts the labels
    and computes float32 logits over the vocabulary at every position),
    ``torch.optim.AdamW(lr)`` over the trainable parameters, the gradient norm clipped to
    :data:`GRAD_CLIP`, ``torch.autocast`` to bfloat16 for ``precision="bf16"``. The first
    ``timed_warmup_steps(len(order))`` steps are not timed, as in the engine.
    """
    steps = len(order)
    if steps < 2:
        raise ConfigError(f"{steps} steps leave no step to time after warm-up", "use >= 2")
    quantized = getattr(lm, "is_loaded_in_4bit", False) or getattr(lm, "is_loaded_in_8bit", False)
    if not quantized:  # a quantized model was placed when it was loaded
        lm.to(device)
    lm.train()
    seed_everything(seed)
    params = [p for p in lm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    autocast = resolve_mixed_precision(PRECISIONS[precision], device.type) == "bf16"
    warmup = timed_warmup_steps(steps)
    tokens, examples = [], []
    memory.start()
    try:
        start = _clock(device)
        for k, idx in enumerate(order):
            batch = batches[idx]
            tokens.append(int(batch["attention_mask"].sum()))
            examples.append(len(batch["input_ids"]))
            inputs = {n: batch[n].to(device) for n in ("input_ids", "attention_mask", "labels")}
            with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
                loss = lm(**inputs, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if k + 1 == warmup:
                start = _clock(device)
        seconds = _clock(device) - start
        peak = memory.peak_mb()
    finally:
        memory.stop()
    row = _timed_figures(tokens, examples, warmup, seconds)
    row["peak_mb"] = peak
    return row


def engine_order(num_examples: int, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """The batches (indices) of the engine's first ``steps`` optimizer steps on one process
    (:func:`~llm_st.engine.seeding.epoch_order`, :func:`process_batches`)."""
    order: list[np.ndarray] = []
    epoch = 0
    while len(order) < steps:
        order += process_batches(epoch_order(num_examples, seed, epoch), batch_size)
        epoch += 1
    return order[:steps]


# ---------------------------------------------------------------------- the table
def finetune_throughput(
    sizes: Sequence[str | Mapping[str, Any]] = ("5M", "25M"),
    policies: Sequence[str] = POLICIES,
    steps: int = 16,
    batch_size: int = 8,
    data: str = "synthetic-traffic:num_nodes=8,num_days=7,seed=0",
    history: int = 24,
    horizon: int = 6,
    precision: str = "fp32",
    checkpointing: bool = False,
    device: str = "auto",
    methods: Sequence[str] = METHODS,
    lr: float = 1e-4,
    seed: int = 0,
    data_dir: str | None = None,
    save: bool = True,
    warmup: bool = True,
    sample_interval_s: float = 0.002,
) -> list[dict[str, Any]]:
    """Tokens/s, peak memory, trainable parameters and saved size of fine-tuning a causal
    LM on forecasting prompts, with llm-st's engine and with a plain Hugging Face loop.

    Parameters
    ----------
    sizes
        Names of :data:`LLAMA_SIZES` or mappings of ``LlamaConfig`` fields (and ``name``).
    policies
        Backbone policies: ``full``, ``lora``, ``qlora``.
    steps, batch_size
        Optimizer steps of every run, examples (prompts) per step; the first
        ``timed_warmup_steps(steps)`` are not timed.
    data, history, horizon, data_dir
        The series the prompts are made of (named, synthetic or a file), and the window.
        Just enough training windows are rendered for ``steps`` batches.
    precision
        ``fp32``, or ``bf16`` (see :func:`backbone_spec`; autocast in both loops).
    checkpointing
        Gradient checkpointing of the blocks under ``lora`` and ``qlora``.
    device
        ``auto`` (the GPU when there is one), ``cpu`` or ``cuda``.
    methods
        ``engine`` and / or ``plain``, run in this order for every size and policy.
    lr, seed
        Learning rate (constant) and seed of model building, batch order and dropout.
    save
        Also save what each run keeps and report its size (``saved_mb``).
    warmup
        First run each method for 2 steps on the first size and policy, unreported, so
        one-time set-up (thread pools, kernels, Accelerate's state, lazy imports) is not
        charged to the first row's time and memory.
    sample_interval_s
        CPU: how often the resident memory is read.

    Returns
    -------
    list of dict
        One row per size, policy and method: ``size``, ``params`` (of the LLaMA),
        ``policy``, ``method``, ``device``, ``precision``, ``checkpointing``, ``batch_size``,
        the figures of the run (``steps``, ``warmup_steps``, ``tokens`` (non-pad tokens of
        all steps), ``timed_tokens``, ``timed_examples``, ``timed_s``, ``tokens_per_s`` =
        ``timed_tokens / timed_s``, ``examples_per_s``), ``peak_mb`` and ``baseline_mb``
        (MiB, see :class:`PeakMemory`), ``peak_kind``, ``trainable`` and ``total``
        (parameters of the model trained), ``saved_mb`` (None without ``save``), and where
        both methods ran, ``speedup`` (tokens/s over the plain loop's) and
        ``memory_ratio`` (peak over the plain loop's).
    """
    from llm_st.config import DataConfig
    from llm_st.models.base import DataInfo
    from llm_st.models.text_lm import TextLM
    from llm_st.objectives import build_objective

    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ConfigError(f"unknown policies {unknown}", f"use some of {', '.join(POLICIES)}")
    if [m for m in methods if m not in METHODS] or not methods:
        raise ConfigError(f"methods {list(methods)}", f"use some of {', '.join(METHODS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}", f"use {' or '.join(PRECISIONS)}")
    if steps < 2:
        raise ConfigError(f"steps={steps} leaves no step to time after warm-up", "use >= 2")
    target = resolve_device(device)
    shapes = [llama_shape(s) for s in sizes]
    task = build_task(DataConfig(spec=data, history=history, horizon=horizon, data_dir=data_dir))
    info = DataInfo.from_data(task.data, history, horizon)
    series = task.data.num_nodes * task.data.num_channels
    windows = math.ceil(steps * batch_size / series)  # one epoch covers the steps
    memory = PeakMemory(target, sample_interval_s)
    kind = "cuda allocated" if target.type == "cuda" else "rss above start"

    def run(method: str, spec: dict[str, Any], n_steps: int, out: Path | None) -> dict[str, Any]:
        """One run: build the model (seeded), train it ``n_steps`` steps, save it to ``out``."""
        memory.baseline()
        torch.manual_seed(seed)  # LoRA's A matrices are drawn at random
        model = TextLM(info, backbone=spec, val_windows=1, val_nodes=1, decode_batch_size=4)
        objective = build_objective(
            "sft", None, model, train_windows=windows, cache_dir=Path(tmp) / "sft"
        )
        train = objective.dataset(task, "train")  # built before measuring
        counts = count_parameters(model.lm)
        if method == "engine":
            config = TrainingConfig(
                max_steps=n_steps,
                batch_size=batch_size,
                eval_batch_size=batch_size,
                lr=lr,
                scheduler="constant",
                grad_clip=GRAD_CLIP,
                mixed_precision=PRECISIONS[precision],
                micro_batch_size=None,
                patience=None,
                eval_every=n_steps,
                device=target.type,
                seed=seed,
            )
            row = engine_run(model, objective, task, config, memory)
        else:
            order = engine_order(len(train), batch_size, n_steps, seed)
            row = plain_hf_loop(model.lm, train, order, precision, target, memory, lr, seed)
        row.update(counts, baseline_mb=memory.baseline_mb, saved_mb=None)
        if out is not None:
            out.mkdir()
            if method == "engine":
                save_model(model, out)
            else:
                model.lm.save_pretrained(out)
            row["saved_mb"] = directory_mb(out)
            shutil.rmtree(out, ignore_errors=True)
        return row

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llm-st-bench-ft-") as tmp:
        for name, shape in shapes:
            source, params = write_llama(Path(tmp) / name, shape)
            for policy in policies:
                spec = backbone_spec(source, policy, precision, checkpointing)
                if warmup and not rows:  # one-time set-up is not the first row's cost
                    for method in methods:
                        run(method, spec, 2, None)
                here = []
                for method in methods:
                    out = Path(tmp) / "saved" if save else None
                    row = {
                        "size": name,
                        "params": params,
                        "policy": policy,
                        "method": method,
                        "device": str(target),
                        "precision": precision,
                        "checkpointing": checkpointing and policy != "full",
                        "batch_size": batch_size,
                        **run(method, spec, steps, out),
                        "peak_kind": kind,
                    }
                    logger.info(
                        "%s %s %s: %.0f tokens/s, peak %.0f MiB",
                        name, policy, method, row["tokens_per_s"], row["peak_mb"],
                    )  # fmt: skip
                    here.append(row)
                if "plain" in methods:
                    plain = next(r for r in here if r["method"] == "plain")
                    for row in here:
                        row["speedup"] = row["tokens_per_s"] / plain["tokens_per_s"]
                        row["memory_ratio"] = (
                            row["peak_mb"] / plain["peak_mb"] if plain["peak_mb"] > 0 else None
                        )
                rows += here
    _trim()
    return rows
