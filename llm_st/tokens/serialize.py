"""Numbers <-> text for prompting language models with series (LLMTime).

Gruver et al., "Large Language Models Are Zero-Shot Time Series Forecasters"
(NeurIPS 2023) write a series as text: each value is scaled, rounded to a fixed
precision and written as its digits without the decimal point, values are joined by a
time-step separator, and, for tokenizers that merge digit runs (GPT-2/GPT-3 BPE), the
digits are separated by spaces so that every digit is one token.

:class:`SerializerConfig` holds the format and the scaling rule;
:class:`NumberSerializer` applies it and carries the scale state fitted on the
history, so that :meth:`NumberSerializer.parse` maps generated text back to the
original units. Parsing is total: it never raises, whatever the text.

Format, with ``digit_sep`` (LLMTime's ``bit_sep``) written before every atom (sign,
digit or missing token) and ``time_sep`` after every value::

    digit_sep=" ", time_sep=" ,"   ->   "1 2 3 , - 4 5 , Nan ,"     (GPT-2 preset)
    digit_sep="",  time_sep=","    ->   "123,-45,Nan,"              (LLaMA preset)

for the scaled values ``0.123, -0.045, missing`` at ``precision=3``. The leading
``digit_sep`` of a series is dropped so that templates control the spacing around it.
:func:`preset_for_tokenizer` picks the right one of the two by looking at how the
tokenizer splits digits.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from llm_st.errors import ConfigError, DataError

_DIGITS = "0123456789"
# integer codes beyond this many digits are garbage (and would make int() slow)
_MAX_CODE_DIGITS = 18


@dataclass(frozen=True)
class SerializerConfig:
    """How numbers are written as text and how a series is scaled first.

    Parameters
    ----------
    precision
        Digits kept after the (implicit) decimal point of the scaled value.
    digit_sep
        Written before every digit, sign and missing token (LLMTime ``bit_sep``):
        ``" "`` for tokenizers that merge digit runs, ``""`` for those that split digits.
    time_sep
        Written after every value, i.e. between time steps (LLMTime ``time_sep``).
        Its last non-space character must not be a digit, the sign or part of the
        missing token.
    minus_sign
        Written before negative values.
    missing_token
        Written for missing (NaN) history values.
    alpha
        Quantile of the (shifted) history that is scaled to 1; ``None`` disables scaling.
    beta
        Shift: the history minus ``min - beta * (max - min)`` is scaled (LLMTime
        ``beta``); ignored when ``basic``.
    basic
        Scale ``x / max(quantile(|x|, alpha), 0.01)`` without a shift (LLMTime ``basic``).
    """

    precision: int = 3
    digit_sep: str = " "
    time_sep: str = " ,"
    minus_sign: str = "-"
    missing_token: str = "Nan"
    alpha: float | None = 0.95
    beta: float = 0.3
    basic: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.precision, int) or not 0 <= self.precision <= 8:
            raise ConfigError(
                f"precision={self.precision!r} is outside 0..8", "use e.g. 3 (LLMTime's default)"
            )
        if self.alpha is not None and not 0.0 < self.alpha <= 1.0:
            raise ConfigError(
                f"alpha={self.alpha!r} is outside (0, 1]", "use e.g. 0.95, or None for no scaling"
            )
        if self.beta < 0:
            raise ConfigError(
                f"beta={self.beta!r} is negative",
                "use e.g. 0.3, or 0 for no margin below the minimum",
            )
        key = self.time_sep.strip()
        if not key:
            raise ConfigError(
                f"time_sep={self.time_sep!r} has no visible character",
                "use a separator with a visible mark such as ',' or ' ,'",
            )
        reserved = (
            set(_DIGITS) | set(self.digit_sep) | set(self.minus_sign) | set(self.missing_token)
        )
        if key[-1] in reserved:
            raise ConfigError(
                f"time_sep={self.time_sep!r} ends in {key[-1]!r}, which also appears in digits, "
                "digit_sep, minus_sign or missing_token",
                "pick a separator character of its own, e.g. ','",
            )
        if not self.minus_sign.strip() or not self.missing_token.strip():
            raise ConfigError(
                "minus_sign and missing_token must be visible", "use e.g. '-' and 'Nan'"
            )
        marks = set(self.minus_sign) | set(self.missing_token)
        if set(_DIGITS) & (marks | set(self.digit_sep)) or set(self.digit_sep) & marks:
            raise ConfigError(
                f"minus_sign={self.minus_sign!r}, missing_token={self.missing_token!r} and "
                f"digit_sep={self.digit_sep!r} share characters or contain digits",
                "use e.g. '-', 'Nan' and ' '",
            )

    @property
    def value_end(self) -> str:
        """The visible mark that ends a value (``time_sep`` without spaces)."""
        return self.time_sep.strip()


LLMTIME_GPT = SerializerConfig(precision=3, digit_sep=" ", time_sep=" ,", alpha=0.95, beta=0.3)
"""LLMTime's GPT-3 settings (``gpt3_hypers``): spaced digits, ``" ,"`` between steps."""

LLMTIME_LLAMA = SerializerConfig(precision=3, digit_sep="", time_sep=",", alpha=0.99, beta=0.3)
"""LLMTime's LLaMA settings (``llama_hypers``): plain digits, ``","`` between steps."""


@dataclass(frozen=True)
class ParsedValues:
    """What :meth:`NumberSerializer.parse` recovers from generated text.

    Attributes
    ----------
    values
        ``[..., H]`` float64 on the original scale; NaN where a step was missing,
        garbled, not a finite number or not generated at all.
    valid
        ``[...]`` bool: all ``H`` steps are finite numbers.
    num_values
        ``[...]`` int64: values the text contained (terminated or not), before
        cutting to ``H``; more than ``H`` means over-long output.
    """

    values: np.ndarray
    valid: np.ndarray
    num_values: np.ndarray


class NumberSerializer:
    """Scale, write and parse series as text; fitted state = per-series ``(offset, scale)``.

    The serializer works on the last axis: a history ``[..., T]`` gives one text per
    leading index. NaN is missing. :meth:`fit` returns a new serializer that holds
    ``offset`` and ``scale`` of shape ``[...]``; every other method maps through them.

    Parameters
    ----------
    config
        The format; default :class:`SerializerConfig` (LLMTime's GPT-3 settings).

    Examples
    --------
    >>> ser = NumberSerializer(SerializerConfig(digit_sep="", time_sep=",")).fit(x)  # x [B, T]
    >>> texts = ser.serialize(x)                 # [B] strings, "123,456,...,"
    >>> parsed = ser.parse(generated, horizon)   # values [B, H] on x's scale
    """

    def __init__(self, config: SerializerConfig | None = None):
        self.config = config or SerializerConfig()
        self.offset: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    # ------------------------------------------------------------------ scale state
    @property
    def fitted(self) -> bool:
        return self.offset is not None

    def fit(self, history: np.ndarray) -> NumberSerializer:
        """A copy fitted on ``history`` ``[..., T]`` (NaN = missing); state of shape ``[...]``.

        LLMTime's scaler: ``offset = min - beta * (max - min)`` and ``scale`` the
        ``alpha``-quantile of ``history - offset`` (1 if that is 0); with ``basic``,
        ``offset = 0`` and ``scale = max(quantile(|x|, alpha), 0.01)``; with
        ``alpha=None``, ``offset = 0`` and ``scale = 1``. A series without any observed
        value gets ``offset = 0, scale = 1``.
        """
        x = np.asarray(history, dtype=np.float64)
        if x.ndim == 0:
            raise DataError(
                "cannot fit a serializer on a scalar", "pass a history of shape [..., T]"
            )
        x = np.where(np.isfinite(x), x, np.nan)
        lead = x.shape[:-1]
        cfg = self.config
        offset = np.zeros(lead)
        scale = np.ones(lead)
        observed = ~np.all(np.isnan(x), axis=-1)
        if cfg.alpha is not None and np.any(observed):
            xs = x[observed]
            if cfg.basic:
                q = np.nanquantile(np.abs(xs), cfg.alpha, axis=-1)
                scale[observed] = np.maximum(q, 0.01)
            else:
                lo, hi = np.nanmin(xs, axis=-1), np.nanmax(xs, axis=-1)
                off = lo - cfg.beta * (hi - lo)
                q = np.nanquantile(xs - off[:, None], cfg.alpha, axis=-1)
                offset[observed] = off
                scale[observed] = np.where(q > 0, q, 1.0)
        out = NumberSerializer(cfg)
        out.offset, out.scale = offset, scale
        return out

    def take(self, index: Any) -> NumberSerializer:
        """The serializer restricted to the series ``offset[index]`` (e.g. one series)."""
        self._check_fitted()
        out = NumberSerializer(self.config)
        out.offset, out.scale = self.offset[index], self.scale[index]
        return out

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise ConfigError(
                "NumberSerializer is not fitted",
                "call fit(history) and use the serializer it returns",
            )

    def _state(self) -> tuple[np.ndarray, np.ndarray]:
        """``offset``, ``scale`` with a trailing (time) axis, to broadcast against ``[..., T]``."""
        self._check_fitted()
        return self.offset[..., None], self.scale[..., None]

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Integer codes ``[..., T]`` (int64; ``round(scaled * 10**precision)``), NaN -> -2**63.

        ``x`` must broadcast against the fitted state plus a time axis.
        """
        offset, scale = self._state()
        scaled = (np.asarray(x, dtype=np.float64) - offset) / scale * 10.0**self.config.precision
        finite = np.isfinite(scaled)
        limit = 10.0**_MAX_CODE_DIGITS
        if np.any(finite & (np.abs(scaled) >= limit)):
            raise DataError(
                f"a value is more than 1e{_MAX_CODE_DIGITS - self.config.precision} times the "
                "series' scale and cannot be written",
                "enable scaling (alpha) or lower the precision",
            )
        return np.where(finite, np.rint(np.where(finite, scaled, 0.0)), -(2.0**63)).astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Original-scale values ``[..., T]`` from integer codes (inverse of :meth:`encode`)."""
        offset, scale = self._state()
        codes = np.asarray(codes)
        values = codes.astype(np.float64) / 10.0**self.config.precision * scale + offset
        return np.where(codes == np.iinfo(np.int64).min, np.nan, values)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """``x`` rounded to what the text can hold: ``decode(encode(x))``."""
        return self.decode(self.encode(x))

    def digits_needed(self, x: np.ndarray) -> int:
        """Largest number of digits of any value of ``x`` once written (at least 1)."""
        codes = self.encode(x)
        codes = np.abs(codes[codes != np.iinfo(np.int64).min])
        return max(1, len(str(int(codes.max())))) if codes.size else 1

    # ------------------------------------------------------------------ text
    def value_strings(self, x: np.ndarray) -> list[list[str]]:
        """Per series, the text of each value with its ``time_sep``: ``[...] x T`` strings.

        The leading index of ``x`` ``[..., T]`` is flattened (row-major); joining one
        series' strings (and dropping the first ``digit_sep``, see :meth:`join`) gives
        its serialization.
        """
        codes = self.encode(x)
        cfg = self.config
        ds, ts = cfg.digit_sep, cfg.time_sep
        missing = ds + cfg.missing_token + ts
        minus = ds + cfg.minus_sign
        null = np.iinfo(np.int64).min
        cache: dict[int, str] = {}

        def one(code: int) -> str:
            text = cache.get(code)
            if text is None:
                if code == null:
                    text = missing
                else:
                    body = "".join(ds + d for d in str(abs(code))) if ds else str(abs(code))
                    text = (minus if code < 0 else "") + body + ts
                cache[code] = text
            return text

        flat = codes.reshape(-1, codes.shape[-1]) if codes.ndim > 1 else codes[None]
        return [[one(c) for c in row] for row in flat.tolist()]

    def join(self, values: Sequence[str]) -> str:
        """One series' text from its value strings, without the leading ``digit_sep``."""
        text = "".join(values)
        ds = self.config.digit_sep
        return text[len(ds) :] if ds and text.startswith(ds) else text

    def serialize(self, x: np.ndarray) -> np.ndarray | str:
        """Text of each series of ``x`` ``[..., T]``: a ``str`` for 1-D ``x``, else an
        object array ``[...]`` of strings. Every text ends with ``time_sep``."""
        x = np.asarray(x, dtype=np.float64)
        texts = [self.join(v) for v in self.value_strings(x)]
        if x.ndim == 1:
            return texts[0]
        out = np.empty(len(texts), dtype=object)
        out[:] = texts
        return out.reshape(x.shape[:-1])

    def parse(self, texts: Any, horizon: int) -> ParsedValues:
        """Values of generated ``texts`` (``str`` or array-like ``[...]``) on the original scale.

        The text is split at ``time_sep``'s visible mark; in each piece every
        whitespace and ``digit_sep`` character is dropped and what remains must be
        ``[minus_sign]digits`` (else the step is NaN; the missing token is NaN too).
        A last piece without a terminating separator is accepted. Steps beyond the
        text are NaN, pieces beyond ``horizon`` are ignored. The fitted state must
        broadcast against ``[...]``. Never raises on any text.
        """
        self._check_fitted()
        arr = np.asarray(texts, dtype=object)
        flat = arr.reshape(-1)
        codes = np.full((len(flat), horizon), np.iinfo(np.int64).min, dtype=np.int64)
        counts = np.zeros(len(flat), dtype=np.int64)
        for i, text in enumerate(flat.tolist()):
            counts[i] = self._parse_codes(text if isinstance(text, str) else "", codes[i])
        codes = codes.reshape(*arr.shape, horizon)
        with np.errstate(over="ignore", invalid="ignore"):
            values = self.decode(codes)
        values = np.where(np.isfinite(values), values, np.nan)
        return ParsedValues(values, np.all(np.isfinite(values), axis=-1), counts.reshape(arr.shape))

    def _parse_codes(self, text: str, out: np.ndarray) -> int:
        """Write the integer codes of ``text`` into ``out`` ``[H]``; return the number of pieces."""
        cfg = self.config
        pieces = text.split(cfg.value_end)
        if pieces and not pieces[-1].strip():
            pieces.pop()  # the text ended with a separator
        drop = str.maketrans("", "", cfg.digit_sep)
        minus = cfg.minus_sign.strip()
        for h, piece in enumerate(pieces[: len(out)]):
            body = "".join(piece.translate(drop).split())
            negative = bool(minus) and body.startswith(minus)
            if negative:
                body = body[len(minus) :]
            if 0 < len(body) <= _MAX_CODE_DIGITS and all(c in _DIGITS for c in body):
                out[h] = -int(body) if negative else int(body)
        return len(pieces)

    def __repr__(self) -> str:
        state = f", series={self.offset.shape}" if self.fitted else ""
        return f"NumberSerializer({self.config}{state})"


# ---------------------------------------------------------------------- tokenizers
_TOKEN_TEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_texts(tokenizer: Any) -> list[str]:
    """The text every token id adds when it follows other text: ``[len(tokenizer)]`` strings.

    Decoding one id alone loses what tokenizers strip at the start of a text (the
    sentencepiece word-boundary space), so each id is decoded after an anchor digit
    and the anchor's text is removed. Special tokens give ``""``. Cached per tokenizer.
    """
    try:
        return _TOKEN_TEXTS[tokenizer]
    except (KeyError, TypeError):
        pass
    anchor = tokenizer.encode("0", add_special_tokens=False)
    prefix = tokenizer.decode(anchor, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    size = len(tokenizer)
    decoded = tokenizer.batch_decode(
        [anchor + [i] for i in range(size)],
        skip_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )
    special = set(tokenizer.all_special_ids)
    texts = [
        "" if i in special or not d.startswith(prefix) else d[len(prefix) :]
        for i, d in enumerate(decoded)
    ]
    try:
        _TOKEN_TEXTS[tokenizer] = texts
    except TypeError:
        pass
    return texts


def merges_digits(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` puts several digits into one token (GPT-2 BPE) or not (LLaMA)."""
    probe = "1234567890 31415926 2718281828 20240117 65536 999"
    texts = token_texts(tokenizer)
    ids = tokenizer.encode(probe, add_special_tokens=False)
    return any(sum(c in _DIGITS for c in texts[i]) > 1 for i in ids)


def preset_for_tokenizer(tokenizer: Any, **overrides: Any) -> SerializerConfig:
    """LLMTime's format for this tokenizer: spaced digits if it merges digit runs, else plain.

    Tokenizers that merge digits (GPT-2 byte-level BPE) get :data:`LLMTIME_GPT`, so that
    each digit is its own token; tokenizers that split digits themselves (LLaMA
    sentencepiece with ``split_digits``) get :data:`LLMTIME_LLAMA`, since separators
    would only double the tokens per value. ``overrides`` replace fields
    (e.g. ``precision=2``).
    """
    base = LLMTIME_GPT if merges_digits(tokenizer) else LLMTIME_LLAMA
    return replace(base, **overrides)


def tokens_per_value(
    tokenizer: Any, config: SerializerConfig, series: np.ndarray | None = None
) -> float:
    """Mean number of tokens one value costs in ``config``'s format with ``tokenizer``.

    ``series`` ``[..., T]`` defaults to 64 random walks of 96 steps (seed 0). Counts the
    tokens of each serialized series (no special tokens) divided by its length.
    """
    if series is None:
        series = 50.0 + np.cumsum(np.random.default_rng(0).normal(0, 1, (64, 96)), axis=-1)
    series = np.asarray(series, dtype=np.float64)
    fitted = NumberSerializer(config).fit(series)
    texts = np.atleast_1d(fitted.serialize(series)).reshape(-1).tolist()
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return float(np.mean([len(i) for i in ids]) / series.shape[-1])
