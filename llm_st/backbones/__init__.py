"""Frozen Hugging Face backbones: loading by local path, hub id or tiny test config."""

from llm_st.backbones.hub import load_causal_lm, load_tokenizer
from llm_st.backbones.tiny import TINY_MODELS, is_tiny, register_tiny, tiny_model_dir

__all__ = [
    "TINY_MODELS",
    "is_tiny",
    "load_causal_lm",
    "load_tokenizer",
    "register_tiny",
    "tiny_model_dir",
]
