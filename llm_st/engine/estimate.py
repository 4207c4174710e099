"""Peak training memory of a recipe, predicted before anything is loaded: :func:`estimate_memory`.

An LLM forecaster's memory wall (Time-LLM on LLaMA-7B) shows only after the weights are
read and the first step runs out of memory. The estimate needs the backbone's
``config.json`` alone: the recipe's model is built on PyTorch's ``meta`` device (tensors
with a shape and a dtype, no storage), in the ``random_init`` mode that builds a backbone
from its config without reading weights, so a 7B model is "built" in a second. From that
model, the recipe's batch and the backbone's block structure it adds up, in bytes:

``weights``
    every parameter and buffer in its dtype; the linear layers of a 4-bit backbone
    (``freeze: qlora`` / ``qfrozen``, nf4 with double quantization) at half a byte per
    weight plus their block scales (:func:`nf4_bytes`), the others in float32 under
    ``qlora`` (``peft.prepare_model_for_kbit_training`` casts them) and in the compute
    dtype under ``qfrozen``.
``gradients``, ``optimizer``, ``step``
    one gradient and AdamW's two moments per trainable parameter, in its dtype; the
    temporary the foreach AdamW makes in its step (none for CUDA's fused AdamW).
``activations``
    what the backbone's blocks keep for the backward pass: ``S x T x`` a per-token count
    derived from the block's structure (:func:`block_bytes_per_token`): the inputs of its
    norms, the query, key and value the attention kernel reads (plus the ``heads x T``
    probabilities per token where the attention is not a fused kernel:
    ``attn_implementation: eager``, or PyTorch's CPU kernel under attention dropout), the
    MLP's intermediate tensors, dropout masks and LoRA's inputs, for ``S`` sequences of
    ``T`` tokens (GPT4TS and Time-LLM: every series of the batch is one sequence, ``S =
    batch x nodes x channels``; ST-LLM: one sequence of ``nodes`` tokens per window). With
    gradient checkpointing a block keeps its input only.
``outside``
    activations of the layers around the blocks: the patch embedding, Time-LLM's
    prototypes over the vocabulary and reprogramming attention (``S x heads x P x K``
    weights), the embedding and final norms, the head's input.
``working``
    what lives only for a moment at the peak: the hidden states the forward pass still
    holds when it ends (Time-LLM's prompt prefix and the backbone's whole output), or a
    block's gradients in the backward pass (:func:`block_working_bytes_per_token`) plus,
    with checkpointing, the block recomputed there; whichever is larger.
``overhead``
    on a CUDA GPU, :data:`CUDA_CONTEXT_BYTES` (the CUDA context and cuBLAS workspace,
    which ``torch.cuda.max_memory_allocated`` does not see) plus :data:`ALLOCATOR_SLACK` of
    the rest (the caching allocator's rounding and fragmentation); nothing on the CPU.

The step peaks either in the backward pass or in the optimizer step
(:class:`MemoryEstimate` says how the parts add up). The counts are checked against the
tensors autograd saves (``torch.autograd.graph.saved_tensors_hooks``) for every family,
and the whole estimate against the measured peak of real training steps on the CPU
(``tests/test_estimate.py``: within a few percent). Mixed precision (autocast) is not
modelled: activations are counted in the backbone's dtype, which over-estimates a float32
backbone under ``bf16`` autocast.

With ``gpu_memory`` the estimate says whether the step fits and, if not, which changes of
the recipe make it fit, each with its own predicted peak (:attr:`MemoryEstimate.alternatives`):
gradient checkpointing, 4-bit weights (``qfrozen`` for a frozen backbone, ``qlora`` for
LoRA), micro-batches (``training.micro_batch_size``: the same batch and gradients, in
smaller pieces) and fewer blocks. :func:`run_estimate` is ``llm-st estimate``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_st.backbones.frozen import FrozenBackbone, backbone_config
from llm_st.backbones.hub import _DTYPES
from llm_st.backbones.lora import LORA_POLICIES, QFROZEN, is_lora_parameter
from llm_st.backbones.spec import BackboneSpec
from llm_st.config import Recipe, load_recipe, recipe_from_dict
from llm_st.data.task import ForecastTask
from llm_st.engine.run import build_task
from llm_st.errors import ConfigError, ModelLoadError
from llm_st.models.base import DataInfo, STModel
from llm_st.models.gpt4ts import GPT4TS
from llm_st.models.registry import build_model, get_model_class
from llm_st.models.stllm import STLLM
from llm_st.models.timellm import TimeLLM
from llm_st.tokens.revin import instance_norm

CUDA_CONTEXT_BYTES = 600 * 2**20
"""Memory the CUDA context, cuBLAS' workspace and the kernels' images take on the GPU
before the first tensor (about 0.5-0.7 GiB with PyTorch 2.x on Ampere / Hopper GPUs)."""
ALLOCATOR_SLACK = 0.05
"""Share of the allocated peak PyTorch's caching allocator holds on top (block rounding,
fragmentation between the step's differently sized tensors)."""
NF4_BLOCK = 64
"""Weights per 4-bit block, each with one absolute maximum (bitsandbytes' default)."""
NF4_NESTED_BLOCK = 256
"""Block maxima per second-level block under double quantization."""
PROMPT_SAMPLE_WINDOWS = 256
"""Training windows whose Time-LLM prompts are tokenized to find the longest prefix."""

_MEMORY_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_memory(text: str) -> int:
    """Bytes of a memory size written as ``24GB``, ``80 GiB``, ``512MiB`` or ``1.5TB``.

    ``GB`` / ``MB`` are powers of 10 (what GPU makers print: an "80 GB" A100 has
    80 * 10**9 bytes), ``GiB`` / ``MiB`` powers of 2 (what ``nvidia-smi`` shows in MiB).

    Raises
    ------
    ConfigError
        Text that is not a positive number followed by one of those units.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]+)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _MEMORY_UNITS or float(match.group(1)) <= 0:
        raise ConfigError(
            f"memory size {text!r} is not a positive number with a unit",
            "write e.g. 24GB, 80GiB or 16000MiB (GB/MB/TB: powers of 10; GiB/MiB: of 2)",
        )
    return int(float(match.group(1)) * _MEMORY_UNITS[unit])


def gib(size: int) -> str:
    """``size`` bytes in GiB with two decimals, e.g. ``"14.02 GiB"``."""
    return f"{size / 2**30:.2f} GiB"


def nf4_bytes(num_weights: int) -> int:
    """Bytes of one linear layer's ``num_weights`` weights in 4-bit nf4 with double
    quantization: bitsandbytes' packed ``Params4bit`` and its quantization state.

    Two weights per byte; a uint8 absolute maximum per :data:`NF4_BLOCK` weights; a
    float32 maximum per :data:`NF4_NESTED_BLOCK` of those and their float32 mean (the
    nested quantization's offset); the 16-entry nf4 code and the 256-entry code of the
    nested quantization (float32; every layer loaded by transformers has its own copies).
    """
    blocks = math.ceil(num_weights / NF4_BLOCK)
    nested = math.ceil(blocks / NF4_NESTED_BLOCK)
    return math.ceil(num_weights / 2) + blocks + 4 * (nested + 1) + 4 * (16 + 256)


# ---------------------------------------------------------------------------- blocks
@dataclass(frozen=True)
class BlockLayout:
    """What a family's Transformer block keeps for the backward pass (see
    :func:`block_bytes_per_token`).

    Attributes
    ----------
    mlp_tensors
        ``[F]``-wide tensors the MLP keeps: SwiGLU's gate, up and SiLU(gate) (3);
        GPT-2's tanh-approximated GELU written out in elementwise operations (4: its
        input, and three intermediate products); the exact GELU of BERT (1, its input).
    norm_stats
        Bytes per token a norm keeps besides its input: RMSNorm's ``rsqrt`` (4),
        LayerNorm's mean and reciprocal standard deviation (8), float32 either way.
    norm_upcast
        The norm computes in float32 and keeps that copy of its input (LLaMA's RMSNorm),
        so its input costs 4 bytes per value in any dtype.
    final_norm
        A norm after the last block (pre-norm families).
    embedding_norm
        A LayerNorm over the embeddings before the first block (BERT).
    hidden_dropout, attention_dropout, embedding_dropout
        Config keys of the dropout probabilities after attention and MLP, on the
        attention weights and on the embeddings (None: the family has none).
    rotary
        Rotary position embeddings: ``cos`` and ``sin`` ``[T, head_dim]``, computed once
        for all blocks (per sequence where a padding mask sets the positions).
    intermediate
        Config key of the MLP width ``F`` (None in the config: ``4 D``).
    """

    mlp_tensors: int
    norm_stats: int
    norm_upcast: bool
    final_norm: bool
    embedding_norm: bool
    hidden_dropout: str | None
    attention_dropout: str | None
    embedding_dropout: str | None
    rotary: bool
    intermediate: str


_LLAMA = BlockLayout(
    mlp_tensors=3,
    norm_stats=4,
    norm_upcast=True,
    final_norm=True,
    embedding_norm=False,
    hidden_dropout=None,
    attention_dropout="attention_dropout",
    embedding_dropout=None,
    rotary=True,
    intermediate="intermediate_size",
)
BLOCK_LAYOUTS: dict[str, BlockLayout] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gpt2": BlockLayout(
        mlp_tensors=4,
        norm_stats=8,
        norm_upcast=False,
        final_norm=True,
        embedding_norm=False,
        hidden_dropout="resid_pdrop",
        attention_dropout="attn_pdrop",
        embedding_dropout="embd_pdrop",
        rotary=False,
        intermediate="n_inner",
    ),
    "bert": BlockLayout(
        mlp_tensors=1,
        norm_stats=8,
        norm_upcast=False,
        final_norm=False,
        embedding_norm=True,
        hidden_dropout="hidden_dropout_prob",
        attention_dropout="attention_probs_dropout_prob",
        embedding_dropout="hidden_dropout_prob",
        rotary=False,
        intermediate="intermediate_size",
    ),
}
"""``config.model_type`` -> :class:`BlockLayout`, for the families of
:data:`~llm_st.backbones.families.FAMILIES`."""


@dataclass(frozen=True)
class BlockShape:
    """The sizes one block's activations depend on, read from a built backbone.

    Attributes
    ----------
    layout : BlockLayout
    width, intermediate, heads, kv_heads : int
        ``D``, the MLP's ``F``, the attention heads ``h`` and the key / value heads
        (grouped-query attention; repeated to ``h`` before the kernel when there is a
        padding mask or no fused kernel).
    fused_attention : bool
        Whether the attention is a fused kernel that keeps its output and a ``[h]``
        log-sum-exp per token instead of the ``[h, T]`` probabilities.
    attention_dropout, hidden_dropout, embedding_dropout : float
    trainable_norms : bool
        Whether the norms' weights train (policies ``layernorm`` and ``attention``).
    trainable_attention_blocks : int
        Blocks whose attention projections train (policy ``attention``).
    lora : tuple of (int, int)
        ``(in_features, r)`` of each LoRA layer of one block.
    lora_dropout : float
    """

    layout: BlockLayout
    width: int
    intermediate: int
    heads: int
    kv_heads: int
    fused_attention: bool
    attention_dropout: float
    hidden_dropout: float
    embedding_dropout: float
    trainable_norms: bool
    trainable_attention_blocks: int
    lora: tuple[tuple[int, int], ...]
    lora_dropout: float


def dropout_mask_bytes(device: str, act: int) -> int:
    """Bytes per value a dropout keeps: a bool mask on CUDA, a scaled noise tensor in the
    input's dtype (``act`` bytes) on the CPU."""
    return 1 if device == "cuda" else act


def block_bytes_per_token(
    shape: BlockShape,
    tokens: int,
    act: int,
    device: str,
    attention_mask: bool = False,
    attention_trains: bool = False,
) -> int:
    """Bytes one block keeps for the backward pass, per token of a sequence.

    Parameters
    ----------
    shape : BlockShape
    tokens : int
        ``T``, the sequence length (the attention probabilities are ``[h, T]`` per token).
    act : int
        Bytes per value of the hidden states (the backbone's dtype).
    device : {"cuda", "cpu"}
        Where the step runs (:func:`dropout_mask_bytes`).
    attention_mask : bool
        The backbone is called with a padding mask; a fused kernel keeps the ``[T, T]``
        mask (in the hidden states' dtype) of every block.
    attention_trains : bool
        This block's attention projections train: their inputs are kept (the query, key
        and value's is RMSNorm's output, which a trainable RMSNorm keeps anyway).

    Returns
    -------
    int
        Bytes per token; a block of ``S`` sequences keeps ``S * T`` times that.
    """
    lay, D, F, h = shape.layout, shape.width, shape.intermediate, shape.heads
    mask = dropout_mask_bytes(device, act)
    norm_input = 4 if lay.norm_upcast else act
    total = 2 * (D * norm_input + lay.norm_stats)
    if shape.trainable_norms and lay.norm_upcast:
        total += 2 * D * act  # RMSNorm's weight multiplies the normalized copy it keeps
    if shape.fused_attention:
        # query, output, key and value (at their own head count without a mask); the
        # float32 log-sum-exp; the mask's copy in every block
        kv = D if attention_mask else D // h * shape.kv_heads
        total += 2 * (D + kv) * act + 4 * h
        if attention_mask:
            total += tokens * act
    else:
        total += 3 * D * act + h * tokens * act  # query, key, value; probabilities
        if shape.attention_dropout > 0:
            total += h * tokens * (act + mask)  # dropped probabilities and the mask
    total += lay.mlp_tensors * F * act
    if shape.hidden_dropout > 0:
        total += 2 * D * mask
    if attention_trains:
        total += (1 if shape.trainable_norms and lay.norm_upcast else 2) * D * act
    # peft casts a LoRA layer's input to float32 (its weights' dtype) and keeps it, after
    # dropout with its mask; without dropout, layers reading the same float32 tensor share
    # it (counted once per layer: an upper bound)
    lora_mask = dropout_mask_bytes(device, 4) if shape.lora_dropout > 0 else 0
    for in_features, r in shape.lora:
        total += in_features * (4 + lora_mask) + 4 * r
    return total


def block_shape(backbone: FrozenBackbone, device: str) -> BlockShape:
    """The :class:`BlockShape` of a built backbone, for training on ``device``."""
    from transformers.pytorch_utils import Conv1D

    config = backbone.hf_model.config
    if config.model_type not in BLOCK_LAYOUTS:
        raise ConfigError(
            f"the memory estimate does not know the blocks of {config.model_type!r} models",
            "add a BlockLayout for the family to llm_st.engine.estimate.BLOCK_LAYOUTS "
            f"(known: {', '.join(BLOCK_LAYOUTS)})",
        )
    lay = BLOCK_LAYOUTS[config.model_type]
    width = int(config.hidden_size)

    def probability(key: str | None) -> float:
        return float(getattr(config, key, None) or 0.0) if key else 0.0

    attention_dropout = probability(lay.attention_dropout)
    # CUDA's fused kernels (flash, memory-efficient) also run attention dropout; PyTorch's
    # CPU kernel falls back to the plain product, which keeps the probabilities, under it
    fused = config._attn_implementation in ("sdpa", "flash_attention_2") and (
        device == "cuda" or attention_dropout == 0
    )
    lora: list[tuple[int, int]] = []
    lora_dropout = 0.0
    if backbone.has_lora and backbone.num_layers:
        for module in backbone.blocks[0].modules():
            if "default" in getattr(module, "lora_A", {}):
                lora.append((module.lora_A["default"].in_features, module.r["default"]))
                lora_dropout = float(getattr(module.lora_dropout["default"], "p", 0.0))
    trains_attention = 0
    if backbone.policy == "attention":  # the last U blocks' attention projections train
        trains_attention = sum(
            any(
                m.weight.requires_grad
                for m in block.get_submodule(backbone.family.attention).modules()
                if isinstance(m, nn.Linear | Conv1D)
            )
            for block in backbone.blocks
        )
    return BlockShape(
        layout=lay,
        width=width,
        intermediate=int(getattr(config, lay.intermediate, None) or 4 * width),
        heads=int(config.num_attention_heads),
        kv_heads=int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
        fused_attention=fused,
        attention_dropout=attention_dropout,
        hidden_dropout=probability(lay.hidden_dropout),
        embedding_dropout=probability(lay.embedding_dropout),
        trainable_norms=backbone.policy in ("layernorm", "attention"),
        trainable_attention_blocks=trains_attention,
        lora=tuple(lora),
        lora_dropout=lora_dropout,
    )


def block_working_bytes_per_token(shape: BlockShape, tokens: int, act: int) -> int:
    """Bytes per token the backward pass of one block needs besides what the block kept.

    The gradient reaching the block and the one it passes on (``2 D``), plus the larger
    of the MLP's gradients (two ``[F]`` at a time) and the attention's (query, key and
    value; those of the ``[h, T]`` probabilities and scores without a fused kernel); the
    attention's come after the MLP's backward has freed the MLP's kept tensors. Checked
    against measured peaks in ``tests/test_estimate.py``.
    """
    D, F, h = shape.width, shape.intermediate, shape.heads
    attention = 3 * D + (0 if shape.fused_attention else 2 * h * tokens)
    mlp_kept = shape.layout.mlp_tensors * F
    return (2 * D + max(2 * F, attention - mlp_kept)) * act


def backbone_bytes_per_token(shape: BlockShape, act: int, device: str, attention_mask: bool) -> int:
    """Bytes per token the backbone keeps outside its blocks: the embeddings' norm and
    dropout, rotary ``cos`` / ``sin`` (one pair for all blocks, per sequence when a
    padding mask gives every sequence its own positions), the final norm."""
    lay, D = shape.layout, shape.width
    total = 0
    mask = dropout_mask_bytes(device, act)
    if lay.embedding_norm:
        total += D * act + lay.norm_stats
    if shape.embedding_dropout > 0:
        total += D * mask
    if lay.rotary and attention_mask:
        total += 2 * (D // shape.heads) * act
    if lay.final_norm:
        total += D * (4 if lay.norm_upcast else act) + lay.norm_stats
        if shape.trainable_norms and lay.norm_upcast:
            total += D * act
    return total


# ---------------------------------------------------------------------------- the estimate
@dataclass
class Alternative:
    """A change of the recipe and the peak it is predicted to have.

    Attributes
    ----------
    overrides : tuple of str
        The change, as ``--set`` overrides (``model.backbone.freeze=qfrozen``).
    peak : int
        Predicted peak in bytes (overhead included on a GPU).
    fits : bool
        Whether ``peak`` is within the GPU memory asked about.
    """

    overrides: tuple[str, ...]
    peak: int
    fits: bool


@dataclass
class MemoryEstimate:
    """Predicted memory of one training step at its peak, in bytes, by what holds it.

    The step has two peaks: the start of the backward pass (``activations``, ``outside``
    and ``working`` alive) and the optimizer step (the activations are gone; every
    ``gradients`` and the optimizer's ``step`` temporaries are there). Weights and AdamW's
    moments (from the first step on) are there all the time, so::

        peak = weights + optimizer + max(activations + outside + working,
                                         gradients + step) + overhead

    except that when gradients accumulate over micro-batches or batches (``accumulating``)
    the backward passes after the first one run with all ``gradients`` there.

    Attributes
    ----------
    weights, gradients, optimizer, activations, outside, working, step, overhead : int
        See the module docstring; ``step`` is the temporary the foreach AdamW makes of
        the moments (none for CUDA's fused AdamW).
    accumulating : bool
        Whether gradients add up over several backward passes per optimizer step
        (micro-batches, ``training.grad_accum``).
    setting : dict
        What the numbers are for: model, backbone source, blocks, policy, dtypes,
        gradient checkpointing, batch and micro-batch, sequences ``S`` and tokens ``T``,
        the device, parameter counts.
    gpu_memory : int or None
        The memory the step has to fit in, if one was asked about.
    alternatives : list of Alternative
        With ``gpu_memory`` and a peak above it: changes of the recipe with their peaks.
    """

    weights: int
    gradients: int
    optimizer: int
    activations: int
    outside: int
    working: int
    step: int
    overhead: int
    accumulating: bool
    setting: dict[str, Any]
    gpu_memory: int | None = None
    alternatives: list[Alternative] = field(default_factory=list)

    PARTS = (
        "weights", "gradients", "optimizer", "activations", "outside", "working", "step",
        "overhead",
    )  # fmt: skip

    @property
    def backward_peak(self) -> int:
        """Bytes of the backward pass' peak besides weights, moments and overhead."""
        held = self.gradients if self.accumulating else 0
        return self.activations + self.outside + self.working + held

    @property
    def step_peak(self) -> int:
        """Bytes of the optimizer step besides weights, moments and overhead."""
        return self.gradients + self.step

    @property
    def peak(self) -> int:
        """Predicted peak in bytes (see the class docstring)."""
        return (
            self.weights + self.optimizer + max(self.backward_peak, self.step_peak) + self.overhead
        )

    @property
    def fits(self) -> bool | None:
        """Whether :attr:`peak` fits :attr:`gpu_memory` (None without one)."""
        return None if self.gpu_memory is None else self.peak <= self.gpu_memory

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able): the parts, ``peak``, ``fits``, ``setting``, ``alternatives``."""
        return {
            **{name: getattr(self, name) for name in self.PARTS},
            "accumulating": self.accumulating,
            "peak": self.peak,
            "gpu_memory": self.gpu_memory,
            "fits": self.fits,
            "setting": dict(self.setting),
            "alternatives": [dataclasses.asdict(a) for a in self.alternatives],
        }

    def format(self) -> str:
        """The setting, the breakdown, the verdict and the alternatives as plain text."""
        s = self.setting
        rows = [
            ("weights", self.weights),
            ("AdamW moments", self.optimizer),
            ("backward pass: activations in blocks", self.activations),
            ("  activations outside the blocks", self.outside),
            ("  working memory", self.working),
            ("optimizer step: gradients", self.gradients),
            ("  AdamW temporaries", self.step),
            ("CUDA context and allocator", self.overhead),
            ("predicted peak", self.peak),
        ]
        lines = [
            f"{s['model']} on {s['source']}: {s['blocks']} blocks, freeze {s['freeze']}, "
            f"{s['dtype']} (4-bit: {s['quantize']}), gradient checkpointing "
            f"{'on' if s['checkpointing'] else 'off'}",
            f"batch {s['batch_size']}, micro-batch {s['micro_batch']}: {s['sequences']} "
            f"sequences x {s['tokens']} tokens on {s['device']}; "
            f"{s['trainable']:,} of {s['parameters']:,} parameters train",
            "",
            *(f"  {label:<40}{gib(size):>12}" for label, size in rows),
        ]
        if self.gpu_memory is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines += ["", f"{verdict} in {gib(self.gpu_memory)} ({self.gpu_memory / 1e9:.1f} GB)"]
        if self.alternatives:
            lines.append("changes, with their predicted peaks:")
            for alt in self.alternatives:
                change = " ".join(f"--set {o}" for o in alt.overrides)
                lines.append(
                    f"  {gib(alt.peak):>12}  {'fits' if alt.fits else 'too big':<8}{change}"
                )
        return "\n".join(lines)


# ---------------------------------------------------------------------------- building
def _target_device(recipe: Recipe, device: str | None) -> str:
    device = device or recipe.training.device
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r} for the estimate", "use cuda or cpu")
    return "cuda" if device == "auto" else device


def _backbone_spec(recipe: Recipe) -> BackboneSpec:
    """The recipe's backbone, completed with the method's default (LLM adapters only)."""
    cls = get_model_class(recipe.model.name)
    if cls not in _ADAPTERS:
        names = sorted(c.registry_name for c in _ADAPTERS)
        raise ConfigError(
            f"the memory estimate covers the LLM adapters, not {recipe.model.name!r}",
            f"estimate one of {', '.join(names)}",
        )
    spec = cls.complete_backbone(recipe.model.backbone or {})
    if spec.mode not in ("pretrained", "random_init"):
        raise ConfigError(
            f"the memory estimate covers backbones in mode pretrained or random_init, not "
            f"{spec.mode!r}",
            "estimate mode pretrained: its blocks take more memory than the ablation's body",
        )
    return spec


def _weight_dtype(spec: BackboneSpec, device: str) -> torch.dtype:
    """The dtype of the backbone's unquantized weights, which its hidden states have too."""
    if spec.freeze == "qlora":
        return torch.float32  # peft.prepare_model_for_kbit_training casts them
    if spec.dtype not in (None, "auto"):
        return _DTYPES[spec.dtype]
    if spec.freeze == QFROZEN:
        if spec.lora.compute_dtype != "auto":
            return _DTYPES[spec.lora.compute_dtype]
        return torch.bfloat16 if device == "cuda" else torch.float32
    if spec.dtype is None and spec.mode == "random_init":
        return torch.float32  # what from_config builds
    own = getattr(backbone_config(spec.source, spec.trust_remote_code), "dtype", None)
    own = _DTYPES.get(own) if isinstance(own, str) else own
    return own if isinstance(own, torch.dtype) else torch.float32


def _meta_model(
    recipe: Recipe, spec: BackboneSpec, info: DataInfo, device: str, prompt: bool
) -> STModel:
    """The recipe's model on the meta device, from the backbone's config alone.

    The backbone is built in mode ``random_init`` (from its config: no weights are read),
    in the dtype its unquantized weights have, with the 4-bit policies replaced by their
    full-precision twins (``qlora`` -> ``lora``, ``qfrozen`` -> ``frozen``: the same
    parameters, the same ones trainable; :func:`_quantized` sizes the 4-bit ones) and
    without checkpointing (which changes no parameter). ``prompt=False`` builds Time-LLM
    without its prompt (and the tokenizer, which a config-only model directory lacks).
    """
    freeze = {"qlora": "lora", QFROZEN: "frozen"}.get(spec.freeze, spec.freeze)
    lora = None
    if freeze in LORA_POLICIES:
        lora = {**dataclasses.asdict(spec.lora), "quantize": "none", "compute_dtype": "auto"}
    dtype = _weight_dtype(spec, device)
    backbone = {
        **spec.to_dict(),
        "mode": "random_init",
        "freeze": freeze,
        "lora": lora,
        "dtype": next(name for name, d in _DTYPES.items() if d == dtype),
        "gradient_checkpointing": False,
    }
    params = dict(recipe.model.params)
    if get_model_class(recipe.model.name) is TimeLLM:
        params["prompt"] = prompt
    with torch.device("meta"):
        return build_model(recipe.model.name, info, backbone=backbone, **params)


def _quantized_bytes(module: nn.Module, quantize: str) -> int:
    """Bytes of a linear layer's weight after bitsandbytes quantization."""
    weight = module.weight
    if quantize == "8bit":
        return weight.numel() + 4 * weight.shape[0]  # int8 weights, a float32 scale per row
    return nf4_bytes(weight.numel())


def _quantized(model: nn.Module, spec: BackboneSpec) -> dict[int, int]:
    """``id(weight)`` -> bytes of the backbone's linear weights that bitsandbytes quantizes
    under ``qlora`` / ``qfrozen`` (every ``nn.Linear`` and GPT-2 ``Conv1D`` of the Hugging
    Face model, LoRA's own excepted); empty for the other policies."""
    from transformers.pytorch_utils import Conv1D

    if spec.freeze not in ("qlora", QFROZEN):
        return {}
    backbone = next(m for m in model.modules() if isinstance(m, FrozenBackbone))
    return {
        id(module.weight): _quantized_bytes(module, spec.lora.quantize)
        for name, module in backbone.hf_model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and not is_lora_parameter(name)
    }


def _tensor_bytes(module: nn.Module, quantized: dict[int, int]) -> int:
    """Bytes of the parameters and buffers of ``module``, quantized ones at their size."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(quantized.get(id(t), t.numel() * t.element_size()) for t in tensors)


# ---------------------------------------------------------------------------- adapters
@dataclass(frozen=True)
class _Sequences:
    """How an adapter feeds its backbone, and what its own layers hold, for one batch.

    ``sequences`` x ``tokens`` go through the blocks; ``saved`` bytes are kept for the
    backward pass by the adapter's layers; ``scope`` bytes are alive when the forward pass
    ends without being kept (hidden states the forward function still refers to).
    """

    sequences: int
    tokens: int
    saved: int
    scope: int
    attention_mask: bool = False


def _gpt4ts(model: GPT4TS, batch: int, act: int, device: str, prompt: int) -> _Sequences:
    """Every series a sequence of ``P`` patch tokens; the patches and the flatten head's
    float32 input ``[S, P * D]`` are kept, the float32 patch tokens held."""
    S = batch * model.info.num_nodes * model.info.num_channels
    P, D = model.num_patches, model.body.hidden_size
    return _Sequences(S, P, S * P * (model.patch_len + D) * 4, S * P * D * 4)


def _timellm(model: TimeLLM, batch: int, act: int, device: str, prompt: int) -> _Sequences:
    """Every series a sequence of ``prompt`` prefix tokens and ``P`` patch tokens.

    Kept: the circularly padded patches, the patch embedding's dropout, the prototypes
    ``[K, D]``, the reprogramming attention (its query and key, the ``[S, h, P, K]``
    probabilities, their dropout and the reordered copy the second product reads, value
    and output input) and the head's ``[S, P * d_ff]`` input. Held when the forward pass
    ends: the prefix ``[S, prompt, D]``, the backbone's input and its whole output
    ``[S, T, D]`` (the head reads a slice of it).
    """
    info, D = model.info, model.body.hidden_size
    S, P, T = batch * info.num_nodes * info.num_channels, model.num_patches, prompt
    d_model = model.patch_embedding.conv.out_channels
    heads, keys = model.reprogramming.n_heads, model.reprogramming.d_keys
    K = model.prototype_map.out_features
    # its dropouts (patch embedding, attention weights, head) act on float32 tensors
    dropped = dropout_mask_bytes(device, 4) if model.patch_embedding.dropout.p > 0 else 0
    saved = (
        S * model.patch_len * (P + 2) * 4
        + S * P * d_model * (4 + dropped)
        + K * D * 4
        + S * heads * P * K * (8 + dropped)
        + 2 * (S * P + K) * heads * keys * 4
        + S * P * model.d_ff * 4
        + S * info.horizon * dropped
    )
    scope = S * (T + 2 * (T + P)) * D * act
    return _Sequences(S, T + P, saved, scope, attention_mask=T > 0)


def _stllm(model: STLLM, batch: int, act: int, device: str, prompt: int) -> _Sequences:
    """One sequence of ``N`` node tokens per window; the token embedding's input, the
    fusion's input ``[B, N, 3 * channels]`` and the head's input are kept."""
    info, D = model.info, model.body.hidden_size
    S, N = batch, info.num_nodes
    channels = model.token_embedding.out_features
    saved = S * N * (info.history * info.num_channels + 3 * channels + D) * 4
    return _Sequences(S, N, saved, S * N * D * 4)


_ADAPTERS = {GPT4TS: _gpt4ts, TimeLLM: _timellm, STLLM: _stllm}
"""Adapter class -> how it feeds its backbone (:class:`_Sequences`)."""


def _prompt_tokens(model: TimeLLM, task: ForecastTask, batch: int) -> int:
    """The longest prompt prefix (tokens) of :data:`PROMPT_SAMPLE_WINDOWS` training windows
    spread over the split, rendered and tokenized as Time-LLM's forward pass does."""
    windows = task.dataset("train")
    count = min(len(windows), max(PROMPT_SAMPLE_WINDOWS, batch))
    picked = torch.linspace(0, len(windows) - 1, count).round().long().unique().tolist()
    sample = windows[picked]
    x = sample["x"]
    B, L, N, C = x.shape
    mask = sample.get("x_mask")
    mask = None if mask is None else mask.reshape(B, L, N * C) != 0
    normed, _ = instance_norm(x.reshape(B, L, N * C), dim=1, mask=mask)
    series = normed.transpose(1, 2).reshape(B * N * C, L)
    observed = None if mask is None else mask.transpose(1, 2).reshape(B * N * C, L)
    texts = model.prompt_texts(series, observed)
    return max(len(ids) for ids in model.prefix.token_ids(texts))


# ---------------------------------------------------------------------------- estimating
@dataclass
class _Built:
    """A recipe's meta-built model and what the estimate reads from it once."""

    recipe: Recipe
    spec: BackboneSpec
    model: STModel
    shape: BlockShape
    act: int  # bytes per value of the hidden states
    weights: int
    block_weights: int  # of one block (blocks are alike)
    trainable: int  # bytes of the trainable parameters
    block_trainable: int  # of the trainable parameters in the blocks, per block
    parameters: int
    trainable_count: int
    prompt: int  # Time-LLM's prefix tokens


def _build(
    recipe: Recipe, info: DataInfo, task: ForecastTask, device: str, prompt_tokens: int | None
) -> _Built:
    """Build ``recipe``'s model on the meta device and read what the estimate needs:
    weights, trainable bytes (all and per block), the block's shape, Time-LLM's prompt
    length (``prompt_tokens``, or counted with the backbone's tokenizer)."""
    spec = _backbone_spec(recipe)
    backbone_config(spec.source, spec.trust_remote_code)  # a missing model fails here
    prompting = get_model_class(recipe.model.name) is TimeLLM and recipe.model.params.get(
        "prompt", True
    )
    try:
        model = _meta_model(recipe, spec, info, device, prompting and prompt_tokens is None)
    except ModelLoadError as exc:  # the config loaded: it is the tokenizer that is missing
        raise ConfigError(
            f"Time-LLM's prompt length cannot be counted: no tokenizer loads from {spec.source!r}",
            "give the number of prompt tokens (prompt_tokens=N; llm-st estimate "
            "--prompt-tokens N), or use a model directory with its tokenizer",
        ) from exc
    prompt = 0
    if prompting:
        prompt = (
            prompt_tokens
            if prompt_tokens is not None
            else _prompt_tokens(model, task, recipe.training.batch_size)
        )
    body = model.body
    params = [*model.parameters()]
    trainable = [p for p in params if p.requires_grad]
    quantized = _quantized(model, spec)
    return _Built(
        recipe=recipe,
        spec=spec,
        model=model,
        shape=block_shape(body, device),
        act=body.dtype.itemsize,
        weights=_tensor_bytes(model, quantized),
        block_weights=_tensor_bytes(body.blocks[0], quantized) if body.num_layers else 0,
        trainable=sum(p.numel() * p.element_size() for p in trainable),
        block_trainable=sum(
            p.numel() * p.element_size()
            for b in body.blocks
            for p in b.parameters()
            if p.requires_grad
        )
        // max(1, body.num_layers),
        parameters=sum(p.numel() for p in params),
        trainable_count=sum(p.numel() for p in trainable),
        prompt=prompt,
    )


def _assemble(
    built: _Built, device: str, micro: int, checkpointing: bool, blocks: int | None = None
) -> MemoryEstimate:
    """The estimate of ``built`` with ``micro`` windows per forward pass, checkpointing on
    or off, and the first ``blocks`` blocks (default: all that were built)."""
    body, shape, act = built.model.body, built.shape, built.act
    k = body.num_layers if blocks is None else blocks
    dropped = body.num_layers - k
    seq = _ADAPTERS[type(built.model)](built.model, micro, act, device, built.prompt)
    S, T = seq.sequences, seq.tokens
    block = block_bytes_per_token(shape, T, act, device, seq.attention_mask)
    if checkpointing:
        activations = S * T * k * shape.width * act  # each block's input
        recompute = S * T * block  # one block at a time, in the backward pass
    else:
        # the attention policy trains the last U blocks' attention
        U = min(shape.trainable_attention_blocks, k)
        trains = block_bytes_per_token(shape, T, act, device, seq.attention_mask, True)
        activations = S * T * ((k - U) * block + U * trains)
        recompute = 0
    outside = seq.saved + S * T * backbone_bytes_per_token(shape, act, device, seq.attention_mask)
    working = 0
    if k:
        backward = S * T * block_working_bytes_per_token(shape, T, act)
        working = max(seq.scope, recompute + backward)
    trainable = built.trainable - dropped * built.block_trainable
    step = 0  # the engine's fused AdamW keeps no temporary copy of the moments
    weights = built.weights - dropped * built.block_weights
    estimate = MemoryEstimate(
        weights=weights,
        gradients=trainable,
        optimizer=2 * trainable,
        activations=activations,
        outside=outside,
        working=working,
        step=step,
        overhead=0,
        accumulating=micro < built.recipe.training.batch_size
        or built.recipe.training.grad_accum > 1,
        setting={
            "model": built.recipe.model.name,
            "source": built.spec.source,
            "blocks": k,
            "freeze": built.spec.freeze,
            "dtype": str(body.dtype).removeprefix("torch."),
            "quantize": built.spec.lora.quantize if built.spec.lora is not None else "none",
            "checkpointing": checkpointing,
            "batch_size": built.recipe.training.batch_size,
            "micro_batch": micro,
            "sequences": S,
            "tokens": T,
            "prompt_tokens": built.prompt,
            "device": device,
            "parameters": built.parameters,
            "trainable": built.trainable_count,
        },
    )
    if device == "cuda":
        estimate.overhead = CUDA_CONTEXT_BYTES + int(ALLOCATOR_SLACK * estimate.peak)
    return estimate


def _micro_batch(recipe: Recipe) -> int:
    micro = recipe.training.micro_batch_size
    batch = recipe.training.batch_size
    return min(micro, batch) if isinstance(micro, int) else batch


def estimate_memory(
    recipe: Recipe,
    gpu_memory: float | None = None,
    device: str | None = None,
    prompt_tokens: int | None = None,
    data: Any = None,
) -> MemoryEstimate:
    """Predict the peak memory of training ``recipe``, without reading the backbone's weights.

    Parameters
    ----------
    recipe : Recipe
        A recipe of an LLM adapter (GPT4TS, Time-LLM, ST-LLM) with its backbone in mode
        ``pretrained`` or ``random_init``; its data are loaded for their shape (and
        Time-LLM's prompts), the backbone's ``config.json`` is read, nothing else.
    gpu_memory : float, optional
        Bytes the step must fit in (:func:`parse_memory` reads ``"24GB"``); with it the
        estimate gets a verdict and, when it does not fit, :attr:`MemoryEstimate.alternatives`.
    device : {"cuda", "cpu"}, optional
        Where the step runs (attention kernels, dropout masks and the CUDA overhead
        differ); default the recipe's ``training.device``, ``auto`` meaning a CUDA GPU.
    prompt_tokens : int, optional
        Time-LLM's prompt length in tokens; default: the longest prompt of a sample of
        training windows, tokenized with the backbone's tokenizer (which a directory with
        only ``config.json`` lacks: then give it).
    data : STData, optional
        The data, instead of loading ``recipe.data.spec``.

    Returns
    -------
    MemoryEstimate

    Raises
    ------
    ConfigError
        A method that is not an LLM adapter, an ablation mode, an unknown backbone family,
        a missing tokenizer without ``prompt_tokens``, a negative ``prompt_tokens``.
    ModelLoadError
        A backbone whose config cannot be read.
    """
    if prompt_tokens is not None and prompt_tokens < 0:
        raise ConfigError(
            f"prompt_tokens={prompt_tokens} is negative", "give the prompt length, e.g. 120"
        )
    device = _target_device(recipe, device)
    _backbone_spec(recipe)  # refuse other methods before loading their data
    task = build_task(recipe.data, data)
    info = DataInfo.from_data(task.data, task.history, task.horizon)
    built = _build(recipe, info, task, device, prompt_tokens)
    micro = _micro_batch(recipe)
    estimate = _assemble(built, device, micro, built.spec.gradient_checkpointing)
    if gpu_memory is not None:
        estimate.gpu_memory = int(gpu_memory)
        if not estimate.fits:
            estimate.alternatives = _alternatives(
                built, info, task, device, micro, estimate.gpu_memory
            )
    return estimate


def _largest(fits: Callable[[int], bool], high: int) -> int:
    """The largest ``n`` in ``1..high`` with ``fits(n)`` (which turns false as ``n`` grows),
    or 1 if there is none."""
    low, best = 1, 1
    while low <= high:
        middle = (low + high) // 2
        if fits(middle):
            best, low = middle, middle + 1
        else:
            high = middle - 1
    return best


def _smaller(
    built: _Built, change: tuple[str, ...], on: bool, device: str, micro: int, memory: int
) -> list[Alternative]:
    """The largest micro-batch and the most blocks that fit in the setting ``built`` with
    checkpointing ``on`` (reached from the recipe by ``change``); the smallest of either
    (1) where none fits."""
    found = []
    if micro > 1:
        size = _largest(lambda m: _assemble(built, device, m, on).peak <= memory, micro - 1)
        peak = _assemble(built, device, size, on).peak
        found.append(Alternative((*change, f"training.micro_batch_size={size}"), peak,
                                 peak <= memory))  # fmt: skip
    blocks = built.model.body.num_layers
    if blocks > 1:
        depth = _largest(
            lambda k: _assemble(built, device, micro, on, k).peak <= memory, blocks - 1
        )
        peak = _assemble(built, device, micro, on, depth).peak
        found.append(Alternative((*change, f"model.backbone.num_layers={depth}"), peak,
                                 peak <= memory))  # fmt: skip
    return found


def _alternatives(
    built: _Built, info: DataInfo, task: ForecastTask, device: str, micro: int, memory: int
) -> list[Alternative]:
    """Changes of the recipe with their predicted peaks: gradient checkpointing, 4-bit
    weights and both; then the largest micro-batch and the most blocks that fit, in the
    recipe's setting or, where neither does, in the setting of least memory."""
    spec = built.spec
    checkpoint = ("model.backbone.gradient_checkpointing=true",)
    settings: list[tuple[tuple[str, ...], _Built, bool]] = []
    if not spec.gradient_checkpointing:
        settings.append((checkpoint, built, True))
    four_bit = {"frozen": QFROZEN, "lora": "qlora"}.get(spec.freeze)
    if four_bit is not None:
        change = (f"model.backbone.freeze={four_bit}",)
        recipe = recipe_from_dict(built.recipe.to_dict(), list(change))
        quantized = _build(recipe, info, task, device, built.prompt)
        settings.append((change, quantized, spec.gradient_checkpointing))
        if not spec.gradient_checkpointing:
            settings.append((change + checkpoint, quantized, True))
    found = []
    for change, setting, on in settings:
        peak = _assemble(setting, device, micro, on).peak
        found.append(Alternative(change, peak, peak <= memory))
    smaller = _smaller(built, (), spec.gradient_checkpointing, device, micro, memory)
    if settings and not any(a.fits for a in smaller):
        change, setting, on = min(settings, key=lambda s: _assemble(s[1], device, micro, s[2]).peak)
        smaller += _smaller(setting, change, on, device, micro, memory)
    return found + smaller


def run_estimate(
    recipe_path: str | Path,
    overrides: Sequence[str] = (),
    gpu_memory: str | None = None,
    device: str | None = None,
    prompt_tokens: int | None = None,
) -> str:
    """What ``llm-st estimate --recipe FILE [--set k=v] [--gpu-memory 24GB]`` prints.

    Parameters
    ----------
    recipe_path, overrides
        The recipe and its ``section.key=value`` overrides (:func:`~llm_st.config.load_recipe`).
    gpu_memory : str, optional
        E.g. ``"24GB"`` (:func:`parse_memory`).
    device, prompt_tokens
        See :func:`estimate_memory`.

    Returns
    -------
    str
        :meth:`MemoryEstimate.format`.
    """
    memory = None if gpu_memory is None else parse_memory(gpu_memory)
    recipe = load_recipe(recipe_path, list(overrides))
    return estimate_memory(recipe, memory, device, prompt_tokens).format()
