"""The memory bench: policy names, the peak measurement, the projection to 32 blocks, and
cells of a small LLaMA shape run the real loading path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm_st.bench.memory import (
    _peak,
    _reset_peak,
    measure_cell,
    memory_table,
    policy_fields,
    project,
    write_shape,
)
from llm_st.errors import ConfigError

pytest_plugins = ["conftest_prompt"]  # tiny_cache: the session's tiny-model directory

CPU = torch.device("cpu")


@pytest.fixture
def tiny_env(tiny_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny LLaMA tokenizer resolves to the session's build."""
    monkeypatch.setenv("LLM_ST_CACHE", str(tiny_cache.parent))


def test_policy_names_are_freeze_policies_with_a_dtype():
    assert policy_fields("frozen-bf16") == {"freeze": "frozen", "dtype": "bfloat16"}
    assert policy_fields("layernorm") == {"freeze": "layernorm", "dtype": "float32"}
    # the 4-bit policies compute in bfloat16 unless told otherwise
    assert policy_fields("qfrozen") == {"freeze": "qfrozen", "lora": {"compute_dtype": "bfloat16"}}
    assert policy_fields("qlora-fp32") == {"freeze": "qlora", "lora": {"compute_dtype": "float32"}}
    for bad in ("frozen-int8", "adapters", "bf16"):
        with pytest.raises(ConfigError, match="unknown memory-bench policy"):
            policy_fields(bad)


def test_projection_is_the_least_squares_line_through_the_block_counts():
    two = [
        {"blocks": 2, "peak_mb": 100.0, "step_s": 1.0},
        {"blocks": 4, "peak_mb": 140.0, "step_s": 1.5},
    ]
    # 20 MB and 0.25 s a block, 60 MB and 0.5 s outside: at 32 blocks 60 + 640, 0.5 + 8
    assert project(two, 32) == {
        "peak_mb": 700.0,
        "step_s": 8.5,
        "per_block_mb": 20.0,
        "outside_mb": 60.0,
    }
    # three points: slope 2.5 through the mean (2, 13), so 8 at 0 blocks and 88 at 32
    three = [{"blocks": k, "peak_mb": m, "step_s": 1.0} for k, m in ((1, 10), (2, 14), (3, 15))]
    assert project(three, 32)["peak_mb"] == 88.0 and project(three, 32)["outside_mb"] == 8.0
    with pytest.raises(ConfigError, match="two block counts"):
        project(two[:1] * 2, 32)


def test_the_cpu_peak_counts_what_was_touched_since_the_reset():
    before = _reset_peak(CPU)
    block = torch.ones(50 * 2**20)  # 200 MiB, written, then freed
    del block
    peak = _peak(CPU)
    assert 195 < peak - before < 260
    again = _reset_peak(CPU)  # the reset forgets that peak
    assert _peak(CPU) - again < 20


def test_a_cell_trains_the_recipe_model_on_the_written_shape(tiny_env, tmp_path):
    source = write_shape(tmp_path, 128, 256, 1, 800, num_layers=4)
    cell = {
        "adapter": "timellm",
        "policy": "qfrozen",
        "blocks": 1,
        "checkpointing": True,
        "source": str(source),
        "history": 32,
        "nodes": 3,
        "batch": 2,
        "device": "cpu",
        "steps": 1,
        "threads": None,
    }
    row = measure_cell(cell)
    # the ETTh1 recipe's Time-LLM on width 128, vocabulary 800, history 32 (P = 4 patches):
    # conv 16 x 32 x 3; prototype map 800 -> 1000; query 32 -> 8 x 128, key and value
    # 128 -> 1024, out 1024 -> 128; head 4 x 128 -> 96 (biases everywhere but the conv)
    assert row["trainable"] == (1536 + 801000 + 33792 + 2 * 132096 + 131200 + (4 * 128 * 96 + 96))
    assert row["sequences"] == 2 * 3 and row["tokens"] > 4  # the prompt before the patches
    assert row["peak_mb"] >= row["before_mb"] > row["baseline_mb"] > 0


@pytest.mark.slow
def test_the_table_measures_each_cell_in_its_own_process_and_projects(tiny_env):
    rows = memory_table(
        adapters=("gpt4ts",),
        blocks=(1, 2),
        policies=("qfrozen",),
        checkpointing=(True,),
        hidden_size=128,
        intermediate_size=256,
        num_heads=2,
        vocab_size=800,
        scale=2,
        history=32,
        batch=2,
        nodes=3,
        device="cpu",
        steps=1,
    )
    measured = [r for r in rows if r["kind"] == "measured"]
    assert [r["blocks"] for r in measured] == [1, 2] and not any("error" in r for r in rows)
    assert all(r["hidden_size"] == 64 and r["num_heads"] == 1 for r in rows)
    (projected,) = [r for r in rows if r["kind"] == "projected"]
    assert projected["blocks"] == 32
    assert {k: projected[k] for k in project(measured, 32)} == project(measured, 32)
