"""VisionTS around a tiny random ViT-MAE: masking, shapes, invariants, freezing, loading."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from transformers import ViTMAEForPreTraining, ViTMAEModel

from llm_st.data.container import STData
from llm_st.data.scalers import StandardScaler
from llm_st.errors import ConfigError, ModelLoadError
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model, list_models
from llm_st.models.visionts import VisionTS, tiny_mae_config
from llm_st.tokens.imaging import series_to_image

TINY = "tiny-vit-mae"


def series_info(nodes: int = 3, channels: int = 1, history: int = 96) -> DataInfo:
    """Hourly series: a daily period of 24 steps, horizon 24."""
    return DataInfo(nodes, channels, history=history, horizon=24, steps_per_day=24)


def make_batch(batch: int, history: int, nodes: int, channels: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(history, dtype=torch.float32).view(1, history, 1, 1)
    noise = torch.randn(batch, history, nodes, channels, generator=g)
    x = torch.sin(2 * torch.pi * t / 24) + 0.3 * noise
    return {"x": x, "x_mask": torch.ones_like(x, dtype=torch.bool)}


@pytest.fixture(scope="module")
def zero_shot() -> VisionTS:
    return VisionTS(series_info(), backbone=TINY)


def test_registered_and_built_by_name():
    assert "visionts" in list_models()
    model = build_model("visionts", series_info(), backbone=TINY, period=12)
    assert isinstance(model, VisionTS) and model.period == 12


def test_default_period_is_daily_when_the_history_holds_two_days(zero_shot):
    assert zero_shot.period == 24
    short = DataInfo(num_nodes=2, num_channels=1, history=12, horizon=12, steps_per_day=288)
    assert VisionTS(short, backbone=TINY).period == 1


def test_mae_keeps_exactly_the_context_patches(zero_shot):
    x = torch.randn(5, 96, generator=torch.Generator().manual_seed(0))
    images, layout = series_to_image(x, 24, 24, 64, 8)
    # 4 context + 1 horizon columns: int(0.8 * 8 * 0.4) = 2 of the 8 patch columns visible
    assert layout.context_patches == 2
    pixels, kept = zero_shot.reconstruct(images, layout)
    assert pixels.shape == images.shape
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:, :2] = True
    assert torch.equal(kept, expected.flatten().expand(5, -1))
    # the encoder never sees the masked pixels: changing them leaves the output unchanged
    w = layout.context_width
    masked_changed = images.clone()
    masked_changed[..., w:] = torch.randn(masked_changed[..., w:].shape)
    assert torch.equal(zero_shot.reconstruct(masked_changed, layout)[0], pixels)
    visible_changed = images.clone()
    visible_changed[..., 0, 0] += 1.0
    assert not torch.equal(zero_shot.reconstruct(visible_changed, layout)[0], pixels)


def test_forward_shape_and_channel_independence(zero_shot):
    batch = make_batch(4, 96, 3, 1)
    y = zero_shot(batch)
    assert y.shape == (4, 24, 3, 1) and torch.isfinite(y).all()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["x"][:, :, 1] += 5 * torch.randn(4, 96, 1, generator=torch.Generator().manual_seed(1))
    y2 = zero_shot(changed)
    assert torch.equal(y2[:, :, [0, 2]], y[:, :, [0, 2]])
    assert (y2[:, :, 1] - y[:, :, 1]).abs().max() > 1e-3


def test_forecast_is_equivariant_to_scale_and_shift(zero_shot):
    # instance normalization makes VisionTS forecast a * x + b as a * forecast(x) + b
    batch = make_batch(2, 96, 3, 1, seed=2)
    y = zero_shot(batch)
    moved = dict(batch, x=2.5 * batch["x"] - 1.3)
    torch.testing.assert_close(zero_shot(moved), 2.5 * y - 1.3, rtol=0, atol=1e-4)


def test_missing_entries_do_not_reach_the_forecast(zero_shot):
    batch = make_batch(2, 96, 3, 1, seed=3)
    batch["x_mask"][:, 10:20] = False
    a = dict(batch, x=batch["x"].clone())
    b = dict(batch, x=batch["x"].clone())
    a["x"][:, 10:20] = 0.0
    b["x"][:, 10:20] = 123.0
    assert torch.equal(zero_shot(a), zero_shot(b))


def test_chunking_the_images_does_not_change_the_forecast():
    model = VisionTS(series_info(), backbone=TINY, image_batch_size=512)
    batch = make_batch(3, 96, 3, 1, seed=4)
    y = model(batch)
    model.image_batch_size = 2
    torch.testing.assert_close(model(batch), y, rtol=0, atol=1e-6)


def test_graph_and_grid_inputs_are_forecast_per_node():
    graph = series_info(nodes=5, channels=2)
    graph.adjacency = np.eye(5, k=1, dtype=np.float32)
    batch = make_batch(2, 96, 5, 2, seed=5)
    y = VisionTS(graph, backbone=TINY)(batch)
    assert y.shape == (2, 24, 5, 2)

    frames = np.random.default_rng(0).normal(size=(24 * 6, 2, 2, 3)).astype(np.float32)
    hours = pd.date_range("2024-01-01", periods=len(frames), freq="h")
    grid = STData.from_grid(frames, timestamps=hours)
    grid_info = DataInfo.from_data(grid, history=96, horizon=24)
    assert grid_info.steps_per_day == 24 and grid_info.num_nodes == 6
    batch = make_batch(2, 96, 6, 2, seed=6)
    y_grid = VisionTS(grid_info, backbone=TINY)(batch)
    assert torch.equal(y_grid, VisionTS(series_info(nodes=6, channels=2), backbone=TINY)(batch))


def test_zero_shot_has_no_trainable_parameters(zero_shot):
    assert sum(p.numel() for p in zero_shot.parameters() if p.requires_grad) == 0
    assert sum(p.numel() for p in zero_shot.parameters()) > 40_000
    assert zero_shot.learned is False


def test_layernorm_tuning_trains_exactly_the_layernorms():
    model = VisionTS(series_info(), backbone={"source": TINY, "freeze": "layernorm"})
    assert model.learned is True
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # two per encoder block (2 blocks), the encoder's last, two in the decoder block, the
    # decoder's last; found by type, as transformers renames ViTMAE's module paths across
    # versions (vit.encoder.layer.0 in 5.0, vit.layers.0 later)
    norms = [n for n, m in model.mae.named_modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 + 2 + 1
    assert trainable == [f"mae.{n}.{w}" for n in norms for w in ("weight", "bias")]
    # 8 LayerNorms of width 32 (encoder and decoder hidden size), weight and bias each
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 8 * 2 * 32

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # every parameter goes to the optimizer, with weight decay: freezing alone must protect them
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    batch = make_batch(4, 96, 3, 1, seed=7)
    target = torch.randn(4, 24, 3, 1, generator=torch.Generator().manual_seed(8))
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(batch), target).backward()
        optimizer.step()
    for name, param in model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]), name


def test_auto_period_is_detected_from_the_training_rows():
    t = np.arange(12 * 40)
    rng = np.random.default_rng(0)
    values = np.sin(2 * np.pi * t / 12)[:, None, None] + 0.2 * rng.normal(size=(t.size, 3, 1))
    train = STData(values, timestamps=pd.date_range("2024-01-01", periods=t.size, freq="h"))
    info = DataInfo(3, 1, history=48, horizon=12, steps_per_day=24)
    model = VisionTS(info, backbone=TINY, period="auto")
    with pytest.raises(ConfigError, match="fit_data"):
        model(make_batch(1, 48, 3, 1))
    model.fit_data(train, StandardScaler().fit(train.values, train.mask))
    assert model.period == 12
    assert model(make_batch(2, 48, 3, 1)).shape == (2, 12, 3, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backbone": {"source": TINY, "freeze": "attention"}}, "freeze='attention'"),
        ({"backbone": {"source": TINY, "num_layers": 1}}, "num_layers=1"),
        ({"backbone": {"source": TINY, "mode": "llm2attn"}}, "mode 'llm2attn'"),
        ({"period": 200}, "period 200"),
        ({"norm_const": 0.0}, "norm_const"),
        ({"align_const": 1.5}, "align_const"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        VisionTS(series_info(), **{"backbone": TINY, **kwargs})


def test_loads_a_saved_mae_directory_with_its_pixel_statistics(tmp_path, zero_shot):
    zero_shot.mae.save_pretrained(tmp_path)
    loaded = VisionTS(series_info(), backbone=str(tmp_path))
    batch = make_batch(2, 96, 3, 1, seed=9)
    assert torch.equal(loaded(batch), zero_shot(batch))
    stats = {"image_mean": [0.5] * 3, "image_std": [0.25] * 3}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(stats))
    custom = VisionTS(series_info(), backbone=str(tmp_path))
    assert custom.pixel_mean == (0.5, 0.5, 0.5) and custom.pixel_std == (0.25, 0.25, 0.25)


def test_refuses_backbones_that_cannot_forecast(tmp_path):
    encoder_only = tmp_path / "encoder"
    ViTMAEModel(tiny_mae_config()).save_pretrained(encoder_only)
    with pytest.raises(ModelLoadError, match="no MAE decoder"):
        VisionTS(series_info(), backbone=str(encoder_only))
    norm_pix = tmp_path / "norm_pix"
    config = tiny_mae_config()
    config.norm_pix_loss = True
    ViTMAEForPreTraining(config).save_pretrained(norm_pix)
    with pytest.raises(ModelLoadError, match="norm_pix_loss"):
        VisionTS(series_info(), backbone=str(norm_pix))
    with pytest.raises(ModelLoadError, match="does not exist"):
        VisionTS(series_info(), backbone=str(tmp_path / "missing" / "mae"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        VisionTS(series_info(), backbone=str(empty))


def test_offline_hub_id_says_what_to_download():
    with pytest.raises(ModelLoadError, match="hf download facebook/vit-mae-base"):
        VisionTS(series_info())


def test_reduced_precision_mae_forecasts_in_the_input_dtype(zero_shot):
    half = VisionTS(series_info(), backbone={"source": TINY, "dtype": "bfloat16"})
    assert {p.dtype for p in half.mae.parameters()} == {torch.bfloat16}
    batch = make_batch(2, 96, 3, 1, seed=10)
    with torch.no_grad():
        y, reference = half(batch), zero_shot(batch)
    assert y.dtype == torch.float32
    # bf16 rounding (measured 0.016) on series of unit scale, not another model
    assert 0 < (y - reference).abs().max() < 0.05


def test_a_language_model_is_not_an_mae():
    with pytest.raises(ModelLoadError, match="'gpt2' model, not a ViT-MAE"):
        VisionTS(series_info(), backbone="tiny-gpt2")
