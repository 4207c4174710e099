"""Constrained decoding as tensors: the same tokens as the per-row rules, no host sync,
a static cache that changes nothing on the CPU, batch sizes from memory, the decoding bench."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_zeroshot import sensors
from transformers import GenerationConfig, LlamaConfig, LogitsProcessor, LogitsProcessorList

from llm_st.backbones import load_causal_lm, tiny_model_dir
from llm_st.bench.decoding import (
    banned_token_ids,
    llmtime_budget,
    llmtime_loop,
    zero_shot_throughput,
)
from llm_st.data.task import prepare_task
from llm_st.tokens.serialize import NumberSerializer, preset_for_tokenizer, token_texts
from llm_st.zeroshot import (
    NumberConstraint,
    NumberGrammar,
    ZeroShotForecaster,
    auto_batch_size,
    decoding_bytes_per_sequence,
)
from llm_st.zeroshot.forecaster import CPU_BATCH_SIZE

pytest_plugins = ["conftest_prompt"]  # tiny-model fixtures


HISTORIES = np.array(
    [
        [12.5, 13.0, 14.25, 13.5],
        [-3.0, 0.5, 2.0, -1.0],
        [1000.0, 1010.0, 990.0, 1005.0],
        [0.2, 0.1, 0.4, 0.3],
        [-50.0, -48.0, -47.5, -49.0],
        [7.0, 7.0, 7.0, 7.0],
        [3.0, 9.0, 27.0, 81.0],
    ]
)


class ReferenceConstraint(LogitsProcessor):
    """The per-row implementation :class:`NumberConstraint` replaced (a Python loop over the
    rows and one host sync per step), kept here to pin the tokens the tensor version gives."""

    def __init__(self, grammar: NumberGrammar, horizon: int, eos_token_id: int):
        self.grammar, self.horizon, self.eos_token_id = grammar, horizon, eos_token_id
        self.states: list[str] | None = None
        self.done: np.ndarray | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, vocab = scores.shape
        if self.states is None:
            self.states, self.done = [""] * rows, np.zeros(rows, dtype=np.int64)
        else:
            for r, token in enumerate(input_ids[:, -1].tolist()):
                if self.done[r] >= self.horizon:
                    continue
                moved = self.grammar.step(self.states[r], token)
                if moved is None:
                    self.done[r] = self.horizon
                    continue
                self.states[r], completed = moved
                self.done[r] += completed
        allowed = torch.zeros_like(scores, dtype=torch.bool)
        for r, state in enumerate(self.states):
            if self.done[r] >= self.horizon:
                allowed[r, self.eos_token_id] = True
            else:
                allowed[r, [i for i in self.grammar.allowed_ids(state) if i < vocab]] = True
        return scores.masked_fill(~allowed, float("-inf"))


class ForceToken(LogitsProcessor):
    """Runs after the constraint: at decode step ``step`` row 0 must write ``token`` (one the
    grammar does not allow), as a careless later processor could."""

    def __init__(self, step: int, token: int):
        self.step, self.token, self.calls = step, token, 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.calls += 1
        if self.calls == self.step:
            scores = scores.clone()
            scores[0] = float("-inf")
            scores[0, self.token] = 0.0
        return scores


def _generate(model, tok, grammar, constraint_cls, series, samples, sample, horizon, force=None):
    """``[series * samples, new]`` generated ids (the prompt cut off)."""
    config = preset_for_tokenizer(tok)
    ser = NumberSerializer(config).fit(HISTORIES[:series])
    enc = tok(list(ser.serialize(HISTORIES[:series])), return_tensors="pt", padding=True)
    processors = [constraint_cls(grammar, horizon, tok.eos_token_id)]
    if force is not None:
        processors.append(ForceToken(*force))
    torch.manual_seed(11)
    ids = model.generate(
        **enc,
        generation_config=GenerationConfig(
            do_sample=sample,
            temperature=1.5 if sample else None,  # flat sampling visits many states
            top_p=0.95 if sample else None,
            top_k=0 if sample else None,
            max_new_tokens=horizon * grammar.max_tokens_per_value + 1,
            num_return_sequences=samples,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        logits_processor=LogitsProcessorList(processors),
    )
    return ids[:, enc["input_ids"].shape[1] :]


@pytest.mark.parametrize("which", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("sample", [True, False], ids=["sampling", "greedy"])
def test_same_tokens_as_the_per_row_reference(request, which, sample):
    model, tok = request.getfixturevalue(which)
    horizon = 4
    grammar = NumberGrammar(tok, preset_for_tokenizer(tok), max_digits=3)  # short: hits the cap
    shapes = [(1, 3), (3, 4), (7, 2)] if sample else [(1, 1), (4, 1), (7, 1)]
    for series, samples in shapes:
        ref = _generate(model, tok, grammar, ReferenceConstraint, series, samples, sample, horizon)
        new = _generate(model, tok, grammar, NumberConstraint, series, samples, sample, horizon)
        assert torch.equal(ref, new), (series, samples)
        assert bool((new == tok.eos_token_id).any(dim=1).all())  # every row ended itself
        texts = tok.batch_decode(new, skip_special_tokens=True)
        assert all(t.count(preset_for_tokenizer(tok).value_end) == horizon for t in texts)
    # a disallowed token forced into row 0 at step 3 ends that row in both
    letter = next(i for i, t in enumerate(token_texts(tok)) if t.strip().isalpha())
    args = (model, tok, grammar)
    samples = 2 if sample else 1
    ref = _generate(*args, ReferenceConstraint, 3, samples, sample, horizon, force=(3, letter))
    new = _generate(*args, NumberConstraint, 3, samples, sample, horizon, force=(3, letter))
    assert torch.equal(ref, new)
    assert new[0, 2:4].tolist() == [letter, tok.eos_token_id]


@pytest.mark.parametrize("which", ["tiny_gpt2", "tiny_llama"])
def test_tables_follow_the_grammar_rules_in_every_state(request, which):
    _, tok = request.getfixturevalue(which)
    grammar = NumberGrammar(tok, preset_for_tokenizer(tok), max_digits=3, allow_missing=True)
    allowed_anywhere = sorted({i for s in grammar.states for i in grammar.allowed_ids(s)})
    vocab = allowed_anywhere[-1]  # the last number token falls outside: never allowed
    tables = grammar.tables(vocab, torch.device("cpu"), tok.eos_token_id)
    assert tables is grammar.tables(vocab, torch.device("cpu"), tok.eos_token_id)  # cached
    states = grammar.states
    K = len(states)
    assert tables.states == tuple(states) and states[0] == ""
    assert tables.allowed.shape == tables.next_state.shape == (K + 1, vocab)
    assert (tables.finished, tables.done) == (K, K + 1)
    expected_allowed = np.zeros((K + 1, vocab), dtype=bool)
    expected_next = np.full((K + 1, vocab), K)
    for i, state in enumerate(states):
        for token in range(vocab):
            moved = grammar.step(state, token)
            if moved is not None:
                expected_allowed[i, token] = True
                expected_next[i, token] = K + 1 if moved[1] else states.index(moved[0])
        assert set(np.flatnonzero(expected_allowed[i])) == {
            t for t in grammar.allowed_ids(state) if t < vocab
        }
    expected_allowed[K, tok.eos_token_id] = True
    np.testing.assert_array_equal(tables.allowed.numpy(), expected_allowed)
    np.testing.assert_array_equal(tables.next_state.numpy(), expected_next)
    assert expected_allowed[:K].sum() > K  # every state allows something, some several
    assert (expected_next[:K] == K + 1).any()  # some tokens complete a value


def test_processor_traces_without_host_sync(tiny_llama):
    """torch.compile(fullgraph=True) refuses `.tolist()`, `.item()`, data-dependent branches
    and `nonzero`: tracing the processor whole shows that a step never waits on the device."""
    _, tok = tiny_llama
    grammar = NumberGrammar(tok, preset_for_tokenizer(tok), max_digits=3)
    eager = NumberConstraint(grammar, 2, tok.eos_token_id)
    traced = NumberConstraint(grammar, 2, tok.eos_token_id)
    step = torch.compile(traced.__call__, backend="eager", fullgraph=True)
    generator = torch.Generator().manual_seed(0)
    digits = [i for i in grammar.allowed_ids("") if token_texts(tok)[i].isdigit()]
    comma = tok.convert_tokens_to_ids(",")
    ids = torch.randint(0, len(tok), (5, 7), generator=generator)
    for token in (None, digits[0], comma, digits[1], comma, tok.eos_token_id):
        if token is not None:
            ids = torch.cat([ids, torch.full((5, 1), token)], dim=1)
        scores = torch.randn(5, len(tok), generator=generator)
        torch.testing.assert_close(step(ids, scores), eager(ids, scores), rtol=0, atol=0)
    np.testing.assert_array_equal(traced.count.numpy(), 2)
    assert bool((traced.state == traced.tables.finished).all())


@pytest.mark.cuda
def test_constraint_on_cuda_never_syncs_and_matches_the_cpu(tiny_llama):
    _, tok = tiny_llama
    horizon = 3
    grammar = NumberGrammar(tok, preset_for_tokenizer(tok), max_digits=3)
    # compiled before decoding, as the forecaster does: uploading the tables is a copy
    grammar.tables(len(tok), torch.device("cuda"), tok.eos_token_id)
    on_gpu = NumberConstraint(grammar, horizon, tok.eos_token_id)
    generator = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, len(tok), (64, 5), device="cuda", generator=generator)
    steps = []
    torch.cuda.set_sync_debug_mode("error")  # any host synchronization raises
    try:
        for _ in range(16):
            scores = torch.randn(64, len(tok), device="cuda", generator=generator)
            out = on_gpu(ids, scores)
            steps.append((ids, scores, out))
            ids = torch.cat([ids, out.argmax(dim=1, keepdim=True)], dim=1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    on_cpu = NumberConstraint(grammar, horizon, tok.eos_token_id)
    for ids, scores, out in steps:
        torch.testing.assert_close(out.cpu(), on_cpu(ids.cpu(), scores.cpu()), rtol=0, atol=0)
    assert on_gpu.count.cpu().tolist() == [horizon] * 64  # 16 steps finish every row


@pytest.mark.cuda
def test_forecaster_on_cuda_with_a_compiled_static_cache(tiny_cache):
    model, tok = load_causal_lm(tiny_model_dir("tiny-llama", tiny_cache), device="cuda")
    task = prepare_task(sensors(), history=24, horizon=6)
    forecasts = [
        ZeroShotForecaster(model, tok, num_samples=4, static_cache=static).forecast(
            task, max_windows=3, progress=False
        )
        for static in (None, False)  # None: static on CUDA
    ]
    for forecast in forecasts:
        assert forecast.meta["valid_fraction"] == 1.0 and forecast.samples.shape == (4, 3, 6, 3, 1)


@pytest.mark.parametrize("which", ["tiny_gpt2", "tiny_llama"])
def test_static_cache_gives_the_same_forecast_on_the_cpu(request, which):
    model, tok = request.getfixturevalue(which)
    task = prepare_task(sensors(), history=24, horizon=6)
    samples = [
        ZeroShotForecaster(model, tok, num_samples=3, batch_size=2, static_cache=static)
        .forecast(task, max_windows=2, progress=False)
        .samples
        for static in (False, True)
    ]
    np.testing.assert_array_equal(samples[0], samples[1])
    assert np.isfinite(samples[0]).all()


def test_auto_batch_size_arithmetic(tiny_llama):
    model, tok = tiny_llama
    config = model.config  # hidden 64, 2 layers, 4 heads, 2 kv heads, MLP 128, float32
    kv = 2 * 2 * 2 * 16 * 4  # keys and values, layers, kv heads, head dim, bytes: per token
    prefill = 100 * (4 * 64 + 3 * 128) * 4  # 100 prompt tokens
    assert decoding_bytes_per_sequence(config, torch.float32, 100, 50) == kv * 150 + prefill
    # a one-token prompt: the step's score tensors (32 bytes per vocabulary entry) dominate
    assert decoding_bytes_per_sequence(config, torch.float32, 1, 50) == kv * 51 + len(tok) * 32
    per_series = 10 * (kv * 150 + prefill)
    free = 3 * 2**30
    assert (
        auto_batch_size(config, torch.float32, 100, 50, 10, free) == int(0.8 * free) // per_series
    )
    assert auto_batch_size(config, torch.float32, 100, 50, 10, 1000) == 1  # never below one
    # TinyLlama-1.1B in bfloat16, 300 prompt tokens, 61 answer tokens, 10 samples, 130 GiB free:
    # KV 2*22*4*64*2 = 22,528 B/token * 361 = 8,132,608 B; prefill 300 * (4*2048 + 3*5632) * 2
    # = 15,052,800 B; 10 * 23,185,408 B per series; 0.8 * 130 GiB / that = 481.6
    tinyllama = LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
    )
    assert decoding_bytes_per_sequence(tinyllama, torch.bfloat16, 300, 61) == 23_185_408
    assert auto_batch_size(tinyllama, torch.bfloat16, 300, 61, 10, 130 * 2**30) == 481
    # on the CPU "auto" is the fixed default
    forecaster = ZeroShotForecaster(model, tok, num_samples=10)
    assert forecaster.batch_size == "auto"
    assert forecaster._resolve_batch_size(torch.device("cpu"), 100, 50) == CPU_BATCH_SIZE


def test_llmtime_budget_and_static_ban(tiny_gpt2):
    model, tok = tiny_gpt2
    # "1 2 3 , 4 5 , 6 ," is 9 tokens in 4 pieces (the last one empty): 2.25 tokens a step
    assert llmtime_budget(tok, "1 2 3 , 4 5 , 6 ,", " ,", 4) == 9
    assert llmtime_budget(tok, "1 2 3 , 4 5 , 6 ,", " ,", 3) == 6
    forecaster = ZeroShotForecaster(model, tok, num_samples=3)
    batch = forecaster.builder.build(sensors(), np.array([0, 40]), 12, 4, np.arange(2))
    grammar = NumberGrammar(tok, forecaster.serializer, 4)
    banned = set(banned_token_ids(grammar, len(tok)))
    assert tok.eos_token_id in banned and not banned & set(grammar.allowed_ids(""))
    texts = llmtime_loop(model, tok, batch, grammar, horizon=4, num_samples=3, seed=5)
    assert texts.shape == (3, 2 * 2)
    for m in range(texts.shape[1]):
        series = batch.serializer.join(batch.values[m])
        budget = llmtime_budget(tok, series, forecaster.serializer.time_sep, 4)
        for text in texts[:, m]:
            assert set(text) <= set("0123456789 ,-")  # number tokens only
            # re-tokenizing can merge the generated tokens, never split them
            assert 0 < len(tok(text, add_special_tokens=False)["input_ids"]) <= budget
    again = llmtime_loop(model, tok, batch, grammar, horizon=4, num_samples=3, seed=5)
    np.testing.assert_array_equal(texts, again)


def test_throughput_rows(tiny_cache, monkeypatch):
    monkeypatch.setenv("LLM_ST_CACHE", str(tiny_cache.parent))
    rows = zero_shot_throughput(
        "tiny-llama",
        num_series=4,
        num_samples=2,
        batch_sizes=(2, 4),
        history=12,
        horizon=3,
        device="cpu",
    )
    assert [(r["method"], r["batch_size"]) for r in rows] == [
        ("LLMTime-style loop", 1),
        ("batched, constrained", 2),
        ("batched, constrained", 4),
    ]
    for row in rows:
        assert row["series_per_s"] > 0 and row["step_ms"] > 0 and row["constraint_ms"] > 0
        share = row["constraint_ms"] / (row["constraint_ms"] + row["step_ms"])
        assert row["constraint_share"] == pytest.approx(share, rel=1e-12)
