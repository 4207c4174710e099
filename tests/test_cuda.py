"""The device paths on a CUDA GPU: the adapters in bfloat16, QLoRA on the GPU, runs reloaded
on the GPU, zero-shot forecasting and the engine in mixed precision.

Every test here is marked ``cuda`` and skipped without a GPU (``tests/conftest.py``); the
rest of the suite pins the CPU. Forecasts on the GPU are compared with the same forecasts on
the CPU: float32 paths agree to 1 % of the data's standard deviation (cuDNN may use TF32
for convolutions), bfloat16 paths to 10 %; a tensor left on the wrong device fails
outright.
"""

from __future__ import annotations

import math
from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from test_adapters import GRAPH, HPARAMS, make_batch  # tests/ is on the path
from test_pipeline import DATA, FAMILIES, train_in_memory

from llm_st.backbones import load_backbone
from llm_st.cli import main
from llm_st.config import TrainingConfig, load_recipe
from llm_st.data import load
from llm_st.data.task import prepare_task
from llm_st.engine import fit_and_evaluate, load_weights, train
from llm_st.evaluation.evaluate import Scorer, evaluate
from llm_st.forecast import Forecast
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model
from llm_st.pipeline import ForecastPipeline

pytestmark = pytest.mark.cuda

REPO = Path(__file__).resolve().parents[1]

FP32_TOL, BF16_TOL = 0.01, 0.1  # of the data's standard deviation
QLORA = {"freeze": "qlora", "lora": {"r": 2, "dropout": 0.0}}
ADAPTER_CASES = {
    "gpt4ts-gpt2": ("gpt4ts", "tiny-gpt2", {}),
    "timellm-llama": ("timellm", "tiny-llama", {}),  # the prompt prefix on the GPU's table
    "stllm-gpt2": ("stllm", "tiny-gpt2", {}),  # time-of-day / day-of-week lookups
    "gpt4ts-bert": ("gpt4ts", "tiny-bert", {}),
    "gpt4ts-llama-qlora": ("gpt4ts", "tiny-llama", QLORA),
    "timellm-llama-qlora": ("timellm", "tiny-llama", QLORA),
}


def _on_cuda(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.cuda() for k, v in batch.items()}


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_adapter_forward_and_backward_on_cuda_in_bf16(case):
    adapter, source, spec = ADAPTER_CASES[case]
    torch.manual_seed(0)
    model = build_model(
        adapter, GRAPH, backbone={"source": source, "num_layers": 2, **spec}, **HPARAMS[adapter]
    )
    batch = make_batch(GRAPH)
    quantized = bool(spec)
    if not quantized:  # the float32 CPU forecast to compare with
        with torch.no_grad():
            expected = model.eval()(batch)
    model.cuda().eval()  # eval: no dropout, so both forecasts are the same function
    assert all(p.device.type == "cuda" for p in model.parameters())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(_on_cuda(batch))
    assert out.shape == (3, 12, 5, 1) and out.device.type == "cuda"
    assert torch.isfinite(out).all()
    if not quantized:
        scale = float(expected.std())
        torch.testing.assert_close(out.float().cpu(), expected, rtol=0, atol=BF16_TOL * scale)
    out.float().square().mean().backward()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trained
    for name, param in trained:
        assert param.grad is not None and param.grad.device.type == "cuda", name
        assert torch.isfinite(param.grad).all(), name
    assert any(float(p.grad.abs().sum()) > 0 for _, p in trained)


def test_qlora_backbone_on_cuda_trains_its_lora_layers_only():
    backbone = load_backbone(
        "tiny-llama", freeze="qlora", lora={"r": 4, "dropout": 0.0}, device="cuda"
    )
    layers = [m for m in backbone.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down of both blocks
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    for layer in layers:
        assert layer.weight.device.type == "cuda" and layer.weight.dtype == torch.uint8
        assert layer.weight.quant_state.absmax.device.type == "cuda"
        assert layer.compute_dtype == half  # compute_dtype "auto" on a GPU
    assert all(p.device.type == "cuda" for p in backbone.parameters())
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 7, backbone.hidden_size, device="cuda", generator=g)
    mask = torch.ones(2, 7, dtype=torch.long, device="cuda")
    mask[0, :3] = 0  # left padding
    backbone.train()
    out = backbone(x, mask)
    assert out.shape == (2, 7, 64) and torch.isfinite(out).all()
    out.float().square().mean().backward()
    trained = {n: p for n, p in backbone.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained.values())
    # B starts at zero, so A gets no gradient yet; every B does
    assert all(float(p.grad.abs().sum()) > 0 for n, p in trained.items() if "lora_B" in n)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_run_forecasts_on_cuda_what_it_forecasts_on_the_cpu(tmp_path, family):
    _, task, _, _ = train_in_memory(tmp_path, FAMILIES[family])  # trained on the CPU
    cutoffs = task.dataset("test").index.starts[[0, 7, 30]] + task.history - 1
    cpu = ForecastPipeline.from_run(tmp_path / "run", device="cpu")
    gpu = ForecastPipeline.from_run(tmp_path / "run", device="cuda")
    assert all(p.device.type == "cpu" for p in cpu.model.parameters())
    assert all(p.device.type == "cuda" for p in gpu.model.parameters())
    expected = cpu.predict(task.data, at=cutoffs).point
    scale = float(np.max(task.scaler.scale))
    tol = BF16_TOL if family == "qlora" else FP32_TOL  # 4-bit layers compute in bfloat16
    np.testing.assert_allclose(gpu.predict(task.data, at=cutoffs).point, expected, atol=tol * scale)
    if family != "qlora":
        half = ForecastPipeline.from_run(tmp_path / "run", device="cuda", dtype="bfloat16")
        point = half.predict(task.data, at=cutoffs).point
        np.testing.assert_allclose(point, expected, atol=BF16_TOL * scale)


def test_a_diffusion_run_samples_on_cuda(tmp_path):
    objective = {"name": "diffusion", "params": {"steps": 4, "hidden": 8, "layers": 1}}
    _, task, _, _ = train_in_memory(tmp_path, FAMILIES["trained baseline"], objective)
    gpu = ForecastPipeline.from_run(tmp_path / "run", device="cuda")
    assert all(b.device.type == "cuda" for b in gpu.sampler.buffers())
    forecast = gpu.predict(task.data, at=[300, 400], num_samples=16, quantile_levels=(0.1, 0.9))
    assert forecast.samples.shape == (16, 2, 6, 5, 1) and np.isfinite(forecast.samples).all()
    assert np.all(forecast.quantile(0.1) <= forecast.quantile(0.9))


def test_the_scorer_takes_cuda_tensors_and_samples():
    task = prepare_task(load(DATA), 12, 6)
    batch = task.dataset("test")[list(range(8))]
    g = torch.Generator().manual_seed(0)
    pred = batch["y"] + torch.randn(batch["y"].shape, generator=g)
    samples = pred[None] + torch.randn((5, *pred.shape), generator=g)
    on_cpu, on_gpu = Scorer(task), Scorer(task)
    on_cpu.update(pred, batch["y"], batch["y_mask"], samples=samples)
    on_gpu.update(pred.cuda(), batch["y"].cuda(), batch["y_mask"].cuda(), samples=samples.cuda())
    cpu, gpu = on_cpu.result(), on_gpu.result()
    assert gpu["crps"] == pytest.approx(cpu["crps"], rel=1e-6)
    for key, values in cpu["metrics"].items():
        assert gpu["metrics"][key] == pytest.approx(values, rel=1e-6)


def test_zero_shot_forecasts_on_cuda(tmp_path):
    data = load("synthetic-traffic:num_nodes=4,num_days=2")
    pipeline = ForecastPipeline.from_pretrained(
        "tiny-gpt2", 12, 4, device="cuda", num_samples=3, seed=1
    )
    assert all(p.device.type == "cuda" for p in pipeline.forecaster.model.parameters())
    first = pipeline.predict(data, at=[100, 200], progress=False)
    again = pipeline.predict(data, at=[100, 200], progress=False)
    assert first.shape == (2, 4, 4, 1) and first.meta["valid_fraction"] == 1.0
    np.testing.assert_array_equal(first.samples, again.samples)  # seeded on the GPU too

    out = tmp_path / "zs"
    argv = [
        "zero-shot",
        "--model",
        "tiny-gpt2",
        "--dataset",
        "synthetic-traffic:num_nodes=4,num_days=2",
    ]
    argv += ["--samples", "2", "--max-windows", "2", "--horizon", "4", "--device", "cuda"]
    assert main([*argv, "--out", str(out)]) == 0
    assert Forecast.load(out / "forecast.npz").meta["valid_fraction"] == 1.0


def test_the_engine_trains_on_cuda_in_bf16(tmp_path):
    task = prepare_task(load(DATA), 12, 6)
    info = DataInfo.from_data(task.data, 12, 6)
    spec = FAMILIES["gpt4ts"]
    torch.manual_seed(0)
    model = build_model("gpt4ts", info, backbone=spec["backbone"], **spec["params"])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    config = TrainingConfig(
        max_steps=6,
        eval_every=3,
        batch_size=16,
        eval_batch_size=256,
        device="cuda",
        mixed_precision="bf16",
    )
    metrics = fit_and_evaluate(model, task, config, run_dir=tmp_path / "run", horizons=(3, 6))
    assert metrics["mixed_precision"] == "bf16" and metrics["peak_cuda_mb"] > 0
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert all(
        not torch.equal(before[n], p.cpu()) for n, p in model.named_parameters() if n in before
    )
    assert math.isfinite(metrics["test"]["avg"]["mae"])
    # the reported test metrics are the trained model's: float32 on the CPU agrees
    direct = evaluate(model.cpu(), task, batch_size=256, horizons=(3, 6))
    assert direct["num_windows"] == metrics["num_test_windows"]
    assert direct["metrics"]["avg"]["mae"] == pytest.approx(metrics["test"]["avg"]["mae"], rel=0.05)


def test_a_qlora_recipe_trains_on_cuda_and_its_run_forecasts_there(tmp_path):
    recipe = load_recipe(
        REPO / "alignment" / "gpt4ts" / "synthetic-traffic" / "config_qlora.yaml",
        [
            "data.spec=synthetic-traffic:num_nodes=4,num_days=3,seed=1",
            "training.max_steps=3",
            "training.batch_size=8",
            "training.eval_batch_size=256",
            "training.device=cuda",
        ],
    )
    metrics = train(recipe, tmp_path / "run")
    assert metrics["steps"] == 3 and math.isfinite(metrics["test"]["avg"]["mae"])
    adapter = load_weights(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert any(float(v.abs().sum()) > 0 for k, v in adapter.items() if "lora_B" in k)
    pipeline = ForecastPipeline.from_run(tmp_path / "run", device="cuda")
    forecast = pipeline.predict(recipe.data.spec, at=[500, 600])
    assert forecast.shape == (2, 12, 4, 1) and np.isfinite(forecast.point).all()
