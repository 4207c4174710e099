"""Transfer adapters GPT4TS, Time-LLM and ST-LLM on tiny GPT-2 / LLaMA / BERT backbones:
shapes, exact trainable sets, frozen weights unchanged by training, ablations, the prompt
prefix cache and the engine."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from llm_st.backbones import tiny_model_dir
from llm_st.backbones.ablations import AttentionBody, NoBody
from llm_st.backbones.frozen import FrozenBackbone
from llm_st.config import TrainingConfig
from llm_st.data.synthetic import synthetic_traffic
from llm_st.data.task import prepare_task
from llm_st.engine import count_parameters, fit_and_evaluate, load_weights
from llm_st.engine.artifacts import trained_keys
from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model, list_models
from llm_st.tokens.revin import instance_norm

pytest_plugins = ["conftest_prompt"]  # tiny_cache: the session's tiny-model directory

ADAPTERS = ("gpt4ts", "timellm", "stllm")
FAMILIES = ("tiny-gpt2", "tiny-llama", "tiny-bert")
D = 64
HPARAMS = {  # tiny sizes
    "gpt4ts": {"patch_len": 4, "stride": 2},
    "timellm": {
        "patch_len": 4,
        "stride": 2,
        "d_model": 8,
        "n_heads": 2,
        "d_ff": 8,
        "num_prototypes": 16,
    },
    "stllm": {"channels": 16},
}
DEFAULT_POLICY = {"gpt4ts": "layernorm", "timellm": "frozen", "stllm": "attention"}
GRAPH = DataInfo(
    num_nodes=5,
    num_channels=1,
    history=12,
    horizon=12,
    steps_per_day=288,
    name="roads",
    description="Speeds of 5 road sensors.",
)
SERIES = DataInfo(
    num_nodes=3, num_channels=2, history=32, horizon=16, steps_per_day=24, name="loads"
)
# trainable parameters outside the backbone, by hand, for GRAPH (L = H = 12, N = 5, C = 1)
OWN = {
    # patch embedding Linear(4, 64); 6 patches -> head Linear(6 * 64, 12)
    "gpt4ts": 4 * 64 + 64 + 6 * 64 * 12 + 12,
    # conv 4 -> 8 (kernel 3); prototype map Linear(1000, 16) (GPT-2's vocabulary);
    # query Linear(8, 2 * 8), key/value Linear(64, 16), out Linear(16, 64); head Linear(6 * 8, 12)
    "timellm": 4 * 8 * 3
    + 1000 * 16
    + 16
    + 8 * 16
    + 16
    + 2 * (64 * 16 + 16)
    + 16 * 64
    + 64
    + 6 * 8 * 12
    + 12,
    # token Linear(12, 16); node 5 x 16; time of day 288 x 16; day of week 7 x 16;
    # fusion Linear(48, 64); head Linear(64, 12)
    "stllm": 12 * 16 + 16 + 5 * 16 + 288 * 16 + 7 * 16 + 48 * 64 + 64 + 64 * 12 + 12,
}
VOCABULARY = {"tiny-gpt2": 1000, "tiny-llama": 800, "tiny-bert": 800}


def own(adapter: str, family: str = "tiny-gpt2") -> int:
    """Trainable parameters outside the backbone; Time-LLM's prototype map reads the vocabulary."""
    if adapter == "timellm":
        return OWN[adapter] + (VOCABULARY[family] - 1000) * 16
    return OWN[adapter]


OWN_NAMES = {
    "gpt4ts": {"patch_embedding.weight", "patch_embedding.bias", "head.1.weight", "head.1.bias"},
    "timellm": {
        "patch_embedding.conv.weight",
        "prototype_map.weight",
        "prototype_map.bias",
        "head.1.weight",
        "head.1.bias",
    }
    | {
        f"reprogramming.{m}.{p}"
        for m in ("query", "key", "value", "out")
        for p in ("weight", "bias")
    },
    "stllm": {
        "token_embedding.weight",
        "token_embedding.bias",
        "node_embedding",
        "time_of_day",
        "day_of_week",
        "fusion.weight",
        "fusion.bias",
        "head.weight",
        "head.bias",
    },
}
# the tiny backbones' trainable parameters per policy (see tests/test_backbones.py)
BODY = {
    ("tiny-gpt2", "frozen"): 0,
    ("tiny-gpt2", "layernorm"): 66176,
    ("tiny-gpt2", "attention"): 82816,
    ("tiny-llama", "layernorm"): 320,
    ("tiny-llama", "attention"): 12608,
    ("tiny-llama", "frozen"): 0,
    ("tiny-bert", "layernorm"): 33408,
    ("tiny-bert", "attention"): 50048,
    ("tiny-bert", "frozen"): 0,
}


@pytest.fixture(scope="module")
def dirs(tiny_cache) -> dict[str, str]:
    return {name: str(tiny_model_dir(name, tiny_cache)) for name in FAMILIES}


def make(
    adapter: str,
    source: str,
    info: DataInfo = GRAPH,
    seed: int = 0,
    backbone: dict | None = None,
    **params,
) -> nn.Module:
    """``adapter`` on both blocks of the tiny backbone at ``source``; ``backbone`` holds
    further fields of its spec (the adapter's default freezing policy when not given)."""
    torch.manual_seed(seed)
    spec = {"source": source, "num_layers": 2, **(backbone or {})}
    return build_model(adapter, info, backbone=spec, **{**HPARAMS[adapter], **params})


def make_batch(info: DataInfo, batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    L, N, C = info.history, info.num_nodes, info.num_channels
    t = torch.arange(L, dtype=torch.float32).view(1, L, 1, 1)
    x = torch.sin(2 * torch.pi * t / 8 + torch.rand(batch, 1, N, C, generator=g) * 6)
    x = x + 0.2 * torch.randn(batch, L, N, C, generator=g)
    day = torch.rand(batch, 1, generator=g)
    times = torch.stack(
        [
            (day + torch.arange(L) / 288) % 1,
            torch.randint(0, 7, (batch, 1), generator=g).expand(-1, L).float(),
        ],
        -1,
    )
    return {"x": x, "x_mask": torch.ones_like(x, dtype=torch.bool), "x_time": times}


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_adapters_are_registered():
    assert set(ADAPTERS) <= set(list_models())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_forecast_shapes_for_graph_and_multichannel_series(dirs, adapter, family):
    for info in (GRAPH, SERIES):
        model = make(adapter, dirs[family], info)
        y = model(make_batch(info, batch=2))
        assert y.shape == (2, info.horizon, info.num_nodes, info.num_channels)
        assert torch.isfinite(y).all()
        assert isinstance(model.body, FrozenBackbone) and model.body.num_layers == 2


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_trainable_sets_are_exactly_what_each_method_specifies(dirs, adapter):
    model = make(adapter, dirs["tiny-gpt2"])
    policy = DEFAULT_POLICY[adapter]
    body = {f"body.{n}" for n in model.body.trainable_names(policy, 1)}
    assert trainable(model) == OWN_NAMES[adapter] | body
    assert count_parameters(model)["trainable"] == OWN[adapter] + BODY["tiny-gpt2", policy]
    assert count_parameters(model)["total"] == OWN[adapter] + count_parameters(model.body)["total"]
    if adapter == "timellm":
        assert not any(n.startswith("body.") for n in trainable(model))  # LLM fully frozen
    if adapter == "stllm":  # attention of the last block only, feed-forward frozen
        assert {n for n in body if ".attn." in n} == {
            f"body.model.h.1.attn.{m}.{p}" for m in ("c_attn", "c_proj") for p in ("weight", "bias")
        }


CASES = [(a, "tiny-gpt2", p) for a in ADAPTERS for p in ("frozen", "layernorm", "attention")] + [
    (a, f, DEFAULT_POLICY[a]) for a in ADAPTERS for f in ("tiny-llama", "tiny-bert")
]


@pytest.mark.parametrize(("adapter", "family", "policy"), CASES)
def test_training_moves_every_trainable_parameter_and_no_frozen_one(dirs, adapter, family, policy):
    model = make(adapter, dirs[family], backbone={"freeze": policy}).train()
    expected = OWN_NAMES[adapter] | {f"body.{n}" for n in model.body.trainable_names(policy, 1)}
    assert trainable(model) == expected
    assert count_parameters(model)["trainable"] == own(adapter, family) + BODY[family, policy]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # every parameter goes to AdamW with weight decay: freezing alone must protect them
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        batch = make_batch(GRAPH, batch=4, seed=step)
        target = torch.randn(4, 12, 5, 1, generator=torch.Generator().manual_seed(10 + step))
        optimizer.zero_grad()
        nn.functional.mse_loss(model(batch), target).backward()
        if step == 0:
            for n, p in model.named_parameters():
                assert (p.grad is not None and p.grad.abs().sum() > 0) == (n in expected), n
        optimizer.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (n not in expected), n


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_ablations_replace_only_the_backbone(dirs, adapter):
    pretrained = make(adapter, dirs["tiny-gpt2"])
    random = make(adapter, dirs["tiny-gpt2"], backbone={"mode": "random_init"})
    attention = make(adapter, dirs["tiny-gpt2"], backbone={"mode": "llm2attn"})
    none = make(adapter, dirs["tiny-gpt2"], backbone={"mode": "none"})
    batch = make_batch(GRAPH)
    # none: no backbone parameters at all; embeddings go to the head
    assert isinstance(none.body, NoBody)
    assert not any(n.startswith("body.") for n, _ in none.named_parameters())
    assert count_parameters(none) == {"trainable": OWN[adapter], "total": OWN[adapter]}
    # llm2attn: exactly one attention layer (+ its LayerNorm) in place of the LLM, trainable
    assert isinstance(attention.body, AttentionBody)
    assert sum(isinstance(m, nn.MultiheadAttention) for m in attention.modules()) == 1
    assert count_parameters(attention.body) == {
        "trainable": 4 * D * D + 6 * D,
        "total": 4 * D * D + 6 * D,
    }
    assert count_parameters(attention)["trainable"] == OWN[adapter] + 4 * D * D + 6 * D
    # random_init: the pretrained architecture, policy and names, other backbone values
    shapes = {n: (p.shape, p.requires_grad) for n, p in pretrained.named_parameters()}
    assert {n: (p.shape, p.requires_grad) for n, p in random.named_parameters()} == shapes
    theirs = dict(random.named_parameters())
    for n, p in pretrained.named_parameters():
        if n.startswith("body.") and p.ndim == 2:
            assert not torch.equal(p, theirs[n]), n
        elif not n.startswith("body."):
            assert torch.equal(p, theirs[n]), n  # same seed: the adapter's own layers agree
    for model in (pretrained, random, attention, none):
        y = model.eval()(batch)
        assert y.shape == (3, 12, 5, 1) and torch.isfinite(y).all()


@pytest.mark.parametrize("adapter", ["gpt4ts", "timellm"])
def test_channel_independent_adapters_forecast_each_series_on_its_own(dirs, adapter):
    model = make(adapter, dirs["tiny-llama"], SERIES).eval()
    batch = make_batch(SERIES, batch=2)
    with torch.no_grad():
        y = model(batch)
        changed = {k: v.clone() for k, v in batch.items()}
        changed["x"][:, :, 1, 0] += 3.0 * torch.randn(2, SERIES.history)
        z = model(changed)
    moved = (z - y).abs().amax(dim=(0, 1))  # [N, C]
    assert moved[1, 0] > 1e-3
    moved[1, 0] = 0
    assert moved.max() < 1e-4


@pytest.mark.parametrize(("family", "causal"), [("tiny-gpt2", True), ("tiny-bert", False)])
def test_stllm_mixes_nodes_through_the_backbone_attention(dirs, family, causal):
    model = make("stllm", dirs[family]).eval()
    batch = make_batch(GRAPH)
    with torch.no_grad():
        y = model(batch)
        changed = {k: v.clone() for k, v in batch.items()}
        changed["x"][:, :, 2] += 1.0
        moved = (model(changed) - y).abs().amax(dim=(0, 1, 3))  # per node
        # causal GPT-2 reads node tokens left to right: nodes before 2 cannot see it
        assert (moved[:2].max() < 1e-6) == causal and moved[2:].min() > 1e-4
        # the temporal embedding reads the last history step only
        earlier = {**batch, "x_time": batch["x_time"].clone()}
        earlier["x_time"][:, :-1] = torch.rand(3, 11, 2)
        assert torch.equal(model(earlier), y)
        later = {**batch, "x_time": batch["x_time"].clone()}
        later["x_time"][:, -1, 0] = (later["x_time"][:, -1, 0] + 0.5) % 1
        assert not torch.allclose(model(later), y)


def test_stllm_refuses_more_nodes_than_positions(dirs):
    many = DataInfo(num_nodes=1025, num_channels=1, history=12, horizon=12, steps_per_day=288)
    with pytest.raises(ConfigError, match="1025 nodes"):
        make("stllm", dirs["tiny-gpt2"], many)
    assert make("stllm", dirs["tiny-llama"], many).node_embedding.shape == (1025, 16)


# ---------------------------------------------------------------------- Time-LLM prompt


def test_timellm_prompt_states_the_statistics_of_the_normalized_history(dirs):
    model = make("timellm", dirs["tiny-gpt2"])
    ramp = torch.linspace(-1.0, 2.0, 12).expand(2, 12)
    observed = torch.ones(2, 12, dtype=torch.bool)
    observed[1, -1] = False  # the 2.0 of row 1 is missing: statistics skip it
    full, gap = model.prompt_texts(ramp, observed)
    assert full.startswith("Dataset description: Speeds of 5 road sensors.\n")
    assert "forecast the next 12 steps given the previous 12 steps" in full
    assert "min value -1.000, max value 2.000, median value 0.500" in full
    assert "min value -1.000, max value 1.727, median value 0.364" in gap
    # centred ramp t - 5.5: autocorrelation sums 10 at lag 4, -15.75 at lag 5, less after
    assert "the trend of input is upward, top 5 lags are : 1, 2, 3, 4, 5" in full
    text = full
    assert text.endswith("Values:")
    with pytest.raises(ConfigError, match="neighbors"):
        make("timellm", dirs["tiny-gpt2"], template="spatial")
    assert make("timellm", dirs["tiny-gpt2"], prompt=False).prefix is None
    assert make("timellm", dirs["tiny-gpt2"], backbone={"mode": "none"}).prefix is None


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama", "tiny-bert"])
def test_timellm_prompt_cache_equals_recomputation_and_tokenizes_each_prefix_once(dirs, family):
    cached = make("timellm", dirs[family], seed=3).eval()
    plain = make("timellm", dirs[family], seed=3, prompt_cache=False).eval()
    batch = make_batch(GRAPH, batch=4)
    with torch.no_grad():
        first = cached(batch)
        assert cached.prefix.num_tokenized == 4 * 5  # one prefix per (window, node)
        second = cached(batch)
        assert cached.prefix.num_tokenized == 20 and len(cached.prefix.cache) == 20
        reference = plain(batch)
        plain(batch)
    assert plain.prefix.num_tokenized == 40
    assert torch.equal(first, second) and torch.equal(first, reference)
    twin = copy.deepcopy(cached)  # a copy takes its cache along: nothing is tokenized again
    with torch.no_grad():
        assert torch.equal(twin(batch), first) and twin.prefix.num_tokenized == 20


def test_timellm_forecast_does_not_depend_on_the_other_prompts_in_the_batch(dirs):
    model = make("timellm", dirs["tiny-llama"]).eval()
    batch = make_batch(GRAPH, batch=3)
    with torch.no_grad():
        together = model(batch)
        normed, _ = instance_norm(batch["x"], dim=1)
        texts = model.prompt_texts(normed.permute(0, 2, 3, 1).reshape(15, 12), None)
        lengths = model.prefix(texts, model.word_embedding_matrix())[1].sum(1)
        assert lengths.unique().numel() > 1  # prefixes of several lengths were padded
        for i in range(3):
            alone = model({k: v[i : i + 1] for k, v in batch.items()})
            torch.testing.assert_close(alone[0], together[i], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- engine


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_engine_trains_adapters_without_touching_frozen_weights(dirs, adapter, tmp_path):
    data = synthetic_traffic(num_nodes=4, num_days=2, seed=1)
    task = prepare_task(data, history=12, horizon=12, ratios=(0.7, 0.1, 0.2))
    info = DataInfo.from_data(data, 12, 12)
    short = {"max_prompt_tokens": 24} if adapter == "timellm" else {}  # a cheaper tiny LLM call
    model = make(adapter, dirs["tiny-gpt2"], info, **short)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainingConfig(
        max_steps=3,
        batch_size=8,
        eval_batch_size=128,
        lr=1e-2,
        weight_decay=0.1,
        patience=None,
        device="cpu",
    )
    metrics = fit_and_evaluate(model, task, config, run_dir=tmp_path / "run")
    assert metrics["steps"] == 3 and math.isfinite(metrics["test"]["avg"]["mae"])
    assert metrics["params"]["trainable"] == count_parameters(model)["trainable"] > 0
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == trainable(model)
    assert metrics["model"] == adapter and np.isfinite(metrics["val"]["avg"]["rmse"])
    # the run keeps what trained and what is not re-read from the backbone's source
    saved = load_weights(tmp_path / "run" / "model.safetensors")
    state = model.state_dict()
    assert set(saved) == set(trained_keys(model))
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    frozen_backbone = {n for n, p in model.named_parameters() if n.startswith("body.model.")}
    frozen_backbone -= trainable(model)
    assert frozen_backbone and not frozen_backbone & set(saved)


def test_reduced_precision_backbone_inside_an_adapter(dirs):
    half = {"dtype": "bfloat16"}
    cached = make("timellm", dirs["tiny-llama"], backbone=half).eval()
    plain = make("timellm", dirs["tiny-llama"], backbone=half, prompt_cache=False).eval()
    body = {p.dtype for n, p in cached.named_parameters() if n.startswith("body.")}
    own = {p.dtype for n, p in cached.named_parameters() if not n.startswith("body.")}
    assert (body, own) == ({torch.bfloat16}, {torch.float32})
    batch = make_batch(GRAPH)
    with torch.no_grad():
        first, second, reference = cached(batch), cached(batch), plain(batch)
    assert first.dtype == torch.float32  # cached token ids give the bf16 rows exactly
    assert torch.equal(first, second) and torch.equal(first, reference)
    model = make("gpt4ts", dirs["tiny-llama"], backbone=half)
    model(batch).square().mean().backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad
    )


def test_timellm_keeps_the_backbone_dtype_and_copies_no_vocabulary(dirs):
    model = make("timellm", dirs["tiny-llama"])
    table = model.word_embedding_matrix()
    # float32: the prototypes are the prototype map over the vocabulary, bit for bit
    assert torch.equal(model.prototypes(), model.prototype_map(table.t()).t())
    half = make("timellm", dirs["tiny-llama"], backbone={"dtype": "bfloat16"}).train()
    table = half.word_embedding_matrix()
    vocab = table.shape[0]
    prototypes = half.prototypes()  # in bf16 now: the map's weight rounded in the product
    assert prototypes.dtype == torch.bfloat16 and prototypes.shape == (16, D)
    exact = half.prototype_map(table.float().t()).t()
    torch.testing.assert_close(prototypes.float(), exact, rtol=2e-2, atol=2e-3)
    seen: dict[str, torch.Tensor] = {}
    half.body.register_forward_pre_hook(lambda _m, args: seen.update(body_in=args[0]))
    half.body.register_forward_hook(lambda _m, _args, out: seen.update(body_out=out))
    half.head.register_forward_pre_hook(lambda _m, args: seen.update(head_in=args[0]))
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = half(make_batch(GRAPH))
    S, P = 3 * 5, half.num_patches
    # prefix + patches go in and come out in bf16; only the head's d_ff features are float32
    assert seen["body_in"].dtype == seen["body_out"].dtype == torch.bfloat16
    assert seen["body_in"].shape[0] == S and seen["body_in"].shape[1] > P
    assert seen["head_in"].dtype == torch.float32 and seen["head_in"].shape == (S, P, 8)
    # the backward pass keeps the vocabulary itself (a view), no float32 or transposed copy
    vocabulary = [t for t in saved if vocab in t.shape]
    assert vocabulary and all(
        t.untyped_storage().data_ptr() == table.untyped_storage().data_ptr() for t in vocabulary
    )
    y.square().mean().backward()
    grad = half.prototype_map.weight.grad
    assert grad.dtype == torch.float32 and grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_train_on_the_gpu_with_every_tensor_there(dirs, adapter):
    model = make(adapter, dirs["tiny-llama"], backbone={"gradient_checkpointing": True})
    model.cuda().train()
    batch = {k: v.cuda() for k, v in make_batch(GRAPH).items()}
    y = model(batch)
    assert y.device.type == "cuda" and y.shape == (3, 12, 5, 1)
    y.square().mean().backward()
    assert all(p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
