"""Zero-shot forecasting with any causal LM: prompts in, constrained numbers out (LLMTime).

For each (window, node, channel) series the history is serialized on its original
scale with the serializer's own scaling (LLMTime; the task's scaler is not used),
rendered through a template, and continued by the model with
:class:`~llm_st.zeroshot.constrained.NumberConstraint`, so every continuation is exactly
``horizon`` numbers. ``num_samples`` continuations per series give the median (the point
forecast) and quantiles. Generation is batched: several series per ``generate`` call,
left padding with attention masks, the KV cache, ``num_return_sequences`` samples.

The windows are those of every other method (``task.dataset(part)``), so
:func:`llm_st.evaluation.evaluate.score_forecast` scores the forecast on exactly the
targets the engine scores the others on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessorList

from llm_st.data.container import STData
from llm_st.data.task import ForecastTask, prepare_task
from llm_st.errors import ConfigError
from llm_st.forecast import DEFAULT_QUANTILES, Forecast
from llm_st.prompting.context import PromptBatch, PromptBuilder, node_indices
from llm_st.prompting.stats import first_last_observed
from llm_st.prompting.templates import PromptTemplate
from llm_st.tokens.serialize import SerializerConfig
from llm_st.zeroshot.constrained import NumberConstraint, NumberGrammar

logger = logging.getLogger("llm_st")


def _max_positions(model: Any, tokenizer: Any) -> int | None:
    """The longest sequence the model takes, from its config or the tokenizer."""
    config = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    limits = [getattr(config, name, None) for name in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**7]
    return min(limits) if limits else None


def pick_windows(num_windows: int, max_windows: int | None) -> np.ndarray:
    """Indices of at most ``max_windows`` windows spread evenly over ``num_windows``.

    All windows when ``max_windows`` is None or not smaller than ``num_windows``.
    """
    if max_windows is None or max_windows >= num_windows:
        return np.arange(num_windows)
    if max_windows < 1:
        raise ConfigError(
            f"max_windows={max_windows} must be at least 1", "use e.g. --max-windows 8"
        )
    return np.unique(np.linspace(0, num_windows - 1, max_windows).round().astype(np.int64))


class ZeroShotForecaster:
    """Forecast series with a frozen causal LM, without training.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face causal LM and its tokenizer (:func:`llm_st.backbones.load_causal_lm`).
    serializer
        Number format; default the tokenizer's preset
        (:func:`~llm_st.tokens.serialize.preset_for_tokenizer`).
    template
        Prompt template name or path (``plain``, ``stats``, ``spatial``, ``instruct``, ...).
    num_samples
        Continuations per series; the median is the point forecast.
    temperature, top_p
        Sampling; ``temperature=0`` decodes greedily (then use ``num_samples=1``).
    max_context
        Token budget of prompt plus answer; default the model's maximum length. Longer
        prompts lose their oldest history steps.
    quantile_levels
        Levels of the returned quantiles.
    batch_size
        Series per ``generate`` call (each with ``num_samples`` sequences).
    num_neighbors, description
        Passed to :class:`~llm_st.prompting.context.PromptBuilder`.
    seed
        Seed of the sampling (the global torch RNG is left as it was).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        serializer: SerializerConfig | None = None,
        template: str | Path | PromptTemplate = "plain",
        num_samples: int = 10,
        temperature: float = 1.0,
        top_p: float = 0.9,
        max_context: int | None = None,
        quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
        batch_size: int = 8,
        num_neighbors: int = 5,
        description: str | None = None,
        seed: int = 0,
    ):
        if num_samples < 1 or batch_size < 1:
            raise ConfigError(
                f"num_samples={num_samples}, batch_size={batch_size} must be positive",
                "use e.g. 10 and 8",
            )
        if temperature < 0 or not 0 < top_p <= 1:
            raise ConfigError(
                f"temperature={temperature}, top_p={top_p} out of range",
                "use temperature >= 0, 0 < top_p <= 1",
            )
        if temperature == 0 and num_samples > 1:
            raise ConfigError(
                "greedy decoding (temperature=0) gives one continuation, not "
                f"num_samples={num_samples}",
                "use num_samples=1 with temperature=0, or sample with temperature > 0",
            )
        if tokenizer.eos_token_id is None:
            raise ConfigError(
                "the tokenizer has no end-of-sequence token", "set tokenizer.eos_token"
            )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # padding is masked; GPT-2 has no pad token
        self.model = model
        self.tokenizer = tokenizer
        self.builder = PromptBuilder(
            template, serializer, tokenizer, num_neighbors=num_neighbors, description=description
        )
        self.num_samples = num_samples
        self.temperature = temperature
        self.top_p = top_p
        self.max_context = max_context or _max_positions(model, tokenizer)
        self.quantile_levels = tuple(quantile_levels)
        self.batch_size = batch_size
        self.seed = seed
        self.name = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self._grammars: dict[int, NumberGrammar] = {}

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, dtype: Any = None, device: Any = None, **kwargs: Any
    ):
        """Load a model by tiny name, local directory or hub id and wrap it."""
        from llm_st.backbones.hub import load_causal_lm

        model, tokenizer = load_causal_lm(name_or_path, dtype=dtype, device=device)
        forecaster = cls(model, tokenizer, **kwargs)
        forecaster.name = str(name_or_path)
        return forecaster

    @property
    def serializer(self) -> SerializerConfig:
        return self.builder.config

    # ------------------------------------------------------------------ forecasting
    def forecast(
        self,
        task_or_data: ForecastTask | STData,
        part: str = "test",
        max_windows: int | None = None,
        nodes: Sequence[int | str] | None = None,
        history: int | None = None,
        horizon: int | None = None,
        progress: bool = True,
    ) -> Forecast:
        """Forecast the windows of ``part``.

        Parameters
        ----------
        task_or_data
            A :class:`ForecastTask` (its windows), or an :class:`STData` with ``history``
            and ``horizon`` (split by the data's protocol via :func:`prepare_task`).
        part
            ``"train"``, ``"val"`` or ``"test"``.
        max_windows
            Forecast at most this many windows, spread evenly over the split.
        nodes
            Node indices or ids (default all).
        history
            Overrides the task's history length (a longer context for the same targets).
        horizon
            Forecast length; only with an :class:`STData` (a task fixes its own).
        progress
            Show a progress bar over the ``generate`` calls.

        Returns
        -------
        Forecast
            ``point [W, H, N, C]``, quantiles, samples ``[S, W, H, N, C]`` (NaN where a
            sample did not parse), ``valid`` (False where the point is the fallback: the
            last observed value, used when no sample parsed).
        """
        if isinstance(task_or_data, ForecastTask):
            task = task_or_data
        else:
            if history is None or horizon is None:
                raise ConfigError(
                    "forecasting an STData needs history and horizon",
                    "pass e.g. history=12, horizon=12",
                )
            task = prepare_task(task_or_data, history, horizon)
        dataset = task.dataset(part, history)
        chosen = pick_windows(len(dataset), max_windows)
        return self.forecast_windows(
            task.data,
            dataset.index.starts[chosen],
            dataset.index.history,
            task.horizon,
            nodes,
            progress,
        )

    def forecast_windows(
        self,
        data: STData,
        starts: np.ndarray,
        history: int,
        horizon: int,
        nodes: Sequence[int | str] | None = None,
        progress: bool = True,
    ) -> Forecast:
        """Forecast the windows whose history starts at rows ``starts`` ``[W]``."""
        began = time.perf_counter()
        node_idx = node_indices(data, nodes)
        batch = self.builder.build(data, starts, history, horizon, node_idx)
        max_digits = batch.serializer.digits_needed(batch.histories) + 1
        if max_digits not in self._grammars:
            self._grammars[max_digits] = NumberGrammar(self.tokenizer, self.serializer, max_digits)
        grammar = self._grammars[max_digits]
        max_new = horizon * grammar.max_tokens_per_value + 1
        if self.max_context is not None:
            if self.max_context <= max_new:
                raise ConfigError(
                    f"max_context={self.max_context} leaves no room for a prompt next to the "
                    f"{max_new} answer tokens of horizon {horizon}",
                    "use a model with a longer context or a shorter horizon",
                )
            batch = self.builder.fit_to_budget(batch, self.max_context - max_new)
        texts = self._generate(batch, grammar, horizon, max_new, progress)  # [S, M]
        parsed = batch.serializer.parse(texts, horizon)  # values [S, M, H]
        return self._assemble(
            data, batch, parsed.values, parsed.valid, starts, history, horizon, node_idx, began
        )

    def _generate(
        self, batch: PromptBatch, grammar: NumberGrammar, horizon: int, max_new: int, progress: bool
    ) -> np.ndarray:
        """``[S, M]`` generated texts."""
        tok, S, M = self.tokenizer, self.num_samples, len(batch.texts)
        sample = self.temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=sample,
            temperature=self.temperature if sample else None,
            top_p=self.top_p if sample else None,
            top_k=0 if sample else None,  # no top-k cut (None would become 50 when sampling)
            num_return_sequences=S,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            use_cache=True,
        )
        device = next(self.model.parameters()).device
        out = np.empty((S, M), dtype=object)
        chunks = [np.arange(i, min(i + self.batch_size, M)) for i in range(0, M, self.batch_size)]
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(self.seed)
            for chunk in tqdm(
                chunks, desc="zero-shot", disable=not progress or len(chunks) < 4, leave=False
            ):
                enc = tok(
                    [batch.texts[i] for i in chunk],
                    return_tensors="pt",
                    padding=True,
                    padding_side="left",
                    add_special_tokens=batch.add_special_tokens,
                ).to(device)
                constraint = NumberConstraint(grammar, horizon, tok.eos_token_id)
                ids = self.model.generate(
                    **enc,
                    generation_config=config,
                    logits_processor=LogitsProcessorList([constraint]),
                )
                answers = tok.batch_decode(
                    ids[:, enc["input_ids"].shape[1] :],
                    skip_special_tokens=True,
                    clean_up_tokenization_spaces=False,
                )
                out[:, chunk] = np.asarray(answers, dtype=object).reshape(len(chunk), S).T
        return out

    def _assemble(
        self,
        data: STData,
        batch: PromptBatch,
        values: np.ndarray,
        sample_valid: np.ndarray,
        starts: np.ndarray,
        history: int,
        horizon: int,
        node_idx: np.ndarray,
        began: float,
    ) -> Forecast:
        S = values.shape[0]
        W, N, C = batch.shape
        samples = values.reshape(S, W, N, C, horizon).transpose(0, 1, 4, 2, 3)  # [S, W, H, N, C]
        rows = np.asarray(starts)[:, None] + history + np.arange(horizon)  # [W, H]
        if data.timestamps is not None:
            target_times = data.timestamps.values[rows]
            cutoffs = data.timestamps.values[np.asarray(starts) + history - 1]
        else:
            target_times, cutoffs = rows, np.asarray(starts) + history - 1
        forecast = Forecast.from_samples(
            samples,
            self.quantile_levels,
            target_times=target_times,
            cutoffs=cutoffs,
            node_ids=[data.node_ids[i] for i in node_idx],
            channels=list(data.channels),
            target_start=np.asarray(starts) + history,
        )
        # where no sample parsed: the last observed value (copy-last), marked not valid
        _, last = first_last_observed(batch.histories)
        fallback = last.reshape(W, 1, N, C)
        missing = ~forecast.valid
        forecast.point = np.where(missing, fallback, forecast.point).astype(np.float32)
        if forecast.quantiles is not None:
            forecast.quantiles = np.where(missing, fallback, forecast.quantiles).astype(np.float32)
        prompt_tokens = self.builder.token_lengths(batch)
        forecast.meta = {
            "model": self.name,
            "template": self.builder.template.name,
            "num_samples": S,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "serializer": asdict(self.serializer),
            "history": history,
            "horizon": horizon,
            "valid_fraction": float(np.mean(sample_valid)),
            "mean_prompt_tokens": float(prompt_tokens.mean()),
            "truncated_prompts": int(np.count_nonzero(batch.kept < history)),
            "seconds": time.perf_counter() - began,
        }
        return forecast
