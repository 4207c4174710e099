"""ST encoders for cross-modal alignment and the projection into a text space.

An ST encoder is an :class:`~llm_st.models.base.STModel` with ``embed(batch) -> [B, N, D]``
and ``embed_dim``: :class:`PatchEncoder` (RevIN-normalized patches, a small
transformer, mean pooling) or any registered model that has them. A projection
(:func:`make_projection`) maps its embeddings into the space of a frozen text
encoder; :class:`AlignedSTEncoder` chains the two for inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import build_model
from llm_st.tokens.patching import num_patches, patchify
from llm_st.tokens.revin import instance_norm

PROJECTIONS = ("linear", "mlp")
_TOD_BINS = 48  # half-hour slots for the time-of-day embedding


class PatchEncoder(STModel):
    """A small patch transformer: ``embed(batch) -> [B, N, d_model]``, one vector per node.

    Each node's window ``[L, C]`` is RevIN-normalized (masked statistics), cut into
    patches of ``patch_len`` steps every ``stride`` steps, and every patch (values of
    all channels plus their observed share) is embedded linearly with a learned
    position. One context token joins them: the RevIN statistics (mean, log std) and
    observed share per channel, which carry the level that normalization removed,
    plus a learned node embedding and time-of-day / day-of-week embeddings of the
    window's last step. A transformer encoder runs over each node's tokens and
    their mean is the node's embedding.

    It embeds and does not forecast: ``forward`` is :class:`STModel`'s (not implemented).

    Parameters
    ----------
    info : DataInfo
        ``num_nodes`` ``N``, ``num_channels`` ``C`` and ``history`` ``L`` of the windows.
    d_model, num_layers, num_heads : int
        Transformer width, depth and heads.
    patch_len, stride : int
        Patching (``llm_st.tokens.patching.patchify``, padding ``"end"``).
    dropout : float
    """

    def __init__(
        self,
        info: DataInfo,
        d_model: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        patch_len: int = 8,
        stride: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__(info)
        C = info.num_channels
        patch_len = min(patch_len, info.history)
        self.patch_len, self.stride = patch_len, stride
        self.num_patches = num_patches(info.history, patch_len, stride)
        self.embed_dim = d_model
        self.patch_embed = nn.Linear(C * (patch_len + 1), d_model)
        self.position = nn.Parameter(torch.randn(self.num_patches, d_model) * 0.02)
        self.stats_embed = nn.Linear(3 * C, d_model)
        self.node_embed = nn.Parameter(torch.randn(info.num_nodes, d_model) * 0.02)
        self.tod_embed = nn.Embedding(_TOD_BINS, d_model)
        self.dow_embed = nn.Embedding(7, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, 2 * d_model, dropout, activation="gelu", batch_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, N, d]`` from ``x``, ``x_mask`` ``[B, L, N, C]`` and ``x_time`` ``[B, L, 2]``."""
        x, mask = batch["x"], batch["x_mask"]
        B, L, N, C = x.shape
        normed, stats = instance_norm(x, dim=1, mask=mask)
        observed = mask.to(x.dtype)
        patches = patchify(normed.permute(0, 2, 3, 1), self.patch_len, self.stride)  # [B,N,C,K,P]
        share = patchify(observed.permute(0, 2, 3, 1), self.patch_len, self.stride).mean(-1)
        tokens = torch.cat([patches, share.unsqueeze(-1)], -1).transpose(2, 3)  # [B,N,K,C,P+1]
        h = self.patch_embed(tokens.reshape(B, N, self.num_patches, -1)) + self.position

        summary = torch.cat([stats.mean, stats.std.log(), observed.mean(1, keepdim=True)], -1)
        last = batch["x_time"][:, -1]  # [B, 2]
        tod = (last[:, 0] * _TOD_BINS).long().clamp(0, _TOD_BINS - 1)
        when = self.tod_embed(tod) + self.dow_embed(last[:, 1].long().clamp(0, 6))  # [B, d]
        context = self.stats_embed(summary[:, 0]) + self.node_embed + when[:, None]  # [B, N, d]

        seq = torch.cat([context.unsqueeze(2), h], 2).reshape(B * N, self.num_patches + 1, -1)
        out = self.norm(self.transformer(seq).mean(1))
        return out.reshape(B, N, -1)


def build_st_encoder(encoder: str | nn.Module, info: DataInfo) -> tuple[STModel, str]:
    """The ST encoder and its name.

    Parameters
    ----------
    encoder : "patch", a registered model name, or an STModel
        A model must have ``embed(batch) -> [B, N, D]`` and ``embed_dim``.
    info : DataInfo
        What a new encoder is built for.
    """
    if isinstance(encoder, nn.Module):
        module, name = encoder, getattr(encoder, "registry_name", type(encoder).__name__)
    elif encoder == "patch":
        module, name = PatchEncoder(info), "patch"
    else:
        module, name = build_model(encoder, info), encoder
    if not (
        isinstance(module, STModel)
        and callable(getattr(module, "embed", None))
        and hasattr(module, "embed_dim")
    ):
        raise ConfigError(
            f"ST encoder {name!r} is not an STModel with an embed(batch) -> [B, N, D] method "
            "and embed_dim",
            "use encoder='patch' or a model that implements embed",
        )
    return module, name


def make_projection(kind: str, st_dim: int, text_dim: int) -> nn.Module:
    """``[..., st_dim] -> [..., text_dim]``: ``"linear"`` or ``"mlp"`` (linear, GELU, linear)."""
    if kind not in PROJECTIONS:
        raise ConfigError(f"unknown projection {kind!r}", f"use one of {PROJECTIONS}")
    if kind == "linear":
        return nn.Linear(st_dim, text_dim)
    return nn.Sequential(nn.Linear(st_dim, text_dim), nn.GELU(), nn.Linear(text_dim, text_dim))


class AlignedSTEncoder(nn.Module):
    """An ST encoder and its projection: ``forward(batch) -> [B, N, D_text]``, L2-normalized.

    The modules are shared, not copied: this is the trained encoder seen in the text space.
    """

    def __init__(self, encoder: STModel, projection: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.projection = projection

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The ST encoder's own embedding ``[B, N, D_st]``."""
        return self.encoder.embed(batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.projection(self.embed(batch)), dim=-1)
