"""Cross-domain alignment: ST embeddings projected into a frozen language model's space.

- :mod:`~llm_st.alignment.describe`: text descriptions of windows computed from the
  data, and TEST-style text prototypes;
- :mod:`~llm_st.alignment.text_encoder`: a frozen Hugging Face text encoder
  (all-MiniLM-L6-v2 by default) with an embedding cache;
- :mod:`~llm_st.alignment.align`: the ST encoder, projection, contrastive training
  and the alignment report (``llm-st align``).
"""

from llm_st.alignment.align import (
    AlignedSTEncoder,
    AlignmentReport,
    PatchEncoder,
    align,
    contrastive_loss,
    cosine_matched_unmatched,
    linear_cka,
    retrieval_accuracy,
    retrieval_chance,
    run_alignment,
)
from llm_st.alignment.describe import (
    SLOTS,
    VOCABULARY,
    Descriptions,
    describe_windows,
    prototype_index,
    prototype_words,
    text_prototypes,
)
from llm_st.alignment.text_encoder import (
    EmbeddingCache,
    FrozenTextEncoder,
    minilm_path,
    text_encoder_from_spec,
)

__all__ = [
    "SLOTS",
    "VOCABULARY",
    "AlignedSTEncoder",
    "AlignmentReport",
    "Descriptions",
    "EmbeddingCache",
    "FrozenTextEncoder",
    "PatchEncoder",
    "align",
    "contrastive_loss",
    "cosine_matched_unmatched",
    "describe_windows",
    "linear_cka",
    "minilm_path",
    "prototype_index",
    "prototype_words",
    "retrieval_accuracy",
    "retrieval_chance",
    "run_alignment",
    "text_encoder_from_spec",
    "text_prototypes",
]
