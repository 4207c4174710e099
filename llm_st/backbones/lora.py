"""LoRA and QLoRA on a Hugging Face model: settings, injection, 4-bit loading, adapter files.

LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022) keeps a
linear layer ``W`` (``[out, in]``) frozen and trains a low-rank update beside it::

    y = W x + (alpha / r) * B (A x),   A [r, in], B [out, r], B = 0 at the start

so a freshly adapted model computes exactly what the base model does, and training touches
``r * (in + out)`` numbers per adapted layer. QLoRA (Dettmers et al., "QLoRA: Efficient
Finetuning of Quantized LLMs", NeurIPS 2023) stores the frozen ``W`` in 4-bit NormalFloat
(nf4) with double quantization (the block scales are quantized too) and computes in
``bfloat16``; the LoRA weights stay in full precision.

Here the work is done by peft (the LoRA layers) and bitsandbytes (the 4-bit and 8-bit
layers; it runs on the CPU as well as on CUDA). This module chooses what the two need:

- :class:`LoraSettings`: rank, scale, dropout, target layers, quantization, compute dtype;
- :func:`lora_targets`: the linear layers of the Transformer blocks that get LoRA. ``"auto"``
  picks the family's ``lora_targets`` (:data:`~llm_st.backbones.families.FAMILIES`);
  embeddings, a pooler or a head never do;
- :func:`apply_lora`: LoRA into a Hugging Face model (a quantized one is first prepared
  with ``peft.prepare_model_for_kbit_training``). GPT-2 keeps its weights in ``Conv1D``
  layers that store ``W`` transposed (``[in, out]``), so peft needs ``fan_in_fan_out=True``
  for them; after 4-bit loading they are ``Linear4bit`` layers in the ordinary layout and
  need ``False``. The flag is set from the layers actually targeted;
- :func:`quantization_config` and :func:`quantized_device_map`: how a quantized backbone
  is loaded;
- :func:`save_lora`, :func:`load_lora`: write and read the adapter weights alone
  (safetensors, never pickle) of a peft wrapper, or of the one inside a module (an adapter
  holding a LoRA backbone).

This module works on Hugging Face models and peft wrappers only; it knows nothing of
:class:`~llm_st.backbones.frozen.FrozenBackbone`, which uses it for the freezing policies
``"lora"`` and ``"qlora"`` (and merges LoRA into its model:
:func:`llm_st.backbones.frozen.merge_lora`), and for ``"qfrozen"``: the frozen backbone
loaded quantized like QLoRA's, without LoRA; its ``lora`` block may give ``quantize`` and
``compute_dtype`` only (:data:`QUANTIZATION_FIELDS`). A recipe says::

    model:
      name: gpt4ts
      backbone: {source: tiny-llama, freeze: qlora, lora: {r: 16, alpha: 32}}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_st.backbones.families import family
from llm_st.backbones.hub import _DTYPES
from llm_st.errors import ConfigError, ModelLoadError

logger = logging.getLogger("llm_st")

LORA_POLICIES = ("lora", "qlora")
"""Freezing policies that put LoRA into the backbone (``"qlora"``: on quantized weights)."""
QFROZEN = "qfrozen"
"""Freezing policy of a fully frozen backbone loaded quantized (QLoRA's loading, no LoRA)."""
SETTINGS_POLICIES = (*LORA_POLICIES, QFROZEN)
"""Policies that have :class:`LoraSettings` (the others have none)."""
QUANTIZATION_FIELDS = ("quantize", "compute_dtype")
"""The settings that apply to ``"qfrozen"`` (the rest configure LoRA layers it has none of)."""
QUANTIZE = ("none", "4bit", "8bit")
COMPUTE_DTYPES = ("auto", *_DTYPES)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
"""File name peft writes the adapter weights to with ``safe_serialization=True``."""


@dataclass
class LoraSettings:
    """What LoRA adapts, how, and on which precision of the frozen weights.

    The freezing policy ``"qfrozen"`` (no LoRA) reads ``quantize`` and ``compute_dtype`` only.

    Raises
    ------
    ConfigError
        A value out of range or of the wrong type, an unknown choice, or a
        ``compute_dtype`` given for a backbone that is not 4-bit.
    """

    r: int = field(default=8, metadata={"help": "rank of the update B A (at least 1)"})
    alpha: float = field(
        default=16.0, metadata={"help": "scale numerator: the update is multiplied by alpha / r"}
    )
    dropout: float = field(
        default=0.05, metadata={"help": "dropout on the input of the LoRA branch, in [0, 1)"}
    )
    target_modules: str | tuple[str, ...] = field(
        default="auto",
        metadata={
            "help": "linear layers of the blocks to adapt: 'auto' (per family: GPT-2 c_attn, "
            "c_proj; LLaMA q/k/v/o/gate/up/down_proj; BERT query, key, value, dense), "
            "'all-linear', or layer names (a list or 'a,b'; a name matches a layer whose "
            "dotted path ends with it, e.g. attn.c_proj)"
        },
    )
    quantize: str = field(
        default="none",
        metadata={
            "help": "precision of the frozen weights: none, 4bit (nf4 with double "
            "quantization, QLoRA) or 8bit (LLM.int8); the freezing policies qlora and qfrozen "
            "default to 4bit"
        },
    )
    compute_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype the 4-bit layers compute in: auto (bfloat16 on a CUDA GPU that "
            "supports it, else float16 on CUDA, float32 on the CPU), float32, bfloat16, float16"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"lora.r={self.r!r} is not a positive integer", "use e.g. r: 8")
        for name in ("alpha", "dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"lora.{name}={value!r} is not a number", f"give {name} a number")
            setattr(self, name, float(value))
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha={self.alpha} must be positive", "use e.g. alpha: 16")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout} is outside [0, 1)", "use e.g. 0.05")
        self.target_modules = _target_names(self.target_modules)
        if self.quantize not in QUANTIZE:
            raise ConfigError(
                f"unknown lora.quantize={self.quantize!r}", f"use one of {', '.join(QUANTIZE)}"
            )
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(
                f"unknown lora.compute_dtype={self.compute_dtype!r}",
                f"use one of {', '.join(COMPUTE_DTYPES)}",
            )
        if self.compute_dtype != "auto" and self.quantize != "4bit":
            raise ConfigError(
                f"lora.compute_dtype={self.compute_dtype!r} applies to 4-bit weights, but "
                f"quantize={self.quantize!r}",
                "drop compute_dtype (set the backbone's dtype instead), or use quantize: 4bit",
            )


def _target_names(value: Any) -> str | tuple[str, ...]:
    """``"auto"``, ``"all-linear"`` or a non-empty tuple of layer names."""
    if value in ("auto", "all-linear"):
        return value
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        names = tuple(v.strip() for v in value if v.strip())
        if names:
            return names
    raise ConfigError(
        f"lora.target_modules={value!r} is not 'auto', 'all-linear' or a list of layer names",
        "use e.g. target_modules: [q_proj, v_proj]",
    )


def lora_settings(
    policy: str, params: LoraSettings | Mapping[str, Any] | None = None
) -> LoraSettings | None:
    """The :class:`LoraSettings` of freezing policy ``policy`` from a recipe's ``lora`` mapping.

    ``"qlora"`` and ``"qfrozen"`` default to ``quantize="4bit"``, ``"lora"`` to ``"none"``;
    a policy not in :data:`SETTINGS_POLICIES` has no settings (None). ``"qfrozen"`` has no
    LoRA layers: it takes :data:`QUANTIZATION_FIELDS` only (a :class:`LoraSettings` given
    for it must leave the other fields at their defaults).

    Raises
    ------
    ConfigError
        Settings for a policy without them, LoRA settings for ``"qfrozen"``, an unknown
        key, a bad value, or a quantization that contradicts the policy (``lora`` on
        quantized weights, ``qlora`` or ``qfrozen`` on full-precision ones).
    """
    if policy not in SETTINGS_POLICIES:
        if params is None:
            return None
        raise ConfigError(
            f"LoRA settings are given, but freezing policy {policy!r} does not use LoRA",
            f"drop the lora settings, or use freeze: {' or '.join(LORA_POLICIES)}",
        )
    if isinstance(params, LoraSettings):
        settings = params
        given = [f.name for f in fields(LoraSettings) if getattr(settings, f.name) != f.default]
    else:
        params = dict(params or {})
        given = list(params)
        known = [f.name for f in fields(LoraSettings)]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ConfigError(f"unknown lora settings {unknown}", f"use some of {', '.join(known)}")
        params.setdefault("quantize", "none" if policy == "lora" else "4bit")
        settings = LoraSettings(**params)
    if policy == QFROZEN:
        lora_only = sorted(set(given) - set(QUANTIZATION_FIELDS))
        if lora_only:
            raise ConfigError(
                f"freeze='qfrozen' has no LoRA layers, but lora settings {lora_only} are given",
                "give only quantize and compute_dtype with qfrozen, or use freeze: qlora",
            )
    if (policy == "lora") == (settings.quantize != "none"):
        raise ConfigError(
            f"freeze={policy!r} with lora.quantize={settings.quantize!r}",
            "use freeze: qlora or qfrozen for quantized weights (quantize 4bit or 8bit) and "
            "freeze: lora for full-precision ones",
        )
    return settings


def resolve_compute_dtype(settings: LoraSettings) -> torch.dtype:
    """The dtype 4-bit layers compute in (see ``LoraSettings.compute_dtype``)."""
    if settings.compute_dtype != "auto":
        return _DTYPES[settings.compute_dtype]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(settings: LoraSettings) -> Any:
    """The ``transformers.BitsAndBytesConfig`` that loads the frozen weights quantized.

    4-bit: NormalFloat (``nf4``) with double quantization and an explicit compute dtype
    (transformers' defaults are fp4 without double quantization). 8-bit: LLM.int8.

    Under FSDP (:func:`under_fsdp`: ``accelerate launch`` with an FSDP config) the packed
    4-bit weights are stored in the compute dtype (``bnb_4bit_quant_storage``) instead of
    uint8: FSDP flattens each wrapped block's parameters into one tensor of one dtype, so
    the quantized weights must share the dtype of the block's other (LoRA, norm) weights.

    Raises
    ------
    ConfigError
        ``settings.quantize == "none"``.
    """
    from transformers import BitsAndBytesConfig

    # on a CPU with AVX512-BF16, bitsandbytes' import tries to fetch an inference kernel from
    # the hub and warns when it cannot; llm-st keeps 4-bit layers on their differentiable
    # path anyway (keep_4bit_layers_differentiable), so the warning only alarms users
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if settings.quantize == "4bit":
        compute = resolve_compute_dtype(settings)
        storage = {"bnb_4bit_quant_storage": compute} if under_fsdp() else {}
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            **storage,
        )
    if settings.quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ConfigError(
        "quantization_config() was asked for settings with quantize='none'",
        "use quantize: 4bit or 8bit",
    )


def under_fsdp() -> bool:
    """Whether this process was started by ``accelerate launch`` with an FSDP config (which
    sets ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def quantized_device_map(device: str | torch.device | None = None) -> dict[str, Any]:
    """``device_map`` of a quantized backbone: ``{"": device}``, the whole model on one device.

    bitsandbytes quantizes while the weights are loaded, on the device that keeps them, so
    a quantized model is placed at load time instead of moved afterwards. Default: on
    CUDA the GPU of this process, ``LOCAL_RANK`` under ``torchrun`` / ``accelerate launch``
    (Accelerate's ``local_process_index``): every data-parallel process holds its own
    quantized copy, the usual QLoRA DDP set-up. Without CUDA, the CPU.
    """
    if device is not None:
        return {"": torch.device(device)}
    if torch.cuda.is_available():
        index = os.environ.get("LOCAL_RANK")
        return {"": int(index) if index is not None else torch.cuda.current_device()}
    return {"": "cpu"}


def lora_targets(model: nn.Module, settings: LoraSettings) -> dict[str, nn.Module]:
    """The layers LoRA adapts: ``{dotted path in model: layer}``.

    Only linear layers (``nn.Linear`` and its quantized subclasses, GPT-2's ``Conv1D``)
    inside the family's Transformer blocks are candidates (of the body of a model with a
    head, e.g. a causal LM: never the head).

    Raises
    ------
    ConfigError
        A model of no known family, or a name that matches no layer.
    """
    from transformers.pytorch_utils import Conv1D

    model_type = model.config.model_type
    layout = family(model_type, type(model).__name__)
    names = layout.lora_targets if settings.target_modules == "auto" else settings.target_modules
    # a model with a head (GPT2LMHeadModel) keeps the blocks in its body (``transformer.h``)
    body = getattr(model, "base_model", model)
    prefix = next(name for name, m in model.named_modules() if m is body)
    root = f"{prefix}.{layout.blocks}" if prefix else layout.blocks
    linear = {
        f"{root}.{name}": module
        for name, module in model.get_submodule(root).named_modules()
        if isinstance(module, (nn.Linear, Conv1D))
    }
    if names == "all-linear":
        return linear

    def matches(path: str, name: str) -> bool:  # peft's rule for a target name
        return path == name or path.endswith("." + name)

    unmatched = [n for n in names if not any(matches(path, n) for path in linear)]
    if unmatched:
        available = sorted({path.rsplit(".", 1)[-1] for path in linear})
        raise ConfigError(
            f"lora.target_modules {unmatched} match no linear layer in the blocks of this "
            f"{model_type} model",
            f"use some of {', '.join(available)}, or 'all-linear'",
        )
    return {path: m for path, m in linear.items() if any(matches(path, n) for n in names)}


@contextlib.contextmanager
def v6_deprecations_quiet() -> Iterator[None]:
    """Hide transformers 5's FutureWarning on its gradient-checkpointing names (``..._enable``
    is to become ``activation_checkpointing_enable`` in v6), which peft 0.21 and llm-st call:
    the old names are the ones every transformers 4.4x-5.x has."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*deprecated and will be removed in v6", category=FutureWarning
        )
        yield


def apply_lora(model: nn.Module, settings: LoraSettings) -> Any:
    """Put LoRA into the blocks of a Hugging Face model; everything else is frozen.

    The layers of :func:`lora_targets` are replaced in place (``model`` is modified) by
    peft's LoRA layers, whose ``lora_A`` / ``lora_B`` weights are the only trainable
    parameters. A model loaded quantized (``quantization_config``) is first prepared by
    ``peft.prepare_model_for_kbit_training`` (its remaining float weights, such as norms
    and embeddings, are cast to float32 for stable training).

    Parameters
    ----------
    model
        A base model (``GPT2Model``, ``LlamaModel``, ``BertModel``, ...).
    settings
        Rank, scale, dropout and targets (``quantize`` describes how ``model`` was loaded).

    Returns
    -------
    peft.PeftModel
        The wrapper; ``get_base_model()`` is ``model`` with the LoRA layers in it.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers.pytorch_utils import Conv1D

    targets = lora_targets(model, settings)
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(
        model, "is_loaded_in_8bit", False
    )
    if settings.quantize != "none" and not quantized:
        raise ConfigError(
            f"lora.quantize={settings.quantize!r} but the model was loaded in full precision",
            "load it with quantization_config(settings), as load_backbone does for freeze: qlora",
        )
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=sorted(targets),
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in targets.values()),
        bias="none",
    )
    with v6_deprecations_quiet():
        if quantized:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            keep_4bit_layers_differentiable(model)
        peft_model = get_peft_model(model, config)
    logger.debug(
        "LoRA r=%d alpha=%g on %d layers of %s (fan_in_fan_out=%s, quantize=%s)",
        settings.r, settings.alpha, len(targets), model.config.model_type,
        config.fan_in_fan_out, settings.quantize,
    )  # fmt: skip
    return peft_model


def keep_4bit_layers_differentiable(model: nn.Module) -> None:
    """Keep bitsandbytes' 4-bit layers on their differentiable CPU path.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` weight for an
    inference kernel the first time the layer runs in eval mode without gradients, and
    from then on uses that kernel in training too, where it has no backward (torch warns
    "an autograd kernel was not registered"): the gradients reaching every LoRA layer
    before it come out wrong. Training alternates with evaluation, so the repacking is
    switched off (the weights stay in the layout the differentiable path and
    ``state_dict`` use; only CPU inference speed is lost).
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def is_peft_model(module: nn.Module) -> bool:
    """Whether ``module`` is a peft wrapper (what :func:`apply_lora` returns)."""
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


def _single_peft_model(module: nn.Module) -> Any:
    """The one peft wrapper in ``module`` (``module`` itself, or e.g. an adapter's backbone)."""
    found = [m for m in module.modules() if is_peft_model(m)]
    if len(found) != 1:
        raise ConfigError(
            f"{type(module).__name__} holds {len(found)} LoRA backbones, not one",
            "pass a model built with freeze: lora or qlora, or its backbone",
        )
    return found[0]


def save_lora(model: nn.Module, directory: str | Path) -> Path:
    """Write the LoRA weights (and peft's ``adapter_config.json``) of ``model`` to ``directory``.

    ``model`` is a peft wrapper or a module holding one. Only the adapter weights are
    written, as safetensors (:data:`ADAPTER_WEIGHTS`); the frozen weights and the adapter's
    other layers are not (the engine's ``model.safetensors`` holds those).
    """
    directory = Path(directory)
    _single_peft_model(model).save_pretrained(str(directory), safe_serialization=True)
    return directory / ADAPTER_WEIGHTS


def load_lora(model: nn.Module, directory: str | Path) -> None:
    """Load LoRA weights written by :func:`save_lora` into ``model`` (in place).

    ``model`` must carry LoRA layers of the same rank, scale and targets (build it with the
    same settings). Only the safetensors file is read, never a pickle.

    Raises
    ------
    ModelLoadError
        No :data:`ADAPTER_WEIGHTS` in ``directory``, settings that differ from the saved
        ones, or weights that do not cover every LoRA layer of ``model``.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    peft_model = _single_peft_model(model)
    directory = Path(directory)
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ModelLoadError(
            f"no {ADAPTER_WEIGHTS} in {directory}", "pass a directory written by save_lora"
        )
    saved = json.loads((directory / "adapter_config.json").read_text())
    current = peft_model.peft_config["default"]
    for key, now in (("r", current.r), ("lora_alpha", current.lora_alpha),
                     ("target_modules", sorted(current.target_modules))):  # fmt: skip
        then = sorted(saved[key]) if key == "target_modules" else saved[key]
        if then != now:
            raise ModelLoadError(
                f"the adapter in {directory} has {key}={then!r}, the model {now!r}",
                "build the model with the LoRA settings the adapter was trained with",
            )
    device = next(p.device for n, p in peft_model.named_parameters() if "lora_" in n)
    result = set_peft_model_state_dict(peft_model, load_file(str(weights), device=str(device)))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ModelLoadError(
            f"the adapter in {directory} does not fit the model (unexpected "
            f"{result.unexpected_keys[:3]}, missing {missing[:3]})",
            "load it into a model built with the same backbone and LoRA settings",
        )


def is_lora_parameter(name: str) -> bool:
    """Whether a parameter name (as in ``named_parameters()``) is a LoRA weight (peft's
    ``lora_`` prefix, e.g. ``...q_proj.lora_A.default.weight``)."""
    return any(part.startswith("lora_") for part in name.split("."))


def weight_memory(module: nn.Module) -> dict[str, int]:
    """Bytes and logical size of a module's weights, quantized or not.

    Returns
    -------
    dict
        ``bytes``: parameters + buffers + quantization state (the 4-bit scales and code
        tables, the 8-bit row scales), each tensor once; ``parameters``: the number of
        weights they stand for (a 4-bit weight counts its unpacked elements, where
        ``numel()`` counts the packed bytes).
    """
    seen: set[int] = set()
    total = 0

    def add(tensor: torch.Tensor) -> None:
        nonlocal total
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()

    count = 0
    for param in module.parameters():
        add(param)
        state = getattr(param, "quant_state", None)  # bitsandbytes Params4bit
        if state is not None:
            count += state.shape.numel()
            for value in state.as_dict(packed=False).values():
                if torch.is_tensor(value):
                    add(value)
        else:
            count += param.numel()
        if getattr(param, "SCB", None) is not None:  # bitsandbytes Int8Params
            add(param.SCB)
    for buffer in module.buffers():
        add(buffer)
    return {"bytes": total, "parameters": count}
