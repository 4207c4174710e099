"""The "body" of a transfer adapter, and the ablations that test whether the LLM helps.

Tan, Merrill, Gupta, Althoff and Hartvigsen, "Are Language Models Actually Useful for
Time Series Forecasting?", NeurIPS 2024, replace the LLM of LLM forecasters by nothing,
by one attention layer, or by the same LLM with random weights, and find the forecasts
no worse. Every adapter in llm-st builds its LLM with :func:`build_body`, so each of
them runs each ablation from one constructor argument (``backbone_mode``) and nothing
else changes: the same input layers, head, freezing policy and training recipe.

Modes (:data:`BACKBONE_MODES`):

- ``"pretrained"``: the pretrained backbone (:func:`~llm_st.backbones.frozen.load_backbone`).
- ``"random_init"``: the same architecture and truncation built from its config with
  random weights (no pretrained weights are read), same freezing policy.
- ``"llm2attn"``: one multi-head self-attention layer and its LayerNorm, residual,
  trainable, at the backbone's width and head count (:class:`AttentionBody`).
- ``"none"``: no body at all; the embeddings go straight to the head (:class:`NoBody`).

Every body has ``hidden_size`` and ``forward(inputs_embeds [B, S, D], attention_mask
[B, S] | None) -> [B, S, D]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_st.backbones.frozen import FrozenBackbone, backbone_config, load_backbone
from llm_st.errors import ConfigError

BACKBONE_MODES = ("pretrained", "random_init", "llm2attn", "none")


class AttentionBody(nn.Module):
    """Tan et al.'s LLM2Attn: ``LayerNorm(x + MultiheadSelfAttention(x))``, all trainable.

    Parameters
    ----------
    hidden_size, num_heads : int
        Width ``D`` and heads (``D`` divisible by ``num_heads``).
    dropout : float
        Dropout on the attention weights.

    Shapes
    ------
    ``forward(inputs_embeds [B, S, D], attention_mask [B, S] | None) -> [B, S, D]``;
    masked tokens are not attended to. Attention is bidirectional.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.1):
        super().__init__()
        if hidden_size % num_heads:
            raise ConfigError(
                f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}",
                "choose a head count that divides the width",
            )
        self.hidden_size = hidden_size
        self.attn = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        padding = None if attention_mask is None else attention_mask == 0
        attended, _ = self.attn(
            inputs_embeds,
            inputs_embeds,
            inputs_embeds,
            key_padding_mask=padding,
            need_weights=False,
        )
        return self.norm(inputs_embeds + attended)


class NoBody(nn.Module):
    """The ``"none"`` ablation: returns ``inputs_embeds`` unchanged; no parameters."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return inputs_embeds


def build_body(
    mode: str,
    backbone: str | Path,
    num_layers: int | None = None,
    freeze: str = "frozen",
    trainable_attention_blocks: int = 1,
    dtype: str | torch.dtype | None = None,
    attention_dropout: float = 0.1,
    seed: int = 0,
    lora: Mapping[str, Any] | None = None,
) -> FrozenBackbone | AttentionBody | NoBody:
    """The body of an adapter for ``mode`` (one of :data:`BACKBONE_MODES`).

    Parameters
    ----------
    mode
        ``"pretrained"``, ``"random_init"``, ``"llm2attn"`` or ``"none"``.
    backbone
        Tiny name, local directory or hub id. ``"llm2attn"`` and ``"none"`` read only its
        config (width, heads), never its weights.
    num_layers, freeze, trainable_attention_blocks, dtype
        Passed to :func:`~llm_st.backbones.frozen.load_backbone` (the first two modes).
    attention_dropout
        Dropout on the attention weights of ``"llm2attn"``.
    seed
        Seed of the random weights of ``"random_init"`` and ``"llm2attn"``.
    lora
        LoRA settings of the ``"lora"`` / ``"qlora"`` policies (fields of
        :class:`~llm_st.backbones.lora.LoraSettings`), for the first two modes.
    """
    if mode not in BACKBONE_MODES:
        raise ConfigError(
            f"unknown backbone_mode {mode!r}", f"use one of {', '.join(BACKBONE_MODES)}"
        )
    if mode in ("pretrained", "random_init"):
        return load_backbone(
            backbone,
            num_layers=num_layers,
            freeze=freeze,
            trainable_attention_blocks=trainable_attention_blocks,
            pretrained=mode == "pretrained",
            dtype=dtype,
            seed=seed,
            lora=lora,
        )
    config = backbone_config(backbone)
    if mode == "none":
        return NoBody(int(config.hidden_size))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AttentionBody(
            int(config.hidden_size), int(config.num_attention_heads), attention_dropout
        )
