import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_st.errors import ConfigError, DataError
from llm_st.metrics import (
    MetricAccumulator,
    crps_from_samples,
    horizon_metrics,
    mae,
    masked_mae,
    masked_mape,
    masked_mse,
    masked_rmse,
    mse,
    quantiles_from_samples,
    weighted_quantile_loss,
)

PRED = np.array([[1.0, 2.0], [3.0, 4.0]])


def both(*arrays):
    """The arrays as numpy and as torch, to run one check on both libraries."""
    return [arrays, tuple(None if a is None else torch.as_tensor(a) for a in arrays)]


@pytest.mark.parametrize("lib", [0, 1])
def test_null_value_zero_is_missing(lib):
    pred, target = both(PRED, np.array([[2.0, 0.0], [1.0, 5.0]]))[lib]
    # observed errors |1-2|=1, |3-1|=2, |4-5|=1; the 0.0 target is skipped
    assert float(masked_mae(pred, target, null_value=0.0)) == pytest.approx(4 / 3)
    assert float(masked_mse(pred, target, null_value=0.0)) == pytest.approx((1 + 4 + 1) / 3)
    assert float(masked_rmse(pred, target, null_value=0.0)) == pytest.approx(math.sqrt(2))
    # 1/2 + 2/1 + 1/5 = 2.7 over 3 entries
    assert float(masked_mape(pred, target, null_value=0.0)) == pytest.approx(0.9)
    # without null_value the 0.0 target counts: |2 - 0| = 2 joins the mean
    assert float(masked_mae(pred, target)) == pytest.approx((1 + 2 + 2 + 1) / 4)


@pytest.mark.parametrize("lib", [0, 1])
def test_nan_targets_and_explicit_mask_are_skipped(lib):
    nan_target = np.array([[2.0, np.nan], [1.0, 5.0]])
    pred, target = both(PRED, nan_target)[lib]
    assert float(masked_mae(pred, target)) == pytest.approx(4 / 3)
    assert float(mae(pred, target)) == pytest.approx(4 / 3)
    assert float(mse(pred, target)) == pytest.approx(2.0)
    pred, target, mask = both(PRED, np.array([[2.0, 4.0], [1.0, 5.0]]), np.array([[1, 1], [0, 1]]))[
        lib
    ]
    # observed errors |1-2|=1, |2-4|=2, |4-5|=1
    assert float(masked_mae(pred, target, mask)) == pytest.approx(4 / 3)
    # a mask that broadcasts: keep row 1 only -> errors |3-1|=2, |4-5|=1
    row = np.array([[0], [1]])
    assert float(masked_mae(pred, target, both(row)[lib][0])) == pytest.approx(1.5)


def test_matches_basicts_reweighted_mask_formula():
    """sum(err * m) / sum(m) is BasicTS' mean(nan_to_num(err * m / mean(m)))."""
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 8, 12, 5, 1))
    target[rng.random(target.shape) < 0.3] = 0.0
    m = (target != 0).astype(float)
    m = m / m.mean()
    basicts = np.mean(np.nan_to_num(np.abs(pred - target) * m))
    assert masked_mae(pred, target, null_value=0.0) == pytest.approx(basicts, rel=1e-12)


def test_mape_near_zero_guard():
    pred, target = np.array([1.0, 1.0, -3.0]), np.array([1e-6, 2.0, -4.0])
    # |1e-6| <= 5e-5 is skipped; 1/2 and 1/4 remain
    assert masked_mape(pred, target) == pytest.approx(0.375)
    # eps=2.5 also skips |2|: only |-3 + 4| / 4 remains
    assert masked_mape(pred, target, eps=2.5) == pytest.approx(0.25)
    # with a tiny eps the 1e-6 target enters with (1 - 1e-6) / 1e-6
    assert masked_mape(pred, target, eps=1e-9) == pytest.approx((999999 + 0.5 + 0.25) / 3)


def test_rmse_is_root_of_global_mse_not_mean_of_batch_rmse():
    target_a, target_b = np.array([1.0, 1.0]), np.array([3.0, 3.0, 3.0, 3.0])
    pred_a, pred_b = np.zeros(2), np.zeros(4)
    batch_mean = (masked_rmse(pred_a, target_a) + masked_rmse(pred_b, target_b)) / 2
    assert batch_mean == pytest.approx((1 + 3) / 2)
    # global: (1 + 1 + 9 * 4) / 6 = 38 / 6
    both_rmse = masked_rmse(np.concatenate([pred_a, pred_b]), np.concatenate([target_a, target_b]))
    assert both_rmse == pytest.approx(math.sqrt(38 / 6))
    acc = MetricAccumulator(horizons=())  # one horizon step (axis 1)
    for p, t in [(pred_a, target_a), (pred_b, target_b)]:
        acc.update(p[:, None], t[:, None])
    assert acc.compute()["avg"]["rmse"] == pytest.approx(math.sqrt(38 / 6))


@pytest.mark.parametrize("lib", [0, 1])
def test_fully_masked_gives_nan(lib):
    pred, target, zero = both(PRED, np.zeros((2, 2)), np.zeros((2, 2)))[lib]
    for fn in (masked_mae, masked_mse, masked_rmse, masked_mape):
        assert math.isnan(float(fn(pred, target, null_value=0.0)))
        assert math.isnan(float(fn(pred, pred, zero)))
    nan = both(np.full((2, 2), np.nan))[lib][0]
    assert math.isnan(float(masked_mae(pred, nan)))


def test_torch_loss_gradient_ignores_missing_targets():
    target = torch.tensor([[2.0, np.nan], [1.0, 0.0]])
    # d/dpred of (|1-2| + |3-1|) / 2: sign(pred - target) / 2 on observed entries, 0 elsewhere
    # d/dpred of ((1-2)^2 + (3-1)^2) / 2: (pred - target) on observed entries
    # d/dpred of (|1-2|/2 + |3-1|/1) / 2: sign(pred - target) / (2 |target|)
    expected = {
        masked_mae: [[-0.5, 0.0], [0.5, 0.0]],
        masked_mse: [[-1.0, 0.0], [2.0, 0.0]],
        masked_mape: [[-0.25, 0.0], [0.5, 0.0]],
    }
    for fn, grad in expected.items():
        pred = torch.tensor(PRED, requires_grad=True)
        fn(pred, target, null_value=0.0).backward()
        assert torch.equal(pred.grad, torch.tensor(grad, dtype=torch.float64)), fn.__name__


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    null=st.sampled_from([None, 0.0]),
)
def test_numpy_and_torch_agree(seed, shape, null):
    rng = np.random.default_rng(seed)
    pred, target = rng.normal(size=(2, *shape))
    target[rng.random(shape) < 0.2] = 0.0
    target[rng.random(shape) < 0.1] = np.nan
    mask = rng.random(shape) < 0.7
    for fn in (masked_mae, masked_mse, masked_rmse, masked_mape):
        expected = fn(pred, target, mask, null)
        got = fn(*both(pred, target, mask)[1], null_value=null).item()
        assert got == pytest.approx(expected, rel=1e-12, nan_ok=True)
    samples = rng.normal(size=(7, *shape))
    assert crps_from_samples(torch.as_tensor(samples), torch.as_tensor(target), mask).item() == (
        pytest.approx(crps_from_samples(samples, target, mask), rel=1e-12, nan_ok=True)
    )


def test_float32_torch_matches_float64_numpy():
    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=(2, 16, 12, 20, 1)).astype(np.float32)
    got = masked_mae(torch.from_numpy(pred), torch.from_numpy(target))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(masked_mae(pred.astype(float), target), rel=1e-6)


def _grows_with_step(batch=2, steps=12, nodes=3):
    """Target 10 everywhere and prediction 10 + h at 1-based step h: error h, APE h / 10."""
    target = np.full((batch, steps, nodes, 1), 10.0)
    pred = target + np.arange(1, steps + 1)[None, :, None, None]
    return pred, target


def test_horizon_metrics_index_the_right_steps():
    pred, target = _grows_with_step()
    report = horizon_metrics(pred, target, horizons=(3, 6, 12, 24))
    assert list(report) == ["h3", "h6", "h12", "avg"]  # 24 > 12 steps is skipped
    for h in (3, 6, 12):
        assert report[f"h{h}"]["mae"] == pytest.approx(h)
        assert report[f"h{h}"]["rmse"] == pytest.approx(h)
        assert report[f"h{h}"]["mape"] == pytest.approx(h / 10)
    # mean of 1..12 = 6.5; mean of squares = 650 / 12
    assert report["avg"]["mae"] == pytest.approx(6.5)
    assert report["avg"]["mse"] == pytest.approx(650 / 12)
    assert report["avg"]["rmse"] == pytest.approx(math.sqrt(650 / 12))
    assert report["avg"]["mape"] == pytest.approx(0.65)
    moved = horizon_metrics(
        torch.as_tensor(np.moveaxis(pred, 1, -1)), np.moveaxis(target, 1, -1), axis=-1
    )
    assert list(moved) == ["h3", "h6", "h12", "avg"]
    for key in moved:
        assert moved[key] == pytest.approx(report[key], rel=1e-12)
    short = horizon_metrics(pred[:, :4], target[:, :4])
    assert list(short) == ["h3", "avg"] and short["avg"]["mae"] == pytest.approx(2.5)


def test_horizon_metrics_masked_step_is_nan():
    pred, target = _grows_with_step()
    mask = np.ones_like(target)
    mask[:, 5] = 0  # step 6 fully missing
    report = horizon_metrics(pred, target, mask)
    assert math.isnan(report["h6"]["mae"]) and math.isnan(report["h6"]["mape"])
    assert report["h3"]["mae"] == pytest.approx(3)
    assert report["avg"]["mae"] == pytest.approx((78 - 6) / 11)


def _random_split(seed=0, sizes=(1, 4, 2, 7)):
    rng = np.random.default_rng(seed)
    shape = (sum(sizes), 12, 5, 2)
    pred, target = rng.normal(2.0, 1.0, size=(2, *shape))
    target[rng.random(shape) < 0.2] = 0.0
    target[rng.random(shape) < 0.05] = np.nan
    mask = rng.random(shape[:-1] + (1,)) < 0.9
    bounds = np.cumsum((0,) + sizes)
    batches = [
        (pred[a:b], target[a:b], mask[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return (pred, target, mask), batches


def test_accumulator_equals_one_shot_on_uneven_batches():
    whole, batches = _random_split()
    expected = horizon_metrics(*whole, null_value=0.0, horizons=(1, 3, 12))
    acc = MetricAccumulator(null_value=0.0, horizons=(1, 3, 12))
    for i, (p, t, m) in enumerate(batches):
        if i % 2:  # mix libraries: torch float32 batches beside numpy float64
            p, t, m = torch.as_tensor(p), torch.as_tensor(t), torch.as_tensor(m)
        acc.update(p, t, m)
    got = acc.compute()
    assert got.keys() == expected.keys()
    for key in expected:
        for name in ("mae", "mse", "rmse", "mape"):
            assert got[key][name] == pytest.approx(expected[key][name], rel=1e-12)
    assert expected["avg"]["mae"] == pytest.approx(
        masked_mae(*whole[:2], whole[2], null_value=0.0), rel=1e-12
    )
    assert expected["avg"]["mape"] == pytest.approx(
        masked_mape(*whole[:2], whole[2], null_value=0.0), rel=1e-12
    )


def test_accumulator_merge_reset_and_errors():
    whole, batches = _random_split(seed=1)
    first, second = MetricAccumulator(), MetricAccumulator()
    for p, t, m in batches[:2]:
        first.update(p, t, m)
    for p, t, m in batches[2:]:
        second.update(p, t, m)
    first.merge(second)
    assert first.compute()["avg"]["rmse"] == pytest.approx(
        masked_rmse(*whole[:2], whole[2]), rel=1e-12
    )
    with pytest.raises(DataError, match="6 horizon steps"):
        first.update(*(a[:, :6] for a in batches[0]))
    first.reset()
    with pytest.raises(DataError, match="no batches"):
        first.compute()
    with pytest.raises(ConfigError, match=r"\[0\]"):
        MetricAccumulator(horizons=(0, 3))


def test_accumulator_warns_about_nan_predictions():
    pred, target = _grows_with_step()
    pred[0, 0, 0, 0] = np.nan
    acc = MetricAccumulator()
    acc.update(pred, target)
    with pytest.warns(UserWarning, match="1 predictions"):
        report = acc.compute()
    # the NaN counts as zero error but stays in the denominator (BasicTS convention)
    assert report["avg"]["mae"] == pytest.approx((78 * 6 - 1) / 72)


def _crps_brute_force(samples, target):
    """Per-entry CRPS with the O(S^2) pair sum."""
    spread = np.abs(samples - target).mean(axis=0)
    pairs = np.abs(samples[:, None] - samples[None, :]).mean(axis=(0, 1))
    return spread - 0.5 * pairs


def test_crps_matches_brute_force_with_mask_and_sample_axis():
    rng = np.random.default_rng(3)
    samples = rng.gamma(2.0, size=(31, 4, 5))
    target = rng.normal(size=(4, 5))
    mask = rng.random((4, 5)) < 0.6
    per_entry = _crps_brute_force(samples, target)
    assert crps_from_samples(samples, target) == pytest.approx(per_entry.mean(), rel=1e-12)
    assert crps_from_samples(samples, target, mask) == pytest.approx(
        per_entry[mask].mean(), rel=1e-12
    )
    moved = torch.as_tensor(np.moveaxis(samples, 0, -1))
    assert crps_from_samples(moved, torch.as_tensor(target), sample_axis=-1).item() == (
        pytest.approx(per_entry.mean(), rel=1e-12)
    )


def test_crps_of_point_mass_is_mae():
    rng = np.random.default_rng(4)
    point, target = rng.normal(size=(2, 3, 12, 4))
    samples = np.broadcast_to(point, (10, *point.shape))
    target[0, 0, 0] = 0.0
    assert crps_from_samples(samples, target, null_value=0.0) == pytest.approx(
        masked_mae(point, target, null_value=0.0), rel=1e-12
    )


def test_crps_of_gaussian_samples_matches_closed_form():
    mu, sigma = 1.0, 2.0
    targets = np.linspace(-4.0, 6.0, 40)
    samples = np.random.default_rng(5).normal(mu, sigma, size=(20_000, len(targets)))
    z = (targets - mu) / sigma
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    closed = sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))
    assert crps_from_samples(samples, targets) == pytest.approx(closed.mean(), abs=0.01)


def test_weighted_quantile_loss_by_hand():
    levels = (0.1, 0.5, 0.9)
    preds = np.array([[1.0, 2.0, 4.0], [3.0, 5.0, 6.0]])  # [2 targets, 3 levels]
    target = np.array([2.0, 4.0])
    # pinball sums: q=0.1: 0.1*1 + 0.1*1 = 0.2; q=0.5: 0 + 0.5*1 = 0.5; q=0.9: 0.1*2 + 0.1*2 = 0.4
    # sum |y| = 6 -> (2*0.2/6 + 2*0.5/6 + 2*0.4/6) / 3 = 2.2 / 18
    assert weighted_quantile_loss(preds, target, levels) == pytest.approx(2.2 / 18)
    # mask out y=4: pinball 0.1, 0, 0.2; sum |y| = 2 -> (0.2/2 + 0 + 0.4/2) / 3 = 0.1
    assert weighted_quantile_loss(preds, target, levels, mask=np.array([1, 0])) == (
        pytest.approx(0.1)
    )
    got = weighted_quantile_loss(
        torch.as_tensor(preds.T), torch.as_tensor(target), levels, quantile_axis=0
    )
    assert got.item() == pytest.approx(2.2 / 18)
    with pytest.raises(DataError, match="3 levels"):
        weighted_quantile_loss(preds, target, (0.1, 0.9))
    with pytest.raises(ConfigError, match="in \\(0, 1\\)"):
        weighted_quantile_loss(preds, target, (0.0, 0.5, 1.0))


def test_median_wql_is_weighted_absolute_error():
    rng = np.random.default_rng(6)
    point, target = rng.normal(size=(2, 50))
    expected = np.abs(point - target).sum() / np.abs(target).sum()
    assert weighted_quantile_loss(point[:, None], target, [0.5]) == pytest.approx(expected)


def test_quantiles_from_samples_match_numpy_quantile():
    rng = np.random.default_rng(7)
    samples = rng.normal(size=(9, 3, 4))
    levels = [0.05, 0.1, 0.5, 0.77, 0.95]
    expected = np.moveaxis(np.quantile(samples, levels, axis=0), 0, -1)
    np.testing.assert_allclose(quantiles_from_samples(samples, levels), expected, rtol=1e-12)
    got = quantiles_from_samples(torch.as_tensor(np.moveaxis(samples, 0, 1)), levels, 1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_scorer_scores_tensors_with_a_graph_or_in_bfloat16_as_their_arrays():
    # the engine and the pipeline hand the scorer tensors (on the GPU there); they are
    # scored as the same numbers in float64, whatever their dtype or autograd state
    from llm_st.data.synthetic import synthetic_traffic
    from llm_st.data.task import prepare_task
    from llm_st.evaluation.evaluate import Scorer

    task = prepare_task(synthetic_traffic(num_nodes=4, num_days=2, seed=0), 12, 6)
    batch = task.dataset("test")[list(range(8))]
    g = torch.Generator().manual_seed(0)
    pred = batch["y"] + torch.randn(batch["y"].shape, generator=g)
    samples = (pred[None] + torch.randn((5, *pred.shape), generator=g)).bfloat16()
    arrays, tensors = Scorer(task), Scorer(task)
    arrays.update(
        pred.double().numpy(),
        batch["y"].numpy(),
        batch["y_mask"].numpy(),
        samples=samples.double().numpy(),
    )
    tensors.update(
        pred.requires_grad_(), batch["y"], batch["y_mask"], samples=samples.requires_grad_()
    )
    expected, got = arrays.result(), tensors.result()
    assert got["crps"] == pytest.approx(expected["crps"], rel=1e-9) and expected["crps"] > 0
    for key, values in expected["metrics"].items():
        assert got["metrics"][key] == pytest.approx(values, rel=1e-9)
    assert got["num_windows"] == expected["num_windows"] == 8
