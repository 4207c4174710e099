"""Size of a run directory, and the time to load it and forecast, for a frozen-LLM adapter.

    python scripts/bench_rundir.py                     # gpt4ts on all-MiniLM-L6-v2
    python scripts/bench_rundir.py --backbone tiny-gpt2 --freeze lora

Trains a GPT4TS run through the engine for a few steps on synthetic-traffic (the
recipe's setting, shortened), then prints every file of the run directory with its size,
beside what storing the whole model (the frozen backbone included) in the run and in its
resumable checkpoint would take: what a run held before runs kept trained tensors only.
Then times ``ForecastPipeline.from_run`` and one ``predict``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from llm_st.bench.report import text_table
from llm_st.config import recipe_from_dict
from llm_st.engine import train
from llm_st.pipeline import ForecastPipeline


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="minilm", help="backbone source (default: minilm)")
    p.add_argument("--freeze", default="layernorm", help="freezing policy (default: layernorm)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    backbone = {"source": args.backbone, "num_layers": None, "freeze": args.freeze}
    recipe = recipe_from_dict(
        {
            "name": "gpt4ts-rundir",
            "data": {"spec": "synthetic-traffic:num_nodes=8,num_days=7", "history": 12},
            "model": {
                "name": "gpt4ts",
                "backbone": backbone,
                "params": {"patch_len": 6, "stride": 6, "padding": "none"},
            },
            "training": {
                "max_steps": args.steps,
                "eval_every": args.steps,
                "batch_size": 8,
                "device": "cpu",
            },
        }
    )
    with tempfile.TemporaryDirectory(prefix="llm-st-rundir-") as tmp:
        run = Path(tmp) / "run"
        metrics = train(recipe, run)
        rows = [[p.name + ("/" if p.is_dir() else ""), f"{size_mb(p):.3f}"]
                for p in sorted(run.iterdir())]  # fmt: skip
        print(f"run directory of gpt4ts on {args.backbone} ({args.freeze}), "
              f"{metrics['params']['trainable']:,} trainable of "
              f"{metrics['params']['total']:,} parameters:")  # fmt: skip
        print(text_table(["file", "MiB"], rows))
        t0 = time.perf_counter()
        pipeline = ForecastPipeline.from_run(run, device="cpu")
        loaded = time.perf_counter() - t0
        whole = sum(t.numel() * t.element_size() for t in pipeline.model.state_dict().values())
        t0 = time.perf_counter()
        forecast = pipeline.predict(recipe.data.spec, progress=False)
        predicted = time.perf_counter() - t0
        total = size_mb(run)
        print()
        print(f"run directory total: {total:.2f} MiB")
        print(
            f"whole model state: {whole / 2**20:.2f} MiB; stored in model.safetensors and "
            f"again in the checkpoint, with AdamW state for the trainable part: "
            f"{2 * whole / 2**20:.2f} MiB or more"
        )
        print(f"from_run: {loaded:.2f} s; predict {forecast.shape}: {predicted:.3f} s")


if __name__ == "__main__":
    main()
