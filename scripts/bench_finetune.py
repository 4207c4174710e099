"""Fine-tuning tokens/s and peak memory: full, LoRA and QLoRA at two model sizes, llm-st's
engine beside the plain Hugging Face loop a user would otherwise write, in one process.

    python scripts/bench_finetune.py                        # CPU-sized: ~5M and ~25M LLaMAs
    python scripts/bench_finetune.py --gpu                  # TinyLlama-1.1B's shape, bf16
    python scripts/bench_finetune.py --sizes 5M --policies lora --steps 4 --json ft.json

A causal LM (LLaMA config, random weights, vocabulary 32000) is fine-tuned on forecasting
prompts (``text_lm`` + ``sft``: synthetic traffic, one prompt per window and node, the
answer the next values as text) for a fixed number of optimizer steps under each policy,
twice on the same batches: with the engine (``Trainer``: the LM head at the answer
positions only) and with a plain loop (``model(input_ids, attention_mask, labels).loss``,
logits over the whole vocabulary at every position, ``torch.optim.AdamW``), same model,
LoRA layers, clipping, learning rate and autocast
(:func:`llm_st.bench.finetune.finetune_throughput`). tokens/s: non-pad tokens of the steps
after warm-up over their time. Peak memory above the process's memory before the model was
built: on CUDA ``max_memory_allocated`` (tensors); on the CPU the resident set size sampled
every 2 ms, which includes what the allocators keep cached. ``--gpu``: TinyLlama-1.1B's
shape, bf16 autocast (LoRA's frozen weights in bfloat16, QLoRA's 4-bit layers computing in
bfloat16), gradient checkpointing under LoRA and QLoRA, batches of 8 prompts of a 96-step
history.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from llm_st.bench.finetune import LLAMA_SIZES, POLICIES, finetune_throughput
from llm_st.bench.report import count, text_table

CPU_DEFAULTS = {"sizes": ["5M", "25M"], "steps": 16, "batch_size": 8, "history": 24, "horizon": 6}
GPU_DEFAULTS = {"sizes": ["1.1B"], "steps": 20, "batch_size": 8, "history": 96, "horizon": 24}
HEAD = ["size", "params", "policy", "method", "tokens/s", "speedup", "peak MiB", "mem ratio"]
HEAD += ["trainable", "saved MiB"]
METHOD_NAMES = {"engine": "engine", "plain": "plain HF loop"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu", action="store_true", help="TinyLlama-1.1B's shape, bf16, batch 8")
    p.add_argument("--sizes", nargs="+", choices=list(LLAMA_SIZES), help="model sizes")
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    p.add_argument("--steps", type=int, help="optimizer steps per run (CPU 16, GPU 20)")
    p.add_argument("--batch-size", type=int, help="prompts per step (CPU 8, GPU 8)")
    p.add_argument("--history", type=int, help="history steps in a prompt (CPU 24, GPU 96)")
    p.add_argument("--horizon", type=int, help="values in an answer (CPU 6, GPU 24)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: 1 without --gpu: on a few shared cores a thread per "
        "core loses more to a busy neighbour than it gains, and the figures swing; 0: torch's)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the rows to FILE")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    threads = args.threads if args.threads is not None else (0 if args.gpu else 1)
    if threads:
        torch.set_num_threads(threads)
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    logging.getLogger("llm_st").setLevel(logging.WARNING)
    preset = GPU_DEFAULTS if args.gpu else CPU_DEFAULTS
    settings = {
        key: getattr(args, key) if getattr(args, key) is not None else value
        for key, value in preset.items()
    }
    started = time.perf_counter()
    rows = finetune_throughput(
        policies=args.policies,
        precision="bf16" if args.gpu else "fp32",
        checkpointing=args.gpu,
        device=args.device,
        **settings,
    )
    wall = time.perf_counter() - started
    first = rows[0]
    per_example = first["tokens"] / (first["steps"] * first["batch_size"])
    n = torch.get_num_threads()
    where = "CUDA allocated" if first["device"].startswith("cuda") else "resident, caches included"
    print(
        f"fine-tuning on {first['device']} ({first['precision']}"
        f"{', gradient checkpointing under LoRA/QLoRA' if args.gpu else ''}, "
        f"{n} thread{'' if n == 1 else 's'}): batches of {settings['batch_size']} prompts "
        f"(~{per_example:.0f} tokens each, history {settings['history']} -> horizon "
        f"{settings['horizon']}), {first['steps']} steps, {first['warmup_steps']} of warm-up "
        "untimed; peak MiB above the process before the model "
        f"({where})"
    )
    print(
        text_table(
            HEAD,
            [
                [
                    r["size"],
                    count(r["params"]),
                    r["policy"],
                    METHOD_NAMES[r["method"]],
                    f"{r['tokens_per_s']:.0f}",
                    f"{r['speedup']:.2f}x" if "speedup" in r else "",
                    f"{r['peak_mb']:.0f}",
                    f"{r['memory_ratio']:.2f}x" if r.get("memory_ratio") else "",
                    count(r["trainable"]),
                    "" if r["saved_mb"] is None else f"{r['saved_mb']:.1f}",
                ]
                for r in rows
            ],
        )
    )
    print(f"wall time {wall:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "wall_s": wall, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
