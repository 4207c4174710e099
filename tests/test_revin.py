import pytest
import torch

from llm_st.errors import DataError
from llm_st.tokens.revin import RevIN, instance_denorm, instance_norm


def series(batch=4, length=24, nodes=3, channels=2, seed=0):
    """[B, L, N, C] with a different level and scale per series."""
    gen = torch.Generator().manual_seed(seed)
    level = torch.randn(batch, 1, nodes, channels, generator=gen) * 5
    scale = torch.rand(batch, 1, nodes, channels, generator=gen) * 3 + 0.5
    return level + scale * torch.randn(batch, length, nodes, channels, generator=gen)


def test_round_trip_and_normalized_stats():
    x = series()
    revin = RevIN(2)
    normed = revin(x, "norm")
    torch.testing.assert_close(normed.mean(dim=1), torch.zeros(4, 3, 2), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        normed.std(dim=1, unbiased=False), torch.ones(4, 3, 2), rtol=0, atol=1e-4
    )
    torch.testing.assert_close(revin(normed, "denorm"), x, rtol=0, atol=1e-5)
    # the reference formula of Kim et al.: (x - mean) / sqrt(var + eps), stats over time
    reference = (x - x.mean(1, keepdim=True)) / torch.sqrt(
        x.var(1, keepdim=True, unbiased=False) + 1e-5
    )
    torch.testing.assert_close(normed, reference)


def test_denorm_broadcasts_over_a_forecast_of_other_length():
    x = series(length=24)
    normed, stats = instance_norm(x, dim=1)
    assert stats.mean.shape == stats.std.shape == (4, 1, 3, 2)
    forecast = torch.zeros(4, 6, 3, 2)  # predicting the mean in normalized space
    torch.testing.assert_close(instance_denorm(forecast, stats), stats.mean.expand(4, 6, 3, 2))


@pytest.mark.parametrize("placeholder", [float("nan"), -999.0])
def test_masked_statistics_use_observed_entries_only(placeholder):
    x = series(batch=2, length=10, nodes=2, channels=1)
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.6
    mask[:, 0] = True  # at least one observed step per series
    corrupted = torch.where(mask, x, torch.tensor(placeholder))
    normed, stats = instance_norm(corrupted, dim=1, mask=mask)
    for b in range(2):
        for n in range(2):
            observed = x[b, :, n, 0][mask[b, :, n, 0]]
            mean = observed.mean()
            std = torch.sqrt(observed.var(unbiased=False) + 1e-5)
            torch.testing.assert_close(stats.mean[b, 0, n, 0], mean)
            torch.testing.assert_close(stats.std[b, 0, n, 0], std)
            torch.testing.assert_close(
                normed[b, :, n, 0][mask[b, :, n, 0]], (observed - mean) / std
            )
    assert torch.all(normed[~mask] == 0)  # missing entries sit at the series mean, not NaN
    restored = instance_denorm(normed, stats)
    torch.testing.assert_close(restored[mask], x[mask], rtol=0, atol=1e-5)


def test_series_without_observations_gets_neutral_stats():
    x = torch.full((1, 5, 1, 1), float("nan"))
    normed, stats = instance_norm(x, dim=1, mask=torch.zeros(1, 5, 1, 1, dtype=torch.bool))
    assert stats.mean.item() == 0.0 and stats.std.item() == pytest.approx(1e-5**0.5)
    assert torch.all(normed == 0)


def test_module_mask_matches_functional():
    x = series()
    mask = torch.rand(x.shape[:-1] + (1,), generator=torch.Generator().manual_seed(2)) < 0.7
    expected, _ = instance_norm(x, dim=1, mask=mask)
    torch.testing.assert_close(RevIN(2)(x, "norm", mask=mask), expected)


def test_affine_is_trainable_and_still_round_trips():
    x = series()
    revin = RevIN(2)
    assert {name for name, p in revin.named_parameters() if p.requires_grad} == {"weight", "bias"}
    with torch.no_grad():
        revin.weight.copy_(torch.tensor([2.0, -0.5]))
        revin.bias.copy_(torch.tensor([1.0, 3.0]))
    normed = revin(x, "norm")
    plain, _ = instance_norm(x, dim=1)
    torch.testing.assert_close(normed, plain * torch.tensor([2.0, -0.5]) + torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(revin(normed, "denorm"), x, rtol=0, atol=1e-5)
    # gradients reach both affine parameters through norm and denorm
    revin(revin(x, "norm") * 1.5, "denorm").pow(2).mean().backward()
    assert revin.weight.grad.abs().min() > 0 and revin.bias.grad.abs().min() > 0
    assert RevIN(2, affine=False).state_dict() == {}


def test_three_dim_input_and_errors():
    x = series(nodes=1)[:, :, 0]  # [B, L, C]
    revin = RevIN(2)
    torch.testing.assert_close(revin(revin(x, "norm"), "denorm"), x, rtol=0, atol=1e-5)
    with pytest.raises(DataError, match="before norm"):
        RevIN(2)(x, "denorm")
    with pytest.raises(DataError, match=r"\(4, 24, 3\)"):
        RevIN(2)(series(channels=3)[:, :, 0], "norm")
