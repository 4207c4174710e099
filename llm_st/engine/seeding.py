"""Seeds and the data order of training, both reproducible from one integer."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_order(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of ``num_items`` training windows in ``epoch`` (0-based).

    A pure function of ``(seed, epoch)``: a resumed run recomputes the order of the
    epoch it stopped in instead of storing generator state, and every process of a
    distributed run draws the same permutation.
    """
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(num_items)


def process_batches(
    order: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1
) -> list[np.ndarray]:
    """Split one epoch's ``order`` into this process's batches.

    With one process: consecutive chunks of ``batch_size`` (the last may be smaller;
    nothing is dropped). With ``world_size`` processes the order is padded by
    repeating its first items to a multiple of ``world_size`` (as
    ``torch.utils.data.DistributedSampler`` does) and process ``rank`` takes every
    ``world_size``-th item, so all processes run the same number of equally sized
    batches, which data-parallel gradient averaging needs.
    """
    if world_size > 1:
        pad = (-len(order)) % world_size
        order = np.resize(order, len(order) + pad)[rank::world_size]
    return [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]
