"""ST tokens inside the prompt (``st_token_lm``): the splice, what trains, the head's loss,
initialization from an align run, and a recipe trained end to end that the pipeline loads.

A tiny GPT-2 (width 64), a small patch encoder, a 4-sensor synthetic traffic graph at
hourly steps; prompts without neighbour lists and with a one-line description, so they
stay short.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_st.backbones.text_encoder import FrozenTextEncoder
from llm_st.backbones.tiny import tiny_model_dir
from llm_st.config import load_recipe
from llm_st.crossmodal import PatchEncoder
from llm_st.crossmodal.st_tokens import STTokenLM, st_token_nodes
from llm_st.data import load
from llm_st.data.task import prepare_task
from llm_st.engine import train
from llm_st.errors import ConfigError
from llm_st.evaluation.evaluate import evaluate_window_forecaster
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model, get_model_class
from llm_st.objectives import build_objective
from llm_st.objectives.alignment import AlignmentConfig
from llm_st.pipeline import ForecastPipeline
from llm_st.pipeline.align import align, alignment_training

RECIPE = Path(__file__).resolve().parents[1] / "alignment/st_token_lm/synthetic-traffic/config.yaml"
SMALL = "synthetic-traffic:num_nodes=4,num_days=6,interval_minutes=60,seed=0"
HISTORY, HORIZON, K = 12, 4, 3
ENCODER = {"d_model": 16, "num_layers": 1, "num_heads": 2, "patch_len": 4, "stride": 2}
DESCRIPTION = "Road speeds in mph."


@pytest.fixture(scope="module")
def task():
    return prepare_task(load(SMALL), HISTORY, HORIZON, ratios=(0.6, 0.2, 0.2))


def make_model(task, answer="text", **params):
    settings = dict(
        backbone={"source": "tiny-gpt2", "freeze": "lora", "lora": {"r": 4, "alpha": 8}},
        num_neighbors=0,
        description=DESCRIPTION,
        encoder_params=ENCODER,
        st_tokens=K,
        answer=answer,
        val_windows=2,
        val_nodes=2,
        test_windows=2,
        test_nodes=2,
    )
    settings.update(params)
    torch.manual_seed(0)
    model = build_model("st_token_lm", DataInfo.from_data(task.data, HISTORY, HORIZON), **settings)
    model.fit_data(task.train_data(), task.scaler)
    return model


def train_batch(model, task, rows=(0, 5, 9, 14)):
    objective = build_objective("sft", None, model, train_windows=4, cache_dir=False)
    return objective.dataset(task, "train")[list(rows)]


def expected_vectors(model, batch):
    """``[B, K, D]`` projection(encoder(window)) of each row's node and neighbours, row by
    row (no batching across rows, no deduplication of windows)."""
    out = []
    for b in range(len(batch["node"])):
        inputs = {k: batch[k][b : b + 1] for k in ("x", "x_mask", "x_time", "y_time")}
        z = model.projection(model.encoder.embed(inputs))[0]  # [N, D]
        out.append(z[model.st_nodes[batch["node"][b]]])
    return torch.stack(out)


# ----------------------------------------------------------------------------- the splice
def test_st_tokens_are_the_node_and_its_strongest_neighbours(task):
    info = DataInfo.from_data(task.data, HISTORY, HORIZON)
    table = st_token_nodes(info, K)
    for node in range(task.data.num_nodes):
        idx, _ = task.data.adjacency.neighbors(node, K - 1)  # the prompts' neighbour order
        want = [node, *idx.tolist()] + [node] * (K - 1 - len(idx))
        assert table[node].tolist() == want
    # node 0 of this graph has one neighbour: padded with itself
    assert table[0].tolist() == [0, 1, 0]
    info.adjacency = None
    assert (st_token_nodes(info, K) == np.arange(4)[:, None]).all()
    assert get_model_class("st_token_lm") is STTokenLM


def test_projected_vectors_sit_exactly_at_the_placeholders(task):
    model = make_model(task, decode_batch_size=16)
    batch = train_batch(model, task)
    assert batch["st_positions"].shape == (4, K) and len(set(batch["window"].tolist())) > 1
    assert model.st_nodes.tolist() == st_token_nodes(model.info, K).tolist()
    seen = {}

    def grab(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = model.hf_model.base_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model.lm_loss(batch)
    finally:
        handle.remove()
    embeds = seen["embeds"]
    words = model.hf_model.get_input_embeddings()(batch["input_ids"]).detach()
    rows = torch.arange(4)[:, None]
    at = batch["st_positions"]
    # the placeholders are pad ids inside the prompt; there the vectors, elsewhere the words
    assert (batch["input_ids"][rows, at] == model.tokenizer.pad_token_id).all()
    assert (at < batch["prompt_length"][:, None]).all()
    with torch.no_grad():
        want = expected_vectors(model, batch)
    torch.testing.assert_close(embeds[rows, at], want, atol=1e-6, rtol=0)
    other = torch.ones(embeds.shape[:2], dtype=torch.bool)
    other[rows, at] = False
    assert torch.equal(embeds[other], words[other])

    # the decoder renders and tokenizes exactly the training prompt of a window and node
    fc = model.forecaster()
    windows = task.dataset("train")
    for b in range(4):
        prompts = fc.builder.build(
            task.data, windows.index.starts[[int(batch["window"][b])]], HISTORY, HORIZON,
            [int(batch["node"][b])], variables=fc.prompt_variables,
        )  # fmt: skip
        ids, positions = fc.prompt_ids(prompts)
        n = int(batch["prompt_length"][b])
        assert ids[0] == batch["input_ids"][b, :n].tolist()
        assert positions[0] == at[b].tolist()

    # decoding starts from the training row's embeddings: the window read from the data and
    # scaled with the kept scaler, the same node and neighbours
    model.eval()
    with torch.no_grad():
        train_embeds = model.st_embeds(batch)
    prefill = []

    def first(module, args, kwargs):
        if kwargs.get("inputs_embeds") is not None:
            prefill.append(kwargs["inputs_embeds"].detach().clone())

    handle = model.hf_model.base_model.register_forward_pre_hook(first, with_kwargs=True)
    # the rows' windows x nodes 0..2 in one generate call (16 prompts per call)
    picked = np.unique(batch["window"].numpy())
    try:
        model.forecast_windows(task.data, windows.index.starts[picked], HISTORY, HORIZON, [0, 1, 2])
    finally:
        handle.remove()
    assert len(prefill) == 1 and prefill[0].shape[0] == len(picked) * 3
    width = prefill[0].shape[1]
    for b in range(4):
        prompt = int(np.searchsorted(picked, int(batch["window"][b]))) * 3 + int(batch["node"][b])
        n = int(batch["prompt_length"][b])  # left padding in generate
        got = prefill[0][prompt, width - n :]
        torch.testing.assert_close(got, train_embeds[b, :n], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- training
def test_gradients_reach_encoder_and_projection_and_lora_leaves_the_lm_frozen(task):
    model = make_model(task)
    batch = train_batch(model, task)
    frozen = {n: p.detach().clone() for n, p in model.lm.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("encoder.") for n in trainable)
    assert any(n.startswith("projection.") for n in trainable)
    assert all(n.startswith(("encoder.", "projection.")) or "lora_" in n for n in trainable)
    loss, _ = model.lm_loss(batch)
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith(("encoder.", "projection.")):
            assert p.grad is not None, name
    assert float(model.projection[0].weight.grad.abs().sum()) > 0
    assert float(model.encoder.patch_embed.weight.grad.abs().sum()) > 0
    assert float(model.encoder.transformer.layers[0].linear1.weight.grad.abs().sum()) > 0
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    optimizer.step()
    for name, p in model.lm.named_parameters():
        if name in frozen:
            assert p.grad is None and torch.equal(p.detach(), frozen[name]), name
    after = dict(model.named_parameters())
    changed = {n for n in trainable if not torch.equal(after[n].detach(), trainable[n])}
    assert "projection.0.weight" in changed and "encoder.patch_embed.weight" in changed
    assert any("lora_B" in n for n in changed)


def test_head_loss_is_the_masked_mae_of_the_last_prompt_token(task):
    model = make_model(task, answer="head")
    batch = train_batch(model, task)
    # prompts only: no answer tokens, labels unused
    assert (batch["labels"] == -100).all()
    assert batch["prompt_length"].tolist() == batch["attention_mask"].sum(1).tolist()
    # hide some targets of the rows' own series (and one of another node, which must not count)
    y_mask = batch["y_mask"].clone()
    y_mask[0, 1, batch["node"][0], batch["channel"][0]] = False
    y_mask[2, :, batch["node"][2], batch["channel"][2]] = False
    batch["y_mask"] = y_mask
    model.eval()  # no dropout: the loss is recomputed below
    loss, _ = model.lm_loss(batch)
    with torch.no_grad():
        hidden = model.hidden_states(batch, model.st_embeds(batch)).double()
        weight, bias = model.head.weight.double(), model.head.bias.double()
        total, count = 0.0, 0
        for b in range(4):
            pred = hidden[b, int(batch["prompt_length"][b]) - 1] @ weight.T + bias  # [H]
            n, c = int(batch["node"][b]), int(batch["channel"][b])
            for h in range(HORIZON):
                if batch["y_mask"][b, h, n, c]:
                    total += abs(float(pred[h]) - float(batch["y_scaled"][b, h, n, c]))
                    count += 1
    assert count == 4 * HORIZON - 1 - HORIZON
    assert float(loss.detach()) == pytest.approx(total / count, rel=1e-5)
    assert float(model.loss_weight(batch)) == count
    loss.backward()
    assert float(model.head.weight.grad.abs().sum()) > 0
    assert float(model.projection[0].weight.grad.abs().sum()) > 0


def test_refusals(task):
    with pytest.raises(ConfigError, match="st_tokens"):
        make_model(task, template="plain")
    with pytest.raises(ConfigError, match="answer"):
        make_model(task, answer="logits")
    model = make_model(task)
    with pytest.raises(ConfigError, match="packed"):
        build_objective("sft", None, model, packing=True, cache_dir=False)
    with pytest.raises(ConfigError, match="horizon"):
        model.forecast_windows(task.data, np.array([0]), HISTORY, HORIZON + 1)


# ----------------------------------------------------------------------------- init_from
def test_init_from_an_align_run_loads_encoder_and_projection(task, tmp_path):
    # tiny-bert and tiny-gpt2 are both 64 wide: the aligned space is the LM's input width
    text = FrozenTextEncoder(tiny_model_dir("tiny-bert"), device="cpu")
    info = DataInfo.from_data(task.data, HISTORY, HORIZON)
    torch.manual_seed(1)
    encoder = PatchEncoder(info, **ENCODER)
    run = tmp_path / "align"
    align(
        task, AlignmentConfig(projection="mlp"), encoder,
        alignment_training(steps=2, batch_size=4, device="cpu"),
        text_model=text, run_dir=run, eval_windows=4, paraphrases=False,
    )  # fmt: skip
    saved = load_file(str(run / "model.safetensors"))
    projection = load_file(str(run / "objective.safetensors"))
    model = make_model(task, init_from=str(run))
    fresh = make_model(task)
    for name, value in model.encoder.state_dict().items():
        assert torch.equal(value, saved[name]), name
    for name, value in model.projection.state_dict().items():
        assert torch.equal(value, projection[f"projection.{name}"]), name
    assert not torch.equal(fresh.projection[0].weight, model.projection[0].weight)

    # a projection into a space of another width than the LM's hidden size
    wide = tmp_path / "wide"
    shutil.copytree(run, wide)
    other = {k: v for k, v in projection.items() if not k.startswith("projection.")}
    other.update({
        "projection.0.weight": torch.zeros(32, 16), "projection.0.bias": torch.zeros(32),
        "projection.2.weight": torch.zeros(32, 32), "projection.2.bias": torch.zeros(32),
    })  # fmt: skip
    save_file(other, str(wide / "objective.safetensors"))
    with pytest.raises(ConfigError, match=r"32-dim text space.*hidden size is 64"):
        make_model(task, init_from=str(wide))
    # another encoder shape (patches) or projection kind
    with pytest.raises(ConfigError, match=r"patch_embed.weight is \[16, 5\] there, \[16, 7\] here"):
        make_model(task, init_from=str(run), encoder_params={**ENCODER, "patch_len": 6})
    with pytest.raises(ConfigError, match="'linear' projection"):
        make_model(task, init_from=str(run), projection="linear")
    # a missing directory: refused when training starts (a rebuilt run does not need it)
    model = build_model(
        "st_token_lm", info, backbone={"source": "tiny-gpt2", "freeze": "lora"},
        encoder_params=ENCODER, init_from=str(tmp_path / "nowhere"),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="not a finished llm-st align run"):
        model.fit_data(task.train_data(), task.scaler)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("answer", ["text", "head"])
def test_the_recipe_trains_a_run_the_pipeline_forecasts_with(task, tmp_path, answer):
    small = [
        f"data.spec={SMALL}", f"data.history={HISTORY}", f"data.horizon={HORIZON}",
        "data.ratios=[0.6,0.2,0.2]", f"model.params.answer={answer}",
        f"model.params.st_tokens={K}", f"model.params.description={DESCRIPTION}",
        f"model.params.encoder_params={json.dumps(ENCODER)}",
        "model.params.val_windows=2", "model.params.val_nodes=2",
        "model.params.test_windows=2", "model.params.test_nodes=2",
        "objective.params.train_windows=4", "objective.params.cache_dir=false",
        "training.max_steps=2", "training.eval_every=2", "training.batch_size=4",
        "training.device=cpu", "training.select_metric=val_mae",
    ]  # fmt: skip
    out = tmp_path / "run"
    metrics = train(load_recipe(RECIPE, small), out)
    assert metrics["model"] == "st_token_lm" and metrics["steps"] == 2
    assert metrics["num_test_windows"] == 2 and metrics["num_nodes"] == 2
    if answer == "head":  # every forecast is the head's
        assert metrics["valid_fraction"] == 1.0
    # the validation loss is a mean over the model's own loss terms (tokens or targets)
    assert metrics["val_loss"] > 0
    saved = load_file(str(out / "model.safetensors"))
    assert {"scaler_shift", "scaler_scale"} <= set(saved)
    assert any(k.startswith("encoder.") for k in saved) and (answer == "head") == (
        "head.weight" in saved
    )

    pipeline = ForecastPipeline.from_run(out, device="cpu")
    model = pipeline.model
    assert isinstance(model, STTokenLM) and pipeline.forecaster is model
    scaler = json.loads((out / "scaler.json").read_text())
    assert float(model.scaler_shift[0, 0]) == pytest.approx(np.ravel(scaler["shift"])[0])
    # the loaded run scores the test subset exactly as the trained model did
    again = evaluate_window_forecaster(model, task, "test", horizons=(3, 4))
    for key in ("mae", "rmse"):
        assert again["metrics"]["avg"][key] == pytest.approx(metrics["test"]["avg"][key], rel=1e-6)
    # and forecasts new cut-offs through predict like forecast_windows
    data = load(SMALL)
    rows = np.array([40, 60])
    forecast = pipeline.predict(data, at=rows, progress=False)
    assert forecast.point.shape == (2, HORIZON, data.num_nodes, 1)
    assert np.isfinite(forecast.point).all()
    direct = model.forecast_windows(data, rows - HISTORY + 1, HISTORY, HORIZON)
    np.testing.assert_array_equal(forecast.point, direct.point)
    assert forecast.meta["model"].startswith(f"st_token_lm tiny-gpt2 (lora, {answer}")
