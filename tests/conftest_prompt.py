"""Shared fixtures of the prompt / zero-shot tests: tiny models built once per session.

Import the fixtures a test module needs (``from conftest_prompt import tiny_gpt2``).
The tiny models are built into the session's temporary directory (never the user's
cache), so every module that imports a fixture reuses the same build.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_st.backbones import load_causal_lm, tiny_model_dir


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's tiny models are built: ``$LLM_ST_CACHE/tiny`` for
    ``LLM_ST_CACHE = tiny_cache.parent``."""
    return tmp_path_factory.getbasetemp() / "llm_st_cache" / "tiny"


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_cache: Path):
    """``(model, tokenizer)`` of tiny-gpt2 (byte-level BPE, merges digits)."""
    return load_causal_lm(tiny_model_dir("tiny-gpt2", tiny_cache))


@pytest.fixture(scope="session")
def tiny_llama(tiny_cache: Path):
    """``(model, tokenizer)`` of tiny-llama (sentencepiece, split_digits, chat template)."""
    return load_causal_lm(tiny_model_dir("tiny-llama", tiny_cache))


@pytest.fixture(scope="session")
def tiny_tokenizers(tiny_gpt2, tiny_llama) -> dict:
    """``{"bpe": GPT-2-like tokenizer, "sentencepiece": LLaMA-like tokenizer}``."""
    return {"bpe": tiny_gpt2[1], "sentencepiece": tiny_llama[1]}
