"""The machine a benchmark runs on: the torch thread count that is fastest right now."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch


def pick_num_threads(
    candidates: Sequence[int] = (1, 2), width: int = 384, tokens: int = 2048, repeats: int = 3
) -> tuple[int, dict[int, float]]:
    """The torch thread count among ``candidates`` that runs a Transformer-sized step fastest.

    Times ``repeats`` forward and backward passes of a ``width``-wide two-layer MLP on
    ``tokens`` rows (the shape of a backbone block) with each count, as the machine is
    loaded now: on a shared machine more threads than free cores can be many times slower.

    Returns
    -------
    (best, seconds)
        The fastest count (it is left set) and the median seconds per pass of each.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, width, generator=generator)
    w1 = torch.randn(width, 4 * width, generator=generator, requires_grad=True)
    w2 = torch.randn(4 * width, width, generator=generator, requires_grad=True)
    seconds = {}
    for n in candidates:
        torch.set_num_threads(n)
        times = []
        for _ in range(repeats + 1):  # the first pass warms up
            t0 = time.perf_counter()
            (torch.nn.functional.gelu(x @ w1) @ w2).square().mean().backward()
            times.append(time.perf_counter() - t0)
        seconds[n] = float(np.median(times[1:]))
    best = min(seconds, key=seconds.get)
    torch.set_num_threads(best)
    return best, seconds
