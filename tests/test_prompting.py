"""Prompt templates: statistics against numpy, neighbours from the graph, truncation, lookup."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from llm_st.cli import main
from llm_st.data.container import Adjacency, STData
from llm_st.data.io import save_npz
from llm_st.errors import ConfigError, DataError
from llm_st.prompting import (
    PromptBuilder,
    PromptTemplate,
    list_templates,
    load_template,
    render_prompt,
    row_at,
    series_statistics,
    top_lags,
)
from llm_st.prompting.stats import autocorrelation
from llm_st.tokens.serialize import LLMTIME_GPT, LLMTIME_LLAMA, NumberSerializer

pytest_plugins = ["conftest_prompt"]  # tiny-model fixtures

SHIPPED = ["instruct", "next_place", "plain", "spatial", "stats"]


def toy_data(T: int = 300) -> STData:
    """5 sensors with a 6-step season; graph 0->3 (0.9), 0->2 (0.5), 0->4 (0.1), 1->0 (0.7)."""
    rng = np.random.default_rng(0)
    t = np.arange(T)
    values = np.stack(
        [
            10 + n + 2 * np.sin(2 * np.pi * t / 6) + 0.01 * t + rng.normal(0, 0.1, T)
            for n in range(5)
        ],
        axis=1,
    )
    coords = np.array(
        [[34.0, -118.0], [34.0, -118.5], [34.0, -117.0], [35.0, -118.0], [33.0, -118.0]]
    )
    return STData(
        values=values,
        timestamps=pd.date_range("2024-01-01", periods=T, freq="5min"),
        node_ids=[f"s{i}" for i in range(5)],
        channels=["speed"],
        adjacency=Adjacency.from_edges(
            [0, 0, 0, 1], [3, 2, 4, 0], [0.9, 0.5, 0.1, 0.7], num_nodes=5
        ),
        coords=coords,
        node_meta=pd.DataFrame({"road": ["I-5"] * 5, "lanes": [3, 4, 2, 5, 3]}),
        description="toy sensors.",
        name="toy",
    )


def direct_acf(row: np.ndarray) -> np.ndarray:
    """Normalized linear autocorrelation at lags 0..T-1 by explicit sums."""
    c = np.where(np.isnan(row), 0.0, row - np.nanmean(row))
    acf = np.array([np.sum(c[: len(c) - k] * c[k:]) for k in range(len(c))])
    return acf / acf[0]


def test_statistics_match_numpy_on_known_series():
    rng = np.random.default_rng(3)
    t = np.arange(48)
    x = np.stack(
        [
            5 + np.sin(2 * np.pi * t / p) + 0.02 * s * t + rng.normal(0, 0.05, 48)
            for p, s in [(6, 1), (8, -1), (12, 0)]
        ]
    )
    x[0, [3, 20]] = np.nan
    stats = series_statistics(x)
    np.testing.assert_allclose(stats["min"], np.nanmin(x, axis=1))
    np.testing.assert_allclose(stats["max"], np.nanmax(x, axis=1))
    np.testing.assert_allclose(stats["median"], np.nanmedian(x, axis=1))
    np.testing.assert_allclose(
        stats["trend"], [x[0, -1] - x[0, 0], x[1, -1] - x[1, 0], x[2, -1] - x[2, 0]]
    )
    assert list(stats["trend_word"][:2]) == ["upward", "downward"]
    for b in range(3):
        acf = direct_acf(x[b])
        np.testing.assert_allclose(autocorrelation(x[b : b + 1])[0], acf, atol=1e-10)
        expected = 1 + np.argsort(-acf[1:], kind="stable")[:5]
        np.testing.assert_array_equal(stats["lags"][b], expected)
    # the season leads for short periods; for a slow one lag 1 (smoothness) comes first
    assert stats["lags"][0][0] == 6 and stats["lags"][1][0] == 8
    assert list(stats["lags"][2][:2]) == [1, 12]


def test_statistics_of_constant_and_empty_series():
    x = np.array([[3.0] * 8, [np.nan] * 8])
    stats = series_statistics(x)
    assert stats["min"][0] == stats["max"][0] == stats["median"][0] == 3.0
    assert list(stats["trend_word"]) == ["flat", "flat"]
    assert np.isnan(stats["median"][1])
    np.testing.assert_array_equal(top_lags(x[:1], 3), [[1, 2, 3]])  # all-zero ACF: smallest lags


def test_stats_template_renders_the_window_statistics():
    data = toy_data()
    batch = PromptBuilder("stats").build(data, np.array([40, 100]), 48, 12, nodes=[2])
    pattern = (
        r"min value ([-\d.]+), max value ([-\d.]+), median value ([-\d.]+), "
        r"the trend of input is (\w+), top 5 lags are : ([\d, ]+)\n"
    )
    for text, start in zip(batch.texts, [40, 100], strict=True):
        window = data.values[start : start + 48, 2, 0].astype(np.float64)
        lo, hi, med, trend, lags = re.search(pattern, text).groups()
        assert float(lo) == pytest.approx(window.min(), abs=5e-4)
        assert float(hi) == pytest.approx(window.max(), abs=5e-4)
        assert float(med) == pytest.approx(np.median(window), abs=5e-4)
        assert trend == ("upward" if window[-1] > window[0] else "downward")
        assert [int(v) for v in lags.split(",")] == list(
            1 + np.argsort(-direct_acf(window)[1:], kind="stable")[:5]
        )
        assert "forecast the next 12 steps given the previous 48 steps" in text
        assert text.startswith("Dataset description: toy sensors.")


def test_plain_template_is_the_serialization():
    data = toy_data()
    batch = PromptBuilder("plain", serializer=LLMTIME_LLAMA).build(
        data, np.array([7]), 24, 6, nodes=[1]
    )
    history = data.values[7:31, 1, 0].astype(np.float64)
    ser = NumberSerializer(LLMTIME_LLAMA).fit(history)
    assert batch.texts == [ser.serialize(history)]
    np.testing.assert_allclose(
        batch.serializer.parse(batch.texts, 24).values[0], history, atol=ser.scale * 5e-4
    )


def test_neighbours_come_from_the_adjacency():
    data = toy_data()
    builder = PromptBuilder("spatial", serializer=LLMTIME_LLAMA, num_neighbors=3, neighbor_steps=4)
    batch = builder.build(data, np.array([50]), 12, 6, nodes=[0])
    text = batch.texts[0]
    listed = re.findall(r"- sensor (s\d) \(weight ([\d.]+), ([\d.]+) km away\): (\S+)", text)
    # strongest edges in either direction, node 4 (weight 0.1) left out
    assert [(n, float(w)) for n, w, _, _ in listed] == [("s3", 0.9), ("s1", 0.7), ("s2", 0.5)]
    km = {n: float(d) for n, _, d, _ in listed}
    assert km["s3"] == pytest.approx(111.2, abs=0.1)  # one degree of latitude
    assert km["s1"] == pytest.approx(0.5 * 111.2 * np.cos(np.radians(34.0)), abs=0.1)
    # the neighbours' last 4 values, written in the target's scale, parse back to the data
    for node, _, _, values in listed:
        j = int(node[1:])
        back = batch.serializer.take(0).parse(values, 4).values
        np.testing.assert_allclose(
            back, data.values[58:62, j, 0], atol=batch.serializer.scale[0] * 5e-4 + 1e-4
        )
    assert "Target: sensor s0 (road: I-5, lanes: 3), speed." in text
    assert "from 2024-01-01 05:10 (Monday)" in text
    assert text.endswith("Values: " + batch.serializer.join(batch.values[0]))


def test_instruct_goes_through_the_chat_template(tiny_tokenizers):
    data = toy_data()
    batch = PromptBuilder("instruct", tokenizer=tiny_tokenizers["sentencepiece"]).build(
        data, np.array([0]), 12, 6, nodes=[0]
    )
    assert batch.texts[0].startswith("<s>[INST] You are an expert in spatio-temporal forecasting.")
    assert batch.texts[0].endswith("[/INST]")
    assert not batch.add_special_tokens  # the chat template wrote <s>
    with pytest.warns(UserWarning, match="no chat template"):
        plain = PromptBuilder("instruct", tokenizer=tiny_tokenizers["bpe"])
    text = plain.build(data, np.array([0]), 12, 6, nodes=[0]).texts[0]
    assert text.startswith("You are an expert") and text.endswith("and nothing else.\n")


@pytest.mark.parametrize("template", ["stats", "spatial"])
def test_truncation_cuts_the_oldest_history_and_keeps_the_instructions(tiny_tokenizers, template):
    tok = tiny_tokenizers["sentencepiece"]
    data = toy_data()
    builder = PromptBuilder(template, tokenizer=tok)
    batch = builder.build(data, np.array([10, 60]), 96, 12, nodes=[0])
    original = list(batch.texts)
    full = builder.token_lengths(batch)
    budget = int(full.min()) - 150
    builder.fit_to_budget(batch, budget)
    lengths = builder.token_lengths(batch)
    assert np.all(lengths <= budget) and np.all(batch.kept < 96) and np.all(batch.kept > 1)
    for m, text in enumerate(batch.texts):
        kept = int(batch.kept[m])
        assert text.endswith("Values: " + batch.serializer.join(batch.values[m][96 - kept :]))
        # only the history and its length changed: every instruction line is as before
        changed = [
            (a, b)
            for a, b in zip(original[m].splitlines(), text.splitlines(), strict=True)
            if a != b
        ]
        assert len(changed) == 2 and changed[-1][1].startswith("Values: ")
        assert changed[0][1] == changed[0][0].replace("96", str(kept))
    with pytest.raises(ConfigError, match="single history step"):
        builder.fit_to_budget(builder.build(data, np.array([10]), 96, 12, nodes=[0]), 20)


def test_every_shipped_template_documents_its_variables():
    assert set(SHIPPED) <= set(list_templates())
    for name in SHIPPED:
        template = load_template(name)
        assert template.source.lstrip().startswith("{#") and template.doc
        undocumented = [v for v in template.variables if not re.search(rf"\b{v}\b", template.doc)]
        assert not undocumented, (name, undocumented)
    assert load_template("instruct").chat and not load_template("spatial").chat


def test_template_lookup_user_files_and_sandbox(tmp_path):
    names = "instruct, next_place, plain, spatial, st_instruct, stats"
    with pytest.raises(ConfigError, match=names):
        load_template("no-such-template")
    mine = tmp_path / "mine.j2"
    mine.write_text("{# mine: history, horizon #}\nNext {{ horizon }}: {{ history }}")
    data = toy_data()
    batch = PromptBuilder(str(mine), serializer=LLMTIME_LLAMA).build(
        data, np.array([0]), 4, 3, nodes=[0]
    )
    assert batch.texts[0] == "Next 3: " + batch.serializer.join(batch.values[0])
    with pytest.raises(ConfigError, match="'nope' is undefined"):
        PromptTemplate.from_string("{{ nope }}").render(history="1,")
    with pytest.raises(ConfigError):  # no way out of the sandbox
        PromptTemplate.from_string("{{ x.__class__.__mro__ }}").render(x=1)
    with pytest.raises(ConfigError, match="syntax error"):
        PromptTemplate.from_string("{% for %}")


def test_cli_prompt_prints_the_rendered_prompt(tmp_path, capsys):
    data = toy_data()
    path = save_npz(data, tmp_path / "toy.npz")
    assert (
        main(
            ["prompt", str(path), "--template", "stats", "--node", "s2", "--at", "2024-01-01 08:00"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert printed == render_prompt(data, "stats", 2, 96) + "\n"
    assert row_at(data, "2024-01-01 08:00") == 96 and row_at(data, -1) == 299
    assert main(["prompt", str(path), "--node", "s9", "--at", "50"]) == 2
    assert "node 's9' is not in toy" in capsys.readouterr().err
    with pytest.raises(DataError, match="no room for history"):
        render_prompt(data, "plain", 0, 5)


def test_serializer_preset_changes_with_the_tokenizer(tiny_tokenizers):
    data = toy_data()
    bpe = PromptBuilder("plain", tokenizer=tiny_tokenizers["bpe"])
    sp = PromptBuilder("plain", tokenizer=tiny_tokenizers["sentencepiece"])
    assert bpe.config == LLMTIME_GPT and sp.config == replace(LLMTIME_LLAMA)
    assert " , " in bpe.build(data, np.array([0]), 6, 2, nodes=[0]).texts[0]
    assert " " not in sp.build(data, np.array([0]), 6, 2, nodes=[0]).texts[0]
