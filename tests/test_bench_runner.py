"""The benchmark runner: plans expand to the expected cells, every cell is an engine run
directory, results come from the cells' files, finished cells are never run again, failed
and unfinished ones are retried on resume, few-shot trains on the first fraction of the
training windows only, zero-shot transfer reads nothing of the target's training rows,
and several worker processes give the results of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import llm_st.bench.plan as plan_mod
from llm_st.bench.plan import PROTOCOLS, Cell, Plan, Protocol
from llm_st.bench.runner import COLUMNS, collect_results, describe_cell, read_cell, run_plan
from llm_st.data.scalers import Scaler, make_scaler
from llm_st.data.splits import Split, train_fraction_split
from llm_st.engine import build_task
from llm_st.errors import ConfigError

ALIGNMENT = Path(__file__).resolve().parents[1] / "alignment"
SMOKE = ALIGNMENT / "benchmarks" / "smoke.yaml"
SPEC = "synthetic-traffic:num_nodes=8,num_days=4,interval_minutes=60"
BUDGET = {
    "training.max_steps": 3,
    "training.eval_every": 1,  # a checkpoint every step, so an interrupted cell can resume
    "training.patience": None,
    "training.batch_size": 8,
    "training.device": "cpu",
}
# 96 rows: train [0, 67), validation [67, 76), test [76, 96); history 6, horizon 3
HISTORY, HORIZON, N_TRAIN = 6, 3, 67


def small_plan(methods=("dlinear", "last_value"), **extra) -> Plan:
    raw = {
        "name": "test",
        "datasets": [
            {
                "name": "syn",
                "spec": SPEC,
                "recipes": "synthetic-traffic",
                "set": [f"data.history={HISTORY}", f"data.horizon={HORIZON}", "data.horizons=null"],
            }
        ],
        "methods": list(methods),
        "protocols": ["full"],
        "seeds": [0, 1],
        "budget": BUDGET,
        **extra,
    }
    return Plan.from_dict(raw)


def files_of(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time (ns)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_train_fraction_split_keeps_the_papers_first_windows():
    # the Time-LLM / GPT4TS loaders: border2 = (8640 - 336) * percent // 100 + 336
    ett = Split((0, 8640), (8640, 11520), (11520, 14400))
    assert train_fraction_split(ett, 0.05, 336).train == (0, (8640 - 336) * 5 // 100 + 336)
    assert train_fraction_split(ett, 0.1, 336).train == (0, 1166)
    assert train_fraction_split(ett, 0.1, 336).val == ett.val
    assert train_fraction_split(ett, 0.1, 336).test == ett.test
    assert train_fraction_split(ett, 1.0, 336) == ett
    # floor of the rounded product: 100 * 0.29 is 28.999... in floating point
    assert train_fraction_split(Split((0, 100), (100, 110), (110, 120)), 0.29).train == (0, 29)
    with pytest.raises(ConfigError, match="fraction"):
        train_fraction_split(ett, 0.0, 336)


def test_plan_expands_to_stable_cells_and_checks_keys():
    plan = small_plan()
    cells = plan.cells()
    assert [(c.method, c.seed) for c in cells] == [
        ("dlinear", 0),
        ("dlinear", 1),
        ("last_value", 0),
        ("last_value", 1),
    ]
    # readable slug + a hash of the cell, stable across processes and versions
    assert cells[0].cell_id == "syn_full_dlinear_s0-" + cells[0].cell_id.rsplit("-", 1)[1]
    assert Cell.from_dict(cells[0].to_dict()).cell_id == cells[0].cell_id
    assert Plan.from_dict(plan.to_dict()) == plan
    assert [c.cell_id for c in Plan.from_dict(plan.to_dict()).cells()] == [c.cell_id for c in cells]
    with pytest.raises(ConfigError, match="did you mean 'seeds'"):
        Plan.from_dict({**plan.to_dict(), "seed": [0]})
    with pytest.raises(ConfigError, match="unknown key 'fractions'"):
        Plan.from_dict({**plan.to_dict(), "protocols": [{"name": "few_shot", "fractions": 0.1}]})
    with pytest.raises(ConfigError, match="unknown protocol"):
        Plan.from_dict({**plan.to_dict(), "protocols": ["imputation-x"]})
    with pytest.raises(ConfigError, match="no dataset 'ETTh9'"):
        Plan.from_dict(
            {
                **plan.to_dict(),
                "protocols": [{"name": "zero_shot_transfer", "pairs": [["syn", "ETTh9"]]}],
            }
        )


@pytest.mark.parametrize(
    "name", ["ett_long_term", "few_shot", "zero_shot_transfer", "traffic_graph", "smoke"]
)
def test_shipped_plans_resolve_every_recipe(name):
    plan = Plan.load(ALIGNMENT / "benchmarks" / f"{name}.yaml")
    cells = plan.cells()
    rows = [describe_cell(plan, cell, i) for i, cell in enumerate(cells)]
    assert len({r["cell_id"] for r in rows}) == len(cells)
    expected = {
        "ett_long_term": 2 * 4 * 3 * 3,
        "few_shot": 2 * (3 + 3) * 3,
        "zero_shot_transfer": 2 * 3 * 3,
        "traffic_graph": 3 * (4 * 3 + 2),  # last_value, historical_average: one seed
        # forecasting: 3 protocols x 2 methods x 2 seeds; beyond (one seed): shift 2 drifts
        # x 4 objectives, imputation 2 masks x 4 methods, anomaly STID (2 seeds) and 1
        "smoke": 3 * 2 * 2 + 2 * 4 + 2 * 4 + 3,
    }
    assert len(cells) == expected[name]
    if name == "ett_long_term":
        assert {(r["history"], r["horizon"]) for r in rows} == {
            (336, h) for h in (96, 192, 336, 720)
        }
    if name == "few_shot":
        modes = {r["backbone_mode"] for r in rows if r["model"] == "gpt4ts"}
        assert modes == {"pretrained", "random_init", "llm2attn", "none"}


def test_plan_overrides():
    plan = Plan.load(SMOKE, ["seeds=[3]", "budget.training.max_steps=2"])
    assert plan.seeds == [3] and plan.budget["training.max_steps"] == 2
    # the plan's seeds, except for methods with seeds of their own
    assert {c.seed for c in plan.cells() if plan.method(c.method).seeds is None} == {3}
    recipe = plan.protocol("full").recipe(plan.cells()[0])
    assert recipe.training.max_steps == 2 and recipe.training.seed == 3
    with pytest.raises(ConfigError, match="sets no plan key"):
        Plan.load(SMOKE, ["sedes=[3]"])


def test_two_methods_two_seeds_write_the_expected_cells_and_rows(tmp_path):
    plan = small_plan()
    table = run_plan(plan, tmp_path, progress=False)
    ids = [c.cell_id for c in plan.cells()]
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == sorted(ids)
    assert (tmp_path / "plan.yaml").is_file()
    # one row per cell, horizon step (h3, avg) and metric
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 4 * 2 * 4
    assert set(table.status) == {"done"} and table.value.notna().all()
    assert list(dict.fromkeys(table.cell_id)) == ids
    assert set(table.horizon_step) == {"h3", "avg"}
    assert set(table.metric) == {"mae", "mse", "rmse", "mape"}
    assert (table.horizon == HORIZON).all() and table.dataset.eq("syn").all()
    assert table.loc[table.method == "last_value", "trainable_params"].eq(0).all()
    assert table.loc[table.method == "dlinear", "trainable_params"].gt(0).all()
    # the CSV and parquet hold what metrics.json holds, bit for bit
    for frame in (
        pd.read_csv(tmp_path / "results.csv"),
        pd.read_parquet(tmp_path / "results.parquet"),
    ):
        assert len(frame) == len(table)
        for row in frame.itertuples():
            metrics = json.loads((tmp_path / row.run_dir / "metrics.json").read_text())
            assert row.value == metrics["test"][row.horizon_step][row.metric]
            assert row.total_params == metrics["params"]["total"]
            assert row.train_time_s == metrics["train_time_s"]
    # every cell is an engine run directory, loadable on its own
    cell = json.loads((tmp_path / "cells" / ids[0] / "cell.json").read_text())
    assert cell["status"] == "done" and cell["attempt"] == 1
    assert (tmp_path / "cells" / ids[0] / "model.safetensors").is_file()
    pd.testing.assert_frame_equal(collect_results(tmp_path), table)
    # a second run into the same folder needs --resume; with it, nothing runs again
    with pytest.raises(ConfigError, match="--resume"):
        run_plan(plan, tmp_path, progress=False)
    before = files_of(tmp_path / "cells")
    run_plan(plan, tmp_path, resume=True, progress=False)
    assert files_of(tmp_path / "cells") == before
    # a resumed run must be the same plan
    with pytest.raises(ConfigError, match="plan differs.*seeds"):
        run_plan(small_plan(seeds=[0]), tmp_path, resume=True, progress=False)


def test_failures_and_interruptions_resume_only_what_did_not_finish(tmp_path, monkeypatch):
    broken = {"name": "broken", "recipe": "dlinear", "set": ["model.params.bogus=1"]}
    plan = small_plan(methods=("dlinear", "last_value", broken))
    ids = {(c.method, c.seed): c.cell_id for c in plan.cells()}
    real_train = plan_mod.train
    calls: list[tuple[str, bool]] = []

    def train(recipe, out_dir, resume=False, overwrite=False, **kw):
        key = f"{recipe.model.name}-{recipe.training.seed}"
        calls.append((Path(out_dir).name, resume))
        if os.environ.get("BENCH_FLAKY") == key:
            raise RuntimeError("flaky\nsecond line")
        stop = os.environ.get("BENCH_CTRL_C") == key

        def on_step(step):
            if stop and step == 2:
                raise KeyboardInterrupt

        return real_train(recipe, out_dir, resume=resume, overwrite=overwrite, on_step=on_step)

    monkeypatch.setattr(plan_mod, "train", train)

    def stop_after(n):
        done = []

        def hook(cell, status):
            done.append(cell.cell_id)
            if len(done) == n:
                raise KeyboardInterrupt

        return hook

    def status(key):
        return json.loads((tmp_path / "cells" / ids[key] / "cell.json").read_text())

    # 1: dlinear seed 1 fails (its cause outside the plan), the run is stopped after 3 cells
    monkeypatch.setenv("BENCH_FLAKY", "dlinear-1")
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, tmp_path, progress=False, on_cell_done=stop_after(3))
    assert [status(k)["status"] for k in [("dlinear", 0), ("dlinear", 1), ("last_value", 0)]] == [
        "done",
        "failed",
        "done",
    ]
    error = status(("dlinear", 1))["error"]
    assert error["type"] == "RuntimeError" and error["message"] == "flaky"
    assert "flaky" in error["traceback"]
    assert not (tmp_path / "cells" / ids[("last_value", 1)]).exists()
    partial = pd.read_csv(tmp_path / "results.csv")  # written before the interrupt propagated
    assert partial.groupby("cell_id").size().to_dict() == {
        ids[("dlinear", 0)]: 8,
        ids[("dlinear", 1)]: 1,
        ids[("last_value", 0)]: 8,
    }
    finished = {
        k: files_of(tmp_path / "cells" / ids[k]) for k in [("dlinear", 0), ("last_value", 0)]
    }

    # 2: the failed cell runs again and is interrupted (Ctrl-C) inside its training
    monkeypatch.delenv("BENCH_FLAKY")
    monkeypatch.setenv("BENCH_CTRL_C", "dlinear-1")
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, tmp_path, resume=True, progress=False)
    assert calls == [(ids[("dlinear", 1)], False)]  # no checkpoint: started over in place
    assert status(("dlinear", 1))["status"] == "running"

    # 3: the unfinished cell resumes from its checkpoint; the cells not started run; the
    # broken method fails on both seeds without stopping the others
    monkeypatch.delenv("BENCH_CTRL_C")
    calls.clear()
    table = run_plan(plan, tmp_path, resume=True, progress=False)
    assert [c[0] for c in calls] == [
        ids[k] for k in [("dlinear", 1), ("last_value", 1), ("broken", 0), ("broken", 1)]
    ]
    assert calls[0][1] is True
    assert status(("dlinear", 1))["status"] == "done"
    assert status(("dlinear", 1))["attempt"] == 3
    assert status(("broken", 0))["status"] == "failed"
    assert status(("broken", 0))["error"]["type"] == "ConfigError"
    assert "bogus" in status(("broken", 0))["error"]["message"]
    for key, files in finished.items():
        assert files_of(tmp_path / "cells" / ids[key]) == files
    assert len(table) == 4 * 8 + 2
    failed = table[table.status == "failed"]
    assert set(failed.method) == {"broken"} and failed.value.isna().all()
    assert failed.error.str.contains("bogus").all()

    # the resumed cell ends where an uninterrupted run does
    fresh = tmp_path / "fresh"
    run_plan(plan, fresh, only="*dlinear_s1*", progress=False)
    resumed = json.loads((tmp_path / "cells" / ids[("dlinear", 1)] / "metrics.json").read_text())
    uninterrupted = json.loads((fresh / "cells" / ids[("dlinear", 1)] / "metrics.json").read_text())
    assert resumed["test"] == uninterrupted["test"]

    # 4: only the still failing cells run again
    calls.clear()
    done_now = {k: files_of(tmp_path / "cells" / ids[k]) for k in ids if k[0] != "broken"}
    run_plan(plan, tmp_path, resume=True, progress=False)
    assert sorted(c[0] for c in calls) == sorted([ids[("broken", 0)], ids[("broken", 1)]])
    assert status(("broken", 1))["attempt"] == 2
    for key, files in done_now.items():
        assert files_of(tmp_path / "cells" / ids[key]) == files


def test_only_selects_cells_by_pattern(tmp_path, capsys):
    plan = small_plan()
    table = run_plan(plan, tmp_path, only="*last_value_s*", progress=True)
    assert set(table.method) == {"last_value"} and set(table.seed) == {0, 1}
    # not a terminal: one progress line per finished cell instead of a bar
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    found = [re.match(r"\[(\d)/2\] (\S+): done \(\d+ s\)$", x).groups() for x in lines]
    assert [k for k, _ in found] == ["1", "2"]  # counted over the cells run
    assert sorted(c for _, c in found) == sorted(table.cell_id.unique())
    with pytest.raises(ConfigError, match="matches none"):
        run_plan(plan, tmp_path / "other", only="*nothing*", progress=False)


def test_a_protocol_can_be_added(tmp_path, monkeypatch):
    class HalfHistory(Protocol):
        name = "half_history"

        def overrides(self, cell):
            return [f"data.history={HISTORY // 2}"]

    monkeypatch.setitem(PROTOCOLS, "half_history", HalfHistory)
    plan = small_plan(methods=("last_value",), protocols=["half_history"], seeds=[0])
    table = run_plan(plan, tmp_path, progress=False)
    assert set(table.protocol) == {"half_history"} and set(table.status) == {"done"}
    cell = json.loads((tmp_path / table.run_dir[0] / "cell.json").read_text())
    assert cell["history"] == HISTORY // 2


# ------------------------------------------------------------------ the smoke plan
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The shipped smoke plan, run once in this process."""
    out = tmp_path_factory.mktemp("smoke")
    plan = Plan.load(SMOKE)
    return plan, out, run_plan(plan, out, progress=False)


def test_smoke_plan_runs_every_protocol(smoke):
    plan, out, table = smoke
    assert set(table.status) == {"done"}
    assert table.groupby("protocol").cell_id.nunique().to_dict() == {
        "full": 4,
        "few_shot": 4,
        "zero_shot_transfer": 4,
        "shift": 8,  # tests/test_bench_protocols.py checks these three
        "imputation": 8,
        "anomaly": 3,
    }
    assert set(table.loc[table.protocol == "few_shot", "protocol_param"]) == {"0.1"}
    transfer = table[table.protocol == "zero_shot_transfer"]
    assert set(transfer.dataset) == {"synthetic-a->synthetic-b"}
    for row in transfer.itertuples():  # scored by the transfer's metrics.json
        scores = json.loads((out / row.run_dir / "transfer" / "metrics.json").read_text())
        assert row.value == scores["test"][row.horizon_step][row.metric]


def test_few_shot_trains_on_the_first_windows_with_full_validation_and_test(smoke):
    plan, out, table = smoke
    cells = plan.cells()
    few = next(c for c in cells if c.protocol == "few_shot")
    full = next(
        c for c in cells if c.protocol == "full" and (c.method, c.seed) == (few.method, few.seed)
    )
    task_few = build_task(plan.protocol("few_shot").recipe(few).data)
    task_full = build_task(plan.protocol("full").recipe(full).data)
    assert task_full.split.train == (0, N_TRAIN)
    keep = HISTORY + int((N_TRAIN - HISTORY) * 0.1)  # 12 rows: 4 of the 59 training windows
    assert task_few.split.train == (0, keep)
    starts = task_few.index("train").starts
    np.testing.assert_array_equal(starts, np.arange(keep - HISTORY - HORIZON + 1))
    assert starts.max() + HISTORY + HORIZON == keep  # the last target row is keep - 1
    for part in ("val", "test"):
        np.testing.assert_array_equal(task_few.index(part).starts, task_full.index(part).starts)
    # the scaler is the full setting's (fit on the whole training split, as the papers'
    # loaders), and the run saved it; scaler_fit=trained fits it on the rows trained on
    saved = Scaler.load(out / "cells" / few.cell_id / "scaler.json")
    for scaler in (task_few.scaler, saved):
        np.testing.assert_allclose(scaler.shift, task_full.scaler.shift)
        np.testing.assert_allclose(scaler.scale, task_full.scaler.scale)
    strict = dataclasses.replace(plan.protocol("few_shot").recipe(few).data, scaler_fit="trained")
    data = task_few.data.time_slice(0, keep)
    expected = make_scaler("standard", "global", True).fit(data.values, data.mask)
    np.testing.assert_allclose(build_task(strict).scaler.shift, expected.shift)
    np.testing.assert_allclose(build_task(strict).scaler.scale, expected.scale)
    assert not np.allclose(task_full.scaler.shift, expected.shift)
    # the run itself: the full protocol's test windows, a few training batches
    few_metrics = json.loads((out / "cells" / few.cell_id / "metrics.json").read_text())
    full_metrics = json.loads((out / "cells" / full.cell_id / "metrics.json").read_text())
    assert few_metrics["num_test_windows"] == full_metrics["num_test_windows"]
    assert few_metrics["test"] != full_metrics["test"]


def test_zero_shot_transfer_reads_nothing_of_the_targets_training_rows(
    smoke, tmp_path, monkeypatch
):
    plan, out, table = smoke
    real_load = plan_mod.load_data
    loaded = []

    def poisoned(spec, **kw):  # the target's training rows turned to garbage
        data = real_load(spec, **kw)
        loaded.append(spec)
        data.values[:N_TRAIN] = 1e6
        return data

    monkeypatch.setattr(plan_mod, "load_data", poisoned)
    again = run_plan(plan, tmp_path, only="*zero_shot_transfer*", progress=False)
    assert set(loaded) == {plan.dataset("synthetic-b").spec}
    expected = table[table.protocol == "zero_shot_transfer"].reset_index(drop=True)
    pd.testing.assert_series_equal(again.value, expected.value)
    for cell_id in again.cell_id.unique():
        scores = json.loads(
            (tmp_path / "cells" / cell_id / "transfer" / "metrics.json").read_text()
        )
        assert scores["scaler"] == "run"  # the source run's scaler, fit on the source only
        assert scores["target_split"]["train"] == [0, N_TRAIN]
        assert scores["rows_read"][0] >= N_TRAIN  # the test windows start in validation rows
        assert scores["num_test_windows"] == 96 - 76 - HORIZON + 1  # targets in rows [76, 96)


@pytest.mark.multiprocess
def test_two_workers_give_the_results_of_one(smoke, tmp_path):
    plan, out, table = smoke
    two = run_plan(plan, tmp_path, workers=2, progress=False)
    keep = ["cell_id", "horizon_step", "metric", "value", "trainable_params", "status"]
    pd.testing.assert_frame_equal(two[keep], table[keep])


def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} (gone)"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_sigterm_stops_the_worker_processes(tmp_path):
    plan = small_plan(methods=("dlinear",))
    raw = plan.to_dict()
    raw["budget"] = {
        **raw["budget"],
        "training.max_steps": 100000,
        "training.eval_every": None,
        "training.epochs": 100000,
    }  # fmt: skip  (runs until stopped)
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "llm_st.cli", "bench", str(plan_file), "--out", str(out),
           "--workers", "2"]  # fmt: skip
    bench = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = [read_cell(d) for d in (out / "cells").glob("*")] if out.exists() else []
        if len(states) == 2 and all(s and s["status"] == "running" for s in states):
            break
        time.sleep(0.5)
    else:
        bench.kill()
        pytest.fail("the two cells did not start: " + bench.stderr.read())
    workers = _children(bench.pid)
    assert len(workers) >= 2  # the two cell processes (and the resource tracker)
    bench.send_signal(signal.SIGTERM)
    assert bench.wait(timeout=60) != 0
    alive = workers
    for _ in range(50):  # a terminated worker may take a moment to exit
        alive = [p for p in alive if _running(p)]
        if not alive:
            break
        time.sleep(0.2)
    assert [_cmdline(p) for p in alive] == []  # no worker runs on without its parent
    # the cells stay unfinished (a resume runs them again) and the results are written
    assert {read_cell(d)["status"] for d in (out / "cells").glob("*")} == {"running"}
    assert set(pd.read_csv(out / "results.csv").status) == {"running"}
