"""File formats as plug-ins: sniffing, forcing, registering a new format, and the errors
for files no format reads (unknown extensions, empty and degenerate CSVs)."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from test_loaders import _long_frame, _speed_frame, _write_dcrnn, _write_ett_like, _write_pems

import llm_st.data
from llm_st.cli import main
from llm_st.data import (
    DatasetSpec,
    FileFormat,
    SplitSpec,
    STData,
    detect_format,
    get_format,
    list_formats,
    load,
    load_distance_graph,
    load_file,
    load_long_frame,
    load_timestamped_csv,
    load_wide_csv,
    register_format,
    save_npz,
    unregister_format,
)
from llm_st.errors import ConfigError, DataError

BUILT_IN = [
    "native_npz",
    "sz_taxi",
    "dcrnn_h5",
    "ett_csv",
    "pems_npz",
    "long_frame",
    "wide_csv",
    "grid",
]


# --------------------------------------------------------------------------- sniffing
def _native(tmp_path):
    data = STData(
        values=np.arange(12.0).reshape(4, 3, 1),
        timestamps=pd.date_range("2020-01-01", periods=4, freq="h"),
        name="toy",
    )
    return save_npz(data, tmp_path / "toy.npz"), np.arange(12.0).reshape(4, 3, 1)


def _sz_taxi(tmp_path):
    raw = np.random.default_rng(0).uniform(1, 60, size=(8, 3, 1))
    np.savez(tmp_path / "SZ_taxi.npz", data=raw)
    return tmp_path / "SZ_taxi.npz", raw


def _pems(tmp_path):
    return tmp_path / "PEMS04.npz", _write_pems(tmp_path / "PEMS04.npz")


def _pems_single_channel(tmp_path):
    raw = np.random.default_rng(1).uniform(1, 300, size=(6, 4, 1))
    np.savez(tmp_path / "PEMS03.npz", data=raw)
    return tmp_path / "PEMS03.npz", raw


def _grid_npz(tmp_path):
    frames = np.arange(2 * 2 * 3 * 2, dtype=np.float64).reshape(2, 2, 3, 2) + 1
    np.savez(tmp_path / "grid.npz", data=frames)
    return tmp_path / "grid.npz", frames[:, :, 0, 0][:, None, :]  # cell (0, 0) is node 0


def _grid_h5(tmp_path):
    frames = np.arange(2 * 2 * 2 * 2, dtype=np.float64).reshape(2, 2, 2, 2) + 1
    with h5py.File(tmp_path / "BJ16_M32x32_T30_InOut.h5", "w") as f:
        f["data"] = frames
        f["date"] = np.array([b"2016010101", b"2016010102"])
    return tmp_path / "BJ16_M32x32_T30_InOut.h5", frames[:, :, 0, 0][:, None, :]


def _dcrnn(tmp_path):
    frame = _write_dcrnn(tmp_path, "metr-la.h5", "adj_mx.pkl", "loc.csv", "df", True)[0]
    return tmp_path / "metr-la.h5", frame.to_numpy()[:, :, None]


def _ett(tmp_path):
    _write_ett_like(tmp_path / "ETTh1.csv", ["2016-07-01 00:00", "2016-07-01 01:00"])
    return tmp_path / "ETTh1.csv", np.array([[1.5, 30.0], [2.5, 29.0]])[:, :, None]


def _long_csv(tmp_path):
    _long_frame().to_csv(tmp_path / "long.csv", index=False)
    return tmp_path / "long.csv", None


def _long_parquet(tmp_path):
    _long_frame().to_parquet(tmp_path / "long.parquet")
    return tmp_path / "long.parquet", None


def _wide(tmp_path):
    (tmp_path / "los_speed.csv").write_text("773869,767541\n64.5,67.25\n63,66\n")
    return tmp_path / "los_speed.csv", np.array([[64.5, 67.25], [63, 66]])[:, :, None]


def _wide_headerless(tmp_path):
    (tmp_path / "speeds.csv").write_text("64.5,67.25\n63,66\n")
    return tmp_path / "speeds.csv", np.array([[63.0, 66.0]])[:, :, None]  # row 1 is the header


@pytest.mark.parametrize(
    ("writer", "expected"),
    [
        (_native, "native_npz"),
        (_sz_taxi, "sz_taxi"),
        (_pems, "pems_npz"),
        (_pems_single_channel, "pems_npz"),
        (_grid_npz, "grid"),
        (_grid_h5, "grid"),
        (_dcrnn, "dcrnn_h5"),
        (_ett, "ett_csv"),
        (_long_csv, "long_frame"),
        (_long_parquet, "long_frame"),
        (_wide, "wide_csv"),
        (_wide_headerless, "wide_csv"),
    ],
)
def test_each_published_layout_is_recognised_by_its_sniffing_rule(tmp_path, writer, expected):
    path, values = writer(tmp_path)
    assert detect_format(path).name == expected
    # the first format of the file's extension whose rule matches is the expected one
    claims = [f.name for f in list_formats() if f.reads(path) and f.sniff(path)]
    assert claims[0] == expected
    data = load_file(path)
    np.testing.assert_array_equal(data.values, get_format(expected).load(path).values)
    if values is not None:
        np.testing.assert_array_equal(data.values[:, : values.shape[1]], values.astype(np.float32))


def test_priority_decides_between_matching_formats(tmp_path):
    # SZ_taxi.npz is a valid single-channel PeMS archive too; sz_taxi is asked first
    path = _sz_taxi(tmp_path)[0]
    assert [f.name for f in list_formats() if f.reads(path) and f.sniff(path)] == [
        "sz_taxi",
        "pems_npz",
    ]
    # llm-st's own archive holds a 3-d array 'values'; native_npz is asked before pems_npz
    path = _native(tmp_path)[0]
    assert [f.name for f in list_formats() if f.reads(path) and f.sniff(path)] == [
        "native_npz",
        "pems_npz",
    ]
    assert load_file(path).name == "toy"


def test_sniffed_formats_load_with_their_own_defaults(tmp_path):
    taxi = load_file(_sz_taxi(tmp_path)[0])
    assert taxi.channels == ["speed"] and taxi.freq == "15min"
    assert taxi.timestamps[1] == pd.Timestamp("2015-01-01 00:15")
    pems = load_file(_pems_single_channel(tmp_path)[0])
    assert pems.channels == ["value"] and pems.timestamps is None
    bj = load_file(_grid_h5(tmp_path)[0])
    assert bj.grid_shape == (2, 2) and bj.timestamps[1] == pd.Timestamp("2016-01-01 00:30")


def test_formats_are_asked_in_priority_order():
    assert [f.name for f in list_formats()] == BUILT_IN
    assert [f.priority for f in list_formats()] == sorted(f.priority for f in list_formats())
    assert get_format("long_frame").extensions == (".csv", ".parquet", ".pq")
    with pytest.raises(ConfigError, match=r"unknown format 'xlsx'; use one of native_npz, sz_taxi"):
        get_format("xlsx")


# --------------------------------------------------------------------------- forcing
def test_format_argument_forces_a_format(tmp_path):
    path = tmp_path / "station.csv"
    path.write_text("time,a,b\n2020-01-01 00:00,1,2\n2020-01-01 01:00,3,4\n2020-01-01 02:00,5,6\n")
    with pytest.raises(DataError) as err:
        load_file(path)
    message = str(err.value)
    assert "station.csv is in none of the layouts llm-st reads (first line: time, a, b)" in message
    assert "format='<name>'" in message and "ett_csv (.csv): a header 'date," in message
    data = load(str(path), format="ett_csv", time_col="time")
    assert data.node_ids == ["a", "b"] and data.freq == "h"
    np.testing.assert_array_equal(data.values[:, :, 0], [[1, 2], [3, 4], [5, 6]])

    # a file sniffed as PeMS, forced to SZ-taxi: its timestamps and channel name
    np.savez(tmp_path / "taxi_copy.npz", data=np.ones((3, 2, 1)))
    assert detect_format(tmp_path / "taxi_copy.npz").name == "pems_npz"
    taxi = load_file(tmp_path / "taxi_copy.npz", format="sz_taxi")
    assert taxi.channels == ["speed"] and taxi.timestamps[0] == pd.Timestamp("2015-01-01")

    # the extension does not matter when forced
    (tmp_path / "speeds.txt").write_text("a,b\n1,2\n")
    assert load(str(tmp_path / "speeds.txt"), format="wide_csv").node_ids == ["a", "b"]
    with pytest.raises(ConfigError, match="unknown format 'excel'"):
        load_file(path, format="excel")


# --------------------------------------------------------------------------- a new format
def _load_json_series(path, *, freq="h", null_value=None, name=None, description=""):
    """``{"start": ..., "values": [[...], ...]}``: T rows of N values."""
    doc = json.loads(path.read_text())
    values = np.asarray(doc["values"], dtype=np.float64)
    return STData(
        values=values,
        timestamps=pd.date_range(doc["start"], periods=len(values), freq=freq),
        freq=freq,
        null_value=null_value,
        name=name or path.stem,
        description=description,
    )


def _sniff_json_series(path):
    return '"values"' in path.read_text()[:4096]


@pytest.fixture
def json_format():
    fmt = register_format(
        FileFormat(
            name="json_series",
            extensions=(".JSON",),
            sniff=_sniff_json_series,
            load=_load_json_series,
            layout='{"start": "<date>", "values": [[<N numbers>], ...]}',
        )
    )
    yield fmt
    unregister_format("json_series")


def test_a_registered_format_is_used_without_any_other_change(tmp_path, json_format):
    assert json_format.extensions == (".json",) and list_formats()[-1] is json_format
    path = tmp_path / "counts.json"
    path.write_text(json.dumps({"start": "2021-05-01", "values": [[1, 2], [3, 4], [5, 6]]}))
    assert detect_format(path) is json_format
    data = llm_st.data.load(str(path))
    assert data.shape == (3, 2, 1) and data.name == "counts" and data.freq == "h"
    assert data.timestamps[-1] == pd.Timestamp("2021-05-01 02:00")
    np.testing.assert_array_equal(load_file(path, freq="D").values[:, 1, 0], [2, 4, 6])
    assert load_file(path, freq="D").timestamps[-1] == pd.Timestamp("2021-05-03")
    (tmp_path / "other.json").write_text('{"rows": []}')
    with pytest.raises(DataError, match=r"other\.json is in none of the layouts .*json_series"):
        load_file(tmp_path / "other.json")

    # a named dataset in the new format is one DatasetSpec
    (tmp_path / "Counts").mkdir()
    path.rename(tmp_path / "Counts" / "counts.json")
    spec = DatasetSpec(
        name="Counts",
        files={"data": "Counts/counts.json"},
        format="json_series",
        freq="h",
        start=None,
        split=SplitSpec(ratios=(0.6, 0.2, 0.2)),
        null_value=None,
        description="toy counts",
    )
    named = load(spec, data_dir=tmp_path)
    assert named.name == "Counts" and named.extras["spec"] == "Counts"
    assert named.description == "toy counts" and named.shape == (3, 2, 1)
    assert named.extras["protocol"]["ratios"] == [0.6, 0.2, 0.2]


def test_registering_twice_needs_replace(json_format):
    with pytest.raises(ConfigError, match="'json_series' is already registered"):
        register_format(json_format)
    faster = FileFormat(
        "json_series", (".json",), _sniff_json_series, _load_json_series, "json", priority=5
    )
    assert register_format(faster, replace=True) is get_format("json_series")
    assert list_formats()[0] is faster
    with pytest.raises(ConfigError, match="extension starting with a dot"):
        FileFormat("bad", ("json",), _sniff_json_series, _load_json_series, "json")


def test_an_unregistered_format_is_gone(tmp_path, json_format):
    path = tmp_path / "counts.json"
    path.write_text(json.dumps({"start": "2021-05-01", "values": [[1.0]]}))
    assert load_file(path).shape == (1, 1, 1)
    unregister_format("json_series")
    with pytest.raises(DataError, match=r"unknown data file extension '\.json'"):
        load_file(path)
    register_format(json_format)  # for the fixture's teardown


def test_unknown_extension_says_what_it_saw_and_what_is_read(tmp_path):
    (tmp_path / "speeds.txt").write_text("sensor,speed\n1,2\n")
    with pytest.raises(DataError) as err:
        load(str(tmp_path / "speeds.txt"))
    message = str(err.value)
    assert "unknown data file extension '.txt' of" in message
    assert "(first line: sensor, speed)" in message
    assert "llm-st reads .csv, .h5, .hdf5, .npz, .parquet, .pq" in message
    assert "format='<name>'" in message and "wide_csv (.csv)" in message


def test_unrecognised_archives_name_their_contents(tmp_path):
    np.savez(tmp_path / "flat.npz", series=np.ones(5))
    with pytest.raises(DataError, match=r"zip archive with arrays: series \(5,\)"):
        load_file(tmp_path / "flat.npz")
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["series"] = np.ones(5)
    with pytest.raises(DataError, match=r"HDF5 file with top-level datasets: series \(5,\)"):
        load_file(tmp_path / "flat.h5")
    (tmp_path / "fake.h5").write_text("not hdf5\n")
    with pytest.raises(DataError, match=r"fake\.h5 is in none of the layouts .*first line: not"):
        load_file(tmp_path / "fake.h5")


# --------------------------------------------------------------------------- degenerate CSVs
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"is empty \(no data\); write the data in one of these layouts: ett_csv"),
        ("\n \n", r"is empty \(no data\); .*long_frame \(\.csv, \.parquet, \.pq\): columns"),
        (
            "date,a,b\n",
            r"has a header \(date, a, b\) but no data rows; add one row per time step: "
            r"a header 'date,<variable>,\.\.\.'",
        ),
        ("a,b,c\n", r"has a header \(a, b, c\) but no data rows; .*a header of node ids"),
        ("unique_id,ds,y\n", r"has a header \(unique_id, ds, y\) but no data rows; .*unique_id"),
        (
            "date\n2020-01-01\n2020-01-02\n",
            r"has only the timestamp column 'date', no values; add one numeric column per variable",
        ),
        (
            "date,a,b\n2020-01-01,1,2\n2020-01-02,x,3\n",
            r"non-numeric column\(s\) a \(column 'a' has 'x' in data row 2\); keep only 'date' "
            r"and numeric columns",
        ),
        (
            "a,b\n1,2\n3,n/a?\n",
            r"non-numeric column\(s\) b \(column 'b' has 'n/a\?' in data row 2\); keep one "
            r"numeric column per node",
        ),
        (
            "unique_id,ds,y\ns,2020-01-01,1\ns,2020-01-02,high\n",
            r"non-numeric column\(s\) y \(column 'y' has 'high' in data row 2\); write numbers",
        ),
        ("date,a\nyesterday,1\n", r"'date' is not parseable as timestamps.*2016-07-01 00:00:00"),
        ("a,b\n1,2\n3,4,5\n", r"is not a well-formed CSV: .*Expected 2 fields in line 3, saw 3"),
    ],
)
def test_degenerate_csvs_name_the_problem_and_the_fix(tmp_path, capsys, text, message):
    path = tmp_path / "input.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load(str(path))
    assert main(["data", "describe", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("llm-st: error: ")
    assert "Traceback" not in err and str(path) in err


def test_cli_empty_and_header_only_csv(tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    assert main(["data", "describe", str(tmp_path / "empty.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"llm-st: error: {tmp_path / 'empty.csv'} is empty (no data); write ")
    assert err.count("\n") == 1
    (tmp_path / "header.csv").write_text("date,OT\n")
    assert main(["data", "describe", str(tmp_path / "header.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'header.csv'} has a header (date, OT) but no data rows" in err
    assert err.count("\n") == 1


def test_loaders_called_directly_reject_empty_input(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for loader in (load_wide_csv, load_timestamped_csv, load_long_frame, load_distance_graph):
        with pytest.raises(DataError, match=r"empty\.csv is empty: no header and no rows; write "):
            loader(empty)
    (tmp_path / "distance.csv").write_text("from,to,cost\n")
    with pytest.raises(DataError, match=r"has a header \(from, to, cost\) but no data rows"):
        load_distance_graph(tmp_path / "distance.csv")
    (tmp_path / "speed.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"adjacency CSV .*empty\.csv is empty; write it as N rows"):
        load_wide_csv(tmp_path / "speed.csv", adj_csv=empty)
    with pytest.raises(DataError, match=r"data frame has no rows; add rows: columns 'unique_id"):
        load_long_frame(_long_frame().iloc[:0])
    _speed_frame().iloc[:0].to_hdf(tmp_path / "none.h5", key="df")
    with pytest.raises(DataError, match=r"holds an empty frame \(0 rows, 5 columns\)"):
        load(str(tmp_path / "none.h5"))
