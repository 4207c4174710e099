"""Exceptions that name the problem and the fix.

Every error a user can cause derives from :class:`LLMSTError`; the CLI prints
its message on one line and exits with status 2. The message always says what
was wrong (with the offending value) and what to do about it.
"""

from __future__ import annotations


class LLMSTError(Exception):
    """Base class of user-facing errors: ``problem`` and ``fix`` are joined into one line."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


class DataError(LLMSTError, ValueError):
    """Bad input data: wrong shape, bad timestamps, unreadable or unsafe file."""


class DataNotFoundError(LLMSTError, FileNotFoundError):
    """A dataset or file that is not where it was looked for."""


class ConfigError(LLMSTError, ValueError):
    """A recipe, CLI option or argument that is unknown or contradictory."""


class ModelLoadError(LLMSTError, OSError):
    """A model that cannot be loaded (offline hub id, missing directory, bad config)."""
