"""Zero-shot decoding throughput: the batched, constrained forecaster against an LLMTime loop.

LLMTime (Gruver et al., NeurIPS 2023; ``models/llama.py`` of its code) forecasts one
series per ``generate`` call: the samples of that series are the batch, every token that
is not part of a number is banned with one static list (``bad_words_ids``), the end token
too, and the answer gets a budget of ``int(tokens per step of the history * horizon)``
new tokens. :func:`llmtime_loop` is that loop on the same prompts (with the static ban
as ``suppress_tokens``, which bans the same tokens at the cost of one ``isin`` per step).

:func:`zero_shot_throughput` prints nothing; it returns rows that put series per second of
:class:`~llm_st.zeroshot.ZeroShotForecaster` at several batch sizes beside the loop, with
what each method's token rule costs per decode step next to a plain forward step of the
model at the same number of sequences.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, SuppressTokensLogitsProcessor

from llm_st.backbones.hub import load_causal_lm
from llm_st.data.container import STData
from llm_st.data.synthetic import synthetic_traffic
from llm_st.engine.accel import resolve_device
from llm_st.prompting.context import PromptBatch
from llm_st.zeroshot import NumberConstraint, NumberGrammar, ZeroShotForecaster

STEP_REPEATS = 10  # timed decode steps per measurement (after one untimed)


def llmtime_budget(tokenizer: Any, series_text: str, time_sep: str, horizon: int) -> int:
    """LLMTime's answer budget: ``int(tokens(series_text) / pieces(series_text) * horizon)``.

    ``pieces`` is the number of parts ``series_text.split(time_sep)`` gives (LLMTime's
    count, one more than the values of a text that ends with the separator).
    """
    tokens = len(tokenizer(series_text, add_special_tokens=False)["input_ids"])
    return int(tokens / len(series_text.split(time_sep)) * horizon)


def banned_token_ids(grammar: NumberGrammar, vocab_size: int) -> list[int]:
    """LLMTime's static ban: the ids below ``vocab_size`` of every token that cannot appear
    in a value of ``grammar``'s format (special tokens, the end token included)."""
    allowed = {i for state in grammar.states for i in grammar.allowed_ids(state)}
    return [i for i in range(vocab_size) if i not in allowed]


def llmtime_loop(
    model: Any,
    tokenizer: Any,
    batch: PromptBatch,
    grammar: NumberGrammar,
    horizon: int,
    num_samples: int,
    temperature: float = 1.0,
    top_p: float = 0.9,
    seed: int = 0,
) -> np.ndarray:
    """LLMTime-style decoding: one ``generate`` call per series, a static token ban.

    Parameters
    ----------
    model, tokenizer
        A causal LM and its tokenizer (the tokenizer has a pad token).
    batch
        The prompts, as :class:`~llm_st.zeroshot.ZeroShotForecaster` builds them.
    grammar
        Only its tokens are allowed (:func:`banned_token_ids`); the end token is banned,
        so every answer has exactly its budget of tokens.
    horizon
        Steps to forecast; sets each series' budget (:func:`llmtime_budget`).
    num_samples
        Sequences per call (``num_return_sequences``).
    temperature, top_p, seed
        Sampling as the forecaster's (``temperature=0``: greedy).

    Returns
    -------
    np.ndarray
        ``[num_samples, M]`` generated texts.
    """
    device = next(model.parameters()).device
    banned = banned_token_ids(grammar, model.get_output_embeddings().weight.shape[0])
    sample = temperature > 0
    time_sep = batch.serializer.config.time_sep
    out = np.empty((num_samples, len(batch.texts)), dtype=object)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for m, text in enumerate(batch.texts):
            series = batch.serializer.join(batch.values[m][len(batch.values[m]) - batch.kept[m] :])
            config = GenerationConfig(
                max_new_tokens=llmtime_budget(tokenizer, series, time_sep, horizon),
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=top_p if sample else None,
                top_k=0 if sample else None,
                num_return_sequences=num_samples,
                suppress_tokens=banned,
                renormalize_logits=True,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            enc = tokenizer(
                [text], return_tensors="pt", add_special_tokens=batch.add_special_tokens
            ).to(device)
            ids = model.generate(**enc, generation_config=config)
            out[:, m] = tokenizer.batch_decode(
                ids[:, enc["input_ids"].shape[1] :],
                skip_special_tokens=True,
                clean_up_tokenization_spaces=False,
            )
    return out


def _cache_keyword(model: Any) -> str:
    """The name of the KV cache in ``model.forward`` and its output: ``cache`` in recent
    ``transformers`` 5 releases, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_step_ms(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    num_samples: int,
    processor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    add_special_tokens: bool = True,
    repeats: int = STEP_REPEATS,
) -> tuple[float, float]:
    """Median milliseconds of ``processor`` and of a plain forward step, per decode step.

    The prompts ``texts`` (each repeated ``num_samples`` times, as ``generate`` does) are
    run through the model once; then ``repeats`` decode steps of one token each are
    timed, and ``repeats`` calls of ``processor`` on that step's ``[rows, vocab]`` scores
    (after one first call, which sets the processor up as ``generate``'s first step does).

    Returns
    -------
    (processor_ms, step_ms)
    """
    device = next(model.parameters()).device
    enc = tokenizer(
        texts,
        return_tensors="pt",
        padding=True,
        padding_side="left",
        add_special_tokens=add_special_tokens,
    ).to(device)
    ids = enc["input_ids"].repeat_interleave(num_samples, dim=0)  # [rows, L]
    mask = enc["attention_mask"].repeat_interleave(num_samples, dim=0)
    step_times, processor_times = [], []
    keyword = _cache_keyword(model)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
        cache, scores = getattr(out, keyword), out.logits[:, -1].float()  # scores [rows, vocab]
        token = scores.argmax(dim=-1, keepdim=True)  # [rows, 1]
        for _ in range(repeats + 1):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            _synchronize(device)
            began = time.perf_counter()
            model(input_ids=token, attention_mask=mask, use_cache=True, **{keyword: cache})
            _synchronize(device)
            step_times.append(time.perf_counter() - began)
        processor(ids, scores)
        stepped = torch.cat([ids, token], dim=1)
        for _ in range(repeats + 1):
            _synchronize(device)
            began = time.perf_counter()
            processor(stepped, scores)
            _synchronize(device)
            processor_times.append(time.perf_counter() - began)
    return 1e3 * float(np.median(processor_times[1:])), 1e3 * float(np.median(step_times[1:]))


def _row(method: str, batch_size: int, series_per_s: float, costs: tuple[float, float]) -> dict:
    constraint_ms, step_ms = costs
    return {
        "method": method,
        "batch_size": batch_size,
        "series_per_s": series_per_s,
        "constraint_ms": constraint_ms,
        "step_ms": step_ms,
        "constraint_share": constraint_ms / (constraint_ms + step_ms),
    }


def _bench_data(num_series: int, history: int, horizon: int) -> tuple[STData, np.ndarray]:
    """Synthetic road speeds with at least ``num_series`` sensors and the start of one
    window of ``history + horizon`` steps, ending at the last row."""
    days = max(1, math.ceil((history + horizon) * 5 / 1440))
    data = synthetic_traffic(num_nodes=max(4, num_series), num_days=days, seed=0)
    return data, np.array([data.num_steps - history - horizon])


def zero_shot_throughput(
    model: str,
    num_series: int = 64,
    num_samples: int = 10,
    batch_sizes: Sequence[int] = (8, 32),
    history: int = 48,
    horizon: int = 12,
    device: str = "auto",
    dtype: str | None = None,
    static_cache: bool | None = None,
) -> list[dict]:
    """Series per second of zero-shot forecasting, batched and constrained vs LLMTime's loop.

    ``num_series`` sensors of synthetic road speeds (one window each, ``history`` steps
    shown, ``horizon`` forecast, the ``plain`` template) are forecast with ``num_samples``
    samples per series by :func:`llmtime_loop` and by
    :class:`~llm_st.zeroshot.ZeroShotForecaster` at each of ``batch_sizes`` series per
    ``generate`` call (after one untimed run of the same forecast, which compiles what a
    static cache compiles). Both sample with the forecaster's defaults and seed 0.

    Parameters
    ----------
    model
        A tiny name, local directory or hub id (:func:`~llm_st.backbones.load_causal_lm`).
    device
        ``"auto"``: the GPU when one is visible.
    dtype
        ``"float16"``, ``"bfloat16"`` or None (float32).
    static_cache
        Passed to the forecaster (default: on for CUDA).

    Returns
    -------
    list of dict
        The loop first (``batch_size`` 1), then one row per batch size: ``method``,
        ``batch_size``, ``series_per_s`` (prompt building, decoding and parsing included),
        ``constraint_ms`` (the method's token rule, :class:`NumberConstraint` or the static
        ban, on one decode step's scores), ``step_ms`` (one plain forward decode step at
        the same number of sequences, ``min(batch_size, num_series) * num_samples``) and
        ``constraint_share = constraint_ms / (constraint_ms + step_ms)``.
    """
    lm, tok = load_causal_lm(model, dtype=dtype, device=resolve_device(device))
    data, starts = _bench_data(num_series, history, horizon)
    nodes = np.arange(num_series)
    forecaster = ZeroShotForecaster(
        lm, tok, num_samples=num_samples, seed=0, static_cache=static_cache
    )
    batch = forecaster.builder.build(data, starts, history, horizon, nodes)
    grammar = NumberGrammar(
        tok, forecaster.serializer, batch.serializer.digits_needed(batch.histories) + 1
    )
    banned = banned_token_ids(grammar, lm.get_output_embeddings().weight.shape[0])
    special = batch.add_special_tokens

    def loop(series: np.ndarray) -> None:
        prompts = forecaster.builder.build(data, starts, history, horizon, series)
        sampling = (forecaster.temperature, forecaster.top_p, forecaster.seed)
        texts = llmtime_loop(lm, tok, prompts, grammar, horizon, num_samples, *sampling)
        prompts.serializer.parse(texts, horizon)

    loop(nodes[:1])  # warm-up
    began = time.perf_counter()
    loop(nodes)
    series_per_s = num_series / (time.perf_counter() - began)
    ban = SuppressTokensLogitsProcessor(banned, device=next(lm.parameters()).device)
    costs = decode_step_ms(lm, tok, batch.texts[:1], num_samples, ban, special)
    rows = [_row("LLMTime-style loop", 1, series_per_s, costs)]
    for size in batch_sizes:
        forecaster.batch_size = size
        forecaster.forecast_windows(data, starts, history, horizon, nodes, progress=False)
        began = time.perf_counter()
        forecaster.forecast_windows(data, starts, history, horizon, nodes, progress=False)
        seconds = time.perf_counter() - began
        constraint = NumberConstraint(grammar, horizon, tok.eos_token_id)
        costs = decode_step_ms(lm, tok, batch.texts[:size], num_samples, constraint, special)
        rows.append(_row("batched, constrained", size, num_series / seconds, costs))
    return rows
