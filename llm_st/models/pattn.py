"""PAttn: patches + one attention layer, the LLM-free control of LLM forecasters.

Tan, Merrill, Gupta, Althoff and Hartvigsen, "Are Language Models Actually
Useful for Time Series Forecasting?", NeurIPS 2024 (reference code:
BennyTMT/LLMsForTimeSeries, ``PAttn/models/PAttn.py``). It replaces the LLM of
patch-based LLM forecasters (GPT4TS, Time-LLM) by a single multi-head attention
layer and matches or beats them on the long-term benchmarks; every LLM-adapted
model in llm-st should be compared with it.

Per ``(node, channel)`` series, shared weights, as the reference:

1. instance normalization over time (RevIN without the affine map by default,
   as the reference's plain mean/std normalization; ``revin_affine=True`` adds it);
2. patches of ``patch_len`` every ``stride`` steps, end padded with ``stride``
   copies of the last value;
3. ``Linear(patch_len, d_model)`` patch embedding, no positional embedding;
4. ONE multi-head self-attention layer (bias-free projections, dropout 0.1 on the
   attention weights and the output) with a residual connection and LayerNorm;
5. flatten head ``Linear(P * d_model, H)`` and de-normalization.

``d_model`` defaults to 768, the width of the GPT-2 it stands in for.

Shapes: ``forward``: ``x [B, L, N, C] -> [B, H, N, C]``; ``embed``: ``[B, N, d_model]``.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_st.models.base import DataInfo
from llm_st.models.patchtst import MultiheadSelfAttention, PatchForecaster
from llm_st.models.registry import register_model
from llm_st.tokens.patching import Padding


@register_model("pattn")
class PAttn(PatchForecaster):
    """Patch attention baseline.

    Parameters
    ----------
    info : DataInfo
    patch_len, stride : int
        Patch length and step (16 and 8).
    padding : {"replicate", "end", "none"}
        End padding of the patches (``"replicate"`` = reference).
    d_model, n_heads : int
        Token width and attention heads (768 and 8).
    dropout : float
        Dropout on the attention weights and after the output projection (0.1).
    revin_affine : bool
        Learnable per-series affine map after normalizing (off in the reference).
    """

    def __init__(
        self,
        info: DataInfo,
        patch_len: int = 16,
        stride: int = 8,
        padding: Padding = "replicate",
        d_model: int = 768,
        n_heads: int = 8,
        dropout: float = 0.1,
        revin_affine: bool = False,
    ):
        super().__init__(
            info, patch_len, stride, padding, d_model, revin=True, revin_affine=revin_affine,
            learn_pos=False, embed_dropout=0.0, head_dropout=0.0,
        )  # fmt: skip
        self.attn = MultiheadSelfAttention(d_model, n_heads, False, dropout, dropout)
        self.norm = nn.LayerNorm(d_model, eps=1e-6)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attn(tokens)
        return self.norm(tokens + attended)
