"""Text descriptions of ST windows, computed from the data itself.

Every (window, node) pair gets one English sentence built from a fixed vocabulary,
so a language model can embed it and an ST encoder can be aligned to it
(:mod:`llm_st.objectives.alignment`). Example::

    Speed falling sharply, far below its usual level, very volatile, with a sudden
    drop late in the window; in the evening rush hour on Tuesday; at a freeway sensor
    on Route 1 northbound, north-east of the centre.

Vocabulary (:data:`VOCABULARY`; a slot whose phrase is empty is left out):

- ``trend``: the least-squares change over the window in units of the node's
  standard deviation ``s`` (``< -1`` falling sharply, ``< -0.3`` falling,
  ``<= 0.3`` steady, ``<= 1`` rising, else rising sharply).
- ``level``: the window's mean against the node's median, in units of ``s``
  (edges -1.5, -0.5, 0.5, 1.5: far below / below / near / above / far above its usual level).
- ``volatility``: the mean absolute step-to-step change against the node's median
  one (``< 1.25`` calm, ``< 1.75`` somewhat unsteady, else very volatile).
- ``event``: the largest change over ``max(1, L // 8)`` steps if it exceeds both ``s``
  and 4 median step changes (so noise alone is no event): a sudden drop or jump,
  early (first third), midway or late in the window.
- ``missing``: share of missing readings (none, up to 25 %: a few, more: many, all).
- ``period`` and ``day``: the clock time and weekday of the window's last step
  (night, early morning, morning rush hour / morning on weekends, midday, evening
  rush hour / afternoon on weekends, evening, late night); only for data with
  timestamps or a sub-daily frequency.
- ``place``: from ``node_meta`` columns ``road_type``, ``road``, ``direction``
  (N/E/S/W) and ``zone`` when present, and from ``coords``: the compass direction
  from the centre of all nodes (``near the centre`` within a quarter of the largest
  distance, ``on the outskirts`` beyond 70 %). Grid coordinates are (row, column)
  with row 0 to the north; other coordinates are (latitude, longitude).

Node statistics (median, ``s``, median step change) come from ``reference`` rows,
the training part when aligning, so held-out descriptions use nothing from their
own future. All features are computed for all pairs at once with numpy; each
distinct combination of phrases is rendered once.

:meth:`Descriptions.render` gives the same content in other words
(:data:`PARAPHRASES`, another sentence order; places and weekdays keep their names),
to test whether an alignment carries over to wording it was not trained on::

    During the evening commute on Tuesday; speed at a freeway sensor on Route 1
    northbound, north-east of the centre: dropping steeply, much lower than normal,
    highly erratic, an abrupt fall near the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from llm_st.data.container import STData
from llm_st.data.timefeatures import time_features
from llm_st.errors import ConfigError, DataError

if TYPE_CHECKING:
    from llm_st.backbones.text_encoder import FrozenTextEncoder

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
VOCABULARY: dict[str, tuple[str, ...]] = {
    "trend": ("falling sharply", "falling", "steady", "rising", "rising sharply"),
    "level": (
        "far below its usual level",
        "below its usual level",
        "near its usual level",
        "above its usual level",
        "far above its usual level",
    ),
    "volatility": ("calm", "somewhat unsteady", "very volatile"),
    "event": (
        "",
        "with a sudden drop early in the window",
        "with a sudden drop midway through the window",
        "with a sudden drop late in the window",
        "with a sudden jump early in the window",
        "with a sudden jump midway through the window",
        "with a sudden jump late in the window",
    ),
    "missing": (
        "",
        "with a few readings missing",
        "with many readings missing",
        "with no readings",
    ),
    "period": (
        "at night",
        "in the early morning",
        "in the morning rush hour",
        "in the morning",
        "around midday",
        "in the evening rush hour",
        "in the afternoon",
        "in the evening",
        "late at night",
    ),
    "day": tuple(f"on {d}" for d in _DAYS),
}
# The same content in other words (and another sentence order): a model aligned to the
# standard wording can be tested on descriptions it never saw phrased this way.
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "trend": ("dropping steeply", "going down", "flat", "going up", "climbing steeply"),
    "level": (
        "much lower than normal",
        "lower than normal",
        "about normal",
        "higher than normal",
        "much higher than normal",
    ),
    "volatility": ("smooth", "a bit erratic", "highly erratic"),
    "event": (
        "",
        "an abrupt fall at the start",
        "an abrupt fall in the middle",
        "an abrupt fall near the end",
        "an abrupt surge at the start",
        "an abrupt surge in the middle",
        "an abrupt surge near the end",
    ),
    "missing": ("", "some data gaps", "large data gaps", "no data at all"),
    "period": (
        "overnight",
        "around dawn",
        "during the morning commute",
        "before noon",
        "at lunchtime",
        "during the evening commute",
        "after lunch",
        "after dark",
        "around midnight",
    ),
    "day": _DAYS,
}
WORDINGS = ("standard", "paraphrase")
SLOTS = ("trend", "level", "volatility", "event", "missing", "period", "day", "place")
# slots whose phrases come from the fixed vocabulary (``place`` is built from node metadata)
FIXED_SLOTS = tuple(s for s in SLOTS if s != "place")

TREND_EDGES = (-1.0, -0.3, 0.3 + 1e-9, 1.0 + 1e-9)
LEVEL_EDGES = (-1.5, -0.5, 0.5, 1.5)
VOLATILITY_EDGES = (1.25, 1.75)
EVENT_THRESHOLD = 1.0  # in node standard deviations
EVENT_STEPS = 4.0  # in median step changes, so that noise alone is no event
FEW_MISSING = 0.25
COMPASS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")
_DIRECTIONS = {"N": "northbound", "E": "eastbound", "S": "southbound", "W": "westbound"}
# (start hour, end hour, weekday phrase, weekend phrase): indices into VOCABULARY["period"]
_PERIOD_HOURS = (
    (0, 5, 0, 0),
    (5, 7, 1, 1),
    (7, 10, 2, 3),
    (10, 15, 4, 4),
    (15, 19, 5, 6),
    (19, 22, 7, 7),
    (22, 24, 8, 8),
)


@dataclass
class Descriptions:
    """One sentence per (window, node) pair, window-major: pair ``p = w * num_nodes + n``.

    Attributes
    ----------
    texts : list[str]
        ``P = num_windows * num_nodes`` sentences.
    codes : dict[str, np.ndarray]
        Per slot, ``[P]`` int index of the chosen phrase in ``VOCABULARY[slot]`` (``place``:
        the node index into :attr:`places`); ``-1`` where the slot is left out.
    places : list[str]
        ``[num_nodes]`` place phrase of each node (empty without metadata).
    num_windows, num_nodes : int
    channel : str
        Name of the described channel (the sentences' subject).
    """

    texts: list[str]
    codes: dict[str, np.ndarray]
    places: list[str]
    num_windows: int
    num_nodes: int
    channel: str = "value"

    def __len__(self) -> int:
        return len(self.texts)

    def render(self, wording: str = "standard") -> list[str]:
        """The ``P`` sentences in ``wording`` (:data:`WORDINGS`), each distinct one built once."""
        if wording not in WORDINGS:
            raise ConfigError(f"unknown wording {wording!r}", f"use one of {WORDINGS}")
        names = list(self.codes)
        if not names:
            return [_render(self.channel, {}, self.places, wording)] * len(self.texts)
        table = np.stack([self.codes[k] for k in names], axis=1)
        combos, inverse = np.unique(table, axis=0, return_inverse=True)
        rendered = np.asarray(
            [
                _render(
                    self.channel, dict(zip(names, row.tolist(), strict=True)), self.places, wording
                )
                for row in combos
            ],
            dtype=object,
        )
        return rendered[inverse.reshape(-1)].tolist()

    def groups(self) -> np.ndarray:
        """``[P]`` int: pairs with the same id have identical sentences."""
        return np.unique(np.asarray(self.texts, dtype=object), return_inverse=True)[1].reshape(-1)


def _masked_nanstat(values: np.ndarray, mask: np.ndarray, fn) -> np.ndarray:
    with np.errstate(all="ignore"):
        return fn(np.where(mask, values, np.nan), axis=0)


def _node_reference(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per node ``[N]``: median, standard deviation and median absolute step change."""
    if not mask.any(axis=0).all():
        bad = int(np.flatnonzero(~mask.any(axis=0))[0])
        raise DataError(
            f"node {bad} has no observed value in the reference rows of the descriptions",
            "use a longer reference (training) part or drop the node",
        )
    median = _masked_nanstat(values, mask, np.nanmedian)
    std = _masked_nanstat(values, mask, np.nanstd)
    both = mask[1:] & mask[:-1]
    step = _masked_nanstat(np.abs(np.diff(values, axis=0)), both, np.nanmedian)
    tiny = 1e-6 * (np.abs(median) + 1.0)
    return median, np.maximum(std, tiny), np.maximum(np.nan_to_num(step, nan=0.0), tiny)


def _join(parts: list[np.ndarray], sep: str) -> np.ndarray:
    """Element-wise join of ``[N]`` object arrays of strings, skipping empty ones."""
    out = parts[0]
    for part in parts[1:]:
        out = out + np.where((out != "") & (part != ""), sep, "") + part
    return out


def _article(words: np.ndarray) -> np.ndarray:
    """``"an "`` before a vowel, else ``"a "``, for each word of an ``[N]`` object array."""
    return np.asarray(["an " if w[:1].lower() in "aeiou" and w else "a " for w in words], object)


def _place_phrases(data: STData) -> list[str]:
    """``[N]`` place phrase per node from ``node_meta`` and ``coords`` (empty if neither)."""
    N = data.num_nodes
    empty = np.full(N, "", dtype=object)
    meta = data.node_meta
    sensor, zone, where = empty, empty, empty

    def column(name: str) -> np.ndarray:
        return meta[name].astype(str).to_numpy(object) if name in meta else empty

    if meta is not None and {"road_type", "road", "direction"} & set(meta.columns):
        heading = np.asarray([_DIRECTIONS.get(d, "") for d in column("direction")], object)
        road_type = column("road_type")
        kind = np.where(road_type != "", _article(road_type) + road_type + " sensor", "a sensor")
        road = np.where(column("road") != "", "on " + column("road"), "")
        sensor = "at " + _join([kind.astype(object), road.astype(object), heading], " ")
    if meta is not None and "zone" in meta:
        zone = "in " + _article(column("zone")) + column("zone") + " zone"
    if data.coords is not None and N > 1:
        c = data.coords - data.coords.mean(axis=0)
        if data.grid_shape is not None:
            dx, dy = c[:, 1], -c[:, 0]
        else:
            dx, dy = c[:, 1] * np.cos(np.radians(data.coords[:, 0].mean())), c[:, 0]
        r = np.hypot(dx, dy)
        sector = np.round(np.arctan2(dy, dx) / (np.pi / 4)).astype(int) % 8
        compass = np.asarray(COMPASS, dtype=object)[sector]
        rmax = max(float(r.max()), 1e-12)
        where = np.where(
            r < 0.25 * rmax,
            "near the centre",
            np.where(r > 0.7 * rmax, "on the outskirts, " + compass, compass + " of the centre"),
        ).astype(object)
    return [str(s) for s in _join([sensor, zone, where], ", ")]


def _channel_index(data: STData, channel: int | str) -> int:
    if isinstance(channel, str):
        if channel not in data.channels:
            raise ConfigError(f"unknown channel {channel!r}", f"use one of {data.channels}")
        return data.channels.index(channel)
    if not 0 <= channel < data.num_channels:
        raise ConfigError(
            f"channel {channel} is out of range", f"use 0..{data.num_channels - 1} or a name"
        )
    return int(channel)


def describe_windows(
    data: STData,
    starts: np.ndarray | Sequence[int],
    length: int,
    channel: int | str = 0,
    reference: tuple[int, int] | None = None,
    slots: Sequence[str] = SLOTS,
    wording: str = "standard",
) -> Descriptions:
    """Describe the windows ``values[s : s + length]`` of every node in words.

    Parameters
    ----------
    data : STData
        ``values`` ``[T, N, C]`` with mask, timestamps, ``node_meta``, ``coords``.
    starts : array ``[W]``
        First row of each window.
    length : int
        Rows per window ``L`` (at least 2).
    channel : int or str
        The channel described (its name starts the sentence).
    reference : (start, stop), optional
        Rows that define each node's usual level and variability; default all rows.
    slots : sequence of str
        Which parts of the sentence to include (subset of :data:`SLOTS`).
    wording : {"standard", "paraphrase"}
        The words of :attr:`Descriptions.texts` (:meth:`Descriptions.render` gives the other).

    Returns
    -------
    Descriptions
        ``W * N`` sentences, pair ``w * N + n``.
    """
    unknown = set(slots) - set(SLOTS)
    if unknown:
        raise ConfigError(f"unknown description slots {sorted(unknown)}", f"use some of {SLOTS}")
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    if length < 2:
        raise ConfigError(f"window length {length} is too short to describe", "use length >= 2")
    if len(starts) == 0 or starts.min() < 0 or starts.max() + length > data.num_steps:
        raise DataError(
            f"windows of {length} rows from starts in [{starts.min(initial=0)}, "
            f"{starts.max(initial=0)}] do not fit in {data.num_steps} rows",
            "pass at least one start with start + length <= the number of rows",
        )
    c = _channel_index(data, channel)
    r0, r1 = reference if reference is not None else (0, data.num_steps)
    median, std, step = _node_reference(data.values[r0:r1, :, c], data.mask[r0:r1, :, c])
    rows = starts[:, None] + np.arange(length)  # [W, L]
    x = data.values[rows, :, c].astype(np.float64)  # [W, L, N]
    m = data.mask[rows, :, c]
    w = m.astype(np.float64)
    count = w.sum(axis=1)  # [W, N]
    has = count > 0
    safe = np.maximum(count, 1.0)

    mean = (w * x).sum(axis=1) / safe
    t = np.arange(length, dtype=np.float64)[None, :, None]
    tc = t - (w * t).sum(axis=1, keepdims=True) / safe[:, None]
    den = (w * tc**2).sum(axis=1)
    slope = np.where(
        den > 0, (w * tc * (x - mean[:, None])).sum(axis=1) / np.maximum(den, 1e-12), 0
    )
    trend = np.digitize(slope * (length - 1) / std, TREND_EDGES)
    level = np.digitize((mean - median) / std, LEVEL_EDGES)

    both = m[:, 1:] & m[:, :-1]
    n_both = both.sum(axis=1)
    mad = np.where(both, np.abs(np.diff(x, axis=1)), 0).sum(axis=1) / np.maximum(n_both, 1)
    volatility = np.digitize(mad / step, VOLATILITY_EDGES)

    span = max(1, length // 8)
    jump = np.where(m[:, span:] & m[:, :-span], x[:, span:] - x[:, :-span], 0.0)  # [W, L-span, N]
    at = np.abs(jump).argmax(axis=1)
    biggest = np.take_along_axis(jump, at[:, None], axis=1)[:, 0]
    third = np.minimum(3 * (at + span / 2) // length, 2).astype(int)
    sudden = np.abs(biggest) > np.maximum(EVENT_THRESHOLD * std, EVENT_STEPS * step)
    event = np.where(sudden, 1 + 3 * (biggest > 0) + third, 0)

    share = 1.0 - count / length
    missing = np.select([share == 0, share <= FEW_MISSING, share < 1], [0, 1, 2], 3)

    W, N = count.shape
    codes: dict[str, np.ndarray] = {
        "trend": np.where(has, trend, -1),
        "level": np.where(has, level, -1),
        "volatility": np.where(n_both > 0, volatility, -1),
        "event": np.where(has, event, -1),
        "missing": missing,
    }
    per_day = data.steps_per_day()
    if data.timestamps is not None or (per_day is not None and per_day >= 4):
        tf = time_features(data)[rows[:, -1]]  # [W, 2] of the last step
        hour = tf[:, 0] * 24.0
        weekend = tf[:, 1] >= 5
        period = np.zeros(W, dtype=np.int64)
        for lo, hi, wd, we in _PERIOD_HOURS:
            period = np.where((hour >= lo) & (hour < hi), np.where(weekend, we, wd), period)
        codes["period"] = np.repeat(period, N).reshape(W, N)
        codes["day"] = np.repeat(tf[:, 1].astype(np.int64), N).reshape(W, N)
    places = _place_phrases(data)
    if any(places):
        codes["place"] = np.broadcast_to(np.arange(N), (W, N))
    codes = {k: np.asarray(v, np.int64).reshape(-1) for k, v in codes.items() if k in slots}

    desc = Descriptions([], codes, places, W, N, data.channels[c])
    desc.texts = desc.render(wording)
    return desc


def _render(channel: str, code: dict[str, int], places: list[str], wording: str) -> str:
    """One sentence from the phrase index of each slot (``-1`` / absent: left out)."""
    vocabulary = VOCABULARY if wording == "standard" else PARAPHRASES

    def phrase(slot: str) -> str:
        i = code.get(slot, -1)
        if i < 0:
            return ""
        return places[i] if slot == "place" else vocabulary[slot][i]

    def joined(slots: tuple[str, ...], sep: str) -> str:
        return sep.join(p for p in map(phrase, slots) if p)

    what = joined(("trend", "level", "volatility", "event", "missing"), ", ")
    if wording == "standard":
        clauses = [f"{channel} {what}".strip(), joined(("period", "day"), " "), phrase("place")]
    else:
        when = " on ".join(p for p in (phrase("period"), phrase("day")) if p)
        subject = " ".join(p for p in (channel, phrase("place")) if p)
        clauses = [when, f"{subject}: {what}" if what else subject]
    sentence = "; ".join(c for c in clauses if c)
    return sentence[:1].upper() + sentence[1:] + "."


def prototype_words(slots: Sequence[str] = FIXED_SLOTS) -> list[str]:
    """The fixed vocabulary as a flat list of phrases (the default TEST-style prototypes).

    Phrase ``j`` of slot ``s`` is at position ``offset(s) + j`` in the order of
    ``slots``; empty phrases are kept (their prototype is never used) so the
    positions follow :attr:`Descriptions.codes` directly.
    """
    return [p for s in slots for p in VOCABULARY[s]]


def prototype_index(desc: Descriptions, slots: Sequence[str] = FIXED_SLOTS) -> np.ndarray:
    """``[P, len(slots)]`` index into :func:`prototype_words` of each pair's phrases (-1: none)."""
    out = []
    offset = 0
    for s in slots:
        code = desc.codes.get(s, np.full(len(desc), -1))
        empty = np.array([p == "" for p in VOCABULARY[s]])
        valid = code >= 0
        valid[valid] &= ~empty[code[valid]]
        out.append(np.where(valid, code + offset, -1))
        offset += len(VOCABULARY[s])
    return np.stack(out, axis=1)


def text_prototypes(
    encoder: FrozenTextEncoder,
    words: Sequence[str] | None = None,
    source: str = "sentence",
) -> tuple[list[str], torch.Tensor]:
    """Text prototypes in the spirit of TEST (Sun et al., ICLR 2024): fixed anchors in
    the frozen language space that ST embeddings are aligned to.

    Parameters
    ----------
    encoder : FrozenTextEncoder
    words : sequence of str, optional
        The prototype words / phrases; default :func:`prototype_words` (the fixed
        description vocabulary, so that a description is the sum of its phrases'
        prototypes, see :func:`prototype_index`).
    source : {"sentence", "tokens"}
        ``"sentence"``: each phrase through the encoder like a sentence;
        ``"tokens"``: the mean of its rows of the model's input word-embedding matrix
        (TEST's choice: prototypes from the static vocabulary).

    Returns
    -------
    words : list[str]
        ``K`` phrases.
    prototypes : torch.Tensor ``[K, D]``
        One vector per phrase; zero for an empty phrase.
    """
    words = prototype_words() if words is None else list(words)
    if source not in ("sentence", "tokens"):
        raise ConfigError(f"unknown prototype source {source!r}", "use 'sentence' or 'tokens'")
    used = [i for i, w in enumerate(words) if w]
    if not used:
        raise ConfigError("no non-empty prototype words", "pass at least one word")
    chosen = [words[i] for i in used]
    emb = encoder.encode(chosen) if source == "sentence" else encoder.word_embeddings(chosen)
    out = torch.zeros(len(words), emb.shape[1])
    out[used] = emb
    return words, out


def text_targets(
    encoder: FrozenTextEncoder,
    desc: Descriptions,
    prototypes: torch.Tensor | None = None,
    wording: str = "standard",
) -> tuple[torch.Tensor, np.ndarray]:
    """Text-space targets of the pairs of ``desc`` and their groups.

    Parameters
    ----------
    encoder : FrozenTextEncoder
        Encodes every distinct sentence once (and caches it).
    desc : Descriptions
        ``P`` described pairs.
    prototypes : torch.Tensor ``[K, D]``, optional
        :func:`text_prototypes` of :func:`prototype_words`: the target of a pair is then
        the normalized sum of its phrases' prototypes (:func:`prototype_index`)
        instead of the embedding of its sentence.
    wording : {"standard", "paraphrase"}
        The words of the sentences (description targets only).

    Returns
    -------
    targets : torch.Tensor ``[P, D]``
        Unit vectors, float32 on the CPU.
    groups : np.ndarray ``[P]``
        Pairs with identical targets share a group id.
    """
    if prototypes is None:
        texts = desc.texts if wording == "standard" else desc.render(wording)
        unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        inverse = inverse.reshape(-1)
        return encoder.encode(unique.tolist())[torch.as_tensor(inverse)], inverse
    if wording != "standard":
        raise ConfigError(
            f"prototype targets have no {wording!r} wording", "use description targets"
        )
    index = prototype_index(desc)  # [P, S], -1 where a slot has no phrase
    padded = torch.cat([prototypes, torch.zeros(1, prototypes.shape[1])])
    summed = padded[torch.as_tensor(index)].sum(1)  # -1 picks the zero row
    groups = np.unique(index, axis=0, return_inverse=True)[1].reshape(-1)
    return torch.nn.functional.normalize(summed, dim=-1), groups
