"""Zero-shot forecasting with any causal LM: prompts in, constrained numbers out (LLMTime).

For each (window, node, channel) series the history is serialized on its original
scale with the serializer's own scaling (LLMTime; the task's scaler is not used),
rendered through a template, and continued by the model with
:class:`~llm_st.zeroshot.constrained.NumberConstraint`, so every continuation is exactly
``horizon`` numbers. ``num_samples`` continuations per series give the median (the point
forecast) and quantiles. Generation is batched: several series per ``generate`` call
(``batch_size="auto"`` fills the free GPU memory, see :func:`auto_batch_size`), left
padding with attention masks, the KV cache (static and with a compiled decode step on
CUDA), ``num_return_sequences`` samples.

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
from llm_st.data.windows import pick_windows
from llm_st.errors import ConfigError
from llm_st.forecast import DEFAULT_QUANTILES, Forecast
from llm_st.prompting.context import PromptBatch, PromptBuilder, node_indices
from llm_st.prompting.stats import first_last_observed
from llm_st.prompting.templates import PromptTemplate
from llm_st.tokens.serialize import SerializerConfig
from llm_st.zeroshot.constrained import NumberConstraint, NumberGrammar

logger = logging.getLogger("llm_st")

CPU_BATCH_SIZE = 8  # series per generate call where memory is not what limits the batch
MEMORY_FRACTION = 0.8  # of the free GPU memory that batch_size="auto" plans to fill
# bytes per vocabulary entry of one sequence while a step's scores are processed: the float32
# logits, the constrained scores, probabilities, and top-p's sorted values and int64 indices
_SCORE_BYTES = 32


def _text_config(model_config: Any) -> Any:
    """The language model's part of a (possibly multimodal) config."""
    get = getattr(model_config, "get_text_config", None)
    return get() if get is not None else model_config


def _max_positions(model: Any, tokenizer: Any) -> int | None:
    """The longest sequence the model takes, from its config or the tokenizer."""
    config = _text_config(model.config)
    limits = [getattr(config, name, None) for name in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**7]
    return min(limits) if limits else None


def decoding_bytes_per_sequence(
    model_config: Any, dtype: torch.dtype, prompt_tokens: int, new_tokens: int
) -> int:
    """Device memory one decoded sequence needs, from the model's config.

    Its key/value cache, ``2 * layers * kv_heads * head_dim * itemsize`` bytes per token
    for ``prompt_tokens + new_tokens`` tokens, plus the larger of the prefill's transient
    activations (one block's hidden states, attention projections and MLP activations,
    ``prompt_tokens * (4 * hidden + 3 * intermediate) * itemsize``) and a decode step's
    score tensors (``vocab * 32`` bytes: float32 logits, constrained scores,
    probabilities, top-p's sorted values and indices).

    Parameters
    ----------
    model_config
        A ``transformers`` config (GPT-2 and LLaMA-style names are both read).
    dtype
        The dtype of the model's activations and cache (``model.dtype``).
    prompt_tokens, new_tokens
        Longest prompt and the answer's token budget.
    """
    config = _text_config(model_config)
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    intermediate = (
        getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    )
    itemsize = torch.empty((), dtype=dtype).element_size()
    kv = (
        2 * config.num_hidden_layers * kv_heads * head_dim * itemsize * (prompt_tokens + new_tokens)
    )
    prefill = prompt_tokens * (4 * hidden + 3 * intermediate) * itemsize
    return kv + max(prefill, config.vocab_size * _SCORE_BYTES)


def auto_batch_size(
    model_config: Any,
    dtype: torch.dtype,
    prompt_tokens: int,
    new_tokens: int,
    num_samples: int,
    free_bytes: int,
) -> int:
    """Series per ``generate`` call that fit in :data:`MEMORY_FRACTION` of ``free_bytes``.

    Each series decodes ``num_samples`` sequences of
    :func:`decoding_bytes_per_sequence` bytes; at least 1.
    """
    per_series = num_samples * decoding_bytes_per_sequence(
        model_config, dtype, prompt_tokens, new_tokens
    )
    return max(1, int(MEMORY_FRACTION * free_bytes) // per_series)


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
        Series per ``generate`` call (each with ``num_samples`` sequences); ``"auto"``: on
        CUDA as many as fit in the free memory (:func:`auto_batch_size`), elsewhere
        :data:`CPU_BATCH_SIZE`.
    static_cache
        Decode with a static KV cache sized once per :meth:`forecast_windows` call, which
        lets ``transformers`` compile the decode step with ``torch.compile`` (on CUDA;
        the first call compiles, later calls with the same shapes reuse it). Default: on
        for CUDA models, off elsewhere (on the CPU it gives the same tokens without the
        compiled step, so it only adds the cache's padding).
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
        batch_size: int | str = "auto",
        num_neighbors: int = 5,
        description: str | None = None,
        seed: int = 0,
        static_cache: bool | None = None,
    ):
        if num_samples < 1 or not (
            batch_size == "auto" or (isinstance(batch_size, int) and batch_size >= 1)
        ):
            raise ConfigError(
                f"num_samples={num_samples}, batch_size={batch_size!r}: num_samples must be "
                "positive, batch_size a positive integer or 'auto'",
                "use e.g. num_samples=10 and batch_size='auto' or 8",
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
        self.static_cache = static_cache
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
        batch = self.builder.build(
            data, starts, history, horizon, node_idx, variables=self.prompt_variables
        )
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
            batch = self._fit_prompts(batch, self.max_context - max_new)
        lengths = self._prompt_lengths(batch)  # [M] prompt tokens
        texts = self._generate(batch, lengths, grammar, horizon, max_new, progress)  # [S, M]
        parsed = batch.serializer.parse(texts, horizon)  # values [S, M, H]
        return self._assemble(
            data,
            batch,
            lengths,
            parsed.values,
            parsed.valid,
            starts,
            history,
            horizon,
            node_idx,
            began,
        )

    # ------------------------------------------------------------------ prompt hooks
    # Subclasses that put something other than plain token ids into the prompt (the ST-token
    # LM, llm_st.crossmodal.st_tokens) override these; the defaults are the text path.
    prompt_variables: dict[str, Any] | None = None
    """Extra template variables of every prompt (:meth:`PromptBuilder.build`'s ``variables``)."""

    def _fit_prompts(self, batch: PromptBatch, budget: int) -> PromptBatch:
        """Cut the prompts of ``batch`` to at most ``budget`` tokens."""
        return self.builder.fit_to_budget(batch, budget)

    def _prompt_lengths(self, batch: PromptBatch) -> np.ndarray:
        """``[M]`` tokens of each prompt as the model reads it."""
        return self.builder.token_lengths(batch)

    def _generate_inputs(
        self, batch: PromptBatch, chunk: np.ndarray, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """``generate``'s inputs for prompts ``chunk`` of ``batch``: left-padded ``input_ids``
        and ``attention_mask`` (or ``inputs_embeds`` instead of ``input_ids``)."""
        return self.tokenizer(
            [batch.texts[i] for i in chunk],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=batch.add_special_tokens,
        ).to(device)

    def _resolve_batch_size(self, device: torch.device, prompt_tokens: int, new_tokens: int) -> int:
        """Series per ``generate`` call for prompts of at most ``prompt_tokens`` tokens."""
        if self.batch_size != "auto":
            return self.batch_size
        if device.type != "cuda":
            return CPU_BATCH_SIZE
        free, _ = torch.cuda.mem_get_info(device)
        size = auto_batch_size(
            self.model.config, self.model.dtype, prompt_tokens, new_tokens, self.num_samples, free
        )
        logger.info("zero-shot batch: %d series (%.1f GiB free)", size, free / 2**30)
        return size

    def _generate(
        self,
        batch: PromptBatch,
        lengths: np.ndarray,
        grammar: NumberGrammar,
        horizon: int,
        max_new: int,
        progress: bool,
    ) -> np.ndarray:
        """``[S, M]`` generated texts."""
        tok, S, M = self.tokenizer, self.num_samples, len(batch.texts)
        device = next(self.model.parameters()).device
        longest = int(lengths.max())
        batch_size = self._resolve_batch_size(device, longest, max_new)
        static = device.type == "cuda" if self.static_cache is None else self.static_cache
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
            # one cache size for every chunk, so a compiled decode step is reused
            cache_implementation="static" if static else None,
            max_cache_len=longest + max_new if static else None,
        )
        # the grammar's tables reach the device now, not inside generate's first step
        grammar.tables(_text_config(self.model.config).vocab_size, device, tok.eos_token_id)
        out = np.empty((S, M), dtype=object)
        chunks = [np.arange(i, min(i + batch_size, M)) for i in range(0, M, batch_size)]
        devices = [device] if device.type == "cuda" else []
        # no_grad (generate's own), not inference_mode: torch.compile's CUDA-graph decode step
        # fails on inference tensors in some torch releases
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(self.seed)
            for chunk in tqdm(
                chunks, desc="zero-shot", disable=not progress or len(chunks) < 4, leave=False
            ):
                enc = self._generate_inputs(batch, chunk, device)
                constraint = NumberConstraint(grammar, horizon, tok.eos_token_id)
                ids = self.model.generate(
                    **enc,
                    generation_config=config,
                    logits_processor=LogitsProcessorList([constraint]),
                )
                # generate returns prompt + answer for token ids, the answer alone for embeddings
                width = enc["input_ids"].shape[1] if "input_ids" in enc else 0
                answers = tok.batch_decode(
                    ids[:, width:],
                    skip_special_tokens=True,
                    clean_up_tokenization_spaces=False,
                )
                out[:, chunk] = np.asarray(answers, dtype=object).reshape(len(chunk), S).T
        return out

    def _assemble(
        self,
        data: STData,
        batch: PromptBatch,
        prompt_tokens: np.ndarray,
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
