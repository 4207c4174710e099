"""The restricted unpickler: plain data in, everything else refused before it runs."""

import builtins
import codecs
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from llm_st.data.safe_pickle import load_plain_pickle
from llm_st.errors import DataError, DataNotFoundError


class RunsCommand:
    """A pickle payload that runs a shell command when unpickled."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class CallsEval:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (builtins.eval, (self.code,))


class Point:
    """An ordinary class: harmless, but not plain data."""

    def __init__(self, x: int):
        self.x = x


class UsesZlibCodec:
    def __reduce__(self):
        return (codecs.encode, (b"payload", "zlib_codec"))


def _write(path: Path, obj, protocol: int) -> Path:
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_data_round_trips(tmp_path, protocol):
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    obj = [
        ["773869", "767541"],
        {"773869": 0, "767541": 1},
        matrix,
        (1, 2.5, True, None, b"\x00\xffbytes", "text"),
        np.float32(1.5),
        np.int64(-3),
        np.array(["a", "bc"]),
    ]
    loaded = load_plain_pickle(_write(tmp_path / "plain.pkl", obj, protocol))
    assert loaded[0] == obj[0] and loaded[1] == obj[1] and loaded[3] == obj[3]
    assert loaded[2].dtype == np.float32 and np.array_equal(loaded[2], matrix)
    assert loaded[4] == np.float32(1.5) and type(loaded[4]) is np.float32
    assert loaded[5] == -3 and type(loaded[5]) is np.int64
    assert loaded[6].tolist() == ["a", "bc"]


def test_python2_byte_strings_decode_as_latin1(tmp_path):
    # Python 2 `pickle.dumps(['\xe9t\xe9'], 2)`: a BINSTRING of raw bytes, as in adj_mx.pkl
    path = tmp_path / "py2.pkl"
    path.write_bytes(b"\x80\x02]q\x00U\x03\xe9t\xe9q\x01a.")
    assert load_plain_pickle(path) == ["\u00e9t\u00e9"]


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_os_system_is_refused_without_running(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = _write(tmp_path / "evil.pkl", [1, RunsCommand(f"touch {marker}")], protocol)
    with pytest.raises(DataError, match=r"refused to unpickle global (posix|os)\.system"):
        load_plain_pickle(path)
    assert not marker.exists()


def test_eval_and_arbitrary_classes_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('x')"
    with pytest.raises(
        DataError, match=r"(__builtin__|builtins)\.eval.*re-create it from a trusted source"
    ):
        load_plain_pickle(_write(tmp_path / "eval.pkl", CallsEval(code), 2))
    assert not marker.exists()
    with pytest.raises(DataError, match=r"test_safe_pickle\.Point"):
        load_plain_pickle(_write(tmp_path / "point.pkl", {"p": Point(1)}, 4))


def test_codecs_other_than_latin1_are_refused(tmp_path):
    with pytest.raises(DataError, match="codec 'zlib_codec'"):
        load_plain_pickle(_write(tmp_path / "codec.pkl", UsesZlibCodec(), 2))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataNotFoundError, match="nothere.pkl"):
        load_plain_pickle(tmp_path / "nothere.pkl")
    good = pickle.dumps([1, 2, 3], protocol=2)
    (tmp_path / "cut.pkl").write_bytes(good[:-3])
    with pytest.raises(DataError, match="cannot unpickle"):
        load_plain_pickle(tmp_path / "cut.pkl")
