"""Two CPU processes (torchrun, gloo): synchronized training, each test window scored once.

The test starts this file under ``torchrun --standalone --nproc_per_node 2`` (a free
port, unlike ``accelerate.debug_launcher``'s fixed 29500); each process trains the
same task with the engine and writes what it saw, and the test compares the two
processes with each other and with a single-process evaluation. The children run on the
CPU backend even where a GPU is visible (:data:`CPU_ONLY`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_engine import make_model, wave_data  # tests/ is on the path (pytest, or as a script)

from llm_st.config import TrainingConfig, load_recipe
from llm_st.data.task import prepare_task
from llm_st.engine import RunDir, build_task, fit_and_evaluate, load_weights, save_weights
from llm_st.engine.accel import make_accelerator
from llm_st.evaluation.evaluate import evaluate
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model, list_models

REPO = Path(__file__).resolve().parents[1]
HORIZONS = (1, 3)
# the children see no GPU and Accelerate is told to use the CPU (gloo), so a machine with
# GPUs runs the same two CPU processes (not NCCL, not both processes on one GPU)
CPU_ONLY = {"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": ""}
CONFIG = TrainingConfig(
    epochs=2, lr=1e-2, batch_size=8, eval_batch_size=16, patience=None, device="cpu", seed=5
)


def make_task():
    # 301 rows: an odd number of test windows, so the two shards differ in size
    return prepare_task(wave_data(num_steps=301), 12, 3, ratios=(0.6, 0.2, 0.2))


def worker(out: Path) -> None:
    """One process of the 2-process run."""
    torch.set_num_threads(1)
    acc = make_accelerator(CONFIG)
    run = RunDir(out / "run")
    if acc.is_main_process:
        run.prepare()
    acc.wait_for_everyone()
    task = make_task()
    model = make_model(task, seed=acc.process_index)  # different starts; DDP syncs them
    metrics = fit_and_evaluate(model, task, CONFIG, run_dir=run, horizons=HORIZONS, accelerator=acc)
    rank = acc.process_index
    save_weights(model.state_dict(), out / f"rank{rank}.safetensors")
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "distributed_type": str(acc.distributed_type),
                "num_processes": acc.num_processes,
                "metrics": metrics,
                "test_windows": len(task.dataset("test")),
            }
        )
    )


@pytest.mark.multiprocess
def test_two_cpu_processes_train_in_sync_and_score_every_window_once(tmp_path):
    env = {**os.environ, **CPU_ONLY, "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for info in ranks:
        assert info["distributed_type"] == "DistributedType.MULTI_CPU"
        assert info["num_processes"] == 2 and info["metrics"]["world_size"] == 2
        # every test window scored exactly once: the count is the dataset length
        assert info["metrics"]["num_test_windows"] == info["test_windows"]
    weights = [load_weights(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert ranks[0]["metrics"]["test"] == ranks[1]["metrics"]["test"]
    assert ranks[0]["metrics"]["best_epoch"] == ranks[1]["metrics"]["best_epoch"]
    # the saved run holds the same weights, and scoring them in one process agrees
    saved = load_weights(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(saved[k], weights[0][k]) for k in saved)
    task = make_task()
    model = make_model(task)
    model.load_state_dict(weights[0])
    single = evaluate(model, task, batch_size=CONFIG.eval_batch_size, horizons=HORIZONS)
    assert single["num_windows"] == ranks[0]["test_windows"]
    for horizon, values in single["metrics"].items():
        assert ranks[0]["metrics"]["test"][horizon] == pytest.approx(values, rel=1e-9)
    # each process trained on its own half of every batch: 2 x 8 windows per step
    train_windows = len(task.dataset("train"))
    assert ranks[0]["metrics"]["steps"] == 2 * -(-train_windows // 16)
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.skipif("dlinear" not in list_models(), reason="needs the dlinear model")
def test_train_script_under_torchrun(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "spec": "synthetic-traffic:num_nodes=6,num_days=3",
                    "history": 12,
                    "horizon": 6,
                    "horizons": [3, 6],
                },
                "model": {"name": "dlinear", "params": {"kernel_size": 5}},
                "training": {"epochs": 2, "lr": 1e-2, "patience": None},
            }
        )
    )
    out = tmp_path / "run"
    env = {**os.environ, **CPU_ONLY}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "scripts" / "train.py"),
        "--recipe",
        str(recipe),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    loaded = load_recipe(out / "recipe.yaml")
    task = build_task(loaded.data)
    model = build_model("dlinear", DataInfo.from_data(task.data, 12, 6), kernel_size=5)
    model.load_state_dict(load_weights(out / "model.safetensors"))
    single = evaluate(model, task, batch_size=loaded.training.eval_batch_size, horizons=(3, 6))
    assert metrics["num_test_windows"] == single["num_windows"] == len(task.dataset("test"))
    assert metrics["test"]["avg"] == pytest.approx(single["metrics"]["avg"], rel=1e-9)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
