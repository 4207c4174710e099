"""The protocols beyond forecasting (llm_st.bench.protocols): distribution shift trains
before the drift and tests after it; imputation scores the hidden entries only, with masks
that hide observed entries at the rate; anomaly labels are the generator's incidents and
the detection metrics are right; a smoke-sized run of each protocol writes cells whose
results rows are their metrics files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_st.bench.plan import Plan
from llm_st.bench.protocols import drift_onset, shift_borders, spec_with
from llm_st.bench.runner import run_plan
from llm_st.data.synthetic import _timeline, incident_labels, synthetic_traffic
from llm_st.engine import build_task
from llm_st.evaluation.anomaly import (
    choose_threshold,
    detection_metrics,
    reconstruction_errors,
    window_labels,
    window_scores,
)
from llm_st.evaluation.imputation import (
    LinearInterpolation,
    block_mask,
    evaluate_imputation,
    random_mask,
    score_imputation,
    tile_windows,
    visible_batch,
    window_rows,
)
from llm_st.metrics import best_f1_threshold, precision_recall_f1, roc_auc
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model
from llm_st.objectives import build_objective

SMOKE = Path(__file__).resolve().parents[1] / "alignment" / "benchmarks" / "smoke.yaml"
NEW = ("shift", "imputation", "anomaly")


# ------------------------------------------------------------------ the generator
def test_traffic_values_are_unchanged_and_incidents_recorded():
    data = synthetic_traffic(
        num_nodes=12, num_days=3, interval_minutes=30, seed=5, incident_rate=0.5, drift=0.4
    )
    # the values and mask of this seed before the incidents were recorded in the extras
    digest = hashlib.sha256(np.packbits(data.mask).tobytes()).hexdigest()
    assert digest == "dd17ffb270baa0d9defe46789a0361c871eef10eac138d3461da91c2f0be0ed2"
    assert data.values.shape == (144, 12, 1)
    np.testing.assert_allclose(data.values.astype(np.float64).sum(), 95363.01738739014, rtol=1e-6)
    at = [(0, 0), (10, 3), (50, 7), (100, 11), (143, 5)]
    expected = [64.73370361328125, 58.21357727050781, 64.02930450439453, 65.97318267822266]
    expected += [57.69204330444336]
    np.testing.assert_allclose([data.values[t, n, 0] for t, n in at], expected, rtol=1e-6)

    incidents = data.extras["synthetic"]["incidents"]
    assert set(incidents) == {"node", "start", "length", "size"}
    assert len(incidents["node"]) > 10 and json.loads(json.dumps(incidents)) == incidents
    labels = incident_labels(data)
    manual = np.zeros((144, 12), bool)
    for node, start, length in zip(
        incidents["node"], incidents["start"], incidents["length"], strict=True
    ):
        assert 1 <= length and start + length <= 144
        manual[start : start + length, node] = True
    np.testing.assert_array_equal(labels, manual)


# ------------------------------------------------------------------ metrics
def test_auc_and_f1_of_known_scores():
    rng = np.random.default_rng(0)
    labels = rng.random(20_000) < 0.1
    assert roc_auc(labels.astype(float), labels) == 1.0
    assert roc_auc(-labels.astype(float), labels) == 0.0
    assert abs(roc_auc(rng.random(20_000), labels) - 0.5) < 0.02
    scores = labels + rng.normal(0, 0.8, labels.shape)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert roc_auc(scores, labels) == pytest.approx(sklearn.roc_auc_score(labels, scores))
    ties = np.round(scores)  # many tied scores: average ranks
    assert roc_auc(ties, labels) == pytest.approx(sklearn.roc_auc_score(labels, ties))
    threshold, f1 = best_f1_threshold(scores, labels)
    assert f1 == pytest.approx(precision_recall_f1(scores >= threshold, labels)["f1"])
    assert f1 >= max(precision_recall_f1(scores >= t, labels)["f1"] for t in np.linspace(-2, 3, 51))
    assert precision_recall_f1([True, False, True], [True, True, False]) == {
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
    }
    assert np.isnan(roc_auc([1.0, 2.0], [True, True]))


def test_anomaly_labels_are_the_generators_incidents_in_the_target_rows():
    data = synthetic_traffic(num_nodes=8, num_days=4, interval_minutes=60, seed=2,
                             incident_rate=1.0)  # fmt: skip
    rows = incident_labels(data)
    starts, history, horizon = np.arange(0, 96 - 9 + 1), 6, 3
    labels = window_labels(rows, starts, history, horizon)
    inc = data.extras["synthetic"]["incidents"]
    expected = np.zeros_like(labels)
    for node, start, length in zip(inc["node"], inc["start"], inc["length"], strict=True):
        for w, s in enumerate(starts):  # an incident overlaps the target rows
            if start < s + history + horizon and start + length > s + history:
                expected[w, node] = True
    np.testing.assert_array_equal(labels, expected)
    assert 0 < labels.mean() < 0.5
    # the threshold comes from the validation scores; without anomalies there, the
    # training rate's quantile
    val_scores = np.array([0.1, 0.9, 0.2, 0.8, np.nan])
    chosen = choose_threshold(val_scores, np.array([0, 1, 0, 1, 1], bool), 0.3)
    assert chosen == {"threshold": 0.8, "source": "val_best_f1", "val_f1": 1.0}
    fallback = choose_threshold(val_scores, np.zeros(5, bool), 0.5)
    assert fallback["source"] == "train_rate_quantile" and fallback["threshold"] == 0.5
    metrics = detection_metrics(np.array([0.1, 0.9, np.nan]), np.array([0, 1, 1], bool), 0.8)
    assert metrics == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "auc": 1.0}


def test_reconstruction_errors_hide_every_row_once_and_read_only_the_rest():
    task = imputation_task()  # history 6: blocks of one row in the middle of 6-row windows
    start, stop = task.split.test
    calls = []

    def echo(batch):  # returns its input: hidden entries come back as 0
        calls.append(batch)
        return batch["x"]

    errors = reconstruction_errors(echo, task, (start, stop), batch_size=4)
    assert errors.shape == (stop - start, 8)
    scaled = task.scaler.transform(task.data.values[start:stop, :, 0].astype(np.float64))
    observed = task.data.mask[start:stop, :, 0]
    np.testing.assert_allclose(errors[observed], np.abs(scaled[observed]), rtol=1e-5)
    assert np.isnan(errors[~observed]).all()
    hidden_rows = sum(int((~b["x_mask"].any(dim=(2, 3))).sum()) for b in calls)
    assert hidden_rows >= stop - start  # every row hidden once (plus missing rows)
    for batch in calls:  # a hidden row reaches the reconstruction as nothing
        assert (batch["x"][~batch["x_mask"]] == 0).all()
    starts = task.index("test").starts
    scores = window_scores(errors, start, starts, task.history, task.horizon)
    w = 2
    target = errors[starts[w] + task.history - start : starts[w] + 9 - start]
    np.testing.assert_allclose(scores[w], np.nanmean(target, axis=0))


# ------------------------------------------------------------------ imputation
def imputation_task():
    plan = Plan.load(SMOKE)
    cell = next(c for c in plan.cells() if c.protocol == "imputation")
    return build_task(plan.protocol("imputation").recipe(cell).data)


def test_masks_hide_observed_entries_at_the_rate():
    rng = np.random.default_rng(0)
    observed = rng.random((50, 12, 20, 1)) > 0.1
    for rate in (0.125, 0.25, 0.375, 0.5):
        hidden = random_mask(observed, rate, np.random.default_rng(1))
        assert not (hidden & ~observed).any()
        n = observed.sum()
        assert abs(hidden.sum() / n - rate) < 4 * np.sqrt(rate * (1 - rate) / n)
    block = block_mask(observed, 0.25, 4, np.random.default_rng(2))
    assert not (block & ~observed).any()
    full = block_mask(np.ones_like(observed), 0.25, 4, np.random.default_rng(2))
    np.testing.assert_array_equal(block, full & observed)  # the same draw, observed only
    for w in range(50):
        nodes = np.flatnonzero(full[w].any(axis=(0, 2)))
        steps = np.flatnonzero(full[w].any(axis=(1, 2)))
        assert len(nodes) == 5 and len(steps) == 4 and np.ptp(steps) == 3
        assert full[w][np.ix_(steps, nodes)].all() and full[w].sum() == 20


def test_imputation_scores_the_hidden_entries_only():
    truth = np.random.default_rng(0).normal(50, 10, (4, 6, 8, 1))
    hidden = random_mask(np.ones(truth.shape, bool), 0.25, np.random.default_rng(1))
    assert score_imputation(truth, truth, hidden)["mae"] == 0.0
    noise = np.random.default_rng(2).normal(0, 3, truth.shape)
    noisy = np.where(hidden, truth + noise, truth)
    score = score_imputation(noisy, truth, hidden)
    assert score["mae"] == pytest.approx(np.abs(noise[hidden]).mean())
    assert score["mse"] == pytest.approx((noise[hidden] ** 2).mean())
    assert score["count"] == hidden.sum()
    # the truth at the visible entries earns nothing: garbage where hidden is scored
    garbage = np.where(hidden, 0.0, truth)
    assert score_imputation(garbage, truth, hidden)["mae"] == pytest.approx(
        np.abs(truth[hidden]).mean()
    )

    task = imputation_task()
    starts = tile_windows(task.split.test, task.history)
    rows = window_rows(starts, task.history)
    hidden = random_mask(task.data.mask[rows], 0.25, np.random.default_rng(3))
    seen = []

    def oracle(batch, noise=0.0):  # reads the truth from the data, not from the batch
        seen.append(batch)
        r = batch["start"].numpy()[:, None] + np.arange(task.history)
        scaled = task.scaler.transform(task.data.values[r].astype(np.float64))
        return scaled + noise * np.where(hidden[: len(r)], 1.0, 0.0)

    result = evaluate_imputation(oracle, task, starts, task.history, hidden)
    assert result["metrics"]["avg"]["mae"] == pytest.approx(0.0, abs=1e-4)
    assert result["num_hidden"] == hidden.sum() and result["num_windows"] == len(starts)
    # the imputer saw no hidden value
    x, visible = seen[0]["x"].numpy(), seen[0]["x_mask"].numpy()
    assert not visible[hidden].any() and (x[hidden] == 0).all()
    shifted = evaluate_imputation(lambda b: oracle(b, 1.0), task, starts, task.history, hidden)
    scale = float(task.scaler.scale.ravel()[0])  # one z-score: a shift of 1 is `scale` mph
    assert shifted["metrics"]["avg"]["mae"] == pytest.approx(scale, rel=1e-4)
    # linear interpolation recovers a linear series from its visible entries exactly
    line = torch.arange(6.0).view(1, 6, 1, 1).repeat(1, 1, 2, 1)
    keep = torch.tensor([1, 0, 0, 1, 0, 1], dtype=torch.bool).view(1, 6, 1, 1).repeat(1, 1, 2, 1)
    keep[0, :, 1] = False  # a sensor with nothing visible gets the fallback
    out = LinearInterpolation(np.array([[7.0], [9.0]]))({"x": line * keep, "x_mask": keep})
    np.testing.assert_allclose(out[0, :, 0, 0], np.arange(6.0))
    np.testing.assert_allclose(out[0, :, 1, 0], 9.0)
    assert visible_batch(task, rows[:2], hidden[:2])["x"].shape == (2, task.history, 8, 1)


def test_masked_objective_reconstructs_from_visible_entries_only():
    info = DataInfo(3, 1, 12, 4, steps_per_day=24)
    model = build_model("patchtst", info, patch_len=4, stride=2, d_model=16, n_heads=4,
                        n_layers=1, d_ff=32)  # fmt: skip
    objective = build_objective("masked", info, model, style="patchtst", unit="point",
                                mask_ratio=0.25)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    batch = {"x": torch.randn(4, 12, 3, 1, generator=g),
             "x_mask": torch.ones(4, 12, 3, 1, dtype=torch.bool)}  # fmt: skip
    loss, logs = objective.loss(model, batch)
    loss.backward()
    assert model.patch_embedding.weight.grad is not None and objective.head.weight.grad is not None
    assert 0.1 < float(logs["hidden_ratio"]) < 0.4
    model.eval()
    hide = torch.rand(batch["x"].shape, generator=g) < 0.3
    seen = {"x": torch.where(hide, 0.0, batch["x"]), "x_mask": ~hide}
    recon = objective.reconstruct(model, seen)
    assert recon.shape == batch["x"].shape
    other = {**seen, "x": torch.where(hide, 1e3, batch["x"])}  # hidden values are not read
    torch.testing.assert_close(objective.reconstruct(model, other), recon)
    with pytest.raises(Exception, match="patchtst"):
        build_objective("masked", info, model, style="step", unit="point")


# ------------------------------------------------------------------ shift
def test_shift_trains_before_the_drift_and_tests_after_it():
    assert spec_with("synthetic-traffic:seed=1,drift=0.2", drift=0.5, drift_start=0.6) == (
        "synthetic-traffic:seed=1,drift=0.5,drift_start=0.6"
    )
    plan = Plan.load(SMOKE)
    cells = [c for c in plan.cells() if c.protocol == "shift"]
    assert {c.protocol_params["drift"] for c in cells} == {0.0, 0.5}
    tasks = {}
    for cell in cells:
        recipe = plan.protocol("shift").recipe(cell)
        task = build_task(recipe.data)
        T = task.data.num_steps
        start = task.data.extras["synthetic"]["drift_start"]
        assert task.data.extras["synthetic"]["drift"] == cell.protocol_params["drift"]
        onset = drift_onset(T, start)
        ramp = _timeline(4, 60, "2024-01-01", 0.5, start).ramp
        assert ramp[:onset].max() == 0 and ramp[onset] > 0  # the first drifted row
        assert task.split.train[1] <= task.split.val[1] == onset  # train, val end before it
        assert task.split.test == (onset, T)  # every test row lies after it
        test_targets = task.index("test").starts + task.history
        assert test_targets.min() == onset
        val_targets = task.index("val").starts + task.history + task.horizon - 1
        assert val_targets.max() < onset
        tasks[cell.protocol_params["drift"]] = task
    assert shift_borders(96, 0.7, 0.125) == [60, 8, 28]
    # the drift changes nothing before its onset: the cells' training data are the same
    a, b = tasks[0.0].data, tasks[0.5].data
    onset = tasks[0.0].split.test[0]
    np.testing.assert_array_equal(a.values[:onset], b.values[:onset])
    assert not np.array_equal(a.values[onset:], b.values[onset:])


# ------------------------------------------------------------------ the smoke plan
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The shipped smoke plan's shift, imputation and anomaly cells, run once."""
    out = tmp_path_factory.mktemp("smoke-protocols")
    plan = Plan.load(SMOKE)
    table = run_plan(plan, out, only=[f"*_{name}*" for name in NEW], progress=False)
    return plan, out, table


def test_smoke_cells_are_scored_by_their_metrics_files(smoke):
    plan, out, table = smoke
    assert set(table.status) == {"done"}, table[table.status != "done"].error.tolist()
    assert table.groupby("protocol").cell_id.nunique().to_dict() == {
        "shift": 8,
        "imputation": 8,
        "anomaly": 3,
    }
    metrics = {"shift": {"mae", "mse", "rmse", "mape"}, "imputation": {"mae", "mse"}}
    metrics["anomaly"] = {"precision", "recall", "f1", "auc"}
    for row in table.itertuples():
        scores = json.loads((out / row.run_dir / row.protocol / "metrics.json").read_text())
        assert row.value == pytest.approx(scores["test"][row.horizon_step][row.metric], nan_ok=True)
        assert set(scores["test"]["avg"]) == metrics[row.protocol]
    assert set(table.loc[table.protocol == "shift", "protocol_param"]) == {"drift=0", "drift=0.5"}
    assert set(table.loc[table.protocol == "imputation", "protocol_param"]) == {"0.25", "block"}
    assert set(table.loc[table.protocol == "imputation", "horizon_step"]) == {"avg"}
    assert set(table.loc[table.protocol == "anomaly", "horizon_step"]) == {"avg"}


def test_smoke_shift_imputation_and_anomaly_facts(smoke):
    plan, out, table = smoke

    def facts(protocol, method, param):
        rows = table[
            (table.protocol == protocol) & (table.method == method)
            & (table.protocol_param == param)
        ]  # fmt: skip
        return json.loads((out / rows.run_dir.iloc[0] / protocol / "metrics.json").read_text())

    for drift in ("drift=0", "drift=0.5"):
        diffusion = facts("shift", "patchtst+diffusion", drift)
        assert diffusion["point"] == "median of samples" and diffusion["crps"] > 0
        masked = facts("shift", "patchtst+masked", drift)
        assert masked["pretrain"] == "masked" and masked["objective"] == "regression"
        assert masked["split"]["test"] == [68, 96] and masked["split"]["val"] == [60, 68]
    # every method of a seed imputes the same hidden entries
    for param, rate in (("0.25", 0.25), ("block", None)):
        runs = [
            facts("imputation", m, param)
            for m in ("interp", "historical_average", "patchtst-masked", "gpt4ts-imputation")
        ]
        assert len({r["num_hidden"] for r in runs}) == 1
        assert [r["imputer"] for r in runs] == ["linear", "historical_average", "masked", "masked"]
        if rate is not None:
            assert abs(runs[0]["hidden_fraction"] - rate) < 0.1
    assert facts("imputation", "gpt4ts-imputation", "0.25")["train_mask_ratio"] == 0.25
    assert facts("imputation", "gpt4ts-imputation", "block")["train_mask_ratio"] == 0.125
    assert facts("imputation", "patchtst-masked", "0.25")["train_mask_ratio"] == 0.5
    stid = facts("anomaly", "stid", "forecast")
    assert stid["num_anomalous"] > 0 and stid["source"] == "val_best_f1"
    recon = facts("anomaly", "patchtst-masked", "reconstruction")
    assert recon["num_scored"] == stid["num_scored"]
