"""One description of the pretrained backbone a method builds on: :class:`BackboneSpec`.

Every method built on a pretrained model (the transfer adapters GPT4TS, Time-LLM and
ST-LLM; VisionTS) takes one argument, ``backbone``: a :class:`BackboneSpec`, a mapping of
its fields or a plain string (the ``source`` alone). A recipe writes it as its own block
beside the method's other arguments::

    model:
      name: gpt4ts
      backbone: {source: minilm, num_layers: 2, freeze: lora, lora: {r: 8}}
      params: {patch_len: 16, stride: 8}

Each method has its paper's backbone as a class-level default
(:attr:`llm_st.models.base.STModel.default_backbone`; GPT4TS: GPT-2, 6 blocks,
``freeze: layernorm``); the fields given replace the default's and the others stay
(:meth:`BackboneSpec.from_value`), so a block that omits ``freeze`` keeps the method's
policy. Contradictions (LoRA settings with a policy without LoRA, LoRA in an ablation body
that has no pretrained blocks, ``trainable_attention_blocks`` without the ``attention``
policy) are refused when the spec is made, before anything is loaded.

Memory: ``freeze: qfrozen`` keeps the backbone frozen in 4-bit (``lora: {quantize,
compute_dtype}`` only), ``gradient_checkpointing: true`` recomputes the blocks'
activations in the backward pass (any policy). Together they are what fits the largest
backbones, e.g. Time-LLM on all 32 blocks of LLaMA-7B on a 24 GB GPU::

    backbone: {source: /models/llama-7b, freeze: qfrozen, gradient_checkpointing: true}
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from llm_st.backbones.ablations import BACKBONE_MODES, AttentionBody, NoBody
from llm_st.backbones.frozen import (
    FREEZE_POLICIES,
    FrozenBackbone,
    backbone_config,
    load_backbone,
    load_trainable_causal_lm,
)
from llm_st.backbones.hub import _DTYPES
from llm_st.backbones.lora import (
    LORA_POLICIES,
    QFROZEN,
    QUANTIZATION_FIELDS,
    SETTINGS_POLICIES,
    LoraSettings,
    lora_settings,
)
from llm_st.errors import ConfigError

DTYPES = ("auto", *_DTYPES)
ABLATION_BODIES = ("llm2attn", "none")
"""Modes whose body holds no pretrained blocks (nothing to freeze or put LoRA into)."""


def _integer(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"backbone.{name}={value!r} is not a whole number", f"give {name} e.g. 2")
    if minimum is not None and value < minimum:
        raise ConfigError(
            f"backbone.{name}={value} is less than {minimum}", f"give {name} {minimum} or more"
        )


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown backbone.{name}={value!r}", f"use one of {', '.join(choices)}")


@dataclass
class BackboneSpec:
    """Which pretrained model a method builds on, how much of it, in which mode, what trains.

    Raises
    ------
    ConfigError
        A value of the wrong type or out of range, an unknown choice, or a contradiction
        (see the module docstring).
    """

    source: str = field(
        metadata={
            "help": "the model: a tiny test name (tiny-gpt2, tiny-llama, tiny-bert, "
            "tiny-vit-mae), minilm (the installed all-MiniLM-L6-v2), a local model directory "
            "or a hub id"
        }
    )
    num_layers: int | None = field(
        default=None,
        metadata={
            "help": "Transformer blocks kept, the first k (GPT4TS keeps 6 of GPT-2's 12); "
            "null keeps all, 0 the embeddings only"
        },
    )
    mode: str = field(
        default="pretrained",
        metadata={
            "help": "Tan et al.'s ablations: pretrained, random_init (the same blocks with "
            "random weights), llm2attn (one trainable attention layer instead of the "
            "blocks) or none (no body: embeddings straight to the head)"
        },
    )
    freeze: str = field(
        default="frozen",
        metadata={
            "help": "what of the backbone trains: frozen (nothing), layernorm (norms and "
            "learned position embeddings), attention (layernorm plus the self-attention of "
            "the last trainable_attention_blocks blocks), lora, qlora (LoRA on 4-bit "
            "weights), or qfrozen (nothing, on 4-bit weights: the least memory)"
        },
    )
    trainable_attention_blocks: int | None = field(
        default=None,
        metadata={
            "help": "U of freeze: attention, the last blocks whose attention trains "
            "(null: 1); only with that policy"
        },
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "precision of the backbone's weights: float32, float16, bfloat16, or auto "
            "and null (the checkpoint's own); the method's own layers stay float32"
        },
    )
    seed: int = field(
        default=0, metadata={"help": "seed of the random weights of random_init and llm2attn"}
    )
    lora: LoraSettings | Mapping[str, Any] | None = field(
        default=None,
        metadata={
            "help": "LoRA settings, fields of llm_st.backbones.lora.LoraSettings (r, alpha, "
            "dropout, target_modules, quantize, compute_dtype); only with freeze lora or "
            "qlora, whose defaults fill what is not given (a mapping becomes a "
            "LoraSettings), and with qfrozen, which takes quantize and compute_dtype only"
        },
    )
    attention_dropout: float = field(
        default=0.1, metadata={"help": "dropout on the attention weights of the llm2attn body"}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "run model code shipped with a hub repository (off: transformers' own)"},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "keep only each block's input for the backward pass and recompute the "
            "rest there (any freeze policy; less memory, one more forward pass of the blocks; same "
            "gradients); the llm2attn and none bodies have no blocks and ignore it"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.source, Path):
            self.source = str(self.source)
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError(
                f"backbone.source={self.source!r} names no model",
                "give source a tiny name, minilm, a model directory or a hub id",
            )
        if self.num_layers is not None:
            _integer("num_layers", self.num_layers, minimum=0)
        _choice("mode", self.mode, BACKBONE_MODES)
        _choice("freeze", self.freeze, FREEZE_POLICIES)
        if self.trainable_attention_blocks is not None:
            _integer("trainable_attention_blocks", self.trainable_attention_blocks, minimum=1)
            if self.freeze != "attention":
                raise ConfigError(
                    f"backbone.trainable_attention_blocks={self.trainable_attention_blocks} "
                    f"but freeze={self.freeze!r}",
                    "drop trainable_attention_blocks, or use freeze: attention (whose last "
                    "blocks it counts)",
                )
        if self.dtype is not None:
            _choice("dtype", self.dtype, DTYPES)
        _integer("seed", self.seed, minimum=None)
        dropout = self.attention_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise ConfigError(
                f"backbone.attention_dropout={dropout!r} is not a number", "use e.g. 0.1"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"backbone.attention_dropout={dropout} is outside [0, 1)", "use 0.1")
        self.attention_dropout = float(dropout)
        for name in ("trust_remote_code", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"backbone.{name}={getattr(self, name)!r} is not a boolean",
                    "use true or false",
                )
        if self.mode in ABLATION_BODIES and self.freeze in LORA_POLICIES:
            raise ConfigError(
                f"backbone mode {self.mode!r} has no pretrained blocks for freeze="
                f"{self.freeze!r} to put LoRA into",
                "use LoRA with mode pretrained or random_init, or another freeze policy "
                "(the ablation body trains as a whole)",
            )
        self.lora = lora_settings(self.freeze, self.lora)

    @classmethod
    def from_value(
        cls,
        value: BackboneSpec | Mapping[str, Any] | str | Path,
        default: BackboneSpec | None = None,
    ) -> BackboneSpec:
        """A spec from a spec (returned as it is), a mapping or a string.

        Parameters
        ----------
        value
            A :class:`BackboneSpec`; a mapping of its fields (a recipe's ``backbone:``
            block, or :meth:`to_dict`'s output); or a model name or path (``source``).
        default
            The spec whose fields stand where a mapping or a string gives none (a method's
            default backbone); without it, the fields' defaults (then ``source`` is needed).

        Raises
        ------
        ConfigError
            An unknown key, a value of another kind, no ``source``, or a spec that
            :meth:`__post_init__` refuses.
        """
        if isinstance(value, BackboneSpec):
            return value
        if isinstance(value, (str, Path)):
            value = {"source": str(value)}
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"backbone={value!r} is not a backbone",
                "give a mapping such as {source: tiny-gpt2, num_layers: 2}, a model name or "
                "path, or a BackboneSpec",
            )
        known = [f.name for f in fields(cls)]
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(
                    f"unknown key {key!r} in the backbone", f"{hint}valid keys: {', '.join(known)}"
                )
        if default is not None:
            if value.get("freeze", default.freeze) not in SETTINGS_POLICIES and "lora" not in value:
                # a policy without LoRA or quantization (full, frozen, ...) instead of the
                # default's LoRA one: the default's settings have nothing left to configure
                value = {**value, "lora": None}
            return dataclasses.replace(default, **value)
        if "source" not in value:
            raise ConfigError(
                "the backbone has no source", "name the model: source: tiny-gpt2, minilm, ..."
            )
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML-able) that :meth:`from_value` reads back to an equal spec."""
        plain = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(self.lora, LoraSettings):
            lora = dataclasses.asdict(self.lora)
            if isinstance(lora["target_modules"], tuple):
                lora["target_modules"] = list(lora["target_modules"])
            if self.freeze == QFROZEN:
                lora = {k: lora[k] for k in QUANTIZATION_FIELDS}
            plain["lora"] = lora
        return plain

    def build(self) -> FrozenBackbone | AttentionBody | NoBody:
        """The body this spec describes (:mod:`llm_st.backbones.ablations`).

        ``pretrained`` / ``random_init``: :func:`~llm_st.backbones.frozen.load_backbone`
        with this spec's truncation, policy, precision, LoRA settings and checkpointing
        (random weights drawn with ``seed``). ``llm2attn``: an :class:`AttentionBody` at
        the backbone's width and head count, its weights drawn with ``seed``. ``none``: a
        :class:`NoBody`. The last two read the backbone's config only, never its weights.

        Returns
        -------
        FrozenBackbone, AttentionBody or NoBody
            ``forward(inputs_embeds [B, S, D], attention_mask [B, S] | None) -> [B, S, D]``,
            with ``hidden_size`` ``D``.
        """
        if self.mode not in ABLATION_BODIES:
            return load_backbone(
                self.source,
                num_layers=self.num_layers,
                freeze=self.freeze,
                trainable_attention_blocks=self.trainable_attention_blocks or 1,
                pretrained=self.mode == "pretrained",
                dtype=self.dtype,
                seed=self.seed,
                trust_remote_code=self.trust_remote_code,
                lora=self.lora,
                gradient_checkpointing=self.gradient_checkpointing,
            )
        config = backbone_config(self.source, self.trust_remote_code)
        if self.mode == "none":
            return NoBody(int(config.hidden_size))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return AttentionBody(
                int(config.hidden_size), int(config.num_attention_heads), self.attention_dropout
            )


def build_causal_lm(spec: BackboneSpec, device: str | torch.device | None = None) -> tuple:
    """``(model, tokenizer)`` of a causal LM described by ``spec``, for fine-tuning on text
    answers (:func:`~llm_st.backbones.frozen.load_trainable_causal_lm`): ``freeze`` one of
    ``frozen``, ``full``, ``lora``, ``qlora``; ``mode`` ``pretrained`` or ``random_init``."""
    if spec.mode not in ("pretrained", "random_init"):
        raise ConfigError(
            f"backbone mode {spec.mode!r} has no language-model head to answer with",
            "use mode pretrained or random_init",
        )
    return load_trainable_causal_lm(
        spec.source,
        spec.freeze,
        spec.lora,
        num_layers=spec.num_layers,
        pretrained=spec.mode == "pretrained",
        dtype=spec.dtype,
        device=device,
        seed=spec.seed,
        trust_remote_code=spec.trust_remote_code,
        gradient_checkpointing=spec.gradient_checkpointing,
    )
