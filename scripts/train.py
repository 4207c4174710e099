"""Train a recipe on one or several processes (all logic lives in ``llm_st.engine``).

    python scripts/train.py --recipe alignment/var/synthetic-traffic/config.yaml --out runs/var
    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 scripts/train.py \\
        --recipe RECIPE --out DIR
    accelerate launch --config_file alignment/accelerate_configs/multi_gpu.yaml \\
        scripts/train.py --recipe RECIPE --out DIR --set training.mixed_precision=bf16

Every process runs this script; only the main one writes files and prints.
"""

from __future__ import annotations

import argparse
import json
import sys

from accelerate.state import PartialState

from llm_st.config import load_recipe
from llm_st.engine import train
from llm_st.errors import LLMSTError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", required=True, help="YAML recipe file")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override, e.g. training.lr=3e-4 (repeatable)",
    )
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue the run in --out")
    how.add_argument("--overwrite", action="store_true", help="replace results in --out")
    args = parser.parse_args(argv)
    try:
        metrics = train(load_recipe(args.recipe, args.set), args.out, args.resume, args.overwrite)
    except LLMSTError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    if PartialState().is_main_process:  # set up by train()
        print(json.dumps({"test": metrics["test"]["avg"], "run_dir": args.out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
