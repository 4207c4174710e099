"""BackboneSpec: round trips, contradictions, the adapters' defaults, recipes with a backbone
block, the one family table behind freezing and LoRA, and the import direction
lora <- frozen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import llm_st.backbones
from llm_st.backbones import tiny_model_dir
from llm_st.backbones.families import FAMILIES, Family
from llm_st.backbones.frozen import FrozenBackbone, load_backbone
from llm_st.backbones.lora import LoraSettings, lora_targets
from llm_st.backbones.spec import BackboneSpec
from llm_st.config import load_recipe, recipe_from_dict
from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo
from llm_st.models.gpt4ts import GPT4TS
from llm_st.models.registry import build_model
from llm_st.models.stllm import STLLM
from llm_st.models.timellm import TimeLLM

pytest_plugins = ["conftest_prompt"]  # tiny_cache: the session's tiny-model directory

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "alignment" / "gpt4ts" / "synthetic-traffic" / "config.yaml"
INFO = DataInfo(num_nodes=3, num_channels=1, history=12, horizon=12, steps_per_day=288)
TINY = ("tiny-gpt2", "tiny-llama", "tiny-bert")


@pytest.fixture(scope="module")
def dirs(tiny_cache: Path) -> dict[str, str]:
    return {name: str(tiny_model_dir(name, tiny_cache)) for name in TINY}


@pytest.fixture
def tiny_env(tiny_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny names in recipes resolve to the session's builds."""
    monkeypatch.setenv("LLM_ST_CACHE", str(tiny_cache.parent))


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, INFO.history, INFO.num_nodes, 1, generator=g)
    return {"x": x, "x_mask": torch.ones_like(x, dtype=torch.bool)}


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------- the spec itself
@pytest.mark.parametrize(
    "spec",
    [
        BackboneSpec("tiny-gpt2"),
        BackboneSpec("tiny-llama", num_layers=1, mode="random_init", dtype="bfloat16", seed=3),
        BackboneSpec("tiny-gpt2", freeze="attention", trainable_attention_blocks=2),
        BackboneSpec(
            "/models/llama", freeze="qlora", lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}
        ),
        BackboneSpec("minilm", mode="llm2attn", attention_dropout=0.0, trust_remote_code=True),
        BackboneSpec("/models/llama", freeze="qfrozen", gradient_checkpointing=True),
        BackboneSpec("tiny-gpt2", freeze="layernorm", gradient_checkpointing=True),
    ],
)
def test_a_spec_round_trips_through_plain_yaml(spec):
    text = yaml.safe_dump(spec.to_dict())  # plain data only: safe_dump refuses anything else
    again = BackboneSpec.from_value(yaml.safe_load(text))
    assert again == spec and again.to_dict() == spec.to_dict()
    assert BackboneSpec.from_value(spec) is spec


def test_lora_settings_are_resolved_by_the_policy():
    spec = BackboneSpec("x", freeze="qlora", lora={"r": 4})
    assert spec.lora == LoraSettings(r=4, quantize="4bit")  # qlora's default quantization
    assert BackboneSpec("x", freeze="lora").lora == LoraSettings()
    assert BackboneSpec("x", freeze="layernorm").lora is None
    assert spec.to_dict()["lora"] == {
        "r": 4,
        "alpha": 16.0,
        "dropout": 0.05,
        "target_modules": "auto",
        "quantize": "4bit",
        "compute_dtype": "auto",
    }
    assert BackboneSpec.from_value("some/model") == BackboneSpec("some/model")
    assert BackboneSpec.from_value(Path("/models/gpt2")).source == "/models/gpt2"


def test_qfrozen_takes_the_quantization_settings_only():
    # the same 4-bit loading as qlora, no LoRA layers to configure
    assert BackboneSpec("x", freeze="qfrozen").lora == LoraSettings(quantize="4bit")
    spec = BackboneSpec("x", freeze="qfrozen", lora={"compute_dtype": "bfloat16"})
    assert spec.lora == LoraSettings(quantize="4bit", compute_dtype="bfloat16")
    assert spec.to_dict()["lora"] == {"quantize": "4bit", "compute_dtype": "bfloat16"}
    eight = BackboneSpec("x", freeze="qfrozen", lora=LoraSettings(quantize="8bit"))
    assert BackboneSpec.from_value(yaml.safe_load(yaml.safe_dump(eight.to_dict()))) == eight
    # a qlora spec switched to qfrozen keeps its quantization if its LoRA is the default
    qlora = BackboneSpec("x", freeze="qlora", lora={"compute_dtype": "float16"})
    assert BackboneSpec.from_value({"freeze": "qfrozen"}, qlora).lora == qlora.lora
    rank4 = BackboneSpec("x", freeze="qlora", lora={"r": 4})
    with pytest.raises(ConfigError, match=r"no LoRA layers, but lora settings \['r'\] are given"):
        BackboneSpec.from_value({"freeze": "qfrozen"}, rank4)
    # checkpointing is a field of its own, for every policy, off by default
    assert not BackboneSpec("x").gradient_checkpointing
    assert BackboneSpec("x", freeze="attention", gradient_checkpointing=True).lora is None


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"freeze": "layernorm", "lora": {"r": 8}}, "'layernorm' does not use LoRA"),
        ({"freeze": "qfrozen", "lora": {"r": 8}}, r"qfrozen' has no LoRA layers.*\['r'\]"),
        (
            {"freeze": "qfrozen", "lora": {"quantize": "none"}},
            "freeze='qfrozen' with lora.quantize='none'",
        ),
        ({"freeze": "qlora", "lora": {"gradient_checkpointing": True}}, "unknown lora settings"),
        ({"gradient_checkpointing": "yes"}, "gradient_checkpointing='yes' is not a boolean"),
        ({"lora": {"r": 8}}, "'frozen' does not use LoRA"),
        ({"mode": "none", "freeze": "lora"}, "mode 'none' has no pretrained blocks"),
        ({"mode": "llm2attn", "freeze": "qlora"}, "mode 'llm2attn' has no pretrained blocks"),
        ({"freeze": "lora", "lora": {"quantize": "4bit"}}, "freeze='lora' with lora.quantize"),
        ({"freeze": "lora", "lora": {"rank": 8}}, "unknown lora settings"),
        ({"num_layers": -1}, "num_layers=-1 is less than 0"),
        ({"num_layers": 2.5}, "num_layers=2.5 is not a whole number"),
        ({"num_layers": True}, "num_layers=True is not a whole number"),
        ({"trainable_attention_blocks": 2}, "trainable_attention_blocks=2 but freeze='frozen'"),
        ({"freeze": "attention", "trainable_attention_blocks": 0}, "less than 1"),
        ({"mode": "lora"}, "unknown backbone.mode='lora'"),
        ({"freeze": "adapters"}, "unknown backbone.freeze='adapters'"),
        ({"dtype": "fp8"}, "unknown backbone.dtype='fp8'"),
        ({"attention_dropout": 1.0}, r"attention_dropout=1.0 is outside \[0, 1\)"),
        ({"trust_remote_code": "yes"}, "is not a boolean"),
        ({"seed": "0"}, "seed='0' is not a whole number"),
        ({"source": ""}, "names no model"),
        ({"num_layer": 2}, "unknown key 'num_layer'.*did you mean 'num_layers'"),
    ],
)
def test_contradictions_and_bad_values_are_config_errors(fields, match):
    with pytest.raises(ConfigError, match=match):
        BackboneSpec.from_value({"source": "tiny-gpt2", **fields})


def test_values_that_are_no_backbone():
    with pytest.raises(ConfigError, match="has no source"):
        BackboneSpec.from_value({"num_layers": 2})
    with pytest.raises(ConfigError, match="backbone=3 is not a backbone"):
        BackboneSpec.from_value(3)


def test_adapters_complete_a_block_with_their_paper_defaults():
    # GPT4TS: GPT-2, 6 blocks, layernorm; the block's fields replace the default's
    spec = GPT4TS.complete_backbone({"source": "tiny-gpt2", "num_layers": 2})
    assert spec == BackboneSpec("tiny-gpt2", num_layers=2, freeze="layernorm")
    assert GPT4TS.complete_backbone("/models/gpt2") == BackboneSpec(
        "/models/gpt2", num_layers=6, freeze="layernorm"
    )
    assert GPT4TS.complete_backbone({"freeze": "lora"}).source == "openai-community/gpt2"
    # ST-LLM: partially frozen attention with U = 1; another policy drops U
    assert STLLM.complete_backbone({}).freeze == "attention"
    assert STLLM.complete_backbone({"freeze": "layernorm"}).trainable_attention_blocks is None
    # Time-LLM: all of LLaMA-7B, frozen
    assert TimeLLM.complete_backbone({}) == BackboneSpec("huggyllama/llama-7b")
    # a spec is complete already: its freeze is its own, not the adapter's
    assert GPT4TS.complete_backbone(BackboneSpec("tiny-gpt2")).freeze == "frozen"
    # LoRA settings under the adapter's layernorm default contradict it
    with pytest.raises(ConfigError, match="'layernorm' does not use LoRA"):
        GPT4TS.complete_backbone({"source": "tiny-gpt2", "lora": {"r": 8}})


# ---------------------------------------------------------------- recipes
def test_a_recipe_block_builds_the_model_of_the_python_call(tiny_env):
    recipe = load_recipe(
        RECIPE,
        [
            "model.backbone.source=tiny-gpt2",
            "model.backbone.num_layers=2",
            "model.backbone.freeze=lora",
            "model.backbone.lora={r: 4, alpha: 8}",
        ],
    )
    assert recipe.model.backbone == {
        "source": "tiny-gpt2",
        "num_layers": 2,
        "mode": "pretrained",
        "freeze": "lora",
        "lora": {"r": 4, "alpha": 8},
    }
    info = DataInfo(num_nodes=3, num_channels=1, history=12, horizon=12)
    torch.manual_seed(0)
    from_recipe = build_model("gpt4ts", info, backbone=recipe.model.backbone, **recipe.model.params)
    torch.manual_seed(0)
    by_hand = GPT4TS(
        info,
        backbone=BackboneSpec(
            "tiny-gpt2", num_layers=2, freeze="lora", lora=LoraSettings(r=4, alpha=8)
        ),
        patch_len=4,
        stride=2,
    )
    names = trainable(by_hand)
    assert trainable(from_recipe) == names
    # patch embedding, head, and LoRA A / B (in and out of c_attn, attn.c_proj and
    # mlp.c_proj of 2 blocks, r = 4): r * (in + out) per layer
    lora = 2 * 4 * ((64 + 192) + (64 + 64) + (256 + 64))
    own = 4 * 64 + 64 + 6 * 64 * 12 + 12
    assert sum(p.numel() for n, p in by_hand.named_parameters() if n in names) == own + lora
    mine, theirs = from_recipe.state_dict(), by_hand.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)  # LoRA's random A included
    with torch.no_grad():
        assert torch.equal(from_recipe.eval()(batch()), by_hand.eval()(batch()))


def test_an_override_of_num_layers_takes_effect(tiny_env):
    tiny = ["model.backbone.source=tiny-gpt2"]
    for k in (1, 2):
        recipe = load_recipe(RECIPE, [*tiny, f"model.backbone.num_layers={k}"])
        model = build_model("gpt4ts", INFO, backbone=recipe.model.backbone, **recipe.model.params)
        assert isinstance(model.body, FrozenBackbone) and model.body.num_layers == k
        # layernorm policy: wpe 1024 x 64, ln_1 and ln_2 of every kept block and ln_f
        norms = (2 * k + 1) * 2 * 64
        assert sum(p.numel() for p in model.body.parameters() if p.requires_grad) == (
            1024 * 64 + norms
        )


def test_a_backbone_block_for_a_method_without_one_is_refused():
    with pytest.raises(ConfigError, match="model 'dlinear' is not built on a pretrained") as err:
        build_model("dlinear", INFO, backbone={"source": "tiny-gpt2"})
    assert "gpt4ts, st_token_lm, stllm, text_lm, timellm, visionts" in err.value.fix
    recipe = recipe_from_dict(
        {"data": {"spec": "synthetic-traffic"}, "model": {"name": "dlinear"}},
        ["model.backbone.num_layers=1"],
    )
    with pytest.raises(ConfigError, match="'dlinear'"):
        build_model("dlinear", INFO, backbone=recipe.model.backbone, **recipe.model.params)
    assert sum(p.numel() for p in build_model("dlinear", INFO).parameters()) == 2 * (12 * 12 + 12)


# ---------------------------------------------------------------- the family table
def test_every_family_has_its_freezing_layout_and_lora_targets():
    assert set(FAMILIES) == {"gpt2", "llama", "mistral", "qwen2", "bert"}
    for layout in FAMILIES.values():
        assert isinstance(layout, Family)
        assert layout.blocks and layout.attention and isinstance(layout.causal, bool)
        assert layout.lora_targets and all(isinstance(n, str) for n in layout.lora_targets)
    assert FAMILIES["mistral"] == FAMILIES["qwen2"] == FAMILIES["llama"]


@pytest.mark.parametrize(
    ("name", "model_type", "count"), [("tiny-gpt2", "gpt2", 6), ("tiny-llama", "llama", 14)]
)
def test_lora_targets_and_freezing_read_the_family_table(dirs, name, model_type, count):
    backbone = load_backbone(dirs[name])
    assert backbone.family is FAMILIES[model_type]
    found = lora_targets(backbone.hf_model, LoraSettings())
    assert len(found) == count  # every default target in both blocks
    assert {path.rsplit(".", 1)[-1] for path in found} == set(FAMILIES[model_type].lora_targets)
    blocks = FAMILIES[model_type].blocks
    assert all(path.startswith(f"{blocks}.") for path in found)


def test_tiny_bert_default_targets_are_the_tables(dirs):
    found = lora_targets(load_backbone(dirs["tiny-bert"]).hf_model, LoraSettings())
    assert len(found) == 12  # query, key, value and the three dense layers of 2 blocks
    assert {p.rsplit(".", 1)[-1] for p in found} == set(FAMILIES["bert"].lora_targets)


def test_changing_a_row_changes_both_freezing_and_lora(dirs, monkeypatch):
    changed = Family("h", "mlp", "wpe", causal=True, lora_targets=("c_fc",))
    monkeypatch.setitem(FAMILIES, "gpt2", changed)
    backbone = load_backbone(dirs["tiny-gpt2"], freeze="attention")
    # the "attention" policy now trains the last block's MLP: c_fc 64 -> 256, c_proj 256 -> 64
    mlp = {n for n in trainable(backbone) if ".h.1.mlp." in n}
    assert len(mlp) == 4 and not any(".attn." in n for n in trainable(backbone))
    assert sum(p.numel() for n, p in backbone.named_parameters() if n in mlp) == 2 * 64 * 256 + 320
    found = lora_targets(backbone.hf_model, LoraSettings())
    assert sorted(found) == ["h.0.mlp.c_fc", "h.1.mlp.c_fc"]


# ---------------------------------------------------------------- imports
def imported_after(module: str) -> set[str]:
    """The ``llm_st.backbones.*`` modules a fresh interpreter holds after importing ``module``."""
    code = (
        f"import sys, {module}; "
        "print(' '.join(m for m in sys.modules if m.startswith('llm_st.backbones.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    return set(out.stdout.split())


def test_lora_does_not_import_frozen_and_frozen_imports_lora():
    assert "llm_st.backbones.frozen" not in imported_after("llm_st.backbones.lora")
    assert imported_after("llm_st.backbones.families") == {"llm_st.backbones.families"}
    assert "llm_st.backbones.lora" in imported_after("llm_st.backbones.frozen")


def test_package_exports_resolve_to_their_modules():
    from llm_st.backbones import BackboneSpec as exported
    from llm_st.backbones import merge_lora, save_lora
    from llm_st.backbones.frozen import merge_lora as frozen_merge
    from llm_st.backbones.lora import save_lora as lora_save

    assert exported is BackboneSpec and merge_lora is frozen_merge and save_lora is lora_save
    assert set(llm_st.backbones.__all__) <= set(dir(llm_st.backbones))
    with pytest.raises(AttributeError, match="build_body"):
        llm_st.backbones.build_body  # noqa: B018 - the attribute access is the test
