"""Chronological train / validation / test splits.

A split is three row ranges ``[start, stop)`` of the raw series. Windows are
assigned to the split that holds their *targets*: every forecast target of a
window lies inside the split's rows, while its history may reach back into the
rows before (the ETT / Informer convention, which keeps the first test windows
instead of dropping ``history`` rows at every border). Pass
``history_in_split=True`` to :class:`llm_st.data.windows.WindowIndex` for the
stricter variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llm_st.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Row borders ``[start, stop)`` of the train, validation and test parts."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]

    def __post_init__(self) -> None:
        prev = 0
        for name in SPLIT_NAMES:
            start, stop = getattr(self, name)
            if start < prev or stop < start:
                raise ConfigError(
                    f"split borders are not chronological at {name}={start, stop}",
                    "give non-overlapping, increasing row ranges train < val < test",
                )
            prev = stop

    def __getitem__(self, name: str) -> tuple[int, int]:
        if name not in SPLIT_NAMES:
            raise ConfigError(f"unknown split {name!r}", f"use one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, list[int]]:
        return {name: list(getattr(self, name)) for name in SPLIT_NAMES}


def chronological_split(
    num_steps: int,
    ratios: Sequence[float] | None = None,
    borders: Sequence[int] | None = None,
) -> Split:
    """Split ``num_steps`` rows in time order.

    Parameters
    ----------
    ratios
        ``(train, val, test)`` fractions summing to at most 1 (e.g. ``(0.7, 0.1, 0.2)``);
        rows are rounded down for train and val, the test part takes the rest up to
        ``sum(ratios) * num_steps``.
    borders
        Explicit row counts ``(n_train, n_val, n_test)`` taken from the start, e.g. ETT's
        ``(8640, 2880, 2880)`` (12/4/4 months of hourly rows); rows after them are unused.
    """
    if (ratios is None) == (borders is None):
        raise ConfigError("give exactly one of ratios or borders", "e.g. ratios=(0.7, 0.1, 0.2)")
    if ratios is not None:
        if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) > 1 + 1e-9:
            raise ConfigError(
                f"split ratios {tuple(ratios)} are not three non-negative fractions summing to "
                "<= 1",
                "use e.g. (0.7, 0.1, 0.2)",
            )
        n_train = int(num_steps * ratios[0])
        n_val = int(num_steps * ratios[1])
        n_test = int(round(num_steps * sum(ratios))) - n_train - n_val
    else:
        if len(borders) != 3 or any(int(b) < 0 for b in borders):
            raise ConfigError(
                f"split borders {tuple(borders)} are not three row counts",
                "use e.g. (8640, 2880, 2880)",
            )
        n_train, n_val, n_test = (int(b) for b in borders)
        if n_train + n_val + n_test > num_steps:
            raise ConfigError(
                f"split borders {tuple(borders)} need {n_train + n_val + n_test} rows but the "
                f"series has {num_steps}",
                "use ratios or smaller borders",
            )
    if min(n_train, n_test) <= 0:
        raise ConfigError(
            f"split of {num_steps} rows leaves an empty train or test part "
            f"({n_train}/{n_val}/{n_test})",
            "use a longer series or other ratios",
        )
    return Split(
        (0, n_train), (n_train, n_train + n_val), (n_train + n_val, n_train + n_val + n_test)
    )


def train_fraction_split(split: Split, fraction: float, history: int = 0) -> Split:
    """``split`` with its training part cut to its first ``fraction`` (the few-shot setting).

    The few-shot tables of Time-LLM and GPT4TS train on the first 5 % or 10 % of the
    training *windows*: their loaders keep training rows ``[0, (n - L) * p // 100 + L)`` of
    the ``n`` training rows (``L`` the history, ``p`` the percent), i.e. the first ``p`` % of
    the windows' start rows. This keeps ``history + floor((n - history) * fraction)`` rows
    from the start of the training part (all of them where that is not fewer than ``n``),
    so the training windows are exactly the papers'. The validation and test parts are
    those of ``split`` unchanged (their windows' history may still reach back into the
    dropped training rows, as in the full protocol).

    Pass ``history=0`` to keep the first ``fraction`` of the rows instead.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(
            f"train fraction {fraction} is not in (0, 1]", "use e.g. 0.05 or 0.1 (few-shot)"
        )
    start, stop = split.train
    rows = stop - start
    # rounded first, so 0.29 * 100 keeps 29 rows, not 28.999...
    keep = min(rows, history + int(round(max(rows - history, 0) * fraction, 9)))
    if keep <= 0:
        raise ConfigError(
            f"train fraction {fraction} of {rows} training rows leaves none",
            "use a larger fraction or a longer training split",
        )
    return Split((start, start + keep), split.val, split.test)
