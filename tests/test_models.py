"""Learned baselines: shapes, gradients, and hand-checked pieces of each paper's architecture."""

import math

import numpy as np
import pytest
import torch

from llm_st import ConfigError
from llm_st.models.base import DataInfo
from llm_st.models.dlinear import moving_average
from llm_st.models.gwnet import transition_matrices
from llm_st.models.registry import build_model
from llm_st.models.stgcn import chebyshev_polynomials, scaled_laplacian

# tiny versions of every model, so the shape/gradient sweep stays fast
TINY = {
    "dlinear": {},
    "nlinear": {},
    "patchtst": dict(patch_len=4, stride=2, d_model=16, n_heads=4, n_layers=2, d_ff=32),
    "pattn": dict(patch_len=4, stride=2, d_model=16, n_heads=4),
    "stid": dict(series_dim=8, node_dim=8, tod_dim=8, dow_dim=8, num_layers=2),
    "graph_wavenet": dict(
        residual_channels=8, dilation_channels=8, skip_channels=16, end_channels=16
    ),
    "stgcn": dict(blocks=((8, 4, 8), (8, 4, 8)), end_channels=(16, 16)),
}
WITH_EMBED = list(TINY)


def ring(n):
    a = np.zeros((n, n), np.float32)
    for i in range(n):
        a[i, (i + 1) % n] = 1.0
        a[i, (i + 2) % n] = 0.5
    return a


def make_batch(B, L, H, N, C, steps_per_day=288, seed=0):
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 10_000, (B, 1), generator=g)
    steps = start + torch.arange(L)
    tod = (steps % steps_per_day).float() / steps_per_day
    dow = (steps // steps_per_day % 7).float()
    return {
        "x": torch.randn(B, L, N, C, generator=g),
        "x_mask": torch.ones(B, L, N, C, dtype=torch.bool),
        "x_time": torch.stack([tod, dow], dim=-1),
        "y_time": torch.zeros(B, H, 2),
    }


def graph_info(C):
    return DataInfo(5, C, 12, 12, steps_per_day=288, adjacency=ring(5))


def series_info():
    return DataInfo(3, 1, 96, 24, steps_per_day=24)


@pytest.mark.parametrize("C", [1, 2])
@pytest.mark.parametrize("name", list(TINY))
def test_graph_inputs_shapes_gradients_and_embeddings(name, C):
    torch.manual_seed(0)
    info = graph_info(C)
    model = build_model(name, info, **TINY[name])
    batch = make_batch(2, 12, 12, 5, C)
    out = model(batch)
    assert out.shape == (2, 12, 5, C) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    emb = model.embed(batch)
    assert emb.shape == (2, 5, model.embed_dim) and torch.isfinite(emb).all()


@pytest.mark.parametrize("name", ["dlinear", "nlinear", "patchtst", "pattn", "stid"])
def test_long_term_series_inputs(name):
    info = series_info()
    model = build_model(name, info, **TINY[name])
    batch = make_batch(2, 96, 24, 3, 1, steps_per_day=24)
    out = model(batch)
    assert out.shape == (2, 24, 3, 1) and torch.isfinite(out).all()
    assert model.embed(batch).shape == (2, 3, model.embed_dim)


def test_paper_defaults_build_and_run():
    batch = make_batch(2, 12, 12, 5, 1)
    counts = {}
    for name in TINY:
        model = build_model(name, graph_info(1))
        model.eval()
        with torch.no_grad():
            assert model(batch).shape == (2, 12, 5, 1)
        counts[name] = sum(p.numel() for p in model.parameters())
    # PatchTST on 12 steps: patch 16, stride 8, replicate padding -> 1 patch of 128 dims
    assert build_model("patchtst", graph_info(1)).num_patches == 1
    print("parameters at paper defaults (N=5, L=H=12, C=1):", counts)


def test_parameter_counts_match_the_architectures():
    L, H, N, C = 12, 12, 5, 2
    info = graph_info(C)
    assert sum(p.numel() for p in build_model("dlinear", info).parameters()) == 2 * (L * H + H)
    indiv = build_model("dlinear", info, individual=True)
    assert sum(p.numel() for p in indiv.parameters()) == 2 * N * C * (L * H + H)
    assert sum(p.numel() for p in build_model("nlinear", info).parameters()) == L * H + H
    stid = build_model("stid", info)
    hidden = 4 * 32
    expected = (
        (L * (C + 2) * 32 + 32)  # series embedding of values + time of day + day of week
        + N * 32
        + 288 * 32
        + 7 * 32  # node, time-of-day, day-of-week identities
        + 3 * 2 * (hidden * hidden + hidden)  # residual MLP layers
        + hidden * H * C
        + H * C  # regression
    )
    assert sum(p.numel() for p in stid.parameters()) == expected


def test_graph_wavenet_warns_when_history_exceeds_receptive_field():
    with pytest.warns(UserWarning, match="receptive field \\(13 steps\\)"):
        model = build_model("graph_wavenet", series_info(), **TINY["graph_wavenet"])
    out = model(make_batch(2, 96, 24, 3, 1, steps_per_day=24))
    assert out.shape == (2, 24, 3, 1)


# ---- DLinear / NLinear -----------------------------------------------------------------


def np_moving_average(z, k):
    front, end = (k - 1) // 2, k - 1 - (k - 1) // 2
    padded = np.concatenate(
        [np.repeat(z[..., :1], front, -1), z, np.repeat(z[..., -1:], end, -1)], -1
    )
    return np.stack([padded[..., i : i + k].mean(-1) for i in range(z.shape[-1])], -1)


def test_moving_average_matches_numpy_and_keeps_length():
    z = torch.randn(3, 10, dtype=torch.float64)
    for k in (1, 4, 5, 25):
        np.testing.assert_allclose(moving_average(z, k).numpy(), np_moving_average(z.numpy(), k))
    # a constant series is its own trend
    assert torch.allclose(moving_average(torch.full((1, 7), 2.5), 25), torch.full((1, 7), 2.5))


@pytest.mark.parametrize("individual", [False, True])
def test_dlinear_equals_numpy_decomposition_plus_linear(individual):
    L, H, N, C, k = 12, 4, 3, 2, 5
    info = DataInfo(N, C, L, H)
    model = build_model("dlinear", info, kernel_size=k, individual=individual)
    rng = np.random.default_rng(0)
    for layer in (model.seasonal, model.trend):
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(rng.normal(size=layer.weight.shape)))
            layer.bias.copy_(torch.from_numpy(rng.normal(size=layer.bias.shape)))
    batch = make_batch(2, L, H, N, C)
    with torch.no_grad():
        out = model(batch).numpy()

    x = batch["x"].numpy().astype(np.float64)
    ws, bs = model.seasonal.weight.detach().numpy(), model.seasonal.bias.detach().numpy()
    wt, bt = model.trend.weight.detach().numpy(), model.trend.bias.detach().numpy()
    expected = np.zeros((2, H, N, C))
    for b in range(2):
        for n in range(N):
            for c in range(C):
                z = x[b, :, n, c]
                trend = np_moving_average(z, k)
                s = n * C + c
                w1, b1 = (ws[s], bs[s]) if individual else (ws, bs)
                w2, b2 = (wt[s], bt[s]) if individual else (wt, bt)
                expected[b, :, n, c] = w1 @ (z - trend) + b1 + w2 @ trend + b2
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_nlinear_subtracts_and_restores_the_last_value():
    L, H = 6, 3
    model = build_model("nlinear", DataInfo(2, 1, L, H))
    w = np.arange(H * L, dtype=np.float32).reshape(H, L) / 10
    with torch.no_grad():
        model.linear.weight.copy_(torch.from_numpy(w))
        model.linear.bias.fill_(0.5)
    batch = make_batch(1, L, H, 2, 1)
    with torch.no_grad():
        out = model(batch).numpy()
    x = batch["x"].numpy()[0, :, :, 0]  # [L, N]
    expected = w @ (x - x[-1]) + 0.5 + x[-1]
    np.testing.assert_allclose(out[0, :, :, 0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["dlinear", "patchtst", "pattn"])
def test_channel_independent_models_keep_series_apart(name):
    model = build_model(name, graph_info(2), **TINY[name]).eval()
    batch = make_batch(2, 12, 12, 5, 2)
    other = dict(batch, x=batch["x"].clone())
    other["x"][:, :, 0, 1] += 3 * torch.randn(2, 12)  # only series (node 0, channel 1)
    with torch.no_grad():
        a, b = model(batch), model(other)
    changed = (a - b).abs().amax(dim=(0, 1)) > 1e-6  # [N, C]
    assert changed[0, 1] and changed.sum() == 1


# ---- PatchTST / PAttn ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["patchtst", "pattn"])
def test_revin_makes_patch_models_equivariant_to_level_and_scale(name):
    model = build_model(name, graph_info(1), **TINY[name]).eval()
    batch = make_batch(2, 12, 12, 5, 1)
    moved = dict(batch, x=3.0 * batch["x"] + 5.0)
    with torch.no_grad():
        a, b = model(batch), model(moved)
    torch.testing.assert_close(b, 3.0 * a + 5.0, atol=2e-3, rtol=1e-3)


def test_patchtst_layer_norm_option_and_bad_norm():
    model = build_model("patchtst", graph_info(1), norm="layer", **TINY["patchtst"])
    assert isinstance(model.layers[0].norm_attn, torch.nn.LayerNorm)
    assert model(make_batch(2, 12, 12, 5, 1)).shape == (2, 12, 5, 1)
    with pytest.raises(ConfigError, match="unknown norm 'group'"):
        build_model("patchtst", graph_info(1), norm="group")
    with pytest.raises(ConfigError, match="not divisible by n_heads=3"):
        build_model("patchtst", graph_info(1), d_model=16, n_heads=3)


def test_patch_tokens_with_explicit_positions_select_positional_embeddings():
    model = build_model("patchtst", graph_info(1), **TINY["patchtst"]).eval()
    patches = model.patch_input(make_batch(2, 12, 12, 5, 1))
    assert patches.shape == (2 * 5, model.num_patches, 4) and model.num_patches == 6
    full = model.patch_tokens(patches)
    pick = torch.tensor([4, 1])
    torch.testing.assert_close(model.patch_tokens(patches[:, pick], pick), full[:, pick])


def test_pattn_is_one_attention_layer_without_positions():
    model = build_model("pattn", graph_info(1), **TINY["pattn"])
    assert model.pos_embedding is None
    d, P = 16, model.num_patches
    expected = (4 * d + d) + 3 * d * d + d * d + 2 * d + (P * d * 12 + 12)
    assert sum(p.numel() for p in model.parameters()) == expected


# ---- STID ------------------------------------------------------------------------------


def test_stid_uses_the_time_of_the_last_history_step():
    torch.manual_seed(0)
    model = build_model("stid", graph_info(1), time_in_series=False).eval()
    batch = make_batch(2, 12, 12, 5, 1)
    with torch.no_grad():
        base = model(batch)
        later = dict(batch, x_time=batch["x_time"].clone())
        later["x_time"][:, -1, 0] = (later["x_time"][:, -1, 0] + 0.25) % 1  # 6 hours later
        assert (model(later) - base).abs().max() > 1e-3
        other_day = dict(batch, x_time=batch["x_time"].clone())
        other_day["x_time"][:, -1, 1] = (other_day["x_time"][:, -1, 1] + 1) % 7
        assert (model(other_day) - base).abs().max() > 1e-3
        earlier = dict(batch, x_time=batch["x_time"].clone())
        earlier["x_time"][:, :-1] = 0.0  # only the last step's time is an identity
        torch.testing.assert_close(model(earlier), base)


def test_stid_needs_a_day_length_for_time_of_day():
    info = DataInfo(3, 1, 12, 12, steps_per_day=None)
    with pytest.raises(ConfigError, match="steps_per_day"):
        build_model("stid", info)
    assert build_model("stid", info, steps_per_day=24).tod_emb.shape == (24, 32)


# ---- Graph WaveNet ---------------------------------------------------------------------


def test_graph_wavenet_adaptive_adjacency_is_row_stochastic():
    model = build_model("graph_wavenet", graph_info(1), **TINY["graph_wavenet"])
    adp = model.adaptive_adjacency()
    assert adp.shape == (5, 5) and (adp >= 0).all()
    torch.testing.assert_close(adp.sum(dim=1), torch.ones(5))


def test_graph_wavenet_transition_matrices():
    a = np.array([[0, 2, 1], [1, 0, 1], [0, 0, 0]], np.float32)  # node 2 has no out-edges
    fwd, bwd = transition_matrices(a)
    np.testing.assert_allclose(fwd, [[0, 2 / 3, 1 / 3], [0.5, 0, 0.5], [0, 0, 0]], rtol=1e-6)
    # backward: the same on A^T = [[0, 1, 0], [2, 0, 0], [1, 1, 0]]
    np.testing.assert_allclose(bwd, [[0, 1, 0], [1, 0, 0], [0.5, 0.5, 0]], rtol=1e-6)
    model = build_model("graph_wavenet", graph_info(1), **TINY["graph_wavenet"])
    assert model.supports.shape == (2, 5, 5) and model.receptive_field == 13


def test_graph_wavenet_without_adjacency_is_adaptive_only():
    info = DataInfo(4, 1, 12, 12, steps_per_day=288)
    model = build_model("graph_wavenet", info, **TINY["graph_wavenet"])
    assert model.supports.shape == (0, 4, 4)
    assert model(make_batch(2, 12, 12, 4, 1)).shape == (2, 12, 4, 1)
    with pytest.raises(ConfigError, match="adaptive"):
        build_model("graph_wavenet", info, adaptive=False)


# ---- STGCN -----------------------------------------------------------------------------


def test_chebyshev_polynomials_of_two_connected_nodes():
    # L = [[1, -1], [-1, 1]], lambda_max = 2, L~ = L - I = [[0, -1], [-1, 0]], T2 = 2 L~^2 - I = I
    cheb = chebyshev_polynomials(np.array([[0.0, 1.0], [1.0, 0.0]]), 3)
    np.testing.assert_allclose(cheb[0], np.eye(2))
    np.testing.assert_allclose(cheb[1], [[0, -1], [-1, 0]], atol=1e-6)
    np.testing.assert_allclose(cheb[2], np.eye(2), atol=1e-6)


def test_chebyshev_polynomials_of_a_path_match_numpy():
    # directed path 0 -> 1 -> 2 with weights 2 and 1, symmetrized by averaging
    a = np.array([[0, 2, 0], [0, 0, 1], [0, 0, 0]], float)
    w = np.array([[0, 1, 0], [1, 0, 0.5], [0, 0.5, 0]])
    d = w.sum(1)
    lap = np.eye(3) - w / np.sqrt(np.outer(d, d))
    lam = np.linalg.eigvalsh(lap).max()
    scaled = 2 * lap / lam - np.eye(3)
    np.testing.assert_allclose(scaled_laplacian(a), scaled, atol=1e-12)
    cheb = chebyshev_polynomials(a, 4)
    expected = [np.eye(3), scaled, 2 * scaled @ scaled - np.eye(3)]
    expected.append(2 * scaled @ expected[2] - expected[1])
    np.testing.assert_allclose(cheb, np.stack(expected), atol=1e-6)
    assert math.isclose(np.linalg.eigvalsh(cheb[1].astype(float)).max(), 1.0, abs_tol=1e-6)


def test_stgcn_needs_an_adjacency_and_enough_history():
    with pytest.raises(ConfigError, match="stgcn needs a graph.*graph_wavenet"):
        build_model("stgcn", series_info())
    with pytest.raises(ConfigError, match="more than the history 8"):
        build_model("stgcn", DataInfo(5, 1, 8, 12, adjacency=ring(5)))


# ---- end to end on task batches --------------------------------------------------------


@pytest.mark.parametrize("name", ["dlinear", "patchtst", "stid", "graph_wavenet", "stgcn"])
def test_models_learn_a_daily_pattern_from_task_batches(name):
    import pandas as pd

    from llm_st import STData
    from llm_st.data.task import prepare_task

    per_day, days, N = 24, 20, 4
    t = np.arange(per_day * days)
    rng = np.random.default_rng(0)
    phase = np.arange(N) * 0.7
    values = np.sin(2 * np.pi * t[:, None] / per_day + phase) + 0.05 * rng.normal(size=(len(t), N))
    data = STData(
        values[..., None] + 5,
        timestamps=pd.date_range("2024-01-01", periods=len(t), freq="h"),
        adjacency=ring(N),
    )
    task = prepare_task(data, 12, 12)
    info = DataInfo.from_data(data, 12, 12)
    torch.manual_seed(0)
    model = build_model(name, info, **TINY[name])
    train, test = task.dataset("train"), task.dataset("test")
    test_batch = test[list(range(len(test)))]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(train), (32,), generator=gen).tolist()
        batch = train[idx]
        loss = (model(batch) - batch["y_scaled"]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        mae = (model(test_batch) - test_batch["y_scaled"]).abs().mean().item()
    copy_last = (test_batch["x"][:, -1:] - test_batch["y_scaled"]).abs().mean().item()
    # copy-last is far off on a sine 12 steps ahead; every model must beat it by a lot
    assert mae < 0.35 * copy_last, (mae, copy_last)
