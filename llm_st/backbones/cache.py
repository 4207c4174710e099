"""Frozen word embeddings of prompt prefixes, computed once per distinct text.

A prompt prefix (Time-LLM's prompt-as-prefix) depends only on its text, and the word
embeddings of a frozen backbone never change, so the embedded prefix of a text never
changes either. :class:`PrefixEmbedder` tokenizes and embeds each distinct text once
and keeps the result in an :class:`~llm_st.backbones.text_encoder.EmbeddingCache`
(keyed by the SHA-256 of the exact text; rows stored as float32 on the CPU): from the
second epoch on, a window's prefix costs a dictionary look-up instead of tokenization.

Memory: a prefix of ``T`` tokens takes ``4 * T * D`` bytes (D = 4096 for LLaMA-7B:
16 KiB per token). ``cache_limit_mb`` caps the cache; texts met after it is full are
embedded on every call, as without a cache.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from llm_st.backbones.text_encoder import EmbeddingCache
from llm_st.errors import ConfigError

logger = logging.getLogger("llm_st")


class PrefixEmbedder:
    """Token embeddings of text prefixes from a frozen word-embedding table.

    Parameters
    ----------
    tokenizer
        The backbone's tokenizer (special tokens are added as the tokenizer does by
        default: LLaMA's ``<s>``, BERT's ``[CLS] ... [SEP]``).
    max_tokens
        Longer prefixes are truncated to their first ``max_tokens`` tokens.
    cache
        Keep every embedded prefix (see the module docstring).
    cache_limit_mb
        Most megabytes of cached embeddings.
    cache_id
        Identity of the embedding table, stored with the cache.

    Attributes
    ----------
    num_embedded : int
        Texts that were tokenized and embedded so far (cache hits do not count).
    cached_bytes : int
        Bytes of cached embeddings; ``full`` turns True when ``cache_limit_mb`` is reached.
    cache : EmbeddingCache or None
    """

    def __init__(
        self,
        tokenizer: Any,
        max_tokens: int = 512,
        cache: bool = True,
        cache_limit_mb: float = 1024.0,
        cache_id: str = "",
    ):
        if max_tokens < 1:
            raise ConfigError(f"max_tokens={max_tokens} must be at least 1", "use e.g. 512")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.cache = EmbeddingCache(cache_id) if cache else None
        self.cache_limit = int(cache_limit_mb * 2**20)
        self.cached_bytes = 0
        self.full = False
        self.num_embedded = 0

    def _embed(self, texts: list[str], table: torch.Tensor) -> list[torch.Tensor]:
        """``[T_i, D]`` rows of ``table`` for the tokens of each text (no cache)."""
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        lengths = [len(i) for i in ids]
        flat = torch.tensor([t for row in ids for t in row], dtype=torch.long, device=table.device)
        with torch.no_grad():
            rows = torch.nn.functional.embedding(flat, table)
        self.num_embedded += len(texts)
        return list(rows.split(lengths))

    def __call__(
        self, texts: Sequence[str], table: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prefix embeddings of ``texts``.

        Parameters
        ----------
        texts : sequence of str, ``n`` of them
        table : torch.Tensor ``[vocab_size, D]``
            The frozen word-embedding matrix; outputs get its device and dtype.

        Returns
        -------
        embeddings : torch.Tensor ``[n, T, D]``
            ``T`` is the longest prefix; shorter ones are padded with zeros on the left,
            so every prefix ends right before what follows it.
        mask : torch.Tensor ``[n, T]`` bool
            True at real tokens.
        """
        texts = list(texts)
        if self.cache is None:
            return _left_pad(self._embed(texts, table))
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        uncached: dict[str, torch.Tensor] = {}
        for text, row in zip(new, self._embed(new, table) if new else [], strict=True):
            row = row.to("cpu", torch.float32)  # exact for float16 / bfloat16 tables too
            if self.cached_bytes + row.numel() * 4 > self.cache_limit:
                if not self.full:
                    logger.info(
                        "prefix cache full (%d texts, %.0f MB); further prefixes are embedded "
                        "on every call",
                        len(self.cache),
                        self.cached_bytes / 2**20,
                    )
                self.full = True
                uncached[text] = row
                continue
            self.cache.put([text], row[None])
            self.cached_bytes += row.numel() * 4
        rows = [uncached[t] if t in uncached else self.cache.get([t])[0] for t in texts]
        # padded on the CPU, then moved in one copy
        embeddings, mask = _left_pad(rows)
        return embeddings.to(table.device, table.dtype), mask.to(table.device)


def _left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, T, D]`` rows ``[T_i, D]`` padded with zeros on the left, and the ``[n, T]`` mask of
    real rows."""
    lengths = torch.tensor([len(r) for r in rows], device=rows[0].device)
    embeddings = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_side="left")
    positions = torch.arange(embeddings.shape[1], device=embeddings.device)
    return embeddings, positions >= embeddings.shape[1] - lengths[:, None]
