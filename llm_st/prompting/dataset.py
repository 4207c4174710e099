"""The instruction (SFT) dataset: forecasting windows as prompt + answer token sequences.

:func:`build_sft_dataset` turns the windows of ``task.dataset(part)`` into a Hugging Face
:class:`datasets.Dataset` for fine-tuning a causal LM: one row per (window, node,
channel) series, in window-major, node, channel order. The prompt is what
:class:`~llm_st.prompting.context.PromptBuilder` renders at decode time (same template,
same number format, chat template applied where the template is a chat one); the
answer is the ``horizon`` target values written by the *same* fitted
:class:`~llm_st.tokens.serialize.NumberSerializer` state as the prompt's history (so on
the history's scale, as at decode time), in exactly the text the constrained decoder
(:class:`llm_st.zeroshot.constrained.NumberGrammar`) produces after that prompt: every
value is ``[digit_sep minus] (digit_sep digit)+ time_sep``, i.e. the continuation
*starts* with ``digit_sep`` (``" 1 2 3 , 4 5 6 ,"`` in the GPT-2 preset, ``"123,456,"``
in the LLaMA one), then the end-of-sequence token. Missing targets are written as the
missing token.

Tokens: the prompt is tokenized with ``add_special_tokens=batch.add_special_tokens``,
the answer separately, without special tokens, *value by value* (the decoder's grammar
never lets a token span two values, while a tokenizer may merge across the boundary,
e.g. ``",-"`` before a negative value) and *as a continuation* (some tokenizers,
sentencepiece LLaMA among them, put a word-boundary token in front of a text that
starts a sequence; each value is tokenized after an anchor text that is then dropped,
and the ids are checked to decode to exactly the value: :func:`continuation_ids`).
``input_ids = prompt + answer + [eos]``, ``labels = [-100] * len(prompt) + answer +
[eos]``. Prompts too long for
``max_length`` lose their oldest history steps (:meth:`PromptBuilder.fit_to_budget`);
the instruction and the answer are never cut.

Columns (:data:`SFT_FEATURES`): ``window`` (index into ``task.dataset(part)``), ``node``,
``channel``, ``input_ids``, ``labels``, ``prompt_length`` (prompt tokens, placeholders
included), ``kept`` (history steps shown) and ``st_positions`` (token positions of the
spatio-temporal placeholders, empty without them). With ``packing`` (see
:data:`PACKED_FEATURES`), consecutive examples share one sequence of at most
``max_length`` tokens and :func:`sft_collate` makes the block-diagonal causal mask.

Spatio-temporal placeholders (``st_tokens = K > 0``): the template reads the variable
``st_tokens`` (``prompts/st_instruct.j2``); it is rendered as a sentinel string, the
prompt is split there, both parts are tokenized (the first with the tokenizer's special
tokens, the second as a continuation without) and ``K`` placeholder ids (the pad id)
go in between; a model replaces their embeddings with its encoding of the raw window
(:class:`SFTBatches` serves the window tensors next to the tokens).

The build reads ``task.data`` only for the rows of each ``Dataset.map`` batch: nothing
materializes the window array. With ``cache_dir`` the dataset is saved under
``cache_dir/<fingerprint>/`` (:func:`dataset_fingerprint`) and loaded from there next time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import torch

from llm_st.data.container import STData
from llm_st.data.task import ForecastTask
from llm_st.data.windows import WindowDataset, pick_windows
from llm_st.errors import ConfigError, DataError
from llm_st.prompting.context import PromptBuilder, window_histories
from llm_st.prompting.templates import load_template
from llm_st.tokens.serialize import SerializerConfig, preset_for_tokenizer

SFT_FORMAT_VERSION = 1
"""Part of every fingerprint: bump when the rows this module writes change."""

IGNORE_INDEX = -100
"""Label of tokens that are not trained (the prompt, padding)."""

ST_SENTINEL = "<<llm_st:st_tokens>>"
"""What ``{{ st_tokens }}`` renders as before the prompt is split there."""

DEFAULT_MAX_LENGTH = 1024
# anchors a continuation is tokenized after (then dropped); the first that reproduces the
# text exactly is used for a row
_ANCHORS = ("\n", "0", "a", ",", " ")
_ROWS_PER_BATCH = 256  # series per Dataset.map batch (rounded to whole windows)
_MAX_FIT_ROUNDS = 8

_SEQ = datasets.Sequence(datasets.Value("int32"))
INDEX_FEATURES = datasets.Features(
    {
        "window": datasets.Value("int64"),
        "node": datasets.Value("int32"),
        "channel": datasets.Value("int32"),
    }
)
SFT_FEATURES = datasets.Features(
    {
        **INDEX_FEATURES,
        "input_ids": _SEQ,
        "labels": _SEQ,
        "prompt_length": datasets.Value("int32"),
        "kept": datasets.Value("int32"),
        "st_positions": _SEQ,
    }
)
"""Columns of an unpacked SFT dataset."""

PACKED_FEATURES = datasets.Features(
    {
        **INDEX_FEATURES,
        "input_ids": _SEQ,
        "labels": _SEQ,
        "position_ids": _SEQ,
        "example_lengths": _SEQ,
        "st_positions": _SEQ,
    }
)
"""Columns of a packed SFT dataset: ``window``, ``node``, ``channel`` are those of the
*first* example of the sequence; ``position_ids`` restart at 0 for every example;
``st_positions`` are all examples' placeholder positions in the packed sequence."""


@dataclass(frozen=True)
class SFTDataConfig:
    """How forecasting windows become SFT examples.

    Parameters
    ----------
    template
        Prompt template: ``plain``, ``stats``, ``spatial``, ``instruct``, ``st_instruct``
        or a ``.j2`` path.
    serializer
        Number format; ``None``: the tokenizer's preset (:func:`preset_for_tokenizer`).
    max_length
        Token budget of prompt + answer + end token; ``None``: the tokenizer's
        ``model_max_length`` when it is a real limit (below ``10**7``), else 1024.
    packing
        Pack consecutive examples into sequences of at most ``max_length`` tokens
        (greedy, an example is never split; see :data:`PACKED_FEATURES`).
    num_neighbors
        Neighbours shown by spatial templates.
    description
        Dataset description (default: the data's).
    max_windows
        At most this many windows of the split, evenly spread
        (``np.unique(np.linspace(0, n - 1, k).round())``, as the zero-shot forecaster).
    max_nodes
        At most this many nodes, evenly spread by the same rule; ``None``: all.
    st_tokens
        Number ``K`` of spatio-temporal placeholder tokens in the prompt (the template
        must read ``st_tokens``); 0: none.
    with_answer
        ``False``: prompt only (no answer, no end token, labels all ``-100``), for
        models with a regression head.
    """

    template: str = "plain"
    serializer: SerializerConfig | None = None
    max_length: int | None = None
    packing: bool = False
    num_neighbors: int = 5
    description: str | None = None
    max_windows: int | None = None
    max_nodes: int | None = None
    st_tokens: int = 0
    with_answer: bool = True

    def __post_init__(self) -> None:
        for name in ("max_length", "max_windows", "max_nodes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(
                    f"{name}={value!r} must be a positive integer or None",
                    f"use e.g. {name}=512, or None",
                )
        if self.num_neighbors < 0 or self.st_tokens < 0:
            raise ConfigError(
                f"num_neighbors={self.num_neighbors}, st_tokens={self.st_tokens} must not be "
                "negative",
                "use e.g. num_neighbors=5, st_tokens=0",
            )

    def fingerprint_dict(self) -> dict[str, Any]:
        """Plain JSON-able content of the config for the cache key: every field, the
        serializer as a dict and the template's text (not only its name)."""
        out = asdict(self)
        out["template"] = str(self.template)
        out["template_source"] = load_template(self.template).source
        return out


# ---------------------------------------------------------------------- helpers
def _resolve_max_length(config: SFTDataConfig, tokenizer: Any) -> int:
    if config.max_length is not None:
        return config.max_length
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 10**7 else DEFAULT_MAX_LENGTH


def _resolve_serializer(config: SFTDataConfig, tokenizer: Any) -> SerializerConfig:
    return config.serializer if config.serializer is not None else preset_for_tokenizer(tokenizer)


def _pad_id(tokenizer: Any) -> int:
    return int(
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )


def continuation_ids(tokenizer: Any, texts: list[str], strict: bool = True) -> list[list[int]]:
    """Token ids of ``texts`` as they continue a sequence (no special tokens).

    Each text is tokenized after an anchor (``"\\n"``, ``"0"``, ...) whose ids are then
    dropped, so a tokenizer that marks the start of a text (sentencepiece's ``"▁"``)
    does not add a token the text does not have. The first anchor whose ids stay a
    prefix and whose full ids decode to exactly ``anchor + text`` is used. When none
    does: ``strict`` raises :class:`ConfigError`, else the text is tokenized alone.
    """
    out: list[list[int] | None] = [None] * len(texts)
    todo = list(range(len(texts)))
    for anchor in _ANCHORS:
        if not todo:
            break
        head = tokenizer(anchor, add_special_tokens=False)["input_ids"]
        ids = tokenizer([anchor + texts[i] for i in todo], add_special_tokens=False)["input_ids"]
        decoded = tokenizer.batch_decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        left = []
        for i, row, text in zip(todo, ids, decoded, strict=True):
            if row[: len(head)] == head and text == anchor + texts[i]:
                out[i] = list(row[len(head) :])
            else:
                left.append(i)
        todo = left
    if todo:
        if strict:
            raise ConfigError(
                f"the tokenizer cannot write {texts[todo[0]]!r} as a continuation that decodes "
                "back to the same text",
                "use a number format this tokenizer writes exactly (preset_for_tokenizer)",
            )
        alone = tokenizer([texts[i] for i in todo], add_special_tokens=False)["input_ids"]
        for i, row in zip(todo, alone, strict=True):
            out[i] = list(row)
    return out  # type: ignore[return-value]


@dataclass
class _Context:
    """Everything the render step needs, fixed once per build."""

    data: STData
    starts: np.ndarray  # [num windows of the split] history start rows
    history: int
    horizon: int
    tokenizer: Any
    builder: PromptBuilder
    config: SFTDataConfig
    max_length: int
    pad_id: int
    eos_id: int
    sentinel_tokens: int = 0
    variables: dict[str, Any] | None = field(default=None)


def _context(task: ForecastTask, part: str, tokenizer: Any, config: SFTDataConfig) -> _Context:
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            "the tokenizer has no end-of-sequence token, which ends every answer",
            "set tokenizer.eos_token",
        )
    template = load_template(config.template)
    reads = "st_tokens" in template.variables
    if config.st_tokens and not reads:
        raise ConfigError(
            f"st_tokens={config.st_tokens} but template {template.name!r} does not read the "
            "variable st_tokens",
            "use the st_instruct template or put {{ st_tokens }} into yours",
        )
    windows = task.dataset(part)
    builder = PromptBuilder(
        template,
        _resolve_serializer(config, tokenizer),
        tokenizer,
        num_neighbors=config.num_neighbors,
        description=config.description,
    )
    sentinel_tokens = (
        len(tokenizer(ST_SENTINEL, add_special_tokens=False)["input_ids"])
        if config.st_tokens
        else 0
    )
    return _Context(
        data=task.data,
        starts=windows.index.starts,
        history=windows.index.history,
        horizon=task.horizon,
        tokenizer=tokenizer,
        builder=builder,
        config=config,
        max_length=_resolve_max_length(config, tokenizer),
        pad_id=_pad_id(tokenizer),
        eos_id=int(tokenizer.eos_token_id),
        sentinel_tokens=sentinel_tokens,
        variables={"st_tokens": ST_SENTINEL if config.st_tokens else ""} if reads else None,
    )


def _index_columns(ctx: _Context, num_windows: int) -> dict[str, np.ndarray]:
    """``window``, ``node``, ``channel`` of every row, window-major, node, channel."""
    windows = pick_windows(num_windows, ctx.config.max_windows)
    nodes = pick_windows(ctx.data.num_nodes, ctx.config.max_nodes)
    channels = np.arange(ctx.data.num_channels, dtype=np.int64)
    per_window = len(nodes) * len(channels)
    return {
        "window": np.repeat(windows, per_window).astype(np.int64),
        "node": np.tile(np.repeat(nodes, len(channels)), len(windows)).astype(np.int32),
        "channel": np.tile(channels, len(windows) * len(nodes)).astype(np.int32),
    }


def _prompt_ids(
    ctx: _Context, texts: list[str], add_special_tokens: bool
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of the prompts and the positions of their placeholders."""
    tok, K = ctx.tokenizer, ctx.config.st_tokens
    if not K:
        ids = tok(texts, add_special_tokens=add_special_tokens)["input_ids"]
        return [list(x) for x in ids], [[] for _ in texts]
    parts = [text.split(ST_SENTINEL) for text in texts]
    if any(len(p) != 2 for p in parts):
        raise ConfigError(
            f"template {ctx.builder.template.name!r} must write {{{{ st_tokens }}}} exactly once "
            f"when st_tokens={K}",
            "use {{ st_tokens }} once in the template",
        )
    head = tok([p[0] for p in parts], add_special_tokens=add_special_tokens)["input_ids"]
    tail = continuation_ids(tok, [p[1] for p in parts], strict=False)
    ids = [list(a) + [ctx.pad_id] * K + b for a, b in zip(head, tail, strict=True)]
    positions = [list(range(len(a), len(a) + K)) for a in head]
    return ids, positions


def _render_rows(
    ctx: _Context, windows: np.ndarray, nodes: np.ndarray, channels: np.ndarray
) -> dict[str, list]:
    """Render and tokenize the rows ``(windows[i], nodes[i], channels[i])``.

    Reads ``ctx.data`` for these rows only. Returns the dataset columns plus
    ``prompt_text`` (the rendered prompt, placeholders as :data:`ST_SENTINEL`) and
    ``answer_text``.
    """
    cfg, tok = ctx.config, ctx.tokenizer
    uw, wi = np.unique(np.asarray(windows, np.int64), return_inverse=True)
    un, ni = np.unique(np.asarray(nodes, np.int64), return_inverse=True)
    uc, ci = np.unique(np.asarray(channels, np.int64), return_inverse=True)
    starts = ctx.starts[uw]
    batch = ctx.builder.build(
        ctx.data, starts, ctx.history, ctx.horizon, un, uc, variables=ctx.variables
    )
    rows = (wi.reshape(-1) * len(un) + ni.reshape(-1)) * len(uc) + ci.reshape(-1)  # into batch
    if cfg.with_answer:
        targets = window_histories(ctx.data, starts + ctx.history, ctx.horizon, un, uc)
        targets = targets.reshape(-1, ctx.horizon)[rows]  # [R, H], NaN where missing
        strings = batch.serializer.take(rows).value_strings(targets)
        # each value starts with digit_sep, as the grammar writes it after the prompt
        answers = ["".join(values) for values in strings]
        # value by value: the grammar never lets one token span two values, while a
        # tokenizer may merge across the boundary (",-" before a negative value)
        distinct = sorted({v for values in strings for v in values})
        ids_of = dict(zip(distinct, continuation_ids(tok, distinct, strict=True), strict=True))
        answer_ids = [[i for v in values for i in ids_of[v]] for values in strings]
        reserved = np.asarray([len(a) + 1 for a in answer_ids], np.int64)
    else:
        answers = [""] * len(rows)
        answer_ids = [[] for _ in rows]
        reserved = np.zeros(len(rows), np.int64)
    room = ctx.max_length - reserved  # [R] tokens the prompt may take
    budgets = np.full(len(batch.texts), np.iinfo(np.int64).max // 2, np.int64)
    # fit_to_budget counts the tokens of the text, where the placeholders are still the
    # sentinel; the real ids are checked below and the budget tightened where they differ
    budgets[rows] = room - cfg.st_tokens + ctx.sentinel_tokens
    texts = [batch.texts[r] for r in rows]
    prompt_ids, positions = _prompt_ids(ctx, texts, batch.add_special_tokens)
    for rounds in range(_MAX_FIT_ROUNDS + 1):
        over = np.asarray([len(p) for p in prompt_ids], np.int64) - room
        if not np.any(over > 0):
            break
        if rounds == _MAX_FIT_ROUNDS:
            raise ConfigError(
                f"could not cut the prompts to max_length={ctx.max_length} tokens",
                "raise max_length or use a shorter template",
            )
        if rounds:
            budgets[rows[over > 0]] -= over[over > 0]
        try:
            ctx.builder.fit_to_budget(batch, budgets)
        except ConfigError as exc:
            st = f" and the prompt holds {cfg.st_tokens} ST tokens" if cfg.st_tokens else ""
            raise ConfigError(
                f"an SFT example does not fit max_length={ctx.max_length}: the answer of "
                f"horizon {ctx.horizon} takes up to {int(reserved.max())} tokens (end token "
                f"included){st}; {exc.problem}",
                "raise max_length, or use a shorter horizon or template or fewer neighbours",
            ) from exc
        texts = [batch.texts[r] for r in rows]
        prompt_ids, positions = _prompt_ids(ctx, texts, batch.add_special_tokens)
    input_ids, labels = [], []
    for p, a in zip(prompt_ids, answer_ids, strict=True):
        tail = a + [ctx.eos_id] if cfg.with_answer else []
        input_ids.append(p + tail)
        labels.append([IGNORE_INDEX] * len(p) + tail)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "prompt_length": [len(p) for p in prompt_ids],
        "kept": batch.kept[rows].tolist(),
        "st_positions": positions,
        "prompt_text": texts,
        "answer_text": answers,
    }


def _batch_size(per_window: int) -> int:
    """Rows per map batch: whole windows where they fit, so a batch is one prompt grid."""
    return per_window * max(1, _ROWS_PER_BATCH // per_window)


# ---------------------------------------------------------------------- fingerprint
def _update(h: Any, tag: str, payload: bytes) -> None:
    h.update(tag.encode())
    h.update(len(payload).to_bytes(8, "little"))
    h.update(payload)


def _array_digest(h: Any, tag: str, array: np.ndarray | None) -> None:
    if array is None:
        _update(h, tag, b"none")
        return
    array = np.asarray(array)
    _update(h, tag, f"{array.dtype.str}{array.shape}".encode())
    array = array.reshape(1) if array.ndim == 0 else array
    # ~16 MB of leading-axis rows at a time: a view (e.g. of selected nodes) is never
    # copied whole, and the bytes are the C-order ones whatever the memory layout
    block = max(1, (1 << 24) // max(1, array[:1].nbytes))
    for i in range(0, len(array), block):
        h.update(np.ascontiguousarray(array[i : i + block]).data)


def data_digest(data: STData) -> str:
    """sha256 of everything of ``data`` a prompt can show: values, mask, timestamps, node
    ids, channels, name, description, frequency, graph, coordinates, node metadata."""
    h = hashlib.sha256()
    _array_digest(h, "values", data.values)
    _array_digest(h, "mask", data.mask)
    stamps = None if data.timestamps is None else np.asarray(data.timestamps.asi8)
    _array_digest(h, "timestamps", stamps)
    text = {
        "node_ids": list(data.node_ids),
        "channels": list(data.channels),
        "name": data.name,
        "description": data.description,
        "freq": data.freq,
        "grid_shape": data.grid_shape,
    }
    _update(h, "text", json.dumps(text, sort_keys=True, default=str).encode())
    adj = data.adjacency
    if adj is None or isinstance(adj, np.ndarray):
        _array_digest(h, "adjacency", adj)
    else:
        for name in ("src", "dst", "weight"):
            _array_digest(h, f"adjacency.{name}", getattr(adj, name))
    _array_digest(h, "coords", data.coords)
    meta = data.node_meta
    _update(h, "node_meta", b"none" if meta is None else meta.to_json().encode())
    return h.hexdigest()


def _tokenizer_digest(tokenizer: Any) -> dict[str, Any]:
    vocab = sorted(tokenizer.get_vocab().items())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    chat = getattr(tokenizer, "chat_template", None)
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "vocab": hashlib.sha256(json.dumps(vocab).encode()).hexdigest(),
        # normalizer, pre-tokenizer, merges and post-processor, where the tokenizer has them
        "backend": None
        if backend is None
        else hashlib.sha256(backend.to_str().encode()).hexdigest(),
        "chat_template": json.dumps(chat, sort_keys=True),
        "special_tokens": {
            k: str(v) for k, v in getattr(tokenizer, "special_tokens_map", {}).items()
        },
        "special_ids": sorted(int(i) for i in tokenizer.all_special_ids),
        "probe": tokenizer("0 a,1", add_special_tokens=True)["input_ids"],
    }


def dataset_fingerprint(
    task: ForecastTask, part: str, tokenizer: Any, config: SFTDataConfig = SFTDataConfig()
) -> str:
    """The cache key (32 hex digits of a sha256) of :func:`build_sft_dataset`'s output.

    Covers the data (:func:`data_digest`), the split borders and ``part``, history,
    horizon and stride, the full config (:meth:`SFTDataConfig.fingerprint_dict`, with the
    template's text, plus the serializer and ``max_length`` it resolves to for this
    tokenizer) and the tokenizer (class, vocabulary size, a hash of its vocabulary and of
    its backend definition, chat template, special tokens).
    """
    payload = {
        "format": SFT_FORMAT_VERSION,
        "data": data_digest(task.data),
        # the task's scaler is left out on purpose: prompts and answers are written from
        # the raw values (the serializer scales each series itself), so it changes nothing
        "split": task.split.to_dict(),
        "part": part,
        "history": task.history,
        "horizon": task.horizon,
        "stride": task.stride,
        "config": config.fingerprint_dict(),
        "resolved": {
            "serializer": asdict(_resolve_serializer(config, tokenizer)),
            "max_length": _resolve_max_length(config, tokenizer),
        },
        "tokenizer": _tokenizer_digest(tokenizer),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# ---------------------------------------------------------------------- build
def _build(
    task: ForecastTask, part: str, tokenizer: Any, config: SFTDataConfig, fingerprint: str
) -> datasets.Dataset:
    ctx = _context(task, part, tokenizer, config)
    columns = _index_columns(ctx, len(ctx.starts))
    index = datasets.Dataset.from_dict(columns, features=INDEX_FEATURES)
    per_window = max(1, len(np.unique(columns["node"])) * ctx.data.num_channels)

    def render(batch: dict[str, list]) -> dict[str, list]:
        out = _render_rows(
            ctx, np.asarray(batch["window"]), np.asarray(batch["node"]), batch["channel"]
        )
        del out["prompt_text"], out["answer_text"]
        return out

    ds = index.map(
        render,
        batched=True,
        batch_size=_batch_size(per_window),
        features=SFT_FEATURES,
        new_fingerprint=f"sft-{fingerprint[:24]}",
        desc="SFT prompts",
    )
    if config.packing:
        ds = pack_sft_dataset(ds, ctx.max_length, fingerprint)
    return ds


def pack_sft_dataset(
    dataset: datasets.Dataset, max_length: int, fingerprint: str | None = None
) -> datasets.Dataset:
    """Pack consecutive rows of an unpacked SFT dataset into sequences of at most
    ``max_length`` tokens (greedy in row order, an example is never split).

    Columns: :data:`PACKED_FEATURES`; ``window``, ``node`` and ``channel`` are those of the
    first example of each sequence.
    """
    lengths = np.concatenate(
        [
            pc.list_value_length(table["input_ids"]).to_numpy(zero_copy_only=False)
            for table in dataset.with_format("arrow").iter(batch_size=65536)
        ]
        or [np.zeros(0, np.int64)]
    ).astype(np.int64)
    if np.any(lengths > max_length):
        raise ConfigError(
            f"an example of {int(lengths.max())} tokens is longer than max_length={max_length}",
            "pack with the max_length the dataset was built with",
        )
    bounds = [0]
    total = 0
    for i, n in enumerate(lengths.tolist()):
        if total + n > max_length and i > bounds[-1]:
            bounds.append(i)
            total = 0
        total += n
    if len(lengths):
        bounds.append(len(lengths))
    packs = datasets.Dataset.from_dict(
        {"lo": bounds[:-1], "hi": bounds[1:]},
        features=datasets.Features({"lo": datasets.Value("int64"), "hi": datasets.Value("int64")}),
    )

    def pack(batch: dict[str, list]) -> dict[str, list]:
        first, last = int(batch["lo"][0]), int(batch["hi"][-1])
        rows = dataset[first:last]
        out: dict[str, list] = {name: [] for name in PACKED_FEATURES}
        for lo, hi in zip(batch["lo"], batch["hi"], strict=True):
            picked = range(lo - first, hi - first)
            ids, labels, positions, sizes, st = [], [], [], [], []
            for r in picked:
                st += [len(ids) + p for p in rows["st_positions"][r]]
                ids += rows["input_ids"][r]
                labels += rows["labels"][r]
                positions += range(len(rows["input_ids"][r]))
                sizes.append(len(rows["input_ids"][r]))
            for name, value in (
                ("input_ids", ids),
                ("labels", labels),
                ("position_ids", positions),
                ("example_lengths", sizes),
                ("st_positions", st),
            ):
                out[name].append(value)
            for name in ("window", "node", "channel"):
                out[name].append(rows[name][lo - first])
        return out

    if fingerprint is None:
        fingerprint = hashlib.sha256(lengths.tobytes() + str(max_length).encode()).hexdigest()
    key = fingerprint[:24]
    return packs.map(
        pack,
        batched=True,
        batch_size=64,
        remove_columns=["lo", "hi"],
        features=PACKED_FEATURES,
        new_fingerprint=f"sft-packed-{key}",
        desc="SFT packing",
    )


def _distributed() -> tuple[int, int]:
    """``(rank, world size)`` of an initialized ``torch.distributed`` group, else ``(0, 1)``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _save_atomic(dataset: datasets.Dataset, target: Path) -> None:
    """``save_to_disk`` into a temporary sibling, then rename it to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        dataset.save_to_disk(str(staging))
        try:
            os.replace(staging, target)
        except OSError:
            if not _is_saved(target):  # another process may have finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _is_saved(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


@contextlib.contextmanager
def _progress_bars_on_a_terminal() -> Iterator[None]:
    """``datasets``' progress bars only where someone watches (stderr is a terminal)."""
    was_on = datasets.is_progress_bar_enabled()
    if was_on and not sys.stderr.isatty():
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on and not datasets.is_progress_bar_enabled():
            datasets.enable_progress_bars()


def build_sft_dataset(
    task: ForecastTask,
    part: str,
    tokenizer: Any,
    config: SFTDataConfig = SFTDataConfig(),
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """The SFT dataset of the windows of ``task.dataset(part)`` (see the module docstring).

    Parameters
    ----------
    task
        The forecasting task; its windows (``task.dataset(part)``) and raw values are used
        (the task's scaler is not: the serializer scales each series itself).
    part
        ``"train"``, ``"val"`` or ``"test"``.
    tokenizer
        A Hugging Face tokenizer with an end-of-sequence token.
    config
        See :class:`SFTDataConfig`.
    cache_dir
        Save the dataset under ``cache_dir/<dataset_fingerprint>/`` and load it from there
        when present. Under ``torch.distributed`` (initialized, world size > 1) rank 0
        builds and saves, all ranks wait at a barrier, then the others load. Without it
        every rank builds in memory.

    Returns
    -------
    datasets.Dataset
        Columns :data:`SFT_FEATURES` (or :data:`PACKED_FEATURES` with ``packing``).

    Raises
    ------
    ConfigError
        A prompt that does not fit ``max_length`` even with one history step, a template
        without ``st_tokens`` when ``config.st_tokens > 0``, a tokenizer without an end token.
    """
    with _progress_bars_on_a_terminal():
        return _build_or_load(task, part, tokenizer, config, cache_dir)


def _build_or_load(
    task: ForecastTask,
    part: str,
    tokenizer: Any,
    config: SFTDataConfig,
    cache_dir: str | Path | None,
) -> datasets.Dataset:
    if cache_dir is None:  # nothing is looked up: a unique name for datasets' bookkeeping
        return _build(task, part, tokenizer, config, uuid.uuid4().hex)
    fingerprint = dataset_fingerprint(task, part, tokenizer, config)
    target = Path(cache_dir).expanduser() / fingerprint
    rank, world = _distributed()
    if world > 1:
        error: BaseException | None = None
        if rank == 0 and not _is_saved(target):
            try:
                _save_atomic(_build(task, part, tokenizer, config, fingerprint), target)
            except BaseException as exc:  # the other ranks must not wait forever
                error = exc
        torch.distributed.barrier()
        if error is not None:
            raise error
        if not _is_saved(target):
            raise DataError(
                f"rank {rank}: rank 0 did not save the SFT dataset to {target}",
                "check rank 0's log; cache_dir must be on a file system every rank sees",
            )
    elif not _is_saved(target):
        _save_atomic(_build(task, part, tokenizer, config, fingerprint), target)
    return datasets.load_from_disk(str(target))


def sft_texts(
    task: ForecastTask, part: str, tokenizer: Any, config: SFTDataConfig = SFTDataConfig()
) -> list[tuple[str, str]]:
    """``(prompt text, answer text)`` of every row of :func:`build_sft_dataset`, same order.

    The prompts are cut to ``max_length`` as in the dataset; the answer is ``""`` when
    ``config.with_answer`` is False. Requires ``config.st_tokens == 0`` (a prompt with
    placeholders has no single text).
    """
    if config.st_tokens:
        raise ConfigError(
            f"sft_texts gives texts, which have no place for st_tokens={config.st_tokens}",
            "pass a config with st_tokens=0",
        )
    ctx = _context(task, part, tokenizer, config)
    columns = _index_columns(ctx, len(ctx.starts))
    per_window = max(1, len(np.unique(columns["node"])) * ctx.data.num_channels)
    size = _batch_size(per_window)
    out: list[tuple[str, str]] = []
    for i in range(0, len(columns["window"]), size):
        part_rows = _render_rows(
            ctx,
            columns["window"][i : i + size],
            columns["node"][i : i + size],
            columns["channel"][i : i + size],
        )
        out += list(zip(part_rows["prompt_text"], part_rows["answer_text"], strict=True))
    return out


# ---------------------------------------------------------------------- batches
def _padded(seqs: list[Any], fill: int) -> tuple[np.ndarray, np.ndarray]:
    """``[B, S]`` int64 right-padded with ``fill``, and the ``[B]`` lengths."""
    lengths = np.asarray([len(s) for s in seqs], np.int64)
    width = int(lengths.max()) if len(seqs) else 0
    out = np.full((len(seqs), width), fill, np.int64)
    if len(seqs) and width:
        out[np.arange(width)[None, :] < lengths[:, None]] = np.concatenate(
            [np.asarray(s, np.int64).reshape(-1) for s in seqs]
        )
    return out, lengths


def sft_collate(
    rows: dict[str, list], pad_token_id: int, mask_dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """A training batch from rows of an SFT dataset (``dataset[indices]``).

    Right padding: ``input_ids`` with ``pad_token_id``, ``labels`` with ``-100``. Every
    tensor has the batch on axis 0:

    - ``input_ids``, ``labels``, ``position_ids`` ``[B, S]`` int64 (positions ``0..len-1``,
      restarting per example in packed rows, 0 on padding);
    - ``attention_mask``: unpacked rows: ``[B, S]`` int64, 1 on tokens, 0 on padding.
      Packed rows (with ``example_lengths``): ``[B, 1, S, S]`` additive ``mask_dtype``
      mask, 0 where query ``i`` may attend key ``j`` (same example and ``j <= i``),
      ``torch.finfo(mask_dtype).min`` elsewhere, block-diagonal causal: no token sees
      another example or padding. A padding query attends only to itself, so no row
      of the mask is all-masked (no NaN even where the minimum becomes ``-inf``).
      ``transformers`` (5.x, GPT-2 and LLaMA, eager and sdpa) takes such a 4-D mask as
      ``attention_mask`` unchanged and adds it to the attention scores; pass the model's
      dtype as ``mask_dtype`` for half-precision sdpa (which wants the query's dtype);
    - ``num_label_tokens`` ``[B]``: the tokens a causal LM's loss counts, i.e.
      ``labels[:, 1:] != -100`` (labels are shifted by one before the loss);
    - ``window`` ``[B]`` int64 (of the first example in packed rows), ``node``,
      ``channel`` ``[B]`` int64;
    - ``st_positions`` ``[B, K]`` int64, padded with -1 where rows differ in length;
    - unpacked rows: ``prompt_length`` and ``kept`` ``[B]`` int64; packed rows:
      ``example_lengths`` ``[B, E]`` int64, padded with 0.
    """
    input_ids, lengths = _padded(rows["input_ids"], int(pad_token_id))
    labels, _ = _padded(rows["labels"], IGNORE_INDEX)
    B, S = input_ids.shape
    real = np.arange(S)[None, :] < lengths[:, None]  # [B, S]
    out: dict[str, torch.Tensor] = {
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
    }
    if "example_lengths" in rows:
        positions, _ = _padded(rows["position_ids"], 0)
        sizes, _ = _padded(rows["example_lengths"], 0)
        segment = np.full((B, S), -1, np.int64)
        for b, example_lengths in enumerate(rows["example_lengths"]):
            example_lengths = np.asarray(example_lengths, np.int64)
            segment[b, : example_lengths.sum()] = np.repeat(
                np.arange(len(example_lengths)), example_lengths
            )
        seg = torch.from_numpy(segment)
        causal = torch.ones(S, S, dtype=torch.bool).tril()
        allowed = (seg[:, :, None] == seg[:, None, :]) & causal & (seg >= 0)[:, :, None]
        allowed |= torch.eye(S, dtype=torch.bool) & (seg < 0)[:, :, None]  # padding: itself
        mask = torch.zeros(B, 1, S, S, dtype=mask_dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(mask_dtype).min)
        out["attention_mask"] = mask
        out["position_ids"] = torch.from_numpy(positions)
        out["example_lengths"] = torch.from_numpy(sizes)
    else:
        out["attention_mask"] = torch.from_numpy(real.astype(np.int64))
        out["position_ids"] = torch.from_numpy(np.where(real, np.arange(S)[None, :], 0))
        for name in ("prompt_length", "kept"):
            if name in rows:
                out[name] = torch.as_tensor(np.asarray(rows[name], np.int64).reshape(B))
    out["num_label_tokens"] = (out["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)
    for name in ("window", "node", "channel"):
        out[name] = torch.as_tensor(np.asarray(rows[name], np.int64).reshape(B))
    st = rows.get("st_positions", [[] for _ in range(B)])
    out["st_positions"] = torch.from_numpy(_padded(st, -1)[0].reshape(B, -1))
    return out


class SFTBatches:
    """Batches of an SFT dataset for a training loop: ``batches[indices]`` collates rows.

    Parameters
    ----------
    dataset
        From :func:`build_sft_dataset`.
    pad_token_id
        Padding id of ``input_ids`` (the tokenizer's pad id, or its eos id if it has none).
    windows
        The :class:`~llm_st.data.windows.WindowDataset` of the same task and part
        (``task.dataset(part)``); when given, each batch also holds its tensors (``x``,
        ``x_mask``, ``x_time``, ``y``, ``y_mask``, ``y_scaled``, ``y_time``, ``start``) for
        every row's window (the first example's window in packed rows).
    mask_dtype
        dtype of a packed batch's 4-D attention mask (see :func:`sft_collate`).
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        pad_token_id: int,
        windows: WindowDataset | None = None,
        mask_dtype: torch.dtype = torch.float32,
    ):
        self.dataset = dataset
        self.pad_token_id = int(pad_token_id)
        self.windows = windows
        self.mask_dtype = mask_dtype

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: np.ndarray | list[int] | int) -> dict[str, torch.Tensor]:
        idx = [int(i) for i in np.atleast_1d(np.asarray(indices, dtype=np.int64)).tolist()]
        out = sft_collate(self.dataset[idx], self.pad_token_id, self.mask_dtype)
        if self.windows is not None:
            row_windows = out["window"].numpy()
            if row_windows.size and row_windows.max() >= len(self.windows):
                raise DataError(
                    f"row window {int(row_windows.max())} is outside the {len(self.windows)} "
                    "windows passed",
                    "pass task.dataset(part) of the task and part the dataset was built from",
                )
            out.update(self.windows[row_windows])
        return out

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        # torch's DataLoader fetches a whole batch through this in one call
        return self[indices]


__all__ = [
    "IGNORE_INDEX",
    "PACKED_FEATURES",
    "SFT_FEATURES",
    "ST_SENTINEL",
    "SFTBatches",
    "SFTDataConfig",
    "build_sft_dataset",
    "continuation_ids",
    "data_digest",
    "dataset_fingerprint",
    "pack_sft_dataset",
    "sft_collate",
    "sft_texts",
]
