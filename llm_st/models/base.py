"""What every forecasting method in llm-st shares: the data it is built for and its call.

A method is a ``torch.nn.Module`` subclass of :class:`STModel`, built from a
:class:`DataInfo` (the static facts of the dataset and task) and its own
hyper-parameters, and called on a batch dict from
:class:`llm_st.data.windows.WindowDataset`:

``model(batch) -> [B, H, N, C]`` forecast on the *scaled* scale, from
``batch["x"]`` ``[B, L, N, C]`` (scaled history, missing = 0), ``batch["x_mask"]``,
``batch["x_time"]`` / ``batch["y_time"]`` ``[B, L|H, 2]`` (time of day in [0, 1),
day of week). The engine inverse-transforms for metrics on the original scale.

Methods that learn nothing by gradient (``learned = False``) or that need
statistics of the training rows (VAR, historical average) implement
:meth:`STModel.fit_data`, which the engine calls once with the training split.

Methods built on a pretrained model declare it in :attr:`STModel.default_backbone` (a
:class:`~llm_st.backbones.spec.BackboneSpec`) and take it as their ``backbone`` argument,
which a recipe writes as the block ``model.backbone``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from llm_st.backbones.spec import BackboneSpec
from llm_st.data.container import STData
from llm_st.errors import ConfigError


@dataclass
class DataInfo:
    """Static facts a method may be built from."""

    num_nodes: int
    num_channels: int
    history: int
    horizon: int
    steps_per_day: int | None = None
    adjacency: np.ndarray | None = None  # dense [N, N] float32, or None
    coords: np.ndarray | None = None
    node_ids: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    description: str = ""
    name: str = "data"

    @classmethod
    def from_data(cls, data: STData, history: int, horizon: int) -> DataInfo:
        return cls(
            num_nodes=data.num_nodes,
            num_channels=data.num_channels,
            history=history,
            horizon=horizon,
            steps_per_day=data.steps_per_day(),
            adjacency=None if data.adjacency is None else data.adjacency.to_dense(),
            coords=data.coords,
            node_ids=list(data.node_ids),
            channels=list(data.channels),
            description=data.description,
            name=data.name,
        )


class STModel(nn.Module):
    """Base class: ``forward(batch) -> [B, H, N, C]`` on the scaled scale.

    Attributes
    ----------
    learned : bool
        Whether the method trains by gradient.
    default_backbone : BackboneSpec or None
        The pretrained backbone of the method's paper, completed by what a recipe's
        ``model.backbone`` block gives (:meth:`complete_backbone`); None for methods
        without a backbone, which refuse such a block.
    backbone_modes : tuple of str
        The modes of :data:`~llm_st.backbones.ablations.BACKBONE_MODES` the method's
        backbone may be in (all four: the method runs Tan et al.'s ablations).
    """

    learned: bool = True
    default_backbone: ClassVar[BackboneSpec | None] = None
    backbone_modes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, info: DataInfo):
        super().__init__()
        self.info = info

    @classmethod
    def complete_backbone(cls, value: BackboneSpec | Mapping[str, Any] | str) -> BackboneSpec:
        """The method's backbone: ``value`` with the fields it does not give taken from
        :attr:`default_backbone` (a spec is taken as it is; see
        :meth:`BackboneSpec.from_value <llm_st.backbones.spec.BackboneSpec.from_value>`).

        Raises
        ------
        ConfigError
            A bad spec, or a mode outside :attr:`backbone_modes`.
        """
        spec = BackboneSpec.from_value(value, cls.default_backbone)
        if spec.mode not in cls.backbone_modes:
            raise ConfigError(
                f"{cls.__name__} cannot put its backbone in mode {spec.mode!r}",
                f"use backbone mode {' or '.join(cls.backbone_modes)}",
            )
        return spec

    def fit_data(self, train: STData, scaler: Any) -> None:  # noqa: B027 - optional hook
        """Called once with the training rows (original scale) and the fitted scaler."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError
