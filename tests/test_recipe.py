"""Recipes: YAML loading, unknown keys, contradictions, overrides, round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from llm_st.config import (
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    Recipe,
    TrainingConfig,
    load_recipe,
    recipe_from_dict,
    save_recipe,
)
from llm_st.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "name": "tiny",
    "data": {"spec": "synthetic-traffic", "history": 12, "horizon": 12},
    "model": {"name": "var", "params": {"order": 2}},
    "training": {"lr": "1e-4", "epochs": 3},
}


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def with_change(section: str, **values) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    raw.setdefault(section, {})
    raw[section] = {**raw[section], **values}
    return raw


def test_yaml_recipe_loads_with_types_and_defaults(tmp_path):
    path = tmp_path / "r.yaml"
    # YAML 1.1 reads 1e-4 (no dot) as a string; the recipe still gets the float
    path.write_text(
        "data:\n  spec: synthetic-traffic\nmodel:\n  name: var\n"
        "training:\n  lr: 1e-4\n  grad_clip: null\n"
    )
    recipe = load_recipe(path)
    assert recipe.training.lr == 1e-4 and isinstance(recipe.training.lr, float)
    assert recipe.training.grad_clip is None
    assert recipe.training.batch_size == 32 and recipe.objective.name == "regression"
    assert recipe.data.horizons is None and recipe.data.ratios is None
    assert recipe.data.report_horizons() == (3, 6, 12)
    assert DataConfig(spec="x", horizon=96).report_horizons() == (3, 6, 12, 96)
    assert DataConfig(spec="x", horizon=4).report_horizons() == (3, 4)
    assert DataConfig(spec="x", horizon=4, horizons=[1]).report_horizons() == (1,)


@pytest.mark.parametrize(
    ("raw", "key", "where"),
    [
        ({**BASE, "trainig": {}}, "'trainig'", "top level"),
        (with_change("training", lrr=0.1), "'lrr'", "section 'training'"),
        (with_change("data", histroy=3), "'histroy'", "section 'data'"),
        (
            with_change("objective", pretrain={"name": "regression", "epoch": 2}),
            "'epoch'",
            "section 'objective.pretrain'",
        ),
    ],
)
def test_unknown_keys_are_named_with_their_section_and_the_valid_keys(raw, key, where):
    with pytest.raises(ConfigError) as err:
        recipe_from_dict(raw)
    message = str(err.value)
    assert key in message and where in message and "valid keys" in message


def test_unknown_key_message_suggests_the_close_match():
    with pytest.raises(ConfigError, match="did you mean 'lr'.*valid keys: epochs, max_steps"):
        recipe_from_dict(with_change("training", lrr=0.1))


@pytest.mark.parametrize(
    ("section", "values", "match"),
    [
        ("data", {"ratios": [0.7, 0.1, 0.2], "borders": [10, 5, 5]}, "both set"),
        ("data", {"horizon": 0}, "data.horizon=0"),
        ("data", {"ratios": [0.7, 0.3, 0.2]}, "summing to at most 1"),
        ("data", {"horizons": [3, 24]}, r"\[24\] lie outside 1..12"),
        ("data", {"scaler": {"kind": "standard", "axes": "node"}}, "axes"),
        ("data", {"metric_scale": "raw"}, "metric_scale='raw'"),
        ("training", {"mixed_precision": "fp8"}, "mixed_precision='fp8'.*no, fp16, bf16"),
        ("training", {"patience": 0}, "patience=0"),
        ("training", {"scheduler": "step"}, "scheduler='step'"),
        ("training", {"batch_size": "many"}, "batch_size='many' is not a number"),
        ("training", {"batch_size": 3.5}, "whole number"),
        ("training", {"grad_clip": True}, "grad_clip=True is not a number"),
        ("training", {"device": "tpu"}, "device='tpu'"),
        ("objective", {"pretrain": {"name": "regression"}}, "pretrain.epochs=None"),
        (
            "objective",
            {"pretrain": {"name": "regression", "epochs": 2}, "epochs": 4},
            "objective.epochs=4",
        ),
        ("model", {"params": [1, 2]}, "model.params=.* is not a mapping"),
    ],
)
def test_contradictions_and_bad_values_are_rejected(section, values, match):
    with pytest.raises(ConfigError, match=match):
        recipe_from_dict(with_change(section, **values))


def test_missing_required_keys():
    with pytest.raises(ConfigError, match=r"lacks required key\(s\) \['model'\]"):
        recipe_from_dict({"data": {"spec": "x"}})
    with pytest.raises(ConfigError, match=r"section 'data' lacks required key\(s\) \['spec'\]"):
        recipe_from_dict({"data": {}, "model": {"name": "var"}})


def test_overrides_are_parsed_as_yaml_and_checked_against_the_sections(tmp_path):
    path = write(tmp_path, BASE)
    recipe = load_recipe(
        path,
        [
            "training.lr=3e-4",
            "training.patience=null",
            "training.mixed_precision=bf16",
            "data.ratios=[0.6, 0.2, 0.2]",
            "model.params.order=5",
            "model.params.ridge=0.5",
            "objective.pretrain.name=regression",
            "objective.pretrain.epochs=2",
            "name=renamed",
        ],
    )
    assert recipe.training.lr == 3e-4 and recipe.training.patience is None
    assert recipe.training.mixed_precision == "bf16"
    assert recipe.data.ratios == [0.6, 0.2, 0.2]
    assert recipe.model.params == {"order": 5, "ridge": 0.5}
    assert recipe.objective.pretrain == ObjectiveConfig(name="regression", epochs=2)
    assert recipe.name == "renamed" and recipe.training.epochs == 3  # the rest is untouched
    with pytest.raises(ConfigError, match="unknown key 'lrr' in section 'training'"):
        load_recipe(path, ["training.lrr=1"])
    with pytest.raises(ConfigError, match="unknown key 'optim'"):
        load_recipe(path, ["optim.lr=1"])
    with pytest.raises(ConfigError, match="training.lr is a value, not a section"):
        load_recipe(path, ["training.lr.peak=1"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_recipe(path, ["training.lr"])
    with pytest.raises(ConfigError, match="training.lr='fast' is not a number"):
        load_recipe(path, ["training.lr=fast"])
    assert BASE["training"] == {"lr": "1e-4", "epochs": 3}  # overrides never touch the input


def test_mixed_precision_no_written_bare_is_the_string_no(tmp_path):
    # YAML 1.1 reads a bare no (and false) as False; mixed_precision's choices hold "no"
    path = write(tmp_path, BASE)
    for text in ("no", "false", "'no'"):
        recipe = load_recipe(
            path, ["training.mixed_precision=bf16", f"training.mixed_precision={text}"]
        )
        assert recipe.training.mixed_precision == "no"
    (tmp_path / "bare.yaml").write_text(
        "data:\n  spec: synthetic-traffic\nmodel:\n  name: var\ntraining:\n  mixed_precision: no\n"
    )
    assert load_recipe(tmp_path / "bare.yaml").training.mixed_precision == "no"
    assert TrainingConfig(mixed_precision=False).mixed_precision == "no"
    # only False, only where "no" is a choice
    with pytest.raises(ConfigError, match="mixed_precision=True is not one of no, fp16, bf16"):
        load_recipe(path, ["training.mixed_precision=yes"])
    with pytest.raises(ConfigError, match="scheduler=False is not one of cosine"):
        load_recipe(path, ["training.scheduler=no"])
    with pytest.raises(ConfigError, match="data.metric_scale=False is not one of original"):
        load_recipe(path, ["data.metric_scale=no"])


def test_micro_batch_size_and_compile_overrides(tmp_path):
    path = write(tmp_path, BASE)
    assert load_recipe(path).training.micro_batch_size is None
    assert load_recipe(path).training.compile is False
    recipe = load_recipe(path, ["training.micro_batch_size=auto", "training.compile=true"])
    assert recipe.training.micro_batch_size == "auto" and recipe.training.compile is True
    assert load_recipe(path, ["training.micro_batch_size=64"]).training.micro_batch_size == 64
    assert load_recipe(path, ["training.micro_batch_size='8'"]).training.micro_batch_size == 8
    save_recipe(recipe, tmp_path / "resolved.yaml")
    assert load_recipe(tmp_path / "resolved.yaml") == recipe
    for value, match in (
        ("half", "micro_batch_size='half' is not a whole number or one of auto"),
        ("0", "micro_batch_size=0 must be at least 1"),
        ("2.5", "micro_batch_size=2.5 is not a whole number or one of auto"),
        ("true", "micro_batch_size=True is not"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_recipe(path, [f"training.micro_batch_size={value}"])


def test_missing_or_malformed_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)


def test_resolved_recipe_round_trips(tmp_path):
    pretrain = "objective.pretrain={name: regression, epochs: 1}"
    recipe = load_recipe(write(tmp_path, BASE), [pretrain])
    saved = tmp_path / "resolved.yaml"
    save_recipe(recipe, saved)
    again = load_recipe(saved)
    assert again == recipe
    assert again.to_dict() == recipe.to_dict()
    assert yaml.safe_load(saved.read_text())["training"]["lr"] == 1e-4


def test_every_field_has_help():
    for cls in (Recipe, DataConfig, ModelConfig, ObjectiveConfig, TrainingConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_python_construction_is_validated_too():
    assert TrainingConfig(lr="2e-3").lr == 2e-3
    with pytest.raises(ConfigError, match="training.grad_accum=0"):
        TrainingConfig(grad_accum=0)
    recipe = Recipe(data={"spec": "synthetic-traffic"}, model={"name": "last_value"})
    assert isinstance(recipe.data, DataConfig) and recipe.data.history == 12


@pytest.mark.parametrize("model", ["last_value", "var"])
def test_example_recipes_load(model):
    recipe = load_recipe(REPO / "alignment" / model / "synthetic-traffic" / "config.yaml")
    assert recipe.model.name == model and recipe.data.spec == "synthetic-traffic"
    data = recipe.data
    assert (data.history, data.horizon, data.ratios) == (12, 12, [0.7, 0.1, 0.2])


def test_backbone_block_is_its_own_key_and_takes_overrides(tmp_path):
    raw = with_change("model", name="gpt4ts", params={"patch_len": 4})
    raw["model"]["backbone"] = {"source": "tiny-gpt2", "lora": {"r": 8}}
    recipe = recipe_from_dict(raw, ["model.backbone.num_layers=1", "model.backbone.lora.alpha=32"])
    assert recipe.model.backbone == {
        "source": "tiny-gpt2",
        "num_layers": 1,
        "lora": {"r": 8, "alpha": 32},
    }
    assert recipe.model.params == {"patch_len": 4}
    assert raw["model"]["backbone"] == {"source": "tiny-gpt2", "lora": {"r": 8}}  # untouched
    # a block set from nothing, and the round trip through the resolved recipe
    assert recipe_from_dict(BASE, ["model.backbone.source=minilm"]).model.backbone == {
        "source": "minilm"
    }
    assert recipe_from_dict(BASE).model.backbone is None
    save_recipe(recipe, tmp_path / "resolved.yaml")
    assert load_recipe(tmp_path / "resolved.yaml") == recipe
    with pytest.raises(ConfigError, match="model.params.backbone is set.*model.backbone"):
        recipe_from_dict(with_change("model", params={"backbone": "tiny-gpt2"}))
    with pytest.raises(ConfigError, match="model.backbone=.* is not a mapping"):
        recipe_from_dict(BASE, ["model.backbone=tiny-gpt2"])
