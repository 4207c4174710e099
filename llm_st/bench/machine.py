"""The machine a benchmark runs on: what it is (:func:`describe_machine`, printed in every
report) and the torch thread count that is fastest on it right now."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def describe_machine() -> dict[str, Any]:
    """What this machine is, as plain data: operating system, CPU model, logical cores
    (and those this process may use), memory (GiB), torch's thread count and each CUDA
    GPU (name, memory in GiB) or ``"none"``."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    memory = _memory_gib()
    if torch.cuda.is_available():
        gpus = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(f"{props.name} ({props.total_memory / 2**30:.0f} GiB)")
        gpu = ", ".join(gpus)
    else:
        gpu = "none"
    return {
        "os": platform.platform(),
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "memory": "unknown" if memory is None else f"{memory:.1f} GiB",
        "torch threads": torch.get_num_threads(),
        "gpu": gpu,
    }
