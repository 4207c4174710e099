"""The file-format registry and :func:`load_file`, which picks a format by extension and content.

A format is a :class:`FileFormat`: a name, the file name endings it reads, a sniffing
rule (``path -> bool``, a cheap look at the content: array names and dimensions, CSV
header columns, whether an HDF5 file holds pandas objects) and its loader. Formats
register themselves with :func:`register_format`; :func:`load_file` asks them in
priority order and uses the first whose ending and sniffing rule match.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_st.data.container import STData
from llm_st.data.formats._common import is_blank, peek, require_file
from llm_st.errors import ConfigError, DataError

log = logging.getLogger("llm_st")


@dataclass(frozen=True)
class FileFormat:
    """A file layout llm-st reads.

    Attributes
    ----------
    name
        Registry name, what ``load_file(path, format=name)`` forces.
    extensions
        File name endings it reads, lower case with the dot (``(".csv",)``).
    sniff
        ``path -> bool``: whether a file with one of the endings is in this layout. It
        looks at the content cheaply (headers, not the data) and returns ``False``
        instead of raising for files it cannot read.
    load
        ``load(path, **kwargs) -> STData`` with ``values`` ``[T, N, C]``. To read the
        main file of a named dataset (:class:`~llm_st.data.registry.DatasetSpec`) it
        must also take the keywords ``freq``, ``null_value``, ``name``,
        ``description``, ``start`` (where the spec sets one) and one per companion file.
    layout
        One line saying what a valid file looks like, for error messages.
    priority
        Formats are asked in increasing priority (ties: registration order); the
        built-in ones use 10 to 60.
    """

    name: str
    extensions: tuple[str, ...]
    sniff: Callable[[Path], bool]
    load: Callable[..., STData]
    layout: str
    priority: int = 100

    def __post_init__(self) -> None:
        endings = tuple(str(e).lower() for e in self.extensions)
        if not self.name or not endings or not all(e.startswith(".") for e in endings):
            raise ConfigError(
                f"file format {self.name!r} with extensions {self.extensions!r} is incomplete",
                "give a name and at least one extension starting with a dot, e.g. ('.csv',)",
            )
        object.__setattr__(self, "extensions", endings)

    def reads(self, path: Path) -> bool:
        """Whether ``path``'s name ends with one of :attr:`extensions`."""
        return path.name.lower().endswith(self.extensions)


_FORMATS: dict[str, FileFormat] = {}


def register_format(fmt: FileFormat, replace: bool = False) -> FileFormat:
    """Add ``fmt`` to the formats :func:`load_file` asks; returns it.

    Raises :class:`ConfigError` if a format of that name exists, unless ``replace``.
    """
    if fmt.name in _FORMATS and not replace:
        raise ConfigError(
            f"file format {fmt.name!r} is already registered",
            "choose another name, or pass replace=True to replace it",
        )
    _FORMATS[fmt.name] = fmt
    return fmt


def unregister_format(name: str) -> FileFormat:
    """Remove the format called ``name`` and return it."""
    fmt = get_format(name)
    del _FORMATS[fmt.name]
    return fmt


def get_format(name: str) -> FileFormat:
    """The registered format called ``name``."""
    if name not in _FORMATS:
        raise ConfigError(
            f"unknown format {name!r}", f"use one of {', '.join(f.name for f in list_formats())}"
        )
    return _FORMATS[name]


def list_formats() -> list[FileFormat]:
    """The registered formats in the order :func:`load_file` asks them."""
    order = {name: i for i, name in enumerate(_FORMATS)}
    return sorted(_FORMATS.values(), key=lambda f: (f.priority, order[f.name]))


def _choices(formats: list[FileFormat], layouts: bool = True) -> str:
    """``name (extensions): layout`` of each format, for messages."""
    return "; ".join(
        f"{f.name} ({', '.join(f.extensions)})" + (f": {f.layout}" if layouts else "")
        for f in formats
    )


def detect_format(path: str | Path) -> FileFormat:
    """The first registered format (in :func:`list_formats` order) that reads ``path``.

    Raises
    ------
    DataError
        If no format reads the file's extension, the file is empty, or no sniffing
        rule recognises its content; the message says what the file holds and which
        layouts are supported.
    """
    path = require_file(path, "data file")
    candidates = [f for f in list_formats() if f.reads(path)]
    force = "or force a format with load(path, format='<name>')"
    if not candidates:
        endings = sorted({e for f in list_formats() for e in f.extensions})
        raise DataError(
            f"unknown data file extension {path.suffix or '(none)'!r} of {path} ({peek(path)})",
            f"llm-st reads {', '.join(endings)}; rename the file to the ending of its format "
            f"{force}; formats: {_choices(list_formats(), layouts=False)}",
        )
    if is_blank(path):
        raise DataError(
            f"{path} is empty (no data)",
            f"write the data in one of these layouts: {_choices(candidates)}",
        )
    for fmt in candidates:
        if fmt.sniff(path):
            return fmt
    raise DataError(
        f"{path} is in none of the layouts llm-st reads ({peek(path)})",
        f"convert it to one of these layouts {force}: {_choices(candidates)}",
    )


def load_file(path: str | Path, format: str | None = None, **kwargs: Any) -> STData:
    """Load a data file in any registered format.

    Parameters
    ----------
    path
        The file.
    format
        Name of the format to read it with (see :func:`list_formats`); default: the
        first format, in priority order, whose extension and sniffing rule match
        (:func:`detect_format`).
    kwargs
        Passed to the format's loader (e.g. ``start=``, ``freq=``, ``adj_csv=``, ``key=``).

    Returns
    -------
    STData
        ``values`` ``[T, N, C]``.
    """
    path = require_file(path, "data file")
    fmt = detect_format(path) if format is None else get_format(format)
    log.info("loading %s as %s", path, fmt.name)
    return fmt.load(path, **kwargs)
