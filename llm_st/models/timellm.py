"""Time-LLM: patches reprogrammed into text prototypes, read by a frozen LLM after a prompt.

Jin et al., "Time-LLM: Time Series Forecasting by Reprogramming Large Language Models",
ICLR 2024 (reference code: KimMeen/Time-LLM, ``models/TimeLLM.py``). Every ``(node,
channel)`` series of the window ``[B, L, N, C]`` is handled on its own with shared
weights (``S = B * N * C`` sequences):

1. instance normalization over time without an affine map (the reference's
   ``Normalize(affine=False)``; statistics over observed entries of ``x_mask``);
2. patches of ``patch_len`` every ``stride`` steps, end padded with ``stride`` copies of
   the last value: ``[S, P, patch_len]``;
3. patch embedding to ``d_model``: a circular ``Conv1d(patch_len, d_model, 3)`` over the
   patch sequence without bias (the reference's ``TokenEmbedding``), then dropout;
4. text prototypes: ``K`` rows ``[K, D]`` made by a trained ``Linear(vocab_size, K)``
   from the frozen word-embedding matrix ``[vocab_size, D]`` of the backbone;
5. reprogramming: multi-head cross-attention of the patch embeddings (queries) to the
   prototypes (keys and values), ``d_ff`` dimensions per head, out to ``D``: ``[S, P, D]``;
6. prompt-as-prefix: the ``stats`` template of ``prompts/`` (dataset description, task,
   min / max / median, trend and top-5 autocorrelation lags of the normalized history,
   computed by :func:`llm_st.prompting.series_statistics`) rendered without its history
   and ending in ``Values:``; its frozen word embeddings ``[S, T, D]`` go before the
   reprogrammed patches, left padded with an attention mask (positions count real tokens);
7. the frozen backbone on ``[S, T + P, D]``; the first ``d_ff`` features of the last
   ``P`` positions are flattened into ``Linear(P * d_ff, H)``, then de-normalized.

Trainable: patch embedding, prototype map, reprogramming projections (query, key, value,
out) and head; the backbone stays fully frozen (policy ``"frozen"``, or ``"qfrozen"`` on
4-bit weights). The prompt prefix of a window depends only on its text, so each distinct
text is tokenized once (:class:`llm_st.backbones.cache.PrefixEmbedder`).

Memory (what a 7B backbone makes large outside its blocks): the prototype map reads the
frozen vocabulary ``[vocab_size, D]`` where it is, in its dtype, transposed as a view
(neither a float32 nor a transposed copy of the table is made or kept for the backward
pass); the prefix, the reprogrammed patches and the hidden states ``[S, T + P, D]`` stay in
the backbone's dtype, and only the ``[S, P, d_ff]`` features the head reads are cast to
float32. With a float32 backbone every step computes what the plain formulas do, bit for
bit. With a bfloat16 / float16 one (or ``"qfrozen"`` on a GPU) the prototypes are computed
in that dtype (the prototype map's weight is rounded to it in the product) where they
used to be float32; the other steps compute as before (the backbone cast its input to its
dtype and back itself).

Ablations (the backbone's ``mode``, :mod:`llm_st.backbones.ablations`) replace only the LLM's
blocks: ``"llm2attn"`` runs one attention layer over the same prefix + patch sequence,
``"none"`` passes the reprogrammed patches straight to the head (no prompt, since there
is nothing to read it), ``"random_init"`` uses a randomly initialized model (whose random
vocabulary then also makes the prototypes and the prompt embeddings). The first two keep
the pretrained vocabulary for the prototypes (loaded without the blocks). Tan et al.'s
code also removed the reprogramming layer in their ablations; here everything but the
blocks stays, so the comparison isolates them.

Shapes: ``forward``: ``x [B, L, N, C] -> [B, H, N, C]`` (scaled).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from llm_st.backbones.ablations import BACKBONE_MODES, NoBody
from llm_st.backbones.cache import PrefixEmbedder
from llm_st.backbones.frozen import FrozenBackbone, load_word_embeddings
from llm_st.backbones.hub import load_tokenizer
from llm_st.backbones.spec import BackboneSpec
from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import register_model
from llm_st.prompting.stats import series_statistics
from llm_st.prompting.templates import PromptTemplate, load_template
from llm_st.tokens.patching import num_patches, patchify
from llm_st.tokens.revin import instance_denorm, instance_norm

PROMPT_VARIABLES = frozenset(
    {"description", "horizon", "history_len", "min", "max", "median", "trend", "lags", "history"}
)
"""Variables a Time-LLM prompt template may read (``history`` is rendered empty)."""


@functools.lru_cache(maxsize=16)
def prompt_template(spec: str) -> PromptTemplate:
    """The template ``spec`` (name or ``.j2`` path), read once per process.

    Models keep the spec, not the compiled template, so they stay deep-copyable.
    """
    return load_template(spec)


class PatchConvEmbedding(nn.Module):
    """Time-LLM's patch embedding: circular ``Conv1d(patch_len, d_model, kernel 3)``
    across neighbouring patches, no bias, Kaiming-normal init, then dropout.

    Shapes: ``[S, P, patch_len] -> [S, P, d_model]``.
    """

    def __init__(self, patch_len: int, d_model: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(
            patch_len, d_model, kernel_size=3, padding=1, padding_mode="circular", bias=False
        )
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.dropout = nn.Dropout(dropout)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.conv(patches.transpose(1, 2)).transpose(1, 2))


class ReprogrammingLayer(nn.Module):
    """Multi-head cross-attention of patch embeddings to text prototypes.

    Parameters
    ----------
    d_model : int
        Width of the patch embeddings (queries).
    n_heads : int
    d_keys : int
        Dimensions per head (Time-LLM passes ``d_ff``).
    d_llm : int
        Width ``D`` of the prototypes and of the output.
    dropout : float
        Dropout on the attention weights.

    Shapes
    ------
    ``forward(patches [S, P, d_model], prototypes [K, D]) -> [S, P, D]``.
    """

    def __init__(self, d_model: int, n_heads: int, d_keys: int, d_llm: int, dropout: float):
        super().__init__()
        self.n_heads, self.d_keys = n_heads, d_keys
        self.query = nn.Linear(d_model, d_keys * n_heads)
        self.key = nn.Linear(d_llm, d_keys * n_heads)
        self.value = nn.Linear(d_llm, d_keys * n_heads)
        self.out = nn.Linear(d_keys * n_heads, d_llm)
        self.dropout = nn.Dropout(dropout)

    def forward(self, patches: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        S, P, _ = patches.shape
        K, E = prototypes.shape[0], self.d_keys
        q = self.query(patches).view(S, P, self.n_heads, E)
        k = self.key(prototypes).view(K, self.n_heads, E)
        v = self.value(prototypes).view(K, self.n_heads, E)
        scores = torch.einsum("sphe,khe->shpk", q, k) / math.sqrt(E)
        weights = self.dropout(scores.softmax(dim=-1))
        out = torch.einsum("shpk,khe->sphe", weights, v).reshape(S, P, self.n_heads * E)
        return self.out(out)


@register_model("timellm")
class TimeLLM(STModel):
    """Time-LLM forecaster.

    Parameters
    ----------
    info : DataInfo
    backbone : BackboneSpec, mapping or str
        The language model (:class:`~llm_st.backbones.spec.BackboneSpec`); fields not
        given are :attr:`default_backbone`'s: the paper's LLaMA-7B with all its blocks
        (the paper's runs keep all 32), fully frozen. GPT-2 and BERT work the same way.
    patch_len, stride : int
        Patch length and step (16 and 8).
    d_model : int
        Width of the patch embeddings (16; the paper's ETT scripts use 16 or 32).
    n_heads : int
        Heads of the reprogramming attention (8).
    d_ff : int
        Dimensions per reprogramming head, and features of each output token the head
        reads (32); at most the backbone width.
    num_prototypes : int
        ``K`` text prototypes (1000).
    dropout : float
        Dropout of the patch embedding, the reprogramming attention and the head (0.1).
    prompt : bool
        Put the prompt prefix before the patches (False: Time-LLM without its prompt).
    template : str
        Prompt template name or ``.j2`` path; it may read :data:`PROMPT_VARIABLES`.
    description : str or None
        Dataset description in the prompt (default: the data's description, else its name).
    max_prompt_tokens : int
        Prefixes are truncated to this many tokens.
    prompt_cache : bool
        Tokenize each distinct prefix text once (see :class:`PrefixEmbedder`).
    prompt_cache_mb : float
        Most megabytes of token ids the prefix cache holds.
    """

    default_backbone = BackboneSpec(source="huggyllama/llama-7b")
    backbone_modes = BACKBONE_MODES

    def __init__(
        self,
        info: DataInfo,
        backbone: BackboneSpec | Mapping[str, Any] | str = default_backbone,
        patch_len: int = 16,
        stride: int = 8,
        d_model: int = 16,
        n_heads: int = 8,
        d_ff: int = 32,
        num_prototypes: int = 1000,
        dropout: float = 0.1,
        prompt: bool = True,
        template: str = "stats",
        description: str | None = None,
        max_prompt_tokens: int = 512,
        prompt_cache: bool = True,
        prompt_cache_mb: float = 1024.0,
    ):
        super().__init__(info)
        spec = self.backbone = self.complete_backbone(backbone)
        self.body = spec.build()
        width = self.body.hidden_size
        if not 1 <= d_ff <= width:
            raise ConfigError(
                f"d_ff={d_ff} must be between 1 and the backbone width {width}",
                "the head reads the first d_ff features of each output token; use e.g. 32",
            )
        if not isinstance(self.body, FrozenBackbone):
            # the ablations drop the blocks but keep the pretrained vocabulary for prototypes
            vocabulary = load_word_embeddings(
                spec.source, dtype=spec.dtype, trust_remote_code=spec.trust_remote_code
            )
            self.register_buffer("vocabulary", vocabulary, persistent=False)
        self.patch_len, self.stride, self.d_ff = patch_len, stride, d_ff
        self.num_patches = num_patches(info.history, patch_len, stride, "replicate")
        self.patch_embedding = PatchConvEmbedding(patch_len, d_model, dropout)
        vocab_size = self.word_embedding_matrix().shape[0]
        self.prototype_map = nn.Linear(vocab_size, num_prototypes)
        self.reprogramming = ReprogrammingLayer(d_model, n_heads, d_ff, width, dropout)
        self.head = nn.Sequential(
            nn.Flatten(-2), nn.Linear(self.num_patches * d_ff, info.horizon), nn.Dropout(dropout)
        )
        self.template = str(template)
        unknown = prompt_template(self.template).variables - PROMPT_VARIABLES
        if unknown:
            raise ConfigError(
                f"template {self.template!r} reads {sorted(unknown)}, which Time-LLM "
                "does not provide",
                f"use a template that reads only {sorted(PROMPT_VARIABLES)}",
            )
        self.description = description or info.description or info.name
        self.prefix = (
            PrefixEmbedder(
                load_tokenizer(spec.source, spec.trust_remote_code),
                max_prompt_tokens,
                prompt_cache,
                prompt_cache_mb,
            )
            if prompt and not isinstance(self.body, NoBody)
            else None
        )

    def word_embedding_matrix(self) -> torch.Tensor:
        """The frozen vocabulary ``[vocab_size, D]`` the prototypes and the prompt come from."""
        if isinstance(self.body, FrozenBackbone):
            return self.body.word_embeddings().weight
        return self.vocabulary

    def prototypes(self) -> torch.Tensor:
        """The ``K`` text prototypes ``[K, D]``: the prototype map over the vocabulary.

        Computed in the vocabulary's dtype from the table itself (a transposed view), so
        the backward pass keeps no copy of the ``[vocab_size, D]`` table; the map's weight
        ``[K, vocab_size]`` is cast to that dtype for the product (a no-op in float32).
        """
        table = self.word_embedding_matrix()
        weight, bias = self.prototype_map.weight, self.prototype_map.bias
        return nn.functional.linear(table.t(), weight.to(table.dtype), bias.to(table.dtype)).t()

    def prompt_texts(self, series: torch.Tensor, observed: torch.Tensor | None) -> list[str]:
        """The prefix of each normalized history ``series`` ``[S, L]`` (``observed`` ``[S, L]``
        marks real values; statistics skip the others)."""
        values = series.detach().to("cpu", torch.float64).numpy()
        if observed is not None:
            values = np.where(observed.cpu().numpy(), values, np.nan)
        stats = series_statistics(values)
        template = prompt_template(self.template)
        return [
            template.render(
                description=self.description,
                horizon=self.info.horizon,
                history_len=values.shape[1],
                min=float(stats["min"][i]),
                max=float(stats["max"][i]),
                median=float(stats["median"][i]),
                trend=str(stats["trend_word"][i]),
                lags=stats["lags"][i].tolist(),
                history="",
            ).rstrip()
            for i in range(len(values))
        ]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"]
        B, L, N, C = x.shape
        H, P = self.info.horizon, self.num_patches
        z = x.reshape(B, L, N * C)
        mask = batch.get("x_mask")
        mask = None if mask is None else mask.reshape(B, L, N * C) != 0
        normed, stats = instance_norm(z, dim=1, mask=mask)
        series = normed.transpose(1, 2).reshape(B * N * C, L)  # ordered (b, n, c)
        patches = patchify(series, self.patch_len, self.stride, "replicate")  # [S, P, patch_len]
        own = self.reprogramming.out.weight.dtype
        prototypes = self.prototypes().to(own)  # [K, D]
        tokens = self.reprogramming(self.patch_embedding(patches), prototypes)  # [S, P, D]
        # the backbone's dtype from here on: no float32 [S, T + P, D] copies
        body_dtype = self.body.dtype if isinstance(self.body, FrozenBackbone) else own
        tokens = tokens.to(body_dtype)
        attention_mask = None
        if self.prefix is not None:
            observed = None if mask is None else mask.transpose(1, 2).reshape(B * N * C, L)
            texts = self.prompt_texts(series, observed)
            prefix, prefix_mask = self.prefix(texts, self.word_embedding_matrix())
            tokens = torch.cat([prefix.to(body_dtype), tokens], dim=1)  # [S, T + P, D]
            attention_mask = torch.cat([prefix_mask, prefix_mask.new_ones(len(tokens), P)], 1)
        hidden = self.body(tokens, attention_mask)[:, -P:, : self.d_ff]  # [S, P, d_ff]
        y = self.head(hidden.to(own)).reshape(B, N * C, H).transpose(1, 2)  # [B, H, N*C]
        return instance_denorm(y, stats).reshape(B, H, N, C)
