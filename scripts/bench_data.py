"""Benchmark synthetic data generation and window batching at LargeST scale.

Generates ``synthetic-traffic`` (default: 8,600 sensors, 4 weeks at 5 minutes, the
size of LargeST), then draws random batches of windows (history 12, horizon 12,
batch 64) scaled with a z-score fit on the first 70 % of the rows, and prints:
generation time, batches per second, and peak resident memory as a multiple of the
raw float32 values array (target: at most 2x), both in total and above the memory
held after the imports (interpreter, numpy, pandas, torch).

    python scripts/bench_data.py                         # LargeST size
    python scripts/bench_data.py --nodes 200 --days 7    # a quick run
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from llm_st.bench.report import text_table
from llm_st.data.scalers import make_scaler
from llm_st.data.synthetic import synthetic_traffic
from llm_st.data.windows import WindowDataset, WindowIndex


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8600, help="number of sensors")
    parser.add_argument("--days", type=float, default=28, help="length of the series in days")
    parser.add_argument("--interval", type=int, default=5, help="minutes per step")
    parser.add_argument("--history", type=int, default=12, help="history steps per window")
    parser.add_argument("--horizon", type=int, default=12, help="forecast steps per window")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per batch")
    parser.add_argument("--batches", type=int, default=200, help="random batches to time")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    args = parser.parse_args(argv)

    rss_imports = peak_rss_bytes()
    t0 = time.perf_counter()
    data = synthetic_traffic(
        num_nodes=args.nodes, num_days=args.days, interval_minutes=args.interval, seed=args.seed
    )
    gen_s = time.perf_counter() - t0
    rss_generated = peak_rss_bytes()

    train_stop = int(0.7 * data.num_steps)
    t0 = time.perf_counter()
    scaler = make_scaler("standard").fit(data.values[:train_stop], data.mask[:train_stop])
    fit_s = time.perf_counter() - t0
    index = WindowIndex(data.num_steps, args.history, args.horizon)
    dataset = WindowDataset(data, index, scaler=scaler)
    picks = np.random.default_rng(0).integers(0, len(index), (args.batches + 1, args.batch_size))
    warm = dataset.batch(picks[0])  # warm-up, and the shapes to print
    shapes = {k: list(v.shape) for k, v in warm.items()}
    del warm  # keep only one batch alive at a time, as a training loop does
    t0 = time.perf_counter()
    for idx in picks[1:]:
        dataset.batch(idx)
    batch_s = time.perf_counter() - t0
    rss_batched = peak_rss_bytes()

    rate = args.batches / batch_s
    nbytes = data.values.nbytes
    mb = 1e6
    rows = [
        ("data", f"{data.num_steps} steps x {data.num_nodes} sensors x 1, {data.num_edges} edges"),
        ("values array", f"{nbytes / mb:.1f} MB float32"),
        ("generation time", f"{gen_s:.2f} s"),
        ("scaler fit (70 % of rows)", f"{fit_s:.2f} s"),
        ("batch x / y", f"{shapes['x']} / {shapes['y']}"),
        (
            f"window batches/s (B={args.batch_size}, L={args.history}, H={args.horizon})",
            f"{rate:.1f}  ({rate * args.batch_size:,.0f} windows/s)",
        ),
        ("peak RSS after imports", f"{rss_imports / mb:.0f} MB"),
        (
            "peak RSS after generation",
            f"{rss_generated / mb:.0f} MB = {rss_generated / nbytes:.2f}x values "
            f"({(rss_generated - rss_imports) / nbytes:.2f}x above imports)",
        ),
        (
            "peak RSS after batches",
            f"{rss_batched / mb:.0f} MB = {rss_batched / nbytes:.2f}x values "
            f"({(rss_batched - rss_imports) / nbytes:.2f}x above imports)",
        ),
    ]
    print(text_table(["figure", "value"], [list(row) for row in rows]))


if __name__ == "__main__":
    main()
