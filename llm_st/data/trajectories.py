"""Trajectories: time-stamped point sequences of moving agents (the survey's trajectory data).

A :class:`Trajectories` holds one row per recorded point, ``agent_id, timestamp, lat,
lon`` and optionally ``poi`` (the place the point belongs to), sorted by time within
each agent. :func:`load_trajectories` reads such a CSV; :func:`synthetic_trajectories`
generates agents that move between home, work and leisure places on daily routines;
:func:`accuracy_at_k` scores ranked next-place predictions (the metric of next-location
prediction, e.g. LLM-Mob, Wang et al. 2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llm_st.errors import DataError, DataNotFoundError

REQUIRED_COLUMNS = ("agent_id", "timestamp", "lat", "lon")
_KM_PER_DEG_LAT = 111.2


@dataclass
class Trajectories:
    """Point sequences of agents.

    Parameters
    ----------
    points
        Data frame with ``agent_id`` (str), ``timestamp`` (datetime64), ``lat``, ``lon``
        (degrees) and optionally ``poi`` (str place id); one row per visit/fix, times
        non-decreasing within each agent.
    places
        Optional data frame ``poi, category, lat, lon``: the places ``poi`` refers to.
    name
        Name of the data set.
    """

    points: pd.DataFrame
    places: pd.DataFrame | None = None
    name: str = "trajectories"

    def __post_init__(self) -> None:
        frame = self.points
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(
                f"{self.name}: trajectory columns {missing} are missing "
                f"(have {list(frame.columns)})",
                f"provide the columns {', '.join(REQUIRED_COLUMNS)} (and optionally poi)",
            )
        frame = frame.reset_index(drop=True).copy()
        frame["agent_id"] = frame["agent_id"].astype(str)
        try:
            frame["timestamp"] = pd.to_datetime(frame["timestamp"])
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"{self.name}: timestamps are not parseable: {exc}",
                "use ISO times such as 2024-01-01 08:30",
            ) from exc
        for col in ("lat", "lon"):
            values = pd.to_numeric(frame[col], errors="coerce")
            if values.isna().any():
                row = int(np.flatnonzero(values.isna().to_numpy())[0])
                raise DataError(
                    f"{self.name}: {col} in row {row} is not a number ({frame[col].iloc[row]!r})",
                    "fix or drop the row",
                )
            frame[col] = values.astype(np.float64)
        if (frame["lat"].abs() > 90).any() or (frame["lon"].abs() > 180).any():
            raise DataError(
                f"{self.name}: lat/lon outside [-90, 90] x [-180, 180]",
                "pass coordinates in degrees, lat before lon",
            )
        if frame["timestamp"].isna().any():
            raise DataError(
                f"{self.name}: some timestamps are missing", "fill or drop the rows without a time"
            )
        # sorted within each agent: equal agents are contiguous after a stable sort by agent
        order = np.argsort(frame["agent_id"].to_numpy(), kind="stable")
        frame = frame.iloc[order].reset_index(drop=True)
        agents = frame["agent_id"].to_numpy()
        times = frame["timestamp"].to_numpy()
        back = (agents[1:] == agents[:-1]) & (times[1:] < times[:-1])
        if back.any():
            i = int(np.flatnonzero(back)[0]) + 1
            raise DataError(
                f"{self.name}: timestamps of agent {agents[i]!r} are not sorted "
                f"({times[i]} comes after {times[i - 1]})",
                "sort the points of each agent by time",
            )
        if "poi" in frame.columns:
            frame["poi"] = frame["poi"].astype(str)
        self.points = frame

    @property
    def agents(self) -> list[str]:
        return list(pd.unique(self.points["agent_id"]))

    def __len__(self) -> int:
        return len(self.points)

    def agent(self, agent_id: str) -> pd.DataFrame:
        """The points of one agent, in time order."""
        rows = self.points[self.points["agent_id"] == str(agent_id)]
        if rows.empty:
            raise DataError(
                f"{self.name}: no agent {agent_id!r}", f"use one of {self.agents[:5]} ..."
            )
        return rows.reset_index(drop=True)

    def place_ids(self, decimals: int = 3) -> pd.Series:
        """The place of every point: ``poi`` where given, else the coordinates rounded to
        ``decimals`` (3 decimals is about 100 m) as ``"lat,lon"``."""
        if "poi" in self.points.columns:
            return self.points["poi"]
        lat = self.points["lat"].round(decimals).map(f"{{:.{decimals}f}}".format)
        lon = self.points["lon"].round(decimals).map(f"{{:.{decimals}f}}".format)
        return lat + "," + lon

    def categories(self) -> dict[str, str]:
        """Place id -> category (from ``places``; empty without it)."""
        if self.places is None:
            return {}
        return dict(
            zip(self.places["poi"].astype(str), self.places["category"].astype(str), strict=True)
        )


def load_trajectories(
    path: str | Path, places: str | Path | None = None, **read_csv_kwargs
) -> Trajectories:
    """Read ``agent_id, timestamp, lat, lon[, poi]`` from a CSV (and places ``poi,
    category, lat, lon`` from a second CSV if given)."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"trajectory file {path} does not exist", "check the path")
    frame = pd.read_csv(path, **read_csv_kwargs)
    place_frame = None
    if places is not None:
        places = Path(places)
        if not places.is_file():
            raise DataNotFoundError(f"places file {places} does not exist", "check the path")
        place_frame = pd.read_csv(places)
        need = [c for c in ("poi", "category") if c not in place_frame.columns]
        if need:
            raise DataError(
                f"{places}: columns {need} are missing", "provide poi and category columns"
            )
    return Trajectories(frame, place_frame, name=path.stem)


def synthetic_trajectories(
    num_agents: int = 20,
    num_days: int = 7,
    seed: int = 0,
    start: str = "2024-01-01",
    centre: tuple[float, float] = (34.05, -118.25),
) -> Trajectories:
    """Agents moving between home, work and leisure places on daily routines.

    The city has one home per agent, ``max(2, num_agents // 4)`` work places and
    ``max(4, num_agents // 2)`` leisure places scattered within ~10 km of ``centre``.
    Each agent has a work place and three favourite leisure places (visited with
    probabilities 0.6 / 0.3 / 0.1). Weekdays: leave home around 08:00 for work, lunch at
    a leisure place with probability 0.3 (back to work after), after work a leisure
    place with probability 0.4, then home. Weekends: one or two leisure outings from
    home. Times vary by up to 24 minutes; one point is recorded per arrival, with ~20 m
    GPS noise.

    Returns
    -------
    Trajectories
        ``points`` with ``agent_id, timestamp, lat, lon, poi`` and ``places`` with
        ``poi, category, lat, lon``. The same seed gives the same data.
    """
    if num_agents < 1 or num_days < 1:
        raise DataError(
            f"num_agents={num_agents}, num_days={num_days} must be positive",
            "use e.g. 20 agents over 7 days",
        )
    rng = np.random.default_rng(seed)
    counts = {
        "home": num_agents,
        "work": max(2, num_agents // 4),
        "leisure": max(4, num_agents // 2),
    }
    names, cats = [], []
    for cat, n in counts.items():
        names += [f"{cat}_{i}" for i in range(n)]
        cats += [cat] * n
    km = rng.normal(0.0, 4.0, (len(names), 2))
    lat = centre[0] + km[:, 0] / _KM_PER_DEG_LAT
    lon = centre[1] + km[:, 1] / (_KM_PER_DEG_LAT * np.cos(np.radians(centre[0])))
    places = pd.DataFrame({"poi": names, "category": cats, "lat": lat, "lon": lon})
    where = {p: (a, b) for p, a, b in zip(names, lat, lon, strict=True)}
    day0 = pd.Timestamp(start).normalize()

    rows: list[tuple[str, pd.Timestamp, str]] = []
    for a in range(num_agents):
        home = f"home_{a}"
        work = f"work_{rng.integers(counts['work'])}"
        favourites = [f"leisure_{i}" for i in rng.choice(counts["leisure"], 3, replace=False)]
        for d in range(num_days):
            day = day0 + pd.Timedelta(days=d)
            draws = iter(favourites[i] for i in rng.choice(3, size=2, p=[0.6, 0.3, 0.1]))
            if day.day_of_week < 5:
                plan = [(8.0, work)]
                if rng.random() < 0.3:
                    plan += [(12.5, next(draws)), (13.5, work)]
                if rng.random() < 0.4:
                    plan += [(18.0, next(draws)), (20.5, home)]
                else:
                    plan += [(17.8, home)]
            else:
                plan = [(11.0, next(draws)), (14.0, home)]
                if rng.random() < 0.5:
                    plan += [(17.0, next(draws)), (20.0, home)]
            # jitter below half the shortest gap of a plan (1 h), so visits stay in order
            jitter = np.clip(rng.normal(0.0, 0.25, len(plan)), -0.4, 0.4)
            for (hour, place), shift in zip(plan, jitter, strict=True):
                minutes = int(round((hour + shift) * 60))
                rows.append((f"agent_{a}", day + pd.Timedelta(minutes=minutes), place))

    agent_ids, stamps, pois = zip(*rows, strict=True)
    noise = rng.normal(0.0, 0.02 / _KM_PER_DEG_LAT, (len(rows), 2))
    coords = np.array([where[p] for p in pois]) + noise
    points = pd.DataFrame(
        {
            "agent_id": agent_ids,
            "timestamp": stamps,
            "lat": coords[:, 0],
            "lon": coords[:, 1],
            "poi": pois,
        }
    )
    return Trajectories(points, places, name="synthetic-trajectories")


def accuracy_at_k(ranked: Sequence[Sequence[str]], truth: Sequence[str], k: int = 1) -> float:
    """Fraction of cases whose true place is among the first ``k`` of the ranked predictions.

    Parameters
    ----------
    ranked
        Per case, predicted place ids, most likely first (may be shorter than ``k``).
    truth
        Per case, the true place id.
    k
        Cut-off (Acc@1, Acc@5, ...).
    """
    if len(ranked) != len(truth):
        raise DataError(
            f"{len(ranked)} predictions for {len(truth)} true places",
            "pass one ranked list per case",
        )
    if k < 1:
        raise DataError(f"k={k} must be at least 1", "use e.g. k=1 or k=5")
    if not len(truth):
        return float("nan")
    hits = [str(t) in [str(p) for p in list(r)[:k]] for r, t in zip(ranked, truth, strict=True)]
    return float(np.mean(hits))
