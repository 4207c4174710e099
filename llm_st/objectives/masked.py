"""Masked patch modelling: reconstruct hidden patches of the history from the visible ones.

STEP's pre-training (Shao, Zhang, Wang and Xu, "Pre-training Enhanced
Spatial-temporal Graph Neural Network for Multivariate Time Series Forecasting",
KDD 2022), a masked autoencoder (He et al., CVPR 2022) over patches of each
series. Two styles:

- ``"step"`` (default): a ratio of the patches of every series (0.75, as STEP) is
  hidden at random; the model's patch encoder sees only the visible patches (with
  their own positional embeddings); the objective puts a learned mask token at the
  hidden positions, adds its own positional embedding, runs a light Transformer
  decoder (``decoder_layers``, 1 as STEP) and a linear head ``d_model -> patch_len``.
- ``"patchtst"``: PatchTST's self-supervised variant (Nie et al., ICLR 2023): hidden
  patches are set to zero, the encoder sees all patches, a linear head reconstructs
  each patch.

The target is the instance-normalized history (RevIN statistics without its
learnable affine map; the raw scaled history for models without RevIN). The loss
is the MSE over hidden patches only, and within them over observed entries
(``x_mask``) only.

``unit="point"`` (``"patchtst"`` style only) hides single entries instead of whole
patches: every entry with probability ``mask_ratio``, GPT4TS's imputation training
(Zhou et al., NeurIPS 2023: random points of the window hidden at a mask rate, the
loss on the hidden points). Hidden entries are left out of the instance statistics
and set to 0 in the normalized input; the loss is the MSE over hidden observed
entries.

:meth:`MaskedModelling.reconstruct` (``"patchtst"`` style) rebuilds every entry of a
window from its observed ones (``x_mask``): imputation at test time.

Models need a patch encoder: :class:`llm_st.models.patchtst.PatchForecaster`'s
``patch_input``, ``patch_tokens``, ``encode`` and ``to_patches`` (``patchtst``,
``pattn``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo
from llm_st.objectives.base import Objective
from llm_st.objectives.registry import register_objective
from llm_st.tokens.patching import unpatchify
from llm_st.tokens.revin import InstanceStats, instance_norm

PATCH_ENCODER = ("patch_input", "patch_tokens", "encode", "to_patches")
STYLES = ("step", "patchtst")
UNITS = ("patch", "point")


def models_with(attrs: tuple[str, ...]) -> list[str]:
    """Registered model names whose class has every attribute in ``attrs``."""
    from llm_st.models.registry import get_model_class, list_models

    return [name for name in list_models() if all(hasattr(get_model_class(name), a) for a in attrs)]


def num_masked(num_patches: int, ratio: float) -> int:
    """Patches hidden per series: ``round(P * ratio)`` kept within ``[1, P - 1]``."""
    return min(max(round(num_patches * ratio), 1), num_patches - 1)


def random_patch_mask(
    num_series: int,
    num_patches: int,
    ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[S, P]`` bool, True on hidden patches: exactly :func:`num_masked` per row, uniformly."""
    scores = torch.rand(num_series, num_patches, device=device, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < num_masked(num_patches, ratio)


def masked_patch_loss(
    recon: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor, observed: torch.Tensor
) -> torch.Tensor:
    """Mean squared error over hidden patches and observed entries.

    Parameters
    ----------
    recon, target : torch.Tensor ``[S, P, patch_len]``
    hidden : torch.Tensor ``[S, P]`` bool, the patches that were hidden from the encoder
    observed : torch.Tensor ``[S, P, patch_len]`` bool, entries observed in the history

    Returns
    -------
    0-d tensor; 0 (with a graph) when nothing counts.
    """
    weight = hidden.unsqueeze(-1) & observed
    err = torch.where(weight, (recon - target).square(), torch.zeros_like(recon))
    return err.sum() / weight.sum().clamp(min=1)


@register_objective("masked")
class MaskedModelling(Objective):
    """Masked patch reconstruction (module docstring).

    Parameters
    ----------
    info : DataInfo, optional
    model : PatchForecaster
        Sizes the objective's parts (``d_model``, ``patch_len``, ``num_patches``).
    mask_ratio : float
        Share of patches hidden per series (0.75).
    style : {"step", "patchtst"}
    unit : {"patch", "point"}
        What is hidden: whole patches (``round(P * mask_ratio)`` per series) or single
        entries (each with probability ``mask_ratio``; ``"patchtst"`` style only).
    decoder_layers, decoder_heads : int
        Transformer decoder of the ``"step"`` style (1 layer, 4 heads, feed-forward
        ``4 * d_model``).
    """

    def __init__(
        self,
        info: DataInfo | None = None,
        model: nn.Module | None = None,
        mask_ratio: float = 0.75,
        style: str = "step",
        decoder_layers: int = 1,
        decoder_heads: int = 4,
        unit: str = "patch",
    ):
        super().__init__(info, model)
        if model is None or not all(hasattr(model, a) for a in PATCH_ENCODER):
            raise ConfigError(
                f"masked modelling needs a model with a patch encoder, got "
                f"{getattr(model, 'registry_name', type(model).__name__)!r}",
                f"use one of: {', '.join(models_with(PATCH_ENCODER))}",
            )
        if not 0 < mask_ratio < 1:
            raise ConfigError(
                f"mask_ratio must be in (0, 1), got {mask_ratio}", "use e.g. 0.75 (STEP)"
            )
        if style not in STYLES:
            raise ConfigError(f"unknown masked style {style!r}", f"use one of {STYLES}")
        if unit not in UNITS:
            raise ConfigError(f"unknown masked unit {unit!r}", f"use one of {UNITS}")
        if unit == "point" and style != "patchtst":
            raise ConfigError(
                "masked unit 'point' hides single entries, which only the 'patchtst' style "
                "(the encoder sees every patch) can take",
                "set objective params style: patchtst",
            )
        if model.num_patches < 2:
            raise ConfigError(
                f"masked modelling needs >= 2 patches per series; patch_len={model.patch_len}, "
                f"stride={model.stride} cut {model.num_patches} from the history",
                "lower model.patch_len / model.stride or raise data.history",
            )
        d = model.d_model
        self.mask_ratio, self.style, self.unit = mask_ratio, style, unit
        self.head = nn.Linear(d, model.patch_len)
        if style == "step":
            if d % decoder_heads:
                raise ConfigError(
                    f"decoder_heads={decoder_heads} does not divide the model's d_model={d}",
                    "set objective decoder_heads to a divisor of d_model",
                )
            self.mask_token = nn.Parameter(torch.empty(d).normal_(std=0.02))
            self.decoder_pos = nn.Parameter(torch.empty(model.num_patches, d).uniform_(-0.02, 0.02))
            layer = nn.TransformerEncoderLayer(
                d, decoder_heads, 4 * d, dropout=0.1, batch_first=True
            )
            self.decoder = nn.TransformerEncoder(layer, decoder_layers, enable_nested_tensor=False)

    def _reconstruct(
        self, model: nn.Module, patches: torch.Tensor, hidden: torch.Tensor
    ) -> torch.Tensor:
        """``[S, P, patch_len]`` reconstruction of all patches from the visible ones."""
        S, P, _ = patches.shape
        if self.style == "patchtst":
            visible_only = torch.where(hidden.unsqueeze(-1), torch.zeros_like(patches), patches)
            return self.head(model.encode(model.patch_tokens(visible_only)))
        # visible patches first, each row in its original order (stable sort on the flag)
        order = hidden.to(torch.int8).argsort(dim=1, stable=True)
        visible_idx = order[:, : P - num_masked(P, self.mask_ratio)]  # [S, V]
        visible = torch.gather(
            patches, 1, visible_idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
        )
        encoded = model.encode(model.patch_tokens(visible, visible_idx))  # [S, V, D]
        d = encoded.shape[-1]
        full = self.mask_token.to(encoded.dtype).expand(S, P, d)
        full = full.scatter(1, visible_idx.unsqueeze(-1).expand(-1, -1, d), encoded)
        return self.head(self.decoder(full + self.decoder_pos))

    # ---- single entries (unit "point", and reconstruction at test time)
    def _visible_pass(
        self, model: nn.Module, batch: dict[str, torch.Tensor], visible: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, InstanceStats | None]:
        """Reconstruct every entry of the history from the ``visible`` ones.

        Returns ``(recon, target, hidden, stats)``: ``recon`` and ``target`` ``[S, P,
        patch_len]`` in the instance-normalized space of the visible entries (without
        RevIN's affine map), ``hidden`` ``[S, P, patch_len]`` bool (not visible), and
        ``stats`` the instance statistics (None for a model without RevIN).
        """
        x = batch["x"]
        B, L = x.shape[:2]
        vis_batch = {**batch, "x": torch.where(visible, x, torch.zeros_like(x)), "x_mask": visible}
        patches = model.patch_input(vis_batch)  # RevIN statistics of the visible entries
        hidden = model.to_patches((~visible).reshape(B, L, -1).to(x.dtype)) > 0.5
        patches = torch.where(hidden, torch.zeros_like(patches), patches)
        recon = self.head(model.encode(model.patch_tokens(patches)))
        z = x.reshape(B, L, -1)
        revin = getattr(model, "revin", None)
        stats = None
        if revin is not None:
            _, stats = instance_norm(z, dim=1, mask=visible.reshape(B, L, -1), eps=revin.eps)
            z = (z - stats.mean) / stats.std
        return recon, model.to_patches(z).detach(), hidden, stats

    def _point_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], observed: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        x = batch["x"]
        hide = torch.rand(x.shape, device=x.device) < self.mask_ratio
        recon, target, hidden, _ = self._visible_pass(model, batch, observed & ~hide)
        B, L = x.shape[:2]
        counted = hidden & (model.to_patches(observed.reshape(B, L, -1).to(x.dtype)) > 0.5)
        everywhere = torch.ones(recon.shape[:2], dtype=torch.bool, device=recon.device)
        loss = masked_patch_loss(recon, target, everywhere, counted)
        ratio = (hide & observed).sum() / observed.sum().clamp(min=1)
        return loss, {"masked_mse": loss.detach(), "hidden_ratio": ratio.detach().float()}

    @torch.no_grad()
    def reconstruct(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, L, N, C]``: every entry of the history rebuilt from the observed ones
        (``x_mask``), on the scale of ``batch["x"]`` (imputation; ``"patchtst"`` style).

        Entries that are not observed are set to 0 in the normalized input, as hidden
        ones in training; the reconstructed patches are put back together by averaging
        where they overlap (:func:`~llm_st.tokens.patching.unpatchify`) and
        de-normalized with the statistics of the observed entries. Only the observed
        entries of ``batch`` are read.
        """
        if self.style != "patchtst":
            raise ConfigError(
                "reconstruction of arbitrary entries needs the 'patchtst' style (the 'step' "
                "style encodes a fixed number of visible patches)",
                "train the masked objective with style: patchtst",
            )
        x = batch["x"]
        B, L, N, C = x.shape
        mask = batch.get("x_mask")
        visible = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
        recon, _, _, stats = self._visible_pass(model, batch, visible)
        P, patch_len = recon.shape[1:]
        covered = (P - 1) * model.stride + patch_len
        series = unpatchify(recon.reshape(B, N * C, P, patch_len), model.stride, min(L, covered))
        if series.shape[-1] < L:  # steps no patch holds (padding "none"): the mean
            series = nn.functional.pad(series, (0, L - series.shape[-1]))
        z = series.transpose(1, 2)  # [B, L, N*C]
        if stats is not None:
            z = z * stats.std + stats.mean
        return z.reshape(B, L, N, C)

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.unit == "point":
            x, mask = batch["x"], batch.get("x_mask")
            observed = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
            return self._point_loss(model, batch, observed)
        patches = model.patch_input(batch)  # [S, P, patch_len], model's own input pipeline
        target = model.patch_input(batch, affine=False).detach()
        x = batch["x"]
        mask = batch.get("x_mask")
        mask = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
        observed = model.to_patches(mask.reshape(x.shape[0], x.shape[1], -1).to(x.dtype)) > 0.5
        hidden = random_patch_mask(
            patches.shape[0], patches.shape[1], self.mask_ratio, patches.device
        )
        recon = self._reconstruct(model, patches, hidden)
        loss = masked_patch_loss(recon, target, hidden, observed)
        return loss, {"masked_mse": loss.detach(), "hidden_ratio": hidden.float().mean().detach()}
