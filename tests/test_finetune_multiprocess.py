"""Fine-tuning on two CPU processes (torchrun, gloo): the same adapter on both ranks, and the
same adapter as one process with the same global batch.

The test starts this file under ``torchrun --standalone --nproc_per_node 2``; each process
fine-tunes a tiny GPT-2 with LoRA on its half of every batch (4 examples each, DDP averages
the gradients) and writes its adapter. One process with batches of 8 sees the same examples
per step. The answers have different numbers of tokens, so the halves' losses are weighted by
their share of the step's answer tokens (the engine's step shares), not averaged: otherwise
the two runs would differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_st.config import TrainingConfig
from llm_st.data import load
from llm_st.data.task import prepare_task
from llm_st.engine import RunDir, fit_and_evaluate, load_weights, save_weights
from llm_st.engine.accel import make_accelerator
from llm_st.models.base import DataInfo
from llm_st.models.text_lm import TextLM
from llm_st.objectives import build_objective

SMALL = "synthetic-traffic:num_nodes=4,num_days=6,interval_minutes=60,seed=0"
CPU_ONLY = {"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": ""}


def config(batch_size: int) -> TrainingConfig:
    return TrainingConfig(
        max_steps=4, batch_size=batch_size, eval_batch_size=8, lr=5e-3, eval_every=2,
        patience=None, grad_clip=None, device="cpu", seed=0,
    )  # fmt: skip


def setup(cache: Path):
    task = prepare_task(load(SMALL), 12, 4, ratios=(0.6, 0.2, 0.2))
    torch.manual_seed(0)  # LoRA's A matrices: the same start in both runs
    model = TextLM(
        DataInfo.from_data(task.data, 12, 4),
        backbone={"source": "tiny-gpt2", "freeze": "lora", "lora": {"r": 4, "dropout": 0.0}},
        val_windows=2, val_nodes=2, test_windows=3, test_nodes=2,
    )  # fmt: skip
    # no dropout anywhere (GPT-2's own, LoRA's): its masks depend on how batches are cut
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    objective = build_objective("sft", None, model, train_windows=16, cache_dir=cache)
    return task, model, objective


def adapter(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if ".lora_" in n}


def worker(out: Path) -> None:
    torch.set_num_threads(1)
    cfg = config(4)
    acc = make_accelerator(cfg)
    run = RunDir(out / "run")
    if acc.is_main_process:
        run.prepare()
    acc.wait_for_everyone()
    task, model, objective = setup(out / "cache")
    metrics = fit_and_evaluate(model, task, cfg, objective, run, accelerator=acc)
    rank = acc.process_index
    save_weights(adapter(model), out / f"rank{rank}.safetensors")
    (out / f"rank{rank}.json").write_text(
        json.dumps({"num_processes": acc.num_processes, "metrics": metrics})
    )


@pytest.mark.multiprocess
def test_two_processes_fine_tune_the_same_adapter_as_one(tmp_path):
    env = {**os.environ, **CPU_ONLY, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", __file__, str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["num_processes"] for r in ranks] == [2, 2]
    a, b = (load_weights(tmp_path / f"rank{r}.safetensors") for r in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ranks[0]["metrics"]["test"] == ranks[1]["metrics"]["test"]
    # the saved run holds the adapter of the ranks
    saved = load_weights(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert len(saved) == len(a)
    # one process, batches of 8: the same examples per step
    task, model, objective = setup(tmp_path / "cache")
    tokens = np.asarray(objective.dataset(task, "train").dataset["labels"], dtype=object)
    counts = {int(np.sum(np.asarray(t) != -100)) for t in tokens}
    assert len(counts) > 1  # answers of several lengths: a plain mean of halves would differ
    single = fit_and_evaluate(model, task, config(8), objective, tmp_path / "one")
    one = adapter(model)
    assert one.keys() == a.keys()
    for key in a:
        torch.testing.assert_close(a[key], one[key], atol=1e-6, rtol=1e-5)
    assert single["steps"] == ranks[0]["metrics"]["steps"] == 4


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
