"""Pretrained backbones for the transfer adapters: load, keep the first k blocks, freeze, call.

:func:`load_backbone` loads the *base* model (no language-model or pooling head is
needed: adapters read hidden states) of a tiny test name (``tiny-gpt2``, ``tiny-llama``,
``tiny-bert``), a local directory or a hub id, with the same resolution and offline
errors as :func:`llm_st.backbones.hub.load_causal_lm`. It returns a
:class:`FrozenBackbone`, a plain ``nn.Module`` wrapping the Hugging Face model (not a
``PreTrainedModel`` subclass, whose ``post_init`` would re-initialize modules added to
it), with one call for every family::

    hidden = backbone(inputs_embeds [B, S, D], attention_mask [B, S] | None) -> [B, S, D]

Layer truncation happens at load time: the config is loaded with
``num_hidden_layers = k`` so only the first ``k`` blocks are built and filled (the
weights of the others are never materialized, which matters for a 7B model of which
Time-LLM keeps 8 or 32 blocks). The result equals the full model's hidden state after
block ``k`` followed by the final norm.

Freezing policies (:data:`FREEZE_POLICIES`), applied by :meth:`FrozenBackbone.freeze`:

- ``"frozen"``: nothing trains (Time-LLM).
- ``"full"``: everything trains (full fine-tuning, e.g. of a causal LM on text answers).
- ``"layernorm"``: every normalization layer (LayerNorm, LLaMA's RMSNorm) and the learned
  absolute position embeddings train (GPT4TS: One Fits All, Zhou et al., NeurIPS 2023,
  which trains ``ln_*`` and ``wpe`` of GPT-2).
- ``"attention"``: ``"layernorm"`` plus the whole self-attention of the last ``U`` blocks
  (ST-LLM's partially frozen attention, Liu et al., 2024; its reference code also leaves
  GPT-2's ``wpe`` and ``ln_f`` trainable). Feed-forward layers and word embeddings stay
  frozen.
- ``"lora"``: LoRA in the linear layers of the blocks; only its ``lora_A`` / ``lora_B``
  weights train, every pretrained weight stays as it is (:mod:`llm_st.backbones.lora`).
- ``"qlora"``: ``"lora"`` on weights loaded in 4-bit nf4 with double quantization (or
  8-bit); see :func:`llm_st.backbones.lora.quantized_device_map` for device placement.
- ``"qfrozen"``: ``"frozen"`` on weights loaded as ``"qlora"`` loads them, without LoRA:
  nothing in the backbone trains, gradients flow through it to the layers before it
  (Time-LLM's reprogramming, a patch embedding). Its norms and embeddings are kept in the
  compute dtype (bfloat16 on a GPU, float32 on the CPU) unless ``dtype`` says otherwise,
  so the hidden states are in that dtype from end to end; ``"qlora"`` casts them to
  float32 for training (``peft.prepare_model_for_kbit_training``), as QLoRA does.

The LoRA policies and ``"qfrozen"`` are chosen at load time (they change the model's
layers; the ``lora`` argument of :func:`load_backbone` holds their settings); the others
can be switched at any time with :meth:`FrozenBackbone.freeze`. :func:`merge_lora` folds the
trained LoRA weights back into the model. Where each family keeps the parts the policies
name is the table :data:`~llm_st.backbones.families.FAMILIES`.

Positions: GPT-2 and BERT add their learned position embeddings to ``inputs_embeds``
(``GPT2Model(inputs_embeds=...)`` still adds ``wpe``; BERT also adds its token-type
embedding and a LayerNorm); LLaMA-family models rotate by position inside attention.
With an ``attention_mask`` the position of a token is the number of unmasked tokens
before it, so left padding does not shift the positions of the real tokens. Causal
families (GPT-2, LLaMA) attend to the past only; BERT attends both ways.

Precision: the backbone may be loaded in ``float16`` / ``bfloat16`` (``dtype``); inputs
are cast to its dtype and hidden states cast back to the input's dtype, so the trained
layers around it can stay ``float32`` (an adapter that passes inputs in the backbone's
dtype gets hidden states in it, without float32 copies). Under ``"qlora"`` the weights
that are not quantized (norms, embeddings) are float32 for training and the 4-bit layers
compute in the settings' ``compute_dtype``.

Gradient checkpointing (``gradient_checkpointing=True``, any policy): each block keeps
only its input for the backward pass and recomputes the rest there (the Hugging Face
model's own checkpointing, non-reentrant, so gradients reach the layers before a fully
frozen backbone too). It works while the model is in training mode with gradients on,
replays each block's dropout masks exactly, and gives the same gradients.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_st.backbones.families import family
from llm_st.backbones.hub import _dtype, _hub_error, _offline, resolve_source
from llm_st.backbones.lora import (
    LORA_POLICIES,
    QFROZEN,
    LoraSettings,
    apply_lora,
    is_lora_parameter,
    is_peft_model,
    keep_4bit_layers_differentiable,
    lora_settings,
    quantization_config,
    quantized_device_map,
    resolve_compute_dtype,
    v6_deprecations_quiet,
)
from llm_st.errors import ConfigError, DataError, ModelLoadError

logger = logging.getLogger("llm_st")

FREEZE_POLICIES = ("frozen", "full", "layernorm", "attention", "lora", "qlora", QFROZEN)
RANDOM_SEED_BASE = 104_729
"""Random weights (``pretrained=False``) are drawn after ``torch.manual_seed(RANDOM_SEED_BASE
+ seed)``: a stream apart from small plain seeds, so that a checkpoint written with
``torch.manual_seed(0); Model(config)`` (the tiny test models) is not reproduced by the
``random_init`` ablation with its default seed."""


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def _check_policy(policy: str) -> None:
    if policy not in FREEZE_POLICIES:
        raise ConfigError(
            f"unknown freezing policy {policy!r}", f"use one of {', '.join(FREEZE_POLICIES)}"
        )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' load report: the unexpected keys of a truncated or head-less
    load are expected here, and missing keys are checked (and raised) by the caller."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def read_config(name_or_path: str | Path, trust_remote_code: bool = False) -> Any:
    """The Hugging Face config of any model, resolved by
    :func:`~llm_st.backbones.hub.resolve_source` (no weights are read).

    Raises
    ------
    ModelLoadError
        Missing directory, directory without a readable ``config.json``, or a hub id that
        cannot be fetched (offline: the message says how to download it).
    """
    from transformers import AutoConfig

    source, local = resolve_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(
            source, trust_remote_code=trust_remote_code, local_files_only=local or _offline()
        )
    except (OSError, ValueError) as exc:
        if local:
            raise ModelLoadError(
                f"cannot read the config in {source}: {' '.join(str(exc).split())[:200]}",
                "pass a Hugging Face model directory (config.json and weights)",
            ) from exc
        raise _hub_error(source, exc) from exc


def backbone_config(name_or_path: str | Path, trust_remote_code: bool = False) -> Any:
    """The Hugging Face config of a language backbone (no weights are read).

    Raises
    ------
    ModelLoadError
        See :func:`read_config`.
    ConfigError
        A model family llm-st does not know how to freeze (see
        :data:`~llm_st.backbones.families.FAMILIES`).
    """
    config = read_config(name_or_path, trust_remote_code)
    family(config.model_type, f"backbone {str(name_or_path)!r}")
    return config


def load_backbone(
    name_or_path: str | Path,
    num_layers: int | None = None,
    freeze: str = "frozen",
    trainable_attention_blocks: int = 1,
    pretrained: bool = True,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
    lora: LoraSettings | Mapping[str, Any] | None = None,
    gradient_checkpointing: bool = False,
) -> FrozenBackbone:
    """Load a backbone, keep its first ``num_layers`` blocks and apply a freezing policy.

    Parameters
    ----------
    name_or_path
        ``tiny-gpt2`` / ``tiny-llama`` / ``tiny-bert``, a local model directory, or a hub id.
    num_layers
        Blocks to keep (``k``; GPT4TS keeps 6 of GPT-2's 12); None keeps all; 0 keeps the
        embeddings only.
    freeze
        One of :data:`FREEZE_POLICIES`.
    trainable_attention_blocks
        ``U`` of the ``"attention"`` policy: the last ``U`` kept blocks train attention.
    pretrained
        False builds the same architecture (same truncation) from its config with random
        weights drawn with ``seed``: Tan et al.'s randomly initialized LLM.
    dtype
        ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"auto"`` or a ``torch.dtype``
        (under ``"qfrozen"`` None means the 4-bit layers' compute dtype).
    device
        Where to move the model.
    seed
        Seed of the random weights when ``pretrained=False`` (see :data:`RANDOM_SEED_BASE`).
    trust_remote_code
        Run code shipped with a hub repository (off by default).
    lora
        Settings of the ``"lora"`` / ``"qlora"`` policies: a
        :class:`~llm_st.backbones.lora.LoraSettings` or a mapping of its fields (a
        recipe's ``lora: {r: 16}``); None uses the defaults. ``"qfrozen"`` takes
        ``quantize`` and ``compute_dtype`` only.
    gradient_checkpointing
        Recompute each block's activations in the backward pass instead of keeping them
        (see the module docstring).

    Raises
    ------
    ModelLoadError
        See :func:`backbone_config`; also a checkpoint whose weights do not cover the
        kept blocks (they would silently stay random).
    ConfigError
        ``num_layers`` outside ``0..`` the model's blocks, an unknown policy, ``U``
        outside ``1..num_layers``, bad LoRA settings, or LoRA settings for a policy
        without LoRA.
    """
    _check_policy(freeze)
    settings = lora_settings(freeze, lora)
    model, keep, total = load_hf_model(
        name_or_path,
        num_layers,
        freeze,
        settings,
        pretrained=pretrained,
        dtype=dtype,
        device=device,
        seed=seed,
        trust_remote_code=trust_remote_code,
        gradient_checkpointing=gradient_checkpointing,
    )
    backbone = FrozenBackbone(model, name=str(name_or_path), pretrained=pretrained)
    backbone.freeze(freeze, trainable_attention_blocks)
    logger.info(
        "backbone %s: %d of %d blocks, %s weights, policy %r%s, %s parameters (%s trainable)",
        name_or_path,
        keep,
        total,
        "pretrained" if pretrained else "random",
        freeze,
        ", gradient checkpointing" if gradient_checkpointing else "",
        f"{sum(p.numel() for p in backbone.parameters()):,}",
        f"{sum(p.numel() for p in backbone.parameters() if p.requires_grad):,}",
    )
    return backbone


CAUSAL_LM_POLICIES = ("frozen", "full", "lora", "qlora")
"""Policies of a causal LM fine-tuned on text answers (:func:`load_trainable_causal_lm`)."""


def load_trainable_causal_lm(
    name_or_path: str | Path,
    freeze: str = "lora",
    lora: LoraSettings | Mapping[str, Any] | None = None,
    *,
    num_layers: int | None = None,
    pretrained: bool = True,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
) -> tuple[Any, Any]:
    """``(model, tokenizer)``: a causal LM with its head, ready to be fine-tuned.

    Loaded as :func:`load_backbone` loads a base model (the same resolution of tiny names,
    directories and hub ids, truncation, precision, 4-bit loading and checkpointing), with
    one of :data:`CAUSAL_LM_POLICIES`: ``"full"`` trains every weight, ``"lora"`` /
    ``"qlora"`` only the LoRA weights in the blocks (a peft wrapper is returned), ``"frozen"``
    nothing. The model is in training mode; the tokenizer has a pad token.
    """
    from llm_st.backbones.hub import load_tokenizer

    if freeze not in CAUSAL_LM_POLICIES:
        raise ConfigError(
            f"freeze={freeze!r} is not a policy for fine-tuning a causal LM",
            f"use one of {', '.join(CAUSAL_LM_POLICIES)}",
        )
    settings = lora_settings(freeze, lora)
    model, keep, total = load_hf_model(
        name_or_path,
        num_layers,
        freeze,
        settings,
        pretrained=pretrained,
        dtype=dtype,
        device=device,
        seed=seed,
        trust_remote_code=trust_remote_code,
        gradient_checkpointing=gradient_checkpointing,
        causal_lm=True,
    )
    if freeze in ("frozen", "full"):
        model.requires_grad_(freeze == "full")
    model.train()
    tokenizer = load_tokenizer(name_or_path, trust_remote_code)
    logger.info(
        "causal LM %s: %d of %d blocks, policy %r, %s parameters (%s trainable)",
        name_or_path,
        keep,
        total,
        freeze,
        f"{sum(p.numel() for p in model.parameters()):,}",
        f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}",
    )
    return model, tokenizer


def load_hf_model(
    name_or_path: str | Path,
    num_layers: int | None,
    freeze: str,
    settings: LoraSettings | None,
    *,
    pretrained: bool = True,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    causal_lm: bool = False,
) -> tuple[nn.Module, int, int]:
    """``(model, kept blocks, blocks)``: the Hugging Face model as :func:`load_backbone` and
    :func:`load_trainable_causal_lm` load it (truncated, in ``dtype``, quantized and with
    LoRA as ``settings`` say, checkpointed), before any freezing policy is applied.

    ``causal_lm``: load the model with its language-model head (``AutoModelForCausalLM``)
    instead of the base model (``AutoModel``).
    """
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if causal_lm else AutoModel
    config = backbone_config(name_or_path, trust_remote_code)
    total = int(config.num_hidden_layers)
    keep = total if num_layers is None else int(num_layers)
    if not 0 <= keep <= total:
        raise ConfigError(
            f"num_layers={num_layers} but {name_or_path} has {total} blocks",
            f"keep between 0 and {total} blocks (None keeps all)",
        )
    config.num_hidden_layers = keep
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    torch_dtype = _dtype(dtype)
    if freeze == QFROZEN and torch_dtype is None:
        torch_dtype = resolve_compute_dtype(settings)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    quantized = settings is not None and settings.quantize != "none"
    if quantized:
        # bitsandbytes quantizes while loading, on the device that keeps the weights
        kwargs["quantization_config"] = quantization_config(settings)
        kwargs["device_map"] = quantized_device_map(device)
    if pretrained:
        source, local = resolve_source(name_or_path)
        model = _from_pretrained(name_or_path, source, config, local or _offline(), kwargs, auto)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED_BASE + seed)
            model = auto.from_config(config, trust_remote_code=trust_remote_code, dtype=torch_dtype)
        if quantized:  # weights are quantized on loading only: load the random ones back
            with tempfile.TemporaryDirectory(prefix="llm-st-random-") as tmp:
                model.save_pretrained(tmp)
                model = _from_pretrained(name_or_path, tmp, config, True, kwargs, auto)
    if quantized:
        _copy_out_of_the_checkpoint(model)
    if device is not None and not quantized:
        model = model.to(device)
    if freeze == QFROZEN:  # (apply_lora does this for qlora)
        keep_4bit_layers_differentiable(model)
    if gradient_checkpointing:
        _checkpoint_blocks(model)
    if freeze in LORA_POLICIES:
        model = apply_lora(model, settings)
    return model, keep, total


def _copy_out_of_the_checkpoint(model: nn.Module) -> None:
    """Give the float weights left on the CPU by a quantized load storage of their own.

    transformers maps the checkpoint file and its unquantized tensors (embeddings, norms)
    stay views of that mapping: the whole mapping stays alive, with every page read while
    the other weights were quantized (a 7B checkpoint's gigabytes, in the process's resident
    memory) and, for the temporary file of random weights, the deleted file's disk space.
    Copying them (a small part of the model) lets it go.
    """
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.device.type == "cpu" and tensor.is_floating_point():
            tensor.data = tensor.data.clone()


def _checkpoint_blocks(model: nn.Module) -> None:
    """Turn on the Hugging Face model's gradient checkpointing of its blocks, non-reentrant.

    ``gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)`` is the one call
    every transformers from 4.35 to 5.x has (5.x names it ``activation_checkpointing_enable``
    and warns on the old name). Non-reentrant checkpointing also back-propagates into
    inputs when no weight of a block requires a gradient (a frozen backbone), and keeps the
    random state, so dropout draws the same masks when a block is recomputed.
    """
    with v6_deprecations_quiet():
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _from_pretrained(
    name_or_path: str | Path,
    source: str,
    config: Any,
    local: bool,
    kwargs: dict[str, Any],
    auto: Any = None,
) -> nn.Module:
    """``auto.from_pretrained(source, config=config, **kwargs)`` (default ``AutoModel``) with
    llm-st's errors; raises :class:`ModelLoadError` if the checkpoint does not cover the kept
    blocks."""
    if auto is None:
        from transformers import AutoModel as auto

    try:
        with _quiet_transformers():
            model, info = auto.from_pretrained(
                source, config=config, local_files_only=local, output_loading_info=True, **kwargs
            )
    except (OSError, ValueError) as exc:
        if local:
            raise ModelLoadError(
                f"cannot load the weights in {source}: {' '.join(str(exc).split())[:300]}",
                "pass a directory holding the model's weights (safetensors)",
            ) from exc
        raise _hub_error(source, exc) from exc
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ModelLoadError(
            f"{name_or_path} lacks weights for {len(missing)} parameters of the kept "
            f"blocks (e.g. {missing[0]}); they would stay random",
            "pass a complete checkpoint of the model",
        )
    logger.debug(
        "%s: %d checkpoint tensors not used (dropped blocks, heads)",
        name_or_path,
        len(info["unexpected_keys"]),
    )
    return model


class FrozenBackbone(nn.Module):
    """A Hugging Face base model behind one call, with its freezing policy.

    Parameters
    ----------
    model
        A base model (``GPT2Model``, ``LlamaModel``, ``BertModel``, ...) of a family in
        :data:`~llm_st.backbones.families.FAMILIES`.
    name
        Where it came from (for messages).
    pretrained
        Whether the weights are pretrained (False: random, the ``random_init`` ablation).

    Everything is frozen until :meth:`freeze` applies another policy.

    Attributes
    ----------
    model
        The wrapped model; its parameters appear as ``model.<name>``. Under the LoRA
        policies a peft wrapper (``model.base_model.model.<name>``); see :attr:`hf_model`.
    family : Family
    policy : str
        The freezing policy in force.

    Shapes
    ------
    ``forward(inputs_embeds [B, S, D], attention_mask [B, S] | None) -> [B, S, D]``, the
    last hidden state (after the final norm for GPT-2 / LLaMA).
    """

    def __init__(self, model: nn.Module, name: str = "", pretrained: bool = True):
        super().__init__()
        model_type = model.config.model_type
        self.family = family(model_type, type(model).__name__)
        self.model = model
        self.name, self.pretrained = name or model_type, pretrained
        try:
            for block in self.blocks:
                block.get_submodule(self.family.attention)
            if self.family.position_embedding is not None:
                self.hf_model.get_submodule(self.family.position_embedding)
        except AttributeError as exc:
            raise ModelLoadError(
                f"{type(model).__name__} does not have the {model_type} layout llm-st expects "
                f"({exc})",
                "load the plain base model of the family (AutoModel), not a modified class",
            ) from exc
        self.model.eval()
        self.freeze("frozen")

    # ------------------------------------------------------------------ facts
    @property
    def has_lora(self) -> bool:
        """Whether ``model`` is a peft wrapper with LoRA layers (``"lora"`` / ``"qlora"``)."""
        return is_peft_model(self.model)

    @property
    def quantized(self) -> bool:
        """Whether the weights of the blocks' linear layers are 4-bit or 8-bit (bitsandbytes)."""
        model = self.hf_model
        return bool(getattr(model, "is_loaded_in_4bit", False)) or bool(
            getattr(model, "is_loaded_in_8bit", False)
        )

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the blocks recompute their activations in the backward pass."""
        # what transformers' is_gradient_checkpointing reads, without its v6 deprecation
        return any(getattr(m, "gradient_checkpointing", False) for m in self.hf_model.modules())

    @property
    def hf_model(self) -> nn.Module:
        """The Hugging Face model: ``model``, or the one in the peft wrapper (with LoRA in it)."""
        return self.model.get_base_model() if self.has_lora else self.model

    def _hf_path(self) -> str:
        """Dotted path of :attr:`hf_model` in this module (``model`` without LoRA)."""
        return next(name for name, m in self.named_modules() if m is self.hf_model)

    @property
    def blocks(self) -> nn.ModuleList:
        """The kept Transformer blocks (a view into ``model``, not registered twice)."""
        return self.hf_model.get_submodule(self.family.blocks)

    @property
    def hidden_size(self) -> int:
        """Width ``D`` of the hidden states (and of ``inputs_embeds``)."""
        return int(self.hf_model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        """Number of kept blocks."""
        return len(self.blocks)

    @property
    def max_positions(self) -> int | None:
        """Rows of the learned position table (the longest input), None for rotary models."""
        if self.family.position_embedding is None:
            return None
        return int(self.hf_model.get_submodule(self.family.position_embedding).num_embeddings)

    @property
    def dtype(self) -> torch.dtype:
        return self.word_embeddings().weight.dtype

    def word_embeddings(self) -> nn.Embedding:
        """The input word-embedding table, ``weight`` ``[vocab_size, D]`` (frozen)."""
        return self.hf_model.get_input_embeddings()

    # ------------------------------------------------------------------ freezing
    def trainable_names(self, policy: str, trainable_attention_blocks: int = 1) -> set[str]:
        """Names (as in ``named_parameters()``) of the parameters ``policy`` trains."""
        _check_policy(policy)
        if policy == QFROZEN and not self.quantized:
            raise ConfigError(
                f"policy 'qfrozen' keeps quantized weights frozen, but {self.name} was loaded "
                "in full precision",
                "load it with load_backbone(..., freeze='qfrozen'), or use the 'frozen' policy",
            )
        if policy in ("frozen", QFROZEN):
            return set()
        if policy == "full":
            return {name for name, _ in self.named_parameters()}
        if policy in LORA_POLICIES:
            if not self.has_lora:
                raise ConfigError(
                    f"policy {policy!r} trains LoRA layers, which {self.name} was loaded without",
                    f"load it with load_backbone(..., freeze={policy!r})",
                )
            return {name for name, _ in self.named_parameters() if is_lora_parameter(name)}
        root = self._hf_path()
        modules: list[tuple[str, nn.Module]] = [
            (name, m) for name, m in self.named_modules() if _is_norm(m)
        ]
        if self.family.position_embedding is not None:
            path = f"{root}.{self.family.position_embedding}"
            modules.append((path, self.get_submodule(path)))
        if policy == "attention":
            U = trainable_attention_blocks
            if not 1 <= U <= self.num_layers:
                raise ConfigError(
                    f"trainable_attention_blocks={U} but the backbone keeps {self.num_layers} "
                    "blocks",
                    f"use 1..{self.num_layers} (ST-LLM's U), or the 'layernorm' policy",
                )
            first = self.num_layers - U
            for i in range(first, self.num_layers):
                path = f"{root}.{self.family.blocks}.{i}.{self.family.attention}"
                modules.append((path, self.get_submodule(path)))
        return {
            f"{prefix}.{name}"
            for prefix, module in modules
            for name, _ in module.named_parameters()
        }

    def freeze(self, policy: str = "frozen", trainable_attention_blocks: int = 1) -> None:
        """Apply a policy of :data:`FREEZE_POLICIES` (see the module docstring)."""
        keep = self.trainable_names(policy, trainable_attention_blocks)
        for name, param in self.named_parameters():
            param.requires_grad_(name in keep)
        self.policy = policy

    # ------------------------------------------------------------------ call
    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden states ``[B, S, D]`` of ``inputs_embeds`` ``[B, S, D]``.

        ``attention_mask`` ``[B, S]`` (nonzero = real token) hides padding; the positions of
        the real tokens then count only real tokens before them.
        """
        S = inputs_embeds.shape[1]
        limit = self.max_positions
        if limit is not None and S > limit:
            raise DataError(
                f"{S} tokens are more than the {limit} positions {self.name} has embeddings for",
                "use fewer or longer patches, fewer nodes per sequence, or a shorter prompt",
            )
        kwargs: dict[str, Any] = {"inputs_embeds": inputs_embeds.to(self.dtype)}
        if self.family.causal:
            kwargs["use_cache"] = False
        if attention_mask is not None:
            mask = attention_mask.to(device=inputs_embeds.device, dtype=torch.long)
            kwargs["attention_mask"] = mask
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)
        hidden = self.model(**kwargs).last_hidden_state
        return hidden.to(inputs_embeds.dtype)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, blocks={self.num_layers}, hidden_size={self.hidden_size}, "
            f"pretrained={self.pretrained}, policy={self.policy!r}, "
            f"gradient_checkpointing={self.gradient_checkpointing}"
        )


def load_word_embeddings(
    name_or_path: str | Path,
    pretrained: bool = True,
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
) -> torch.Tensor:
    """The word-embedding matrix ``[vocab_size, D]`` of a backbone without its blocks.

    Loads the model with ``num_layers=0`` (only the embeddings are read), for adapters
    whose ablations drop the blocks but keep text prototypes from the vocabulary. The
    arguments are those of :func:`load_backbone`.
    """
    backbone = load_backbone(
        name_or_path,
        num_layers=0,
        pretrained=pretrained,
        dtype=dtype,
        seed=seed,
        trust_remote_code=trust_remote_code,
    )
    return backbone.word_embeddings().weight.detach()


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA updates into the base weights: ``W <- W + (alpha / r) B A``.

    A peft wrapper gives back its merged Hugging Face model. Any other module (an adapter
    such as GPT4TS, or a :class:`FrozenBackbone`) is changed in place: each LoRA backbone
    in it gets the merged model and the ``"frozen"`` policy, and the module is returned.
    The merged model computes what the LoRA model did, without the extra matmuls. Merging
    into 4-bit weights re-quantizes them, which rounds (peft warns).

    Raises
    ------
    ConfigError
        Nothing in ``model`` has LoRA layers.
    """
    if is_peft_model(model):
        return model.merge_and_unload()
    backbones = [m for m in model.modules() if isinstance(m, FrozenBackbone) and m.has_lora]
    if not backbones:
        raise ConfigError(
            f"{type(model).__name__} has no LoRA layers to merge",
            "build it with freeze: lora or qlora",
        )
    for backbone in backbones:
        backbone.model = backbone.model.merge_and_unload()
        backbone.freeze("frozen")
    return model
