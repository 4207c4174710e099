"""The resumable benchmark runner: a :class:`~llm_st.bench.plan.Plan` into a folder of runs
and one long results table.

Layout of ``out_dir``::

    plan.yaml                 the plan as run (after --set overrides); a resumed run must match
    cells/<cell_id>/          the engine's run directory of one cell (recipe.yaml, metrics.json,
                              model.safetensors, checkpoints/, ...), plus
        cell.json             the cell and its status: "running" when it starts, then "done" or
                              "failed" (with the error), written atomically and last
        transfer/metrics.json the target's scores of a zero_shot_transfer cell
    results.parquet           one row per (cell, horizon step, metric), see collect_results
    results.csv               the same table

A cell whose ``cell.json`` says ``done`` is never run again. ``resume=True`` runs the
failed and unfinished ones (and those not started): an interrupted run continues from its
latest checkpoint where it has one, else starts over in place. Without ``resume`` a
non-empty ``out_dir`` is refused.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from llm_st.bench.plan import Cell, Plan, Protocol
from llm_st.engine.rundir import atomic_write_bytes, atomic_write_json
from llm_st.errors import ConfigError

logger = logging.getLogger("llm_st")

CELL_FILE = "cell.json"
PLAN_FILE = "plan.yaml"
COLUMNS = (
    "dataset",
    "protocol",
    "protocol_param",
    "method",
    "backbone_mode",
    "seed",
    "horizon",
    "horizon_step",
    "metric",
    "value",
    "trainable_params",
    "total_params",
    "train_time_s",
    "peak_memory_mb",
    "tokens_processed",
    "status",
    "cell_id",
    "run_dir",
    "error",
)
"""Columns of the results table, in order."""
TOKEN_KEYS = ("tokens_processed", "tokens_seen", "tokens")
"""Keys of a run's metrics.json counting the tokens a text LM trained on (first found)."""


def cell_dir(out_dir: str | Path, cell: Cell | str) -> Path:
    """``out_dir/cells/<cell_id>``: the run directory of ``cell``."""
    return Path(out_dir) / "cells" / (cell if isinstance(cell, str) else cell.cell_id)


def read_cell(path: str | Path) -> dict[str, Any] | None:
    """The ``cell.json`` of a cell directory, or None (none, or unreadable)."""
    try:
        return json.loads((Path(path) / CELL_FILE).read_text())
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------ one cell
def describe_cell(plan: Plan, cell: Cell, index: int) -> dict[str, Any]:
    """The cell's row labels (``cell.json`` without its status): resolves its recipe, so
    a recipe error raises here, before anything runs."""
    protocol = plan.protocol(cell.protocol)
    recipe = protocol.recipe(cell)
    backbone = recipe.model.backbone or {}
    return {
        "cell_id": cell.cell_id,
        "index": index,
        "dataset": protocol.dataset_label(cell),
        "protocol": cell.protocol,
        "protocol_param": protocol.param_label(cell, recipe),
        "method": cell.method,
        "model": recipe.model.name,
        "backbone_mode": backbone.get("mode", plan.method(cell.method).backbone_mode),
        "seed": cell.seed,
        "history": recipe.data.history,
        "horizon": recipe.data.horizon,
        "metrics_file": protocol.metrics_file,
        "cell": cell.to_dict(),
    }


def _error(exc: BaseException) -> dict[str, str]:
    lines = str(exc).strip().splitlines()
    tail = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return {
        "type": type(exc).__name__,
        "message": (lines[0] if lines else "")[:500],
        "traceback": "".join(tail)[-3000:],
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_cell(
    plan: Plan,
    cell: Cell,
    info: dict[str, Any],
    out_dir: str | Path,
    protocol: type[Protocol] | None = None,
) -> dict[str, Any]:
    """Run one cell into its directory and write its ``cell.json`` (last); return it.

    An exception (``Exception``) fails the cell: ``status: failed`` with ``error`` (type,
    one-line message, traceback tail). Anything else (KeyboardInterrupt) propagates and
    leaves it ``running``: unfinished, run again by a resumed benchmark. ``protocol``:
    the protocol's class (default: the registered one), passed along to worker processes.
    """
    folder = cell_dir(out_dir, cell)
    before = read_cell(folder) if folder.is_dir() else None
    retry = folder.is_dir()
    folder.mkdir(parents=True, exist_ok=True)
    proto = protocol(plan) if protocol is not None else plan.protocol(cell.protocol)
    status = {
        **info,
        "status": "running",
        "attempt": (before or {}).get("attempt", 0) + 1,
        "started": _now(),
    }
    atomic_write_json(folder / CELL_FILE, status)
    began = time.perf_counter()
    try:
        proto.run(cell, folder, resume=retry)
        proto.score(cell, folder)  # the score must be readable for the cell to be done
        status["status"] = "done"
    except Exception as exc:  # noqa: BLE001 - a failed cell must not stop the others
        status.update(status="failed", error=_error(exc))
        logger.warning("cell %s failed: %s: %s", cell.cell_id, type(exc).__name__, exc)
    status.update(seconds=time.perf_counter() - began, finished=_now())
    atomic_write_json(folder / CELL_FILE, status)
    return status


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# ------------------------------------------------------------------ the output folder
def _diff(old: Any, new: Any) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return [] if old == new else ["(the whole plan)"]


def _check_out_dir(plan: Plan, out: Path, resume: bool) -> bool:
    """Whether ``out`` holds this plan's run (resumed); raise if it may not be used."""
    saved = plan.to_dict()
    path = out / PLAN_FILE
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file", "choose a directory")
    if out.is_dir() and any(out.iterdir()):
        if not resume:
            raise ConfigError(
                f"{str(out)!r} is not empty (an earlier benchmark run?)",
                "pass --resume to continue it (finished cells are kept; failed and unfinished "
                "ones run again), or choose another --out",
            )
        if not path.is_file():
            raise ConfigError(
                f"{str(out)!r} holds no {PLAN_FILE}, so it is no benchmark run to resume",
                "choose an empty or new --out",
            )
        old = yaml.safe_load(path.read_text())
        if old != saved:
            raise ConfigError(
                f"the plan differs from the one {str(out)!r} was started with "
                f"(at {', '.join(_diff(old, saved))})",
                "resume with the same plan and --set overrides, or run it into another --out",
            )
        return True
    return False


def _selected(cells: list[Cell], only: str | Sequence[str] | None) -> list[Cell]:
    if not only:
        return cells
    patterns = [only] if isinstance(only, str) else list(only)
    chosen = [c for c in cells if any(fnmatch.fnmatchcase(c.cell_id, p) for p in patterns)]
    if not chosen:
        example = ", ".join(c.cell_id for c in cells[:3])
        raise ConfigError(
            f"--only {' '.join(patterns)!r} matches none of the plan's {len(cells)} cells",
            f"match cell ids such as {example} (fnmatch patterns, e.g. '*few_shot*')",
        )
    return chosen


# ------------------------------------------------------------------ the runner
def run_plan(
    plan: Plan,
    out_dir: str | Path,
    resume: bool = False,
    only: str | Sequence[str] | None = None,
    workers: int = 1,
    progress: bool = True,
    on_cell_done: Callable[[Cell, dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Run every cell of ``plan`` (those matching ``only``) into ``out_dir``; return the
    results table (:func:`collect_results`), also written as ``results.parquet`` and
    ``results.csv``.

    Parameters
    ----------
    resume
        Continue the benchmark in ``out_dir`` (which must have been started with the same
        plan): cells ``done`` are kept, failed and unfinished ones run again (from their
        latest checkpoint where they have one), cells not started run. Without it a
        non-empty ``out_dir`` is refused.
    only
        fnmatch pattern(s) over cell ids (e.g. ``"ETTh1_few_shot*"``); the others are
        skipped (and stay as they are).
    workers
        Cells run in this many spawned processes at once, each with
        ``torch.set_num_threads(max(1, cores // workers))``; 1 runs them in this process.
        Every cell is seeded by its own seed, so results do not depend on it.
    progress
        A progress bar over the cells on a terminal; elsewhere (a log file) one line per
        finished cell on stderr.
    on_cell_done
        Called in this process with the cell and its ``cell.json`` content after each
        finished (done or failed) cell.

    Every cell's recipe is resolved before any runs: a recipe error raises a ConfigError
    naming the cell. A cell that fails while running is recorded and the others go on.
    An interruption (KeyboardInterrupt, or SIGTERM as SystemExit) stops the worker
    processes and leaves the running cells unfinished; the results of the finished ones
    are written before it propagates.

    Peak memory: the engine's per-run CUDA peak on a GPU; on the CPU the process's peak
    resident memory, which with several cells per process is that of all the cells it
    ran so far (an upper bound).
    """
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be at least 1", "use e.g. --workers 2")
    out = Path(out_dir)
    cells = plan.cells()
    chosen = _selected(cells, only)
    index = {c.cell_id: i for i, c in enumerate(cells)}
    resumed = _check_out_dir(plan, out, resume)
    todo: list[tuple[Cell, dict[str, Any]]] = []
    problems = []
    for cell in chosen:
        before = read_cell(cell_dir(out, cell))
        if before is not None and before.get("status") == "done":
            continue
        try:
            todo.append((cell, describe_cell(plan, cell, index[cell.cell_id])))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(
            f"{len(problems)} cell(s) have no valid recipe: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            "fix the plan (methods' recipe / set, datasets' set, budget)",
        )
    if not resumed:
        out.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(plan.to_dict(), sort_keys=False)
        atomic_write_bytes(out / PLAN_FILE, text.encode())
    logger.info(
        "bench %s: %d cells, %d to run (%d finished before)",
        plan.name,
        len(chosen),
        len(todo),
        len(chosen) - len(todo),
    )
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(todo),
        desc=plan.name,
        unit="cell",
        disable=not (progress and sys.stderr.isatty()) or not todo,
    )

    count = iter(range(1, len(todo) + 1))

    def finished(cell: Cell, status: dict[str, Any]) -> None:
        k = next(count)
        bar.update(1)
        bar.set_postfix_str(f"{cell.cell_id}: {status['status']}", refresh=False)
        logger.info("cell %s: %s (%.1f s)", cell.cell_id, status["status"], status["seconds"])
        if progress and bar.disable:  # not a terminal (a log file): one line per cell
            print(
                f"[{k}/{len(todo)}] {cell.cell_id}: {status['status']} ({status['seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        if on_cell_done is not None:
            on_cell_done(cell, status)

    try:
        with _stop_on_sigterm():
            if workers == 1 or len(todo) <= 1:
                for cell, info in todo:
                    finished(cell, run_cell(plan, cell, info, out))
            else:
                _run_in_pool(plan, todo, out, workers, finished)
    except (KeyboardInterrupt, SystemExit):
        bar.close()
        collect_results(out, write=True)
        raise
    bar.close()
    return collect_results(out, write=True)


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler's stop) raises SystemExit in the main thread, so
    the worker processes are stopped and the results written as on Ctrl-C, instead of the
    workers running on without their parent."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_in_pool(
    plan: Plan,
    todo: list[tuple[Cell, dict[str, Any]]],
    out: Path,
    workers: int,
    finished: Callable[[Cell, dict[str, Any]], None],
) -> None:
    threads = max(1, available_cores() // workers)
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads,),
    )
    try:
        futures = {
            pool.submit(run_cell, plan, cell, info, out, type(plan.protocol(cell.protocol))): cell
            for cell, info in todo
        }
        pending = set(futures)
        broken = 0
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                cell = futures[future]
                try:
                    status = future.result()
                except BrokenProcessPool as exc:
                    status = read_cell(cell_dir(out, cell))
                    if status is None or status.get("status") != "running":
                        broken += 1  # never started: runs on resume
                        continue
                    status.update(status="failed", error=_error(exc), seconds=0.0)
                    status["error"]["message"] = (
                        "the worker process running the cell died (killed for memory?)"
                    )
                    atomic_write_json(cell_dir(out, cell) / CELL_FILE, status)
                finished(cell, status)
        if broken:
            logger.warning("the worker pool broke: %d cells did not run (resume)", broken)
    except BaseException:
        # stop the cells in flight too: they stay unfinished and run again on resume
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        raise
    pool.shutdown(wait=True)


# ------------------------------------------------------------------ the results table
def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _rows(folder: Path, cell: dict[str, Any]) -> list[dict[str, Any]]:
    """The table rows of one cell directory (its ``cell.json`` is ``cell``)."""
    status = cell.get("status", "running")
    base = {key: cell.get(key) for key in ("dataset", "protocol", "protocol_param", "method")}
    base.update(
        backbone_mode=cell.get("backbone_mode"),
        seed=cell.get("seed"),
        horizon=cell.get("horizon"),
        status=status,
        cell_id=cell.get("cell_id", folder.name),
        run_dir=str(Path("cells") / folder.name),
        error=(cell.get("error") or {}).get("message"),
    )
    run: dict[str, Any] = {}
    if (folder / "metrics.json").is_file():
        run = json.loads((folder / "metrics.json").read_text())
    params = run.get("params") or {}
    peak = run.get("peak_cuda_mb")
    base.update(
        trainable_params=params.get("trainable"),
        total_params=params.get("total"),
        train_time_s=_number(run.get("train_time_s")),
        peak_memory_mb=_number(peak if peak is not None else run.get("peak_rss_mb")),
        tokens_processed=next((run[k] for k in TOKEN_KEYS if run.get(k) is not None), None),
    )
    empty = [{**base, "horizon_step": None, "metric": None, "value": np.nan}]
    if status != "done":
        return empty
    path = folder / cell.get("metrics_file", "metrics.json")
    if not path.is_file():
        return [{**empty[0], "error": f"{path.name} of the finished cell is missing"}]
    scores = json.loads(path.read_text())
    return [
        {**base, "horizon_step": step, "metric": metric, "value": _number(value)}
        for step, block in (scores.get("test") or {}).items()
        for metric, value in block.items()
    ] or empty


def collect_results(out_dir: str | Path, write: bool = False) -> pd.DataFrame:
    """The results table of a benchmark folder, from its cells' files only.

    One row per (cell, horizon step, metric) of every finished cell (the ``test`` block
    of its metrics file: the run's ``metrics.json``, or ``transfer/metrics.json`` for a
    transfer cell), and one row with ``metric`` and ``value`` empty per failed or
    unfinished cell. Columns: :data:`COLUMNS` (``horizon_step``: ``avg``, ``h3``, ...;
    ``run_dir`` relative to ``out_dir``; ``error``: the one-line message of a failed
    cell). Rows follow the plan's cell order. With ``write``, also writes
    ``results.parquet`` and ``results.csv`` into ``out_dir``.
    """
    out = Path(out_dir)
    cells = []
    for folder in sorted((out / "cells").glob("*")) if (out / "cells").is_dir() else []:
        info = read_cell(folder)
        if folder.is_dir() and info is not None:
            cells.append((info.get("index", 1 << 30), folder.name, folder, info))
    rows = [row for *_, folder, info in sorted(cells) for row in _rows(folder, info)]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for name in ("seed", "horizon", "trainable_params", "total_params", "tokens_processed"):
        table[name] = table[name].astype("Int64")
    for name in ("value", "train_time_s", "peak_memory_mb"):
        table[name] = table[name].astype("float64")
    if write:
        out.mkdir(parents=True, exist_ok=True)
        table.to_parquet(out / "results.parquet", index=False)
        table.to_csv(out / "results.csv", index=False)
    return table
