"""Frozen backbones: truncation, freezing policies, the uniform call, ablation bodies, the
prefix embedding cache and clear loading errors, on tiny GPT-2 / LLaMA / BERT models."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2Model

from llm_st.backbones import tiny_model_dir
from llm_st.backbones.ablations import AttentionBody, NoBody
from llm_st.backbones.cache import PrefixEmbedder
from llm_st.backbones.frozen import FrozenBackbone, load_backbone, load_word_embeddings
from llm_st.backbones.hub import load_tokenizer
from llm_st.backbones.spec import BackboneSpec
from llm_st.engine.accel import param_groups
from llm_st.errors import ConfigError, DataError, ModelLoadError

pytest_plugins = ["conftest_prompt"]  # tiny_cache: the session's tiny-model directory

FAMILIES = ("tiny-gpt2", "tiny-llama", "tiny-bert")
D = 64  # width of every tiny language model


@pytest.fixture(scope="module")
def dirs(tiny_cache) -> dict[str, str]:
    return {name: str(tiny_model_dir(name, tiny_cache)) for name in FAMILIES}


def embeds(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, seq, D, generator=torch.Generator().manual_seed(seed))


def trainable(module: nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------- truncation


@pytest.mark.parametrize("name", FAMILIES)
def test_truncation_keeps_k_blocks_equal_to_the_full_model_after_k_blocks(dirs, name):
    full = load_backbone(dirs[name])
    cut = load_backbone(dirs[name], num_layers=1)
    assert (full.num_layers, cut.num_layers) == (2, 1)
    # each weight once in the state dict (what checkpoints save), under the model's own names
    state = cut.state_dict()
    assert len({t.data_ptr() for t in state.values()}) == len(state)
    assert all(n.startswith("model.") for n in state)
    assert len(cut.blocks) == 1 and cut.model.config.num_hidden_layers == 1
    assert not any(".1." in n for n, _ in cut.named_parameters())  # block 1 never built
    x = embeds(3, 7)
    with torch.no_grad():
        hidden = full.model(inputs_embeds=x, output_hidden_states=True).hidden_states
        after_one = hidden[1]  # output of block 0, before any final norm
        if name == "tiny-gpt2":
            after_one = full.model.ln_f(after_one)
        elif name == "tiny-llama":
            after_one = full.model.norm(after_one)  # BERT has no final norm
        assert len(hidden) == 3
        assert torch.equal(cut(x), after_one)
    empty = load_backbone(dirs[name], num_layers=0)
    assert empty.num_layers == 0
    assert torch.equal(empty.word_embeddings().weight, full.word_embeddings().weight)
    assert torch.equal(load_word_embeddings(dirs[name]), full.word_embeddings().weight)
    with pytest.raises(ConfigError, match="num_layers=3"):
        load_backbone(dirs[name], num_layers=3)


# ---------------------------------------------------------------------- freezing

GPT2_NORMS = {
    f"model.h.{i}.{ln}.{p}" for i in (0, 1) for ln in ("ln_1", "ln_2") for p in ("weight", "bias")
} | {"model.ln_f.weight", "model.ln_f.bias"}
LLAMA_NORMS = {
    f"model.layers.{i}.{ln}.weight"
    for i in (0, 1)
    for ln in ("input_layernorm", "post_attention_layernorm")
} | {"model.norm.weight"}
BERT_NORMS = {"model.embeddings.LayerNorm.weight", "model.embeddings.LayerNorm.bias"} | {
    f"model.encoder.layer.{i}.{part}.LayerNorm.{p}"
    for i in (0, 1)
    for part in ("attention.output", "output")
    for p in ("weight", "bias")
}
EXPECTED = {
    # (names, trainable parameter count) by hand: GPT-2 wpe 1024 x 64, 5 LayerNorms x 128;
    # last-block attention c_attn 64 x 192 + 192, c_proj 64 x 64 + 64
    ("tiny-gpt2", "layernorm"): (GPT2_NORMS | {"model.wpe.weight"}, 65536 + 640),
    ("tiny-gpt2", "attention"): (
        GPT2_NORMS
        | {"model.wpe.weight"}
        | {f"model.h.1.attn.{m}.{p}" for m in ("c_attn", "c_proj") for p in ("weight", "bias")},
        65536 + 640 + 12480 + 4160,
    ),
    # LLaMA: 5 RMSNorms x 64, no position table; q, o 64 x 64 and k, v 64 x 32 (2 KV heads)
    ("tiny-llama", "layernorm"): (LLAMA_NORMS, 320),
    ("tiny-llama", "attention"): (
        LLAMA_NORMS | {f"model.layers.1.self_attn.{m}_proj.weight" for m in "qkvo"},
        320 + 2 * 4096 + 2 * 2048,
    ),
    # BERT: positions 512 x 64, 5 LayerNorms x 128; attention q, k, v, output 4 x (64 x 64 + 64)
    ("tiny-bert", "layernorm"): (
        BERT_NORMS | {"model.embeddings.position_embeddings.weight"},
        32768 + 640,
    ),
    ("tiny-bert", "attention"): (
        BERT_NORMS
        | {"model.embeddings.position_embeddings.weight"}
        | {
            f"model.encoder.layer.1.attention.self.{m}.{p}"
            for m in ("query", "key", "value")
            for p in ("weight", "bias")
        }
        | {
            "model.encoder.layer.1.attention.output.dense.weight",
            "model.encoder.layer.1.attention.output.dense.bias",
        },
        32768 + 640 + 4 * 4160,
    ),
}


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("policy", ["frozen", "layernorm", "attention"])
def test_policies_train_exactly_their_parameters_and_nothing_else_moves(dirs, name, policy):
    backbone = load_backbone(dirs[name], freeze=policy, trainable_attention_blocks=1)
    names, count = EXPECTED.get((name, policy), (set(), 0))
    assert trainable(backbone) == names
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == count
    if policy == "frozen":
        return
    backbone.train()
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    # every parameter goes to AdamW with weight decay: freezing alone must protect them
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        optimizer.zero_grad()
        backbone(embeds(4, 9, seed=step)).pow(2).mean().backward()
        if step == 0:
            for n, p in backbone.named_parameters():
                assert (p.grad is not None and p.grad.abs().sum() > 0) == (n in names), n
        optimizer.step()
    for n, p in backbone.named_parameters():
        assert torch.equal(p, before[n]) == (n not in names), n


def test_a_wrapped_model_starts_frozen():
    model = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert all(p.requires_grad for p in model.parameters())
    wrapped = FrozenBackbone(model)
    assert wrapped.policy == "frozen" and trainable(wrapped) == set()
    wrapped.freeze("layernorm")
    assert trainable(wrapped) == {"model.wpe.weight", "model.ln_f.weight", "model.ln_f.bias"} | {
        f"model.h.0.{ln}.{p}" for ln in ("ln_1", "ln_2") for p in ("weight", "bias")
    }


def test_unknown_policy_and_bad_attention_block_counts_are_config_errors(dirs):
    with pytest.raises(ConfigError, match="freezing policy 'adapters'"):
        load_backbone(dirs["tiny-gpt2"], freeze="adapters")
    with pytest.raises(ConfigError, match="trainable_attention_blocks=3"):
        load_backbone(dirs["tiny-gpt2"], freeze="attention", trainable_attention_blocks=3)
    with pytest.raises(ConfigError, match="trainable_attention_blocks=0"):
        load_backbone(dirs["tiny-llama"], freeze="attention", trainable_attention_blocks=0)


# ---------------------------------------------------------------------- the call


@pytest.mark.parametrize("name", FAMILIES)
def test_left_padding_with_a_mask_changes_nothing_for_the_real_tokens(dirs, name):
    backbone = load_backbone(dirs[name])
    x = embeds(2, 6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, :2] = False  # row 0: two padding tokens, then 4 real ones
    with torch.no_grad():
        padded = backbone(x, mask)
        alone = backbone(x[:1, 2:])
        full = backbone(x[1:])
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[0, 2:], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(padded[1], full[0], rtol=0, atol=1e-5)
    if name != "tiny-llama":  # learned position tables: GPT-2 wpe, BERT position_embeddings
        shifted = backbone(torch.cat([x[:1, :2], x[:1, 2:]], 1))[0, 2:]
        assert not torch.allclose(shifted, alone[0], atol=1e-3)  # without the mask they move


def test_reduced_precision_backbone_takes_and_returns_float32(dirs):
    full = load_backbone(dirs["tiny-gpt2"])
    half = load_backbone(dirs["tiny-gpt2"], dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    x = embeds(2, 5)
    with torch.no_grad():
        out, ref = half(x), full(x)
    assert out.dtype == torch.float32
    assert 0 < (out - ref).abs().max() < 0.1  # bf16 rounding, not another model


def test_more_tokens_than_position_embeddings_is_a_data_error(dirs):
    bert = load_backbone(dirs["tiny-bert"])
    assert bert.max_positions == 512 and load_backbone(dirs["tiny-llama"]).max_positions is None
    with pytest.raises(DataError, match="513 tokens are more than the 512 positions"):
        bert(torch.zeros(1, 513, D))


# ---------------------------------------------------------------------- loading errors


def test_offline_hub_id_is_a_model_load_error_with_the_download_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for load in (load_backbone, lambda name: BackboneSpec(name, mode="llm2attn").build()):
        with pytest.raises(ModelLoadError) as info:
            load("some-org/no-such-model")
        assert "hf download some-org/no-such-model --local-dir" in str(info.value)
        assert "HF_HUB_OFFLINE" in str(info.value)


def test_checkpoints_without_the_kept_weights_and_unknown_families_are_refused(tmp_path, dirs):
    short = tmp_path / "short"
    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "n_layer": 2}))
    with pytest.raises(ModelLoadError, match="lacks weights"):
        load_backbone(short)
    assert load_backbone(short, num_layers=1).num_layers == 1
    mae = tiny_model_dir("tiny-vit-mae", tmp_path)
    with pytest.raises(ConfigError, match="'vit_mae' model"):
        load_backbone(mae)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_backbone(tmp_path / "missing")


# ---------------------------------------------------------------------- ablation bodies


@pytest.mark.parametrize("name", FAMILIES)
def test_ablation_bodies(dirs, name):
    pretrained = BackboneSpec(dirs[name], freeze="layernorm").build()
    random = BackboneSpec(dirs[name], mode="random_init", freeze="layernorm").build()
    attention = BackboneSpec(dirs[name], mode="llm2attn").build()
    none = BackboneSpec(dirs[name], mode="none").build()
    assert isinstance(pretrained, FrozenBackbone) and pretrained.pretrained
    assert isinstance(random, FrozenBackbone) and not random.pretrained
    # random_init: same names, shapes and freezing, other values (every weight matrix differs)
    shapes = {n: (p.shape, p.requires_grad) for n, p in pretrained.named_parameters()}
    assert {n: (p.shape, p.requires_grad) for n, p in random.named_parameters()} == shapes
    other = dict(random.named_parameters())
    matrices = [n for n, p in pretrained.named_parameters() if p.ndim == 2]
    assert matrices and all(
        not torch.equal(p, other[n]) for n, p in pretrained.named_parameters() if n in matrices
    )
    assert torch.equal(
        random.state_dict()[matrices[0]],
        BackboneSpec(dirs[name], mode="random_init").build().state_dict()[matrices[0]],
    )  # seeded
    # llm2attn: exactly one attention layer and its LayerNorm, trainable, at width 64
    assert isinstance(attention, AttentionBody)
    assert [type(m) for m in attention.children()] == [nn.MultiheadAttention, nn.LayerNorm]
    heads = {"tiny-gpt2": 2, "tiny-llama": 4, "tiny-bert": 2}[name]
    assert attention.attn.num_heads == heads and attention.hidden_size == D
    assert sum(p.numel() for p in attention.parameters() if p.requires_grad) == (
        4 * D * D + 4 * D + 2 * D
    )  # in/out projections with biases, LayerNorm
    # none: no parameters, the identity
    assert isinstance(none, NoBody) and list(none.parameters()) == []
    x = embeds(2, 5)
    assert none(x) is x
    mask = torch.tensor([[False, True, True, True, True]] * 2)
    out = attention.eval()(x, mask)
    changed = x.clone()
    changed[:, 0] += 10.0  # a masked key/value does not reach the other tokens
    torch.testing.assert_close(attention(changed, mask)[:, 1:], out[:, 1:])
    with pytest.raises(ConfigError, match="unknown backbone.mode='lora'"):
        BackboneSpec(dirs[name], mode="lora")


def test_optimizer_groups_of_the_engine_hold_only_trainable_backbone_parameters(dirs):
    backbone = load_backbone(dirs["tiny-gpt2"], freeze="attention")
    groups = param_groups(backbone, weight_decay=0.1)
    ids = {id(p) for g in groups for p in g["params"]}
    assert ids == {id(p) for p in backbone.parameters() if p.requires_grad}
    assert {p.ndim for p in groups[0]["params"]} == {2}  # decay on matrices only


def test_tiny_bert_tokenizer_behaves_like_bert(dirs):
    tokenizer = load_tokenizer(dirs["tiny-bert"])
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("Hourly SPEED 12.5")["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"  # BERT framing
    assert "hour" in tokens and "##ly" in tokens  # lower-cased WordPiece continuation
    assert tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id == 0


# ---------------------------------------------------------------------- prefix cache


TEXTS = [
    "min value 1.250, trend upward",
    "a",
    "min value 1.250, trend upward",
    "top 5 lags are : 1, 2, 3",
]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_prefix_cache_equals_recomputation_and_tokenizes_each_text_once(dirs, name):
    tokenizer = load_tokenizer(dirs[name])
    table = load_word_embeddings(dirs[name])
    cached = PrefixEmbedder(tokenizer, cache=True)
    plain = PrefixEmbedder(tokenizer, cache=False)
    first, mask = cached(TEXTS, table)
    again, again_mask = cached(TEXTS[::-1], table)
    assert cached.num_tokenized == 3 and len(cached.cache) == 3  # 3 distinct texts, once each
    reference, reference_mask = plain(TEXTS, table)
    assert plain.num_tokenized == 4 and plain.cache is None
    assert torch.equal(first, reference) and torch.equal(mask, reference_mask)
    assert torch.equal(again, reference.flip(0)) and torch.equal(again_mask, mask.flip(0))
    # the cache holds the token ids (int32, 4 bytes a token, on the CPU), not embeddings
    lengths = {t: len(tokenizer(t)["input_ids"]) for t in TEXTS}
    assert cached.cached_bytes == 4 * sum(lengths.values())  # the 3 distinct texts
    assert all(i.dtype == torch.int32 and i.device.type == "cpu" for i in cached.cache.values())
    # left padding: each prefix is its token embeddings, ending at the last position
    for text, row, valid in zip(TEXTS, first, mask, strict=True):
        ids = tokenizer(text)["input_ids"]
        assert int(valid.sum()) == len(ids) and bool(valid[-len(ids) :].all())
        assert torch.equal(row[-len(ids) :], table[torch.tensor(ids)])
        assert not row[: len(row) - len(ids)].any()
    # a full cache stops admitting texts; the outputs stay the same
    tiny = PrefixEmbedder(tokenizer, cache=True, cache_limit_mb=1e-6)
    for _ in range(2):
        out, _ = tiny(TEXTS, table)
        assert torch.equal(out, reference)
    assert len(tiny.cache) == 0 and tiny.full and tiny.num_tokenized == 6
    short = PrefixEmbedder(tokenizer, max_tokens=2, cache=False)(TEXTS, table)[1]
    assert short.sum(1).max() == 2


def test_prefix_embeddings_are_the_table_rows_in_its_dtype(dirs):
    tokenizer = load_tokenizer(dirs["tiny-llama"])
    table = load_word_embeddings(dirs["tiny-llama"])
    embedder = PrefixEmbedder(tokenizer)
    full, mask = embedder(TEXTS, table)
    for dtype in (torch.bfloat16, torch.float16):
        half, half_mask = embedder(TEXTS, table.to(dtype))
        assert half.dtype == dtype and torch.equal(half, full.to(dtype))
        assert torch.equal(half_mask, mask)
    assert embedder.num_tokenized == 3  # the ids serve every dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_prefix_embeddings_are_made_on_the_gpu_of_the_table(dirs):
    tokenizer = load_tokenizer(dirs["tiny-llama"])
    table = load_word_embeddings(dirs["tiny-llama"])
    embedder = PrefixEmbedder(tokenizer)
    on_gpu, mask = embedder(TEXTS, table.to("cuda", torch.bfloat16))
    assert on_gpu.device.type == mask.device.type == "cuda" and on_gpu.dtype == torch.bfloat16
    reference, _ = embedder(TEXTS, table)
    assert torch.equal(on_gpu.cpu(), reference.to(torch.bfloat16))
