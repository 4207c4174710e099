"""Word embeddings of prompt prefixes, with each distinct text tokenized once.

A prompt prefix (Time-LLM's prompt-as-prefix) depends only on its text, and its embedding
is the rows of the frozen word-embedding table at its token ids. :class:`PrefixEmbedder`
tokenizes each distinct text once and keeps its token ids (keyed by the SHA-256 of the
exact text, :func:`~llm_st.backbones.text_encoder.text_key`); every call looks the rows up
in the table where it is, on the model's device and in its dtype. From the second epoch
on, a window's prefix costs a dictionary look-up and a gather instead of tokenization.

Memory: the cache holds 4 bytes per token on the CPU (a 7B model's embedding row is
``2 * 4096`` bytes in bfloat16: the ids are 2048 times smaller than the embeddings they
stand for), so it costs no accelerator memory, and a step copies ``[n, T]`` ids to the
device instead of ``[n, T, D]`` embeddings. ``cache_limit_mb`` caps it; texts met after it
is full are tokenized on every call, as without a cache.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from llm_st.backbones.text_encoder import text_key
from llm_st.errors import ConfigError

logger = logging.getLogger("llm_st")

_ID_BYTES = 4  # ids are stored as int32


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
        Keep the token ids of every text (see the module docstring).
    cache_limit_mb
        Most megabytes of cached token ids.

    Attributes
    ----------
    num_tokenized : int
        Texts that were tokenized so far (cache hits do not count).
    cached_bytes : int
        Bytes of cached token ids; ``full`` turns True when ``cache_limit_mb`` is reached.
    cache : dict or None
        SHA-256 of a text -> its token ids ``[T_i]`` (int32, CPU).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_tokens: int = 512,
        cache: bool = True,
        cache_limit_mb: float = 1024.0,
    ):
        if max_tokens < 1:
            raise ConfigError(f"max_tokens={max_tokens} must be at least 1", "use e.g. 512")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.cache: dict[bytes, torch.Tensor] | None = {} if cache else None
        self.cache_limit = int(cache_limit_mb * 2**20)
        self.cached_bytes = 0
        self.full = False
        self.num_tokenized = 0

    def _tokenize(self, texts: list[str]) -> list[torch.Tensor]:
        """Token ids ``[T_i]`` (int32) of each text."""
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        self.num_tokenized += len(texts)
        return [torch.tensor(row, dtype=torch.int32) for row in ids]

    def token_ids(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Token ids ``[T_i]`` (int32, CPU) of each of ``texts``, from the cache where it has
        them; the others are tokenized (and cached while it has room)."""
        texts = list(texts)
        if self.cache is None:
            return self._tokenize(texts)
        keys = [text_key(t) for t in texts]
        new = {k: t for k, t in zip(keys, texts, strict=True) if k not in self.cache}
        uncached: dict[bytes, torch.Tensor] = {}
        for key, ids in zip(new, self._tokenize(list(new.values())) if new else [], strict=True):
            size = ids.numel() * _ID_BYTES
            if self.cached_bytes + size > self.cache_limit:
                if not self.full:
                    logger.info(
                        "prefix cache full (%d texts, %.0f MB); further prefixes are tokenized "
                        "on every call",
                        len(self.cache),
                        self.cached_bytes / 2**20,
                    )
                self.full = True
                uncached[key] = ids
                continue
            self.cache[key] = ids
            self.cached_bytes += size
        return [uncached[k] if k in uncached else self.cache[k] for k in keys]

    def __call__(
        self, texts: Sequence[str], table: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prefix embeddings of ``texts``.

        Parameters
        ----------
        texts : sequence of str, ``n`` of them
        table : torch.Tensor ``[vocab_size, D]``
            The frozen word-embedding matrix; outputs are made on its device, in its dtype.

        Returns
        -------
        embeddings : torch.Tensor ``[n, T, D]``
            ``T`` is the longest prefix; shorter ones are padded with zeros on the left,
            so every prefix ends right before what follows it. Exactly the table's rows.
        mask : torch.Tensor ``[n, T]`` bool
            True at real tokens.
        """
        rows = self.token_ids(texts)
        # padded on the CPU, then moved in one copy of ids (not of embeddings)
        ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_side="left")
        lengths = torch.tensor([len(r) for r in rows])
        mask = torch.arange(ids.shape[1]) >= ids.shape[1] - lengths[:, None]
        ids, mask = ids.to(table.device), mask.to(table.device)
        with torch.no_grad():
            embeddings = torch.nn.functional.embedding(ids, table)
            embeddings.masked_fill_(~mask[..., None], 0)
        return embeddings, mask
