"""Conditional denoising diffusion of the future given the history (probabilistic forecasts).

DDPM (Ho, Jain and Abbeel, NeurIPS 2020) of the scaled targets ``y_scaled``
``[B, H, N, C]``, conditioned on the history as in conditional score-based
forecasting: CSDI (Tashiro, Song, Song and Ermon, NeurIPS 2021) and TimeGrad
(Rasul et al., ICML 2021).

- Forward process ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` with a
  ``"cosine"`` (Nichol and Dhariwal, ICML 2021; default), ``"linear"`` or ``"quad"``
  (CSDI) beta schedule over ``steps`` (50) steps; ``beta_start``/``beta_end``
  (1e-4 / 0.5, CSDI's) set the range of the last two and ``beta_end`` caps the cosine.
- Denoiser ``eps_theta(x_t, t, h)`` owned by the objective: per ``(node, channel)``
  an MLP over the ``H`` horizon values, with a sinusoidal embedding of ``t``, a
  learned channel embedding and the node's history encoding ``h`` ``[B, N, D]``
  added to its input, ``layers`` residual blocks.
- History encoding: a small MLP of the objective over each node's flattened history
  and mask, concatenated with ``model.embed(batch)`` when the model has one (its
  parameters are then trained by this loss too). The objective's own encoder is kept
  beside the model's because embeddings of RevIN models (PatchTST, PAttn) are free of
  the window's level and scale, which the forecast on the scaled scale needs.
  ``condition="model"`` or ``"own"`` uses only one of the two.
- Loss: MSE between ``eps_theta`` and the true noise over observed targets
  (``y_mask``), ``t`` uniform per window.
- :meth:`Diffusion.sample`: ancestral sampling with the posterior variance
  ``beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t``, ``[S, B, H, N, C]`` on the
  scaled scale; :meth:`Diffusion.point_forecast` is the median of the samples and
  :meth:`Diffusion.crps` their CRPS (:func:`llm_st.metrics.crps_from_samples`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from llm_st.errors import ConfigError
from llm_st.metrics import crps_from_samples
from llm_st.models.base import DataInfo
from llm_st.objectives.base import Objective
from llm_st.objectives.masked import models_with
from llm_st.objectives.registry import register_objective

SCHEDULES = ("cosine", "linear", "quad")


def beta_schedule(
    kind: str, steps: int, beta_start: float = 1e-4, beta_end: float = 0.5
) -> torch.Tensor:
    """``[steps]`` float64 noise variances ``beta_t``.

    ``"cosine"``: ``abar(t) = f(t) / f(0)``, ``f(t) = cos^2((t/T + 0.008) / 1.008 * pi/2)``,
    ``beta_t = 1 - abar(t+1) / abar(t)`` capped at ``beta_end`` (``beta_start`` unused);
    ``"linear"``: evenly spaced from ``beta_start`` to ``beta_end``; ``"quad"``: evenly
    spaced square roots, squared (CSDI). ``beta_end`` is thus always the largest beta.
    Nichol and Dhariwal cap the cosine betas at 0.999 for thousands of steps; with tens
    of steps the last betas approach 1 and ancestral sampling divides the denoiser's
    error by ``sqrt(1 - beta_t)``, so the default cap here is CSDI's 0.5.
    """
    if steps < 1:
        raise ConfigError(f"diffusion steps must be >= 1, got {steps}", "use e.g. 50")
    if kind == "cosine":
        s = 0.008
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=beta_end)
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if kind == "quad":
        return torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    raise ConfigError(f"unknown beta schedule {kind!r}", f"use one of {SCHEDULES}")


def q_sample(x0: torch.Tensor, alpha_bar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A draw of ``q(x_t | x_0)``: ``sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise`` (broadcasting)."""
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def step_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``[B, dim]`` sinusoidal embedding of integer steps ``t`` ``[B]`` (Transformer / DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=-1)
    return nn.functional.pad(emb, (0, dim - 2 * half))


class _Block(nn.Module):
    """``h + W2 silu(W1 norm(h) + E t_emb)``."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1, self.fc2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.step = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(nn.functional.silu(self.fc1(self.norm(h)) + self.step(t_emb)))


class Denoiser(nn.Module):
    """``eps_theta``: ``x_t [B, H, N, C]``, ``t [B]``, ``h [B, N, D]`` -> ``[B, H, N, C]``.

    Per ``(node, channel)`` series: ``Linear(H, hidden)(x_t) + Linear(D, hidden)(h) +
    channel embedding + step embedding``, ``layers`` residual blocks, ``Linear(hidden, H)``.
    """

    def __init__(
        self, horizon: int, num_channels: int, cond_dim: int, hidden: int = 128, layers: int = 3
    ):
        super().__init__()
        self.hidden = hidden
        self.inp = nn.Linear(horizon, hidden)
        self.cond = nn.Linear(cond_dim, hidden)
        self.channel = nn.Parameter(torch.zeros(num_channels, hidden))
        self.step_mlp = nn.Sequential(
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.blocks = nn.ModuleList(_Block(hidden) for _ in range(layers))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, horizon))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        B, H, N, C = x_t.shape
        t_emb = self.step_mlp(step_embedding(t, self.hidden))[:, None, None]  # [B, 1, 1, hidden]
        z = self.inp(x_t.permute(0, 2, 3, 1)) + self.cond(h)[:, :, None] + self.channel + t_emb
        for block in self.blocks:
            z = block(z, t_emb)
        return self.out(z).permute(0, 3, 1, 2)


class HistoryEncoder(nn.Module):
    """``[B, N, hidden]`` from each node's flattened history and mask ``[L * C * 2]`` by an MLP."""

    def __init__(self, history: int, num_channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * history * num_channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"]
        mask = batch.get("x_mask")
        mask = torch.ones_like(x) if mask is None else mask.to(x.dtype)
        B, _, N, _ = x.shape
        feats = torch.cat([x, mask], dim=-1).permute(0, 2, 1, 3).reshape(B, N, -1)
        return self.net(feats)


@register_objective("diffusion")
class Diffusion(Objective):
    """Conditional DDPM forecaster (module docstring).

    Parameters
    ----------
    info : DataInfo, optional
        Default ``model.info``.
    model : nn.Module, optional
        Its ``embed`` conditions the denoiser when present (``condition="auto"``).
    steps : int
        Diffusion steps ``T`` (50).
    schedule : {"cosine", "linear", "quad"}
    beta_start, beta_end : float
        Range of the linear / quad schedules, cap of the cosine one (1e-4, 0.5).
    hidden, layers : int
        Width and residual blocks of the denoiser (128, 3); also the width of the own
        history encoder.
    condition : {"auto", "model", "own"}
        History encoding from ``model.embed`` (``"model"``), the objective's encoder
        (``"own"``), or both when the model has ``embed`` (``"auto"``, else own only).
    sample_chunk : int
        Samples denoised at once by :meth:`sample` (memory bound).
    """

    probabilistic = True

    def __init__(
        self,
        info: DataInfo | None = None,
        model: nn.Module | None = None,
        steps: int = 50,
        schedule: str = "cosine",
        beta_start: float = 1e-4,
        beta_end: float = 0.5,
        hidden: int = 128,
        layers: int = 3,
        condition: str = "auto",
        sample_chunk: int = 16,
    ):
        info = info if info is not None else getattr(model, "info", None)
        super().__init__(info, model)
        if info is None:
            raise ConfigError(
                "the diffusion objective needs the data info", "pass info= or a model built from it"
            )
        if condition not in ("auto", "model", "own"):
            raise ConfigError(f"unknown condition {condition!r}", 'use "auto", "model" or "own"')
        has_embed = model is not None and hasattr(model, "embed") and hasattr(model, "embed_dim")
        if condition == "model" and not has_embed:
            raise ConfigError(
                f"condition='model' needs a model with embed(batch), got "
                f"{getattr(model, 'registry_name', type(model).__name__)!r}",
                f"use condition: own, or one of: {', '.join(models_with(('embed',)))}",
            )
        self.use_model = condition == "model" or (condition == "auto" and has_embed)
        own = condition != "model"
        self.encoder = HistoryEncoder(info.history, info.num_channels, hidden) if own else None
        cond_dim = (hidden if own else 0) + (model.embed_dim if self.use_model else 0)
        self.denoiser = Denoiser(info.horizon, info.num_channels, cond_dim, hidden, layers)
        self.steps, self.sample_chunk = steps, max(1, sample_chunk)

        betas = beta_schedule(schedule, steps, beta_start, beta_end)
        alpha_bar = torch.cumprod(1 - betas, dim=0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=betas.dtype), alpha_bar[:-1]])
        for name, value in {
            "betas": betas,
            "alpha_bar": alpha_bar,
            "posterior_var": betas * (1 - alpha_bar_prev) / (1 - alpha_bar),
        }.items():
            self.register_buffer(name, value.float(), persistent=False)

    def condition(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, N, D]`` history encoding that conditions the denoiser."""
        parts = [] if self.encoder is None else [self.encoder(batch)]
        if self.use_model:
            parts.append(model.embed(batch))
        return torch.cat(parts, dim=-1)

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        mask = batch["y_mask"].bool()
        y0 = torch.where(mask, batch["y_scaled"], torch.zeros_like(batch["y_scaled"]))
        B = y0.shape[0]
        t = torch.randint(0, self.steps, (B,), device=y0.device)
        noise = torch.randn_like(y0)
        x_t = q_sample(y0, self.alpha_bar[t].view(B, 1, 1, 1), noise)
        eps = self.denoiser(x_t, t, self.condition(model, batch))
        err = torch.where(mask, (eps - noise).square(), torch.zeros_like(eps))
        loss = err.sum() / mask.sum().clamp(min=1)
        return loss, {"eps_mse": loss.detach()}

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The observed targets, over which the loss is a mean."""
        return batch["y_mask"].sum()

    @torch.no_grad()
    def sample(
        self, model: nn.Module, batch: dict[str, torch.Tensor], num_samples: int
    ) -> torch.Tensor:
        """``[S, B, H, N, C]`` forecast samples (scaled scale) by ancestral sampling."""
        h = self.condition(model, batch)
        B, N = h.shape[:2]
        shape = (self.info.horizon, N, self.info.num_channels)
        out = []
        for first in range(0, num_samples, self.sample_chunk):
            s = min(self.sample_chunk, num_samples - first)
            cond = h.repeat(s, 1, 1)  # [s*B, N, D], sample-major
            x = torch.randn(s * B, *shape, device=h.device, dtype=h.dtype)
            for t in reversed(range(self.steps)):
                tt = torch.full((s * B,), t, device=h.device, dtype=torch.long)
                eps = self.denoiser(x, tt, cond)
                beta, abar = self.betas[t], self.alpha_bar[t]
                x = (x - beta / (1 - abar).sqrt() * eps) / (1 - beta).sqrt()
                if t > 0:
                    x = x + self.posterior_var[t].sqrt() * torch.randn_like(x)
            out.append(x.view(s, B, *shape))
        return torch.cat(out)

    def point_forecast(
        self, model: nn.Module, batch: dict[str, torch.Tensor], num_samples: int = 100
    ) -> torch.Tensor:
        """``[B, H, N, C]`` median of ``num_samples`` samples."""
        return self.sample(model, batch, num_samples).median(dim=0).values

    def crps(
        self, model: nn.Module, batch: dict[str, torch.Tensor], num_samples: int = 100
    ) -> torch.Tensor:
        """Masked mean CRPS of ``num_samples`` samples against ``y_scaled`` (scaled scale)."""
        samples = self.sample(model, batch, num_samples)
        return crps_from_samples(samples, batch["y_scaled"], mask=batch["y_mask"])
