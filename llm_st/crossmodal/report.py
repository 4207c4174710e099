"""How well ST embeddings are aligned with text embeddings, on held-out pairs.

Retrieval accuracy top-k in both directions against its chance level, mean cosine of
matched and unmatched pairs, and linear CKA (Kornblith et al., ICML 2019) between the
two representations; :class:`AlignmentReport` gathers them for ``llm-st align``.

Pairs whose descriptions are identical share a group: retrieving any of them counts
as a hit, and chance levels are computed the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def retrieval_accuracy(
    queries: torch.Tensor, keys: torch.Tensor, groups: np.ndarray, ks: tuple[int, ...] = (1, 5)
) -> dict[int, float]:
    """Share of queries whose ``k`` most cosine-similar keys include one of their group.

    Parameters
    ----------
    queries, keys : torch.Tensor ``[n, D]``
        Row ``i`` of both belongs to group ``groups[i]``.
    groups : array ``[n]``
    ks : tuple of int
    """
    sim = F.normalize(queries.double(), dim=-1) @ F.normalize(keys.double(), dim=-1).T
    g = torch.as_tensor(np.asarray(groups))
    top = sim.topk(min(max(ks), len(g)), dim=1).indices  # [n, kmax]
    hit = g[top] == g[:, None]
    return {k: float(hit[:, :k].any(1).double().mean()) for k in ks}


def retrieval_chance(groups: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Expected :func:`retrieval_accuracy` of a random ranking.

    A query whose group has ``m`` of the ``n`` items misses with probability
    ``C(n - m, k) / C(n, k) = prod_{j<k} (n - m - j) / (n - j)``.
    """
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    n, m = len(inverse), counts[inverse].astype(np.float64)
    out = {}
    for k in ks:
        j = np.arange(min(k, n))
        miss = np.prod(np.clip(n - m[:, None] - j, 0, None) / (n - j), axis=1)
        out[k] = float(np.mean(1.0 - miss))
    return out


def linear_cka(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Linear CKA (Kornblith et al., 2019) of representations ``x`` ``[n, p]`` and ``y`` ``[n, q]``.

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``,
    ``Yc``: 1 for identical representations, invariant to orthogonal transforms and
    isotropic scaling of either, 0 for orthogonal ones.
    """
    x = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x).double()
    y = torch.as_tensor(np.asarray(y) if isinstance(y, np.ndarray) else y).double()
    x, y = x - x.mean(0), y - y.mean(0)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    den = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / den) if den > 0 else 0.0


def cosine_matched_unmatched(
    st: torch.Tensor, text: torch.Tensor, groups: np.ndarray
) -> tuple[float, float]:
    """Mean cosine of matched pairs ``(st[i], text[i])`` and of pairs of different descriptions."""
    sim = F.normalize(st.double(), dim=-1) @ F.normalize(text.double(), dim=-1).T
    g = torch.as_tensor(np.asarray(groups))
    other = g[:, None] != g[None, :]
    unmatched = float(sim[other].mean()) if other.any() else float("nan")
    return float(sim.diagonal().mean()), unmatched


@dataclass
class AlignmentReport:
    """Alignment reached on held-out windows (see the module docstring).

    Retrieval is measured twice: against the descriptions in the wording used for
    training, and (``paraphrase_*``, description targets only) against the same
    descriptions in other words (:data:`llm_st.crossmodal.describe.PARAPHRASES`),
    which only a language space that places paraphrases together can match.
    Both use the same groups, so they share the chance levels. ``cka`` compares the
    projected ST embeddings with the text targets, ``cka_encoder`` the ST encoder's
    own embeddings; ``final_loss`` is the mean training loss since the last
    evaluation and ``temperature`` the InfoNCE temperature reached.
    """

    text_encoder: str
    st_encoder: str
    targets: str
    steps: int
    seed: int
    train_pairs: int
    eval_pairs: int
    eval_texts: int
    st_to_text_top1: float
    st_to_text_top5: float
    text_to_st_top1: float
    text_to_st_top5: float
    paraphrase_st_to_text_top1: float | None
    paraphrase_st_to_text_top5: float | None
    paraphrase_text_to_st_top1: float | None
    paraphrase_text_to_st_top5: float | None
    chance_top1: float
    chance_top5: float
    matched_cosine: float
    unmatched_cosine: float
    cka: float
    cka_encoder: float
    final_loss: float
    temperature: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def format(self) -> str:
        """A small plain-text table."""

        def pair(a: float | None, b: float | None) -> str:
            return "-" if a is None or b is None else f"{a:.3f} / {b:.3f}"

        rows = [
            ("text encoder", self.text_encoder),
            ("ST encoder", f"{self.st_encoder} -> {self.targets}, {self.steps} steps"),
            ("held-out pairs", f"{self.eval_pairs} ({self.eval_texts} distinct texts)"),
            ("ST->text top-1 / top-5", pair(self.st_to_text_top1, self.st_to_text_top5)),
            ("text->ST top-1 / top-5", pair(self.text_to_st_top1, self.text_to_st_top5)),
            (
                "paraphrased ST->text top-1 / top-5",
                pair(self.paraphrase_st_to_text_top1, self.paraphrase_st_to_text_top5),
            ),
            (
                "paraphrased text->ST top-1 / top-5",
                pair(self.paraphrase_text_to_st_top1, self.paraphrase_text_to_st_top5),
            ),
            ("chance top-1 / top-5", pair(self.chance_top1, self.chance_top5)),
            ("cosine matched / unmatched", pair(self.matched_cosine, self.unmatched_cosine)),
            ("linear CKA (projected / encoder)", pair(self.cka, self.cka_encoder)),
            ("final loss / temperature", f"{self.final_loss:.3f} / {self.temperature:.4f}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def score_alignment(
    projected: torch.Tensor,
    encoded: torch.Tensor,
    targets: torch.Tensor,
    groups: np.ndarray,
    paraphrased: torch.Tensor | None = None,
) -> dict[str, float | None]:
    """The metric fields of :class:`AlignmentReport` for ``n`` held-out pairs.

    Parameters
    ----------
    projected : torch.Tensor ``[n, D_text]``
        ST embeddings in the text space.
    encoded : torch.Tensor ``[n, D_st]``
        The ST encoder's own embeddings.
    targets : torch.Tensor ``[n, D_text]``
        Text targets of the pairs.
    groups : np.ndarray ``[n]``
        Pairs with identical targets share a group.
    paraphrased : torch.Tensor ``[n, D_text]``, optional
        Targets of the same descriptions in other words; without them the
        ``paraphrase_*`` fields are None.
    """
    st_text = retrieval_accuracy(projected, targets, groups)
    text_st = retrieval_accuracy(targets, projected, groups)
    para_st_text = para_text_st = dict.fromkeys((1, 5))
    if paraphrased is not None:
        para_st_text = retrieval_accuracy(projected, paraphrased, groups)
        para_text_st = retrieval_accuracy(paraphrased, projected, groups)
    chance = retrieval_chance(groups)
    matched, unmatched = cosine_matched_unmatched(projected, targets, groups)
    return {
        "eval_pairs": len(projected),
        "eval_texts": int(len(np.unique(groups))),
        "st_to_text_top1": st_text[1],
        "st_to_text_top5": st_text[5],
        "text_to_st_top1": text_st[1],
        "text_to_st_top5": text_st[5],
        "paraphrase_st_to_text_top1": para_st_text[1],
        "paraphrase_st_to_text_top5": para_st_text[5],
        "paraphrase_text_to_st_top1": para_text_st[1],
        "paraphrase_text_to_st_top5": para_text_st[5],
        "chance_top1": chance[1],
        "chance_top5": chance[5],
        "matched_cosine": matched,
        "unmatched_cosine": unmatched,
        "cka": linear_cka(projected, targets),
        "cka_encoder": linear_cka(encoded, targets),
    }
