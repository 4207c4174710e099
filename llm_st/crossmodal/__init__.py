"""Cross-modal alignment: ST embeddings projected into a frozen language model's space.

- :mod:`~llm_st.crossmodal.describe`: text descriptions of windows computed from the
  data, TEST-style text prototypes, and the text targets of described pairs;
- :mod:`~llm_st.crossmodal.encoders`: the ST encoders (:class:`PatchEncoder` or a
  registered model with ``embed``), the projection into the text space;
- :mod:`~llm_st.crossmodal.report`: retrieval, cosine and CKA metrics and the
  :class:`AlignmentReport`.

The frozen text encoder is :mod:`llm_st.backbones.text_encoder`; the training
objective :mod:`llm_st.objectives.alignment`; ``llm-st align`` runs
:func:`llm_st.pipeline.align.run_alignment`.
"""

from llm_st.crossmodal.describe import (
    SLOTS,
    VOCABULARY,
    Descriptions,
    describe_windows,
    prototype_index,
    prototype_words,
    text_prototypes,
    text_targets,
)
from llm_st.crossmodal.encoders import (
    PROJECTIONS,
    AlignedSTEncoder,
    PatchEncoder,
    build_st_encoder,
    make_projection,
)
from llm_st.crossmodal.report import (
    AlignmentReport,
    cosine_matched_unmatched,
    linear_cka,
    retrieval_accuracy,
    retrieval_chance,
    score_alignment,
)

__all__ = [
    "PROJECTIONS",
    "SLOTS",
    "VOCABULARY",
    "AlignedSTEncoder",
    "AlignmentReport",
    "Descriptions",
    "PatchEncoder",
    "build_st_encoder",
    "cosine_matched_unmatched",
    "describe_windows",
    "linear_cka",
    "make_projection",
    "prototype_index",
    "prototype_words",
    "retrieval_accuracy",
    "retrieval_chance",
    "score_alignment",
    "text_prototypes",
    "text_targets",
]
