"""Benchmark the primitive baselines with their standard recipes on the real data.

    python scripts/bench_baselines.py                     # ETT and the graph sets
    python scripts/bench_baselines.py --only ett --seeds 3
    python scripts/bench_baselines.py --only LosLoop --models stid graph_wavenet
    python scripts/bench_baselines.py --only synthetic --epochs 1   # no data files needed

Every run is the engine's ``train`` on ``alignment/<model>/<dataset>/config.yaml`` in its
own run directory ``OUT/<dataset>/<model>/seed<k>`` (:mod:`llm_st.bench.baselines`).
Prints, per dataset, the test metrics (ETT: normalized MSE/MAE at horizon 96 beside the
published figures and the relative gap; graph sets: MAE/RMSE/MAPE at horizons 3/6/12 and
their average, on the original scale) with trainable parameters and training time;
``OUT/summary.json`` holds everything. Datasets whose files are absent (under
``--data-dir``, ``$LLM_ST_DATA`` or ``~/.cache/llm-st/data``) are skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from llm_st.bench.baselines import GROUPS, expand_groups, run_baselines
from llm_st.bench.report import baseline_report
from llm_st.errors import LLMSTError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--only",
        nargs="+",
        default=["ett", "graph"],
        metavar="GROUP|DATASET",
        help=f"groups ({', '.join(GROUPS)}) or dataset names (default: ett graph)",
    )
    p.add_argument(
        "--models",
        nargs="+",
        help="registry names to run (default: the baselines with a recipe for the dataset)",
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per learned model")
    p.add_argument("--epochs", type=int, help="override training.epochs (a quick pass)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override applied to every run (repeatable)",
    )
    p.add_argument("--out", default="runs/bench_baselines", help="parent of the run directories")
    p.add_argument(
        "--data-dir", help="data root (default: $LLM_ST_DATA, then ~/.cache/llm-st/data)"
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (1 on a busy machine)")
    return p.parse_args(argv)


def fresh_root(out: str) -> Path:
    """``out``, or a new time-stamped folder inside it when it already holds anything."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        root = root / time.strftime("%Y%m%d-%H%M%S")
        if root.exists():
            sys.exit(f"bench_baselines.py: {root} exists; choose another --out")
        print(f"{out} is not empty: writing to {root}")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = fresh_root(args.out)
    overrides = list(args.set) + ([f"training.epochs={args.epochs}"] if args.epochs else [])
    summary = {}
    try:
        for result in run_baselines(
            expand_groups(args.only),
            root,
            args.models,
            args.seeds,
            overrides,
            args.data_dir,
            progress=lambda line: print(line, flush=True),
        ):
            print(f"\n{baseline_report(result)}", flush=True)
            if not result.skipped:
                summary[result.dataset] = {r["model"]: r for r in result.rows}
    except LLMSTError as exc:
        print(f"bench_baselines.py: error: {exc}", file=sys.stderr)
        return 2
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nrun directories and summary.json: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
