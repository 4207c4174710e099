"""Constrained decoding: the model may only write numbers in the serializer's format.

:class:`NumberGrammar` is a token-level automaton of one value in a
:class:`~llm_st.tokens.serialize.SerializerConfig` format (``[sign] digits time_sep``,
at most ``max_digits`` digits, optionally the missing token) for one tokenizer: its
states are the text of the value written so far with every digit replaced by ``0``
(which digit was written never changes what may follow), and a token is allowed in a
state when the state's text plus the token's text is still a prefix of a value. States
from which no value can be completed with the tokenizer's tokens are pruned, so a
sequence that follows the automaton always parses.

:class:`NumberConstraint` is the ``transformers`` logits processor: per generated row it
tracks the automaton state and the number of finished values, masks every other token
to ``-inf``, and after exactly ``horizon`` values admits only the end-of-sequence token.
"""

from __future__ import annotations

from typing import Any

import numpy as np
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
        self._masks: dict[tuple[str, int, str], torch.Tensor] = {}

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

    def mask(self, state: str, vocab_size: int, device: torch.device) -> torch.Tensor:
        """``[vocab_size]`` bool: the tokens allowed in ``state`` (cached)."""
        key = (state, vocab_size, str(device))
        if key not in self._masks:
            out = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            ids = [i for i in self.allowed_ids(state) if i < vocab_size]
            out[torch.as_tensor(ids, dtype=torch.long, device=device)] = True
            self._masks[key] = out
        return self._masks[key]


class NumberConstraint(LogitsProcessor):
    """Logits processor: exactly ``horizon`` values in the grammar's format, then the end.

    One instance per ``generate`` call; rows are the ``batch x num_return_sequences``
    sequences ``generate`` decodes. The first call fixes the prompt length; each later
    call advances every row's state by the token just generated.

    Parameters
    ----------
    grammar
        The value automaton.
    horizon
        Values to generate per row.
    eos_token_id
        The token that ends a row once ``horizon`` values are written.
    """

    def __init__(self, grammar: NumberGrammar, horizon: int, eos_token_id: int):
        self.grammar = grammar
        self.horizon = horizon
        self.eos_token_id = int(eos_token_id)
        self.states: list[str] | None = None
        self.done: np.ndarray | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, vocab = scores.shape
        if self.states is None:
            self.states = [""] * rows
            self.done = np.zeros(rows, dtype=np.int64)
        else:
            for r, token in enumerate(input_ids[:, -1].tolist()):
                if self.done[r] >= self.horizon:
                    continue  # finished: end token or padding
                moved = self.grammar.step(self.states[r], token)
                if moved is None:  # a later processor let a disallowed token through: stop the row
                    self.done[r] = self.horizon
                    continue
                self.states[r], completed = moved
                self.done[r] += completed
        allowed = torch.zeros_like(scores, dtype=torch.bool)
        by_state: dict[str, list[int]] = {}
        for r, state in enumerate(self.states):
            if self.done[r] >= self.horizon:
                allowed[r, self.eos_token_id] = True
            else:
                by_state.setdefault(state, []).append(r)
        for state, members in by_state.items():
            allowed[members] = self.grammar.mask(state, vocab, scores.device)
        return scores.masked_fill(~allowed, float("-inf"))
