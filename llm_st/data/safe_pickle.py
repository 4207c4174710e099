"""Read pickles that hold plain data only (lists, dicts, strings, numbers, numpy arrays).

The METR-LA / PEMS-BAY graph files (``adj_mx.pkl``) are Python 2 pickles. Unpickling
runs whatever callables the file names, so an unrestricted ``pickle.load`` of a
downloaded file can execute code. :func:`load_plain_pickle` admits only the globals
that plain data and numpy arrays need and refuses everything else *before* calling it.
"""

from __future__ import annotations

import _codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from llm_st.errors import DataError, DataNotFoundError


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles use to rebuild ``bytes``.

    Only the text codecs pickle itself emits are allowed; other codecs (``zlib``,
    ``base64`` ...) are no business of a data file.
    """
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise DataError(
            f"pickle asks _codecs.encode for codec {encoding!r}",
            "only latin-1 byte strings are accepted in a plain-data pickle",
        )
    return _codecs.encode(text, encoding, errors)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The globals numpy (1.x and 2.x) pickles name to rebuild arrays, dtypes and scalars.

    The objects are taken from the installed numpy directly so that a pickle naming
    ``numpy.core`` (numpy 1.x) does not import the deprecated alias under numpy 2.
    """
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        # protocol-5 pickles of arrays go through frombuffer(bytes, dtype).reshape(shape)
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_ALLOWED_GLOBALS = _numpy_globals()


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` knows only :data:`_ALLOWED_GLOBALS`."""

    source: str = "<pickle>"  # file name for error messages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refused to unpickle global {module}.{name} from {self.source}: only lists, "
                "tuples, dicts, strings, bytes, numbers, None and numpy arrays are accepted",
                "this file may run code when unpickled; do not load it with pickle, and "
                "re-create it from a trusted source as plain data (or .npz / .csv)",
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(
            f"refused persistent id {pid!r} in {self.source}",
            "save the file as a plain pickle of lists, dicts and numpy arrays",
        )


def load_plain_pickle(path: str | Path) -> object:
    """Unpickle a (Python 2 or 3) pickle that holds plain data only.

    Byte strings pickled by Python 2 are decoded as latin-1 (``encoding="latin1"``, what
    numpy arrays in Python 2 pickles need).

    Parameters
    ----------
    path
        Pickle file, e.g. DCRNN's ``adj_mx.pkl``.

    Returns
    -------
    object
        The unpickled lists, tuples, dicts, strings, bytes, numbers, ``None``, numpy
        arrays and numpy scalars.

    Raises
    ------
    DataNotFoundError
        If ``path`` does not exist.
    DataError
        If the pickle names any other global (a class, ``os.system``, ``builtins.eval``
        ...), which is refused before it is called, or if the file is not a valid pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"pickle file not found: {path}", "check the path")
    with path.open("rb") as fh:
        unpickler = _PlainDataUnpickler(fh, encoding="latin1")
        unpickler.source = str(path)
        try:
            return unpickler.load()
        except DataError:
            raise
        except Exception as exc:  # corrupt or truncated files raise many different types
            raise DataError(
                f"cannot unpickle {path}: {type(exc).__name__}: {exc}",
                "check that the file is a complete, uncorrupted pickle",
            ) from exc
