"""Fine-tuning a causal LM on text answers (``text_lm`` + ``sft``): what trains, QLoRA vs
LoRA, resume, the run directory, peft interoperability, merging, the commands.

The models are tiny (``tiny-gpt2``: GPT-2's Conv1D layers, ``tiny-llama``: LLaMA's
linear layers); the data a small synthetic traffic graph at hourly steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_st.cli import main
from llm_st.config import TrainingConfig, load_recipe
from llm_st.data import load
from llm_st.data.task import prepare_task
from llm_st.engine import fit_and_evaluate, load_weights
from llm_st.engine.trainer import Trainer
from llm_st.models.base import DataInfo
from llm_st.models.text_lm import TextLM
from llm_st.objectives import build_objective
from llm_st.pipeline import ForecastPipeline

ALIGNMENT = Path(__file__).resolve().parents[1] / "alignment"
SMALL = "synthetic-traffic:num_nodes=4,num_days=6,interval_minutes=60,seed=0"
HISTORY, HORIZON = 12, 4
CFG = TrainingConfig(
    max_steps=6, batch_size=4, eval_batch_size=8, lr=5e-3, eval_every=3, patience=None,
    grad_clip=1.0, device="cpu", seed=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def task():
    return prepare_task(load(SMALL), HISTORY, HORIZON, ratios=(0.6, 0.2, 0.2))


def make_lm(task, freeze="lora", source="tiny-gpt2", lora=None, **params):
    backbone = {"source": source, "freeze": freeze}
    if lora is not None or freeze in ("lora", "qlora"):
        backbone["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, **(lora or {})}
    settings = {"val_windows": 2, "val_nodes": 2, "test_windows": 3, "test_nodes": 2}
    settings.update(params)
    torch.manual_seed(0)  # LoRA's A matrices are drawn at random
    return TextLM(DataInfo.from_data(task.data, HISTORY, HORIZON), backbone=backbone, **settings)


def make_objective(model, tmp_path, **params):
    return build_objective("sft", None, model, train_windows=12, cache_dir=tmp_path, **params)


def weights_and_states(model):
    """Every tensor of the model (4-bit weights as their packed bytes and quant states)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "source,freeze", [("tiny-gpt2", "lora"), ("tiny-llama", "lora"), ("tiny-llama", "qlora")]
)
def test_lora_and_qlora_change_only_the_adapter_weights(task, tmp_path, source, freeze):
    model = make_lm(task, freeze, source)
    before = weights_and_states(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    Trainer(model, make_objective(model, tmp_path), task, CFG).fit()
    after = weights_and_states(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # every LoRA B (zero at the start) moved; nothing else did, bit for bit
    lora_b = {k for k in before if ".lora_B." in k}
    assert lora_b and lora_b <= changed
    assert all(".lora_" in k for k in changed), sorted(changed - trainable)[:3]
    if freeze == "qlora":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_full_fine_tuning_trains_every_weight_and_the_run_keeps_them(task, tmp_path):
    model = make_lm(task, "full")
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == total
    metrics = fit_and_evaluate(
        model, task, CFG, make_objective(model, tmp_path / "cache"), tmp_path / "run"
    )
    assert metrics["params"]["trainable"] == total
    saved = load_weights(tmp_path / "run" / "model.safetensors")
    state = model.state_dict()
    # every weight once: GPT-2's head is its word embedding (tied), stored under that name
    assert set(state) - set(saved) == {"lm.lm_head.weight"}
    assert model.lm.lm_head.weight is model.lm.transformer.wte.weight
    assert all(torch.equal(saved[k], state[k].cpu()) for k in saved)
    assert not (tmp_path / "run" / "adapter").exists()


def _lora_parameters(model):
    return {n: p for n, p in model.named_parameters() if ".lora_" in n}


def test_qlora_gradients_match_lora_on_the_dequantized_weights(task, tmp_path):
    """QLoRA's backward through 4-bit weights equals LoRA's through the same weights in
    float32: ``W4 = dequantize(quantize(W))`` loaded into a LoRA model. Tolerance 1e-4
    relative to the largest gradient (float32 compute on the CPU)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf

    q = make_lm(task, "qlora", "tiny-llama")
    f = make_lm(task, "lora", "tiny-llama")
    qbase, fbase = q.hf_model, f.hf_model
    with torch.no_grad():
        for name, module in qbase.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                weight = bf.dequantize_4bit(module.weight.data, module.weight.quant_state)
                target = fbase.get_submodule(name)  # ...q_proj.base_layer in both
                target.weight.copy_(weight.to(target.weight.dtype))
        # the same LoRA weights in both, B not zero so that A gets a gradient as well
        torch.manual_seed(3)
        for (qn, qp), (fn, fp) in zip(
            _lora_parameters(q).items(), _lora_parameters(f).items(), strict=True
        ):
            assert qn == fn
            qp.copy_(torch.randn_like(qp) * 0.05)
            fp.copy_(qp)
    batch = make_objective(q, tmp_path).dataset(task, "train")[np.arange(4)]
    for model in (q, f):
        model.lm.train()
        loss, _ = model.lm_loss(batch)
        loss.backward()
    qg = {n: p.grad for n, p in _lora_parameters(q).items()}
    fg = {n: p.grad for n, p in _lora_parameters(f).items()}
    scale = max(float(g.abs().max()) for g in fg.values())
    assert scale > 0
    for name in qg:
        assert qg[name] is not None and fg[name] is not None, name
        assert float((qg[name] - fg[name]).abs().max()) <= 1e-4 * scale, name


def test_an_interrupted_fine_tuning_resumes_to_the_same_adapter(task, tmp_path):
    cfg = TrainingConfig(**{**CFG.to_dict(), "max_steps": 8, "eval_every": 2})

    def run(out, **kwargs):
        model = make_lm(task, "lora", lora={"dropout": 0.1})  # dropout: random state matters
        return fit_and_evaluate(
            model, task, cfg, make_objective(model, tmp_path / "cache"), out, **kwargs
        )

    full = run(tmp_path / "a")

    def interrupt(step: int) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", on_step=interrupt)
    resumed = run(tmp_path / "b", resume=True)
    for key in ("test", "val_loss", "best_step", "steps"):
        assert resumed[key] == full[key], key
    a = load_weights(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    b = load_weights(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_adapter_loads_with_peft_and_gives_the_same_logits(task, tmp_path):
    from peft import PeftModel

    from llm_st.backbones import load_causal_lm

    model = make_lm(task, "lora", "tiny-llama")
    fit_and_evaluate(model, task, CFG, make_objective(model, tmp_path / "cache"), tmp_path / "r")
    base, _ = load_causal_lm("tiny-llama")
    ids = torch.tensor([[5, 17, 42, 8, 99, 3]])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "r" / "adapter"))
    model.lm.eval()
    with torch.no_grad():
        ours = model.lm(input_ids=ids).logits
        theirs = peft_model(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # and the adapter changed the model: the base alone answers differently
    assert float((ours - plain).abs().max()) > 1e-4


def test_selecting_on_the_validation_mae_decodes_forecasts(task, tmp_path):
    cfg = TrainingConfig(**{**CFG.to_dict(), "select_metric": "val_mae"})
    model = make_lm(task, "lora")
    trainer = Trainer(model, make_objective(model, tmp_path), task, cfg)
    summary = trainer.fit()
    assert summary["selected_on"] == "val_mae"
    assert len(trainer.history) == 2
    assert all(np.isfinite(r["val_mae"]) and np.isfinite(r["val_loss"]) for r in trainer.history)
    best = min(trainer.history, key=lambda r: r["val_mae"])
    assert summary["best_step"] == best["step"]
    assert summary["val"]["avg"]["mae"] == pytest.approx(best["val_mae"])


def test_finetune_command_writes_a_run_that_forecasts_and_merges(
    task, tmp_path, capsys, pretrained_test_lm
):
    # the fine-tuning starts from the LM pre-trained here (the test recipe's, LLaMA layout)
    recipe = ALIGNMENT / "text_lm" / "synthetic-traffic" / "config_lora.yaml"
    out = tmp_path / "run"
    small = [
        f"data.spec={SMALL}", f"data.history={HISTORY}", f"data.horizon={HORIZON}",
        "data.ratios=[0.6,0.2,0.2]", f"model.backbone.source={pretrained_test_lm}",
        "model.params.val_windows=2", "model.params.val_nodes=2", "model.params.test_windows=3",
        "model.params.test_nodes=2", "objective.params.train_windows=12",
        f"objective.params.cache_dir={tmp_path / 'cache'}", "training.max_steps=4",
        "training.eval_every=2", "training.batch_size=4", "training.device=cpu",
    ]  # fmt: skip
    args = ["finetune", "--recipe", str(recipe), "--out", str(out), "--merge"]
    assert main(args + [a for s in small for a in ("--set", s)]) == 0
    printed = capsys.readouterr().out
    assert "valid answers" in printed and "merged model" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_test_windows"] == 3 and metrics["num_nodes"] == 2
    assert 0.0 <= metrics["valid_fraction"] <= 1.0
    assert metrics["run_bytes"] == sum(
        f.stat().st_size for f in [out / "model.safetensors", *(out / "adapter").iterdir()]
    )
    # the run forecasts through the pipeline, as the trained model did
    pipeline = ForecastPipeline.from_run(out, device="cpu")
    data = load(SMALL)
    rows = np.array([40, 60])
    forecast = pipeline.predict(data, at=rows)
    assert forecast.point.shape == (2, HORIZON, data.num_nodes, 1)
    assert np.isfinite(forecast.point).all()
    # the merged model is a plain causal LM with the same outputs as base + adapter
    from llm_st.backbones import load_causal_lm

    merged, _ = load_causal_lm(out / "merged")
    ids = torch.tensor([[5, 17, 42, 8, 99, 3]])  # within the pre-trained LM's 261 tokens
    with torch.no_grad():
        want = pipeline.model.lm(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # a second run into the same directory is refused: nothing is overwritten silently
    capsys.readouterr()
    assert main(args + [a for s in small for a in ("--set", s)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]


def test_train_refuses_a_fine_tuning_recipe_and_finetune_a_training_recipe(tmp_path, capsys):
    lm = ALIGNMENT / "text_lm" / "synthetic-traffic" / "config_lora.yaml"
    assert main(["train", "--recipe", str(lm), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "llm-st finetune" in err[0]
    other = ALIGNMENT / "dlinear" / "synthetic-traffic" / "config.yaml"
    assert main(["finetune", "--recipe", str(other), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "llm-st train" in err[0]


def test_every_fine_tuning_recipe_loads(tmp_path):
    for path in sorted((ALIGNMENT / "text_lm").glob("*/config*.yaml")):
        recipe = load_recipe(path)
        assert recipe.model.name == "text_lm" and recipe.objective.name == "sft", path
        assert recipe.model.backbone["freeze"] in ("full", "lora", "qlora"), path
