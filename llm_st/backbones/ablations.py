"""The "body" of a transfer adapter, and the ablations that test whether the LLM helps.

Tan, Merrill, Gupta, Althoff and Hartvigsen, "Are Language Models Actually Useful for
Time Series Forecasting?", NeurIPS 2024, replace the LLM of LLM forecasters by nothing,
by one attention layer, or by the same LLM with random weights, and find the forecasts
no worse. Every adapter in llm-st builds its LLM with
:meth:`llm_st.backbones.spec.BackboneSpec.build`, so each of them runs each ablation from
one field of its backbone (``mode``) and nothing else changes: the same input layers,
head, freezing policy and training recipe.

Modes (:data:`BACKBONE_MODES`), the bodies they build:

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

import torch
from torch import nn

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
