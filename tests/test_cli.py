"""The llm-st command: data commands, demo, and one-line errors with exit status 2."""

import json

import numpy as np
import pytest

from llm_st.cli import main
from llm_st.data import load_npz


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_describe_json_named_dataset(capsys, shared_data):
    code, out, _ = run(
        capsys, "data", "describe", "ETTh1", "--json", "--data-dir", str(shared_data)
    )
    info = json.loads(out)
    assert code == 0
    assert (info["num_steps"], info["num_nodes"], info["num_channels"]) == (17420, 7, 1)
    assert info["freq"] == "h" and info["start"] == "2016-07-01T00:00:00"
    assert info["missing_fraction"] == 0.0 and info["num_edges"] == 0


def test_describe_graph_dataset(capsys, shared_data):
    code, out, _ = run(
        capsys, "data", "describe", "SZ-taxi", "--json", "--data-dir", str(shared_data)
    )
    info = json.loads(out)
    assert code == 0 and info["num_nodes"] == 156 and info["freq"] == "15min"
    assert 0.24 < info["missing_fraction"] < 0.26  # zeros are missing readings in SZ-taxi
    assert info["num_edges"] > 0


def test_generate_then_describe_roundtrip(capsys, tmp_path):
    out_file = tmp_path / "traffic.npz"
    code, out, _ = run(
        capsys,
        "data",
        "generate",
        "synthetic-traffic",
        "--out",
        str(out_file),
        "--param",
        "num_nodes=12",
        "--param",
        "num_days=2",
        "--seed",
        "3",
    )
    assert code == 0 and out_file.exists()
    data = load_npz(out_file)
    assert data.shape == (2 * 288, 12, 1)
    code, out, _ = run(capsys, "data", "describe", str(out_file), "--json")
    info = json.loads(out)
    assert info["num_nodes"] == 12 and info["num_edges"] == data.num_edges
    assert info["missing_fraction"] == pytest.approx(data.missing_fraction, abs=1e-6)
    # same seed, same data; never overwritten silently
    code, _, err = run(
        capsys,
        "data",
        "generate",
        "synthetic-traffic",
        "--out",
        str(out_file),
        "--param",
        "num_nodes=12",
        "--param",
        "num_days=2",
        "--seed",
        "3",
    )
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    again = tmp_path / "again.npz"
    run(
        capsys,
        "data",
        "generate",
        "synthetic-traffic",
        "--out",
        str(again),
        "--param",
        "num_nodes=12",
        "--param",
        "num_days=2",
        "--seed",
        "3",
    )
    np.testing.assert_array_equal(load_npz(again).values, data.values)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["data", "describe", "/no/such/file.csv"], "not found"),
        (["data", "describe", "NoSuchDataset"], "NoSuchDataset"),
        (["data", "generate", "synthetic-nothing", "--out", "x.npz"], "synthetic-traffic"),
        (
            ["data", "generate", "synthetic-traffic", "--out", "x.npz", "--param", "nodes"],
            "key=value",
        ),
        (
            ["data", "generate", "synthetic-traffic", "--out", "x.npz", "--param", "bogus=1"],
            "bogus",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert needle in err and err.startswith("llm-st: error:")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_named_files_say_where_and_how(capsys, tmp_path):
    code, _, err = run(capsys, "data", "describe", "METR-LA", "--data-dir", str(tmp_path))
    assert code == 2 and str(tmp_path) in err and "DCRNN" in err


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "describe"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--help" in err


def test_every_command_has_help(capsys):
    for argv in (
        ["--help"],
        ["data", "--help"],
        ["data", "describe", "--help"],
        ["data", "generate", "--help"],
        ["demo", "--help"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        assert "usage: llm-st" in capsys.readouterr().out
