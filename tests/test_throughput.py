"""The throughput bench: the engine and a plain loop on the same model, rows and ratios."""

from __future__ import annotations

import statistics

import pytest
import torch
from transformers import GPT2Config

from llm_st.bench.throughput import engine_vs_plain, plain_loop
from llm_st.data import load
from llm_st.data.task import prepare_task
from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model

DATA = "synthetic-traffic:num_nodes=4,num_days=2"
SMALL = {"history": 12, "horizon": 6, "batch": 8, "blocks": 2, "steps": 4, "device": "cpu"}
PATCHES = {"patch_len": 4, "stride": 2}


def test_rows_compare_each_loop_with_the_plain_loop_of_its_precision():
    rows = engine_vs_plain(backbone="tiny-gpt2", data=DATA, params=PATCHES, **SMALL)
    assert [(r["loop"], r["precision"]) for r in rows] == [
        ("plain", "fp32"),
        ("engine", "fp32"),
        ("plain", "bf16"),
        ("engine", "bf16"),
    ]
    plain = {r["precision"]: r["samples_per_s"] for r in rows if r["loop"] == "plain"}
    for row in rows:
        assert row["samples_per_s"] > 0
        assert row["ratio"] == row["samples_per_s"] / plain[row["precision"]]


def test_a_config_backbone_gets_random_weights_of_its_shape_and_repeats_give_the_median():
    config = GPT2Config(n_embd=32, n_head=2, n_layer=3, n_positions=64)
    rows = engine_vs_plain(
        backbone=config, data=DATA, params=PATCHES, precisions=("fp32",), repeats=3, **SMALL
    )
    assert [r["loop"] for r in rows] == ["plain", "engine"] and rows[0]["ratio"] == 1.0
    for row in rows:
        assert len(row["runs"]) == 3 and row["samples_per_s"] == statistics.median(row["runs"])
    with pytest.raises(ConfigError, match="fp8"):
        engine_vs_plain(backbone=config, data=DATA, precisions=("fp8",), **SMALL)
    with pytest.raises(ConfigError, match="steps=1"):
        engine_vs_plain(backbone=config, data=DATA, **{**SMALL, "steps": 1})
    with pytest.raises(ConfigError, match="repeats=0"):
        engine_vs_plain(backbone=config, data=DATA, repeats=0, **SMALL)


def test_the_plain_loop_trains_only_the_trainable_parameters():
    task = prepare_task(load(DATA), 12, 6)
    torch.manual_seed(0)
    model = build_model(
        "gpt4ts",
        DataInfo.from_data(task.data, 12, 6),
        backbone={"source": "tiny-gpt2", "num_layers": 2},
        **PATCHES,
    )
    before = {k: v.clone() for k, v in model.named_parameters()}
    speed = plain_loop(model, task, 8, 3, "bf16", torch.device("cpu"), lr=1e-2)
    assert speed > 0
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed == {k for k, v in model.named_parameters() if v.requires_grad}
