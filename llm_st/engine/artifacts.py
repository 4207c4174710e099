"""What a run directory keeps of a trained model: what was trained, never the frozen backbone.

A transfer adapter holds a pretrained Hugging Face model (an LLM backbone, a ViT-MAE)
whose weights mostly stay as they were loaded. Storing them again in every run costs
the size of the backbone per run (14 GB for a 7B LLM) for weights that can be re-read
from where they came from. So a run keeps:

``model.safetensors``
    every parameter and buffer of the model except the frozen weights of its pretrained
    parts (outermost ``transformers.PreTrainedModel`` submodules); parameters of those
    parts that were trained (layer norms, attention, ...) are kept, and so is everything
    outside them (patch embeddings, heads, baselines' fitted buffers). LoRA weights are
    not here but in ``adapter/``.
``adapter/``
    with a LoRA backbone: ``adapter_config.json`` and ``adapter_model.safetensors`` in
    peft's own layout (``PeftModel.from_pretrained`` reads it too).
``manifest.json``
    the format version, the method, the kept tensor names, and per pretrained part its
    source (path or hub id), a hash of its config, its parameter count and a hash of its
    parameter names and shapes: loading refuses a backbone that is not the one trained on.
``data_info.json`` and ``data_info.npz``
    the :class:`~llm_st.models.base.DataInfo` the model was built for (graph and
    coordinates as arrays), so the model can be rebuilt without the training data.

Checkpoints for resuming (``checkpoints/``) follow the same rule: Accelerate's model
state is filtered to the kept tensors before it is written (:func:`keep_trained_on_save`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llm_st.engine.checkpoint import load_weights, save_weights
from llm_st.engine.rundir import atomic_write_json
from llm_st.errors import ModelLoadError
from llm_st.models.base import DataInfo

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
ADAPTER_DIR = "adapter"
DATA_INFO = "data_info.json"
DATA_ARRAYS = "data_info.npz"
# storage choices, not architecture: a QLoRA run loads into a full-precision copy to merge
_VOLATILE_CONFIG_KEYS = {
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
    "quantization_config",
}


def pretrained_parts(model: nn.Module) -> dict[str, nn.Module]:
    """``{dotted prefix: module}`` of the outermost Hugging Face pretrained models in ``model``."""
    from transformers import PreTrainedModel

    parts: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, PreTrainedModel) and not any(
            name == p or name.startswith(p + ".") for p in parts
        ):
            parts[name] = module
    return parts


def _under(name: str, prefixes: list[str]) -> bool:
    return any(p == "" or name.startswith(p + ".") for p in prefixes)


def _is_lora(name: str) -> bool:
    from llm_st.backbones.lora import is_lora_parameter

    return is_lora_parameter(name)


def trained_keys(model: nn.Module, with_lora: bool = True) -> list[str]:
    """State-dict names a run keeps (see the module docstring), in state-dict order."""
    prefixes = list(pretrained_parts(model))
    grads = {name for name, p in model.named_parameters() if p.requires_grad}
    return [
        key
        for key in model.state_dict()
        if (not _under(key, prefixes) or key in grads) and (with_lora or not _is_lora(key))
    ]


def trained_state(model: nn.Module, with_lora: bool = True) -> dict[str, torch.Tensor]:
    """The kept tensors of ``model`` (detached, on their device)."""
    state = model.state_dict()
    return {k: state[k].detach() for k in trained_keys(model, with_lora)}


def keep_trained_on_save(unwrap: Any) -> Any:
    """An Accelerate save-state pre-hook that drops the frozen pretrained weights.

    ``unwrap`` is ``Accelerator.unwrap_model``; register the result with
    ``accelerator.register_save_state_pre_hook``. Load such checkpoints with
    ``load_state(..., strict=False)``.
    """

    def hook(models: list[nn.Module], weights: list[dict[str, Any]], output_dir: str) -> None:
        for model, state in zip(models, weights, strict=True):
            keep = set(trained_keys(unwrap(model)))
            for key in list(state):
                plain = key.removeprefix("module.")
                if plain not in keep:
                    del state[key]

    return hook


def config_hash(config: Any) -> str:
    """A short hash of a Hugging Face config's architecture (paths, versions, dtype left out)."""
    items = {
        k: v
        for k, v in config.to_dict().items()
        if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS
    }
    text = json.dumps(items, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def logical_numel(p: torch.Tensor) -> int:
    state = getattr(p, "quant_state", None)  # bitsandbytes 4-bit: two weights per byte
    return int(state.shape.numel()) if state is not None else p.numel()


def describe_backbones(model: nn.Module) -> list[dict[str, Any]]:
    """Per pretrained part: ``path``, ``source``, ``class``, ``config_hash``, ``parameters``
    (logical count), ``shapes_hash`` (names and shapes of its non-LoRA parameters)."""
    sources = {
        name: module
        for name, module in model.named_modules()
        if hasattr(module, "pretrained") and hasattr(module, "hf_model")  # FrozenBackbone
    }
    out = []
    for path, part in pretrained_parts(model).items():
        owner = next((m for p, m in sources.items() if _under(path, [p]) or path == p), None)
        source = owner.name if owner is not None else part.config._name_or_path
        shapes = [
            (n, list(getattr(getattr(p, "quant_state", None), "shape", p.shape)))
            for n, p in part.named_parameters()
            if not _is_lora(n)
        ]
        out.append(
            {
                "path": path,
                "source": str(source),
                "class": type(part).__name__,
                "model_type": part.config.model_type,
                "pretrained": bool(getattr(owner, "pretrained", True)),
                "config_hash": config_hash(part.config),
                "parameters": sum(logical_numel(p) for _, p in part.named_parameters()),
                "shapes_hash": hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16],
            }
        )
    return out


def _lora_owner(model: nn.Module) -> bool:
    return any(_is_lora(n) for n, _ in model.named_parameters())


def save_model(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model.safetensors``, ``adapter/`` (LoRA) and ``manifest.json`` into ``directory``.

    Returns the path of ``model.safetensors``.
    """
    directory = Path(directory)
    lora = _lora_owner(model)
    state = trained_state(model, with_lora=not lora)
    save_weights(state, directory / WEIGHTS)
    if lora:
        from llm_st.backbones import save_lora

        save_lora(model, directory / ADAPTER_DIR)
    manifest = {
        "format": FORMAT_VERSION,
        "model": getattr(model, "registry_name", type(model).__name__),
        "tensors": sorted(state),
        "adapter": ADAPTER_DIR if lora else None,
        "backbones": describe_backbones(model),
    }
    atomic_write_json(directory / MANIFEST, manifest)
    return directory / WEIGHTS


def check_backbones(saved: list[dict[str, Any]], model: nn.Module, where: str) -> None:
    """Raise :class:`ModelLoadError` unless ``model``'s pretrained parts are those of ``saved``
    (same places, same config hash and parameter shapes)."""
    now = {b["path"]: b for b in describe_backbones(model)}
    for entry in saved:
        current = now.get(entry["path"])
        if current is None:
            raise ModelLoadError(
                f"the run in {where} was trained with a {entry['class']} backbone at "
                f"{entry['path']!r} ({entry['source']}), which the rebuilt model does not have",
                "load the run with the backbone it was trained on",
            )
        for key, what in (("config_hash", "config"), ("shapes_hash", "parameter shapes")):
            if current[key] != entry[key]:
                raise ModelLoadError(
                    f"backbone {current['source']!r} has another {what} than "
                    f"{entry['source']!r}, which the run in {where} was trained on "
                    f"({entry['model_type']}, {entry['parameters']:,} parameters)",
                    "pass the backbone the run was trained on (its directory or hub id)",
                )
    extra = sorted(set(now) - {b["path"] for b in saved})
    if extra:
        raise ModelLoadError(
            f"the rebuilt model has pretrained parts {extra} that the run in {where} did not have",
            "load the run with the recipe it was trained with",
        )


def _run_file(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise ModelLoadError(
            f"no {name} in {directory}",
            "pass a run directory written by llm-st train (it may still be training)",
        )
    return path


def load_model(model: nn.Module, directory: str | Path) -> None:
    """Load a run's weights into ``model`` (rebuilt from the run's recipe), in place.

    A run written by :func:`save_model` is checked against its manifest; an older run
    whose ``model.safetensors`` holds the whole model (no manifest) is loaded whole.

    Raises
    ------
    ModelLoadError
        Missing weights, a backbone other than the one trained on, or tensors that do not
        fit the model.
    """
    directory = Path(directory)
    path = _run_file(directory, WEIGHTS)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    state = load_weights(path, device)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():  # a whole-model run from before manifests
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelLoadError(
                f"{path} does not fit the model rebuilt from the run's recipe "
                f"({' '.join(str(exc).split())[:200]})",
                "re-train the run, or load it with the llm-st version that wrote it and "
                "save it again with llm_st.engine.artifacts.save_model",
            ) from exc
        return
    manifest = json.loads(manifest_path.read_text())
    check_backbones(manifest["backbones"], model, str(directory))
    expected = set(trained_keys(model, with_lora=manifest["adapter"] is None))
    if set(state) != expected:
        unknown, missing = sorted(set(state) - expected), sorted(expected - set(state))
        raise ModelLoadError(
            f"the weights in {path} do not fit the rebuilt model (not in the model: "
            f"{unknown[:3]}, not in the file: {missing[:3]})",
            "load the run with the recipe and llm-st version it was trained with",
        )
    model.load_state_dict(state, strict=False)
    if manifest["adapter"] is not None:
        from llm_st.backbones import load_lora

        load_lora(model, directory / manifest["adapter"])


def save_data_info(info: DataInfo, directory: str | Path) -> None:
    """Write ``data_info.json`` (and ``data_info.npz`` for the graph and coordinates)."""
    directory = Path(directory)
    plain = {
        "num_nodes": info.num_nodes,
        "num_channels": info.num_channels,
        "history": info.history,
        "horizon": info.horizon,
        "steps_per_day": info.steps_per_day,
        "node_ids": list(info.node_ids),
        "channels": list(info.channels),
        "description": info.description,
        "name": info.name,
    }
    arrays = {
        k: np.asarray(v, np.float32)
        for k, v in (("adjacency", info.adjacency), ("coords", info.coords))
        if v is not None
    }
    if arrays:
        tmp = directory / f".{DATA_ARRAYS}.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        tmp.replace(directory / DATA_ARRAYS)
    atomic_write_json(directory / DATA_INFO, plain)


def load_data_info(directory: str | Path) -> DataInfo:
    """The :class:`DataInfo` written by :func:`save_data_info`."""
    directory = Path(directory)
    path = _run_file(directory, DATA_INFO)
    plain = json.loads(path.read_text())
    arrays: dict[str, np.ndarray] = {}
    if (directory / DATA_ARRAYS).is_file():
        with np.load(directory / DATA_ARRAYS, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    return DataInfo(**plain, adjacency=arrays.get("adjacency"), coords=arrays.get("coords"))
