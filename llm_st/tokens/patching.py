"""Cut series into (overlapping) patches and put them back together.

Patches are the tokens of PatchTST (Nie et al., ICLR 2023), GPT4TS and Time-LLM:
windows of ``patch_len`` steps taken every ``stride`` steps along the last axis.
Callers move time to the last axis first, e.g. ``x.permute(0, 2, 3, 1)`` turns
``[B, L, N, C]`` into ``[B, N, C, L]``.

Padding of the end of the series (always copies of the last value):

- ``"none"``: no padding; trailing steps that do not fill a whole patch are dropped.
- ``"end"``: the fewest copies that make the last patch end on the last step, so
  every step is in some patch (none at all when the patches already fit).
- ``"replicate"``: exactly ``stride`` copies, PatchTST's ``padding_patch="end"``
  (``nn.ReplicationPad1d((0, stride))``), which adds one patch.
"""

from __future__ import annotations

from typing import Literal

import torch

from llm_st.errors import ConfigError, DataError

Padding = Literal["end", "none", "replicate"]
_PADDINGS = ("end", "none", "replicate")


def _check(length: int, patch_len: int, stride: int, padding: str) -> None:
    if patch_len < 1 or stride < 1:
        raise ConfigError(
            f"patch_len and stride must be >= 1, got patch_len={patch_len}, stride={stride}",
            "pass positive integers (PatchTST uses patch_len=16, stride=8)",
        )
    if padding not in _PADDINGS:
        raise ConfigError(f"unknown padding {padding!r}", f"use one of {_PADDINGS}")
    if length < 1:
        raise DataError(f"cannot patch a series of length {length}", "pass at least one time step")
    padded = length + stride if padding == "replicate" else length
    if padding != "end" and padded < patch_len:
        raise DataError(
            f"series of length {length} is shorter than one patch of {patch_len} steps "
            f"with padding={padding!r}",
            'use a shorter patch_len, a longer history, or padding="end"',
        )


def _pad_length(length: int, patch_len: int, stride: int, padding: str) -> int:
    """Number of copies of the last value appended before cutting patches."""
    if padding == "replicate":
        return stride
    if padding == "end":
        if length <= patch_len:
            return patch_len - length
        return -(length - patch_len) % stride
    return 0


def num_patches(length: int, patch_len: int, stride: int, padding: Padding = "end") -> int:
    """Number of patches :func:`patchify` cuts from a series of ``length`` steps.

    ``"none"``: ``(L - P) // S + 1``; ``"end"``: ``ceil(max(L - P, 0) / S) + 1``;
    ``"replicate"``: ``(L + S - P) // S + 1`` (PatchTST's count with ``padding_patch="end"``).
    """
    _check(length, patch_len, stride, padding)
    padded = length + _pad_length(length, patch_len, stride, padding)
    return (padded - patch_len) // stride + 1


def patchify(
    x: torch.Tensor, patch_len: int, stride: int, padding: Padding = "end"
) -> torch.Tensor:
    """Cut the last axis into patches.

    Parameters
    ----------
    x : torch.Tensor ``[..., L]``
    patch_len : int
        Steps per patch ``P``.
    stride : int
        Steps between patch starts ``S``; ``S < P`` overlaps, ``S > P`` skips steps.
    padding : {"end", "none", "replicate"}
        How the end is padded (module docstring).

    Returns
    -------
    torch.Tensor ``[..., num_patches(L, P, S, padding), P]``; patch ``k`` holds steps
    ``k*S .. k*S + P - 1`` of the padded series. Without padding it is a view of ``x``.
    """
    _check(x.shape[-1], patch_len, stride, padding)
    pad = _pad_length(x.shape[-1], patch_len, stride, padding)
    if pad:
        last = x[..., -1:]
        x = torch.cat([x, last.expand(*last.shape[:-1], pad)], dim=-1)
    return x.unfold(-1, patch_len, stride)


def unpatchify(patches: torch.Tensor, stride: int, length: int) -> torch.Tensor:
    """Rebuild a series from patches, averaging the patches that overlap on each step.

    The exact inverse of :func:`patchify` (for any padding, given the original
    ``length``) since overlapping patches of one series agree on shared steps.

    Parameters
    ----------
    patches : torch.Tensor ``[..., num_patches, P]``
    stride : int
        Stride the patches were cut with.
    length : int
        Steps to return, at most ``(num_patches - 1) * stride + P``; steps beyond it
        (padding) are dropped.

    Returns
    -------
    torch.Tensor ``[..., length]``
    """
    count, patch_len = patches.shape[-2], patches.shape[-1]
    covered = (count - 1) * stride + patch_len
    if stride < 1 or not 1 <= length <= covered:
        raise DataError(
            f"cannot rebuild {length} steps from {count} patches of {patch_len} steps "
            f"with stride {stride} (they cover {covered} steps)",
            "pass the stride used by patchify and the original series length",
        )
    if stride > patch_len and length > patch_len:
        raise DataError(
            f"stride {stride} > patch_len {patch_len} leaves steps between patches that "
            "no patch holds",
            "unpatchify only patches cut with stride <= patch_len",
        )
    starts = torch.arange(count, device=patches.device) * stride
    index = (starts[:, None] + torch.arange(patch_len, device=patches.device)).reshape(-1)
    flat = patches.reshape(*patches.shape[:-2], count * patch_len)
    total = flat.new_zeros(*patches.shape[:-2], covered).index_add(-1, index, flat)
    overlaps = torch.bincount(index, minlength=covered).to(flat.dtype)
    return (total / overlaps)[..., :length]
