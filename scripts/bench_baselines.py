"""Benchmark the primitive baselines with their standard recipes on the real data.

    python scripts/bench_baselines.py                     # ETT and the graph sets
    python scripts/bench_baselines.py --only ett --seeds 3
    python scripts/bench_baselines.py --only LosLoop --models stid graph_wavenet
    python scripts/bench_baselines.py --only synthetic --epochs 1   # no data files needed

Every run is the engine's ``train`` on ``alignment/<model>/<dataset>/config.yaml`` in its
own run directory ``OUT/<dataset>/<model>/seed<k>``. Prints, per dataset, the test
metrics (ETT: normalized MSE/MAE at horizon 96 beside the published figures and the
relative gap; graph sets: MAE/RMSE/MAPE at horizons 3/6/12 and their average, on the
original scale) with trainable parameters and training time; ``OUT/summary.json``
holds everything. Datasets whose files are absent (``../shared/data`` or
``--data-dir`` / ``$LLM_ST_DATA``) are skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from llm_st.config import load_recipe
from llm_st.data import load
from llm_st.engine import train
from llm_st.errors import DataNotFoundError, LLMSTError
from llm_st.evaluation.report import format_table
from llm_st.models.registry import get_model_class

RECIPES = Path(__file__).resolve().parents[1] / "alignment"
GROUPS = {
    "ett": ("ETTh1", "ETTh2"),
    "graph": ("LosLoop", "SZ-taxi"),
    "synthetic": ("synthetic-traffic",),
}
ORDER = (
    "last_value",
    "seasonal_naive",
    "historical_average",
    "var",
    "dlinear",
    "nlinear",
    "patchtst",
    "pattn",
    "stid",
    "graph_wavenet",
    "stgcn",
)
# normalized test MSE / MAE, history 336, horizon 96: PatchTST paper table 3 (PatchTST/42,
# and DLinear as reported there and in the DLinear paper)
PUBLISHED = {
    ("ETTh1", "dlinear"): (0.375, 0.399),
    ("ETTh1", "patchtst"): (0.375, 0.399),
    ("ETTh2", "dlinear"): (0.289, 0.353),
    ("ETTh2", "patchtst"): (0.274, 0.336),
}
KEYS = ("h3", "h6", "h12", "avg")


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
        help="registry names to run (default: the baselines of ORDER with a recipe)",
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
    p.add_argument("--data-dir", help="data root (default: $LLM_ST_DATA, then ../shared/data)")
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


def recipes_for(dataset: str, models: list[str] | None) -> list[Path]:
    """``alignment/<model>/<dataset>/config.yaml`` of the baselines (or of ``models``)."""
    paths = {p.parts[-3]: p for p in RECIPES.glob(f"*/{dataset}/config.yaml")}
    rank = {m: i for i, m in enumerate(ORDER)}
    wanted = ORDER if models is None else sorted(models, key=lambda m: rank.get(m, len(ORDER)))
    return [paths[m] for m in wanted if m in paths]


def stats(runs: list[dict], history: int) -> dict:
    """Mean and std over seeds of the test metrics, cost and schedule of ``runs``."""
    test = {
        k: {m: [r["test"][k][m] for r in runs] for m in runs[0]["test"][k]}
        for k in KEYS
        if k in runs[0]["test"]
    }
    first = runs[0]
    return {
        "mean": {k: {m: float(np.mean(v)) for m, v in d.items()} for k, d in test.items()},
        "std": {k: {m: float(np.std(v)) for m, v in d.items()} for k, d in test.items()},
        "seeds": len(runs),
        "learned": first["learned"],
        "params": first["params"],
        "train_time_s": float(np.mean([r["train_time_s"] for r in runs])),
        "total_time_s": float(np.mean([r["total_time_s"] for r in runs])),
        "epochs": [r["epochs"] for r in runs],
        "best_epoch": [r["best_epoch"] for r in runs],
        "num_test_windows": first["num_test_windows"],
        "metric_scale": first["metric_scale"],
        "history": history,
    }


def pm(s: dict, key: str, metric: str, digits: int = 3) -> str:
    mean, std = s["mean"][key][metric], s["std"][key][metric]
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if s["seeds"] > 1 else "")


def ett_table(dataset: str, results: dict[str, dict]) -> str:
    head = [
        "model",
        "MSE",
        "MAE",
        "published",
        "gap MSE",
        "gap MAE",
        "epochs (best)",
        "train time",
        "trainable",
    ]
    rows = []
    for model, s in results.items():
        mse, mae = s["mean"]["avg"]["mse"], s["mean"]["avg"]["mae"]
        ref = PUBLISHED.get((dataset, model))
        gaps = (
            ["-", "-"]
            if ref is None
            else [f"{100 * (v / r - 1):+.1f}%" for v, r in zip((mse, mae), ref, strict=True)]
        )
        rows.append(
            [
                model,
                pm(s, "avg", "mse"),
                pm(s, "avg", "mae"),
                "-" if ref is None else f"{ref[0]:.3f} / {ref[1]:.3f}",
                *gaps,
                f"{s['epochs'][0]} ({s['best_epoch'][0]})",
                f"{s['train_time_s']:.0f}s",
                str(s["params"]["trainable"]),
            ]
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, ["-" * w for w in widths], *rows]
    ]
    return "\n".join(lines)


def graph_table(results: dict[str, dict]) -> str:
    rows = []
    for model, s in results.items():
        note = None
        if s["seeds"] > 1:
            note = f"std of MAE/RMSE over {s['seeds']} seeds: " + ", ".join(
                f"{k} {s['std'][k]['mae']:.3f}/{s['std'][k]['rmse']:.3f}" for k in s["std"]
            )
        rows.append(
            {
                "method": model,
                "metrics": s["mean"],
                "note": note,
                "family": f"{s['epochs'][0]} ep (best {s['best_epoch'][0]})"
                if s["learned"]
                else "not learned",
                "trainable": s["params"]["trainable"],
                "total": s["params"]["total"],
                "seconds": s["train_time_s"] if s["learned"] else s["total_time_s"],
            }
        )
    text = format_table(rows, KEYS)
    refs = [m for m in ("last_value", "historical_average") if m in results]
    for ref in refs:
        base = results[ref]["mean"]["avg"]["mae"]
        text += f"\navg MAE vs {ref}: " + ", ".join(
            f"{m} {100 * (s['mean']['avg']['mae'] / base - 1):+.1f}%"
            for m, s in results.items()
            if m != ref
        )
    return text


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except LLMSTError as exc:
        print(f"bench_baselines.py: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets = [d for item in args.only for d in GROUPS.get(item.lower(), (item,))]
    overrides = list(args.set) + ([f"training.epochs={args.epochs}"] if args.epochs else [])
    root = fresh_root(args.out)
    summary: dict[str, dict] = {}
    for dataset in datasets:
        paths = recipes_for(dataset, args.models)
        if not paths:
            print(f"\n== {dataset}: no recipes under {RECIPES}/*/{dataset}/ for these models")
            continue
        first = load_recipe(paths[0], overrides).data
        try:  # once for all recipes of the dataset
            data = load(first.spec, data_dir=args.data_dir or first.data_dir)
        except DataNotFoundError as exc:
            print(f"\n== {dataset}: skipped, data not found ({exc})")
            continue
        results: dict[str, dict] = {}
        for path in paths:
            recipe = load_recipe(path, overrides)
            model = recipe.model.name
            seeds = range(args.seeds) if get_model_class(model).learned else range(1)
            runs = []
            for seed in seeds:
                recipe = load_recipe(path, [*overrides, f"training.seed={seed}"])
                run = train(recipe, root / dataset / model / f"seed{seed}", data=data)
                runs.append(run)
                print(
                    f"  {dataset} {model} seed {seed}: avg MAE {run['test']['avg']['mae']:.4f}"
                    f", MSE {run['test']['avg']['mse']:.4f}, train {run['train_time_s']:.0f}s,"
                    f" total {run['total_time_s']:.0f}s",
                    flush=True,
                )
            results[model] = stats(runs, recipe.data.history)
        s = next(iter(results.values()))
        history = min(r["history"] for r in results.values())
        longer = [m for m, r in results.items() if r["history"] > history]
        print(
            f"\n== {dataset}: history {history}"
            + (f" ({', '.join(longer)}: one day)" if longer else "")
            + f" -> horizon {recipe.data.horizon}, {s['num_test_windows']} test windows, "
            f"metrics on the {s['metric_scale']} scale; time: training (learned) or fit + "
            "test (not learned)"
        )
        print(
            ett_table(dataset, results)
            if s["metric_scale"] == "normalized"
            else graph_table(results),
            flush=True,
        )
        summary[dataset] = results
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nrun directories and summary.json: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
