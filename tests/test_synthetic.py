"""Built-in synthetic datasets: determinism, calendar, rhythm, propagation, gaps, drift, grid."""

import numpy as np
import pandas as pd
import pytest

from llm_st import DataError, STData
from llm_st.data.synthetic import (
    SYNTHETIC_NAMES,
    _pairs_within,
    generate,
    synthetic_grid,
    synthetic_traffic,
)

SMALL = dict(num_nodes=30, num_days=14)


@pytest.fixture(scope="module")
def traffic() -> STData:
    """Complete (no dropouts) small traffic data, two weeks at 5 minutes."""
    return synthetic_traffic(**SMALL, seed=0, dropout_rate=0.0)


@pytest.fixture(scope="module")
def grid() -> STData:
    return synthetic_grid(height=12, width=12, num_days=14, seed=0)


def _along_edges(data: STData) -> tuple[np.ndarray, np.ndarray]:
    """Edges ``u -> v`` between consecutive sensors of one carriageway (``v`` next downstream)."""
    meta, src, dst = data.node_meta, data.adjacency.src, data.adjacency.dst
    corridor, pos = meta["corridor"].to_numpy(), meta["position"].to_numpy()
    along = (corridor[src] == corridor[dst]) & (pos[dst] == pos[src] + 1)
    return src[along], dst[along]


def _cross(a: np.ndarray, b: np.ndarray, lags: np.ndarray, normalize: bool) -> np.ndarray:
    """``sum_t a[t] * b[t + k]`` for each ``k`` in ``lags``; the correlation if ``normalize``."""
    out = []
    for k in lags:
        x, y = (a[: len(a) - k], b[k:]) if k >= 0 else (a[-k:], b[: len(b) + k])
        out.append(np.corrcoef(x, y)[0, 1] if normalize else float(np.dot(x, y)))
    return np.asarray(out)


# ------------------------------------------------------------------------- traffic
def test_traffic_is_deterministic_per_seed():
    kw = dict(num_nodes=20, num_days=3)
    a = generate("synthetic-traffic", seed=3, **kw)
    b = generate("synthetic-traffic", seed=3, **kw)
    c = generate("synthetic-traffic", seed=4, **kw)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.adjacency.src, b.adjacency.src)
    assert np.array_equal(a.adjacency.weight, b.adjacency.weight)
    assert np.array_equal(a.coords, b.coords)
    both = a.mask & c.mask
    assert np.abs(a.values[both] - c.values[both]).mean() > 1.0  # mph
    assert not np.array_equal(a.coords, c.coords)


def test_traffic_shapes_calendar_and_metadata(traffic):
    assert traffic.shape == (14 * 288, 30, 1) and traffic.values.dtype == np.float32
    assert traffic.freq == "5min" and traffic.steps_per_day() == 288
    assert traffic.timestamps[0] == pd.Timestamp("2024-01-01")
    assert (np.diff(traffic.timestamps) == pd.Timedelta(minutes=5)).all()
    assert traffic.channels == ["speed"] and traffic.null_value == 0.0
    assert len(set(traffic.node_ids)) == 30
    lat, lon = traffic.coords.T
    assert np.all(np.abs(lat - 34.05) < 1) and np.all(np.abs(lon + 118.25) < 1)
    assert {"road", "direction", "corridor", "position", "lanes", "free_flow_mph"} <= set(
        traffic.node_meta.columns
    )
    assert traffic.extras["synthetic"]["lag_steps"] == 2
    assert "30 loop sensors" in traffic.description
    speed = traffic.values[traffic.mask]
    assert speed.min() >= 3.0 and speed.max() <= 85.0
    assert 40.0 < speed.mean() < 60.0

    hourly = synthetic_traffic(
        num_nodes=8, num_days=2, interval_minutes=15, start="2023-05-06 00:00"
    )
    assert hourly.shape == (192, 8, 1) and hourly.freq == "15min"
    assert hourly.timestamps[-1] == pd.Timestamp("2023-05-07 23:45")
    assert hourly.extras["synthetic"]["lag_steps"] == 1


def test_traffic_graph_points_downstream(traffic):
    adj, meta = traffic.adjacency, traffic.node_meta
    corridor, pos = meta["corridor"].to_numpy(), meta["position"].to_numpy()
    same = corridor[adj.src] == corridor[adj.dst]
    # along a carriageway edges only go downstream, one or two sensors ahead
    assert set(np.unique(pos[adj.dst[same]] - pos[adj.src[same]])) <= {1, 2}
    # every sensor but the last of its carriageway feeds the next one
    src, dst = _along_edges(traffic)
    last = pos == meta.groupby("corridor")["position"].transform("max").to_numpy()
    assert len(src) == np.count_nonzero(~last)
    # junction edges join different roads, both ways
    road = meta["road"].to_numpy()
    junction = set(zip(adj.src[~same].tolist(), adj.dst[~same].tolist(), strict=True))
    assert all(road[s] != road[d] and (d, s) in junction for s, d in junction)
    assert np.all((adj.weight >= 0.1) & (adj.weight <= 1.0))


def test_pairs_within_matches_brute_force():
    xy = np.random.default_rng(0).uniform(0, 10, (400, 2))
    i, j = _pairs_within(xy, 0.7)
    dist = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    expect = {(a, b) for a, b in zip(*np.nonzero(dist < 0.7), strict=True) if a < b}
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == expect and len(i) == len(expect)


def test_traffic_daily_periodicity(traffic):
    v = traffic.values[..., 0].astype(np.float64)
    day = traffic.steps_per_day()

    def acf(k: int) -> float:
        return float(np.mean([np.corrcoef(v[:-k, n], v[k:, n])[0, 1] for n in range(v.shape[1])]))

    assert acf(day) > acf(day // 2) + 0.3


def test_weekday_rush_hours_are_slow_and_weekends_light(traffic):
    v = traffic.values[..., 0]
    hour = traffic.timestamps.hour.to_numpy()
    weekday = traffic.timestamps.day_of_week.to_numpy() < 5
    rush = ((hour >= 7) & (hour < 9)) | ((hour >= 17) & (hour < 19))
    night = (hour >= 1) & (hour < 4)
    weekday_rush = v[weekday & rush].mean()
    assert v[weekday & night].mean() - weekday_rush > 6.0  # mph
    assert v[~weekday & rush].mean() - weekday_rush > 6.0


def test_congestion_travels_downstream_with_delay(traffic):
    # first differences drop the daily profile and slow city-wide swings; what is left of
    # an edge's cross-correlation leans towards the downstream sensor lagging
    dv = np.diff(traffic.values[..., 0].astype(np.float64), axis=0)
    src, dst = _along_edges(traffic)
    lags = np.arange(-6, 7)
    curve = np.mean(
        [_cross(dv[:, u], dv[:, w], lags, True) for u, w in zip(src, dst, strict=True)], axis=0
    )
    assert lags[curve.argmax()] > 0
    downstream_later = curve[(lags >= 1) & (lags <= 4)].sum()
    upstream_later = curve[(lags <= -1) & (lags >= -4)].sum()
    assert downstream_later > 1.15 * upstream_later


def test_incident_response_reaches_next_sensor_after_the_lag():
    # streams are separate per component: the same seed with and without incidents differs
    # only by the incidents' effect
    kw = dict(num_nodes=30, num_days=7, seed=1, dropout_rate=0.0)
    calm = synthetic_traffic(incident_rate=0.0, **kw)
    busy = synthetic_traffic(incident_rate=0.2, **kw)
    effect = np.diff(busy.values[..., 0].astype(np.float64) - calm.values[..., 0], axis=0)
    assert np.abs(effect).max() > 10.0  # incidents are sharp local drops (mph per step)
    lag = busy.extras["synthetic"]["lag_steps"]
    src, dst = _along_edges(busy)
    lags = np.arange(-6, 7)
    curve = np.sum(
        [_cross(effect[:, u], effect[:, w], lags, False) for u, w in zip(src, dst, strict=True)], 0
    )
    assert lags[curve.argmax()] in (lag, lag + 1)
    assert curve[lags < 0].max() < 0.3 * curve.max()


def test_dropouts_are_masked_zeros_and_every_sensor_is_observed():
    data = synthetic_traffic(**SMALL, seed=2, dropout_rate=0.03)
    # target 3 %; a small series has few long outages, so the fraction varies
    assert 0.01 < data.missing_fraction < 0.05
    assert np.all(data.values[~data.mask] == 0.0) and np.all(data.values[data.mask] >= 3.0)
    assert data.mask.any(axis=(0, 2)).all()
    # both short gaps (up to 30 min) and outages (2 h or more) occur
    missing = ~data.mask[..., 0]
    padded = np.vstack([np.zeros(30, bool), missing, np.zeros(30, bool)]).astype(int)
    change = np.diff(padded, axis=0).T  # [N, T + 1]: +1 where a gap starts, -1 after it ends
    lengths = np.nonzero(change == -1)[1] - np.nonzero(change == 1)[1]
    assert lengths.min() <= 6 and lengths.max() >= 24

    complete = synthetic_traffic(num_nodes=10, num_days=2, seed=2, dropout_rate=0.0)
    assert complete.missing_fraction == 0.0
    # even when outages are longer than the series, every sensor keeps a reading
    for seed in range(5):
        tiny = synthetic_traffic(num_nodes=6, num_days=0.05, seed=seed, dropout_rate=0.5)
        assert tiny.mask.any(axis=(0, 2)).all()


def test_traffic_drift_changes_only_the_later_part():
    kw = dict(SMALL, seed=0, dropout_rate=0.0)
    steady = synthetic_traffic(drift=0.0, **kw)
    shifted = synthetic_traffic(drift=1.0, drift_start=0.7, **kw)
    cut = int(0.7 * steady.num_steps)
    assert np.array_equal(steady.values[:cut], shifted.values[:cut])
    hour = steady.timestamps.hour.to_numpy()
    night = (hour >= 1) & (hour < 4)
    step = np.arange(steady.num_steps)
    late, early = night & (step >= cut + 288), night & (step < cut)

    def night_change(data: STData) -> float:
        v = data.values[..., 0]
        return float(v[late].mean() - v[early].mean())

    assert abs(night_change(steady)) < 2.0
    assert night_change(shifted) < night_change(steady) - 4.0  # free-flow speed dropped
    assert "drifts" in shifted.description and "drifts" not in steady.description


# ------------------------------------------------------------------------- grid
def test_grid_round_trip_and_counts(grid):
    frames = grid.to_grid()
    assert frames.shape == (14 * 48, 2, 12, 12) and grid.channels == ["inflow", "outflow"]
    assert grid.freq == "30min" and grid.grid_shape == (12, 12)
    assert frames[100, 1, 3, 7] == grid.values[100, 3 * 12 + 7, 1]
    again = STData.from_grid(frames, channels=grid.channels)
    assert np.array_equal(again.values, grid.values)
    assert np.all(grid.values >= 0) and np.all(grid.values == np.round(grid.values))
    assert grid.missing_fraction == 0.0 and grid.num_edges == 2 * 2 * 12 * 11
    assert set(grid.node_meta["zone"]) >= {"business", "background"}


def test_grid_is_deterministic_per_seed(grid):
    again = synthetic_grid(height=12, width=12, num_days=14, seed=0)
    other = synthetic_grid(height=12, width=12, num_days=14, seed=1)
    assert np.array_equal(grid.values, again.values)
    assert not np.array_equal(grid.values, other.values)


def test_grid_hotspots_move_and_commute_on_weekdays(grid):
    frames, ts = grid.to_grid(), grid.timestamps
    hour, weekday = ts.hour.to_numpy(), ts.day_of_week.to_numpy() < 5

    def busiest_cell(sel: np.ndarray) -> int:
        return int(frames[sel, 0].mean(axis=0).argmax())

    cells = {busiest_cell(weekday & (hour == h)) for h in (8, 12, 18, 21)}
    assert len(cells) >= 3
    business = (grid.node_meta["zone"] == "business").to_numpy()
    morning_in = grid.values[(hour == 8), :, 0]
    assert morning_in[weekday[hour == 8]][:, business].mean() > 2 * (
        morning_in[~weekday[hour == 8]][:, business].mean()
    )
    total = grid.values.sum(axis=(1, 2)).astype(np.float64)
    day = grid.steps_per_day()
    assert (
        np.corrcoef(total[:-day], total[day:])[0, 1]
        > np.corrcoef(total[: -day // 2], total[day // 2 :])[0, 1] + 0.3
    )


def test_grid_drift_relocates_the_business_district():
    kw = dict(height=12, width=12, num_days=14, seed=0, drift_start=0.5)
    steady, moved = synthetic_grid(drift=0.0, **kw), synthetic_grid(drift=1.0, **kw)
    T = steady.num_steps
    assert np.array_equal(steady.values[: T // 2], moved.values[: T // 2])
    ts, step = steady.timestamps, np.arange(T)
    hour = ts.hour.to_numpy()
    morning = (hour >= 7) & (hour < 11) & (ts.day_of_week.to_numpy() < 5)
    early, late = morning & (step < T // 2), morning & (step >= T // 2 + 48)

    def business_column(data: STData, sel: np.ndarray) -> float:
        # weekday mornings: people flow into the business district and out of homes, so
        # the positive net inflow marks the district; its weighted mean column
        frames = data.to_grid()[sel]
        weight = np.clip((frames[:, 0] - frames[:, 1]).mean(axis=0), 0, None) ** 2
        return float((weight.sum(axis=0) * np.arange(12)).sum() / weight.sum())

    assert abs(business_column(steady, late) - business_column(steady, early)) < 0.5
    assert abs(business_column(moved, late) - business_column(moved, early)) > 1.5


# ------------------------------------------------------------------------- registry
def test_generate_rejects_unknown_names_and_parameters():
    assert SYNTHETIC_NAMES == ("synthetic-traffic", "synthetic-grid")
    with pytest.raises(DataError, match="synthetic-traffic, synthetic-grid"):
        generate("synthetic-weather")
    with pytest.raises(DataError, match=r"unknown parameter\(s\) height.*num_nodes"):
        generate("synthetic-traffic", height=4)
    with pytest.raises(DataError, match="num_hotspots"):
        generate("synthetic-grid", num_nodes=4)
    grid = generate("synthetic-grid", seed=5, height=4, width=6, num_days=1)
    assert grid.grid_shape == (4, 6) and grid.num_steps == 48


@pytest.mark.parametrize(
    ("fn", "kwargs", "message"),
    [
        (synthetic_traffic, dict(interval_minutes=7), "interval_minutes=7"),
        (synthetic_traffic, dict(drift=1.5), "drift=1.5"),
        (synthetic_traffic, dict(drift_start=1.0), "drift_start=1.0"),
        (synthetic_traffic, dict(dropout_rate=0.6), "dropout_rate=0.6"),
        (synthetic_traffic, dict(num_nodes=3), "num_nodes=3"),
        (synthetic_traffic, dict(num_days=0), "num_days=0"),
        (synthetic_traffic, dict(start="not a date"), "start='not a date'"),
        (synthetic_grid, dict(height=1), "height=1"),
        (synthetic_grid, dict(num_hotspots=0), "num_hotspots=0"),
    ],
)
def test_bad_parameter_values_are_rejected(fn, kwargs, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        fn(**kwargs)
