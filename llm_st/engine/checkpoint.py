"""Checkpoints that are either complete or absent, and weights in safetensors.

A checkpoint is a directory ``checkpoints/ckpt-<step>``. It is written under a
staging name (``checkpoints/.staging-<step>``), renamed with ``os.replace`` once every
file is in it, and only then does the pointer ``checkpoints/latest.json`` (itself
replaced atomically) name it. A crash at any moment leaves ``latest.json`` pointing
to the previous complete checkpoint; leftover staging directories are removed the
next time the manager starts.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llm_st.engine.rundir import atomic_write_json

POINTER = "latest.json"


def save_weights(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write a state dict to ``path`` (safetensors, atomically: temp file, then rename).

    Tensors are written contiguous from CPU copies; tensors that shared memory are
    stored as separate entries.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    save_file(cpu, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file (no pickle involved) into a state dict on ``device``."""
    return load_file(str(path), device=str(device))


class CheckpointManager:
    """The checkpoints of one run under ``root`` (keeps only the latest)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def latest(self) -> Path | None:
        """The directory of the latest complete checkpoint, or None."""
        pointer = self.root / POINTER
        if not pointer.is_file():
            return None
        path = self.root / json.loads(pointer.read_text())["name"]
        return path if path.is_dir() else None

    def staging_dir(self, step: int) -> Path:
        return self.root / f".staging-{step:09d}"

    def begin(self, step: int) -> Path:
        """An empty staging directory for the checkpoint of ``step`` (call on one process)."""
        self.clean_staging()
        staging = self.staging_dir(step)
        staging.mkdir(parents=True)
        return staging

    def commit(self, step: int) -> Path:
        """Publish the staging directory of ``step`` as the latest checkpoint; drop older ones."""
        final = self.root / f"ckpt-{step:09d}"
        again = 0
        while final.exists():  # the same step saved twice: keep the old one until re-pointed
            again += 1
            final = self.root / f"ckpt-{step:09d}.{again}"
        self.staging_dir(step).replace(final)
        atomic_write_json(self.root / POINTER, {"name": final.name, "step": step})
        for old in self.root.glob("ckpt-*"):
            if old != final:
                shutil.rmtree(old)
        return final

    def clean_staging(self) -> None:
        """Remove staging directories left by an interrupted write."""
        for stale in self.root.glob(".staging-*"):
            shutil.rmtree(stale)

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Single-process helper: ``write(staging_dir)``, then :meth:`commit`.

        If ``write`` raises, the staging directory is removed and the previous
        checkpoint stays the latest.
        """
        staging = self.begin(step)
        try:
            write(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.commit(step)
