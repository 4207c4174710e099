"""Frozen Hugging Face backbones: loading by local path, hub id or tiny test config."""

from llm_st.backbones.ablations import BACKBONE_MODES, build_body
from llm_st.backbones.frozen import FREEZE_POLICIES, FrozenBackbone, load_backbone
from llm_st.backbones.hub import load_causal_lm, load_tokenizer
from llm_st.backbones.lora import LoraSettings, apply_lora, load_lora, merge_lora, save_lora
from llm_st.backbones.tiny import TINY_MODELS, is_tiny, register_tiny, tiny_model_dir

__all__ = [
    "BACKBONE_MODES",
    "FREEZE_POLICIES",
    "FrozenBackbone",
    "LoraSettings",
    "apply_lora",
    "load_lora",
    "merge_lora",
    "save_lora",
    "build_body",
    "load_backbone",
    "TINY_MODELS",
    "is_tiny",
    "load_causal_lm",
    "load_tokenizer",
    "register_tiny",
    "tiny_model_dir",
]
