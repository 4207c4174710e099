"""Trajectories: loader checks, synthetic routines, next-place prompts and accuracy@k."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest

from llm_st.data.trajectories import (
    Trajectories,
    accuracy_at_k,
    load_trajectories,
    synthetic_trajectories,
)
from llm_st.errors import DataError, DataNotFoundError
from llm_st.prompting import next_place_examples, render


def test_loader_round_trip_and_validation(tmp_path):
    traj = synthetic_trajectories(num_agents=3, num_days=2, seed=1)
    path = tmp_path / "points.csv"
    traj.points.to_csv(path, index=False)
    back = load_trajectories(path)
    pd.testing.assert_frame_equal(back.points, traj.points, check_dtype=False)

    frame = traj.points.drop(columns=["lon"])
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"columns \['lon'\] are missing"):
        load_trajectories(tmp_path / "bad.csv")
    swapped = traj.points.copy()
    rows = swapped.index[swapped["agent_id"] == "agent_1"][:2]
    swapped.loc[rows, "timestamp"] = swapped.loc[rows[::-1], "timestamp"].to_numpy()
    with pytest.raises(DataError, match="agent 'agent_1' are not sorted"):
        Trajectories(swapped)
    with pytest.raises(DataError, match="outside"):
        Trajectories(traj.points.assign(lat=120.0))
    with pytest.raises(DataNotFoundError):
        load_trajectories(tmp_path / "missing.csv")


def test_synthetic_routines():
    traj = synthetic_trajectories(num_agents=12, num_days=7, seed=0)
    again = synthetic_trajectories(num_agents=12, num_days=7, seed=0)
    pd.testing.assert_frame_equal(traj.points, again.points)
    assert not traj.points.equals(synthetic_trajectories(num_agents=12, num_days=7, seed=1).points)
    assert len(traj.agents) == 12
    points = traj.points
    category = points["poi"].map(traj.categories())
    weekday = points["timestamp"].dt.day_of_week < 5
    # weekday mornings go to work at about 08:00 (within the 24-minute jitter)
    first = points[weekday].groupby([points["agent_id"], points["timestamp"].dt.date]).head(1)
    assert set(first["poi"].map(traj.categories())) == {"work"}
    hours = first["timestamp"].dt.hour + first["timestamp"].dt.minute / 60
    assert hours.between(7.6, 8.4).all()
    # every agent goes home to its own home, and weekends have no work
    homes = points[category == "home"].groupby("agent_id")["poi"].nunique()
    assert (homes == 1).all()
    assert not (category[~weekday] == "work").any()
    # points lie within ~50 m of their place
    places = traj.places.set_index("poi")
    d_lat = (points["lat"] - points["poi"].map(places["lat"])).abs() * 111.2
    assert d_lat.max() < 0.1


def test_accuracy_at_k_by_hand():
    ranked = [["a", "b", "c"], ["b", "a"], ["c"], []]
    truth = ["a", "a", "b", "c"]
    assert accuracy_at_k(ranked, truth, 1) == 0.25
    assert accuracy_at_k(ranked, truth, 2) == 0.5
    assert accuracy_at_k(ranked, truth, 5) == 0.5
    with pytest.raises(DataError):
        accuracy_at_k(ranked, truth[:2], 1)


def test_next_place_examples_and_template():
    traj = synthetic_trajectories(num_agents=6, num_days=7, seed=2)
    examples = next_place_examples(traj, num_recent=4, k=3)
    visits = traj.points
    per_agent = visits.groupby("agent_id").size()
    assert len(examples) == int((per_agent - 4).clip(lower=0).sum())
    variables, truth = examples[0]
    agent = visits[visits["agent_id"] == variables["agent_id"]].reset_index(drop=True)
    assert [v["place"] for v in variables["recent"]] == list(agent["poi"][:4])
    assert truth == agent["poi"][4]
    counts = Counter(agent["poi"][:4])
    assert {p["place"]: p["count"] for p in variables["frequent"]} == dict(counts)
    text = render("next_place", **variables)
    assert f"Agent {variables['agent_id']} visits these places most often:" in text
    assert text.count("\n- ") == 4 and "Answer with the 3 most likely place ids" in text
    assert text.rstrip().endswith("Answer:")


def test_routines_make_next_place_predictable():
    """A first-order Markov ranking of each agent's own transitions scores well above
    guessing among the agent's places on the synthetic routines."""
    traj = synthetic_trajectories(num_agents=10, num_days=14, seed=0)
    examples = next_place_examples(traj, num_recent=1, min_history=20)
    transitions: dict[tuple[str, str], Counter] = defaultdict(Counter)
    ranked, truth = [], []
    last_agent = None
    for variables, place in examples:
        agent, prev = variables["agent_id"], variables["recent"][-1]["place"]
        if agent != last_agent:  # learn from the visits before the first example of the agent
            last_agent = agent
            pois = traj.agent(agent)["poi"].tolist()[:20]
            for a, b in zip(pois[:-1], pois[1:], strict=True):
                transitions[(agent, a)][b] += 1
        ranked.append([p for p, _ in transitions[(agent, prev)].most_common()])
        truth.append(place)
        transitions[(agent, prev)][place] += 1
    places_per_agent = np.mean([len(v["frequent"]) for v, _ in examples])
    assert accuracy_at_k(ranked, truth, 1) > 2 / places_per_agent  # 0.50 vs 0.22 by guessing
    assert accuracy_at_k(ranked, truth, 3) > 0.8
