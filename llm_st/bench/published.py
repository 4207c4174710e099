"""Published test figures the benchmarks print beside their own.

Normalized test MSE / MAE at horizon 96 from history 336 (Time-LLM: 512), all seven
variables: DLinear and PatchTST/42 as in the PatchTST paper (table 3; DLinear also its
own paper, table 2), GPT4TS and Time-LLM from their papers (GPT-2 and LLaMA-7B backbones,
full training).
"""

from __future__ import annotations

PUBLISHED: dict[tuple[str, str], tuple[float, float]] = {
    ("ETTh1", "gpt4ts"): (0.376, 0.397),
    ("ETTh1", "timellm"): (0.362, 0.392),
    ("ETTh1", "dlinear"): (0.375, 0.399),
    ("ETTh1", "patchtst"): (0.375, 0.399),
    ("ETTh2", "dlinear"): (0.289, 0.353),
    ("ETTh2", "patchtst"): (0.274, 0.336),
}
