"""ST-LLM: one token per node, spatial and temporal embeddings, partially frozen attention.

Liu et al., "Spatial-Temporal Large Language Model for Traffic Prediction", MDM 2024
(arXiv 2401.10134; reference code: ChenxiLiu-HNU/ST-LLM, ``model_ST_LLM.py``). Nodes, not
patches, are the tokens: the backbone sees a sequence of ``N`` node tokens per window and
mixes them with its attention.

Per window ``x [B, L, N, C]``:

1. token embedding: the node's whole window ``[L * C]`` -> ``channels`` (the reference's
   1x1 ``start_conv`` over ``input_dim * input_len``);
2. temporal embedding: learned time-of-day (``time_slots`` rows, the data's steps per
   day) plus day-of-week (7 rows) vectors of the last history step, the same for every
   node (``batch["x_time"]``);
3. spatial embedding: one learned vector per node (Xavier-uniform, as the reference);
4. fusion: the three ``[B, N, channels]`` parts concatenated -> ``Linear(3 * channels, D)``
   to the backbone width ``D``;
5. the first ``num_layers`` blocks (6 of GPT-2's) with *partially frozen attention*
   (policy ``"attention"``): layer norms and position embeddings train everywhere, the
   whole self-attention trains in the last ``U`` blocks, the feed-forward layers stay
   frozen (:mod:`llm_st.backbones.frozen`); GPT-2 adds its position embedding by node
   index, as in the reference;
6. regression head ``Linear(D, H * C)`` per node token.

Differences from the reference, on purpose: the time-of-day / day-of-week values are
not also fed to the token embedding as extra input channels (they are in the temporal
embedding); ``C > 1`` channels are forecast jointly by the head instead of one.

Trainable by default: token/node/time embeddings, fusion, head, and the backbone's
norms, position embeddings and last-``U`` attention. The backbone's ``mode`` selects Tan
et al.'s ablations (:mod:`llm_st.backbones.ablations`).

Shapes: ``forward``: ``x [B, L, N, C]``, ``x_time [B, L, 2]`` -> ``[B, H, N, C]`` (scaled).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from llm_st.backbones.ablations import BACKBONE_MODES
from llm_st.backbones.spec import BackboneSpec
from llm_st.errors import ConfigError, DataError
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import register_model


@register_model("stllm")
class STLLM(STModel):
    """ST-LLM forecaster.

    Parameters
    ----------
    info : DataInfo
    backbone : BackboneSpec, mapping or str
        The language model (:class:`~llm_st.backbones.spec.BackboneSpec`); fields not
        given are :attr:`default_backbone`'s: the paper's GPT-2 with its first 6 blocks and
        partially frozen attention (``freeze: attention`` with ``U = 1``, the reference
        code's default). LLaMA- and BERT-family models work the same way.
    channels : int
        Width of each of the token, temporal and node embeddings (256).
    time_slots : int or None
        Rows of the time-of-day table; default the data's steps per day (1 when unknown:
        then only the day of week varies).
    """

    default_backbone = BackboneSpec(
        source="openai-community/gpt2", num_layers=6, freeze="attention"
    )
    backbone_modes = BACKBONE_MODES

    def __init__(
        self,
        info: DataInfo,
        backbone: BackboneSpec | Mapping[str, Any] | str = default_backbone,
        channels: int = 256,
        time_slots: int | None = None,
    ):
        super().__init__(info)
        self.backbone = self.complete_backbone(backbone)
        slots = time_slots if time_slots is not None else (info.steps_per_day or 1)
        if slots < 1 or channels < 1:
            raise ConfigError(
                f"time_slots={slots} and channels={channels} must be at least 1",
                "use the steps per day of the data and e.g. 256 channels",
            )
        self.body = self.backbone.build()
        limit = getattr(self.body, "max_positions", None)
        if limit is not None and info.num_nodes > limit:
            raise ConfigError(
                f"{info.num_nodes} nodes are more node tokens than the {limit} positions of "
                f"backbone {self.backbone.source!r}",
                "use a backbone with more positions or a rotary one (LLaMA family)",
            )
        width = self.body.hidden_size
        self.time_slots = slots
        self.token_embedding = nn.Linear(info.history * info.num_channels, channels)
        self.node_embedding = nn.Parameter(nn.init.xavier_uniform_(
            torch.empty(info.num_nodes, channels)))  # fmt: skip
        self.time_of_day = nn.Parameter(nn.init.xavier_uniform_(torch.empty(slots, channels)))
        self.day_of_week = nn.Parameter(nn.init.xavier_uniform_(torch.empty(7, channels)))
        self.fusion = nn.Linear(3 * channels, width)
        self.head = nn.Linear(width, info.horizon * info.num_channels)

    def node_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, N, D]``: fused token, temporal and node embeddings of every node."""
        x = batch["x"]
        B, L, N, C = x.shape
        if L * C != self.token_embedding.in_features:
            raise DataError(
                f"history of {L} steps x {C} channels, but the model was built for "
                f"{self.info.history} x {self.info.num_channels}",
                "build the model for this window length",
            )
        times = batch.get("x_time")
        if times is None:
            raise DataError(
                "ST-LLM needs batch['x_time'] (time of day, day of week per history step)",
                "use batches of llm_st.data.windows.WindowDataset",
            )
        last = times[:, -1].to(x.device)  # [B, 2]
        slot = (last[:, 0] * self.time_slots).long().clamp(0, self.time_slots - 1)
        day = last[:, 1].long().clamp(0, 6)
        temporal = self.time_of_day[slot] + self.day_of_week[day]  # [B, channels]
        tokens = self.token_embedding(x.permute(0, 2, 1, 3).reshape(B, N, L * C))
        parts = (
            tokens,
            temporal[:, None].expand(-1, N, -1),
            self.node_embedding[None].expand(B, -1, -1),
        )
        return self.fusion(torch.cat(parts, dim=-1))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        B, N = batch["x"].shape[0], self.info.num_nodes
        hidden = self.body(self.node_tokens(batch))  # [B, N, D]
        y = self.head(hidden).reshape(B, N, self.info.horizon, self.info.num_channels)
        return y.permute(0, 2, 1, 3)
