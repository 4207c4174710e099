"""LoRA and 4-bit QLoRA backbones: exact trainable counts, frozen weights bit for bit,
merged equals unmerged, nf4 layers on the CPU, GPT-2's Conv1D orientation, adapter files,
settings checks and a QLoRA recipe through the engine."""

from __future__ import annotations

import math
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from llm_st.backbones import tiny_model_dir
from llm_st.backbones.families import FAMILIES as LAYOUTS
from llm_st.backbones.frozen import FrozenBackbone, load_backbone, merge_lora
from llm_st.backbones.lora import (
    ADAPTER_WEIGHTS,
    LoraSettings,
    is_lora_parameter,
    load_lora,
    lora_settings,
    lora_targets,
    quantization_config,
    save_lora,
    weight_memory,
)
from llm_st.config import load_recipe
from llm_st.engine import count_parameters, load_weights, train
from llm_st.errors import ConfigError, ModelLoadError
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model
from llm_st.pipeline import ForecastPipeline

pytest_plugins = ["conftest_prompt"]  # tiny_cache: the session's tiny-model directory

FAMILIES = {"tiny-gpt2": "gpt2", "tiny-llama": "llama", "tiny-bert": "bert"}
INFO = DataInfo(num_nodes=3, num_channels=1, history=12, horizon=4, steps_per_day=288)
# GPT4TS's own layers for INFO: patch embedding Linear(4, 64), head Linear(6 * 64, 4)
GPT4TS_OWN = {"patch_embedding.weight", "patch_embedding.bias", "head.1.weight", "head.1.bias"}
# r * (in + out) summed over the default targets of the two blocks, by hand (r = 4):
# GPT-2: c_attn 64 -> 192, attn.c_proj 64 -> 64, mlp.c_proj 256 -> 64;
# LLaMA: q, o 64 -> 64, k, v 64 -> 32, gate, up 64 -> 128, down 128 -> 64;
# BERT: query, key, value, attention.output.dense 64 -> 64, intermediate 64 -> 128, output 128 -> 64
BY_HAND = {
    "tiny-gpt2": 2 * 4 * (256 + 128 + 320),
    "tiny-llama": 2 * 4 * (2 * 128 + 2 * 96 + 2 * 192 + 192),
    "tiny-bert": 2 * 4 * (4 * 128 + 2 * 192),
}
ROOT = "model.base_model.model."  # where the HF model sits in a LoRA FrozenBackbone


@pytest.fixture(scope="module")
def dirs(tiny_cache: Path) -> dict[str, str]:
    return {name: str(tiny_model_dir(name, tiny_cache)) for name in FAMILIES}


def lora_names(module: nn.Module) -> set[str]:
    return {n for n, _ in module.named_parameters() if is_lora_parameter(n)}


def trainable(module: nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def expected_lora_count(plain: FrozenBackbone, names: tuple[str, ...], r: int) -> int:
    """``r * (in + out)`` over the layers of the blocks whose last name is in ``names``, read
    from the shapes of the plain model (GPT-2's Conv1D stores ``[in, out]``)."""
    total = 0
    for path, module in plain.blocks.named_modules():
        if path.rsplit(".", 1)[-1] in names:
            rows, cols = module.weight.shape
            fan_in, fan_out = (rows, cols) if isinstance(module, Conv1D) else (cols, rows)
            total += r * (fan_in + fan_out)
    return total


def make_batch(seed: int, batch: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(INFO.history, dtype=torch.float32).view(1, -1, 1, 1)
    x = torch.sin(t / 2 + 6 * torch.rand(batch, 1, INFO.num_nodes, 1, generator=g))
    return {"x": x, "x_mask": torch.ones_like(x, dtype=torch.bool)}


def fit_backbone(backbone: FrozenBackbone, steps: int, lr: float = 1e-2) -> list[float]:
    """Train ``backbone`` alone to map fixed random embeddings to a fixed vector; losses."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, backbone.hidden_size, generator=g)
    target = torch.randn(backbone.hidden_size, generator=g)
    optimizer = torch.optim.Adam([p for p in backbone.parameters() if p.requires_grad], lr=lr)
    backbone.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (backbone(x) - target).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------- LoRA in an adapter
@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_only_its_weights_and_counts_r_times_in_plus_out(dirs, family):
    torch.manual_seed(0)
    model = build_model(
        "gpt4ts",
        INFO,
        backbone={
            "source": dirs[family],
            "num_layers": 2,
            "freeze": "lora",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        },
        patch_len=4,
        stride=2,
    )
    plain = load_backbone(dirs[family])
    expected = expected_lora_count(plain, LAYOUTS[FAMILIES[family]].lora_targets, r=4)
    assert expected == BY_HAND[family]
    lora = {f"body.{n}" for n in lora_names(model.body)}
    assert trainable(model) == GPT4TS_OWN | lora
    assert count_parameters(model.body)["trainable"] == expected
    assert sum(p.numel() for n, p in model.named_parameters() if n in lora) == expected

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # every parameter goes to AdamW with weight decay: freezing alone must protect them
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    for step in range(3):
        target = torch.randn(4, INFO.horizon, 3, 1, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        nn.functional.mse_loss(model(make_batch(step)), target).backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == GPT4TS_OWN | lora
    # every base weight equals the checkpoint's bit for bit
    reference = dict(plain.named_parameters())
    base = {n: p for n, p in model.body.named_parameters() if not is_lora_parameter(n)}
    assert len(base) == len(reference)
    for name, param in base.items():
        original = "model." + name.removeprefix(ROOT).replace(".base_layer.", ".")
        assert torch.equal(param, reference[original]), name


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize(
    ("adapter", "hparams"),
    [
        ("stllm", {"channels": 8}),
        (
            "timellm",
            {
                "patch_len": 4,
                "stride": 2,
                "d_model": 8,
                "n_heads": 2,
                "d_ff": 8,
                "num_prototypes": 16,
                "max_prompt_tokens": 24,
            },
        ),
    ],
)
def test_every_adapter_passes_its_lora_settings_to_the_backbone(dirs, adapter, hparams, family):
    backbone = {"source": dirs[family], "num_layers": 2, "freeze": "qlora", "lora": {"r": 2}}
    model = build_model(adapter, INFO, backbone=backbone, **hparams)
    assert model.body.has_lora and model.body.model.peft_config["default"].r == 2
    assert count_parameters(model.body)["trainable"] == BY_HAND[family] // 2  # r = 2, not 4
    batch = {**make_batch(0, batch=2), "x_time": torch.rand(2, INFO.history, 2)}
    y = model(batch)
    assert y.shape == (2, INFO.horizon, INFO.num_nodes, 1)
    y.square().mean().backward()
    body_grads = {n for n, p in model.body.named_parameters() if p.grad is not None}
    assert body_grads == lora_names(model.body)


# ---------------------------------------------------------------- merging
@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
def test_merged_lora_equals_unmerged_after_training(dirs, family):
    backbone = load_backbone(dirs[family], freeze="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    plain = load_backbone(dirs[family])
    losses = fit_backbone(backbone, steps=4)
    assert losses[-1] < losses[0]
    backbone.eval()
    g = torch.Generator().manual_seed(1)
    x, mask = torch.randn(3, 7, 64, generator=g), torch.ones(3, 7)
    mask[0, :2] = 0  # left padding
    with torch.no_grad():
        unmerged, base = backbone(x, mask), plain(x, mask)
    assert (unmerged - base).abs().max() > 1e-3  # training made B nonzero: the output moved
    # one layer by hand: W + (alpha / r) B A (GPT-2's Conv1D holds W transposed)
    first = "h.0.attn.c_attn" if family == "tiny-gpt2" else "layers.0.self_attn.q_proj"
    layer = backbone.hf_model.get_submodule(first)
    A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    assert B.abs().max() > 0
    update = (8 / 4) * B @ A
    W = layer.base_layer.weight.detach().clone()
    expected = W + (update.T if isinstance(layer.base_layer, Conv1D) else update)

    assert merge_lora(backbone) is backbone
    assert not backbone.has_lora and not lora_names(backbone) and backbone.policy == "frozen"
    assert trainable(backbone) == set()
    torch.testing.assert_close(
        backbone.hf_model.get_submodule(first).weight, expected, rtol=0, atol=1e-6
    )
    with torch.no_grad():
        merged = backbone(x, mask)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)


def test_merge_without_lora_is_refused(dirs):
    with pytest.raises(ConfigError, match="no LoRA layers"):
        merge_lora(load_backbone(dirs["tiny-llama"]))


# ---------------------------------------------------------------- QLoRA on the CPU
def test_qlora_tiny_llama_is_nf4_double_quantized_and_trains_only_lora(dirs):
    backbone = load_backbone(dirs["tiny-llama"], freeze="qlora", lora={"r": 4, "dropout": 0.0})
    full = load_backbone(dirs["tiny-llama"])
    quantized = {n: m for n, m in backbone.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(quantized) == 2 * 7  # q, k, v, o, gate, up, down in each block
    assert all(n.endswith(".base_layer") for n in quantized)
    for module in quantized.values():
        state = module.weight.quant_state
        assert state.quant_type == "nf4" and state.nested  # double quantization
        assert module.compute_dtype == torch.float32  # "auto" on a machine without CUDA
    assert backbone.policy == "qlora"
    assert count_parameters(backbone)["trainable"] == BY_HAND["tiny-llama"]
    # reported totals count the weights a 4-bit layer stands for, not its packed bytes
    assert (
        count_parameters(backbone)["total"]
        == count_parameters(full)["total"] + BY_HAND["tiny-llama"]
    )

    # forward and backward: gradients on the LoRA weights only
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
    backbone.train()
    backbone(x).square().mean().backward()
    with_grad = {n for n, p in backbone.named_parameters() if p.grad is not None}
    assert with_grad == lora_names(backbone)
    assert all(
        p.grad.abs().sum() > 0
        for n, p in backbone.named_parameters()
        if n.endswith("lora_B.default.weight")
    )  # A's gradient is 0 while B = 0

    # memory: 4 bits per weight packed, plus scales and code tables
    targets = lora_targets(full.hf_model, LoraSettings())
    weights = sum(m.weight.numel() for m in targets.values())
    packed = sum(m.weight.numel() * m.weight.element_size() for m in quantized.values())
    assert packed == weights // 2
    ratio = sum(weight_memory(m)["bytes"] for m in quantized.values()) / sum(
        weight_memory(m)["bytes"] for m in targets.values()
    )
    assert ratio < 0.2  # measured 0.181 for 64-wide layers (code tables weigh; 7B: ~0.13)
    assert (
        weight_memory(backbone)["parameters"]
        == weight_memory(full)["parameters"] + (BY_HAND["tiny-llama"])
    )  # the same weights, counted unpacked, plus LoRA's
    assert weight_memory(backbone)["bytes"] < 0.6 * weight_memory(full)["bytes"]  # 0.56

    # the frozen 4-bit weights never change while the loss falls
    packed_before = {n: m.weight.detach().clone() for n, m in quantized.items()}
    losses = fit_backbone(backbone, steps=8)
    assert losses[-1] < 0.5 * losses[0]  # measured 2.04 -> 0.20
    assert all(torch.equal(m.weight, packed_before[n]) for n, m in quantized.items())


def test_qlora_equals_lora_on_the_dequantized_weights_even_after_evaluation(dirs):
    settings = {"r": 4, "alpha": 8, "dropout": 0.0}
    qlora = load_backbone(dirs["tiny-llama"], freeze="qlora", lora=settings)
    twin = load_backbone(dirs["tiny-llama"], freeze="lora", lora=settings)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for (name, q), (_, p) in zip(
            qlora.named_parameters(), twin.named_parameters(), strict=True
        ):
            if isinstance(q, bnb.nn.Params4bit):
                p.copy_(bnb.functional.dequantize_4bit(q.data, q.quant_state))
            elif is_lora_parameter(name):  # the same A (random) and B (0.1 N(0, 1), not 0,
                if "lora_B" in name:  # so that every LoRA weight gets a gradient)
                    q.copy_(0.1 * torch.randn(q.shape, generator=g))
                p.copy_(q)
            else:
                assert torch.equal(q, p), name
    x, target = torch.randn(3, 5, 64, generator=g), torch.randn(64, generator=g)
    qlora.eval()
    with torch.no_grad():  # an evaluation first: on AVX512-BF16 CPUs bitsandbytes would
        qlora(x)  # repack the weights for a kernel without backward (see apply_lora)
    for model in (qlora, twin):
        model.train()
        (model(x) - target).square().mean().backward()
    twin_grads = dict(twin.named_parameters())
    for name, param in qlora.named_parameters():
        if is_lora_parameter(name):
            torch.testing.assert_close(param.grad, twin_grads[name].grad, rtol=1e-4, atol=1e-6)
        else:
            assert param.grad is None, name
    with torch.no_grad():
        torch.testing.assert_close(qlora(x), twin(x), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- gradient checkpointing
POLICIES = ("frozen", "layernorm", "attention", "lora", "qlora", "qfrozen")


def gpt4ts(source: str, policy: str, checkpointing: bool) -> nn.Module:
    """GPT4TS on both blocks of ``source`` (the same weights for the same policy)."""
    torch.manual_seed(0)
    lora = {"lora": {"r": 4, "dropout": 0.1}} if policy in ("lora", "qlora") else {}
    spec = {"source": source, "num_layers": 2, "freeze": policy, **lora}
    spec["gradient_checkpointing"] = checkpointing
    return build_model("gpt4ts", INFO, backbone=spec, patch_len=4, stride=2)


def count_block_calls(model: nn.Module) -> list[int]:
    """A one-item list counting the calls of the blocks' attention modules (inside a block,
    so a block recomputed by checkpointing counts again)."""
    calls = [0]
    for block in model.body.blocks:
        attention = block.get_submodule(model.body.family.attention)
        attention.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("policy", POLICIES)
def test_checkpointing_recomputes_the_blocks_to_the_same_gradients_under_every_policy(dirs, policy):
    # tiny-gpt2 has dropout 0.1 in its blocks (LoRA's too): in training it draws masks, and a
    # recomputed block must draw the same ones
    plain, checkpointed = (gpt4ts(dirs["tiny-gpt2"], policy, c) for c in (False, True))
    assert not plain.body.gradient_checkpointing and checkpointed.body.gradient_checkpointing
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        pairs = zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True)
        for (name, p), (_, q) in pairs:
            if "lora_B" in name:  # B != 0, so that A gets a gradient too
                p.copy_(torch.randn(p.shape, generator=g))
                q.copy_(p)
            assert torch.equal(p, q), name
    batch, target = make_batch(0), torch.randn(4, INFO.horizon, 3, 1, generator=g)
    outputs, calls = [], []
    for model in (plain, checkpointed):
        counter = count_block_calls(model)
        model.train()
        torch.manual_seed(1)  # the same dropout masks for both
        y = model(batch)
        forward_calls = counter[0]
        nn.functional.mse_loss(y, target).backward()
        outputs.append(y)
        calls.append((forward_calls, counter[0]))
    # two blocks run forward; with checkpointing both run again in the backward pass
    assert calls == [(2, 2), (2, 4)]
    assert torch.equal(outputs[0], outputs[1])
    theirs = dict(checkpointed.named_parameters())
    trained = {n for n, p in plain.named_parameters() if p.requires_grad}
    assert trained >= GPT4TS_OWN and trained == {n for n, p in theirs.items() if p.requires_grad}
    for name in trained:  # the patch embedding before the backbone included
        assert plain.get_parameter(name).grad.abs().sum() > 0, name
        assert torch.equal(plain.get_parameter(name).grad, theirs[name].grad), name
    # dropout is on in training, as without checkpointing: another seed, another forecast
    with torch.no_grad():
        torch.manual_seed(2)
        assert not torch.equal(checkpointed(batch), outputs[1])
        # evaluation: dropout off, nothing to recompute
        counter = count_block_calls(checkpointed.eval())
        assert torch.equal(checkpointed(batch), plain.eval()(batch)) and counter[0] == 2


# ---------------------------------------------------------------- qfrozen: frozen in 4-bit
TIMELLM = {"patch_len": 4, "stride": 2, "d_model": 8, "n_heads": 2, "d_ff": 8}
TIMELLM_OWN = {
    "patch_embedding.conv.weight",
    "prototype_map.weight",
    "prototype_map.bias",
    "head.1.weight",
    "head.1.bias",
} | {f"reprogramming.{m}.{p}" for m in ("query", "key", "value", "out") for p in ("weight", "bias")}


def test_qfrozen_trains_the_layers_around_a_4bit_backbone_that_never_changes(dirs):
    torch.manual_seed(0)
    backbone = {"source": dirs["tiny-llama"], "num_layers": 2, "freeze": "qfrozen"}
    model = build_model("timellm", INFO, backbone=backbone, num_prototypes=16, **TIMELLM)
    body = model.body
    assert body.quantized and body.policy == "qfrozen" and not body.has_lora
    quantized = {n: m for n, m in body.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(quantized) == 2 * 7  # q, k, v, o, gate, up, down in each block
    for module in quantized.values():
        assert module.weight.dtype == torch.uint8  # two 4-bit weights a byte
        assert module.weight.quant_state.quant_type == "nf4" and module.weight.quant_state.nested
        assert module.compute_dtype == torch.float32  # "auto" on a machine without CUDA
    # norms and embeddings in the compute dtype; nothing of the backbone trains
    assert body.dtype == torch.float32 and trainable(body) == set()
    assert trainable(model) == TIMELLM_OWN
    state = {k: v.clone() for k, v in body.state_dict().items()}  # 4-bit states included
    assert any("quant_state" in k for k in state)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # every parameter goes to AdamW with weight decay: freezing alone must protect them
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        batch = make_batch(step)
        target = torch.randn(4, INFO.horizon, 3, 1, generator=torch.Generator().manual_seed(step))
        with torch.no_grad():  # an evaluation first (on AVX512-BF16 CPUs bitsandbytes would
            model.eval()(batch)  # repack the 4-bit weights for a kernel without backward)
        optimizer.zero_grad()
        nn.functional.mse_loss(model.train()(batch), target).backward()
        if step == 0:  # gradients pass the 4-bit backbone to the layers before it
            assert {n for n, p in model.named_parameters() if p.grad is not None} == TIMELLM_OWN
            assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in TIMELLM_OWN)
        optimizer.step()
    assert {n for n, p in model.named_parameters() if not torch.equal(p, before[n])} == TIMELLM_OWN
    after = body.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert all(
        isinstance(m, bnb.nn.Linear4bit) and m.weight.dtype == torch.uint8
        for m in (body.get_submodule(n) for n in quantized)
    )


def test_qfrozen_backpropagates_as_the_dequantized_model_does(dirs):
    qfrozen = load_backbone(dirs["tiny-llama"], freeze="qfrozen")
    twin = load_backbone(dirs["tiny-llama"])  # frozen, float32
    with torch.no_grad():
        for path, module in qfrozen.hf_model.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                weight = bnb.functional.dequantize_4bit(
                    module.weight.data, module.weight.quant_state
                )
                twin.hf_model.get_submodule(path).weight.copy_(weight)
    g = torch.Generator().manual_seed(0)
    x, target = torch.randn(3, 5, 64, generator=g), torch.randn(64, generator=g)
    with torch.no_grad():
        qfrozen.eval()(x)  # the evaluation that would repack the weights (see apply_lora)
    grads, outputs = [], []
    for model in (qfrozen, twin):
        inputs = x.clone().requires_grad_(True)
        y = model.train()(inputs)
        (y - target).square().mean().backward()
        grads.append(inputs.grad)
        outputs.append(y.detach())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-5)


def test_qfrozen_keeps_the_hidden_states_in_the_compute_dtype(dirs):
    backbone = load_backbone(
        dirs["tiny-llama"], freeze="qfrozen", lora={"compute_dtype": "bfloat16"}
    )
    floats = {p.dtype for p in backbone.parameters() if not isinstance(p, bnb.nn.Params4bit)}
    assert backbone.dtype == torch.bfloat16 and floats == {torch.bfloat16}
    dtypes = []
    for block in backbone.blocks:
        block.register_forward_hook(lambda _m, _i, out: dtypes.append(out[0].dtype))
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, requires_grad=True)
    y = backbone.train()(x)
    assert y.dtype == torch.bfloat16 and dtypes == [torch.bfloat16] * 2
    y.float().square().mean().backward()
    assert x.grad.dtype == torch.bfloat16 and x.grad.abs().sum() > 0
    # qlora casts norms and embeddings to float32 for training (peft), so its stream is float32
    qlora = load_backbone(dirs["tiny-llama"], freeze="qlora", lora={"compute_dtype": "bfloat16"})
    assert qlora.dtype == torch.float32
    # 8-bit weights too; and qfrozen is a loading choice, not a switch of a float32 backbone
    eight = load_backbone(dirs["tiny-llama"], freeze="qfrozen", lora={"quantize": "8bit"})
    assert eight.quantized and isinstance(eight.blocks[0].mlp.up_proj, bnb.nn.Linear8bitLt)
    with pytest.raises(ConfigError, match="loaded in full precision"):
        load_backbone(dirs["tiny-llama"]).freeze("qfrozen")


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc")
def test_a_quantized_load_keeps_nothing_mapped_from_the_checkpoint_file(dirs, tmp_path):
    # random weights are quantized by loading them back from a temporary file; the float
    # weights must not stay views of its mapping (its pages and disk space would stay)
    load_backbone(dirs["tiny-llama"], freeze="qfrozen", pretrained=False)
    assert "llm-st-random-" not in Path("/proc/self/maps").read_text()
    # the same for a checkpoint of the caller's
    plain = tmp_path / "plain"
    load_backbone(dirs["tiny-llama"]).hf_model.save_pretrained(plain)
    qfrozen = load_backbone(plain, freeze="qfrozen")
    assert str(plain) not in Path("/proc/self/maps").read_text()
    reference = load_backbone(dirs["tiny-llama"]).word_embeddings().weight
    assert torch.equal(qfrozen.word_embeddings().weight, reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_qfrozen_timellm_trains_on_the_gpu_in_bfloat16_with_checkpointing(dirs):
    torch.manual_seed(0)
    backbone = {"source": dirs["tiny-llama"], "freeze": "qfrozen", "gradient_checkpointing": True}
    model = build_model("timellm", INFO, backbone=backbone, num_prototypes=16, **TIMELLM)
    model.cuda().train()
    assert model.body.dtype == torch.bfloat16  # "auto" compute dtype on a bf16 GPU
    devices = {t.device.type for t in [*model.parameters(), *model.buffers()]}
    assert devices == {"cuda"}
    batch = {k: v.cuda() for k, v in make_batch(0).items()}
    y = model(batch)
    assert y.device.type == "cuda" and y.dtype == torch.float32
    y.square().mean().backward()
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in TIMELLM_OWN)


def test_qlora_random_init_and_8bit(dirs):
    # Tan et al.'s random-init ablation under qlora: same 4-bit layout, other weights
    random = load_backbone(dirs["tiny-llama"], freeze="qlora", pretrained=False)
    pretrained = load_backbone(dirs["tiny-llama"], freeze="qlora")
    layer = "layers.0.self_attn.q_proj.base_layer"
    a, b = (m.hf_model.get_submodule(layer) for m in (random, pretrained))
    assert isinstance(a, bnb.nn.Linear4bit) and a.weight.shape == b.weight.shape
    assert not torch.equal(a.weight, b.weight)
    # LLM.int8 weights also work on the CPU
    int8 = load_backbone(dirs["tiny-llama"], freeze="qlora", lora={"quantize": "8bit", "r": 2})
    assert sum(isinstance(m, bnb.nn.Linear8bitLt) for m in int8.modules()) == 14
    int8.train()
    int8(torch.randn(2, 5, 64)).square().mean().backward()
    assert {n for n, p in int8.named_parameters() if p.grad is not None} == lora_names(int8)


# ---------------------------------------------------------------- GPT-2 Conv1D
def test_gpt2_conv1d_gets_fan_in_fan_out_only_in_full_precision(dirs):
    g = torch.Generator().manual_seed(0)
    x, mask = torch.randn(2, 6, 64, generator=g), torch.ones(2, 6)
    plain = load_backbone(dirs["tiny-gpt2"]).eval()
    lora = load_backbone(dirs["tiny-gpt2"], freeze="lora").eval()
    assert lora.model.peft_config["default"].fan_in_fan_out is True
    layers = [m for m in lora.modules() if hasattr(m, "lora_A")]
    assert len(layers) == 6  # c_attn, attn.c_proj, mlp.c_proj in 2 blocks
    assert all(m.fan_in_fan_out and isinstance(m.base_layer, Conv1D) for m in layers)
    with torch.no_grad():  # B = 0 at the start: exactly the base model
        assert torch.equal(lora(x, mask), plain(x, mask))

    qlora = load_backbone(dirs["tiny-gpt2"], freeze="qlora").eval()
    assert qlora.model.peft_config["default"].fan_in_fan_out is False
    layers = [m for m in qlora.modules() if hasattr(m, "lora_A")]
    assert len(layers) == 6
    assert all(not m.fan_in_fan_out and isinstance(m.base_layer, bnb.nn.Linear4bit) for m in layers)
    with torch.no_grad():
        out = qlora(x, mask)
        with qlora.model.disable_adapter():
            assert torch.equal(out, qlora(x, mask))
    # 4-bit rounding moves the output a little, not a lot
    assert 0 < (out - plain(x, mask)).abs().mean() < 0.1


# ---------------------------------------------------------------- adapter files
@pytest.mark.parametrize("policy", ["lora", "qlora"])
def test_adapter_weights_round_trip_exactly_as_safetensors(dirs, policy, tmp_path):
    settings = {"r": 4, "alpha": 8, "dropout": 0.0}
    trained = load_backbone(dirs["tiny-llama"], freeze=policy, lora=settings)
    fit_backbone(trained, steps=2)
    path = save_lora(trained, tmp_path / "adapter")
    assert path == tmp_path / "adapter" / ADAPTER_WEIGHTS
    files = {p.name for p in path.parent.iterdir()}
    assert ADAPTER_WEIGHTS in files and "adapter_config.json" in files
    assert not {f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))}
    ours = {n: p for n, p in trained.named_parameters() if is_lora_parameter(n)}
    saved = load_file(str(path))  # peft drops the adapter name "default" and our prefix
    assert len(saved) == len(ours) == 28
    for name, param in ours.items():
        key = name.removeprefix("model.").replace(".default.", ".")
        assert torch.equal(saved[key], param.detach()), name

    fresh = load_backbone(dirs["tiny-llama"], freeze=policy, lora=settings).eval()
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = fresh(x)
    load_lora(fresh, path.parent)
    for name, param in fresh.named_parameters():
        if is_lora_parameter(name):
            assert torch.equal(param, ours[name]), name
    trained.eval()
    with torch.no_grad():
        after, reference = fresh(x), trained(x)
    assert torch.equal(after, reference) and not torch.equal(after, before)

    other = load_backbone(dirs["tiny-llama"], freeze=policy, lora={**settings, "r": 8})
    with pytest.raises(ModelLoadError, match="r=4"):
        load_lora(other, path.parent)
    with pytest.raises(ModelLoadError, match=ADAPTER_WEIGHTS):
        load_lora(fresh, tmp_path)


def test_adapter_of_a_forecaster_saves_its_one_backbone(dirs, tmp_path):
    backbone = {"source": dirs["tiny-gpt2"], "num_layers": 2}
    model = build_model(
        "gpt4ts",
        INFO,
        backbone={**backbone, "freeze": "lora", "lora": {"r": 2}},
        patch_len=4,
        stride=2,
    )
    save_lora(model, tmp_path)
    assert len(load_file(str(tmp_path / ADAPTER_WEIGHTS))) == 12  # A, B of 6 layers
    with pytest.raises(ConfigError, match="0 LoRA backbones"):
        save_lora(
            build_model("gpt4ts", INFO, backbone=backbone, patch_len=4, stride=2),
            tmp_path / "none",
        )


# ---------------------------------------------------------------- settings and targets
@pytest.mark.parametrize(
    ("family", "targets", "count"),
    [
        ("tiny-gpt2", "auto", 6),
        ("tiny-gpt2", "all-linear", 8),
        ("tiny-gpt2", ["attn.c_proj"], 2),
        ("tiny-llama", "auto", 14),
        ("tiny-llama", "q_proj,v_proj", 4),
        ("tiny-bert", "auto", 12),  # 6 per block; the pooler's dense is not in a block
    ],
)
def test_targets_are_linear_layers_of_the_blocks(dirs, family, targets, count):
    model = load_backbone(dirs[family]).hf_model
    found = lora_targets(model, LoraSettings(target_modules=targets))
    assert len(found) == count
    assert all(isinstance(m, (nn.Linear, Conv1D)) for m in found.values())
    assert not any("pooler" in path or "wte" in path for path in found)


@pytest.mark.parametrize(
    ("policy", "params", "match"),
    [
        ("lora", {"r": 0}, "lora.r=0"),
        ("lora", {"r": 2.5}, "lora.r=2.5"),
        ("lora", {"alpha": -1}, "alpha=-1"),
        ("lora", {"dropout": 1.0}, "outside"),
        ("lora", {"rank": 8}, "unknown lora settings"),
        ("lora", {"quantize": "4bit"}, "freeze='lora' with lora.quantize='4bit'"),
        ("qlora", {"quantize": "none"}, "freeze='qlora' with lora.quantize='none'"),
        ("qlora", {"quantize": "3bit"}, "unknown lora.quantize"),
        ("qlora", {"quantize": "8bit", "compute_dtype": "bfloat16"}, "applies to 4-bit"),
        ("lora", {"target_modules": []}, "target_modules"),
        ("layernorm", {}, "policy 'layernorm' does not use LoRA"),
    ],
)
def test_contradictory_settings_are_refused(policy, params, match):
    with pytest.raises(ConfigError, match=match):
        lora_settings(policy, params)


def test_settings_defaults_and_quantization_config():
    assert lora_settings("lora").quantize == "none"
    assert lora_settings("attention") is None  # a policy without LoRA has no settings
    settings = lora_settings("qlora", {"compute_dtype": "bfloat16"})
    assert (settings.r, settings.alpha, settings.dropout) == (8, 16, 0.05)
    assert settings.quantize == "4bit"
    config = quantization_config(settings)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant and config.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config(lora_settings("qlora")).bnb_4bit_compute_dtype == torch.float32
    assert quantization_config(lora_settings("qlora", {"quantize": "8bit"})).load_in_8bit


def test_unknown_target_names_and_settings_without_lora(dirs):
    with pytest.raises(ConfigError, match=r"\['q_prj'\].*q_proj"):
        load_backbone(dirs["tiny-llama"], freeze="lora", lora={"target_modules": ["q_prj"]})
    with pytest.raises(ConfigError, match="'layernorm' does not use LoRA"):
        load_backbone(dirs["tiny-llama"], freeze="layernorm", lora={"r": 4})
    with pytest.raises(ConfigError, match="loaded without"):
        load_backbone(dirs["tiny-llama"]).freeze("lora")


# ---------------------------------------------------------------- the recipe and the engine
def test_qlora_recipe_trains_through_the_engine(tiny_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_ST_CACHE", str(tiny_cache.parent))
    recipe_path = (
        Path(__file__).resolve().parents[1]
        / "alignment"
        / "gpt4ts"
        / "synthetic-traffic"
        / "config_qlora.yaml"
    )
    recipe = load_recipe(
        recipe_path,
        [
            "data.spec=synthetic-traffic:num_nodes=4,num_days=3,seed=1",
            "training.max_steps=3",
            "training.batch_size=8",
            "training.eval_batch_size=256",
            "training.device=cpu",
        ],
    )
    metrics = train(recipe, tmp_path / "run")
    assert metrics["steps"] == 3 and math.isfinite(metrics["test"]["avg"]["mae"])
    # patch embedding Linear(4, 64) + head Linear(6 * 64, 12) + LoRA r = 8 on tiny-llama
    assert (
        metrics["params"]["trainable"] == 4 * 64 + 64 + 6 * 64 * 12 + 12 + 2 * BY_HAND["tiny-llama"]
    )
    # the run holds the trained layers and the LoRA adapter, not the packed 4-bit backbone
    saved = load_weights(tmp_path / "run" / "model.safetensors")
    assert not any("base_layer" in k or "lora_" in k for k in saved)
    assert {k.split(".")[0] for k in saved} == {"patch_embedding", "head"}
    adapter = load_weights(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert sum(v.numel() for v in adapter.values()) == 2 * BY_HAND["tiny-llama"]
    reloaded = ForecastPipeline.from_run(tmp_path / "run", device="cpu").model
    packed = reloaded.body.hf_model.layers[0].self_attn.q_proj.base_layer.weight
    reference = load_backbone("tiny-llama", freeze="qlora")
    assert packed.dtype == torch.uint8 and packed.numel() == 64 * 64 // 2
    assert torch.equal(packed, reference.hf_model.layers[0].self_attn.q_proj.base_layer.weight)


def test_qlora_under_fsdp_stores_4bit_weights_in_the_compute_dtype(monkeypatch):
    # FSDP flattens a block's parameters into one tensor of one dtype: the packed 4-bit
    # weights must be stored in the dtype of the LoRA and norm weights beside them
    from llm_st.backbones.lora import LoraSettings, quantization_config

    settings = LoraSettings(quantize="4bit", compute_dtype="bfloat16")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert quantization_config(settings).bnb_4bit_quant_storage == torch.uint8
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    config = quantization_config(settings)
    assert config.bnb_4bit_quant_storage == torch.bfloat16 == config.bnb_4bit_compute_dtype
