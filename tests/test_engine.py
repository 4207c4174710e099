"""The training engine: learning, early stopping, resume, checkpoints, run directories."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from llm_st.config import TrainingConfig
from llm_st.data.container import STData
from llm_st.data.task import ForecastTask, prepare_task
from llm_st.engine import CheckpointManager, RunDir, Trainer, fit_and_evaluate, load_weights
from llm_st.engine.accel import lr_schedule, make_optimizer, resolve_mixed_precision
from llm_st.engine.seeding import epoch_order, process_batches
from llm_st.engine.trainer import halve_on_oom, split_batch, timed_warmup_steps
from llm_st.errors import ConfigError
from llm_st.evaluation.evaluate import evaluate, mean_loss
from llm_st.models.base import DataInfo, STModel
from llm_st.models.naive import LastValue
from llm_st.models.registry import build_model
from llm_st.objectives import Objective, build_objective


def wave_data(num_steps: int = 480, num_nodes: int = 3, seed: int = 0) -> STData:
    """Daily sinusoids with a phase per node plus small noise: linear in their history."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_steps)[:, None]
    phase = rng.uniform(0, 2 * np.pi, num_nodes)
    noise = rng.normal(0, 0.3, (num_steps, num_nodes))
    values = 50 + 10 * np.sin(2 * np.pi * t / 48 + phase) + noise
    return STData(values, timestamps=pd.date_range("2024-01-01", periods=num_steps, freq="5min"))


class LagLinear(STModel):
    """One linear map from each series' history to its horizon, shared by all nodes."""

    def __init__(
        self, info: DataInfo, dropout: float = 0.0, zero_init: bool = False, bias: bool = True
    ):
        super().__init__(info)
        self.lin = nn.Linear(info.history, info.horizon, bias=bias)
        self.drop = nn.Dropout(dropout)
        if zero_init:
            nn.init.zeros_(self.lin.weight)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"].permute(0, 2, 3, 1)  # [B, N, C, L]
        return self.lin(self.drop(x)).permute(0, 3, 1, 2)  # [B, H, N, C]


def make_model(task: ForecastTask, seed: int = 0, **kw) -> LagLinear:
    torch.manual_seed(seed)
    return LagLinear(DataInfo.from_data(task.data, task.history, task.horizon), **kw)


def val_loss_of(model: nn.Module, task: ForecastTask, loss: str = "mae") -> float:
    objective = build_objective("regression", loss=loss)
    return evaluate(model, task, "val", loss_fn=objective.forecast_loss)["loss"]


# ----------------------------------------------------------------------------- learning
def test_training_lowers_validation_loss_and_keeps_best_weights():
    task = prepare_task(wave_data(), 12, 3, ratios=(0.6, 0.2, 0.2))
    model = make_model(task)
    before = val_loss_of(model, task)
    cfg = TrainingConfig(epochs=4, lr=1e-2, batch_size=16, patience=None)
    trainer = Trainer(model, None, task, cfg, horizons=(1, 3))
    fit = trainer.fit()
    assert len(trainer.history) == 4 and [r["epoch"] for r in trainer.history] == [1, 2, 3, 4]
    assert fit["val_loss"] < before / 5, (before, fit["val_loss"])
    # the model holds the selected weights: scoring them again gives the recorded numbers
    assert evaluate(model, task, "val", horizons=(1, 3))["metrics"] == fit["val"]
    assert val_loss_of(model, task) == pytest.approx(fit["val_loss"], rel=1e-12)
    best = min(trainer.history, key=lambda r: r["val_loss"])
    assert (fit["best_epoch"], fit["best_step"]) == (best["epoch"], best["step"])


def ar_data(coef_by_part: tuple[float, float, float], num_steps: int = 600) -> STData:
    """``z[t+1] = a z[t] + e`` with ``a`` set per 60/20/20 part, each part centred.

    Train and validation parts disagree on ``a``; centring keeps the best
    no-intercept slope of each part at about its ``a``.
    """
    rng = np.random.default_rng(1)
    borders = [0, int(0.6 * num_steps), int(0.8 * num_steps), num_steps]
    z = np.zeros(num_steps)
    for part, a in enumerate(coef_by_part):
        for t in range(max(borders[part], 1), borders[part + 1]):
            z[t] = a * z[t - 1] + rng.normal()
        z[borders[part] : borders[part + 1]] -= z[borders[part] : borders[part + 1]].mean()
    return STData(z[:, None], timestamps=pd.date_range("2024-01-01", periods=num_steps, freq="h"))


def test_early_stopping_selects_the_best_validation_epoch(tmp_path):
    # Training pulls the one-lag weight w from 0 towards 0.9; the validation loss is a
    # parabola in w with its minimum near 0.2, so it falls, bottoms out and rises again.
    task = prepare_task(ar_data((0.9, 0.2, 0.9)), 1, 1, ratios=(0.6, 0.2, 0.2))
    model = make_model(task, zero_init=True, bias=False)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(step: int) -> None:
        snapshots[step] = {k: v.clone() for k, v in model.state_dict().items()}

    cfg = TrainingConfig(
        epochs=30, lr=5e-3, batch_size=32, scheduler="constant", grad_clip=None, patience=3
    )
    run = tmp_path / "run"
    metrics = fit_and_evaluate(
        model,
        task,
        cfg,
        build_objective("regression", loss="mse"),
        run,
        horizons=(1,),
        on_step=snapshot,
    )
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["val_loss"] for r in log]
    best = int(np.argmin(losses))
    assert 1 <= best < len(losses) - 1  # a real minimum inside the run
    assert np.all(np.diff(losses[best:]) > 0)  # it rises after
    assert metrics["best_epoch"] == log[best]["epoch"] == best + 1
    assert metrics["stopped_early"] and len(log) == best + 1 + cfg.patience
    assert metrics["epochs"] == len(log) < cfg.epochs
    expected = snapshots[log[best]["step"]]
    saved = load_weights(run / "model.safetensors")
    for name, value in expected.items():
        assert torch.equal(saved[name], value) and torch.equal(model.state_dict()[name], value)
    assert not torch.equal(expected["lin.weight"], snapshots[max(snapshots)]["lin.weight"])
    # the validation loss is a parabola in w: the best evaluation is the one whose w lies
    # closest to the least-squares slope of the validation windows
    val = task.dataset("val").batch(np.arange(len(task.dataset("val"))))
    w_star = float((val["x"] * val["y_scaled"]).sum() / (val["x"] ** 2).sum())
    path = [snapshots[r["step"]]["lin.weight"].item() for r in log]
    assert best == int(np.argmin([abs(w - w_star) for w in path]))
    # and the test metrics are those of the best weights
    assert metrics["test"] == evaluate(model, task, horizons=(1,))["metrics"]


def test_gradient_accumulation_matches_a_larger_batch():
    task = prepare_task(wave_data(num_steps=300), 12, 3, ratios=(0.6, 0.2, 0.2))
    n = len(task.dataset("train"))
    assert n % 16 <= 8  # the last big batch fits in one small one: same averaging
    weights = []
    for batch_size, accum in ((16, 1), (8, 2)):
        model = make_model(task)
        cfg = TrainingConfig(
            epochs=2, lr=1e-2, batch_size=batch_size, grad_accum=accum, patience=None
        )
        trainer = Trainer(model, None, task, cfg)
        trainer.fit()
        weights.append(model.lin.weight.detach().clone())
        assert trainer.state.step == 2 * math.ceil(n / 16)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- resume
def test_resume_after_interruption_reproduces_the_uninterrupted_run(tmp_path):
    task = prepare_task(wave_data(num_steps=190), 12, 3, ratios=(0.6, 0.2, 0.2))
    cfg = TrainingConfig(
        epochs=4, lr=5e-3, batch_size=8, grad_accum=2, eval_every=5, patience=None, seed=3
    )
    batches = len(process_batches(np.arange(len(task.dataset("train"))), 8))
    assert batches % 2 == 1  # an epoch ends with a partial accumulation group
    # dropout makes the result depend on the restored random state too
    full = fit_and_evaluate(make_model(task, dropout=0.2), task, cfg, run_dir=tmp_path / "a")

    def interrupt(step: int) -> None:
        if step == 12:
            raise KeyboardInterrupt

    part = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        fit_and_evaluate(make_model(task, dropout=0.2), task, cfg, run_dir=part, on_step=interrupt)
    latest = CheckpointManager(part / "checkpoints").latest()
    assert latest.name == "ckpt-000000010"
    assert json.loads((latest / "trainer_state.json").read_text())["batch_in_epoch"] > 0
    with pytest.raises(ConfigError, match="--resume"):  # never restarted over it silently
        fit_and_evaluate(make_model(task), task, cfg, run_dir=part)
    # a differently initialized model: everything must come from the checkpoint
    resumed = fit_and_evaluate(
        make_model(task, seed=99, dropout=0.2), task, cfg, run_dir=part, resume=True
    )
    for key in ("test", "val", "val_loss", "best_epoch", "best_step", "steps", "epochs"):
        assert resumed[key] == full[key], key
    a = load_weights(tmp_path / "a" / "model.safetensors")
    b = load_weights(part / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def records(path: Path) -> list[dict]:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]

    assert records(part / "log.jsonl") == records(tmp_path / "a" / "log.jsonl")
    assert len(records(part / "log.jsonl")) == math.ceil(4 * math.ceil(batches / 2) / 5)
    # resuming with other training settings is refused
    other = TrainingConfig(**{**cfg.to_dict(), "lr": 1e-3})
    with pytest.raises(ConfigError, match="lr"):
        Trainer(make_model(task), None, task, other, run_dir=part).fit(resume=True)
    # how the run computes may change (micro-batches, compilation): the finished run is kept
    how = dataclasses.replace(cfg, micro_batch_size=3, compile=True)
    with pytest.warns(UserWarning, match="compile on the CPU"):
        again = Trainer(make_model(task), None, task, how, run_dir=part).fit(resume=True)
    assert (again["steps"], again["val_loss"]) == (full["steps"], full["val_loss"])


class _Payload:
    """Pickles to a call that would create a file when unpickled without restrictions."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_resume_refuses_a_checkpoint_holding_code(tmp_path):
    task = prepare_task(wave_data(num_steps=200), 12, 3, ratios=(0.6, 0.2, 0.2))
    cfg = TrainingConfig(epochs=1, batch_size=32, patience=None)
    run = tmp_path / "run"
    fit_and_evaluate(make_model(task), task, cfg, run_dir=run)
    latest = CheckpointManager(run / "checkpoints").latest()
    marker = tmp_path / "pwned"
    torch.save({"state": _Payload(marker), "param_groups": []}, latest / "optimizer.bin")
    with pytest.raises(pickle.UnpicklingError):
        Trainer(make_model(task), None, task, cfg, run_dir=run).fit(resume=True)
    assert not marker.exists()


# ----------------------------------------------------------------------------- run dirs
def test_run_directory_with_results_is_not_overwritten_silently(tmp_path):
    run = RunDir(tmp_path / "run")
    run.prepare()
    (run / "metrics.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--overwrite.*--resume"):
        run.prepare()
    run.prepare(resume=True)
    assert (run / "metrics.json").exists()
    run.prepare(overwrite=True)
    assert not (run / "metrics.json").exists()
    assert (run / "notes.txt").read_text() == "mine"  # only run outputs are removed
    with pytest.raises(ConfigError, match="both"):
        run.prepare(resume=True, overwrite=True)


def test_checkpoint_pointer_moves_only_after_a_complete_write(tmp_path):
    manager = CheckpointManager(tmp_path)

    def write(value: str):
        def _write(staging: Path) -> None:
            (staging / "state.txt").write_text(value)
            if value == "broken":
                raise OSError("disk full")

        return _write

    first = manager.save(1, write("one"))
    assert manager.latest() == first and (first / "state.txt").read_text() == "one"
    with pytest.raises(OSError, match="disk full"):
        manager.save(2, write("broken"))
    assert manager.latest() == first and (first / "state.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000001", "latest.json"]
    # a crash mid-write leaves a staging directory that is never taken for a checkpoint
    stale = manager.staging_dir(3)
    stale.mkdir()
    (stale / "state.txt").write_text("half")
    assert manager.latest() == first
    fourth = manager.save(4, write("four"))
    assert manager.latest() == fourth and (fourth / "state.txt").read_text() == "four"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000004", "latest.json"]


# ----------------------------------------------------------------------------- baselines
def test_last_value_through_the_engine_equals_evaluate(tmp_path):
    task = prepare_task(wave_data(), 12, 3, ratios=(0.6, 0.2, 0.2))
    info = DataInfo.from_data(task.data, 12, 3)
    run = tmp_path / "run"
    metrics = fit_and_evaluate(
        LastValue(info), task, TrainingConfig(), run_dir=run, horizons=(1, 3)
    )
    direct = evaluate(LastValue(info), task, horizons=(1, 3))
    assert metrics["test"] == direct["metrics"]
    assert metrics["num_test_windows"] == direct["num_windows"] == len(task.dataset("test"))
    assert metrics["val"] == evaluate(LastValue(info), task, "val", horizons=(1, 3))["metrics"]
    assert metrics["learned"] is False and metrics["steps"] == 0 and metrics["best_epoch"] is None
    assert metrics["params"] == {"trainable": 0, "total": 0, "objective": 0}
    assert not (run / "checkpoints").exists()
    # copy-last by hand: MAE of the last history value against each target, original scale
    data = task.dataset("test").batch(np.arange(len(task.dataset("test"))))
    last = task.scaler.inverse_transform(data["x"][:, -1:])
    assert metrics["test"]["avg"]["mae"] == pytest.approx(np.abs(data["y"] - last).mean(), rel=1e-6)


# ----------------------------------------------------------------------------- objectives
class ScaledRegression(Objective):
    """MAE of ``scale * model(batch)``: an objective with a parameter of its own."""

    def __init__(self, info=None, model=None):
        super().__init__(info, model)
        self.scale = nn.Parameter(torch.tensor(0.5))

    def loss(self, model, batch):
        err = (self.scale * model(batch) - batch["y_scaled"]).abs()
        return err[batch["y_mask"]].mean(), {"scale": self.scale.detach()}


def test_objective_parameters_are_trained_and_saved(tmp_path):
    task = prepare_task(wave_data(num_steps=300), 12, 3, ratios=(0.6, 0.2, 0.2))
    objective = ScaledRegression()
    run = tmp_path / "run"
    cfg = TrainingConfig(epochs=2, lr=1e-2, batch_size=16, patience=None)
    model = make_model(task)
    metrics = fit_and_evaluate(model, task, cfg, objective, run, horizons=(3,))
    assert metrics["params"]["objective"] == 1
    assert abs(objective.scale.item() - 0.5) > 0.01  # optimized with the model
    saved = load_weights(run / "objective.safetensors")
    assert torch.equal(saved["scale"], objective.scale.detach())
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert "train_scale" in log[0] and "val_mae" not in log[0]  # val_loss selects; no metrics pass
    best = min(log, key=lambda r: r["val_loss"])
    # the validation loss of a non-forecast objective is its window-weighted mean loss
    recomputed = mean_loss(lambda b: objective.loss(model, b)[0], task.dataset("val"), 64, "cpu")
    assert best["val_loss"] == pytest.approx(recomputed, rel=1e-6)


def test_regression_losses_by_hand():
    pred = torch.tensor([[1.0, 2.0, 4.0]])
    batch = {
        "y_scaled": torch.tensor([[1.5, 0.0, 1.0]]),
        "y_mask": torch.tensor([[True, False, True]]),
    }
    expect = {"mae": (0.5 + 3.0) / 2, "mse": (0.25 + 9.0) / 2, "huber": (0.125 + 2.5) / 2}
    for name, value in expect.items():
        loss = build_objective("regression", loss=name).forecast_loss(pred, batch)
        assert loss.item() == pytest.approx(value)
    nothing = {**batch, "y_mask": torch.zeros(1, 3, dtype=torch.bool)}
    assert build_objective("regression").forecast_loss(pred, nothing).item() == 0.0
    with pytest.raises(ConfigError, match="rmse"):
        build_objective("regression", loss="rmse")
    with pytest.raises(ConfigError, match="unknown objective"):
        build_objective("no-such-objective")


# ----------------------------------------------------------------------------- pieces
def test_warmup_then_schedules_by_hand():
    lrs = {}
    for kind in ("cosine", "linear", "constant"):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = lr_schedule(opt, kind, warmup_steps=2, total_steps=6)
        lrs[kind] = []
        for _ in range(6):
            lrs[kind].append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    cos = [0.5 * (1 + math.cos(math.pi * p / 4)) for p in range(4)]
    assert lrs["cosine"] == pytest.approx([0.5, 1.0, *cos])
    assert lrs["linear"] == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    assert lrs["constant"] == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_mixed_precision_falls_back_where_unsupported():
    with pytest.warns(UserWarning, match="full precision"):
        assert resolve_mixed_precision("fp16", "cpu") == "no"
    assert resolve_mixed_precision("bf16", "cpu") == "bf16"
    assert resolve_mixed_precision("no", "cuda") == "no"


def test_bf16_training_on_cpu_then_full_precision_in_the_same_process():
    task = prepare_task(wave_data(num_steps=300), 12, 3, ratios=(0.6, 0.2, 0.2))
    for precision in ("bf16", "no"):
        cfg = TrainingConfig(epochs=1, lr=1e-2, batch_size=32, mixed_precision=precision)
        metrics = fit_and_evaluate(make_model(task), task, cfg, horizons=(3,))
        assert metrics["mixed_precision"] == precision
        assert math.isfinite(metrics["test"]["avg"]["mae"])


def test_data_order_is_seeded_and_shards_cover_every_window():
    a, b = epoch_order(50, seed=1, epoch=0), epoch_order(50, seed=1, epoch=1)
    assert np.array_equal(a, epoch_order(50, seed=1, epoch=0)) and not np.array_equal(a, b)
    assert sorted(a) == list(range(50))
    shards = [process_batches(a, 8, rank, 3) for rank in range(3)]
    assert len({len(s) for s in shards}) == 1  # same number of steps on every process
    assert [len(x) for x in shards[0]] == [len(x) for x in shards[2]]
    seen = np.concatenate([x for s in shards for x in s])
    assert len(seen) == 51 and set(seen) == set(range(50))  # one window repeated as padding
    assert [len(x) for x in process_batches(a, 16)] == [16, 16, 16, 2]  # nothing dropped


def test_empty_validation_split_is_refused():
    task = prepare_task(wave_data(num_steps=200), 12, 3, ratios=(0.8, 0.0, 0.2))
    with pytest.raises(ConfigError, match="validation split is empty"):
        Trainer(make_model(task), None, task, TrainingConfig()).fit()


# ----------------------------------------------------------------------------- speed
def masked_wave_data(num_steps: int = 300, seed: int = 0) -> STData:
    """:func:`wave_data` with about 40 % of the entries unobserved, unevenly over windows."""
    data = wave_data(num_steps=num_steps, seed=seed)
    rng = np.random.default_rng(seed + 1)
    observed = rng.random(data.values.shape) > rng.uniform(0.0, 0.8, (num_steps, 1, 1))
    return STData(data.values, mask=observed, timestamps=data.timestamps)


def test_micro_batch_losses_weighted_by_observed_targets_add_up_to_the_batch_loss():
    task = prepare_task(masked_wave_data(), 12, 3, ratios=(0.6, 0.2, 0.2))
    batch = task.dataset("train")[np.arange(16)]
    model, objective = make_model(task), build_objective("regression", loss="mse")
    parts = split_batch(batch, 5)
    assert [len(p["x"]) for p in parts] == [5, 5, 5, 1]
    assert all(torch.equal(torch.cat([p[k] for p in parts]), batch[k]) for k in batch)
    with torch.no_grad():
        whole = objective.loss(model, batch)[0]
        losses = torch.stack([objective.loss(model, p)[0] for p in parts])
    weights = torch.stack([objective.loss_weight(p) for p in parts]).float()
    assert weights.tolist() == [float(p["y_mask"].sum()) for p in parts]
    assert len(set(weights.tolist())) > 1  # uneven: an unweighted mean would be wrong
    torch.testing.assert_close((losses * weights).sum() / weights.sum(), whole)
    assert abs(losses.mean() - whole) > 1e-3


def test_micro_batches_train_the_weights_of_whole_batches():
    task = prepare_task(masked_wave_data(), 12, 3, ratios=(0.6, 0.2, 0.2))
    objective = {"name": "regression", "loss": "mse"}
    runs = {}
    for micro in (None, 5, "auto"):  # "auto" on the CPU: whole batches
        model = make_model(task)
        cfg = TrainingConfig(
            epochs=2,
            lr=1e-2,
            batch_size=16,
            grad_accum=2,
            micro_batch_size=micro,
            patience=None,
            device="cpu",
        )
        trainer = Trainer(model, build_objective(**objective), task, cfg)
        fit = trainer.fit()
        runs[micro] = (model.lin.weight.detach().clone(), trainer.history, fit)
    weights, history, fit = runs[None]
    assert fit["micro_batch_size"] is None and runs[5][2]["micro_batch_size"] == 5
    assert runs["auto"][2]["micro_batch_size"] is None
    assert torch.equal(runs["auto"][0], weights)
    torch.testing.assert_close(runs[5][0], weights, rtol=1e-5, atol=1e-6)
    for key in ("train_loss", "val_loss"):
        assert [r[key] for r in runs[5][1]] == pytest.approx([r[key] for r in history], rel=1e-5)


class PairwiseObjective(Objective):
    """A loss coupling the windows of a batch (its mean forecast), as in-batch negatives do."""

    name = "pairwise"
    splittable = False

    def loss(self, model, batch):
        pred = model(batch)
        return (pred.mean(0) - batch["y_scaled"].mean(0)).abs().mean(), {}


def test_micro_batches_of_an_objective_relating_windows_are_warned_about():
    task = prepare_task(wave_data(num_steps=200), 12, 3, ratios=(0.6, 0.2, 0.2))
    cfg = TrainingConfig(max_steps=2, batch_size=16, patience=None, device="cpu")
    with pytest.warns(UserWarning, match="'pairwise' relates the windows.*micro-batches of 4"):
        Trainer(
            make_model(task),
            PairwiseObjective(),
            task,
            dataclasses.replace(cfg, micro_batch_size=4),
        ).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # whole batches: nothing to warn about
        Trainer(make_model(task), PairwiseObjective(), task, cfg).fit()


def test_auto_micro_batches_halve_until_the_step_fits():
    tried, released = [], []

    def step(size: int) -> int:
        tried.append(size)
        if size > 24:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 10 * size

    assert halve_on_oom(step, 100, lambda: released.append(tried[-1])) == (12, 120)
    assert tried == [100, 50, 25, 12] and released == [100, 50, 25]
    tried.clear()
    assert halve_on_oom(step, 16) == (16, 160) and tried == [16]  # fits at once: one try
    tried.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        halve_on_oom(lambda size: step(size + 100), 2)
    assert tried == [102, 101]  # sizes 2 and 1: the error of size 1 is raised

    def broken(size: int) -> int:
        tried.append(size)
        raise ValueError("not a memory problem")

    tried.clear()
    with pytest.raises(ValueError):
        halve_on_oom(broken, 64)
    assert tried == [64]  # other errors are not retried


class GradientsTakeMemory(Objective):
    """Masked MSE that runs out of GPU memory (the real error, raised by hand) on a
    micro-batch of more than ``limit`` windows, 8 fewer once gradients are allocated."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.sizes = limit, []
        self.mse = build_objective("regression", loss="mse")

    def loss(self, model, batch):
        size = len(batch["x"])
        self.sizes.append(size)
        if size + 8 * any(p.grad is not None for p in model.parameters()) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.mse.loss(model, batch)

    def loss_weight(self, batch):
        return self.mse.loss_weight(batch)


def test_auto_micro_batches_restart_the_first_step_from_clean_gradients(monkeypatch):
    # "auto" probes on CUDA only; the probe's logic is the same on the CPU
    task = prepare_task(masked_wave_data(), 12, 3, ratios=(0.6, 0.2, 0.2))
    cfg = TrainingConfig(
        max_steps=3,
        lr=1e-2,
        batch_size=16,
        eval_batch_size=16,
        grad_accum=2,
        patience=None,
        device="cpu",
    )
    fixed, probed = make_model(task), make_model(task)
    Trainer(
        fixed, GradientsTakeMemory(20), task, dataclasses.replace(cfg, micro_batch_size=8)
    ).fit()
    monkeypatch.setattr(Trainer, "_micro_batch_size", lambda self: "auto")
    objective = GradientsTakeMemory(20)
    fit = Trainer(probed, objective, task, dataclasses.replace(cfg, micro_batch_size="auto")).fit()
    # 16 fits the step's first batch, not its second once gradients exist; 8 fits both
    assert objective.sizes[:6] == [16, 16, 8, 8, 8, 8] and fit["micro_batch_size"] == 8
    # the failed try's gradients were dropped: the same weights as micro-batches of 8
    assert torch.equal(probed.lin.weight, fixed.lin.weight)


def test_samples_per_s_counts_the_steps_after_warm_up():
    assert [timed_warmup_steps(n) for n in (1, 2, 9, 30, 95, 10_000)] == [0, 1, 1, 3, 9, 10]
    task = prepare_task(wave_data(num_steps=300), 12, 3, ratios=(0.6, 0.2, 0.2))
    n = len(task.dataset("train"))
    cfg = TrainingConfig(epochs=3, batch_size=16, patience=None, device="cpu")
    trainer = Trainer(make_model(task), None, task, cfg)
    fit = trainer.fit()
    st, steps = trainer.state, 3 * math.ceil(n / 16)
    assert st.step == steps and st.samples == 3 * n
    sizes = [len(b) for _ in range(3) for b in process_batches(np.arange(n), 16)]
    assert st.timed_samples == sum(sizes[timed_warmup_steps(steps) :])
    assert 0 < st.timed_time_s < st.train_time_s
    assert fit["samples_per_s"] == st.timed_samples / st.timed_time_s


@pytest.mark.slow  # compiling takes 10-40 s on two CPU cores
def test_compiled_training_equals_eager_training():
    task = prepare_task(wave_data(num_steps=200), 12, 3, ratios=(0.6, 0.2, 0.2))
    weights = []
    for compile in (False, True):
        model = make_model(task)
        cfg = TrainingConfig(
            max_steps=4, lr=1e-2, batch_size=16, compile=compile, patience=None, device="cpu"
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            Trainer(model, None, task, cfg).fit()
        assert any("compile on the CPU" in str(w.message) for w in caught) == compile
        assert not hasattr(model, "_orig_mod")  # compiled in place: the same parameter names
        weights.append(model.lin.weight.detach().clone())
    torch.testing.assert_close(weights[1], weights[0], rtol=1e-5, atol=1e-6)


class ScalarReads(TorchDispatchMode):
    """Counts tensor -> Python number reads (``.item()``, ``float()``, ``.tolist()``), which
    wait for a GPU; the host step counters of a CPU AdamW are read by torch by design."""

    def __init__(self):
        super().__init__()
        self.reads: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append(args[0])
        return func(*args, **(kwargs or {}))


class LoggingRegression(Objective):
    """MAE that logs a Python float: one read of a tensor per batch."""

    def loss(self, model, batch):
        loss = build_objective("regression").forecast_loss(model(batch), batch)
        return loss, {"mae": loss.item()}


def scalar_reads_per_step(trainer: Trainer) -> list[int]:
    """Tensor reads in each optimizer step of ``trainer.fit()``, torch's own AdamW step
    counters left out (the first step also covers the set-up; evaluation follows the last)."""
    mode, reads = ScalarReads(), []

    def count(step: int) -> None:
        counters = [s["step"] for s in trainer._stepper.state.values()]
        reads.append(sum(not any(t is c for c in counters) for t in mode.reads))
        mode.reads.clear()

    trainer.on_step = count
    with mode:
        trainer.fit()
    return reads[1:]


@pytest.mark.parametrize(("objective", "reads"), [(None, 0), (LoggingRegression(), 8)])
def test_training_steps_read_no_tensor_values(objective, reads):
    # a logged float is read once per micro-batch: 2 batches of 4 micro-batches per step
    task = prepare_task(masked_wave_data(), 12, 3, ratios=(0.6, 0.2, 0.2))
    cfg = TrainingConfig(
        max_steps=5, batch_size=16, grad_accum=2, micro_batch_size=5, patience=None, device="cpu"
    )
    assert scalar_reads_per_step(Trainer(make_model(task), objective, task, cfg)) == [reads] * 4


@pytest.mark.parametrize(("dtype", "casts"), [("bfloat16", 0), ("float32", 16)])
def test_a_bf16_backbone_is_not_cast_in_bf16_training(dtype, casts):
    task = prepare_task(wave_data(num_steps=200, num_nodes=2), 12, 3, ratios=(0.6, 0.2, 0.2))
    torch.manual_seed(0)
    model = build_model(
        "gpt4ts",
        DataInfo.from_data(task.data, 12, 3),
        backbone={"source": "tiny-gpt2", "num_layers": 2, "dtype": dtype},
        patch_len=4,
        stride=2,
    )
    frozen = [p for p in model.parameters() if not p.requires_grad]

    class FrozenCasts(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and any(args[0] is p for p in frozen):
                self.count += 1
            return func(*args, **(kwargs or {}))

    mode, counts = FrozenCasts(), []
    cfg = TrainingConfig(
        max_steps=3, batch_size=8, mixed_precision="bf16", patience=None, device="cpu"
    )
    with mode:
        Trainer(model, None, task, cfg, on_step=lambda step: counts.append(mode.count)).fit()
    # under autocast each step casts the fp32 matrices of the 2 blocks (weights and biases
    # of 4 layers each); weights stored in bf16 are used as they are
    assert np.diff(counts).tolist() == [casts, casts]
    assert {p.dtype for p in frozen} == {getattr(torch, dtype)}


def test_adamw_is_fused_and_steps_like_the_reference():
    torch.manual_seed(0)
    nets = [nn.Linear(4, 3), nn.Linear(4, 3)]
    nets[1].load_state_dict(nets[0].state_dict())
    ours = make_optimizer(nets[0], lr=0.1, weight_decay=0.01)
    assert ours.defaults["fused"] is True and not ours.defaults["foreach"]
    assert [g["weight_decay"] for g in ours.param_groups] == [0.01, 0.0]  # matrices decay
    reference = torch.optim.AdamW(
        [
            {"params": [nets[1].weight], "weight_decay": 0.01},
            {"params": [nets[1].bias], "weight_decay": 0.0},
        ],
        lr=0.1,
        foreach=False,
    )
    x = torch.randn(8, 4)
    for _ in range(3):
        for net, opt in zip(nets, (ours, reference), strict=True):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_adamw_is_fused_on_cuda_unless_parameters_are_spread_over_devices():
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).cuda()
    assert make_optimizer(net, lr=0.1, weight_decay=0.0).defaults["fused"] is True
    net[1].cpu()
    optimizer = make_optimizer(net, lr=0.1, weight_decay=0.0)
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults["fused"]
