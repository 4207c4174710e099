"""Self-supervised and probabilistic objectives: masked patches, contrastive views, diffusion."""

import math

import numpy as np
import pytest
import torch

from llm_st import ConfigError
from llm_st.metrics import crps_from_samples
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model
from llm_st.objectives import build_objective
from llm_st.objectives.contrastive import (
    crop_resize,
    info_nce,
    jitter,
    node_dropout,
    scaling,
    temporal_crop,
)
from llm_st.objectives.diffusion import beta_schedule, q_sample
from llm_st.objectives.masked import masked_patch_loss, num_masked, random_patch_mask

INFO = DataInfo(3, 2, 16, 4, steps_per_day=24)
PATCH_MODELS = {
    "patchtst": dict(patch_len=4, stride=4, d_model=16, n_heads=4, n_layers=2, d_ff=32),
    "pattn": dict(patch_len=4, stride=4, d_model=16, n_heads=4),
}


def make_batch(B=4, info=INFO, seed=0):
    g = torch.Generator().manual_seed(seed)
    L, H, N, C = info.history, info.horizon, info.num_nodes, info.num_channels
    return {
        "x": torch.randn(B, L, N, C, generator=g),
        "x_mask": torch.ones(B, L, N, C, dtype=torch.bool),
        "x_time": torch.rand(B, L, 2, generator=g) * torch.tensor([1.0, 0.0]),
        "y_time": torch.zeros(B, H, 2),
        "y_scaled": torch.randn(B, H, N, C, generator=g),
        "y_mask": torch.ones(B, H, N, C, dtype=torch.bool),
    }


def grads_reach(module):
    return [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]


# ---- masked modelling ------------------------------------------------------------------


def test_random_patch_mask_hides_the_ratio_uniformly():
    assert num_masked(5, 0.75) == 4 and num_masked(2, 0.75) == 1 and num_masked(10, 0.01) == 1
    g = torch.Generator().manual_seed(0)
    hidden = random_patch_mask(4000, 8, 0.75, generator=g)
    assert (hidden.sum(1) == 6).all()
    # each position hidden with probability 6/8
    np.testing.assert_allclose(hidden.float().mean(0).numpy(), 0.75, atol=0.03)


def test_masked_loss_counts_hidden_observed_entries_only():
    g = torch.Generator().manual_seed(0)
    recon, target = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    hidden = torch.tensor([[True, False, True], [False, False, True]])
    observed = torch.ones(2, 3, 4, dtype=torch.bool)
    observed[0, 0, :2] = False
    loss = masked_patch_loss(recon, target, hidden, observed)
    sq = (recon - target) ** 2
    expected = (sq[0, 0, 2:].sum() + sq[0, 2].sum() + sq[1, 2].sum()) / (2 + 4 + 4)
    torch.testing.assert_close(loss, expected)
    # visible patches and unobserved entries may hold anything
    changed = target.clone()
    changed[~hidden] += 100.0
    changed[0, 0, :2] += 100.0
    torch.testing.assert_close(masked_patch_loss(recon, changed, hidden, observed), loss)
    changed[1, 2, 3] += 1.0
    assert masked_patch_loss(recon, changed, hidden, observed) > loss


@pytest.mark.parametrize("style", ["step", "patchtst"])
@pytest.mark.parametrize("name", list(PATCH_MODELS))
def test_masked_objective_trains_model_encoder_and_own_head(name, style):
    torch.manual_seed(0)
    model = build_model(name, INFO, **PATCH_MODELS[name])
    objective = build_objective("masked", INFO, model, style=style)
    loss, logs = objective.loss(model, make_batch())
    assert torch.isfinite(loss) and loss > 0
    # 16 steps, patches of 4 every 4 plus one from the replicate padding: 5, of which 4 hidden
    assert model.num_patches == 5
    assert float(logs["hidden_ratio"]) == pytest.approx(0.8)
    loss.backward()
    assert not grads_reach(objective)
    # the patch embedding, positions, RevIN and encoder are trained; only the forecasting
    # head, which masked modelling does not use, gets no gradient
    unused = set(grads_reach(model))
    assert unused <= {"head.1.weight", "head.1.bias"}, unused


def test_masked_objective_ignores_unobserved_history_values():
    model = build_model("patchtst", INFO, **PATCH_MODELS["patchtst"]).eval()
    objective = build_objective("masked", INFO, model).eval()
    batch = make_batch()
    batch["x_mask"][0, 3:7, 1, 0] = False
    other = dict(batch, x=batch["x"].clone())
    other["x"][0, 3:7, 1, 0] = 1e3  # garbage where nothing was observed
    torch.manual_seed(5)
    a, _ = objective.loss(model, batch)
    torch.manual_seed(5)
    b, _ = objective.loss(model, other)
    torch.testing.assert_close(a, b)


def test_masked_objective_rejects_models_without_patch_encoder():
    with pytest.raises(
        ConfigError, match="patch encoder.*patchtst.*pattn|patch encoder.*pattn.*patchtst"
    ):
        build_objective("masked", INFO, build_model("dlinear", INFO))
    one_patch = build_model("patchtst", INFO, patch_len=16, stride=16, padding="none")
    with pytest.raises(ConfigError, match=">= 2 patches"):
        build_objective("masked", INFO, one_patch)


# ---- contrastive -----------------------------------------------------------------------


def test_info_nce_matches_a_hand_computed_2x2_example():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[2.0, 0.0], [0.6, 0.8]])  # norms 2 and 1; cosines [[1, .6], [0, .8]]
    tau = 0.5

    def ce(logits, target):
        return -logits[target] + math.log(sum(math.exp(v) for v in logits))

    rows = ce([1 / tau, 0.6 / tau], 0) + ce([0.0, 0.8 / tau], 1)
    cols = ce([1 / tau, 0.0], 0) + ce([0.6 / tau, 0.8 / tau], 1)
    expected = (rows / 2 + cols / 2) / 2
    assert info_nce(z1, z2, tau).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_spreads_the_target_over_a_group():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[2.0, 0.0], [0.6, 0.8]])  # cosines [[1, .6], [0, .8]]
    tau = 0.5

    def ce(logits, target):  # cross-entropy against the probabilities ``target``
        log_z = math.log(sum(math.exp(v) for v in logits))
        return -sum(t * (v - log_z) for t, v in zip(target, logits, strict=True))

    # both pairs in one group (e.g. identical descriptions): each row's target is [1/2, 1/2]
    half = [0.5, 0.5]
    rows = ce([1 / tau, 0.6 / tau], half) + ce([0.0, 0.8 / tau], half)
    cols = ce([1 / tau, 0.0], half) + ce([0.6 / tau, 0.8 / tau], half)
    expected = (rows / 2 + cols / 2) / 2
    assert info_nce(z1, z2, tau, torch.tensor([3, 3])).item() == pytest.approx(expected, rel=1e-6)
    # one group per pair is the plain InfoNCE
    plain = info_nce(z1, z2, tau).item()
    assert info_nce(z1, z2, tau, torch.tensor([0, 1])).item() == pytest.approx(plain, rel=1e-6)


def test_info_nce_prefers_matching_views():
    z = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    perm = torch.roll(torch.arange(16), 1)
    assert info_nce(z, z, 0.1) < info_nce(z, z[perm], 0.1) - 1.0


def test_jitter_adds_noise_of_the_given_scale_to_observed_entries():
    x = torch.zeros(64, 32, 4, 2)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[:, :, 0] = False
    out, m = jitter(x, mask, torch.Generator().manual_seed(0), sigma=0.3)
    assert torch.equal(m, mask) and (out[:, :, 0] == 0).all()
    assert out[:, :, 1:].std().item() == pytest.approx(0.3, rel=0.03)
    assert abs(out[:, :, 1:].mean().item()) < 0.01


def test_scaling_multiplies_each_series_by_one_factor():
    x = torch.rand(200, 10, 3, 2) + 1.0
    out, _ = scaling(x, torch.ones_like(x, dtype=torch.bool), torch.Generator().manual_seed(0), 0.2)
    ratio = out / x
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    factors = ratio[:, 0]
    assert factors.mean().item() == pytest.approx(1.0, abs=0.02)
    assert factors.std().item() == pytest.approx(0.2, rel=0.1)


def test_node_dropout_zeroes_whole_nodes_and_marks_them_missing():
    x = torch.randn(500, 6, 8, 1)
    mask = torch.ones_like(x, dtype=torch.bool)
    out, m = node_dropout(x, mask, torch.Generator().manual_seed(0), p=0.25)
    dropped = (out == 0).all(dim=(1, 3))  # [B, N]
    kept = torch.isclose(out, x).all(dim=(1, 3))
    assert (dropped ^ kept).all()
    assert torch.equal(m.all(dim=(1, 3)), kept) and not m.any(dim=(1, 3))[dropped].any()
    assert dropped.float().mean().item() == pytest.approx(0.25, abs=0.02)


def test_crop_resize_is_linear_interpolation_of_the_span():
    L = 9
    x = torch.randn(2, L, 3, 1, dtype=torch.float64)
    mask = torch.ones_like(x, dtype=torch.bool)
    same, m = crop_resize(x, mask, torch.tensor([0, 0]), torch.tensor([L, L]))
    torch.testing.assert_close(same, x)
    assert m.all()
    out, _ = crop_resize(x, mask, torch.tensor([2, 1]), torch.tensor([5, 3]))
    for b, (s, n) in enumerate([(2, 5), (1, 3)]):
        pos = s + np.arange(L) * (n - 1) / (L - 1)
        for node in range(3):
            expected = np.interp(pos, np.arange(L), x[b, :, node, 0].numpy())
            np.testing.assert_allclose(out[b, :, node, 0].numpy(), expected, atol=1e-12)
    # a missing step makes the steps interpolated from it missing
    mask[0, 3] = False
    _, m = crop_resize(x, mask, torch.tensor([2, 2]), torch.tensor([5, 5]))  # pos 2, 2.5, ..., 6
    assert m[0, :, 0, 0].tolist() == [True, False, False, False] + [True] * 5


def test_temporal_crop_keeps_the_length_and_the_minimum_span():
    x = torch.arange(12.0).view(1, 12, 1, 1).repeat(300, 1, 1, 1)
    mask = torch.ones_like(x, dtype=torch.bool)
    out, m = temporal_crop(x, mask, torch.Generator().manual_seed(0), min_ratio=0.5)
    assert out.shape == x.shape and m.all()
    span = out[:, -1, 0, 0] - out[:, 0, 0, 0]  # x is a ramp, so the span is length - 1
    assert (span >= 5 - 1e-5).all() and (span <= 11 + 1e-5).all()
    assert (out[:, 0, 0, 0] >= 0).all() and (out[:, -1, 0, 0] <= 11).all()
    full, _ = temporal_crop(x, mask, min_ratio=1.0)
    torch.testing.assert_close(full, x)


@pytest.mark.parametrize("pool", ["window", "node"])
def test_contrastive_objective_trains_model_embedding_and_projection(pool):
    torch.manual_seed(0)
    model = build_model("stid", INFO, series_dim=8, node_dim=8, tod_dim=8, dow_dim=8)
    objective = build_objective("contrastive", INFO, model, pool=pool, proj_dim=16)
    loss, logs = objective.loss(model, make_batch(B=6))
    assert torch.isfinite(loss)
    # symmetric InfoNCE is between 0 and well above log(M) at random init
    M = 6 if pool == "window" else 18
    assert 0 < loss.item() < 3 * math.log(M)
    loss.backward()
    assert not grads_reach(objective)
    assert not (set(grads_reach(model)) - {"regression.weight", "regression.bias"})


def test_contrastive_loss_is_the_shared_info_nce_of_the_two_views():
    torch.manual_seed(0)
    model = build_model("stid", INFO, series_dim=8, node_dim=8, tod_dim=8, dow_dim=8)
    objective = build_objective("contrastive", INFO, model, proj_dim=16, temperature=0.2)
    batch = make_batch(B=6)
    torch.manual_seed(1)
    loss, logs = objective.loss(model, batch)
    torch.manual_seed(1)
    z1 = objective.instances(model, objective.augment(batch))
    z2 = objective.instances(model, objective.augment(batch))
    torch.testing.assert_close(loss, info_nce(z1, z2, 0.2))
    torch.testing.assert_close(logs["info_nce"], loss.detach())


def test_contrastive_needs_an_embedding():
    with pytest.raises(ConfigError, match="embed.*dlinear"):
        build_objective("contrastive", INFO, build_model("last_value", INFO))
    with pytest.raises(ConfigError, match="unknown augmentations"):
        build_objective("contrastive", INFO, build_model("dlinear", INFO), augmentations=["flip"])


# ---- diffusion -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cosine", "linear", "quad"])
def test_noise_schedules_decrease_alpha_bar_towards_zero(kind):
    betas = beta_schedule(kind, 50)
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert ((betas > 0) & (betas <= 0.5 + 1e-12)).all()
    assert (alpha_bar[1:] < alpha_bar[:-1]).all()
    assert alpha_bar[0] > 0.99 and alpha_bar[-1] < 0.01


def test_forward_process_has_the_right_mean_and_variance():
    x0 = torch.full((200_000,), 2.0, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - beta_schedule("cosine", 50), 0)[20]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xt = q_sample(x0, alpha_bar, noise)
    assert xt.mean().item() == pytest.approx(2.0 * alpha_bar.sqrt().item(), abs=0.01)
    assert xt.var().item() == pytest.approx(1 - alpha_bar.item(), rel=0.02)


def test_diffusion_samples_and_gradients():
    torch.manual_seed(0)
    model = build_model("dlinear", INFO)
    objective = build_objective("diffusion", INFO, model, hidden=16, layers=1, steps=10)
    assert objective.use_model  # conditions on dlinear's embedding and its own encoder
    batch = make_batch()
    loss, _ = objective.loss(model, batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert not grads_reach(objective) and not grads_reach(model)
    samples = objective.sample(model, batch, 5)
    assert samples.shape == (5, 4, 4, 3, 2) and torch.isfinite(samples).all()
    assert objective.point_forecast(model, batch, 3).shape == (4, 4, 3, 2)
    # samples differ from one another (the process is stochastic)
    assert samples.std(0).mean() > 0.01

    assert objective.condition(model, batch).shape == (4, 3, 16 + model.embed_dim)
    own = build_objective("diffusion", INFO, build_model("last_value", INFO), hidden=16)
    assert not own.use_model and own.condition(None, batch).shape == (4, 3, 16)
    only_model = build_objective("diffusion", INFO, model, hidden=16, condition="model")
    assert only_model.encoder is None
    assert only_model.condition(model, batch).shape == (4, 3, model.embed_dim)
    with pytest.raises(ConfigError, match="condition: own"):
        build_objective("diffusion", INFO, build_model("last_value", INFO), condition="model")


def test_diffusion_learns_a_simple_conditional_distribution():
    # y = last history value + N(0, 0.05^2): samples must centre on it with a small spread
    torch.manual_seed(0)
    info = DataInfo(2, 1, 4, 2)

    def draw(B, gen=None):
        x = torch.randn(B, 4, 2, 1, generator=gen)
        y = x[:, -1:].expand(B, 2, 2, 1) + 0.05 * torch.randn(B, 2, 2, 1, generator=gen)
        ones = torch.ones_like(y, dtype=torch.bool)
        return {
            "x": x,
            "x_mask": torch.ones_like(x, dtype=torch.bool),
            "y_scaled": y,
            "y_mask": ones,
        }

    objective = build_objective("diffusion", info, None, hidden=32, layers=2, steps=30)
    held_out = draw(64, torch.Generator().manual_seed(1))

    def held_out_loss():
        torch.manual_seed(123)  # same steps and noise before and after training
        with torch.no_grad():
            return objective.loss(None, held_out)[0].item()

    before = held_out_loss()
    opt = torch.optim.Adam(objective.parameters(), lr=2e-3)
    for _ in range(300):
        loss, _ = objective.loss(None, draw(64))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out_loss() < 0.2 * before

    samples = objective.sample(None, held_out, 32)
    truth = held_out["x"][:, -1:].expand(64, 2, 2, 1)
    assert (samples.mean(0) - truth).abs().mean() < 0.1
    assert samples.std(0).mean() < 0.3
    crps = crps_from_samples(samples, held_out["y_scaled"]).item()
    wide = crps_from_samples(torch.randn_like(samples), held_out["y_scaled"]).item()
    assert crps < 0.25 * wide
    torch.manual_seed(7)
    assert objective.crps(None, held_out, 32).item() < 0.25 * wide
