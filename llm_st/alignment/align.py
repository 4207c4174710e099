"""Align ST embeddings with a frozen language model's space (CLIP-style contrast).

An ST encoder turns each (window, node) pair into a vector; a trainable projection
maps it into the space of a frozen text encoder; a symmetric InfoNCE loss (Radford
et al., 2021) pulls it towards the embedding of the pair's own description
(:mod:`llm_st.alignment.describe`) and away from the others in the batch. With
``targets="prototypes"`` the target is instead the normalized sum of the TEST-style
prototypes (Sun et al., ICLR 2024) of the description's phrases.

The ST encoder is :class:`PatchEncoder` (RevIN-normalized patches, a small
transformer, mean pooling) or any model of :mod:`llm_st.models` (or any module) with
an ``embed(batch) -> [B, N, D]`` method.

Pairs whose descriptions are identical are not negatives of each other: the loss
spreads the target over all of them, and retrieval counts a hit when the retrieved
item has the query's description (chance levels are computed the same way).

The report (:class:`AlignmentReport`) is measured on windows from the last
``holdout`` share of the rows, never seen in training: retrieval accuracy top-1 /
top-5 in both directions, mean cosine of matched and unmatched pairs, and linear
CKA (Kornblith et al., ICML 2019) between projected ST and text embeddings, and
retrieval against the same descriptions in other words (``paraphrase_*``).

What the pretrained space buys, measured on ``synthetic-traffic`` (see
``tests/test_alignment.py``): with the same budget (150 steps), MiniLM targets give
clearly higher ST->text retrieval than the untrained control, and only MiniLM
carries over (weakly) to paraphrased descriptions. Most of the control's handicap is
its geometry, one direction shared by all its text embeddings: with
``center_targets=True``, or 4-8 times more steps, it matches MiniLM on descriptions
in the training wording.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from llm_st.alignment.describe import (
    FIXED_SLOTS,
    SLOTS,
    Descriptions,
    describe_windows,
    prototype_index,
    text_prototypes,
)
from llm_st.alignment.text_encoder import FrozenTextEncoder, text_encoder_from_spec
from llm_st.data.container import STData
from llm_st.data.scalers import make_scaler
from llm_st.data.windows import WindowDataset, WindowIndex
from llm_st.errors import ConfigError
from llm_st.tokens.patching import num_patches, patchify
from llm_st.tokens.revin import instance_norm

logger = logging.getLogger("llm_st")

TARGETS = ("descriptions", "prototypes")
PROJECTIONS = ("linear", "mlp")
_TOD_BINS = 48  # half-hour slots for the time-of-day embedding


# ----------------------------------------------------------------------------- encoder
class PatchEncoder(nn.Module):
    """A small patch transformer: ``embed(batch) -> [B, N, d_model]``, one vector per node.

    Each node's window ``[L, C]`` is RevIN-normalized (masked statistics), cut into
    patches of ``patch_len`` steps every ``stride`` steps, and every patch (values of
    all channels plus their observed share) is embedded linearly with a learned
    position. One context token joins them: the RevIN statistics (mean, log std) and
    observed share per channel, which carry the level that normalization removed,
    plus a learned node embedding and time-of-day / day-of-week embeddings of the
    window's last step. A transformer encoder runs over each node's tokens and
    their mean is the node's embedding.

    Parameters
    ----------
    num_nodes, num_channels, history : int
        ``N``, ``C`` and ``L`` of the windows.
    d_model, num_layers, num_heads : int
        Transformer width, depth and heads.
    patch_len, stride : int
        Patching (``llm_st.tokens.patching.patchify``, padding ``"end"``).
    dropout : float
    """

    def __init__(
        self,
        num_nodes: int,
        num_channels: int,
        history: int,
        d_model: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        patch_len: int = 8,
        stride: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        patch_len = min(patch_len, history)
        self.patch_len, self.stride = patch_len, stride
        self.num_patches = num_patches(history, patch_len, stride)
        self.embed_dim = d_model
        self.patch_embed = nn.Linear(num_channels * (patch_len + 1), d_model)
        self.position = nn.Parameter(torch.randn(self.num_patches, d_model) * 0.02)
        self.stats_embed = nn.Linear(3 * num_channels, d_model)
        self.node_embed = nn.Parameter(torch.randn(num_nodes, d_model) * 0.02)
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

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embed(batch)


class AlignedSTEncoder(nn.Module):
    """ST encoder + projection into the text space: ``forward(batch) -> [B, N, D_text]``.

    The output is L2-normalized; ``logit_scale`` is the (log) inverse temperature of
    the contrastive loss, learned unless fixed at construction.
    """

    def __init__(
        self,
        encoder: nn.Module,
        st_dim: int,
        text_dim: int,
        projection: str = "mlp",
        temperature: float | None = None,
    ):
        super().__init__()
        if projection not in PROJECTIONS:
            raise ConfigError(f"unknown projection {projection!r}", f"use one of {PROJECTIONS}")
        self.encoder = encoder
        self.projection = (
            nn.Linear(st_dim, text_dim)
            if projection == "linear"
            else nn.Sequential(
                nn.Linear(st_dim, text_dim), nn.GELU(), nn.Linear(text_dim, text_dim)
            )
        )
        scale = torch.tensor(math.log(1 / (0.07 if temperature is None else temperature)))
        if temperature is None:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The ST encoder's own embedding ``[B, N, D_st]``."""
        return self.encoder.embed(batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.projection(self.embed(batch)), dim=-1)


# ----------------------------------------------------------------------------- metrics
def contrastive_loss(
    st: torch.Tensor, text: torch.Tensor, groups: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE between ``st`` ``[P, D]`` and ``text`` ``[P, D]`` (both normalized).

    ``groups`` ``[P]``: pairs with the same id share a description; the target of
    each row is uniform over its group, so identical texts are not negatives.
    """
    logits = logit_scale.clamp(max=math.log(100)).exp() * st @ text.T
    same = (groups[:, None] == groups[None, :]).to(logits.dtype)
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def retrieval_accuracy(
    queries: torch.Tensor, keys: torch.Tensor, groups: np.ndarray, ks: tuple[int, ...] = (1, 5)
) -> dict[int, float]:
    """Share of queries whose ``k`` most cosine-similar keys include one of their group.

    Parameters
    ----------
    queries, keys : torch.Tensor ``[n, D]``
        Row ``i`` of both belongs to group ``groups[i]``.
    groups : array ``[n]``
    ks : tuple of int
    """
    sim = F.normalize(queries.double(), dim=-1) @ F.normalize(keys.double(), dim=-1).T
    g = torch.as_tensor(np.asarray(groups))
    top = sim.topk(min(max(ks), len(g)), dim=1).indices  # [n, kmax]
    hit = g[top] == g[:, None]
    return {k: float(hit[:, :k].any(1).double().mean()) for k in ks}


def retrieval_chance(groups: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Expected :func:`retrieval_accuracy` of a random ranking.

    A query whose group has ``m`` of the ``n`` items misses with probability
    ``C(n - m, k) / C(n, k) = prod_{j<k} (n - m - j) / (n - j)``.
    """
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    n, m = len(inverse), counts[inverse].astype(np.float64)
    out = {}
    for k in ks:
        j = np.arange(min(k, n))
        miss = np.prod(np.clip(n - m[:, None] - j, 0, None) / (n - j), axis=1)
        out[k] = float(np.mean(1.0 - miss))
    return out


def linear_cka(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Linear CKA (Kornblith et al., 2019) of representations ``x`` ``[n, p]`` and ``y`` ``[n, q]``.

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``,
    ``Yc``: 1 for identical representations, invariant to orthogonal transforms and
    isotropic scaling of either, 0 for orthogonal ones.
    """
    x = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x).double()
    y = torch.as_tensor(np.asarray(y) if isinstance(y, np.ndarray) else y).double()
    x, y = x - x.mean(0), y - y.mean(0)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    den = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / den) if den > 0 else 0.0


def cosine_matched_unmatched(
    st: torch.Tensor, text: torch.Tensor, groups: np.ndarray
) -> tuple[float, float]:
    """Mean cosine of matched pairs ``(st[i], text[i])`` and of pairs of different descriptions."""
    sim = F.normalize(st.double(), dim=-1) @ F.normalize(text.double(), dim=-1).T
    g = torch.as_tensor(np.asarray(groups))
    other = g[:, None] != g[None, :]
    unmatched = float(sim[other].mean()) if other.any() else float("nan")
    return float(sim.diagonal().mean()), unmatched


@dataclass
class AlignmentReport:
    """Alignment reached on held-out windows (see the module docstring).

    Retrieval is measured twice: against the descriptions in the wording used for
    training, and (``paraphrase_*``, description targets only) against the same
    descriptions in other words (:data:`llm_st.alignment.describe.PARAPHRASES`),
    which only a language space that places paraphrases together can match.
    Both use the same groups, so they share the chance levels.
    """

    text_encoder: str
    st_encoder: str
    targets: str
    steps: int
    seed: int
    train_pairs: int
    eval_pairs: int
    eval_texts: int
    st_to_text_top1: float
    st_to_text_top5: float
    text_to_st_top1: float
    text_to_st_top5: float
    paraphrase_st_to_text_top1: float | None
    paraphrase_st_to_text_top5: float | None
    paraphrase_text_to_st_top1: float | None
    paraphrase_text_to_st_top5: float | None
    chance_top1: float
    chance_top5: float
    matched_cosine: float
    unmatched_cosine: float
    cka: float
    cka_encoder: float
    final_loss: float
    temperature: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def format(self) -> str:
        """A small plain-text table."""

        def pair(a: float | None, b: float | None) -> str:
            return "-" if a is None or b is None else f"{a:.3f} / {b:.3f}"

        rows = [
            ("text encoder", self.text_encoder),
            ("ST encoder", f"{self.st_encoder} -> {self.targets}, {self.steps} steps"),
            ("held-out pairs", f"{self.eval_pairs} ({self.eval_texts} distinct texts)"),
            ("ST->text top-1 / top-5", pair(self.st_to_text_top1, self.st_to_text_top5)),
            ("text->ST top-1 / top-5", pair(self.text_to_st_top1, self.text_to_st_top5)),
            (
                "paraphrased ST->text top-1 / top-5",
                pair(self.paraphrase_st_to_text_top1, self.paraphrase_st_to_text_top5),
            ),
            (
                "paraphrased text->ST top-1 / top-5",
                pair(self.paraphrase_text_to_st_top1, self.paraphrase_text_to_st_top5),
            ),
            ("chance top-1 / top-5", pair(self.chance_top1, self.chance_top5)),
            ("cosine matched / unmatched", pair(self.matched_cosine, self.unmatched_cosine)),
            ("linear CKA (projected / encoder)", pair(self.cka, self.cka_encoder)),
            ("final loss / temperature", f"{self.final_loss:.3f} / {self.temperature:.4f}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# ----------------------------------------------------------------------------- training
def _build_encoder(
    encoder: str | nn.Module, data: STData, history: int, kwargs: dict[str, Any]
) -> tuple[nn.Module, str]:
    """The ST encoder and its name: ``"patch"``, a registered model name, or a module."""
    if isinstance(encoder, nn.Module):
        module, name = encoder, type(encoder).__name__
    elif encoder == "patch":
        module = PatchEncoder(data.num_nodes, data.num_channels, history, **kwargs)
        name = "patch"
    else:
        from llm_st.models.base import DataInfo
        from llm_st.models.registry import build_model

        module = build_model(encoder, DataInfo.from_data(data, history, 1), **kwargs)
        name = encoder
    if not callable(getattr(module, "embed", None)):
        raise ConfigError(
            f"ST encoder {name!r} has no embed(batch) -> [B, N, D] method",
            "use encoder='patch' or a model that implements embed",
        )
    return module, name


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def _embed_all(
    model: AlignedSTEncoder, ds: WindowDataset, device: torch.device, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected ``[W * N, D_text]`` and raw ``[W * N, D_st]`` ST embeddings of ``ds``'s windows."""
    proj, raw = [], []
    for b in range(0, len(ds), batch_size):
        batch = _to(ds[list(range(b, min(b + batch_size, len(ds))))], device)
        h = model.embed(batch)
        raw.append(h.reshape(-1, h.shape[-1]).float().cpu())
        z = F.normalize(model.projection(h), dim=-1)
        proj.append(z.reshape(-1, z.shape[-1]).float().cpu())
    return torch.cat(proj), torch.cat(raw)


def _targets(
    text_encoder: FrozenTextEncoder,
    desc: Descriptions,
    kind: str,
    prototype_source: str,
    wording: str = "standard",
    progress: bool = False,
) -> tuple[torch.Tensor, np.ndarray]:
    """Target embeddings ``[P, D_text]`` of the pairs of ``desc`` and their groups ``[P]``.

    Pairs with identical targets share a group; every distinct text is encoded once
    (and cached by the encoder).
    """
    if kind == "descriptions":
        texts = desc.texts if wording == "standard" else desc.render(wording)
        unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        emb = text_encoder.encode(unique.tolist(), progress)
        return emb[torch.as_tensor(inverse.reshape(-1))], inverse.reshape(-1)
    _, protos = text_prototypes(text_encoder, source=prototype_source)
    index = prototype_index(desc)  # [P, S], -1 where a slot has no phrase
    padded = torch.cat([protos, torch.zeros(1, protos.shape[1])])
    summed = padded[torch.as_tensor(index)].sum(1)  # -1 picks the zero row
    groups = np.unique(index, axis=0, return_inverse=True)[1].reshape(-1)
    return F.normalize(summed, dim=-1), groups


def _train(
    model: AlignedSTEncoder,
    ds: WindowDataset,
    targets: torch.Tensor,
    groups: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    desc: str,
    progress: bool,
) -> list[float]:
    """AdamW with cosine decay on random batches of windows; the loss of every step.

    ``targets`` ``[W, N, D_text]`` and ``groups`` ``[W, N]`` belong to the windows of ``ds``.
    """
    device = targets.device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng = np.random.default_rng(seed)
    B, N = min(batch_size, len(ds)), targets.shape[1]
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress):
        idx = np.sort(rng.choice(len(ds), B, replace=False))
        z = model(_to(ds[idx], device)).reshape(B * N, -1)
        t = targets[idx].reshape(B * N, -1)
        loss = contrastive_loss(z, t, groups[idx].reshape(-1), model.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def align(
    data: STData,
    text_encoder: str | FrozenTextEncoder = "minilm",
    encoder: str | nn.Module = "patch",
    *,
    history: int = 24,
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    holdout: float = 0.2,
    train_stride: int | None = None,
    eval_stride: int | None = None,
    max_eval_windows: int = 64,
    projection: str = "mlp",
    temperature: float | None = None,
    targets: str = "descriptions",
    prototype_source: str = "sentence",
    center_targets: bool = False,
    paraphrases: bool = True,
    channel: int | str = 0,
    slots: tuple[str, ...] = SLOTS,
    encoder_kwargs: dict[str, Any] | None = None,
    freeze_encoder: bool = False,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> tuple[AlignedSTEncoder, AlignmentReport]:
    """Train an ST encoder + projection against frozen text embeddings; report the alignment.

    Parameters
    ----------
    data : STData
        ``[T, N, C]`` series; the first ``1 - holdout`` of the rows train, the rest evaluate.
    text_encoder : "minilm", "untrained", a model directory, or FrozenTextEncoder
        The frozen language space (see :func:`text_encoder_from_spec`).
    encoder : "patch", a registered model name, or a module with ``embed(batch)``
        The ST encoder; ``encoder_kwargs`` go to its constructor.
    history : int
        Window length ``L`` (steps).
    steps, batch_size, lr, weight_decay, seed
        AdamW with cosine decay; ``batch_size`` windows (``batch_size * N`` pairs) a step.
    holdout : float
        Chronological share of the rows held out for the report.
    train_stride, eval_stride : int, optional
        Steps between window starts (default ``history // 4`` and ``history // 2``); at
        most ``max_eval_windows`` evenly spaced held-out windows are evaluated.
    projection : {"linear", "mlp"}
    temperature : float, optional
        Fixed softmax temperature; default learned (initialized at 0.07).
    targets : {"descriptions", "prototypes"}
        Embeddings of each pair's description, or the sum of its phrases' text
        prototypes (``prototype_source`` ``"sentence"`` or ``"tokens"``).
    center_targets : bool
        Subtract the mean training target and renormalize (train and held-out targets
        alike). Removes the direction all texts share, which dominates an untrained
        encoder's space.
    paraphrases : bool
        Also report retrieval against the held-out descriptions in other words
        (description targets only; encodes those texts too).
    channel, slots
        What the descriptions describe (:func:`describe_windows`).
    freeze_encoder : bool
        Train only the projection (e.g. for a forecaster trained beforehand).
    device : optional
        Default: the text encoder's device.

    Returns
    -------
    model : AlignedSTEncoder
        ``model(batch) -> [B, N, D_text]`` normalized, in the text space.
    report : AlignmentReport
    """
    if targets not in TARGETS:
        raise ConfigError(f"unknown alignment targets {targets!r}", f"use one of {TARGETS}")
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"holdout={holdout} is outside (0, 1)", "use e.g. 0.2")
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"steps={steps}, batch_size={batch_size}", "use positive integers")
    if targets == "prototypes" and not set(slots) & set(FIXED_SLOTS):
        raise ConfigError(
            "prototype targets need some fixed-vocabulary slots", f"use {FIXED_SLOTS}"
        )
    text_encoder = text_encoder_from_spec(text_encoder)
    device = torch.device(device) if device is not None else text_encoder.device
    T, N = data.num_steps, data.num_nodes
    border = int(round((1.0 - holdout) * T))
    scaler = make_scaler("standard", "node_channel")
    scaler.fit(data.values[:border], data.mask[:border])
    train_stride = train_stride or max(1, history // 4)
    train_index = WindowIndex(T, history, 1, train_stride, 0, border, history_in_split=True)
    eval_index = WindowIndex(
        T, history, 1, eval_stride or max(1, history // 2), border, T, history_in_split=True
    )
    keep = np.unique(np.linspace(0, len(eval_index) - 1, max_eval_windows).round().astype(int))
    eval_index.starts = eval_index.starts[keep]
    train_ds = WindowDataset(data, train_index, scaler)
    eval_ds = WindowDataset(data, eval_index, scaler)

    # --- frozen side: every distinct text is encoded once, before training
    train_desc, eval_desc = (
        describe_windows(data, idx.starts, history, channel, (0, border), slots)
        for idx in (train_index, eval_index)
    )
    encoded_before = text_encoder.num_encoded
    kw = dict(kind=targets, prototype_source=prototype_source, progress=progress)
    train_t, train_g = _targets(text_encoder, train_desc, **kw)
    eval_t, eval_g = _targets(text_encoder, eval_desc, **kw)
    para_t = None
    if paraphrases and targets == "descriptions":
        para_t, _ = _targets(text_encoder, eval_desc, wording="paraphrase", **kw)
    cached = text_encoder.cache is not None and text_encoder.cache_path is not None
    if cached and text_encoder.num_encoded > encoded_before:
        text_encoder.save_cache()
    if center_targets:
        mean = train_t.mean(0)
        train_t, eval_t = F.normalize(train_t - mean, dim=-1), F.normalize(eval_t - mean, dim=-1)
        para_t = None if para_t is None else F.normalize(para_t - mean, dim=-1)

    # --- trainable side
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        st, st_name = _build_encoder(encoder, data, history, dict(encoder_kwargs or {}))
        st = st.to(device)
        with torch.no_grad():
            probe = st.embed(_to(train_ds[[0]], device))
        if probe.ndim != 3 or probe.shape[1] != N:
            raise ConfigError(
                f"{st_name}.embed returned shape {tuple(probe.shape)}, expected [B, {N}, D]",
                "return one vector per node",
            )
        if freeze_encoder:
            st.requires_grad_(False)
        model = AlignedSTEncoder(
            st, probe.shape[-1], text_encoder.embedding_dim, projection, temperature
        ).to(device)
        losses = _train(
            model,
            train_ds,
            train_t.reshape(len(train_ds), N, -1).to(device),
            torch.as_tensor(train_g.reshape(len(train_ds), N), device=device),
            steps,
            batch_size,
            lr,
            weight_decay,
            seed,
            f"align ({text_encoder.name})",
            progress,
        )

    # --- report on the held-out windows
    z, raw = _embed_all(model, eval_ds, device, max(batch_size, 32))
    st_text, text_st = retrieval_accuracy(z, eval_t, eval_g), retrieval_accuracy(eval_t, z, eval_g)
    para_st_text = para_text_st = dict.fromkeys((1, 5))
    if para_t is not None:
        para_st_text = retrieval_accuracy(z, para_t, eval_g)
        para_text_st = retrieval_accuracy(para_t, z, eval_g)
    chance = retrieval_chance(eval_g)
    matched, unmatched = cosine_matched_unmatched(z, eval_t, eval_g)
    report = AlignmentReport(
        text_encoder=text_encoder.name,
        st_encoder=st_name,
        targets=targets,
        steps=steps,
        seed=seed,
        train_pairs=len(train_ds) * N,
        eval_pairs=len(z),
        eval_texts=int(len(np.unique(eval_g))),
        st_to_text_top1=st_text[1],
        st_to_text_top5=st_text[5],
        text_to_st_top1=text_st[1],
        text_to_st_top5=text_st[5],
        paraphrase_st_to_text_top1=para_st_text[1],
        paraphrase_st_to_text_top5=para_st_text[5],
        paraphrase_text_to_st_top1=para_text_st[1],
        paraphrase_text_to_st_top5=para_text_st[5],
        chance_top1=chance[1],
        chance_top5=chance[5],
        matched_cosine=matched,
        unmatched_cosine=unmatched,
        cka=linear_cka(z, eval_t),
        cka_encoder=linear_cka(raw, eval_t),
        final_loss=float(np.mean(losses[-max(1, steps // 10) :])),
        temperature=float(1.0 / model.logit_scale.detach().clamp(max=math.log(100)).exp()),
    )
    logger.info("alignment with %s:\n%s", text_encoder.name, report.format())
    return model, report


def run_alignment(
    spec: str,
    text_encoder: str = "minilm",
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    **kwargs: Any,
) -> tuple[AlignmentReport, Path | None]:
    """``llm-st align``: load ``spec``, :func:`align`, write ``out/alignment.json``.

    With ``out``, the text embeddings are cached in
    ``out/text_embeddings-<encoder>.safetensors`` (written when new texts were
    encoded), so a second run over the same data encodes nothing. ``kwargs`` go to
    :func:`align`. Returns the report and the path of the JSON file (``None``
    without ``out``).
    """
    from llm_st.data import load

    cache_path = None
    if out is not None:
        tag = hashlib.sha256(str(text_encoder).encode("utf-8")).hexdigest()[:12]
        cache_path = Path(out) / f"text_embeddings-{tag}.safetensors"
    encoder = text_encoder_from_spec(text_encoder, cache_path=cache_path)
    data = load(spec, data_dir=data_dir)
    _, report = align(data, encoder, **{"progress": True, **kwargs})
    path = None if out is None else report.save_json(Path(out) / "alignment.json")
    return report, path
