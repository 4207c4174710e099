"""Supervised fine-tuning of a causal LM on forecasting prompts and their answers.

The objective of ``llm-st finetune``: the data are not the task's windows as tensors but
instruction examples built from them (:func:`~llm_st.prompting.dataset.build_sft_dataset`:
one prompt per window, node and channel, the answer written by the serializer the decoder
parses, tokenized with the prompt masked out of the labels, cached on disk), and the loss
is the model's cross-entropy on the answer tokens (``model.lm_loss``). The engine trains it
like any objective (accumulation, micro-batches weighted by answer tokens, checkpoints,
resume, several processes); only :meth:`SupervisedFineTuning.dataset` differs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from llm_st.config import cache_root
from llm_st.data.task import ForecastTask
from llm_st.errors import ConfigError
from llm_st.models.base import DataInfo
from llm_st.objectives.base import Objective
from llm_st.objectives.registry import register_objective
from llm_st.prompting.dataset import SFTBatches, build_sft_dataset


def default_sft_cache() -> Path:
    """Where instruction datasets are cached: ``$LLM_ST_CACHE/sft`` (default
    ``~/.cache/llm_st/sft``)."""
    return cache_root() / "sft"


@register_objective("sft")
class SupervisedFineTuning(Objective):
    """Cross-entropy of the answer tokens of instruction examples (module docstring).

    Parameters
    ----------
    info : DataInfo, optional
    model
        A model with ``lm_loss(batch)``, ``sft_config(part, **overrides)`` and a
        ``tokenizer`` (:class:`~llm_st.models.text_lm.TextLM` and the ST-token LM).
    packing
        Pack several examples into one sequence of at most ``max_length`` tokens (no
        attention across examples: a block-diagonal mask). Off by default: packing pays
        when examples are much shorter than ``max_length`` and changes which examples share
        a batch, so a packed run is not step-for-step the unpacked one.
    train_windows, train_nodes
        At most this many training windows and nodes, evenly spread (None: all of them).
    cache_dir
        Where built datasets are kept (default :func:`default_sft_cache`); ``false`` /
        ``""``: build in memory every time.
    """

    splittable = True  # a mean over answer tokens: micro-batches weighted by loss_weight

    def __init__(
        self,
        info: DataInfo | None = None,
        model: nn.Module | None = None,
        packing: bool = False,
        train_windows: int | None = None,
        train_nodes: int | None = None,
        cache_dir: str | os.PathLike | bool | None = None,
    ):
        super().__init__(info, model)
        if model is None or not callable(getattr(model, "lm_loss", None)):
            raise ConfigError(
                "the sft objective trains models that answer in text (lm_loss), e.g. text_lm",
                "use model: text_lm or st_token_lm with objective: sft",
            )
        for name, value in (("train_windows", train_windows), ("train_nodes", train_nodes)):
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value} must be at least 1", "or null for all")
        self.packing = bool(packing)
        self.train_windows = train_windows
        if cache_dir is None or cache_dir is True:
            self.cache_dir: Path | None = default_sft_cache()
        elif cache_dir is False or cache_dir == "":
            self.cache_dir = None
        else:
            self.cache_dir = Path(cache_dir)
        # not sub-modules: the model is trained, the objective only reads its settings
        self._tokenizer = model.tokenizer
        self._configs = {
            part: model.sft_config(
                part,
                packing=self.packing and part == "train",
                **(
                    {"max_windows": train_windows, "max_nodes": train_nodes}
                    if part == "train"
                    else {}
                ),
            )
            for part in ("train", "val")
        }
        self._with_windows = bool(getattr(model, "needs_windows", False))
        # a model may count its loss terms itself (a regression head: observed targets); a
        # bound method, not the module, so the model is not registered a second time
        self._model_weight = getattr(model, "loss_weight", None)
        self._data: dict[tuple[int, str], SFTBatches] = {}
        self._prebuilt: dict[str, SFTBatches] = {}

    def use_data(self, part: str, dataset: datasets.Dataset) -> None:
        """Train (``part="train"``) or validate (``"val"``) on ``dataset`` instead of the
        examples of the task the engine passes: prebuilt rows of
        :func:`~llm_st.prompting.dataset.build_sft_dataset`, e.g. the concatenation of
        several sources' datasets (``datasets.concatenate_datasets``), as ``llm-st
        pretrain`` trains on a mixture of series. Models that read the windows
        (``needs_windows``) cannot use it: the rows of a mixture have no one task."""
        if part not in self._configs:
            raise ConfigError(
                f"the sft objective trains on train and scores val, not {part!r}",
                "pass part='train' or part='val'",
            )
        if self._with_windows:
            raise ConfigError(
                "this model reads the raw windows beside the tokens; prebuilt rows have none",
                "train it on one task (objective.dataset builds its examples)",
            )
        pad = self._tokenizer.pad_token_id
        if pad is None:
            pad = self._tokenizer.eos_token_id
        self._prebuilt[part] = SFTBatches(dataset, pad)

    def dataset(self, task: ForecastTask, part: str) -> SFTBatches:
        """The instruction examples of ``part`` of ``task`` (built once per task and part),
        or the rows given to :meth:`use_data` for ``part``."""
        if part in self._prebuilt:
            return self._prebuilt[part]
        key = (id(task), part)
        if key not in self._data:
            config = self._configs.get(part)
            if config is None:
                raise ConfigError(
                    f"the sft objective trains on train and scores val, not {part!r}",
                    "score the test split by forecasting (evaluate)",
                )
            ds = build_sft_dataset(task, part, self._tokenizer, config, self.cache_dir)
            windows = task.dataset(part) if self._with_windows else None
            pad = self._tokenizer.pad_token_id
            if pad is None:
                pad = self._tokenizer.eos_token_id
            self._data[key] = SFTBatches(ds, pad, windows)
        return self._data[key]

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        return model.lm_loss(batch)

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Answer tokens of the batch (the loss is their mean), or the model's own count of
        its loss terms where it has one (``model.loss_weight``)."""
        if self._model_weight is not None:
            return self._model_weight(batch)
        return batch["num_label_tokens"].sum().float()
