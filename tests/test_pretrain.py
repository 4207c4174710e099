"""``llm-st pretrain``: a forecasting LM pre-trained from scratch on serialized series.

The runs here are the test recipe (``alignment/pretrain/st_lm_test.yaml``) shrunk further
with overrides to a few optimizer steps of a one-block model; the model that other tests
fine-tune is the test recipe's own (the ``pretrained_test_lm`` fixture).
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
import yaml

from llm_st.backbones.hub import load_causal_lm, resolve_source
from llm_st.backbones.pretrained_here import (
    ST_LM,
    TEST_RECIPE,
    pretrained_model_dir,
    recipe_file,
)
from llm_st.cli import main
from llm_st.data import load
from llm_st.data.task import prepare_task
from llm_st.engine import CheckpointManager, load_weights
from llm_st.errors import ConfigError, ModelLoadError
from llm_st.models.base import DataInfo
from llm_st.models.text_lm import TextLM
from llm_st.pipeline import pretrain as pt
from llm_st.prompting.dataset import SFTDataConfig, continuation_ids, sft_texts
from llm_st.tokens.serialize import (
    LLMTIME_LLAMA,
    NumberSerializer,
    merges_digits,
    preset_for_tokenizer,
)

TEST = recipe_file(TEST_RECIPE)
# a one-block model, two generated series, a few steps and no held-out check
SMALL = [
    "corpus.sources.0.variations=[{interval_minutes: 60, num_days: 8}]",
    "corpus.sources.0.max_windows=8",
    "corpus.sources.1.max_windows=8",
    "tokenizer.windows=2",
    "model.layers=1",
    "model.hidden=32",
    "model.heads=2",
    "model.kv_heads=null",
    "training.max_steps=6",
    "training.eval_every=2",
    "training.batch_size=4",
    "training.warmup_steps=0",
    "eval.datasets=[]",
]


def small_recipe(*extra: str) -> pt.PretrainRecipe:
    return pt.load_pretrain_recipe(TEST, [*SMALL, *extra])


# ----------------------------------------------------------------------------- recipe
def test_recipe_refuses_unknown_keys_and_takes_overrides_into_lists():
    recipe = small_recipe("corpus.sources.1.history=[12, 24]", "training.lr=1e-3")
    assert recipe.corpus.sources[1].history == [12, 24]
    assert recipe.training.lr == 1e-3 and recipe.model.hidden == 32
    with pytest.raises(ConfigError, match="did you mean 'layers'"):
        pt.load_pretrain_recipe(TEST, ["model.layer=2"])
    with pytest.raises(ConfigError, match="no element '5'"):
        pt.load_pretrain_recipe(TEST, ["corpus.sources.5.max_windows=2"])
    with pytest.raises(ConfigError, match="val_loss"):
        pt.load_pretrain_recipe(TEST, ["training.select_metric=val_mae"])
    with pytest.raises(ConfigError, match="synthetic generators only"):
        pt.load_pretrain_recipe(TEST, ["corpus.sources.0.spec=ETTh2"])
    with pytest.raises(ConfigError, match="SerializerConfig"):
        pt.load_pretrain_recipe(TEST, ["corpus.serializer={digits: 2}"])
    # the resolved recipe reads back to an equal one
    again = pt.recipe_from_dict(yaml.safe_load(yaml.safe_dump(recipe.to_dict())))
    assert again == recipe


# ----------------------------------------------------------------------------- tokenizer
def test_tokenizer_keeps_every_digit_a_token_and_round_trips_the_corpus():
    recipe = small_recipe()
    series = pt.build_corpus(recipe)
    tokenizer = pt.build_tokenizer(recipe, series)
    texts = pt.corpus_texts(recipe, series, tokenizer)
    assert texts and all(any(c.isdigit() for c in t) for t in texts)
    assert not merges_digits(tokenizer)
    assert preset_for_tokenizer(tokenizer) == LLMTIME_LLAMA  # the format it was trained on
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert not [v for v in vocab if sum(c.isdigit() for c in v) > 1]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text
        digits = [i for i in ids if any(c.isdigit() for c in vocab[i])]
        assert len(digits) == sum(c.isdigit() for c in text)  # one token per digit
    # answers continue a prompt exactly (what the SFT rows and the decoder rely on)
    config = SFTDataConfig(serializer=LLMTIME_LLAMA, max_windows=2, max_nodes=2)
    answers = [a for _, a in sft_texts(series[0].task, "train", tokenizer, config)]
    assert continuation_ids(tokenizer, answers, strict=True)
    # special tokens, and the same tokenizer from the same texts
    assert tokenizer.eos_token == tokenizer.bos_token != tokenizer.pad_token
    again = pt.train_digit_tokenizer(texts, recipe.tokenizer.vocab_size, 512)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


# ----------------------------------------------------------------------------- corpus
def test_corpus_uses_only_the_training_rows_of_named_datasets(shared_data):
    recipe = small_recipe(
        "corpus.sources.1={spec: ETTh2, history: 24, horizon: 12, max_windows: 4, max_nodes: null}",
    )
    series = pt.build_corpus(recipe)
    named = [s for s in series if s.rows is not None]
    assert len(named) == 1 and all(s.rows is None for s in series if s.source.synthetic)
    s = named[0]
    full = load("ETTh2")
    border = prepare_task(full, 24, 12).split.train[1]
    assert s.rows == (0, border) == (0, 8640)
    # the series is the training rows, and no window of it reads past them
    assert s.task.data.num_steps == border
    np.testing.assert_array_equal(s.task.data.values, full.values[:border])
    for part in ("train", "val"):
        index = s.task.index(part)
        assert len(index) and index.starts.max() + 24 + 12 <= border
    # the answer of the last validation window is the last training rows, nothing later
    assert s.task.index("val").starts.max() + 24 + 12 == border
    config = SFTDataConfig(serializer=LLMTIME_LLAMA, max_nodes=1)  # node 0
    _, answer = sft_texts(s.task, "val", pt.bootstrap_tokenizer(512), config)[-1]
    fitted = NumberSerializer(LLMTIME_LLAMA).fit(full.values[border - 36 : border - 12, 0, 0])
    truth = full.values[border - 12 : border, 0, 0]
    np.testing.assert_allclose(fitted.parse(answer, 12).values, fitted.quantize(truth))


# ----------------------------------------------------------------------------- the run
def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(tmp_path, capsys):
    overrides = [f"--set={item}" for item in SMALL]
    full = tmp_path / "full"
    assert main(["pretrain", "--recipe", str(TEST), *overrides, "--out", str(full)]) == 0
    line = capsys.readouterr().out
    assert "no held-out check" in line and f"-> {full / 'model'}" in line

    def interrupt(step: int) -> None:
        if step == 3:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        pt.pretrain(small_recipe(), part, on_step=interrupt)
    assert CheckpointManager(part / "checkpoints").latest().name == "ckpt-000000002"
    assert not (part / "model").exists()
    with pytest.raises(ConfigError, match="--resume"):  # never restarted over it silently
        pt.pretrain(small_recipe(), part)
    with pytest.raises(ConfigError, match="training.lr"):  # nor resumed with another recipe
        pt.pretrain(small_recipe("training.lr=1e-3"), part, resume=True)
    resumed = pt.pretrain(small_recipe(), part, resume=True)

    a = load_weights(full / "model" / "model.safetensors")
    b = load_weights(part / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    done = json.loads((full / "metrics.json").read_text())
    for key in ("steps", "val_loss", "best_step", "tokens_seen", "examples_seen", "params"):
        assert resumed[key] == done[key], key
    assert done["steps"] == 6 and done["tokens_seen"] > done["examples_seen"] > 0
    # the run directory: the starting point, the resolved recipe, the engine's files
    assert (part / "init" / "config.json").is_file()
    assert pt.load_pretrain_recipe(part / pt.RECIPE_NAME) == small_recipe()
    assert len((part / "log.jsonl").read_text().splitlines()) == 3


def test_the_pretrained_lm_loads_as_a_backbone_and_forecasts(pretrained_test_lm):
    lm, tokenizer = load_causal_lm(pretrained_test_lm)
    assert lm.config.model_type == "llama" and not merges_digits(tokenizer)
    assert (pretrained_test_lm / "model.safetensors").is_file()
    assert not list(pretrained_test_lm.glob("*.bin"))  # safetensors only
    metrics = json.loads((pretrained_test_lm.parent / "metrics.json").read_text())
    assert metrics["model_dir"] == str(pretrained_test_lm)
    (row,) = metrics["heldout"].values()
    assert {"lm", "last_value", "historical_average"} <= set(row) and row["valid_fraction"] == 1

    data = load("synthetic-traffic:num_nodes=4,num_days=3,interval_minutes=60,seed=5")
    info = DataInfo.from_data(data, 12, 4)
    backbone = {"source": str(pretrained_test_lm), "freeze": "lora", "lora": {"r": 4}}
    model = TextLM(info, backbone=backbone)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert model.serializer == LLMTIME_LLAMA  # the tokenizer's preset: the format it learned
    forecast = model.forecast_windows(data, np.array([0, 20]), 12, 4, nodes=[0, 1])
    assert forecast.point.shape == (2, 4, 2, 1) and forecast.valid.all()


def test_a_gpt2_layout_lm_is_pretrained_and_takes_lora_on_its_conv1d_layers(tmp_path):
    empty = tmp_path / "no-data"
    recipe = small_recipe(
        "model.arch=gpt2",
        "model.tie_embeddings=false",
        "training.max_steps=2",
        f"eval.datasets=[{{spec: LosLoop, data_dir: {empty}}}]",
    )
    metrics = pt.pretrain(recipe, tmp_path)
    # a held-out dataset that is not there is skipped, the LM is built all the same
    assert "not found" in metrics["heldout"]["LosLoop"]["skipped"]
    assert "LosLoop skipped (not found)" in pt.summary_line(metrics)
    lm, tokenizer = load_causal_lm(tmp_path / "model")
    assert lm.config.model_type == "gpt2" and lm.config.n_inner == 4 * 32
    assert lm.config.vocab_size == len(tokenizer) and lm.config.pad_token_id == 1
    assert (
        lm.get_input_embeddings().weight.data_ptr() != lm.get_output_embeddings().weight.data_ptr()
    )
    data = load("synthetic-traffic:num_nodes=4,num_days=3,interval_minutes=60,seed=5")
    backbone = {"source": str(tmp_path / "model"), "freeze": "lora", "lora": {"r": 2}}
    model = TextLM(DataInfo.from_data(data, 12, 4), backbone=backbone)
    assert any(".lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_pretrained_lm_is_built_once_then_read_from_the_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LLM_ST_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(small_recipe("training.max_steps=2").to_dict()))
    runs = []
    build = pt.pretrain
    monkeypatch.setattr(pt, "pretrain", lambda *a, **k: runs.append(a) or build(*a, **k))
    with caplog.at_level(logging.INFO, logger="llm_st"):
        first = pt.pretrained_lm(recipe)
    assert "pre-training the forecasting LM on synthetic series (once" in caplog.text
    assert first == pt.pretrained_root(recipe) / "model" and (first / "config.json").is_file()
    assert first.parent.parent == tmp_path / "cache" / "models"
    assert first.parent.name.startswith("st-lm-") and len(runs) == 1
    assert sorted(p.name for p in first.parent.parent.iterdir()) == [first.parent.name]
    assert not (first.parent / "checkpoints").exists()
    assert pt.pretrained_lm(recipe) == first and len(runs) == 1  # no second training
    recipe.write_text(recipe.read_text() + "\n# edited\n")  # another recipe: another model
    assert pt.pretrained_lm(recipe) != first and len(runs) == 2


def test_st_lm_names_the_cached_lm_of_the_shipped_recipe(pretrained_test_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_ST_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="llm-st pretrain --recipe alignment/pretrain"):
        resolve_source(ST_LM)
    target = pretrained_model_dir()
    assert target.parent.parent == tmp_path / "models"
    assert target == pt.pretrained_root(recipe_file()) / "model"
    shutil.copytree(pretrained_test_lm, target)  # stands in for the shipped recipe's build
    assert resolve_source(ST_LM) == (str(target), True)
    assert pt.pretrained_lm() == target  # built already: nothing is trained
    lm, _ = load_causal_lm(ST_LM)
    assert lm.config.model_type == "llama"
    data = load("synthetic-traffic:num_nodes=4,num_days=3,interval_minutes=60,seed=5")
    model = TextLM(DataInfo.from_data(data, 12, 4), backbone={"source": ST_LM, "freeze": "full"})
    assert model.spec.source == ST_LM
