"""Benchmark the transfer adapters against Tan et al.'s ablations, beside strong baselines.

    python scripts/bench_transfer.py                          # ETTh1 and synthetic-traffic
    python scripts/bench_transfer.py --only ETTh1 --adapters gpt4ts --seeds 3
    python scripts/bench_transfer.py --backbone /models/gpt2 --max-steps 2000 --eval-stride 1
    python scripts/bench_transfer.py --mae /models/vit-mae-base     # adds VisionTS

Reads the plan (datasets, adapters, modes, baselines, budget) from
``alignment/benchmarks/transfer_ablations.yaml``. Every adapter runs its recipe
``alignment/<adapter>/<dataset>/config.yaml`` once per backbone mode (pretrained,
random_init, llm2attn, none) with everything else equal; each baseline runs its recipe
once. All rows of a dataset share one budget (steps, batch, training-window stride,
scored-window stride, backbone blocks, learning rate), printed first. Prints per dataset
the test metrics (ETTh1: normalized MSE / MAE over the 96 steps; graph data: masked MAE /
RMSE / MAPE on the original scale at horizons 3 / 6 / 12 and on average), parameters,
time per epoch and training samples per second, then each ablation's error relative to
the pretrained run. Results go to a new folder inside ``--out`` (earlier results are never
overwritten): one JSON per run, ``summary.json`` and ``report.txt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from llm_st.backbones.ablations import BACKBONE_MODES  # noqa: E402
from llm_st.backbones.hub import resolve_alias  # noqa: E402
from llm_st.bench.ablation import (  # noqa: E402
    MODE_NOTES,
    BenchDataset,
    Budget,
    TransferBench,
    run_transfer_dataset,
)
from llm_st.bench.machine import pick_num_threads  # noqa: E402
from llm_st.bench.report import transfer_report  # noqa: E402
from llm_st.config import recipes_root  # noqa: E402
from llm_st.data import load  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--plan",
        default=str(recipes_root() / "benchmarks" / "transfer_ablations.yaml"),
        help="benchmark YAML (default: %(default)s)",
    )
    p.add_argument("--only", nargs="+", metavar="DATASET", help="datasets of the plan to run")
    p.add_argument("--adapters", nargs="+", help="adapters to run (default: the plan's)")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=BACKBONE_MODES,
        help="backbone modes (default: the plan's four)",
    )
    p.add_argument("--no-baselines", action="store_true", help="skip the baseline rows")
    p.add_argument("--max-steps", type=int, help="optimizer steps of every run")
    p.add_argument("--epochs", type=int, help="epochs of every run instead of a step budget")
    p.add_argument("--batch-size", type=int, help="training windows per step")
    p.add_argument("--stride", type=int, help="step between training windows")
    p.add_argument("--eval-stride", type=int, help="step between scored windows (1: all)")
    p.add_argument("--num-layers", type=int, help="backbone blocks kept")
    p.add_argument("--lr", type=float, help="learning rate of every row")
    p.add_argument(
        "--backbone",
        help="language backbone: a GPT-2 / LLaMA / BERT directory (default: the plan's, minilm)",
    )
    p.add_argument("--mae", help="ViT-MAE directory for VisionTS (default: its recipe's)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per run")
    p.add_argument("--threads", default="auto", help="torch CPU threads, or auto (measured)")
    p.add_argument("--out", default="runs/bench_transfer", help="parent of the results folder")
    p.add_argument(
        "--data-dir", help="data root (default: $LLM_ST_DATA, then ~/.cache/llm-st/data)"
    )
    return p.parse_args(argv)


def budget_of(dataset: BenchDataset, args: argparse.Namespace) -> Budget:
    """The dataset's budget with the command line's changes."""
    changes = {
        k: getattr(args, k)
        for k in ("batch_size", "stride", "eval_stride", "num_layers", "lr")
        if getattr(args, k) is not None
    }
    if args.epochs:
        changes.update(epochs=args.epochs, max_steps=None)
    elif args.max_steps:
        changes.update(max_steps=args.max_steps, epochs=None)
    return dataclasses.replace(dataset.budget, **changes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    plan = TransferBench.from_yaml(args.plan)
    root = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    if root.exists():
        sys.exit(f"bench_transfer.py: {root} exists; wait a second or choose another --out")
    root.mkdir(parents=True)
    report, summary, started = [], {}, time.perf_counter()

    def say(text: str = "") -> None:
        print(text, flush=True)
        report.append(text)

    if args.threads == "auto":
        threads, timing = pick_num_threads(sorted({1, min(2, os.cpu_count() or 1)}))
        measured = ", ".join(f"{n}: {1000 * s:.0f} ms" for n, s in timing.items())
        say(f"torch threads: {threads} (measured per block-sized step: {measured})")
    else:
        torch.set_num_threads(int(args.threads))
        say(f"torch threads: {torch.get_num_threads()} (--threads)")
    source = args.backbone or plan.backbone.get("source")
    if source:
        say(f"language backbone: {source} -> {resolve_alias(source)}")
    modes = args.modes or plan.modes
    say("modes: " + "; ".join(f"{m} = {MODE_NOTES[m]}" for m in modes))
    for dataset in plan.datasets:
        if args.only and dataset.name not in args.only:
            continue
        budget = budget_of(dataset, args)
        models = dataset.models(args.adapters, not args.no_baselines)
        if not models:
            continue
        spec = dataset.data_spec(models[0])
        data = load(spec, data_dir=args.data_dir)
        say(f"\n== {dataset.name}: {data!r}")
        say(f"budget: {budget.describe()}")
        for model, items in dataset.overrides.items():
            if model in models:
                say(f"  {model}: {' '.join(items)} (every mode)")
        result = run_transfer_dataset(
            plan,
            dataset,
            models,
            data,
            spec,
            root,
            budget=budget,
            modes=modes,
            seeds=args.seeds,
            source=source,
            mae=args.mae,
            progress=lambda line: print(line, flush=True),
        )
        for line in result.skipped:
            say(f"  {line}")
        if not result.rows:
            continue
        say(f"\n{transfer_report(dataset.name, result, budget, args.seeds)}")
        summary[dataset.name] = {
            "budget": dataclasses.asdict(budget),
            "spec": spec,
            "rows": result.rows,
        }
    say(
        f"\ntotal wall time {time.perf_counter() - started:.0f}s; threads "
        f"{torch.get_num_threads()}; results in {root}"
    )
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    (root / "report.txt").write_text("\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
