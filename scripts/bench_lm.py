"""The LM pre-trained here, zero-shot on held-out real data and after LoRA / QLoRA fine-tuning.

    python scripts/bench_lm.py                         # LosLoop, st-lm (built once, cached)
    python scripts/bench_lm.py --model runs/st-lm/model --steps 150 --out runs/bench-lm

Held-out: ``st-lm`` (``llm-st pretrain --recipe alignment/pretrain/st_lm.yaml``; LosLoop is
not in its corpus) forecasts LosLoop's test split zero-shot with greedy decoding, beside
last value, the historical average and STID trained on LosLoop's training split
(``alignment/stid/LosLoop/config.yaml``), on the same evenly spread test windows and
sensors. Fine-tuning: the same LM fine-tuned on LosLoop with LoRA and with 4-bit QLoRA
(``alignment/text_lm/LosLoop/config_lora.yaml`` and its QLoRA twin), each ``llm-st
finetune`` in its own process (peak memory is the run's own), scored with the zero-shot
model on the same windows and sensors: MAE, answers that parsed, training time, trainable
parameters, adapter size on disk, peak resident memory. The recipes' ``spatial`` template is
replaced by ``plain``, the prompts st-lm was pre-trained on, so that the zero-shot row is
a fair start.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from llm_st.bench.language_models import finetune_rows, heldout_rows, lm_table
from llm_st.pipeline.pretrain import pretrained_lm

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "alignment"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="LM directory (default: st-lm, built once and cached)")
    p.add_argument("--out", default="runs/bench-lm", help="folder for the trained runs")
    p.add_argument("--steps", type=int, default=150, help="fine-tuning optimizer steps")
    p.add_argument("--windows", type=int, default=32, help="test windows scored")
    p.add_argument("--nodes", type=int, default=16, help="sensors scored")
    p.add_argument("--stid-steps", type=int, default=600, help="STID training steps")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--skip", choices=("heldout", "finetune"), help="leave one part out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = Path(args.model) if args.model else pretrained_lm()
    print(f"LM: {model}")
    if args.skip != "heldout":
        rows = heldout_rows(
            model,
            max_windows=args.windows,
            max_nodes=args.nodes,
            stid_recipe=RECIPES / "stid" / "LosLoop" / "config.yaml",
            stid_overrides=[f"training.max_steps={args.stid_steps}", "training.device=cpu"],
            out=args.out,
            device=args.device,
        )
        print(f"\nheld-out LosLoop test split, {rows[0]['num_series']} series "
              f"({rows[0]['num_windows']} windows x {args.nodes} sensors), zero-shot:")  # fmt: skip
        print(lm_table(rows))
    if args.skip != "finetune":
        recipes = {
            "LoRA": RECIPES / "text_lm" / "LosLoop" / "config_lora.yaml",
            "QLoRA": RECIPES / "text_lm" / "LosLoop" / "config_qlora.yaml",
        }
        sets = [
            "model.params.template=plain",  # st-lm's pre-training prompts: zero-shot is fair
            f"training.max_steps={args.steps}",
            f"model.params.test_windows={args.windows}",
            f"model.params.test_nodes={args.nodes}",
        ]
        rows = finetune_rows(model, recipes, args.out, sets, device=args.device)
        print(f"\nLosLoop, fine-tuned on its training split ({args.steps} steps), "
              f"{rows[0]['num_windows']} test windows x {args.nodes} sensors:")  # fmt: skip
        print(lm_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
