"""Averages over seeds: one row of a benchmark table from the runs of several seeds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

COSTS = ("train_time_s", "total_time_s", "time_per_epoch_s", "samples_per_s", "seconds")


def mean_over_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row for the runs of one configuration (same model, mode and data), one per seed.

    Parameters
    ----------
    runs
        Rows of a runner (:func:`llm_st.engine.train`, :func:`~llm_st.bench.ablation.run_modes`),
        each with ``test`` metrics (``{"avg": {mae, mse, rmse, mape}, "h3": ...}``).

    Returns
    -------
    dict
        The fields of the first run, with ``test`` the mean of each test metric over the
        runs, ``test_std`` its population standard deviation (``ddof=0``), each cost of
        :data:`COSTS` the run has averaged over the runs where it is not None (None when
        it is None in all), and ``seeds`` the number of runs.
    """
    first = runs[0]
    test = {
        k: {m: [r["test"][k][m] for r in runs] for m in first["test"][k]} for k in first["test"]
    }
    row = dict(first)
    row["test"] = {k: {m: float(np.mean(v)) for m, v in d.items()} for k, d in test.items()}
    row["test_std"] = {k: {m: float(np.std(v)) for m, v in d.items()} for k, d in test.items()}
    for key in COSTS:
        if key in first:
            values = [r[key] for r in runs if r[key] is not None]
            row[key] = float(np.mean(values)) if values else None
    row["seeds"] = len(runs)
    return row
