"""GPT4TS ("One Fits All"): patches of each series through a partly frozen pretrained LM.

Zhou, Niu, Wang, Sun and Jin, "One Fits All: Power General Time Series Analysis by
Pretrained LM", NeurIPS 2023 (reference code: DAMO-DI-ML/NeurIPS2023-One-Fits-All,
``Long-term_Forecasting/models/GPT4TS.py``). Every ``(node, channel)`` series of the
window ``[B, L, N, C]`` is handled on its own with shared weights (``S = B * N * C``
sequences):

1. instance normalization over time (RevIN without its affine map, as the reference's
   mean / standard-deviation normalization; statistics over observed entries of ``x_mask``);
2. patches of ``patch_len`` steps every ``stride`` steps, the end padded with ``stride``
   copies of the last value (the reference's ``ReplicationPad1d((0, stride))``): ``P``
   patches ``[S, P, patch_len]``;
3. ``Linear(patch_len, D)`` patch embedding to the backbone width ``D`` (no positional
   embedding of its own: GPT-2 adds its learned ``wpe`` to ``inputs_embeds``);
4. the first ``num_layers`` blocks of the pretrained backbone (6 of GPT-2's 12), called
   with ``inputs_embeds`` ``[S, P, D]``, with the ``"layernorm"`` freezing policy: only the
   layer norms and position embeddings train (:mod:`llm_st.backbones.frozen`);
5. flatten head ``Linear(P * D, H)`` and de-normalization.

Trainable by default: patch embedding, head, and the backbone's norms and position
embeddings. The backbone's ``mode`` selects Tan et al.'s ablations
(:mod:`llm_st.backbones.ablations`): ``"none"`` (patch embeddings straight to the head),
``"llm2attn"``, ``"random_init"``.

Shapes: ``forward``: ``x [B, L, N, C] -> [B, H, N, C]`` (scaled); ``embed``: ``[B, N, D]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from llm_st.backbones.ablations import BACKBONE_MODES
from llm_st.backbones.spec import BackboneSpec
from llm_st.models.base import DataInfo
from llm_st.models.patchtst import PatchForecaster
from llm_st.models.registry import register_model
from llm_st.tokens.patching import Padding


@register_model("gpt4ts")
class GPT4TS(PatchForecaster):
    """GPT4TS forecaster.

    Parameters
    ----------
    info : DataInfo
    backbone : BackboneSpec, mapping or str
        The language model (:class:`~llm_st.backbones.spec.BackboneSpec`); fields not
        given are :attr:`default_backbone`'s: the paper's GPT-2 with its first 6 blocks and
        the ``"layernorm"`` policy. LLaMA- and BERT-family models work the same way.
    patch_len, stride : int
        Patch length and step (16 and 8).
    padding : {"replicate", "end", "none"}
        End padding of the patches (``"replicate"`` = reference).
    revin_affine : bool
        Learnable per-series affine map after normalizing (off in the reference).
    head_dropout : float
        Dropout after the head (0).
    """

    default_backbone = BackboneSpec(
        source="openai-community/gpt2", num_layers=6, freeze="layernorm"
    )
    backbone_modes = BACKBONE_MODES

    def __init__(
        self,
        info: DataInfo,
        backbone: BackboneSpec | Mapping[str, Any] | str = default_backbone,
        patch_len: int = 16,
        stride: int = 8,
        padding: Padding = "replicate",
        revin_affine: bool = False,
        head_dropout: float = 0.0,
    ):
        spec = self.complete_backbone(backbone)
        body = spec.build()
        super().__init__(
            info, patch_len, stride, padding, body.hidden_size, revin=True,
            revin_affine=revin_affine, learn_pos=False, embed_dropout=0.0,
            head_dropout=head_dropout,
        )  # fmt: skip
        self.backbone, self.body = spec, body

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[S, P, D]`` of the patch tokens ``[S, P, D]``."""
        return self.body(tokens)
