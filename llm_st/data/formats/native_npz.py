"""llm-st's own lossless ``.npz``, written by :func:`llm_st.data.io.save_npz`.

Sniffing rule: an ``.npz`` with the metadata entry ``__llm_st_meta__``.
"""

from __future__ import annotations

from pathlib import Path

from llm_st.data.formats._common import npz_shapes
from llm_st.data.formats.base import FileFormat, register_format
from llm_st.data.io import META_KEY, load_npz


def _sniff(path: Path) -> bool:
    return META_KEY in (npz_shapes(path) or {})


FORMAT = register_format(
    FileFormat(
        name="native_npz",
        extensions=(".npz",),
        sniff=_sniff,
        load=load_npz,
        layout=f"llm-st's own archive written by save_npz (values, mask, ... and {META_KEY})",
        priority=10,
    )
)
