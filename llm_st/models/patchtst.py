"""PatchTST: channel-independent Transformer over patches of each series.

Nie, Nguyen, Sinthong and Kalagnanam, "A Time Series is Worth 64 Words:
Long-term Forecasting with Transformers", ICLR 2023 (reference code:
yuqinie98/PatchTST, ``PatchTST_supervised/layers/PatchTST_backbone.py``).

Every ``(node, channel)`` series of the window ``[B, L, N, C]`` is handled on its
own with shared weights:

1. RevIN (:class:`llm_st.tokens.revin.RevIN`, one affine pair per series, statistics
   over observed entries of ``x_mask``);
2. patches of ``patch_len`` steps every ``stride`` steps, the end padded with
   ``stride`` copies of the last value (:func:`llm_st.tokens.patching.patchify`,
   ``padding="replicate"``, the paper's ``padding_patch="end"``): ``P`` patches;
3. a linear patch embedding to ``d_model`` plus a learned positional embedding
   (initialized uniform in +-0.02), then dropout;
4. a Transformer encoder: post-norm layers with BatchNorm over ``d_model`` (as the
   paper; ``norm="layer"`` for LayerNorm), GELU feed-forward and residual attention
   (the pre-softmax scores of a layer are added to the next layer's, as the
   reference ``res_attention=True``);
5. a flatten head ``Linear(P * d_model, H)`` (the patch-major flatten order is a
   permutation of the reference's, immaterial for a learned linear map), then RevIN
   de-normalization.

:class:`PatchForecaster` holds steps 1, 2, 3 and 5 and is shared with PAttn
(:mod:`llm_st.models.pattn`); its pieces are public so masked modelling
(:mod:`llm_st.objectives.masked`) can encode a subset of the patches:
``patch_input(batch) -> [B*N*C, P, patch_len]``, ``patch_tokens(patches, positions)
-> [S, P', d_model]``, ``encode(tokens) -> [S, P', d_model]``, plus ``to_patches`` and
the attributes ``patch_len``, ``stride``, ``padding``, ``num_patches``, ``d_model``.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import register_model
from llm_st.tokens.patching import Padding, num_patches, patchify
from llm_st.tokens.revin import RevIN, instance_norm


class MultiheadSelfAttention(nn.Module):
    """Scaled dot-product self-attention that can add the previous layer's scores.

    Parameters
    ----------
    d_model, n_heads : int
        ``d_model`` must be divisible by ``n_heads``; each head has ``d_model // n_heads`` dims.
    bias : bool
        Biases of the query/key/value/output projections.
    attn_dropout : float
        Dropout on the attention weights.
    proj_dropout : float
        Dropout after the output projection.

    Shapes
    ------
    ``forward(x [S, P, D], prev [S, heads, P, P] | None) -> (out [S, P, D], scores)``;
    ``scores`` are the pre-softmax scores (``prev`` included), for residual attention.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        bias: bool = True,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(
                f"d_model={d_model} is not divisible by n_heads={n_heads}",
                "choose n_heads that divides d_model",
            )
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.out = nn.Sequential(nn.Linear(d_model, d_model, bias=bias), nn.Dropout(proj_dropout))

    def forward(
        self, x: torch.Tensor, prev: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        S, P, D = x.shape
        q, k, v = self.qkv(x).view(S, P, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) * self.head_dim**-0.5  # [S, heads, P, P]
        if prev is not None:
            scores = scores + prev
        weights = self.attn_dropout(scores.softmax(dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(S, P, D)
        return self.out(out), scores


class _TokenBatchNorm(nn.Module):
    """BatchNorm1d over the ``d_model`` features of tokens ``[S, P, D]`` (PatchTST's norm)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def _norm(kind: str, d_model: int) -> nn.Module:
    if kind == "batch":
        return _TokenBatchNorm(d_model)
    if kind == "layer":
        return nn.LayerNorm(d_model)
    raise ConfigError(f"unknown norm {kind!r}", 'use "batch" (the paper) or "layer"')


class PatchTSTEncoderLayer(nn.Module):
    """Post-norm Transformer layer: attention, add & norm, GELU feed-forward, add & norm."""

    def __init__(
        self, d_model: int, n_heads: int, d_ff: int, dropout: float, attn_dropout: float, norm: str
    ):
        super().__init__()
        self.attn = MultiheadSelfAttention(d_model, n_heads, True, attn_dropout, dropout)
        self.drop_attn = nn.Dropout(dropout)
        self.norm_attn = _norm(norm, d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )
        self.drop_ff = nn.Dropout(dropout)
        self.norm_ff = _norm(norm, d_model)

    def forward(
        self, x: torch.Tensor, prev: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attended, scores = self.attn(x, prev)
        x = self.norm_attn(x + self.drop_attn(attended))
        x = self.norm_ff(x + self.drop_ff(self.ff(x)))
        return x, scores


class PatchForecaster(STModel):
    """RevIN + patching + linear patch embedding + ``encode`` + flatten head.

    Subclasses define :meth:`encode`. Parameters are those of :class:`PatchTST`
    (``learn_pos``: add a learned positional embedding; ``embed_dropout``: dropout
    on the patch tokens).

    Shapes
    ------
    ``forward``: ``x [B, L, N, C] -> [B, H, N, C]``; ``embed``: ``[B, N, d_model]``, the
    encoded patch tokens averaged over patches and channels.
    """

    def __init__(
        self,
        info: DataInfo,
        patch_len: int,
        stride: int,
        padding: Padding,
        d_model: int,
        revin: bool,
        revin_affine: bool,
        learn_pos: bool,
        embed_dropout: float,
        head_dropout: float,
    ):
        super().__init__(info)
        self.patch_len, self.stride, self.padding = patch_len, stride, padding
        self.num_patches = num_patches(info.history, patch_len, stride, padding)
        self.d_model = self.embed_dim = d_model
        series = info.num_nodes * info.num_channels
        self.revin = RevIN(series, affine=revin_affine) if revin else None
        self.patch_embedding = nn.Linear(patch_len, d_model)
        self.pos_embedding = (
            nn.Parameter(torch.empty(self.num_patches, d_model).uniform_(-0.02, 0.02))
            if learn_pos
            else None
        )
        self.embed_dropout = nn.Dropout(embed_dropout)
        self.head = nn.Sequential(
            nn.Flatten(-2),
            nn.Linear(self.num_patches * d_model, info.horizon),
            nn.Dropout(head_dropout),
        )

    def to_patches(self, z: torch.Tensor) -> torch.Tensor:
        """``[B*N*C, P, patch_len]`` patches of ``z`` ``[B, L, N*C]``, ordered ``(b, n, c)``."""
        patches = patchify(z.transpose(1, 2), self.patch_len, self.stride, self.padding)
        return patches.reshape(-1, self.num_patches, self.patch_len)

    def patch_input(self, batch: dict[str, torch.Tensor], affine: bool = True) -> torch.Tensor:
        """``[B*N*C, P, patch_len]``: the instance-normalized history of every series, in patches.

        With RevIN the statistics are those of the observed entries of ``x_mask`` and are
        stored for :meth:`forward`; ``affine=False`` leaves out RevIN's learnable affine
        map (a parameter-free reconstruction target for masked modelling).
        """
        x = batch["x"]
        B, L = x.shape[:2]
        z = x.reshape(B, L, -1)  # [B, L, N*C]
        if self.revin is not None:
            mask = batch.get("x_mask")
            mask = None if mask is None else mask.reshape(B, L, -1)
            if affine:
                z = self.revin(z, "norm", mask=mask)
            else:
                z, _ = instance_norm(z, dim=1, mask=mask, eps=self.revin.eps)
        return self.to_patches(z)

    def patch_tokens(
        self, patches: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embed patches ``[S, P', patch_len]`` to tokens ``[S, P', d_model]``.

        ``positions`` (``[P']`` or ``[S, P']`` long) are the patch indices the ``P'``
        patches come from (for the positional embedding); default ``0 .. P-1``.
        """
        tokens = self.patch_embedding(patches)
        if self.pos_embedding is not None:
            tokens = tokens + (
                self.pos_embedding if positions is None else self.pos_embedding[positions]
            )
        return self.embed_dropout(tokens)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoded tokens ``[S, P', d_model]`` from tokens ``[S, P', d_model]``."""
        raise NotImplementedError

    def _encoded(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encode(self.patch_tokens(self.patch_input(batch)))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        B, N, C, H = (
            batch["x"].shape[0],
            self.info.num_nodes,
            self.info.num_channels,
            self.info.horizon,
        )
        y = self.head(self._encoded(batch)).reshape(B, N * C, H).transpose(1, 2)  # [B, H, N*C]
        if self.revin is not None:
            y = self.revin(y, "denorm")
        return y.reshape(B, H, N, C)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, N, d_model]``: encoded patch tokens averaged over patches and channels."""
        B, N, C = batch["x"].shape[0], self.info.num_nodes, self.info.num_channels
        return (
            self._encoded(batch).reshape(B, N, C, self.num_patches, self.d_model).mean(dim=(2, 3))
        )


@register_model("patchtst")
class PatchTST(PatchForecaster):
    """PatchTST (supervised), defaults of the paper's ETTm/Weather/Traffic setting.

    Parameters
    ----------
    info : DataInfo
    patch_len, stride : int
        Patch length and step (16 and 8).
    padding : {"replicate", "end", "none"}
        End padding of :func:`llm_st.tokens.patching.patchify` (``"replicate"`` = paper).
    d_model, n_heads, n_layers, d_ff : int
        Encoder sizes (128, 16, 3, 256; ETTh1/h2 in the paper use 16, 4, 3, 128).
    dropout : float
        Dropout on tokens, attention output and feed-forward (0.2).
    attn_dropout : float
        Dropout on the attention weights (0).
    head_dropout : float
        Dropout after the flatten head (0).
    norm : {"batch", "layer"}
        Normalization in the encoder layers (BatchNorm in the paper).
    res_attention : bool
        Add each layer's pre-softmax scores to the next layer's (the reference default).
    revin, revin_affine : bool
        Use RevIN, with its learnable per-series affine map.
    """

    def __init__(
        self,
        info: DataInfo,
        patch_len: int = 16,
        stride: int = 8,
        padding: Padding = "replicate",
        d_model: int = 128,
        n_heads: int = 16,
        n_layers: int = 3,
        d_ff: int = 256,
        dropout: float = 0.2,
        attn_dropout: float = 0.0,
        head_dropout: float = 0.0,
        norm: str = "batch",
        res_attention: bool = True,
        revin: bool = True,
        revin_affine: bool = True,
    ):
        super().__init__(
            info, patch_len, stride, padding, d_model, revin, revin_affine,
            learn_pos=True, embed_dropout=dropout, head_dropout=head_dropout,
        )  # fmt: skip
        self.res_attention = res_attention
        self.layers = nn.ModuleList(
            PatchTSTEncoderLayer(d_model, n_heads, d_ff, dropout, attn_dropout, norm)
            for _ in range(n_layers)
        )

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        scores = None
        for layer in self.layers:
            tokens, new_scores = layer(tokens, scores)
            scores = new_scores if self.res_attention else None
        return tokens
