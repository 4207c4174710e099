"""A causal LM fine-tuned to answer a forecasting prompt with the future as text.

This is how most users fine-tune an LLM for forecasting: the model reads a prompt (the
history serialized as in LLMTime, Gruver et al., NeurIPS 2023, with the templates'
statistics, time and spatial context; PromptCast, Xue and Salim, 2023; the supervised
stage of LLM4TS, Chang et al., 2023; UrbanGPT's instruction tuning, Li et al., KDD 2024)
and continues it with the next ``horizon`` values written by the same serializer. Training
is supervised fine-tuning: the cross-entropy of the answer tokens only
(:class:`~llm_st.prompting.dataset.SFTBatches` masks the prompt out of the labels), with
full fine-tuning, LoRA or 4-bit QLoRA (``backbone.freeze``: ``full``, ``lora``,
``qlora``). Forecasting is the zero-shot path's: prompts rendered by the same template,
answers decoded with the constrained decoder (every answer is exactly ``horizon``
numbers) and parsed back to the original scale.

So the model does not forecast a batch of scaled windows (``forward``); it forecasts
windows of data (:meth:`TextLM.forecast_windows`), and the engine's evaluation scores those
(:func:`llm_st.evaluation.evaluate.evaluate` on a fixed subset of windows and nodes:
``val_windows`` / ``val_nodes`` during training, ``test_windows`` / ``test_nodes`` for the
test, all when None). The task's scaler is not used: the serializer scales each series by
its own history, as at zero-shot time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from llm_st.backbones.spec import BackboneSpec, build_causal_lm
from llm_st.data.container import STData
from llm_st.errors import ConfigError
from llm_st.forecast import Forecast
from llm_st.models.base import DataInfo, STModel
from llm_st.models.registry import register_model
from llm_st.prompting.dataset import SFTDataConfig
from llm_st.tokens.serialize import (
    LLMTIME_GPT,
    LLMTIME_LLAMA,
    SerializerConfig,
    preset_for_tokenizer,
)
from llm_st.zeroshot.forecaster import ZeroShotForecaster

SERIALIZER_PRESETS = {"gpt": LLMTIME_GPT, "llama": LLMTIME_LLAMA}


def resolve_serializer(value: Any, tokenizer: Any) -> SerializerConfig:
    """A serializer from a recipe value: None (the tokenizer's preset), a preset name
    (``gpt``, ``llama``), a mapping of :class:`SerializerConfig` fields, or a config."""
    if value is None:
        return preset_for_tokenizer(tokenizer)
    if isinstance(value, SerializerConfig):
        return value
    if isinstance(value, str):
        if value not in SERIALIZER_PRESETS:
            raise ConfigError(
                f"unknown serializer preset {value!r}",
                f"use one of {', '.join(SERIALIZER_PRESETS)}, a mapping of fields, or null",
            )
        return SERIALIZER_PRESETS[value]
    if isinstance(value, Mapping):
        try:
            return SerializerConfig(**value)
        except TypeError as exc:
            raise ConfigError(
                f"serializer {dict(value)} has fields SerializerConfig does not ({exc})",
                "use precision, digit_sep, time_sep, minus_sign, missing_token, alpha, beta, basic",
            ) from exc
    raise ConfigError(f"serializer={value!r} is not a serializer", "give a preset name or fields")


@register_model("text_lm")
class TextLM(STModel):
    """A causal LM that answers a forecasting prompt with the forecast as text.

    Parameters
    ----------
    info
        The data it is built for (prompts are rendered per node and channel, so any
        node count works at forecast time).
    backbone
        The causal LM (:class:`~llm_st.backbones.spec.BackboneSpec`): ``source`` a tiny
        name, the LM pre-trained here (``llm-st pretrain``'s output directory), a local
        GPT-2 / LLaMA / Qwen / Mistral directory or a hub id; ``freeze``: ``full``,
        ``lora``, ``qlora`` (or ``frozen``: no training, the zero-shot model);
        ``gradient_checkpointing``, ``dtype`` and ``lora`` settings as for the adapters.
    template
        Prompt template (``plain``, ``stats``, ``spatial``, ``instruct``, a ``.j2`` path).
    serializer
        Number format: None (the tokenizer's LLMTime preset), ``gpt``, ``llama`` or
        fields of :class:`~llm_st.tokens.serialize.SerializerConfig`.
    max_length
        Token budget of prompt plus answer in training and decoding (the oldest history
        steps are cut to fit); None: the model's context length.
    num_neighbors, description
        Of the prompt builder (``spatial`` / ``instruct`` templates).
    val_windows, val_nodes, test_windows, test_nodes
        Windows and nodes (evenly spread) forecast by decoding for validation and test;
        None: all of them.
    num_samples, temperature, top_p
        Decoding: ``temperature=0`` with one sample is greedy (the default); otherwise the
        median of ``num_samples`` sampled answers is the point forecast.
    decode_batch_size
        Series per ``generate`` call (``"auto"``: by free GPU memory).
    seed
        Seed of sampled decoding.
    """

    default_backbone = BackboneSpec(source="tiny-gpt2", freeze="lora")
    backbone_modes = ("pretrained", "random_init")
    window_forecaster = True
    """Forecasts windows of data itself (:meth:`forecast_windows`), not ``model(batch)``."""
    forecaster_class: type[ZeroShotForecaster] = ZeroShotForecaster
    """The decoder :meth:`forecaster` builds (a subclass changes how prompts reach the LM)."""

    def __init__(
        self,
        info: DataInfo,
        backbone: BackboneSpec | Mapping[str, Any] | str | None = None,
        template: str = "plain",
        serializer: Any = None,
        max_length: int | None = None,
        num_neighbors: int = 5,
        description: str | None = None,
        val_windows: int | None = 16,
        val_nodes: int | None = 8,
        test_windows: int | None = None,
        test_nodes: int | None = None,
        num_samples: int = 1,
        temperature: float = 0.0,
        top_p: float = 0.9,
        decode_batch_size: int | str = "auto",
        seed: int = 0,
    ):
        super().__init__(info)
        for name, value in (
            ("val_windows", val_windows),
            ("val_nodes", val_nodes),
            ("test_windows", test_windows),
            ("test_nodes", test_nodes),
            ("max_length", max_length),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):  # fmt: skip
                raise ConfigError(f"{name}={value!r} is not a positive integer", "or use null")
        self.spec = self.complete_backbone(self.default_backbone if backbone is None else backbone)
        self.lm, self.tokenizer = build_causal_lm(self.spec)
        self.serializer = resolve_serializer(serializer, self.tokenizer)
        self.template = template
        self.max_length = max_length
        self.num_neighbors = num_neighbors
        self.description = description
        self.subsets = {
            "val": (val_windows, val_nodes),
            "test": (test_windows, test_nodes),
            "train": (None, None),
        }
        self.decoding = {
            "num_samples": num_samples,
            "temperature": temperature,
            "top_p": top_p,
            "batch_size": decode_batch_size,
            "seed": seed,
        }
        self._forecaster: ZeroShotForecaster | None = None
        self.forecaster()  # checks the decoding settings now, not at the first evaluation

    # ------------------------------------------------------------------ parts
    @property
    def hf_model(self) -> Any:
        """The Hugging Face causal LM (inside the peft wrapper under LoRA, with LoRA in it)."""
        get = getattr(self.lm, "get_base_model", None)
        return get() if get is not None else self.lm

    def sft_config(self, part: str, **overrides: Any) -> SFTDataConfig:
        """How the instruction data of ``part`` are rendered for this model (the prompt
        settings it decodes with; validation and test on their subsets)."""
        windows, nodes = self.subsets.get(part, (None, None))
        settings = {
            "template": self.template,
            "serializer": self.serializer,
            "max_length": self.max_length,
            "num_neighbors": self.num_neighbors,
            "description": self.description,
            "max_windows": windows,
            "max_nodes": nodes,
            **overrides,
        }
        return SFTDataConfig(**settings)

    def forecaster(self) -> ZeroShotForecaster:
        """The decoder over this model (built once; it reads the current weights)."""
        if self._forecaster is None:
            d = self.decoding
            self._forecaster = self.forecaster_class(
                self.lm,
                self.tokenizer,
                serializer=self.serializer,
                template=self.template,
                num_samples=d["num_samples"],
                temperature=d["temperature"],
                top_p=d["top_p"],
                max_context=self.max_length,
                batch_size=d["batch_size"],
                num_neighbors=self.num_neighbors,
                description=self.description,
                seed=d["seed"],
            )
            self._forecaster.name = self.spec.source
        return self._forecaster

    # ------------------------------------------------------------------ training
    def hidden_states(
        self, batch: dict[str, torch.Tensor], inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, S, D]`` last hidden states of the body of the LM for an SFT batch.

        The body is called directly (the head is applied to the answer positions only, in
        :meth:`lm_loss`): logits over the vocabulary for every prompt token would cost
        ``B * S * vocab`` floats for nothing. ``attention_mask`` may be 2-D or the 4-D
        block mask of packed sequences.
        """
        body = self.hf_model.base_model
        kwargs: dict[str, Any] = {
            "attention_mask": batch["attention_mask"],
            "position_ids": batch["position_ids"],
            "use_cache": False,
        }
        if inputs_embeds is None:
            kwargs["input_ids"] = batch["input_ids"]
        else:
            kwargs["inputs_embeds"] = inputs_embeds
        return body(**kwargs).last_hidden_state

    def token_loss(
        self, hidden: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Mean cross-entropy of next-token predictions from ``hidden`` ``[B, S, D]`` at the
        positions whose next label is not -100 (float32 logits)."""
        target = labels[:, 1:]
        keep = target != -100
        head = self.hf_model.get_output_embeddings()
        logits = head(hidden[:, :-1][keep]).float()
        if logits.shape[0] == 0:  # nothing to learn in this (micro-)batch
            return hidden.sum() * 0.0, {}
        return F.cross_entropy(logits, target[keep].long()), {}

    def lm_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(loss, logs)``: cross-entropy of the answer tokens of an SFT batch."""
        return self.token_loss(self.hidden_states(batch), batch["labels"])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise ConfigError(
            "text_lm answers prompts with text; it does not forecast a batch of scaled windows",
            "forecast with forecast_windows(data, starts, history, horizon), a "
            "ForecastPipeline, or llm-st predict",
        )

    # ------------------------------------------------------------------ forecasting
    @torch.no_grad()
    def forecast_windows(
        self,
        data: STData,
        starts: np.ndarray,
        history: int,
        horizon: int,
        nodes: Sequence[int | str] | None = None,
        progress: bool = False,
    ) -> Forecast:
        """Forecast the windows whose history starts at rows ``starts`` by decoding answers
        (original scale; ``valid`` False where no answer parsed and the last value stands in).
        """
        if horizon != self.info.horizon:
            raise ConfigError(
                f"the model was fine-tuned to answer {self.info.horizon} values, not {horizon}",
                f"forecast horizon {self.info.horizon}, or fine-tune for {horizon}",
            )
        was_training = self.lm.training
        self.lm.eval()
        try:
            forecast = self.forecaster().forecast_windows(
                data, starts, history, horizon, nodes, progress
            )
        finally:
            self.lm.train(was_training)
        forecast.meta["model"] = f"text_lm {self.spec.source} ({self.spec.freeze})"
        return forecast

    def describe(self) -> dict[str, Any]:
        """Prompt and decoding settings, for reports."""
        return {
            "template": self.template,
            "serializer": asdict(self.serializer),
            "max_length": self.max_length,
            **self.decoding,
        }
