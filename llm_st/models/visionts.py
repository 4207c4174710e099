"""VisionTS: a frozen visual masked autoencoder forecasts series folded into images.

Chen et al., 2024, "VisionTS: Visual Masked Autoencoders Are Free-Lunch Zero-Shot
Time Series Forecasters". Each (node, channel) series is handled on its own
(channel independence):

1. instance-normalize the history (masked mean and standard deviation over the
   lookback) and multiply by ``norm_const`` (0.4) so the values sit in the pixel
   range the MAE saw in ImageNet;
2. fold it by the period ``P`` into a ``[P, L / P]`` grid, render the grid into the
   left patch columns of an ``S x S`` grey image, ImageNet-normalized
   (:func:`llm_st.tokens.imaging.series_to_image`);
3. run the Hugging Face ``ViTMAEForPreTraining`` with exactly the context patches
   visible: the ``noise`` that ``random_masking`` argsorts ranks the context patches
   first and ``config.mask_ratio`` is set so that ``int(num_patches * (1 - ratio))``
   equals their number;
4. unpatchify the decoder's pixels, read the masked columns back as the forecast
   (:func:`llm_st.tokens.imaging.image_to_series`) and de-normalize.

Shapes: ``batch["x"]`` ``[B, L, N, C]`` (scaled) -> ``[B, H, N, C]`` (scaled); the MAE
sees ``B * N * C`` images ``[3, S, S]``, in chunks of ``image_batch_size``.

Backbones (the ``source`` of the backbone spec, resolved as every backbone is, by
:func:`llm_st.backbones.hub.resolve_source`): a local directory of a pretrained
``ViTMAEForPreTraining`` with its decoder, e.g. ``facebook/vit-mae-base`` (converted from
MAE's "visualize" checkpoint, trained without ``norm_pix_loss``: the weights VisionTS
uses) downloaded with ``hf download facebook/vit-mae-base --local-dir DIR``; a hub id,
which loads from the local Hugging Face cache or the hub; or ``"tiny-vit-mae"``, a tiny
random MAE for tests. Images are rendered at the model's own ``image_size``, so the
position embeddings are used as trained (no ``interpolate_pos_encoding``). Checkpoints
trained with ``norm_pix_loss`` are refused: their decoder predicts each patch's pixels
normalized by that patch's own mean and variance, which for a masked patch are
unknown, so the level and scale of the forecast cannot be recovered.

Fine-tuning (the backbone's ``freeze: layernorm``) trains only the weights and biases of
the LayerNorms of encoder and decoder, as VisionTS's ``finetune_type="ln"``; everything
else stays frozen. ``freeze: frozen`` (the default) is the zero-shot model (no trainable
parameters). The MAE is used whole and pretrained: no other policy, no truncation and no
ablation mode applies to it.

Grid data (``STData.from_grid``, nodes = cells) are forecast cell by cell like any
other nodes. Feeding the grid *frames* to the MAE as images is not implemented
because it is not a forecaster: an image MAE has no time axis, so a frame ``[H, W]``
given to it can only be inpainted in space, never continued in time, and tiling past
frames beside a masked future tile asks it to extrapolate motion across tiles, which
nothing in its ImageNet training teaches. VisionTS's forecasting power comes from the
fold, which turns the *temporal* regularity of one series into a spatial texture the
MAE can continue; that is what this model does for every cell.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from llm_st.backbones.frozen import read_config
from llm_st.backbones.hub import _dtype, _offline, resolve_source
from llm_st.backbones.spec import BackboneSpec
from llm_st.backbones.tiny import tiny_mae_config as tiny_mae_config  # re-exported
from llm_st.data.container import STData
from llm_st.errors import ConfigError, ModelLoadError
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import register_model
from llm_st.tokens.imaging import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageLayout,
    Interpolation,
    default_period,
    find_period,
    image_layout,
    image_to_series,
    series_to_image,
)
from llm_st.tokens.revin import instance_denorm, instance_norm

if TYPE_CHECKING:  # transformers is imported when a model is built, not when the registry loads
    from transformers import ViTMAEForPreTraining

logger = logging.getLogger("llm_st")

DEFAULT_MAE = "facebook/vit-mae-base"
FREEZE_POLICIES = ("frozen", "layernorm")
"""The backbone policies VisionTS takes: zero-shot, or its LayerNorms tuned."""


def _pixel_stats(directory: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``image_mean`` / ``image_std`` of the directory's image processor, else ImageNet's."""
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return IMAGENET_MEAN, IMAGENET_STD
    config = json.loads(path.read_text())
    mean, std = config.get("image_mean", IMAGENET_MEAN), config.get("image_std", IMAGENET_STD)
    return tuple(mean), tuple(std)


def load_mae(
    backbone: str | Path, dtype: str | None = None, trust_remote_code: bool = False
) -> tuple[ViTMAEForPreTraining, tuple[float, ...], tuple[float, ...]]:
    """Load a ViT-MAE with its decoder and the pixel mean / std its inputs are normalized with.

    Parameters
    ----------
    backbone : str or Path
        ``"tiny-vit-mae"`` (random weights from :func:`tiny_mae_config`, seed 0, built once
        into the tiny-model cache), a local directory written by ``save_pretrained`` /
        ``hf download``, or a hub id (from the local cache when offline), resolved by
        :func:`~llm_st.backbones.hub.resolve_source`.
    dtype : str or None
        Precision of the weights (``"bfloat16"``, ...; None: the checkpoint's).
    trust_remote_code : bool
        Run model code shipped with a hub repository.

    Raises
    ------
    ModelLoadError
        The directory is missing, is not a ViT-MAE, lacks the decoder weights, was
        trained with ``norm_pix_loss``, or the hub id cannot be fetched.
    """
    from transformers import ViTMAEForPreTraining

    name = str(backbone)
    config = read_config(backbone, trust_remote_code)
    if config.model_type != "vit_mae":
        raise ModelLoadError(
            f"{name!r} is a {config.model_type!r} model, not a ViT-MAE",
            f"pass a ViTMAEForPreTraining checkpoint such as {DEFAULT_MAE}",
        )
    source, local = resolve_source(backbone)
    try:
        model, info = ViTMAEForPreTraining.from_pretrained(
            source,
            local_files_only=local or _offline(),
            output_loading_info=True,
            dtype=_dtype(dtype),
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load the MAE weights of {name!r} ({' '.join(str(exc).split())[:200]})",
            "pass a directory holding the config.json and weights that save_pretrained writes",
        ) from exc
    missing = [k for k in info["missing_keys"] if k.startswith("decoder.")]
    if missing:
        raise ModelLoadError(
            f"{name!r} has no MAE decoder weights ({len(missing)} missing, e.g. {missing[0]})",
            "VisionTS reconstructs pixels with the pretraining decoder: save or download "
            f"the full ViTMAEForPreTraining (e.g. {DEFAULT_MAE}), not a ViTMAEModel",
        )
    mean, std = _pixel_stats(Path(source)) if local else (IMAGENET_MEAN, IMAGENET_STD)
    config = model.config
    if config.norm_pix_loss:
        raise ModelLoadError(
            f"{name!r} was trained with norm_pix_loss: it predicts each masked patch "
            "normalized by that patch's unknown mean and variance, so no forecast level "
            "can be read from it",
            f"use a checkpoint trained on raw pixels, such as {DEFAULT_MAE}",
        )
    if isinstance(config.image_size, (list, tuple)) and len(set(config.image_size)) > 1:
        raise ModelLoadError(
            f"{name!r} takes non-square images {config.image_size}",
            "use a square ViT-MAE (VisionTS renders square images)",
        )
    if len(mean) != config.num_channels or len(std) != config.num_channels:
        raise ModelLoadError(
            f"{name!r} has {config.num_channels} image channels but {len(mean)} pixel means",
            "give the directory a preprocessor_config.json with one image_mean/image_std "
            "per channel",
        )
    return model, tuple(float(m) for m in mean), tuple(float(s) for s in std)


@register_model("visionts")
class VisionTS(STModel):
    """VisionTS forecaster around a frozen (or LayerNorm-tuned) ViT-MAE.

    Parameters
    ----------
    info : DataInfo
    backbone : BackboneSpec, mapping or str
        The MAE (:class:`~llm_st.backbones.spec.BackboneSpec`; fields not given are
        :attr:`default_backbone`'s): ``source`` a local directory of a
        ``ViTMAEForPreTraining``, a hub id or ``"tiny-vit-mae"`` (see :func:`load_mae`;
        default ``facebook/vit-mae-base``); ``freeze`` ``"frozen"`` (zero-shot, nothing
        trainable, the default) or ``"layernorm"`` (only the LayerNorm weights and biases
        of the MAE train: VisionTS's fine-tuning); ``dtype`` and ``trust_remote_code`` as
        for every backbone. The MAE is used whole (no ``num_layers``), pretrained.
    period : int, "auto" or None
        Fold period ``P`` in steps. ``None``: the daily period of the data when the
        history holds at least two days, else 1 (no folding; the series is one image
        row). ``"auto"``: detected from the training split by :func:`find_period` in
        :meth:`fit_data` among ``2..history // 2``.
    norm_const : float
        The normalized history is ``norm_const`` times its z-score (VisionTS: 0.4).
    align_const : float
        Share of its proportional width the context gets in the image, in (0, 1]
        (VisionTS: 0.4); see :func:`llm_st.tokens.imaging.image_layout`.
    interpolation : {"bilinear", "bicubic", "nearest"}
        Resizing between period grid and pixels, both ways.
    image_batch_size : int
        Images per MAE call (``B * N * C`` images per batch are split into chunks).
    """

    default_backbone = BackboneSpec(source=DEFAULT_MAE)
    backbone_modes = ("pretrained",)

    def __init__(
        self,
        info: DataInfo,
        backbone: BackboneSpec | Mapping[str, Any] | str = default_backbone,
        period: int | Literal["auto"] | None = None,
        norm_const: float = 0.4,
        align_const: float = 0.4,
        interpolation: Interpolation = "bilinear",
        image_batch_size: int = 512,
    ):
        super().__init__(info)
        spec = self.backbone = self.complete_backbone(backbone)
        if spec.freeze not in FREEZE_POLICIES or spec.num_layers is not None:
            raise ConfigError(
                f"VisionTS uses its MAE whole with freeze frozen or layernorm, not "
                f"num_layers={spec.num_layers}, freeze={spec.freeze!r}",
                "set backbone.freeze to frozen (zero-shot) or layernorm, num_layers to null",
            )
        if norm_const <= 0:
            raise ConfigError(f"norm_const must be positive, got {norm_const}", "VisionTS uses 0.4")
        if image_batch_size < 1:
            raise ConfigError(
                f"image_batch_size must be >= 1, got {image_batch_size}", "use e.g. 512"
            )
        if period == "auto":
            self.period: int | None = None
        elif period is None:
            self.period = default_period(info.steps_per_day, info.history)
        elif isinstance(period, int) and 1 <= period <= info.history:
            self.period = period
        else:
            raise ConfigError(
                f"period {period!r} must be 'auto', None or an integer in 1..history "
                f"({info.history})",
                "give a period the history holds at least once",
            )
        self.norm_const, self.align_const = float(norm_const), float(align_const)
        self.interpolation, self.image_batch_size = interpolation, image_batch_size
        self.learned = spec.freeze != "frozen"

        self.mae, self.pixel_mean, self.pixel_std = load_mae(
            spec.source, spec.dtype, spec.trust_remote_code
        )
        self.mae.requires_grad_(False)
        if spec.freeze == "layernorm":
            for module in self.mae.modules():
                if isinstance(module, nn.LayerNorm):
                    module.requires_grad_(True)
        if self.period is not None:
            self._log_layout(self.layout(info.history))

    # ------------------------------------------------------------------ geometry
    def layout(self, context_len: int) -> ImageLayout:
        """The image layout for a history of ``context_len`` steps and this model's horizon."""
        if self.period is None:
            raise ConfigError(
                "VisionTS with period='auto' has not seen the training data yet",
                "call fit_data(train, scaler) first (the engine does) or give an integer period",
            )
        config = self.mae.config
        size = config.image_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        return image_layout(
            context_len,
            self.info.horizon,
            self.period,
            int(size),
            int(config.patch_size),
            self.align_const,
            self.pixel_mean,
            self.pixel_std,
            self.interpolation,
        )

    def _log_layout(self, layout: ImageLayout) -> None:
        logger.info(
            "VisionTS: period %d, %d context column(s) in %d of %d patch columns, %d masked",
            layout.period,
            layout.context_cols,
            layout.context_patches,
            layout.patches_per_side,
            layout.patches_per_side - layout.context_patches,
        )

    def fit_data(self, train: STData, scaler: Any) -> None:
        """With ``period="auto"``: detect the period from the scaled training rows."""
        if self.period is not None:
            return
        values = np.asarray(scaler.transform(train.values), np.float32)
        observed = train.mask
        means = np.where(observed, values, 0).sum(0) / np.maximum(observed.sum(0), 1)
        filled = np.where(observed, values, means[None])  # gaps at the series mean add no power
        series = np.moveaxis(filled, 0, -1)  # [N, C, T]
        self.period = find_period(series, candidates=range(2, self.info.history // 2 + 1))
        self._log_layout(self.layout(self.info.history))

    # ------------------------------------------------------------------ model
    def reconstruct(
        self, images: torch.Tensor, layout: ImageLayout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MAE reconstruction with exactly the context patches visible.

        Parameters
        ----------
        images : torch.Tensor ``[B, 3, S, S]`` normalized pixels
        layout : ImageLayout

        Returns
        -------
        pixels : torch.Tensor ``[B, 3, S, S]``
            The decoder's prediction of every patch (visible ones included), unpatchified.
        kept : torch.Tensor ``[B, num_patches]`` bool
            The patches the MAE encoder saw (its ``mask == 0``), row-major.
        """
        visible = layout.visible_patches(images.device)
        num, keep = layout.num_patches, int(visible.sum())
        # random_masking keeps the int(num * (1 - mask_ratio)) patches of smallest noise; the
        # half-patch margin keeps float rounding from dropping one
        self.mae.vit.embeddings.config.mask_ratio = 1.0 - (keep + 0.5) / num
        order = torch.arange(num, device=images.device, dtype=images.dtype) / (2 * num)
        noise = ((~visible).to(images.dtype) + order).expand(images.shape[0], -1)
        out = self.mae(pixel_values=images, noise=noise)
        return self.mae.unpatchify(out.logits), out.mask == 0

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``batch["x"]`` ``[B, L, N, C]`` -> forecast ``[B, H, N, C]``, same (scaled) scale."""
        x = batch["x"]
        B, L, N, C = x.shape
        H = self.info.horizon
        layout = self.layout(L)
        normed, stats = instance_norm(x, dim=1, mask=batch.get("x_mask"))
        dtype = next(self.mae.parameters()).dtype
        series = (normed * self.norm_const).permute(0, 2, 3, 1).reshape(B * N * C, L).to(dtype)
        forecasts = []
        for chunk in series.split(self.image_batch_size):
            images, _ = series_to_image(
                chunk,
                H,
                layout.period,
                layout.image_size,
                layout.patch_size,
                self.align_const,
                layout.pixel_mean,
                layout.pixel_std,
                layout.interpolation,
            )
            pixels, _ = self.reconstruct(images, layout)
            forecasts.append(image_to_series(pixels, layout)[:, L:])
        y = torch.cat(forecasts).to(x.dtype).reshape(B, N, C, H).permute(0, 3, 1, 2)
        return instance_denorm(y / self.norm_const, stats)
