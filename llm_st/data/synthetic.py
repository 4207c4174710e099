"""Built-in synthetic spatio-temporal datasets: road-sensor speeds and city-grid flows.

Two generators give data with the structure real ST benchmarks have, so demos and
tests run without downloads and forecasting models have something to learn:

- :func:`synthetic_traffic` (``"synthetic-traffic"``): speeds (mph) from loop
  sensors along the roads of a fictional city, METR-LA / PEMS style, on a directed
  road graph with coordinates. Morning and evening rush hours on weekdays, lighter
  weekends, congestion that travels downstream with a delay, incidents, dropouts
  stored as ``0.0`` and masked.
- :func:`synthetic_grid` (``"synthetic-grid"``): inflow / outflow counts on an
  ``H x W`` grid (TaxiBJ / BikeNYC layout) with hotspots that drift across the city
  over the day.

Both take ``drift`` (``0..1``) and ``drift_start`` (fraction of the series): from
``drift_start`` on, ramping in over one day, rush hours come later, demand grows and
(for traffic) free-flow speed drops, for distribution-shift experiments. Everything
is drawn from ``np.random.default_rng(seed)`` (for traffic, from one child stream per
component: graph, parameters, incidents, dynamics, noise, dropouts), so a seed and
the parameters fix the data bit for bit, and changing ``drift`` leaves the series
before ``drift_start`` unchanged.

Memory: the traffic generator writes into the final ``[T, N, 1]`` float32 array in
place and processes time in blocks, so generating a LargeST-sized graph (8,600
sensors, 4 weeks at 5 minutes) needs the array, its mask and a few megabytes; the
graph is built by a grid-bucket neighbour search, never an ``N x N`` matrix.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from llm_st.data.container import Adjacency, STData
from llm_st.errors import DataError

logger = logging.getLogger("llm_st")

SYNTHETIC_NAMES = ("synthetic-traffic", "synthetic-grid")

# Elements per block of rows in the vectorized passes: keeps temporaries at a few MB.
_BLOCK_ELEMS = 1 << 20
# Show progress bars only for arrays at least this large (a few seconds of work).
_PROGRESS_ELEMS = 20_000_000
_CITY_CENTRE = (34.05, -118.25)  # (lat, lon) the traffic graph is placed around
_KM_PER_DEG_LAT = 111.2


# ---------------------------------------------------------------------------- shared
def _require(ok: bool, problem: str, fix: str) -> None:
    if not ok:
        raise DataError(problem, fix)


@dataclass(frozen=True)
class _Timeline:
    """Calendar of the generated series: one entry per time step (``T`` of them)."""

    timestamps: pd.DatetimeIndex
    steps_per_day: int
    hours: np.ndarray  # [T] float32 clock time of day in hours
    day: np.ndarray  # [T] int64 day number from the start
    dow: np.ndarray  # [T] int64 day of week, Monday = 0
    # [T] float32 drift strength in effect: 0 before drift_start, ``drift`` from a day later
    ramp: np.ndarray


def _timeline(
    num_days: float, interval_minutes: int, start: str, drift: float, drift_start: float
) -> _Timeline:
    """Validate the calendar parameters shared by both generators and lay out the steps."""
    _require(
        isinstance(interval_minutes, (int, np.integer))
        and 0 < interval_minutes <= 1440
        and 1440 % interval_minutes == 0,
        f"interval_minutes={interval_minutes!r} does not divide a day",
        "use a whole number of minutes that divides 1440, e.g. 5, 15, 30 or 60",
    )
    steps_per_day = 1440 // int(interval_minutes)
    _require(
        num_days > 0 and round(num_days * steps_per_day) >= 2,
        f"num_days={num_days!r} gives fewer than 2 time steps",
        "use num_days > 0 (e.g. 14)",
    )
    _require(
        0.0 <= drift <= 1.0, f"drift={drift!r} is outside [0, 1]", "use 0 (none) to 1 (strong)"
    )
    _require(
        0.0 < drift_start < 1.0,
        f"drift_start={drift_start!r} is outside (0, 1)",
        "give the fraction of the series after which the drift sets in, e.g. 0.7",
    )
    T = int(round(num_days * steps_per_day))
    try:
        timestamps = pd.date_range(
            pd.Timestamp(start), periods=T, freq=f"{int(interval_minutes)}min"
        )
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"start={start!r} is not a date", "use an ISO date such as '2024-01-01'"
        ) from exc
    step = np.arange(T)
    ramp = (drift * np.clip((step - drift_start * T) / steps_per_day, 0.0, 1.0)).astype(np.float32)
    hours = np.asarray(timestamps.hour + timestamps.minute / 60.0, np.float32)
    day = np.asarray((timestamps.normalize() - timestamps[0].normalize()).days, np.int64)
    return _Timeline(
        timestamps, steps_per_day, hours, day, np.asarray(timestamps.day_of_week, np.int64), ramp
    )


def _bump(hours: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Gaussian bump over the clock, ``[T]`` float32: 1 at ``centre`` hours, wraps at midnight."""
    d = (hours - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2).astype(np.float32)


def _expand_runs(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every element of the integer runs ``starts[i] : starts[i] + lengths[i]``.

    Returns ``(run, position)``, int64 arrays of ``sum(lengths)``: the run each element
    belongs to and its value.
    """
    lengths = np.asarray(lengths, np.int64)
    run = np.repeat(np.arange(len(lengths)), lengths)
    offset = np.arange(len(run)) - (np.cumsum(lengths) - lengths)[run]
    return run, np.asarray(starts, np.int64)[run] + offset


def _run_cells(
    nodes: np.ndarray, starts: np.ndarray, lengths: np.ndarray, num_steps: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The cells ``(t, n)`` of runs of steps at single nodes, one offset into the runs at a time.

    Run ``i`` covers steps ``starts[i] : starts[i] + lengths[i]`` (cut at the end of the
    series) at node ``nodes[i]``. Yields ``(rows, nodes, run)`` for offset 0, 1, ...:
    the cells of all runs still going and the run each belongs to, so memory stays
    proportional to the number of runs, not to their total length.
    """
    lengths = np.minimum(lengths, num_steps - starts)
    run = np.argsort(-lengths, kind="stable")  # longest first: the runs going on form a prefix
    neg_sorted = -lengths[run]
    for k in range(int(lengths.max(initial=0))):
        going = run[: np.searchsorted(neg_sorted, -k, "left")]
        yield starts[going] + k, nodes[going], going


def _ar1(
    num_steps: int, width: int, time_constant: float, sd: float, rng: np.random.Generator
) -> np.ndarray:
    """``[T, width]`` stationary Gaussian AR(1) series with standard deviation ``sd``.

    ``time_constant`` is in steps: the correlation after ``k`` steps is ``exp(-k / time_constant)``.
    """
    persist = np.exp(-1.0 / time_constant)
    innov = rng.normal(0.0, sd * np.sqrt(1 - persist**2), (num_steps, width))
    out = np.empty((num_steps, width))
    out[0] = rng.normal(0.0, sd, width)
    for t in range(1, num_steps):
        out[t] = persist * out[t - 1] + innov[t]
    return out


def _row_blocks(num_steps: int, row_elems: int) -> list[slice]:
    """Consecutive slices of about ``_BLOCK_ELEMS`` elements covering ``num_steps`` rows."""
    rows = max(1, _BLOCK_ELEMS // max(1, row_elems))
    return [slice(t0, min(t0 + rows, num_steps)) for t0 in range(0, num_steps, rows)]


# ---------------------------------------------------------------------------- traffic
@dataclass(frozen=True)
class _RoadNetwork:
    """Sensors placed along the two carriageways of a few roads, and the graph between them."""

    xy: np.ndarray  # [N, 2] km east / north of the city centre
    side_km: float  # side of the square the roads cross
    meta: pd.DataFrame  # one row per sensor
    # [N] carriageway number; the sensors of one carriageway are contiguous, in travel order
    corridor: np.ndarray
    inbound: np.ndarray  # [N] bool, travelling towards the centre
    # [E] edges src -> dst: downstream along a carriageway, both ways at junctions
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray  # [E] Gaussian kernel of the distance
    junction: np.ndarray  # [E] bool, edge between two different roads


def _pairs_within(xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``i < j`` of points closer than ``radius``, by bucketing points into a grid.

    Memory and time grow with the number of close pairs, not with ``N ** 2``.
    """
    cell = np.floor(xy / radius).astype(np.int64)
    cell -= cell.min(axis=0)
    ncol = int(cell[:, 1].max()) + 3
    key = (cell[:, 0] + 1) * ncol + cell[:, 1] + 1
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    pairs_i, pairs_j = [], []
    for d_row in (-1, 0, 1):
        for d_col in (-1, 0, 1):
            target = key + d_row * ncol + d_col
            lo = np.searchsorted(sorted_key, target, "left")
            i, at = _expand_runs(lo, np.searchsorted(sorted_key, target, "right") - lo)
            j = order[at]
            keep = (i < j) & (np.hypot(*(xy[i] - xy[j]).T) < radius)
            pairs_i.append(i[keep])
            pairs_j.append(j[keep])
    return np.concatenate(pairs_i), np.concatenate(pairs_j)


def _road_network(num_nodes: int, rng: np.random.Generator) -> _RoadNetwork:
    """Roads as gently bent lines through the city, each with two carriageways of sensors.

    Consecutive sensors of a carriageway are joined downstream (``i -> i+1`` and
    ``i -> i+2``); sensors of different roads closer than ~0.6 sensor spacings (the
    junctions) are joined both ways. Weights are ``exp(-(d / sigma)^2)`` of the
    distance with ``sigma`` 1.5 sensor spacings, edges below 0.1 dropped (the DCRNN
    thresholded Gaussian kernel).
    """
    N = num_nodes
    num_roads = max(1, min(round(np.sqrt(N) / 2.5), N // 4))
    num_corridors = 2 * num_roads
    sizes = np.full(num_corridors, N // num_corridors)
    sizes[: N % num_corridors] += 1
    corridor = np.repeat(np.arange(num_corridors), sizes)
    pos = np.arange(N) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # index in travel order
    road = corridor // 2
    forward = corridor % 2 == 0

    side_km = max(15.0, 30.0 * np.sqrt(N / 64))
    length_km = 1.1 * side_km
    theta = np.pi * (rng.permutation(num_roads) + rng.uniform(0, 1, num_roads)) / num_roads
    along = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    across = np.stack([-np.sin(theta), np.cos(theta)], axis=1)
    centre = rng.normal(0.0, side_km / 6, (num_roads, 2))
    bend_amp = rng.uniform(0.0, side_km / 15, num_roads)
    bend_freq = rng.uniform(0.5, 1.5, num_roads)
    bend_phase = rng.uniform(0.0, 2 * np.pi, num_roads)
    frac = (pos + 0.5 + rng.uniform(-0.3, 0.3, N)) / sizes[corridor]
    u = length_km * np.where(forward, frac - 0.5, 0.5 - frac)
    lateral = bend_amp[road] * np.sin(
        2 * np.pi * bend_freq[road] * u / length_km + bend_phase[road]
    )
    lateral += np.where(forward, 0.05, -0.05)  # the two carriageways lie 100 m apart
    xy = centre[road] + u[:, None] * along[road] + lateral[:, None] * across[road]
    heading = np.where(forward, 1.0, -1.0)[:, None] * along[road]
    inbound = np.einsum("nd,nd->n", heading, -xy) > 0

    is_freeway = rng.uniform(size=num_roads) < 0.6
    is_freeway[0] = True
    lanes = np.where(is_freeway, rng.integers(3, 6, num_roads), rng.integers(2, 4, num_roads))
    compass = np.array(["N", "E", "S", "W"])[
        np.round(np.degrees(np.arctan2(heading[:, 0], heading[:, 1])) % 360 / 90).astype(int) % 4
    ]
    number = (np.arange(num_roads) + 1).astype(str)
    road_name = np.where(is_freeway, "Route ", "Avenue ").astype(object) + number
    meta = pd.DataFrame(
        {
            "road": road_name[road],
            "direction": compass,
            "corridor": corridor,
            "position": pos,
            "road_type": np.where(is_freeway, "freeway", "arterial")[road],
            "lanes": lanes[road],
        }
    )

    spacing = length_km / sizes.mean()
    downstream = [np.flatnonzero(pos + k < sizes[corridor]) for k in (1, 2)]
    i_c = np.concatenate(downstream)
    j_c = np.concatenate([idx + k for idx, k in zip(downstream, (1, 2), strict=True)])
    i_j, j_j = _pairs_within(xy, 0.6 * spacing)
    cross = road[i_j] != road[j_j]
    i_j, j_j = i_j[cross], j_j[cross]
    src = np.concatenate([i_c, i_j, j_j])
    dst = np.concatenate([j_c, j_j, i_j])
    junction = np.arange(len(src)) >= len(i_c)
    weight = np.exp(-((np.hypot(*(xy[src] - xy[dst]).T) / (1.5 * spacing)) ** 2))
    keep = weight >= 0.1
    return _RoadNetwork(
        xy, side_km, meta, corridor, inbound, src[keep], dst[keep], weight[keep], junction[keep]
    )


def synthetic_traffic(
    num_nodes: int = 64,
    num_days: float = 14,
    interval_minutes: int = 5,
    seed: int = 0,
    drift: float = 0.0,
    drift_start: float = 0.7,
    incident_rate: float = 0.03,
    dropout_rate: float = 0.03,
    start: str = "2024-01-01",
) -> STData:
    """Speeds of road sensors around a fictional city (METR-LA / PEMS-BAY style).

    Each sensor's *load* ``s`` (about 1 at capacity) follows a commuter demand with
    weekday rush hours near 08:00 (heavier on inbound carriageways) and 17:30
    (heavier outbound), a light weekend midday bump (Sundays lightest), heavier
    near the city centre. The demand varies by day (20 % per carriageway, rush
    hours some 20 minutes earlier or later city-wide), with city-wide rain spells
    (more load, lower free-flow speed), slow random fluctuations per sensor (one
    hour) and incidents. Load travels downstream along the edges: every step, a
    sensor's load is pulled 65 % of the way towards the load its upstream
    neighbours had ``lag = round(10 min / interval)`` steps earlier (at least 1),
    smoothed with a 10-minute time constant, so disturbances reach the next sensor
    about ``lag`` steps later (the simulated traffic carries them with the flow;
    the upstream-moving shock waves of real jams are not modelled). Speed is
    free-flow speed (about 65 mph on freeways, 42 on arterials) reduced a little
    with load and sharply (by 45-67 %) once the load passes capacity, plus 1 mph
    noise.

    Parameters
    ----------
    num_nodes
        Number of sensors ``N`` (at least 4).
    num_days
        Length of the series in days; ``T = num_days * 1440 / interval_minutes`` steps.
    interval_minutes
        Step length; must divide a day.
    seed
        Seed of ``np.random.default_rng``; the same seed and parameters give the same data.
    drift
        Strength ``0..1`` of the change after ``drift_start``: rush hours up to 1.5 h
        later, demand up to 35 % higher, free-flow speed up to 12 % lower.
    drift_start
        Fraction of the series after which the drift ramps in (over one day).
    incident_rate
        Incidents per sensor per day; each adds load 0.8-2.0 at one sensor for
        20-120 minutes, which spreads downstream.
    dropout_rate
        Target fraction of missing readings (``0..0.5``; overlapping gaps make the
        actual fraction a little lower): half in short gaps of 1-6 steps, half in
        outages of 2 hours to 2 days (at most a quarter of the series). Every sensor
        keeps at least one reading.
    start
        First timestamp.

    Returns
    -------
    STData
        ``values`` ``[T, N, 1]`` float32 speed in mph, ``0.0`` and ``mask`` False
        where missing (``null_value=0.0``); ``channels=["speed"]``; ``adjacency``
        (directed, COO); ``coords`` ``[N, 2]`` (lat, lon); ``node_meta`` with road,
        direction, corridor, position, road_type, lanes, free_flow_mph;
        ``extras["synthetic"]`` with the parameters, ``lag_steps`` and ``incidents``:
        lists ``node``, ``start``, ``length`` (rows, cut at the end of the series) and
        ``size`` (added load) of every incident, the ground truth of anomaly detection
        (:func:`incident_labels`).
    """
    _require(
        isinstance(num_nodes, (int, np.integer)) and num_nodes >= 4,
        f"num_nodes={num_nodes!r} is too small",
        "use at least 4 sensors (two carriageways of two)",
    )
    _require(
        incident_rate >= 0, f"incident_rate={incident_rate!r} is negative", "use 0 for no incidents"
    )
    _require(
        0.0 <= dropout_rate <= 0.5,
        f"dropout_rate={dropout_rate!r} is outside [0, 0.5]",
        "use e.g. 0.03 (3 % missing) or 0 for complete data",
    )
    tl = _timeline(num_days, interval_minutes, start, drift, drift_start)
    # one stream per component, so that e.g. incident_rate changes the incidents and nothing else
    graph_rng, param_rng, incident_rng, dynamics_rng, noise_rng, dropout_rng = (
        np.random.default_rng(seed).spawn(6)
    )
    N, T, per_day = int(num_nodes), len(tl.timestamps), tl.steps_per_day
    net = _road_network(N, graph_rng)
    show = T * N >= _PROGRESS_ELEMS

    # --- per-sensor parameters
    is_freeway = (net.meta["road_type"] == "freeway").to_numpy()
    lanes = net.meta["lanes"].to_numpy()
    free_flow = np.where(is_freeway, 58.0, 36.0) + 2.0 * lanes + param_rng.normal(0, 1.5, N)
    free_flow = free_flow.astype(np.float32)
    drop_depth = (np.where(is_freeway, 0.62, 0.5) + param_rng.uniform(-0.05, 0.05, N)).astype(
        np.float32
    )
    central = np.exp(-((np.hypot(*net.xy.T) / (net.side_km / 3)) ** 2))  # 1 at the city centre
    base = ((0.85 + 0.75 * central) * param_rng.lognormal(0.0, 0.2, N)).astype(np.float32)
    morning_w = np.where(net.inbound, 1.0, 0.55).astype(np.float32)
    evening_w = np.where(net.inbound, 0.55, 1.0).astype(np.float32)
    num_corridors = int(net.corridor.max()) + 1
    num_day_rows = int(tl.day[-1]) + 1
    day_factor = param_rng.lognormal(0.0, 0.2, (num_day_rows, num_corridors)).astype(np.float32)
    day_shift = param_rng.normal(0.0, 0.3, num_day_rows)  # hours: some days the rush comes early
    # city-wide rain: an hourly AR(1) latent with a 4-hour time constant, interpolated to the
    # steps; it rains (about 16 % of the time) while the latent is above one sd
    step_hours = np.arange(T) * (interval_minutes / 60)
    hourly = _ar1(int(step_hours[-1]) + 2, 1, 4.0, 1.0, param_rng)[:, 0]
    rain = np.maximum(np.interp(step_hours, np.arange(len(hourly)), hourly) - 1.0, 0.0)
    rain = rain.astype(np.float32)

    # --- per-step demand profiles [T]: weekday commute, weekend midday; drift shifts and grows them
    h = tl.hours - 1.5 * tl.ramp - day_shift[tl.day]
    weekday = (tl.dow < 5).astype(np.float32)
    weekday_factor = np.array([1.0, 1.03, 1.04, 1.04, 1.08, 0.0, 0.0], np.float32)[tl.dow]
    weekend = np.array([0, 0, 0, 0, 0, 1.0, 0.8], np.float32)[tl.dow]  # Sundays are lightest
    growth = (1.0 + 0.35 * tl.ramp) * (1.0 + 0.3 * rain)
    morning = growth * (weekday_factor * _bump(h, 8.0, 1.0) + weekend * 0.2 * _bump(h, 11.0, 2.0))
    evening = growth * (weekday_factor * _bump(h, 17.5, 1.3) + weekend * 0.2 * _bump(h, 16.0, 2.0))
    midday = growth * (weekday * 0.3 * _bump(h, 13.0, 2.5) + weekend * 0.4 * _bump(h, 14.0, 3.0))

    speed = np.empty((T, N), np.float32)  # holds the demand, then the load, then the speed
    for sl in _row_blocks(T, N):
        dm = day_factor[tl.day[sl]][:, net.corridor]
        speed[sl] = (
            dm
            * base
            * (morning_w * morning[sl, None] + evening_w * evening[sl, None] + midday[sl, None])
        )

    n_inc = incident_rng.poisson(incident_rate * N * T / per_day)
    inc_node = incident_rng.integers(0, N, n_inc)
    inc_start = incident_rng.integers(0, T, n_inc)
    inc_len = np.round(incident_rng.uniform(20, 120, n_inc) / interval_minutes).astype(np.int64)
    inc_len = np.maximum(inc_len, 1)
    inc_size = incident_rng.uniform(0.8, 2.0, n_inc).astype(np.float32)
    for rows, nodes, run in _run_cells(inc_node, inc_start, inc_len, T):
        np.add.at(speed, (rows, nodes), inc_size[run])
    incidents = {  # the ground truth of anomaly detection (see incident_labels)
        "node": inc_node.tolist(),
        "start": inc_start.tolist(),
        "length": np.minimum(inc_len, T - inc_start).tolist(),  # as applied: cut at the end
        "size": inc_size.astype(float).tolist(),
    }

    # --- load dynamics: a loop over time, vectorized over sensors and edges
    lag = max(1, round(10 / interval_minutes))
    keep = np.exp(-interval_minutes / 10.0)  # load smoothing, 10-minute time constant
    persist = np.exp(-interval_minutes / 60.0)  # slow fluctuations, one-hour time constant
    fluct_sd = 0.3
    # only part of the traffic turns at junctions; upstream load = sum over in-edges of share * load
    flow_w = np.where(net.junction, 0.3, 1.0) * net.weight
    in_w = np.bincount(net.dst, flow_w, N)
    edge_share = flow_w / in_w[net.dst]
    # a sensor is pulled halfway to its upstream load; one without upstream neighbours is not
    pull = np.where(in_w > 0, 0.65, 0.0)
    fluct = dynamics_rng.standard_normal(N).astype(np.float32) * fluct_sd
    load = None
    for sl in tqdm(_row_blocks(T, N), desc="synthetic-traffic load", disable=not show, leave=False):
        innov = dynamics_rng.standard_normal((sl.stop - sl.start, N), np.float32)
        innov *= fluct_sd * np.sqrt(1 - persist**2)
        for k, row in enumerate(innov):
            t = sl.start + k
            fluct *= persist
            fluct += row
            local = speed[t] * (1.0 + fluct)
            lagged = speed[t - lag] if t >= lag else local
            target = local + pull * (np.bincount(net.dst, edge_share * lagged[net.src], N) - local)
            load = target if load is None else keep * load + (1.0 - keep) * target
            speed[t] = load

    # --- load -> speed: a gentle slope below capacity (load 1), a sharp drop beyond it
    ff_scale = (1.0 - 0.12 * tl.ramp) * (1.0 - 0.1 * np.minimum(rain, 1.5))
    for sl in _row_blocks(T, N):
        s = np.maximum(speed[sl], 0.0)
        slow = 0.06 * np.minimum(s, 2.0) + drop_depth / (1.0 + np.exp((1.0 - s) / 0.15))
        noise = noise_rng.standard_normal(s.shape, np.float32)  # 1 mph
        speed[sl] = np.clip(free_flow * ff_scale[sl, None] * (1.0 - slow) + noise, 3.0, 85.0)

    # --- dropouts: short gaps and long outages, stored as 0.0 and masked
    mask = np.ones((T, N, 1), bool)
    if dropout_rate > 0:
        long_lo = max(1, round(120 / interval_minutes))
        long_hi = max(long_lo, min(2 * per_day, T // 4))
        n_short = dropout_rng.poisson(dropout_rate / 2 * T * N / 3.5)
        n_long = dropout_rng.poisson(dropout_rate / 2 * T * N / ((long_lo + long_hi) / 2))
        short = dropout_rng.integers(1, 7, n_short)
        lengths = np.concatenate([short, dropout_rng.integers(long_lo, long_hi + 1, n_long)])
        gaps = dropout_rng.integers(0, N, len(lengths)), dropout_rng.integers(0, T, len(lengths))
        for rows, nodes, _ in _run_cells(*gaps, lengths, T):
            mask[rows, nodes, 0] = False
        silent = np.flatnonzero(~mask.any(axis=(0, 2)))
        mask[dropout_rng.integers(0, T, len(silent)), silent, 0] = (
            True  # every sensor keeps a reading
        )
        for sl in _row_blocks(T, N):
            speed[sl][~mask[sl, :, 0]] = 0.0

    lat = _CITY_CENTRE[0] + net.xy[:, 1] / _KM_PER_DEG_LAT
    lon = _CITY_CENTRE[1] + net.xy[:, 0] / (_KM_PER_DEG_LAT * np.cos(np.radians(_CITY_CENTRE[0])))
    meta = net.meta.assign(free_flow_mph=np.round(free_flow, 1))
    missing = 1.0 - np.count_nonzero(mask) / mask.size
    description = (
        f"Synthetic road traffic: speed in mph from {N} loop sensors on {num_corridors // 2} roads "
        f"(both directions) around a fictional city, every {interval_minutes} minutes for "
        f"{num_days:g} days from {tl.timestamps[0]:%Y-%m-%d}. Weekday rush hours near 08:00 "
        "(inbound) and 17:30 (outbound) cut speeds sharply, weekends are lighter, congestion "
        f"travels downstream about {lag * interval_minutes} minutes per sensor, incidents cause "
        f"sudden local slowdowns, and {missing:.1%} of readings are missing (stored as 0)."
    )
    if drift > 0:
        description += (
            f" After {drift_start:.0%} of the series the pattern drifts (strength {drift:g}): "
            "rush hours come later, demand is higher and free-flow speed lower."
        )
    params = dict(
        num_nodes=N,
        num_days=num_days,
        interval_minutes=interval_minutes,
        seed=seed,
        drift=drift,
        drift_start=drift_start,
        incident_rate=incident_rate,
        dropout_rate=dropout_rate,
        start=start,
    )
    return STData(
        values=speed[:, :, None],
        mask=mask,
        timestamps=tl.timestamps,
        freq=f"{interval_minutes}min",
        node_ids=[f"S{i:05d}" for i in range(N)],
        channels=["speed"],
        adjacency=Adjacency(net.src, net.dst, net.weight, N),
        coords=np.stack([lat, lon], axis=1),
        node_meta=meta,
        description=description,
        name="synthetic-traffic",
        null_value=0.0,
        extras={
            "synthetic": {
                "generator": "synthetic-traffic",
                **params,
                "lag_steps": lag,
                "incidents": incidents,
            }
        },
    )


def incident_labels(data: STData) -> np.ndarray:
    """``[T, N]`` bool: True at the rows and sensors where an incident of the generator
    adds load (``data.extras["synthetic"]["incidents"]`` of :func:`synthetic_traffic`).

    Only the incident's own sensor is marked, for the rows it lasts; the congestion it
    causes downstream (``lag_steps`` later) is not. Data sliced in time
    (:meth:`STData.time_slice`) keep the extras of the whole series: label the whole
    series and slice the labels alike (a slice is refused).
    """
    facts = (data.extras or {}).get("synthetic", {})
    incidents = facts.get("incidents")
    if facts.get("generator") != "synthetic-traffic" or incidents is None:
        raise DataError(
            f"{data.name!r} records no incidents of the synthetic-traffic generator",
            "generate the data with synthetic_traffic (spec synthetic-traffic:...)",
        )
    T, N = data.num_steps, data.num_nodes
    generated = int(round(facts["num_days"] * 1440 / facts["interval_minutes"]))
    if T != generated or N != facts["num_nodes"]:
        raise DataError(
            f"{data.name!r} has {T} rows and {N} nodes; its incidents were drawn for "
            f"{generated} rows and {facts['num_nodes']} nodes",
            "label the whole generated series, then slice the labels",
        )
    labels = np.zeros((T, N), bool)
    node = np.asarray(incidents["node"], np.int64)
    start = np.asarray(incidents["start"], np.int64)
    length = np.asarray(incidents["length"], np.int64)
    run, rows = _expand_runs(start, length)
    labels[rows, node[run]] = True
    return labels


# ---------------------------------------------------------------------------- grid
_HOTSPOT_KINDS = ("business", "residential", "leisure")


def _blur(x: np.ndarray) -> np.ndarray:
    """Binomial ``[1, 2, 1] / 4`` smoothing over the last two (grid) axes, edges repeated."""
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    rows = 0.25 * p[..., :-2, :] + 0.5 * p[..., 1:-1, :] + 0.25 * p[..., 2:, :]
    return 0.25 * rows[..., :-2] + 0.5 * rows[..., 1:-1] + 0.25 * rows[..., 2:]


def _cell_gauss(height: int, width: int, row: float, col: float, sd: float) -> np.ndarray:
    """``[H, W]``: ``exp(-d^2 / (2 sd^2))`` of each cell's distance ``d`` to ``(row, col)``."""
    d2 = (np.arange(height)[:, None] - row) ** 2 + (np.arange(width)[None, :] - col) ** 2
    return np.exp(-0.5 * d2 / sd**2)


def synthetic_grid(
    height: int = 16,
    width: int = 16,
    num_days: float = 14,
    interval_minutes: int = 30,
    seed: int = 0,
    drift: float = 0.0,
    drift_start: float = 0.7,
    num_hotspots: int = 4,
    start: str = "2024-01-01",
) -> STData:
    """Crowd inflow / outflow counts on a city grid (TaxiBJ / BikeNYC style).

    Hotspot 0 is a business district (inflow peaks near 08:30, outflow near 17:30 on
    weekdays); the others alternate residential areas (the reverse) and leisure
    areas (inflow near 20:00, outflow near 22:30, strongest on Fridays and weekends).
    Every hotspot's centre circles over the day (business and residential by 10 %
    and 5 % of the grid size, leisure by 30 %), so activity moves across the grid.
    A background proportional to a smooth population density follows the daylight
    hours. Each hotspot's intensity varies by day (25 %) and slowly within the day
    (a three-hour random fluctuation of 25 %); 30 % of a step's outflow arrives as
    inflow in the neighbouring cells one step later. Peak mean counts are about 400
    per cell and step in the business district, 30 in the daytime background.
    Counts are Poisson draws of that intensity. ``drift`` moves the business
    district by up to a quarter of the grid width, delays the rhythm by up to 1.5
    hours and raises activity by up to 40 %.

    Parameters
    ----------
    height, width
        Grid size ``H x W`` (at least 2 x 2); nodes are the cells, row-major.
    num_days, interval_minutes, seed, drift, drift_start, start
        As in :func:`synthetic_traffic`.
    num_hotspots
        Number of hotspots (at least 1).

    Returns
    -------
    STData
        ``values`` ``[T, H * W, 2]`` float32 non-negative counts, ``channels=["inflow",
        "outflow"]``, ``grid_shape=(H, W)`` (``to_grid()`` gives ``(T, 2, H, W)``),
        4-neighbour grid adjacency, ``coords`` (row, column), ``node_meta`` with row,
        col and zone (the hotspot kind covering the cell, or "background"), all
        observed.
    """
    for name, value in (("height", height), ("width", width)):
        _require(
            isinstance(value, (int, np.integer)) and value >= 2,
            f"{name}={value!r} is too small",
            "use a grid of at least 2 x 2 cells",
        )
    _require(
        isinstance(num_hotspots, (int, np.integer)) and num_hotspots >= 1,
        f"num_hotspots={num_hotspots!r} is not a positive integer",
        "use at least 1 hotspot (the business district)",
    )
    tl = _timeline(num_days, interval_minutes, start, drift, drift_start)
    rng = np.random.default_rng(seed)
    T, H, W = len(tl.timestamps), int(height), int(width)
    size = min(H, W)

    kinds = ["business"] + [_HOTSPOT_KINDS[1 + i % 2] for i in range(num_hotspots - 1)]
    is_kind = {k: np.array([kind == k for kind in kinds]) for k in _HOTSPOT_KINDS}
    centre_spread = np.array([H - 1, W - 1], float)
    home = np.where(
        is_kind["business"][:, None],
        centre_spread / 2 + rng.normal(0.0, size / 10, (num_hotspots, 2)),
        rng.uniform(0.15, 0.85, (num_hotspots, 2)) * centre_spread,
    )
    spread = (
        np.select([is_kind["business"], is_kind["residential"]], [0.08, 0.15], 0.1) * size + 0.6
    )
    orbit = np.select([is_kind["business"], is_kind["residential"]], [0.1, 0.05], 0.3) * size
    phase = rng.uniform(0.0, 2 * np.pi, num_hotspots)
    strength = np.select([is_kind["business"], is_kind["residential"]], [400.0, 200.0], 250.0)
    # the business district relocates towards the farther side of the grid under drift
    relocate = is_kind["business"] * np.where(home[:, 1] < (W - 1) / 2, 1.0, -1.0) * 0.25 * (W - 1)

    h = tl.hours - 1.5 * tl.ramp
    weekday = (tl.dow < 5).astype(np.float32)
    weekend = 1.0 - weekday
    growth = 1.0 + 0.4 * tl.ramp
    commute = weekday * np.array([1.0, 1.02, 1.03, 1.02, 0.95, 0, 0], np.float32)[tl.dow]
    going_out = np.array([1.0, 1.0, 1.05, 1.1, 1.3, 1.6, 1.4], np.float32)[tl.dow]
    profiles = {  # kind -> (inflow, outflow) per step [T]
        "business": (
            commute * (_bump(h, 8.5, 1.2) + 0.25 * _bump(h, 13.0, 2.0))
            + weekend * 0.3 * _bump(h, 13.0, 3.0),
            commute * (_bump(h, 17.5, 1.5) + 0.25 * _bump(h, 14.0, 2.0))
            + weekend * 0.3 * _bump(h, 16.0, 3.0),
        ),
        "residential": (
            commute * _bump(h, 18.5, 1.8)
            + weekend * 0.5 * _bump(h, 17.0, 3.0)
            + 0.15 * _bump(h, 13.0, 3.0),
            commute * _bump(h, 7.5, 1.2)
            + weekend * 0.5 * _bump(h, 11.0, 3.0)
            + 0.15 * _bump(h, 12.0, 3.0),
        ),
        "leisure": (going_out * _bump(h, 20.0, 2.0), going_out * _bump(h, 22.5, 1.8)),
    }

    day_factor = rng.lognormal(0.0, 0.25, (int(tl.day[-1]) + 1, num_hotspots))
    fluct = _ar1(T, num_hotspots, 180 / interval_minutes, 0.25, rng)
    level = growth[:, None] * strength * day_factor[tl.day] * np.maximum(1.0 + fluct, 0.0)
    level = level.astype(np.float32)  # [T, K] intensity of each hotspot

    rows, cols = np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32)
    # [T, K] position on each hotspot's daily orbit, by clock time (the drift does not delay it)
    angle = 2 * np.pi * tl.hours[:, None] / 24.0 + phase
    centre_r = np.clip(home[:, 0] + orbit * np.cos(angle), 0, H - 1)
    centre_c = np.clip(home[:, 1] + orbit * np.sin(angle) + relocate * tl.ramp[:, None], 0, W - 1)
    inflow = np.zeros((T, H, W), np.float32)
    outflow = np.zeros((T, H, W), np.float32)
    for k, kind in enumerate(kinds):
        g_r = np.exp(-0.5 * ((rows - centre_r[:, k, None]) / spread[k]) ** 2).astype(np.float32)
        g_c = np.exp(-0.5 * ((cols - centre_c[:, k, None]) / spread[k]) ** 2).astype(np.float32)
        field = g_r[:, :, None] * g_c[:, None, :]
        prof_in, prof_out = profiles[kind]
        inflow += (level[:, k] * prof_in)[:, None, None] * field
        outflow += (level[:, k] * prof_out)[:, None, None] * field

    blobs = rng.uniform(0, 1, (3, 2)) * centre_spread
    density = 0.3 + sum(_cell_gauss(H, W, r, c, 0.2 * size) for r, c in blobs)
    daylight = growth * (0.15 + (1.0 - 0.2 * weekend) * _bump(h, 13.0, 4.5))
    background = (30.0 * daylight[:, None, None] * density).astype(np.float32)
    inflow += background
    outflow += background
    arrivals = 0.3 * _blur(outflow)  # trips leaving a cell end nearby one step later
    inflow[1:] += arrivals[:-1]
    inflow[0] += arrivals[0]  # the step before the series is taken to look like the first

    # drawn in time order, so a drift leaves the counts before drift_start unchanged
    frames = rng.poisson(np.stack([inflow, outflow], axis=1)).astype(np.float32)  # [T, 2, H, W]

    # cells within about one spread of a hotspot's home; where zones overlap, the kind
    # later in this order wins, so the business district is always marked
    zone = np.full((H, W), "background", dtype=object)
    for kind in ("residential", "leisure", "business"):
        for k in np.flatnonzero(is_kind[kind]):
            zone[_cell_gauss(H, W, home[k, 0], home[k, 1], spread[k]) > 0.5] = kind
    cell_r, cell_c = np.divmod(np.arange(H * W), W)
    description = (
        f"Synthetic city crowd flows: inflow and outflow counts on a {H} x {W} grid every "
        f"{interval_minutes} minutes for {num_days:g} days from {tl.timestamps[0]:%Y-%m-%d}. "
        "A business district draws inflow in the morning rush and releases outflow in the "
        "evening, residential areas do the reverse, leisure hotspots fill in the evening (most "
        "on Fridays and weekends), and the hotspots drift across the grid over the day; "
        "weekends have little commuting."
    )
    if drift > 0:
        description += (
            f" After {drift_start:.0%} of the series the pattern drifts (strength {drift:g}): "
            "the business district moves, the daily rhythm comes later and activity grows."
        )
    params = dict(
        height=H,
        width=W,
        num_days=num_days,
        interval_minutes=interval_minutes,
        seed=seed,
        drift=drift,
        drift_start=drift_start,
        num_hotspots=num_hotspots,
        start=start,
    )
    return STData.from_grid(
        frames,
        channels=["inflow", "outflow"],
        timestamps=tl.timestamps,
        freq=f"{interval_minutes}min",
        node_meta=pd.DataFrame({"row": cell_r, "col": cell_c, "zone": zone.ravel()}),
        description=description,
        name="synthetic-grid",
        extras={"synthetic": {"generator": "synthetic-grid", **params, "hotspot_kinds": kinds}},
    )


# ---------------------------------------------------------------------------- registry
_GENERATORS: dict[str, Callable[..., STData]] = {
    "synthetic-traffic": synthetic_traffic,
    "synthetic-grid": synthetic_grid,
}


def generate(name: str, seed: int = 0, **params: Any) -> STData:
    """Generate the built-in synthetic dataset ``name`` (one of :data:`SYNTHETIC_NAMES`).

    ``params`` are the keyword arguments of :func:`synthetic_traffic` or
    :func:`synthetic_grid`; unknown names and parameters raise :class:`DataError`
    listing the valid ones.
    """
    if name not in _GENERATORS:
        raise DataError(
            f"unknown synthetic dataset {name!r}", f"use one of {', '.join(SYNTHETIC_NAMES)}"
        )
    fn = _GENERATORS[name]
    valid = [p for p in inspect.signature(fn).parameters if p != "seed"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise DataError(
            f"unknown parameter(s) {', '.join(unknown)} for {name}",
            f"use seed and any of {', '.join(valid)}",
        )
    logger.debug("generating %s (seed %s) with %s", name, seed, params)
    return fn(seed=seed, **params)
