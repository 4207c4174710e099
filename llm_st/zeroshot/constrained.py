"""Constrained decoding: the model may only write numbers in the serializer's format.

:class:`NumberGrammar` is a token-level automaton of one value in a
:class:`~llm_st.tokens.serialize.SerializerConfig` format (``[sign] digits time_sep``,
at most ``max_digits`` digits, optionally the missing token) for one tokenizer: its
states are the text of the value written so far with every digit replaced by ``0``
(which digit was written never changes what may follow), and a token is allowed in a
state when the state's text plus the token's text is still a prefix of a value. States
from which no value can be completed with the tokenizer's tokens are pruned, so a
sequence that follows the automaton always parses.

:meth:`NumberGrammar.tables` compiles the automaton once per vocabulary width, device and
end token into two tensors (:class:`GrammarTables`): the allowed tokens of each state and
the state each token leads to. :class:`NumberConstraint`, the ``transformers`` logits
processor, then decodes a whole batch with tensor operations: it looks up every row's
next state from the token just generated, counts finished values per row, masks every
other token to ``-inf``, and after exactly ``horizon`` values admits only the
end-of-sequence token. Nothing inside ``generate`` waits for the device (no
``.tolist()``, ``.item()`` or loop over rows), so on a GPU the constraint costs a few
kernel launches per step whatever the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor

from llm_st.errors import ConfigError
from llm_st.tokens.serialize import SerializerConfig, token_texts

_DONE = "\x00done"  # pseudo-state: the value is complete
_TO_ZERO = str.maketrans("123456789", "000000000")


class NumberGrammar:
    """Which tokens may follow which partial value.

    Parameters
    ----------
    tokenizer
        A Hugging Face tokenizer.
    config
        The number format.
    max_digits
        Most digits one value may have.
    allow_missing
        Whether the missing token may be generated (off: a forecast must be a number).
    """

    def __init__(
        self, tokenizer: Any, config: SerializerConfig, max_digits: int, allow_missing: bool = False
    ):
        if max_digits < 1:
            raise ConfigError(
                f"max_digits={max_digits} must be at least 1", "allow one digit or more"
            )
        ds, ts, minus = config.digit_sep, config.time_sep, config.minus_sign
        complete = {
            sign + (ds + "0") * d + ts
            for sign in ("", ds + minus)
            for d in range(1, max_digits + 1)
        }
        alphabet = set("0123456789") | set(ds) | set(ts) | set(minus)
        if allow_missing:
            complete.add(ds + config.missing_token + ts)
            alphabet |= set(config.missing_token)
        prefixes = {text[:i] for text in complete for i in range(len(text))}
        self.max_tokens_per_value = max(
            len(text) for text in complete
        )  # every token adds >= 1 char

        special = set(tokenizer.all_special_ids)
        groups: dict[str, list[int]] = {}  # normalized token text -> token ids
        for i, text in enumerate(token_texts(tokenizer)):
            if text and i not in special and set(text) <= alphabet:
                groups.setdefault(text.translate(_TO_ZERO), []).append(i)

        edges: dict[str, dict[str, str]] = {}
        frontier = [""]
        while frontier:
            key = frontier.pop()
            out = {}
            for text in groups:
                new = key + text
                if new in complete:
                    out[text] = _DONE
                elif new in prefixes:
                    out[text] = new
                    if new not in edges and new not in frontier:
                        frontier.append(new)
            edges[key] = out
        live = {_DONE}
        grew = True
        while grew:  # states from which a value can still be completed
            before = len(live)
            live |= {key for key, out in edges.items() if any(n in live for n in out.values())}
            grew = len(live) > before
        if "" not in live:
            raise ConfigError(
                f"the tokenizer cannot write a number in the format digit_sep={ds!r}, "
                f"time_sep={ts!r}, minus_sign={minus!r}",
                "use the preset for this tokenizer (preset_for_tokenizer) or other separators",
            )
        self._edges = {
            k: {t: n for t, n in out.items() if n in live} for k, out in edges.items() if k in live
        }
        self._text_of = {i: text for text, ids in groups.items() for i in ids}
        self._groups = groups
        self._tables: dict[tuple[int, str, int], GrammarTables] = {}

    @property
    def states(self) -> list[str]:
        """The live automaton states (normalized partial values; ``""`` = start of a value)."""
        return list(self._edges)

    def step(self, state: str, token_id: int) -> tuple[str, bool] | None:
        """``(next state, whether the token completed a value)`` after ``token_id``, or
        ``None`` if the token is not allowed in ``state``. A completed value restarts at ``""``."""
        nxt = self._edges.get(state, {}).get(self._text_of.get(token_id, ""))
        if nxt is None:
            return None
        return ("", True) if nxt == _DONE else (nxt, False)

    def allowed_ids(self, state: str) -> list[int]:
        """Token ids allowed in ``state``."""
        return [i for text in self._edges.get(state, {}) for i in self._groups[text]]

    def tables(self, vocab_size: int, device: torch.device, eos_token_id: int) -> GrammarTables:
        """The automaton as tensors on ``device`` for scores ``[rows, vocab_size]`` (cached).

        State ``i < K`` is :attr:`states` ``[i]`` (0 is the start of a value); token ids at
        or beyond ``vocab_size`` are never allowed.
        """
        key = (vocab_size, str(device), int(eos_token_id))
        if key not in self._tables:
            states = self.states
            index = {state: i for i, state in enumerate(states)}
            finished, done = len(states), len(states) + 1
            allowed = torch.zeros(finished + 1, vocab_size, dtype=torch.bool)
            # a token not allowed in a state ends the row (a later processor let it through)
            next_state = torch.full((finished + 1, vocab_size), finished, dtype=torch.int32)
            for i, state in enumerate(states):
                for text, nxt in self._edges[state].items():
                    ids = torch.as_tensor(self._groups[text], dtype=torch.long)
                    ids = ids[ids < vocab_size]
                    allowed[i, ids] = True
                    next_state[i, ids] = done if nxt == _DONE else index[nxt]
            allowed[finished, eos_token_id] = True
            self._tables[key] = GrammarTables(
                tuple(states), allowed.to(device), next_state.to(device)
            )
        return self._tables[key]


@dataclass(frozen=True)
class GrammarTables:
    """A :class:`NumberGrammar` compiled into tensors for one vocabulary width and device.

    With ``K = len(states)`` live states, row ``K`` of both tables is the pseudo-state
    *finished* (``horizon`` values written: only the end token) and the value ``K + 1`` in
    :attr:`next_state` is the pseudo-state *value done* (the token completed a value; the
    row restarts at state 0 or is finished). Memory: ``(K + 1) * vocab`` bytes for the mask
    plus four times that for the transitions; a 150k vocabulary with 40 states takes
    about 30 MB, a 32k one about 7 MB.

    Attributes
    ----------
    states
        ``[K]`` the normalized partial values, ``states[0] == ""``.
    allowed
        ``[K + 1, vocab]`` bool: the tokens allowed in each state.
    next_state
        ``[K + 1, vocab]`` int32: the state after each token (``K`` for a token that is not
        allowed, ``K + 1`` for one that completes a value).
    """

    states: tuple[str, ...]
    allowed: torch.Tensor
    next_state: torch.Tensor

    @property
    def finished(self) -> int:
        return len(self.states)

    @property
    def done(self) -> int:
        return len(self.states) + 1


class NumberConstraint(LogitsProcessor):
    """Logits processor: exactly ``horizon`` values in the grammar's format, then the end.

    One instance per ``generate`` call; rows are the ``batch x num_return_sequences``
    sequences ``generate`` decodes. The first call fixes the prompt length and compiles
    (or fetches) the grammar's tables for the scores' width and device; each later call
    advances every row's state by the token just generated. Every step is a handful of
    batched tensor operations on the scores' device, without a host synchronization.

    Parameters
    ----------
    grammar
        The value automaton.
    horizon
        Values to generate per row.
    eos_token_id
        The token that ends a row once ``horizon`` values are written.

    Attributes
    ----------
    state
        ``[rows]`` int64 index into the tables' states (``K`` = finished), None before the
        first call.
    count
        ``[rows]`` int64 values completed per row.
    """

    def __init__(self, grammar: NumberGrammar, horizon: int, eos_token_id: int):
        self.grammar = grammar
        self.horizon = horizon
        self.eos_token_id = int(eos_token_id)
        self.tables: GrammarTables | None = None
        self.state: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.state is None:
            rows, vocab = scores.shape
            self.tables = self.grammar.tables(vocab, scores.device, self.eos_token_id)
            self.state = torch.zeros(rows, dtype=torch.long, device=scores.device)
            self.count = torch.zeros(rows, dtype=torch.long, device=scores.device)
        else:
            tables = self.tables
            moved = tables.next_state[self.state, input_ids[:, -1]].long()  # [rows]
            completed = moved == tables.done
            self.count += completed
            restart = torch.where(self.count >= self.horizon, tables.finished, 0)
            self.state = torch.where(completed, restart, moved)
        return torch.where(self.tables.allowed[self.state], scores, float("-inf"))
