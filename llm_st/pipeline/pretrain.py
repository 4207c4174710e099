"""``llm-st pretrain``: pre-train a small forecasting LM from scratch on serialized series.

What Chronos (Ansari et al., 2024) did with T5 and synthetic data, with this package's
parts: a corpus of series (synthetic generators over several seeds and parameter
settings, plus the *training rows* of named datasets) is written as LLMTime text by the
prompt builder, a byte-level BPE tokenizer that keeps every digit its own token is trained
on those texts, and a causal LM (GPT-2 or LLaMA layout) initialized at random learns to
continue a history with its next values: the ``sft`` objective on the engine's
:class:`~llm_st.engine.trainer.Trainer`, so checkpoints, ``--resume`` and early stopping on
the validation loss are those of every other run. The examples are the fine-tuning ones
(:func:`~llm_st.prompting.dataset.build_sft_dataset`, one dataset per series, concatenated);
with ``corpus.loss_on_history`` (the default) every token of a training example is a
label, the history's too, so each example teaches every next value of its series, not
only the answer's (Chronos' loss), which is what makes minutes of CPU training enough. The
result is a plain Hugging Face model directory that the zero-shot path, ``text_lm``
fine-tuning and every backbone loader take, scored zero-shot on held-out real data beside
the last value and the historical average (greedy decoding).

A recipe (YAML; unknown keys, wrong types and contradictions are refused like the
training recipes', see :mod:`llm_st.config`)::

    corpus:
      template: plain                 # prompt template (the text the LM learns to continue)
      serializer: null                # SerializerConfig fields over LLMTime's LLaMA format
      val_fraction: 0.1               # last rows of each series: validation windows
      val_windows: 8
      sources:
        - spec: synthetic-traffic     # a generator: params x variations x seeds
          params: {num_days: 7}
          variations: [{drift: 0.0}, {drift: 0.5, incident_rate: 0.1}]
          seeds: 4                    # seeds 0..3 (or a list)
          history: [24, 48]           # drawn per generated series (or one number)
          horizon: 12
          max_windows: 64
          max_nodes: 8
        - spec: ETTh2                 # a named dataset: its training rows only
    tokenizer: {vocab_size: 384}
    model: {arch: llama, layers: 4, hidden: 128, heads: 4, context_length: 1024}
    training: {max_steps: 300, batch_size: 16, lr: 3.0e-3, eval_every: 100}
    eval:
      datasets:
        - {spec: LosLoop, history: 48, horizon: 12, max_windows: 32, max_nodes: 16}

The output directory ``out/`` is a run directory (``checkpoints/``, ``log.jsonl``,
``model.safetensors``, ``metrics.json``) plus ``pretrain_recipe.yaml`` (the resolved
recipe), ``init/`` (the random-weight model and the tokenizer the run started from) and
``model/``, the pre-trained LM as a Hugging Face directory (safetensors + tokenizer).

:func:`pretrained_lm` builds the shipped recipe once into the cache, where the name
``st-lm`` resolves (:mod:`llm_st.backbones.pretrained_here`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml

from llm_st.backbones.pretrained_here import (
    MODEL_DIR,
    TEST_RECIPE,
    pretrained_root,
    recipe_file,
)
from llm_st.config import (
    TrainingConfig,
    _from_dict,
    _help,
    _require,
    _Section,
    _unknown_key,
    apply_overrides,
    read_yaml_file,
)
from llm_st.data.container import STData
from llm_st.data.splits import Split
from llm_st.data.task import ForecastTask, prepare_task
from llm_st.errors import ConfigError, DataNotFoundError
from llm_st.tokens.serialize import LLMTIME_LLAMA, SerializerConfig

logger = logging.getLogger("llm_st")

ARCHS = ("gpt2", "llama")
TOKENIZER_KINDS = ("byte_bpe",)
BASELINES = ("last_value", "historical_average")
RECIPE_NAME = "pretrain_recipe.yaml"
INIT_DIR = "init"
EOS, PAD = "<|endoftext|>", "<|pad|>"
SYNTHETIC_PREFIX = "synthetic"


# ====================================================================== recipe
@dataclass
class SourceConfig(_Section):
    """One source of the corpus: a synthetic generator (several seeds and settings) or a
    named dataset / file, of which only the training rows are used."""

    _section: ClassVar[str] = "corpus.sources[]"

    spec: str = _help(
        "synthetic-traffic, synthetic-grid, a named dataset (ETTh2, SZ-taxi, ...) or a file"
    )
    params: dict[str, Any] = _help(
        "generator parameters of every series of a synthetic source (num_nodes, num_days, "
        "interval_minutes, drift, incident_rate, ...); loader arguments of a named one",
        default_factory=dict,
    )
    variations: list[dict[str, Any]] = _help(
        "parameter settings, each over params and combined with every seed (synthetic only)",
        default_factory=lambda: [{}],
    )
    seeds: int | list[int] = _help(
        "seeds of a synthetic source: a count n (seeds 0..n-1) or a list", default=1
    )
    history: int | list[int] = _help(
        "history steps of the prompts: a number, or a list drawn from per series", default=48
    )
    horizon: int | list[int] = _help(
        "steps of the answer: a number, or a list drawn from per series", default=12
    )
    max_windows: int | None = _help(
        "training windows per series, evenly spread (null: all)", default=64
    )
    max_nodes: int | None = _help("nodes per series, evenly spread (null: all)", default=8)
    data_dir: str | None = _help("root of the named datasets (default $LLM_ST_DATA)", default=None)

    @property
    def synthetic(self) -> bool:
        return self.spec.strip().lower().startswith(SYNTHETIC_PREFIX)

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def _check(self) -> None:
        where = f"source {self.spec!r}"
        for name in ("history", "horizon"):
            values = getattr(self, name)
            values = values if isinstance(values, list) else [values]
            _require(
                bool(values) and min(values) >= 1,
                f"{where}: {name}={getattr(self, name)} must be positive steps",
                f"set {name} to e.g. 48 or [24, 48]",
            )
        for name in ("max_windows", "max_nodes"):
            value = getattr(self, name)
            _require(
                value is None or value >= 1,
                f"{where}: {name}={value} must be at least 1",
                f"set {name} >= 1 or null",
            )
        _require(
            bool(self.seed_list()) and bool(self.variations),
            f"{where}: no seeds or no variations",
            "give seeds >= 1 and at least one variation ({} for params as they are)",
        )
        if not self.synthetic:
            _require(
                self.seed_list() == [0] and self.variations == [{}],
                f"{where}: seeds and variations apply to synthetic generators only",
                "drop them for a named dataset (its training rows are used once)",
            )


@dataclass
class CorpusConfig(_Section):
    """The series the LM learns from and how they are written as text."""

    _section: ClassVar[str] = "corpus"

    sources: list[SourceConfig] = _help("the sources of the corpus (see SourceConfig)")
    template: str = _help(
        "prompt template (plain: the serialized history only, as LLMTime)", default="plain"
    )
    serializer: dict[str, Any] | None = _help(
        "fields of llm_st.tokens.serialize.SerializerConfig over LLMTime's LLaMA format "
        "(plain digits, ',' between steps, precision 3, alpha 0.99, beta 0.3), the preset "
        "the zero-shot path picks for this tokenizer; null: that format as it is",
        default=None,
    )
    max_length: int | None = _help(
        "token budget of prompt + answer (older history steps are cut); null: the model's "
        "context length",
        default=None,
    )
    val_fraction: float = _help(
        "fraction of the rows of every series (the last ones) whose windows validate",
        default=0.1,
    )
    val_windows: int = _help("validation windows per series, evenly spread", default=8)
    loss_on_history: bool = _help(
        "train on every next token of the series, the history's too (as Chronos), not only "
        "on the answer's; the validation loss stays the answer's",
        default=True,
    )

    def _check(self) -> None:
        _require(
            bool(self.sources), "corpus.sources is empty", "add a source, e.g. synthetic-traffic"
        )
        _require(
            0 < self.val_fraction < 0.5,
            f"corpus.val_fraction={self.val_fraction} is outside (0, 0.5)",
            "use e.g. 0.1",
        )
        _require(
            self.val_windows >= 1,
            f"corpus.val_windows={self.val_windows} must be at least 1",
            "use e.g. 8",
        )
        self.serializer_config()  # refuses unknown fields now, not after the corpus is built

    def serializer_config(self) -> SerializerConfig:
        """LLMTime's LLaMA format with the recipe's fields."""
        try:
            return dataclasses.replace(LLMTIME_LLAMA, **(self.serializer or {}))
        except TypeError as exc:
            raise ConfigError(
                f"corpus.serializer {self.serializer} has fields SerializerConfig does not ({exc})",
                "use precision, digit_sep, time_sep, minus_sign, missing_token, alpha, beta, basic",
            ) from None


@dataclass
class TokenizerConfig(_Section):
    """The tokenizer trained on the corpus texts."""

    _section: ClassVar[str] = "tokenizer"

    kind: str = _help(
        "byte_bpe: byte-level BPE with every digit its own token",
        default="byte_bpe",
        choices=TOKENIZER_KINDS,
    )
    vocab_size: int = _help(
        "largest vocabulary (256 bytes, 2 special tokens and the merges learnt)", default=384
    )
    windows: int = _help(
        "windows per series whose prompt and answer texts train the tokenizer", default=8
    )

    def _check(self) -> None:
        _require(
            self.vocab_size >= 258,
            f"tokenizer.vocab_size={self.vocab_size} is below the 256 bytes and 2 special tokens",
            "use at least 258, e.g. 384",
        )
        _require(
            self.windows >= 1, f"tokenizer.windows={self.windows} must be at least 1", "use e.g. 8"
        )


@dataclass
class LMConfig(_Section):
    """The shape of the causal LM, initialized at random."""

    _section: ClassVar[str] = "model"

    arch: str = _help(
        "llama (RoPE, RMSNorm, SwiGLU) or gpt2 (learned positions, LayerNorm, GELU)",
        default="llama",
        choices=ARCHS,
    )
    layers: int = _help("Transformer blocks", default=4)
    hidden: int = _help("width of the residual stream", default=128)
    heads: int = _help("attention heads (hidden must be a multiple)", default=4)
    kv_heads: int | None = _help(
        "key/value heads of llama (grouped-query attention); null: heads", default=None
    )
    intermediate: int | None = _help(
        "width of the MLP; null: 4 x hidden (gpt2), 8/3 x hidden rounded to 32 (llama)",
        default=None,
    )
    context_length: int = _help(
        "longest sequence (positions of gpt2, max_position_embeddings of llama)", default=1024
    )
    tie_embeddings: bool = _help("share the input embedding and the output head", default=True)

    def _check(self) -> None:
        for name in ("layers", "hidden", "heads", "context_length"):
            value = getattr(self, name)
            _require(value >= 1, f"model.{name}={value} must be at least 1", f"set model.{name}")
        _require(
            self.hidden % self.heads == 0,
            f"model.hidden={self.hidden} is not a multiple of model.heads={self.heads}",
            "pick heads that divide hidden",
        )
        kv = self.kv_heads or self.heads
        _require(
            self.heads % kv == 0,
            f"model.heads={self.heads} is not a multiple of model.kv_heads={kv}",
            "pick kv_heads that divide heads",
        )

    def mlp_width(self) -> int:
        if self.intermediate is not None:
            return self.intermediate
        if self.arch == "gpt2":
            return 4 * self.hidden
        return 32 * math.ceil(8 * self.hidden / 3 / 32)


@dataclass
class EvalSetConfig(_Section):
    """A held-out dataset whose test split is forecast zero-shot after pre-training."""

    _section: ClassVar[str] = "eval.datasets[]"

    spec: str = _help("a named dataset (LosLoop, ETTh1, ...), a synthetic spec or a file")
    history: int = _help("history steps of the prompts", default=48)
    horizon: int = _help("forecast steps", default=12)
    max_windows: int | None = _help("test windows forecast, evenly spread (null: all)", default=32)
    max_nodes: int | None = _help("nodes forecast, evenly spread (null: all)", default=16)
    data_dir: str | None = _help("root of the named datasets (default $LLM_ST_DATA)", default=None)


@dataclass
class EvalConfig(_Section):
    """The zero-shot check on held-out real data, beside the non-learned baselines."""

    _section: ClassVar[str] = "eval"

    datasets: list[EvalSetConfig] = _help(
        "held-out datasets (their test splits); empty: no check", default_factory=list
    )
    baselines: list[str] = _help(
        "non-learned methods scored on the same windows and nodes",
        default_factory=lambda: list(BASELINES),
    )
    decode_batch_size: int = _help("series per generate call (greedy decoding)", default=64)
    part: str = _help("the split forecast", default="test", choices=("val", "test"))


@dataclass
class PretrainRecipe(_Section):
    """A whole pre-training: corpus, tokenizer, model, training and the held-out check."""

    corpus: CorpusConfig = _help("the series and how they are written")
    tokenizer: TokenizerConfig = _help(
        "the tokenizer trained on the corpus", default_factory=TokenizerConfig
    )
    model: LMConfig = _help("the shape of the LM", default_factory=LMConfig)
    training: TrainingConfig = _help(
        "optimization (the engine's training settings)", default_factory=TrainingConfig
    )
    eval: EvalConfig = _help("the zero-shot check", default_factory=EvalConfig)
    name: str | None = _help("name shown in reports", default=None)

    def _check(self) -> None:
        _require(
            self.training.select_metric == "val_loss",
            f"training.select_metric={self.training.select_metric!r}: pre-training selects on "
            "the validation loss of the corpus",
            "use select_metric: val_loss",
        )


def recipe_from_dict(raw: dict[str, Any], overrides: Sequence[str] = ()) -> PretrainRecipe:
    """A :class:`PretrainRecipe` from plain data (as YAML gives it) plus ``overrides``."""
    raw = apply_overrides(copy.deepcopy(raw or {}), list(overrides), PretrainRecipe)
    for key in raw:
        if key not in {f.name for f in dataclasses.fields(PretrainRecipe)}:
            raise _unknown_key(str(key), "", PretrainRecipe)
    return _from_dict(PretrainRecipe, raw, "")


def load_pretrain_recipe(path: str | Path, overrides: Sequence[str] = ()) -> PretrainRecipe:
    """Read a YAML pre-training recipe, apply ``key=value`` overrides and validate it."""
    path = Path(path)
    raw = read_yaml_file(path, "pre-training recipe", "alignment/pretrain/st_lm.yaml")
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"recipe {str(path)!r} is not a mapping", "write sections corpus:, ...")
    return recipe_from_dict(raw or {}, overrides)


def save_pretrain_recipe(recipe: PretrainRecipe, path: str | Path) -> None:
    """Write the resolved recipe as YAML (read back to an equal recipe)."""
    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))


# ====================================================================== corpus
@dataclass
class CorpusSeries:
    """One series of the corpus: its task (training and validation windows) and origin.

    Attributes
    ----------
    name
        The generator spec with its parameters and seed, or the dataset name.
    task
        Train / validation split of the rows used (no test part).
    source
        The recipe's source it comes from.
    rows
        ``[start, stop)`` rows of the named dataset that were used (its training split);
        None for generated series.
    """

    name: str
    task: ForecastTask
    source: SourceConfig
    rows: tuple[int, int] | None = None


def _draw(values: int | list[int], rng: np.random.Generator) -> int:
    return int(values) if isinstance(values, int) else int(rng.choice(values))


def _train_val_task(data: STData, history: int, horizon: int, val_fraction: float) -> ForecastTask:
    """``data`` split into training rows and the last ``val_fraction`` of them for
    validation (no test part), the scaler fit on the training rows."""
    n_val = max(1, round(data.num_steps * val_fraction))
    n_train = data.num_steps - n_val
    if n_train < 1:
        raise ConfigError(
            f"corpus series {data.name} of {data.num_steps} rows has none left for training",
            "use longer series or a smaller corpus.val_fraction",
        )
    # the last rows are split off as prepare_task's test part (so the scaler is fit on the
    # training rows alone), then named the validation part
    task = prepare_task(data, history, horizon, borders=(n_train, 0, n_val))
    split = Split((0, n_train), (n_train, data.num_steps), (data.num_steps, data.num_steps))
    return dataclasses.replace(task, split=split)


def build_corpus(recipe: PretrainRecipe) -> list[CorpusSeries]:
    """The series of the corpus, in recipe order (sources, then variations, then seeds).

    Synthetic sources are generated (``params`` updated by each variation, every seed);
    named datasets are loaded and cut to the rows of their protocol's training split
    before anything else sees them, so no validation or test row of a benchmark enters
    the corpus. Each series is split chronologically into training and validation rows
    (``corpus.val_fraction``); history and horizon lists are drawn from per series with a
    generator seeded by ``training.seed``.
    """
    from llm_st.data import load

    corpus = recipe.corpus
    rng = np.random.default_rng([recipe.training.seed, 7])
    out: list[CorpusSeries] = []
    for source in corpus.sources:
        runs: list[tuple[str, STData, tuple[int, int] | None]] = []
        if source.synthetic:
            name = source.spec.strip().lower()
            for variation in source.variations:
                params = {**source.params, **variation}
                for seed in source.seed_list():
                    data = load(name, **{**params, "seed": seed})
                    text = ",".join(f"{k}={v}" for k, v in {**params, "seed": seed}.items())
                    runs.append((f"{name}:{text}", data, None))
        else:
            data = load(source.spec, data_dir=source.data_dir, **source.params)
            protocol = prepare_task(data, 1, 1)  # the dataset's split, for its training rows
            start, stop = protocol.split.train
            runs.append(
                (f"{data.name} (training rows {start}..{stop})", data.time_slice(start, stop),
                 (start, stop))
            )  # fmt: skip
        for name, data, rows in runs:
            history, horizon = _draw(source.history, rng), _draw(source.horizon, rng)
            task = _train_val_task(data, history, horizon, corpus.val_fraction)
            for part in ("train", "val"):
                if len(task.index(part)) == 0:
                    raise ConfigError(
                        f"corpus series {name} has no {part} windows of history {history} and "
                        f"horizon {horizon} ({data.num_steps} rows)",
                        "use longer series (num_days), a shorter history or a larger "
                        "corpus.val_fraction",
                    )
            out.append(CorpusSeries(name, task, source, rows))
    return out


# ====================================================================== tokenizer
def bootstrap_tokenizer(model_max_length: int) -> Any:
    """Bytes only (no merges) with the special tokens: what writes the corpus texts that
    the real tokenizer is then trained on (digits are single tokens in both)."""
    return train_digit_tokenizer([], 0, model_max_length)


def train_digit_tokenizer(texts: Sequence[str], vocab_size: int, model_max_length: int) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` in which every digit is a token.

    Digits are split from each other before byte-level pre-tokenization
    (``Digits(individual_digits=True)``), so no merge can join two of them: the
    tokenizer writes numbers as LLaMA's does and
    :func:`~llm_st.tokens.serialize.preset_for_tokenizer` picks LLMTime's plain-digit
    format for it. ``<|endoftext|>`` is bos, eos and unk, ``<|pad|>`` pads; no special token
    is added to an encoded text. Training is deterministic.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=PAD,
        model_max_length=model_max_length,
    )


def corpus_texts(recipe: PretrainRecipe, series: list[CorpusSeries], tokenizer: Any) -> list[str]:
    """Prompt + answer texts of the first ``tokenizer.windows`` windows (evenly spread)
    of every series' training part, as :func:`~llm_st.prompting.dataset.sft_texts` writes
    them."""
    from llm_st.prompting.dataset import SFTDataConfig, sft_texts

    texts: list[str] = []
    for s in series:
        config = SFTDataConfig(
            template=recipe.corpus.template,
            serializer=recipe.corpus.serializer_config(),
            max_length=recipe.corpus.max_length or recipe.model.context_length,
            max_windows=recipe.tokenizer.windows,
            max_nodes=s.source.max_nodes,
        )
        texts += [
            prompt + answer for prompt, answer in sft_texts(s.task, "train", tokenizer, config)
        ]
    return texts


def build_tokenizer(recipe: PretrainRecipe, series: list[CorpusSeries]) -> Any:
    """The tokenizer of the recipe, trained on the corpus texts (:func:`corpus_texts`)."""
    context = recipe.model.context_length
    texts = corpus_texts(recipe, series, bootstrap_tokenizer(context))
    return train_digit_tokenizer(texts, recipe.tokenizer.vocab_size, context)


# ====================================================================== model
def lm_config(config: LMConfig, tokenizer: Any) -> Any:
    """The ``transformers`` config of the LM for ``tokenizer``'s vocabulary."""
    from transformers import GPT2Config, LlamaConfig

    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if config.arch == "gpt2":
        return GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=config.context_length,
            n_embd=config.hidden,
            n_layer=config.layers,
            n_head=config.heads,
            n_inner=config.mlp_width(),
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=config.tie_embeddings,
            **ids,
        )
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden,
        intermediate_size=config.mlp_width(),
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads or config.heads,
        max_position_embeddings=config.context_length,
        tie_word_embeddings=config.tie_embeddings,
        **ids,
    )


def write_init_model(config: LMConfig, tokenizer: Any, out: Path) -> Path:
    """Save the LM with random weights (seed 0, as the tiny models) and ``tokenizer`` into
    ``out`` (replaced), a Hugging Face model directory."""
    from transformers import AutoModelForCausalLM

    from llm_st.backbones.tiny import _save_random

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _save_random(AutoModelForCausalLM.from_config, lm_config(config, tokenizer), tokenizer, out)
    return out


# ====================================================================== datasets
def corpus_datasets(
    model: Any,
    series: list[CorpusSeries],
    val_windows: int,
    cache_dir: Path | None,
    loss_on_history: bool = False,
) -> tuple[Any, Any]:
    """``(train, val)``: the SFT datasets of every series (built with
    :func:`~llm_st.prompting.dataset.build_sft_dataset`, cached under ``cache_dir``),
    concatenated in corpus order. ``loss_on_history``: every token of a training row is
    a label (the prompt's too), not only the answer's."""
    import datasets

    from llm_st.prompting.dataset import build_sft_dataset

    parts: dict[str, list[Any]] = {"train": [], "val": []}
    for s in series:
        for part, windows in (("train", s.source.max_windows), ("val", val_windows)):
            # the prompt settings the model decodes with; the source's nodes
            config = model.sft_config(part, max_windows=windows, max_nodes=s.source.max_nodes)
            parts[part].append(build_sft_dataset(s.task, part, model.tokenizer, config, cache_dir))
    train, val = (datasets.concatenate_datasets(parts[p]) for p in ("train", "val"))
    if loss_on_history:
        train = train.map(
            _label_every_token,
            batched=True,
            features=train.features,
            new_fingerprint=f"{train._fingerprint}-all-labels"[:64],
            desc="labels",
        )
    return train, val


def _label_every_token(batch: dict[str, list]) -> dict[str, list]:
    return {"labels": batch["input_ids"]}


def sequence_lengths(dataset: Any) -> np.ndarray:
    """``[rows]`` tokens of every row of an SFT dataset."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    return pc.list_value_length(table["input_ids"]).to_numpy(zero_copy_only=False).astype(np.int64)


def tokens_seen(lengths: np.ndarray, config: TrainingConfig, epoch: int, batch: int) -> int:
    """Tokens of the training rows the engine processed up to batch ``batch`` of ``epoch``
    (one process), replaying its data order (:func:`~llm_st.engine.seeding.epoch_order`)."""
    from llm_st.engine.seeding import epoch_order, process_batches

    total = int(lengths.sum()) * epoch
    if batch:
        order = epoch_order(len(lengths), config.seed, epoch)
        done = process_batches(order, config.batch_size)[:batch]
        total += int(sum(lengths[b].sum() for b in done))
    return total


# ====================================================================== held-out check
def heldout_scores(
    model_dir: str | Path,
    config: EvalConfig,
    serializer: SerializerConfig,
    template: str,
    device: str | None = None,
) -> dict[str, Any]:
    """Masked metrics of the LM in ``model_dir`` forecasting the held-out datasets
    zero-shot (greedy decoding), and of the baselines on the same windows and nodes.

    Every method is a :class:`~llm_st.pipeline.forecast.ForecastPipeline` scored by
    :func:`~llm_st.pipeline.evaluate.evaluate_pipeline` on the same task restricted to the
    same nodes, with the same evenly spread windows; the baselines are fit on the
    dataset's training rows.

    Returns
    -------
    dict
        Per dataset name: ``{"lm": metrics, <baseline>: metrics, ..., "num_windows",
        "num_nodes", "valid_fraction", "history", "horizon", "metric_scale", "seconds"}``,
        each ``metrics`` as ``{"avg": {mae, mse, rmse, mape}, "h3": ...}``; for a dataset
        whose files are not found, ``{"skipped": reason}`` (logged as a warning).
    """
    from llm_st.data import load
    from llm_st.data.windows import pick_windows
    from llm_st.pipeline.evaluate import evaluate_pipeline
    from llm_st.pipeline.forecast import ForecastPipeline

    out: dict[str, Any] = {}
    for spec in config.datasets:
        began = time.perf_counter()
        try:
            data = load(spec.spec, data_dir=spec.data_dir)
        except DataNotFoundError as exc:  # the LM is built all the same; the check waits
            logger.warning("held-out check on %s skipped: %s", spec.spec, exc.problem)
            out[spec.spec] = {"skipped": exc.problem}
            continue
        task = prepare_task(data, spec.history, spec.horizon)
        nodes = pick_windows(data.num_nodes, spec.max_nodes)  # the same even spread
        task = dataclasses.replace(
            task, data=data.select_nodes(nodes), scaler=task.scaler.subset(nodes)
        )
        horizons = tuple(sorted({h for h in (3, 6, 12) if h <= spec.horizon} | {spec.horizon}))
        lm = ForecastPipeline.from_pretrained(
            str(model_dir),
            spec.history,
            spec.horizon,
            device=device,
            batch_size=config.decode_batch_size,
            template=template,
            serializer=serializer,
            num_samples=1,
            temperature=0.0,
        )
        scores: dict[str, Any] = {}
        result, _ = evaluate_pipeline(
            lm, task, config.part, horizons=horizons, max_windows=spec.max_windows, progress=False
        )
        scores["lm"] = result["metrics"]
        row = {
            "num_windows": result["num_windows"],
            "num_nodes": len(nodes),
            "valid_fraction": result.get("valid_fraction"),
            "metric_scale": result["metric_scale"],
        }
        for name in config.baselines:
            base = ForecastPipeline.from_method(name, spec.history, spec.horizon, device="cpu")
            result, _ = evaluate_pipeline(
                base, task, config.part, horizons=horizons, max_windows=spec.max_windows,
                progress=False,
            )  # fmt: skip
            scores[name] = result["metrics"]
        out[data.name] = {
            **scores,
            **row,
            "history": spec.history,
            "horizon": spec.horizon,
            "seconds": time.perf_counter() - began,
        }
        logger.info(
            "held-out %s (%d windows x %d nodes): MAE %s",
            data.name,
            row["num_windows"],
            len(nodes),
            ", ".join(f"{k} {v['avg']['mae']:.4g}" for k, v in scores.items()),
        )
    return out


def summary_line(metrics: dict[str, Any]) -> str:
    """One line: held-out MAE of the LM and the baselines per dataset, time, output."""
    parts = []
    for name, row in metrics.get("heldout", {}).items():
        if "skipped" in row:
            parts.append(f"{name} skipped (not found)")
            continue
        values = " | ".join(
            f"{'LM' if k == 'lm' else k.replace('_', ' ')} {row[k]['avg']['mae']:.4g}"
            for k in ("lm", *metrics.get("baselines", ()))
            if k in row
        )
        parts.append(f"{name} MAE: {values}")
    held = "; ".join(parts) or "no held-out check"
    return (
        f"{held}; {metrics['params']['total']:,} parameters, {metrics['steps']} steps, "
        f"{metrics['tokens_seen']:,} tokens, {metrics['total_time_s']:.0f} s -> "
        f"{metrics['model_dir']}"
    )


# ====================================================================== the run
def pretrain(
    recipe: PretrainRecipe,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Pre-train the recipe's LM into ``out_dir`` (see the module docstring).

    Parameters
    ----------
    recipe
        The pre-training recipe.
    out_dir
        The run directory; refused if it holds results unless ``resume`` (continue the
        interrupted run from its latest checkpoint: the same weights, bit for bit, as an
        uninterrupted run on the same hardware) or ``overwrite`` (start over).
    on_step
        Called with the optimizer step after every step (raising ``KeyboardInterrupt``
        there interrupts the run).

    Returns
    -------
    dict
        The content of ``metrics.json``: ``heldout`` (per held-out dataset, the MAE etc.
        of the LM and of each baseline, :func:`heldout_scores`), ``baselines``,
        ``model_dir``, ``params`` (trainable / total), ``steps``, ``epochs``,
        ``best_step``, ``val_loss``, ``stopped_early``, ``train_time_s``,
        ``samples_per_s``, ``tokens_seen`` (prompt and answer tokens of the examples
        trained on), ``examples_seen``, ``corpus`` (series, training and validation rows,
        tokens), ``tokenizer`` (vocabulary size), ``build_time_s`` (corpus, tokenizer and
        datasets), ``total_time_s``.
    """
    from llm_st.engine.accel import make_accelerator
    from llm_st.engine.checkpoint import CheckpointManager
    from llm_st.engine.run import check_resumable, open_run_dir
    from llm_st.engine.rundir import atomic_write_json
    from llm_st.engine.seeding import seed_everything
    from llm_st.engine.trainer import Trainer, count_parameters
    from llm_st.models.base import DataInfo
    from llm_st.models.text_lm import TextLM
    from llm_st.objectives import build_objective
    from llm_st.objectives.sft import default_sft_cache

    started = time.perf_counter()
    out = Path(out_dir)
    cfg = recipe.training
    acc = make_accelerator(cfg)
    if resume:
        check_resumable(out / RECIPE_NAME, recipe, out)
    run = open_run_dir(out, acc, resume, overwrite)
    main = acc.is_main_process
    if main:
        for stale in (out / MODEL_DIR, out / INIT_DIR) if overwrite else ():
            shutil.rmtree(stale, ignore_errors=True)
        save_pretrain_recipe(recipe, out / RECIPE_NAME)
    acc.wait_for_everyone()

    seed_everything(cfg.seed)
    series = build_corpus(recipe)
    logger.info(
        "pre-training corpus: %d series from %d sources", len(series), len(recipe.corpus.sources)
    )
    tokenizer = build_tokenizer(recipe, series)
    init = out / INIT_DIR
    if main:
        write_init_model(recipe.model, tokenizer, init)
    acc.wait_for_everyone()
    first = series[0].task
    info = DataInfo.from_data(first.data, first.history, first.horizon)
    serializer = recipe.corpus.serializer_config()
    model = TextLM(
        info,
        backbone={"source": str(init), "freeze": "full"},
        template=recipe.corpus.template,
        serializer=serializer,
        max_length=recipe.corpus.max_length or recipe.model.context_length,
        decode_batch_size=recipe.eval.decode_batch_size,
    )
    cache = default_sft_cache()
    train_set, val_set = corpus_datasets(
        model, series, recipe.corpus.val_windows, cache, recipe.corpus.loss_on_history
    )
    objective = build_objective("sft", info, model, cache_dir=cache)
    objective.use_data("train", train_set)
    objective.use_data("val", val_set)
    lengths = sequence_lengths(train_set)
    built = time.perf_counter() - started
    logger.info(
        "pre-training on %d examples (%d tokens), validating on %d; built in %.1f s",
        len(train_set), int(lengths.sum()), len(val_set), built,
    )  # fmt: skip

    seed_everything(cfg.seed)
    trainer = Trainer(model, objective, first, cfg, run, on_step=on_step, accelerator=acc)
    fit = trainer.fit(resume=resume)
    st = trainer.state
    target = out / MODEL_DIR
    if main:
        staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIR}-", dir=out))
        try:
            model.hf_model.save_pretrained(str(staging), safe_serialization=True)
            model.tokenizer.save_pretrained(str(staging))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    acc.wait_for_everyone()
    heldout = (
        heldout_scores(target, recipe.eval, serializer, recipe.corpus.template, str(acc.device))
        if main
        else {}
    )
    metrics = {
        "name": recipe.name,
        "model_dir": str(target),
        "heldout": heldout,
        "baselines": list(recipe.eval.baselines),
        "decoding": "greedy",
        **{k: fit[k] for k in ("steps", "epochs", "best_step", "val_loss", "stopped_early")},
        "train_time_s": fit["train_time_s"],
        "samples_per_s": fit["samples_per_s"],
        "params": count_parameters(model),
        "examples_seen": st.samples,
        "tokens_seen": tokens_seen(lengths, cfg, st.epoch, st.batch_in_epoch),
        "corpus": {
            "series": len(series),
            "train_examples": len(train_set),
            "val_examples": len(val_set),
            "train_tokens": int(lengths.sum()),
        },
        "tokenizer": {"vocab_size": len(model.tokenizer)},
        "build_time_s": built,
        "total_time_s": time.perf_counter() - started,
    }
    if main:
        atomic_write_json(out / "metrics.json", metrics)
        if CheckpointManager(run.checkpoints).latest() is None:
            logger.warning("no checkpoint was written (no evaluation ran)")
    acc.wait_for_everyone()
    return metrics


# ====================================================================== the cached LM
def pretrained_lm(recipe_path: str | Path | None = None, cache: bool = True) -> Path:
    """The model directory of the LM pre-trained from ``recipe_path`` (default: the
    shipped ``alignment/pretrain/st_lm.yaml``, the one ``st-lm`` names), built on first use.

    The directory is ``$LLM_ST_CACHE/models/st-lm-<sha256 of the recipe text[:12]>/model``
    (:func:`~llm_st.backbones.pretrained_here.pretrained_root`). The build runs into a
    temporary sibling folder that is renamed into place when complete, so a concurrent or
    interrupted build never leaves a half-written model behind; when another process
    finished first, its directory is kept. ``cache=False`` builds again (and replaces it).
    """
    from llm_st.engine.rundir import atomic_write_json

    path = Path(recipe_path) if recipe_path is not None else recipe_file()
    root = pretrained_root(path)
    target = root / MODEL_DIR
    if cache and (target / "config.json").is_file():
        return target
    recipe = load_pretrain_recipe(path)
    root.parent.mkdir(parents=True, exist_ok=True)
    logger.info("pre-training the forecasting LM on synthetic series (once; cached in %s)", root)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        pretrain(recipe, staging, overwrite=True)
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)  # never resumed
        if not cache:
            shutil.rmtree(root, ignore_errors=True)
        elif root.exists() and not (target / "config.json").is_file():
            shutil.rmtree(root, ignore_errors=True)  # left by an older, interrupted build
        try:
            os.rename(staging, root)
        except OSError:
            if not (target / "config.json").is_file():
                raise
        else:  # the metrics name the model where it now lies
            metrics = json.loads((root / "metrics.json").read_text())
            atomic_write_json(root / "metrics.json", {**metrics, "model_dir": str(target)})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def pretrained_test_lm() -> Path:
    """The small LM of ``alignment/pretrain/st_lm_test.yaml`` (tests fine-tune it)."""
    return pretrained_lm(recipe_file(TEST_RECIPE))
