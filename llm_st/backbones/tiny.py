"""Tiny random-weight models with locally trained tokenizers, built from configs.

They stand in for hub downloads in tests, demos and benchmarks: same classes and
tokenizer behaviour as the real models, a few hundred thousand parameters, no network.

- ``tiny-gpt2``: :class:`~transformers.GPT2LMHeadModel` (2 layers, width 64) with a
  byte-level BPE tokenizer trained with the ``tokenizers`` library, which merges digit
  runs as GPT-2's does.
- ``tiny-llama``: :class:`~transformers.LlamaForCausalLM` (2 layers, width 64) with a
  sentencepiece BPE model trained with ``split_digits=True`` (one token per digit, as
  LLaMA's) wrapped as :class:`~transformers.LlamaTokenizer`, plus a LLaMA-2-style chat
  template.
- ``tiny-bert``: :class:`~transformers.BertModel` (2 layers, width 64) with a lower-casing
  WordPiece tokenizer (``[CLS] ... [SEP]``, ``[PAD]``) trained with the ``tokenizers`` library.
- ``tiny-vit-mae``: :class:`~transformers.ViTMAEForPreTraining` (~44k parameters, 64 x 64
  images of 8 x 8 patches, :func:`tiny_mae_config`), no tokenizer.

Each is written once as an ordinary Hugging Face model directory under
``$LLM_ST_CACHE/tiny`` (default ``~/.cache/llm_st/tiny``), keyed by name and
:data:`TINY_VERSION`, and loaded from there like any local model. Tokenizers are trained
on a small built-in corpus (:func:`tiny_corpus`) in well under a second; weights are
random with seed 0. More tiny models are one builder function registered with
:func:`register_tiny`.
"""

from __future__ import annotations

import io
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llm_st.config import cache_root
from llm_st.errors import ConfigError

logger = logging.getLogger("llm_st")

TINY_VERSION = 1
"""Bump when a builder changes, so cached directories of older builds are not reused."""

TinyBuilder = Callable[[Path], None]
TINY_MODELS: dict[str, TinyBuilder] = {}
"""Name -> function that writes the model directory into the given (empty) folder."""

_COMPLETE = ".complete"
_WORDS = (
    "the of and to in is for on with as by at from this that it be are was were has have "
    "a an or not all any each every one two three four five six seven eight nine ten "
    "sensor sensors road roads speed flow traffic volume occupancy node nodes station grid "
    "cell city region district value values forecast forecasts predict prediction next step "
    "steps history horizon time series minimum maximum median mean trend upward downward flat "
    "lag lags top dataset description task given previous information input statistics "
    "day days week weekday weekend monday tuesday wednesday thursday friday saturday sunday "
    "hour hours minute minutes morning evening night noon rush neighbour neighbours distance "
    "km mph away connected strongly recent visits visited place places home work leisure "
    "agent agents answer question format same separated exactly numbers number digits "
    "you are assistant expert analyst reply only please write following below above model "
    "temperature electricity load weather rain river level sales demand taxi bike trip"
).split()


def tiny_corpus(num_lines: int = 3000) -> list[str]:
    """A deterministic corpus of English words and numbers in many written forms.

    Lines mix words with integers, decimals, dates, clock times and series written in
    both LLMTime formats (``"1 2 3 , 4 5 6 ,"`` and ``"123,456,"``), so tokenizers
    trained on it learn digit merges (BPE) and the separators as tokens.
    """
    rng = random.Random(0)
    lines = []
    for i in range(num_lines):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12)))
        kind = i % 6
        if kind == 0:
            numbers = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 6))) for _ in range(4))
        elif kind == 1:
            numbers = ", ".join(f"{rng.uniform(-500, 500):.{rng.randint(1, 3)}f}" for _ in range(4))
        elif kind == 2:
            numbers = (
                f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                f"{rng.randint(0, 23):02d}:{rng.choice((0, 15, 30, 45)):02d}"
            )
        elif kind == 3:
            values = [str(rng.randint(0, 2000)) for _ in range(rng.randint(3, 10))]
            numbers = "".join(" " + " ".join(v) + " ," for v in values).strip()
        elif kind == 4:
            numbers = (
                ",".join(str(rng.randint(-999, 2000)) for _ in range(rng.randint(3, 10))) + ","
            )
        else:
            numbers = (
                f"{rng.randint(1, 99)} km {rng.randint(0, 120)} mph {rng.randint(1, 24)} hours"
            )
        lines.append(f"{words} {numbers}" if i % 2 else f"{numbers} {words}")
    return lines


def train_byte_level_bpe(corpus: list[str], vocab_size: int = 1000) -> Any:
    """A GPT-2-like tokenizer: byte-level BPE trained on ``corpus``, ``<|endoftext|>`` as
    bos/eos/unk/pad, wrapped as :class:`~transformers.PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    special = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=special,
        eos_token=special,
        unk_token=special,
        pad_token=special,
        model_max_length=1024,
    )


LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}<<SYS>>\n{{ message['content'] }}\n<</SYS>>\n\n"
    "{% elif message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% else %} {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
"""A LLaMA-2-style chat template (``[INST] ... [/INST]``)."""


def train_sentencepiece(corpus: list[str], vocab_size: int = 800) -> Any:
    """A LLaMA-like tokenizer: sentencepiece BPE with ``split_digits=True`` and byte
    fallback trained on ``corpus``, wrapped as :class:`~transformers.LlamaTokenizer`
    (``<unk>``, ``<s>``, ``</s>`` = ids 0, 1, 2; ``</s>`` also pads).

    The vocabulary and merges are read through the sentencepiece API (the protobuf
    route transformers takes for ``tokenizer.model`` files needs the protobuf package).
    """
    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="bpe",
        split_digits=True,
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=buffer.getvalue())
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    tokenizer = LlamaTokenizer(
        vocab=vocab, merges=generate_merges(vocab), add_bos_token=True, model_max_length=1024
    )
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = LLAMA_CHAT_TEMPLATE
    return tokenizer


def register_tiny(name: str) -> Callable[[TinyBuilder], TinyBuilder]:
    """Register ``builder(out_dir)`` as the tiny model ``name``."""

    def wrap(builder: TinyBuilder) -> TinyBuilder:
        TINY_MODELS[name] = builder
        return builder

    return wrap


def _save_random(model_cls: Any, config: Any, tokenizer: Any, out: Path) -> None:
    """Save ``model_cls(config)`` initialized with seed 0, and ``tokenizer`` (if any), into
    ``out``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_cls(config)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


@register_tiny("tiny-gpt2")
def _build_tiny_gpt2(out: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_byte_level_bpe(tiny_corpus())
    special = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=special,
        eos_token_id=special,  # no pad_token_id, as GPT-2's config: the tokenizer pads with eos
    )
    _save_random(GPT2LMHeadModel, config, tokenizer, out)


@register_tiny("tiny-llama")
def _build_tiny_llama(out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_sentencepiece(tiny_corpus())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    _save_random(LlamaForCausalLM, config, tokenizer, out)


def train_wordpiece(corpus: list[str], vocab_size: int = 800) -> Any:
    """A BERT-like tokenizer: lower-casing WordPiece trained on ``corpus`` with ``[PAD]``,
    ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]`` (ids 0-4) and ``[CLS] text [SEP]`` framing,
    wrapped as :class:`~transformers.PreTrainedTokenizerFast`."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


@register_tiny("tiny-bert")
def _build_tiny_bert(out: Path) -> None:
    from transformers import BertConfig, BertModel

    tokenizer = train_wordpiece(tiny_corpus())
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    _save_random(BertModel, config, tokenizer, out)


def tiny_mae_config() -> Any:
    """A ``ViTMAEConfig`` of ~44k parameters on 64 x 64 images of 8 x 8 patches, for tests."""
    from transformers import ViTMAEConfig

    return ViTMAEConfig(
        image_size=64,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
        norm_pix_loss=False,
    )


@register_tiny("tiny-vit-mae")
def _build_tiny_vit_mae(out: Path) -> None:
    from transformers import ViTMAEForPreTraining

    _save_random(ViTMAEForPreTraining, tiny_mae_config(), None, out)


def tiny_cache_dir() -> Path:
    """``$LLM_ST_CACHE/tiny`` if ``LLM_ST_CACHE`` is set, else ``~/.cache/llm_st/tiny``."""
    return cache_root() / "tiny"


def is_tiny(name: str) -> bool:
    return name in TINY_MODELS


def tiny_model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """The model directory of tiny model ``name``, built on first use.

    The build goes to a temporary folder next to the target and is renamed into
    place, so concurrent processes never see a half-written directory; if another
    process finished first, its directory is used and this build is discarded.
    """
    if name not in TINY_MODELS:
        raise ConfigError(
            f"unknown tiny model {name!r}", f"use one of {', '.join(sorted(TINY_MODELS))}"
        )
    root = Path(cache_dir) if cache_dir is not None else tiny_cache_dir()
    target = root / f"{name}-v{TINY_VERSION}"
    if (target / _COMPLETE).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        logger.info("building %s in %s", name, target)
        TINY_MODELS[name](staging)
        (staging / _COMPLETE).touch()
        if target.exists() and not (target / _COMPLETE).exists():
            shutil.rmtree(target, ignore_errors=True)  # left behind by an older, interrupted build
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / _COMPLETE).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
