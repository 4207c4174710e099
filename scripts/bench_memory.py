"""Peak memory and step time of Time-LLM and GPT4TS per backbone policy, with and without
gradient checkpointing, projected to 32 blocks, and ``llm-st estimate``'s prediction beside
each measurement.

    python scripts/bench_memory.py                        # LLaMA-7B shape (a GPU)
    python scripts/bench_memory.py --scale 8 --batch 8    # CPU-sized: width 512, 4 heads
    python scripts/bench_memory.py --adapters timellm --policies qfrozen --checkpointing on

Every cell is one training step (forward, backward, AdamW) of the shipped ETTh1 recipe's
adapter on a random-weight backbone of the shape, measured in a fresh process
(:func:`llm_st.bench.memory.memory_table`); the estimate is
:func:`llm_st.engine.estimate.estimate_memory` of the same recipe, built from the config
alone. Needs ETTh1 (``$LLM_ST_DATA``) for the estimate's data facts.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from llm_st.bench.memory import LLAMA_7B, memory_table, policy_fields, write_shape
from llm_st.bench.recipes import recipe_path
from llm_st.bench.report import text_table
from llm_st.config import load_recipe
from llm_st.engine.estimate import estimate_memory
from llm_st.errors import LLMSTError


def predicted_mb(row: dict[str, Any], source: str) -> str:
    """The estimate of a measured cell in MiB (or why there is none)."""
    fields = policy_fields(row["policy"])
    overrides = [
        f"model.backbone.source={source}",
        f"model.backbone.num_layers={row['blocks']}",
        "model.backbone.mode=random_init",
        f"model.backbone.gradient_checkpointing={str(row['checkpointing']).lower()}",
        f"model.backbone.freeze={fields['freeze']}",
        f"data.history={row['history']}",
        f"training.batch_size={row['batch']}",
    ]
    if "dtype" in fields:
        overrides.append(f"model.backbone.dtype={fields['dtype']}")
    else:
        overrides.append(
            f"model.backbone.lora={{compute_dtype: {fields['lora']['compute_dtype']}}}"
        )
    try:
        recipe = load_recipe(recipe_path(row["adapter"], "ETTh1"), overrides)
        device = "cuda" if row["device"].startswith("cuda") else "cpu"
        return f"{estimate_memory(recipe, device=device).peak / 2**20:.0f}"
    except LLMSTError as exc:
        return f"- ({exc.problem[:40]})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapters", nargs="+", default=["timellm", "gpt4ts"])
    p.add_argument("--policies", nargs="+", default=["frozen-bf16", "qfrozen", "qlora"])
    p.add_argument("--checkpointing", choices=("off", "on", "both"), default="both")
    p.add_argument("--blocks", nargs="+", type=int, default=[2, 4])
    p.add_argument("--scale", type=int, default=1, help="divide width, MLP and heads by this")
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--history", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    checkpointing = {"off": (False,), "on": (True,), "both": (False, True)}[args.checkpointing]
    rows = memory_table(
        adapters=args.adapters,
        blocks=args.blocks,
        policies=args.policies,
        checkpointing=checkpointing,
        scale=args.scale,
        history=args.history,
        batch=args.batch,
        device=args.device,
        threads=args.threads,
    )
    shape = {
        "hidden_size": LLAMA_7B["hidden_size"] // args.scale,
        "intermediate_size": LLAMA_7B["intermediate_size"] // args.scale,
        "num_heads": LLAMA_7B["num_heads"] // args.scale,
        "vocab_size": LLAMA_7B["vocab_size"],
    }
    with tempfile.TemporaryDirectory(prefix="llm-st-estimate-") as tmp:
        source = str(write_shape(tmp, **shape))
        body = [
            [
                r["adapter"],
                r["policy"],
                "on" if r["checkpointing"] else "off",
                str(r["blocks"]),
                r["kind"],
                r.get("error") or f"{r['peak_mb']:.0f}",
                f"{r['peak_mb'] - r['baseline_mb']:.0f}" if "baseline_mb" in r else "",
                predicted_mb(r, source) if r["kind"] == "measured" and "error" not in r else "",
                "" if "step_s" not in r else f"{r['step_s']:.2f}",
            ]
            for r in rows
        ]
    first = rows[0]
    print(
        f"device {first['device']}, width {shape['hidden_size']}, MLP "
        f"{shape['intermediate_size']}, {shape['num_heads']} heads, history {args.history}, "
        f"batch {args.batch} windows of 7 series (ETTh1); peak MiB of the process (CPU: resident "
        "memory, with Python and torch) and above its start, beside the estimate (tensors only)"
    )
    head = ["adapter", "policy", "ckpt", "blocks", "kind", "peak", "above start", "estimate"]
    head.append("step s")
    print(text_table(head, body))


if __name__ == "__main__":
    main()
