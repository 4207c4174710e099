"""Throughput: llm-st's training engine beside a plain PyTorch loop, and zero-shot decoding
beside an LLMTime-style loop, in one process.

    python scripts/bench_throughput.py                       # CPU-sized defaults
    python scripts/bench_throughput.py --gpu                 # the published GPU settings
    python scripts/bench_throughput.py --only train --threads 1

Training: GPT4TS on ETTh1 (history 336 -> 96, GPT-2-small-shaped random backbone, first 6
blocks kept, batch 256 on a GPU), llm-st's engine (the real ``Trainer`` path) against a
plain loop of the same model written in :mod:`llm_st.bench.throughput`, fp32 and bf16,
samples/s after warm-up, median of alternating repeats. Decoding: ``ZeroShotForecaster``
(batched, the number grammar applied as tensors) against one ``generate`` call per series
as LLMTime does, same model and samples, with the constraint's share of a decode step.
"""

from __future__ import annotations

import argparse

import torch

from llm_st.bench.decoding import zero_shot_throughput
from llm_st.bench.report import text_table
from llm_st.bench.throughput import engine_vs_plain


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=("train", "decode"), help="one of the two benches")
    p.add_argument("--gpu", action="store_true", help="GPU sizes: batch 256, 6 blocks, 1.1B LM")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, help="torch threads (CPU)")
    p.add_argument("--data-dir", help="directory holding ETTh1 (default: $LLM_ST_DATA)")
    p.add_argument(
        "--lm", default="tiny-llama", help="causal LM for the decoding bench (directory or name)"
    )
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats (median)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only in (None, "train"):
        if args.gpu:
            sizes = {"batch": 256, "blocks": 6, "steps": 50, "compile": True}
        else:  # a GPT-2-small block is slow on a CPU: a narrower backbone, shorter windows
            from transformers import GPT2Config

            backbone = GPT2Config(n_embd=128, n_head=4, n_layer=12)
            sizes = {"backbone": backbone, "history": 96, "horizon": 24, "batch": 32}
            sizes |= {"blocks": 2, "steps": 30}
        rows = engine_vs_plain(
            device=args.device, repeats=args.repeats, data_dir=args.data_dir, **sizes
        )
        print("training samples/s after warm-up (GPT4TS on ETTh1):")
        print(
            text_table(
                ["loop", "precision", "samples/s", "vs plain"],
                [
                    [r["loop"], r["precision"], f"{r['samples_per_s']:.1f}", f"{r['ratio']:.2f}x"]
                    for r in rows
                ],
            )
        )
    if args.only in (None, "decode"):
        rows = zero_shot_throughput(
            args.lm, device=args.device, dtype="bfloat16" if args.gpu else None
        )
        print(f"\nzero-shot decoding ({args.lm}, 10 samples per series, horizon 12):")
        loop = next(r["series_per_s"] for r in rows if r["batch_size"] == 1)
        print(
            text_table(
                ["method", "batch", "series/s", "vs loop", "step ms", "constraint ms", "share"],
                [
                    [
                        r["method"],
                        str(r["batch_size"]),
                        f"{r['series_per_s']:.2f}",
                        f"{r['series_per_s'] / loop:.1f}x",
                        f"{r['step_ms']:.2f}",
                        f"{r['constraint_ms']:.3f}",
                        f"{100 * r['constraint_share']:.1f}%",
                    ]
                    for r in rows
                ],
            )
        )


if __name__ == "__main__":
    main()
