"""Benchmark of the prompt path: tokens per value, prompt rendering, zero-shot throughput.

Prints three tables:

1. tokens per value of llm-st's tokenizer preset against LLMTime's two default formats
   (GPT-3: spaced digits, LLaMA: plain digits), for a GPT-2-like byte-level BPE and a
   LLaMA-like sentencepiece tokenizer (the tiny models' tokenizers), on windows of the
   synthetic traffic data;
2. prompts rendered per second for 10,000 series with the ``stats`` template
   (statistics computed vectorized, then one Jinja render per series);
3. zero-shot series forecast per second with the tiny models at ``num_samples`` 1 and 10
   (horizon 12, history 12, constrained decoding).

Run: ``python scripts/bench_prompts.py [--threads 1] [--quick]``. The tiny models are
built into ``$LLM_ST_CACHE/tiny`` on first use.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from llm_st.backbones import load_causal_lm  # noqa: E402
from llm_st.bench.report import text_table  # noqa: E402
from llm_st.data.synthetic import synthetic_traffic  # noqa: E402
from llm_st.data.task import prepare_task  # noqa: E402
from llm_st.prompting import PromptBuilder, window_histories  # noqa: E402
from llm_st.prompting.stats import series_statistics  # noqa: E402
from llm_st.tokens.serialize import (  # noqa: E402
    LLMTIME_GPT,
    LLMTIME_LLAMA,
    preset_for_tokenizer,
    tokens_per_value,
)
from llm_st.zeroshot import ZeroShotForecaster  # noqa: E402

TINY = ("tiny-gpt2", "tiny-llama")


def tokens_table(models: dict, histories: np.ndarray) -> None:
    print("\n1. tokens per value (synthetic traffic, 12-step windows; lower is cheaper)")
    rows = []
    for name, (_, tok) in models.items():
        preset = preset_for_tokenizer(tok)
        kind = "spaced" if preset.digit_sep else "plain"
        own = tokens_per_value(tok, preset, histories)
        gpt = tokens_per_value(tok, LLMTIME_GPT, histories)
        llama = tokens_per_value(tok, LLMTIME_LLAMA, histories)
        label = f"{name} ({'BPE' if name == 'tiny-gpt2' else 'sentencepiece'})"
        rows.append([label, f"{own:.2f} ({kind})", f"{gpt:.2f}", f"{llama:.2f}"])
    print(text_table(["tokenizer", "llm-st preset", "LLMTime GPT-3", "LLMTime LLaMA"], rows))
    print("   (the preset picks LLMTime's format for the tokenizer's family; plain digits on a BPE")
    print("    cost fewer tokens but merge digits unevenly, which is why LLMTime spaces them)")


def render_table(num_series: int) -> None:
    nodes = 100
    windows = num_series // nodes
    data = synthetic_traffic(num_nodes=nodes, num_days=7, seed=0)
    starts = np.linspace(0, data.num_steps - 24 - 1, windows).astype(np.int64)
    hist = window_histories(data, starts, 12, np.arange(nodes), np.arange(1)).reshape(-1, 12)
    began = time.perf_counter()
    series_statistics(hist)
    stats_s = time.perf_counter() - began
    builder = PromptBuilder("stats")
    began = time.perf_counter()
    batch = builder.build(data, starts, 12, 12)
    total = time.perf_counter() - began
    n = len(batch.texts)
    print(f"\n2. 'stats' prompts for {n:,} series (history 12, horizon 12)")
    print(f"   statistics, vectorized: {stats_s * 1e3:.1f} ms ({n / stats_s:,.0f} series/s)")
    print(f"   serialize + statistics + render: {total:.2f} s = {n / total:,.0f} prompts/s")


def zero_shot_table(models: dict, windows: int, nodes: int) -> None:
    data = synthetic_traffic(num_nodes=max(nodes, 8), num_days=7, seed=0)
    task = prepare_task(data, history=12, horizon=12)
    print(
        f"\n3. zero-shot, {windows} test windows x {nodes} nodes = {windows * nodes} series, "
        f"horizon 12, torch threads {torch.get_num_threads()}"
    )
    rows = []
    for name, (model, tok) in models.items():
        for samples in (1, 10):
            forecaster = ZeroShotForecaster(model, tok, num_samples=samples, batch_size=16)
            forecaster.forecast(task, max_windows=1, nodes=[0], progress=False)  # warm-up
            began = time.perf_counter()
            forecast = forecaster.forecast(
                task, max_windows=windows, nodes=list(range(nodes)), progress=False
            )
            seconds = time.perf_counter() - began
            series = forecast.shape[0] * forecast.shape[2]
            meta = forecast.meta
            rows.append(
                [
                    name,
                    str(samples),
                    f"{series / seconds:.1f}",
                    f"{seconds:.2f}",
                    f"{meta['valid_fraction']:.0%}",
                    f"{meta['mean_prompt_tokens']:.0f}",
                ]
            )
    head = ["model", "samples", "series/s", "seconds", "valid", "prompt tok"]
    print(text_table(head, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="fewer series (a smoke run)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {name: load_causal_lm(name) for name in TINY}
    data = synthetic_traffic(num_nodes=32, num_days=3, seed=1)
    starts = np.arange(0, data.num_steps - 12, 12)
    histories = window_histories(data, starts, 12, np.arange(32), np.arange(1)).reshape(-1, 12)
    tokens_table(models, histories)
    render_table(1_000 if args.quick else 10_000)
    zero_shot_table(models, windows=2 if args.quick else 8, nodes=4 if args.quick else 8)


if __name__ == "__main__":
    main()
