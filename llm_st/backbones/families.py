"""The language-model families llm-st can truncate, freeze and adapt with LoRA: one table.

A family is a ``config.model_type`` whose base model keeps its parts in the same places.
:data:`FAMILIES` says, for each, where the freezing policies of
:mod:`llm_st.backbones.frozen` find the blocks, their self-attention and the learned
position table, whether tokens attend to the past only, and which linear layers of a
block :mod:`llm_st.backbones.lora` adapts when ``target_modules="auto"``. Both modules
read this table and nothing else, so a new family is one :class:`Family` row here.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_st.errors import ConfigError


@dataclass(frozen=True)
class Family:
    """Where a family's base model keeps the parts llm-st freezes and adapts.

    Attributes
    ----------
    blocks
        Dotted path of the ``nn.ModuleList`` of Transformer blocks.
    attention
        Attribute of a block that holds its whole self-attention.
    position_embedding
        Dotted path of the learned absolute position-embedding table (None: rotary).
    causal
        Whether tokens attend to earlier tokens only.
    lora_targets
        Names of the linear layers in every block that LoRA adapts by default (a name
        matches a layer whose dotted path ends with it).
    """

    blocks: str
    attention: str
    position_embedding: str | None
    causal: bool
    lora_targets: tuple[str, ...]


_LLAMA = Family(
    "layers",
    "self_attn",
    None,
    causal=True,
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
)
FAMILIES: dict[str, Family] = {
    # c_proj names both the attention output and the MLP output projection of GPT-2; the
    # MLP input c_fc is left out (list it, or use "all-linear", to add it)
    "gpt2": Family("h", "attn", "wpe", causal=True, lora_targets=("c_attn", "c_proj")),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    # dense names the attention output, the intermediate and the output layer of BERT
    "bert": Family(
        "encoder.layer",
        "attention",
        "embeddings.position_embeddings",
        causal=False,
        lora_targets=("query", "key", "value", "dense"),
    ),
}
"""``config.model_type`` -> :class:`Family`; the layout is checked when a model loads.
(RoBERTa is left out: its position ids start after the padding index, which the
mask-derived positions of :meth:`~llm_st.backbones.frozen.FrozenBackbone.forward` do not
do.)"""


def family(model_type: str, what: str) -> Family:
    """The :class:`Family` of ``model_type``.

    Parameters
    ----------
    model_type
        ``config.model_type`` of the model.
    what
        The model in words, for the message (a name, a path or a class).

    Raises
    ------
    ConfigError
        ``model_type`` is not in :data:`FAMILIES`.
    """
    if model_type not in FAMILIES:
        raise ConfigError(
            f"{what} is a {model_type!r} model, which llm-st cannot truncate, freeze or "
            "adapt with LoRA",
            f"use a model of one of the families {', '.join(FAMILIES)}",
        )
    return FAMILIES[model_type]
