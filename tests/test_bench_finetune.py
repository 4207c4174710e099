"""The fine-tuning bench: the engine and the plain Hugging Face loop on the same model and
batches, figures consistent with each other."""

from __future__ import annotations

import math

import pytest

from llm_st.bench.finetune import LORA, engine_order, finetune_throughput, llama_shape
from llm_st.errors import ConfigError

TINY = {
    "name": "tiny",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 1000,
}
SMALL = {
    "data": "synthetic-traffic:num_nodes=4,num_days=2,interval_minutes=60,seed=0",
    "history": 12,
    "horizon": 4,
    "steps": 2,
    "batch_size": 2,
    "device": "cpu",
    "warmup": False,
}


def llama_params(shape: dict) -> int:
    """Parameters of a LlamaForCausalLM of ``shape`` (untied head)."""
    d, m, n, v = (shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                     "vocab_size"))  # fmt: skip
    kv = d // shape["num_attention_heads"] * shape["num_key_value_heads"]
    block = 2 * d * d + 2 * d * kv + 3 * d * m + 2 * d
    return 2 * v * d + n * block + d


def lora_params(shape: dict, r: int) -> int:
    """LoRA's ``A [r, in]`` and ``B [out, r]`` on q, k, v, o, gate, up and down of each block."""
    d, m, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = d // shape["num_attention_heads"] * shape["num_key_value_heads"]
    pairs = [(d, d), (d, kv), (d, kv), (d, d), (d, m), (d, m), (m, d)]
    return n * sum(r * (a + b) for a, b in pairs)


def test_engine_and_plain_loop_rows_are_consistent():
    rows = finetune_throughput(sizes=[TINY], policies=["lora"], **SMALL)
    assert [(r["size"], r["policy"], r["method"]) for r in rows] == [
        ("tiny", "lora", "engine"),
        ("tiny", "lora", "plain"),
    ]
    engine, plain = rows
    shape = llama_shape(TINY)[1]
    for row in rows:
        assert row["params"] == llama_params(shape)
        assert row["steps"] == 2 and row["warmup_steps"] == 1
        assert row["tokens_per_s"] > 0
        assert math.isclose(row["tokens_per_s"], row["timed_tokens"] / row["timed_s"])
        assert math.isclose(row["examples_per_s"], row["timed_examples"] / row["timed_s"])
        assert row["timed_examples"] == SMALL["batch_size"]  # the one step after warm-up
        assert 0 < row["timed_tokens"] < row["tokens"]
        assert row["trainable"] == lora_params(shape, LORA["r"])
        assert row["total"] == row["params"] + row["trainable"]
        assert row["peak_mb"] >= 0 and row["baseline_mb"] > 0
        assert row["saved_mb"] > 0
        assert row["peak_kind"] == "rss above start"
    # the same batches: the same real tokens in all steps and in the timed ones
    assert engine["tokens"] == plain["tokens"] and engine["timed_tokens"] == plain["timed_tokens"]
    assert engine["engine_samples_per_s"] == pytest.approx(engine["examples_per_s"])
    assert plain["speedup"] == 1.0 and plain["memory_ratio"] == 1.0
    assert engine["speedup"] == engine["tokens_per_s"] / plain["tokens_per_s"]


def test_engine_order_spans_epochs_and_bad_settings_are_refused():
    order = engine_order(5, 2, 4, seed=0)
    assert [len(b) for b in order] == [2, 2, 1, 2]
    assert sorted(int(i) for b in order[:3] for i in b) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="steps=1"):
        finetune_throughput(sizes=[TINY], **{**SMALL, "steps": 1})
    with pytest.raises(ConfigError, match="unknown policies"):
        finetune_throughput(sizes=[TINY], policies=["frozen"], **SMALL)
    with pytest.raises(ConfigError, match="unknown model size"):
        finetune_throughput(sizes=["7B"], **SMALL)
