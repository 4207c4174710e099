"""What templates are given, and the builder that renders one template for many series.

:class:`PromptBuilder` turns windows of an :class:`~llm_st.data.container.STData` into
prompts: for each (window, node, channel) series it serializes the history (one
:class:`~llm_st.tokens.serialize.NumberSerializer` fit for all series at once, each
with its own scale), adds the variables the template reads and renders it. Variables:

- always: ``history``, ``history_len``, ``horizon``, ``description``, ``node_id``,
  ``node_meta`` (dict of the node's metadata row), ``channel``, ``start_time``,
  ``end_time`` (first/last history step), ``next_time`` (first forecast step),
  ``day_of_week`` (of ``next_time``), ``freq``, ``time_sep``; ``st_tokens`` (``""``
  unless :meth:`PromptBuilder.build` gets it in ``variables``: the spatio-temporal
  placeholder of :mod:`llm_st.prompting.dataset`);
- statistics (computed only if the template reads them; see
  :func:`llm_st.prompting.stats.series_statistics`): ``min``, ``max``, ``median``,
  ``trend`` (word), ``lags``;
- spatial (only if the template reads ``neighbors``): ``neighbors``, a list of dicts
  ``node_id, weight, distance_km`` (great-circle distance from the coordinates, None
  when unknown) and ``values`` (the neighbour's last ``neighbor_steps`` values),
  strongest edge first; and ``neighbor_steps``. The scale of such a series is fitted on
  its history together with its neighbours' values, so all of them compare directly.

With a tokenizer and a token budget, :meth:`PromptBuilder.fit_to_budget` cuts the
oldest history steps of prompts that are too long and renders them again, so the
instructions and the most recent values always stay. :func:`next_place_examples`
gives the variables of the ``next_place`` template for trajectories.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llm_st.data.container import STData
from llm_st.data.timefeatures import step_times, time_features_at
from llm_st.data.trajectories import Trajectories
from llm_st.errors import ConfigError, DataError
from llm_st.prompting.stats import series_statistics
from llm_st.prompting.templates import PromptTemplate, load_template
from llm_st.tokens.serialize import (
    LLMTIME_GPT,
    NumberSerializer,
    SerializerConfig,
    preset_for_tokenizer,
)

DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_STAT_VARIABLES = frozenset({"min", "max", "median", "trend", "lags"})
_EARTH_RADIUS_KM = 6371.0


def window_histories(
    data: STData, starts: np.ndarray, history: int, nodes: np.ndarray, channels: np.ndarray
) -> np.ndarray:
    """``[W, N', C', L]`` float64 histories (NaN where missing) of the windows starting at
    rows ``starts`` ``[W]``, for the given node and channel indices."""
    rows = (
        np.asarray(starts, np.int64)[:, None, None, None] + np.arange(history)[None, :, None, None]
    )
    index = (rows, nodes[None, None, :, None], channels[None, None, None, :])
    values = np.where(data.mask[index], data.values[index], np.nan).astype(
        np.float64
    )  # [W, L, N', C']
    return values.transpose(0, 2, 3, 1)


def haversine_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distance in km between ``(lat, lon)`` points ``a`` and ``b`` ``[..., 2]``."""
    lat1, lon1, lat2, lon2 = (np.radians(v) for v in (a[..., 0], a[..., 1], b[..., 0], b[..., 1]))
    h = (
        np.sin((lat2 - lat1) / 2) ** 2
        + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * _EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def _has_latlon(data: STData) -> bool:
    c = data.coords
    return (
        c is not None
        and data.grid_shape is None
        and bool(np.all(np.abs(c[:, 0]) <= 90) and np.all(np.abs(c[:, 1]) <= 180))
    )


def _times(data: STData, rows: np.ndarray) -> tuple[list[str], list[str]]:
    """Readable times and day names of ``rows`` (rows past the end continue the frequency)."""
    if data.timestamps is not None:
        ts = pd.DatetimeIndex(step_times(data, rows))
        return list(ts.strftime("%Y-%m-%d %H:%M")), list(ts.day_name())
    days = (
        [DAY_NAMES[int(d)] for d in time_features_at(data, rows)[:, 1]]
        if data.freq
        else ["unknown"] * len(rows)
    )
    return [f"step {r}" for r in rows], days


def _plain(value: Any) -> Any:
    """numpy scalars as Python values, floats to 6 significant digits (float32 noise off)."""
    if isinstance(value, (float, np.floating)):
        return float(f"{value:.6g}")
    return value.item() if isinstance(value, np.generic) else value


def default_description(data: STData) -> str:
    """``data.description``, or a one-line summary when the data have none."""
    if data.description:
        return data.description
    every = f", one value every {data.freq}" if data.freq else ""
    return f"{data.name}: {data.num_nodes} nodes, channels {', '.join(data.channels)}{every}."


@dataclass
class PromptBatch:
    """Prompts of ``M = W * N' * C'`` series, ordered by window, node, channel (channel fastest).

    Attributes
    ----------
    texts
        ``[M]`` final prompt texts (chat template applied where the template is a chat one).
    histories
        ``[M, L]`` float64 histories on the original scale, NaN where missing.
    serializer
        The serializer fitted on ``histories`` (state ``[M]``); parses the answers.
    shape
        ``(W, N', C')``.
    kept
        ``[M]`` history steps shown in each prompt (``L`` unless cut to fit).
    add_special_tokens
        Whether to tokenize ``texts`` with the tokenizer's special tokens (False when the
        chat template already wrote them).
    variables, values
        Per series, the template variables (without ``history``) and the text of each
        history value; kept for re-rendering when cutting.
    """

    texts: list[str]
    histories: np.ndarray
    serializer: NumberSerializer
    shape: tuple[int, int, int]
    kept: np.ndarray
    add_special_tokens: bool
    variables: list[dict[str, Any]]
    values: list[list[str]]


class PromptBuilder:
    """Render one template for many series.

    Parameters
    ----------
    template
        Template name (``plain``, ``stats``, ``spatial``, ``instruct``, ...), ``.j2`` path
        or loaded :class:`PromptTemplate`.
    serializer
        Number format; default the preset of ``tokenizer`` (:func:`preset_for_tokenizer`),
        or LLMTime's GPT-3 format without a tokenizer.
    tokenizer
        Needed for chat templates and for :meth:`fit_to_budget`.
    num_neighbors
        ``k`` neighbours for the spatial variables.
    neighbor_steps
        Recent steps shown per neighbour (default: ``min(history, 12)``).
    description
        Dataset description (default :func:`default_description`).
    num_lags
        Lags in the statistics.
    """

    def __init__(
        self,
        template: str | Path | PromptTemplate = "plain",
        serializer: SerializerConfig | None = None,
        tokenizer: Any = None,
        num_neighbors: int = 5,
        neighbor_steps: int | None = None,
        description: str | None = None,
        num_lags: int = 5,
    ):
        self.template = load_template(template)
        self.tokenizer = tokenizer
        if serializer is None:
            serializer = preset_for_tokenizer(tokenizer) if tokenizer is not None else LLMTIME_GPT
        self.config = serializer
        self.num_neighbors = num_neighbors
        self.neighbor_steps = neighbor_steps
        self.description = description
        self.num_lags = num_lags
        self.use_chat = self.template.chat and bool(getattr(tokenizer, "chat_template", None))
        if self.template.chat and tokenizer is not None and not self.use_chat:
            warnings.warn(
                f"template {self.template.name!r} is an instruction template but the tokenizer "
                "has no chat template; the instruction is used as plain text",
                stacklevel=2,
            )

    # ------------------------------------------------------------------ build
    def build(
        self,
        data: STData,
        starts: np.ndarray,
        history: int,
        horizon: int,
        nodes: np.ndarray | None = None,
        channels: np.ndarray | None = None,
        variables: dict[str, Any] | None = None,
    ) -> PromptBatch:
        """Prompts for the windows whose history starts at rows ``starts`` ``[W]``.

        ``nodes`` / ``channels`` are index arrays (default: all). ``variables`` are merged
        into every prompt's variables and override the computed ones (``history`` and
        ``history_len`` cannot be set); a template that reads ``st_tokens`` gets ``""``
        unless ``variables`` sets it (see :mod:`llm_st.prompting.dataset`).
        """
        if variables and {"history", "history_len"} & set(variables):
            raise ConfigError(
                "variables= cannot set history or history_len (the builder writes them)",
                "pass only the extra variables the template reads",
            )
        starts = np.atleast_1d(np.asarray(starts, np.int64))
        nodes = (
            np.arange(data.num_nodes)
            if nodes is None
            else np.atleast_1d(np.asarray(nodes, np.int64))
        )
        channels = (
            np.arange(data.num_channels)
            if channels is None
            else np.atleast_1d(np.asarray(channels, np.int64))
        )
        # the forecast steps may lie past the end (a forecast of the future); the history not
        if starts.size and (starts.min() < 0 or starts.max() + history > data.num_steps):
            raise DataError(
                f"windows starting at rows {starts.min()}..{starts.max()} with history "
                f"{history} do not fit in {data.num_steps} steps",
                "choose later start rows or a shorter history",
            )
        for what, idx, size in (
            ("node", nodes, data.num_nodes),
            ("channel", channels, data.num_channels),
        ):
            if idx.size and (idx.min() < 0 or idx.max() >= size):
                raise DataError(
                    f"{what} index {int(idx.max())} is outside 0..{size - 1}",
                    f"pick {what}s of the data",
                )
        W, N, C = len(starts), len(nodes), len(channels)
        histories = window_histories(data, starts, history, nodes, channels).reshape(
            W * N * C, history
        )
        used = self.template.variables
        spatial = "neighbors" in used
        steps = min(history, self.neighbor_steps or 12)
        if spatial:
            links = [self._links(data, int(node)) for node in nodes]
            recent = self._recent(data, links, starts, history, channels, steps)  # [M, k, steps]
            # one scale for the target and its neighbours, so their values compare
            fitted = NumberSerializer(self.config).fit(
                np.concatenate([histories, recent.reshape(len(histories), -1)], axis=1)
            )
        else:
            fitted = NumberSerializer(self.config).fit(histories)
        values = fitted.value_strings(histories)

        times, days = _times(data, np.concatenate([starts, starts + history - 1, starts + history]))
        desc = self.description if self.description is not None else default_description(data)
        stats = series_statistics(histories, self.num_lags) if used & _STAT_VARIABLES else None
        meta_rows = (
            data.node_meta.iloc[nodes].to_dict("records")
            if data.node_meta is not None
            else [{}] * N
        )
        variables_out: list[dict[str, Any]] = []
        for m in range(W * N * C):
            w, rest = divmod(m, N * C)
            n, c = divmod(rest, C)
            v: dict[str, Any] = {
                "horizon": horizon,
                "description": desc,
                "node_id": data.node_ids[nodes[n]],
                "node_meta": {k: _plain(x) for k, x in meta_rows[n].items()},
                "channel": data.channels[channels[c]],
                "start_time": times[w],
                "end_time": times[W + w],
                "next_time": times[2 * W + w],
                "day_of_week": days[2 * W + w],
                "freq": data.freq or "unknown",
                "time_sep": self.config.time_sep,
            }
            if stats is not None:
                v.update(
                    min=float(stats["min"][m]),
                    max=float(stats["max"][m]),
                    median=float(stats["median"][m]),
                    trend=str(stats["trend_word"][m]),
                    lags=stats["lags"][m].tolist(),
                )
            if spatial:
                idx, weights, dist = links[n]
                texts = fitted.take(m).serialize(recent[m, : len(idx)]) if len(idx) else []
                v["neighbor_steps"] = steps
                v["neighbors"] = [
                    {
                        "node_id": data.node_ids[j],
                        "weight": float(wt),
                        "distance_km": d,
                        "values": t,
                    }
                    for j, wt, d, t in zip(idx.tolist(), weights, dist, texts, strict=True)
                ]
            if "st_tokens" in used:
                v["st_tokens"] = ""
            if variables:
                v.update(variables)
            variables_out.append(v)
        batch = PromptBatch(
            texts=[],
            histories=histories,
            serializer=fitted,
            shape=(W, N, C),
            kept=np.full(W * N * C, history, np.int64),
            add_special_tokens=not self.use_chat,
            variables=variables_out,
            values=values,
        )
        batch.texts = [self._render(batch, m, history) for m in range(W * N * C)]
        return batch

    def _links(self, data: STData, node: int) -> tuple[np.ndarray, np.ndarray, list]:
        """``(indices, weights, distances in km or None)`` of the node's strongest neighbours."""
        if data.adjacency is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), []
        idx, weights = data.adjacency.neighbors(node, self.num_neighbors)
        if not _has_latlon(data) or not len(idx):
            return idx, weights, [None] * len(idx)
        return idx, weights, haversine_km(data.coords[node], data.coords[idx]).tolist()

    @staticmethod
    def _recent(
        data: STData,
        links: list[tuple[np.ndarray, np.ndarray, list]],
        starts: np.ndarray,
        history: int,
        channels: np.ndarray,
        steps: int,
    ) -> np.ndarray:
        """``[W * N' * C', k, steps]`` recent values of each series' neighbours, NaN-padded."""
        W, N, C = len(starts), len(links), len(channels)
        k = max((len(idx) for idx, _, _ in links), default=0)
        out = np.full((W, N, C, k, steps), np.nan)
        rows = starts[:, None] + history - steps + np.arange(steps)  # [W, steps]
        for n, (idx, _, _) in enumerate(links):
            if len(idx):
                index = (
                    rows[:, None, :, None],
                    idx[None, :, None, None],
                    channels[None, None, None, :],
                )
                values = np.where(
                    data.mask[index], data.values[index], np.nan
                )  # [W, k_n, steps, C]
                out[:, n, :, : len(idx)] = values.transpose(0, 3, 1, 2)
        return out.reshape(W * N * C, k, steps)

    def _render(self, batch: PromptBatch, m: int, keep: int) -> str:
        """Prompt ``m`` with its last ``keep`` history steps."""
        values = batch.values[m]
        text = self.template.render(
            **batch.variables[m],
            history=batch.serializer.join(values[len(values) - keep :]),
            history_len=keep,
        )
        if self.use_chat:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        elif self.template.chat:
            text += "\n"  # no chat template: the answer starts on its own line
        return text

    # ------------------------------------------------------------------ budget
    def token_lengths(self, batch: PromptBatch, texts: list[str] | None = None) -> np.ndarray:
        """``[M]`` token counts of the prompts (or of ``texts``)."""
        if self.tokenizer is None:
            raise ConfigError(
                "counting tokens needs a tokenizer", "pass tokenizer= to PromptBuilder"
            )
        ids = self.tokenizer(
            batch.texts if texts is None else texts, add_special_tokens=batch.add_special_tokens
        )
        return np.asarray([len(i) for i in ids["input_ids"]], np.int64)

    def fit_to_budget(self, batch: PromptBatch, max_tokens: int | np.ndarray) -> PromptBatch:
        """Cut the oldest history steps of every prompt longer than ``max_tokens`` tokens.

        ``max_tokens`` is one budget for all prompts or an ``[M]`` array of per-prompt
        budgets. Only the history shrinks (instructions, statistics, neighbours and the
        newest values stay); statistics keep describing the full history. Raises
        :class:`ConfigError` if a prompt does not fit even with one history step.
        """
        lengths = self.token_lengths(batch)
        budgets = np.broadcast_to(np.asarray(max_tokens, dtype=np.int64), lengths.shape)
        for m in np.flatnonzero(lengths > budgets).tolist():
            keep, length, budget = int(batch.kept[m]), int(lengths[m]), int(budgets[m])
            while length > budget:
                if keep == 1:
                    raise ConfigError(
                        f"template {self.template.name!r} needs {length} tokens with a single "
                        f"history step, more than the {budget} available",
                        "raise max_context, use a shorter template or fewer neighbours",
                    )
                shown = batch.serializer.join(batch.values[m][len(batch.values[m]) - keep :])
                per_step = max(
                    1.0, len(self.tokenizer(shown, add_special_tokens=False)["input_ids"]) / keep
                )
                keep = max(1, keep - math.ceil((length - budget) / per_step))
                text = self._render(batch, m, keep)
                length = int(self.token_lengths(batch, [text])[0])
            batch.texts[m], batch.kept[m] = text, keep
        return batch


def next_place_examples(
    trajectories: Trajectories, num_recent: int = 5, k: int = 5, min_history: int | None = None
) -> list[tuple[dict[str, Any], str]]:
    """``(variables, true next place)`` for every visit that has enough visits before it.

    For visit ``i`` of an agent (``i >= min_history``, default ``num_recent``), the
    variables of the ``next_place`` template are: ``agent_id``; ``recent``, the
    ``num_recent`` visits before it (``time, day_of_week, place, category``), oldest
    first; ``frequent``, the places visited before ``i`` with their counts, most
    frequent first (ties: most recent first); ``next_time`` and ``next_day_of_week`` of
    visit ``i``; and ``k``. The answer is visit ``i``'s place.
    """
    if num_recent < 1:
        raise DataError(f"num_recent={num_recent} must be at least 1", "use e.g. 5 recent visits")
    min_history = num_recent if min_history is None else max(min_history, num_recent)
    places = trajectories.place_ids().to_numpy()
    categories = trajectories.categories()
    frame = trajectories.points
    stamps = frame["timestamp"]
    times = list(stamps.dt.strftime("%Y-%m-%d %H:%M"))
    days = list(stamps.dt.day_name())
    out = []
    agent_ids = frame["agent_id"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, agent_ids[1:] != agent_ids[:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        counts: dict[str, int] = {}
        last_seen: dict[str, int] = {}
        for i in range(lo, hi):
            if i - lo >= min_history:
                frequent = sorted(counts, key=lambda p: (-counts[p], -last_seen[p]))
                variables = {
                    "agent_id": str(agent_ids[i]),
                    "recent": [
                        {
                            "time": times[j],
                            "day_of_week": days[j],
                            "place": places[j],
                            "category": categories.get(places[j], "place"),
                        }
                        for j in range(i - num_recent, i)
                    ],
                    "frequent": [
                        {"place": p, "category": categories.get(p, "place"), "count": counts[p]}
                        for p in frequent
                    ],
                    "next_time": times[i],
                    "next_day_of_week": days[i],
                    "k": k,
                }
                out.append((variables, str(places[i])))
            counts[places[i]] = counts.get(places[i], 0) + 1
            last_seen[places[i]] = i
    return out


def node_indices(data: STData, nodes: Any) -> np.ndarray:
    """Indices of ``nodes`` (node ids, or indices as ints or digit strings); all if None."""
    if nodes is None:
        return np.arange(data.num_nodes)
    position = {n: i for i, n in enumerate(data.node_ids)}
    out = []
    for node in np.atleast_1d(np.asarray(nodes, dtype=object)).tolist():
        text = str(node).strip()
        if text in position:
            out.append(position[text])
        elif text.isdigit() and int(text) < data.num_nodes:
            out.append(int(text))
        else:
            raise DataError(
                f"node {node!r} is not in {data.name}",
                f"use an index 0..{data.num_nodes - 1} or a node id such as {data.node_ids[0]!r}",
            )
    return np.asarray(out, np.int64)


def row_at(data: STData, at: int | str) -> int:
    """The row of ``at``: a row number (negative counts from the end) or a timestamp."""
    text = str(at).strip()
    if text.lstrip("-").isdigit():
        row = int(text)
        row = row + data.num_steps if row < 0 else row
    elif data.timestamps is None:
        raise DataError(
            f"{data.name} has no timestamps to find {text!r} in", "give a row number instead"
        )
    else:
        try:
            row = int(data.timestamps.get_loc(text))
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(
                f"time {text!r} is not a timestamp of {data.name} "
                f"({data.timestamps[0]} .. {data.timestamps[-1]}, every {data.freq})",
                "give an exact timestamp of the data or a row number",
            ) from exc
    if not 0 <= row < data.num_steps:
        raise DataError(
            f"row {row} is outside 0..{data.num_steps - 1}", "pick a row inside the series"
        )
    return row


def render_prompt(
    data: STData,
    template: str | Path | PromptTemplate,
    node: int | str,
    at: int | str,
    history: int = 12,
    horizon: int = 12,
    channel: int | str = 0,
    tokenizer: Any = None,
    **builder_kwargs: Any,
) -> str:
    """One prompt: series ``node`` / ``channel`` with the first forecast step at ``at``.

    ``node`` and ``channel`` are indices or names; ``at`` is a row number or a timestamp
    (the history is the ``history`` rows before it). With a tokenizer the number format
    is its preset and chat templates are applied.
    """
    node_idx = node_indices(data, [node])
    if str(channel) in data.channels:
        channel_idx = data.channels.index(str(channel))
    elif str(channel).isdigit() and int(channel) < data.num_channels:
        channel_idx = int(channel)
    else:
        raise DataError(
            f"channel {channel!r} is not in {data.name} (channels: {', '.join(data.channels)})",
            f"use an index 0..{data.num_channels - 1} or one of the channel names",
        )
    row = row_at(data, at)
    if row < history or row + horizon > data.num_steps:
        raise DataError(
            f"row {row} leaves no room for history {history} before it and horizon "
            f"{horizon} after it (the data have {data.num_steps} steps)",
            f"pick a row between {history} and {data.num_steps - horizon}",
        )
    builder = PromptBuilder(template, tokenizer=tokenizer, **builder_kwargs)
    return builder.build(
        data, np.array([row - history]), history, horizon, node_idx, [channel_idx]
    ).texts[0]
