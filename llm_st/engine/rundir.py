"""The directory of one run: what it holds, atomic writes, and the overwrite guard.

Layout (``out/``)::

    recipe.yaml         resolved recipe (train() only)
    scaler.json         the scaler fit on the training split
    model.safetensors   best weights (selected on the validation split) of what was
                        trained: no frozen backbone weights (see artifacts.py)
    adapter/            LoRA weights in peft's layout, when the backbone has LoRA
    manifest.json       kept tensors and the backbones they need (source, config hash)
    data_info.json      what the model was built for (+ data_info.npz: graph, coordinates)
    objective.safetensors  parameters of the objective, when it has any
    metrics.json        test and validation metrics, best epoch, cost
    log.jsonl           one line per evaluation
    checkpoints/        the latest resumable checkpoint (see checkpoint.py)
    pretrain/           the same layout for a pre-training phase
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from llm_st.errors import ConfigError

RESULT_NAMES = (
    "recipe.yaml",
    "scaler.json",
    "model.safetensors",
    "adapter",
    "manifest.json",
    "data_info.json",
    "data_info.npz",
    "objective.safetensors",
    "metrics.json",
    "log.jsonl",
    "checkpoints",
    "pretrain",
)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    Readers see the old file or the new one, never a partial write.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode())


class RunDir:
    """Paths of a run directory and the rules for reusing one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def results(self) -> list[str]:
        """Names of run outputs already present."""
        return [name for name in RESULT_NAMES if (self.path / name).exists()]

    def check(self, resume: bool = False, overwrite: bool = False) -> None:
        """Raise :class:`ConfigError` if this directory may not be used as asked.

        A directory holding results is reused only with ``resume`` (continue) or
        ``overwrite`` (start over); a file in its place is an error.
        """
        if resume and overwrite:
            raise ConfigError(
                "both resume and overwrite were requested",
                "pass --resume to continue the run or --overwrite to start over",
            )
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run directory {str(self.path)!r} is a file", "choose another --out")
        found = self.results()
        if found and not (resume or overwrite):
            raise ConfigError(
                f"run directory {str(self.path)!r} already holds results ({', '.join(found)})",
                "pass --overwrite to replace them, --resume to continue the run, or another --out",
            )

    def prepare(self, resume: bool = False, overwrite: bool = False) -> None:
        """:meth:`check`, then create the directory.

        ``overwrite`` deletes the run outputs listed in :data:`RESULT_NAMES` (and
        nothing else the directory holds); ``resume`` keeps them for
        :meth:`llm_st.engine.Trainer.fit` to continue from.
        """
        self.check(resume, overwrite)
        if overwrite:
            for name in self.results():
                target = self.path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    def write_log(self, records: list[dict[str, Any]]) -> None:
        """Rewrite ``log.jsonl`` with ``records`` (the history a checkpoint carries)."""
        text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in records)
        atomic_write_bytes(self.path / "log.jsonl", text.encode())

    def append_log(self, record: dict[str, Any]) -> None:
        with open(self.path / "log.jsonl", "a") as fh:
            fh.write(json.dumps(record, allow_nan=True) + "\n")
