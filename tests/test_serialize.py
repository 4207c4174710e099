"""Number serialization: exact round trips, total parsing, tokenizer presets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from llm_st.errors import ConfigError
from llm_st.tokens.serialize import (
    LLMTIME_GPT,
    LLMTIME_LLAMA,
    NumberSerializer,
    SerializerConfig,
    merges_digits,
    preset_for_tokenizer,
    token_texts,
    tokens_per_value,
)

pytest_plugins = ["conftest_prompt"]  # tiny-model fixtures

FORMATS = [LLMTIME_GPT, LLMTIME_LLAMA]

values = st.one_of(
    st.floats(-1e5, 1e5, allow_nan=False, allow_infinity=False),
    st.just(float("nan")),
    st.sampled_from([0.0, -0.0, 1e-9, -3.5]),
)
configs = st.builds(
    lambda base, precision, basic, alpha: replace(
        base, precision=precision, basic=basic, alpha=alpha
    ),
    st.sampled_from(FORMATS),
    st.integers(0, 5),
    st.booleans(),
    st.sampled_from([None, 0.5, 0.95, 1.0]),
)


@settings(max_examples=150, deadline=None)
@given(
    x=arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 20)), elements=values),
    config=configs,
)
def test_round_trip_is_exact_to_the_precision(x, config):
    ser = NumberSerializer(config).fit(x)
    texts = ser.serialize(x)
    parsed = ser.parse(texts, x.shape[1])
    # exactly what the text can hold, NaN where the history was missing
    np.testing.assert_array_equal(parsed.values, ser.quantize(x))
    observed = ~np.isnan(x)
    assert np.array_equal(np.isnan(parsed.values), ~observed)
    # ... which is x to within half a unit of the last written digit, in the series' scale
    bound = 0.5 * 10.0**-config.precision * ser.scale[:, None] * (1 + 1e-9) + 1e-9 * np.abs(x)
    assert np.all(np.abs(parsed.values - x)[observed] <= bound[observed] + 1e-12)
    np.testing.assert_array_equal(parsed.valid, observed.all(axis=1))
    np.testing.assert_array_equal(parsed.num_values, np.full(x.shape[0], x.shape[1]))
    assert all(t.endswith(config.time_sep) for t in texts)


@pytest.mark.parametrize("config", FORMATS)
def test_constant_series_comes_back_exactly(config):
    x = np.full((2, 7), 42.5)
    x[1] = -3.25
    ser = NumberSerializer(config).fit(x)
    np.testing.assert_array_equal(ser.scale, [1.0, 1.0])  # zero spread: LLMTime's q=0 -> 1
    np.testing.assert_array_equal(ser.parse(ser.serialize(x), 7).values, x)


def test_llmtime_scaling_matches_hand_computation():
    x = np.array([2.0, 4.0, np.nan, 10.0, 6.0])
    ser = NumberSerializer(replace(LLMTIME_GPT, alpha=0.5, beta=0.25)).fit(x)
    offset = 2.0 - 0.25 * (10.0 - 2.0)  # min - beta (max - min) = 0
    assert ser.offset == offset
    assert ser.scale == np.median(np.array([2.0, 4.0, 10.0, 6.0]) - offset)  # 5.0
    basic = NumberSerializer(replace(LLMTIME_GPT, alpha=0.5, basic=True)).fit(-x)
    assert basic.offset == 0.0 and basic.scale == 5.0  # median |x|


@pytest.mark.parametrize(
    ("config", "expected"),
    [(LLMTIME_GPT, "1 2 3 , - 4 5 , Nan , 0 , 1 2 0 0 ,"), (LLMTIME_LLAMA, "123,-45,Nan,0,1200,")],
)
def test_format_of_each_preset(config, expected):
    ser = NumberSerializer(replace(config, alpha=None)).fit(np.zeros(1))
    x = np.array([0.123, -0.045, np.nan, 0.0, 1.2])
    assert ser.serialize(x) == expected
    np.testing.assert_array_equal(ser.parse(expected, 5).values, [0.123, -0.045, np.nan, 0.0, 1.2])


def test_parse_truncated_over_long_and_garbled_text():
    ser = NumberSerializer(replace(LLMTIME_LLAMA, alpha=None)).fit(np.zeros((4, 1)))
    texts = ["1,2,3,4,5,", "1,2", "1,x,3,", ""]
    parsed = ser.parse(texts, 3)
    expected = [[0.001, 0.002, 0.003], [0.001, 0.002, np.nan], [0.001, np.nan, 0.003], [np.nan] * 3]
    np.testing.assert_array_equal(parsed.values, expected)
    np.testing.assert_array_equal(parsed.valid, [True, False, False, False])
    np.testing.assert_array_equal(parsed.num_values, [5, 2, 3, 0])


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=80), horizon=st.integers(1, 6), config=st.sampled_from(FORMATS))
def test_parsing_never_raises(text, horizon, config):
    ser = NumberSerializer(config).fit(np.array([[1.0, 5.0, 3.0]]))
    parsed = ser.parse([text], horizon)
    assert parsed.values.shape == (1, horizon)
    assert not np.any(np.isinf(parsed.values))
    assert parsed.valid[0] == bool(np.all(np.isfinite(parsed.values)))


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet="0123456789-, Na\n", max_size=60), horizon=st.integers(1, 5))
def test_parsing_number_like_garbage_never_raises(text, horizon):
    ser = NumberSerializer(LLMTIME_GPT).fit(np.arange(6.0))
    assert ser.parse(text, horizon).values.shape == (horizon,)


def test_bad_formats_are_rejected():
    with pytest.raises(ConfigError, match="visible"):
        SerializerConfig(time_sep="  ")
    with pytest.raises(ConfigError, match="ends in '1'"):
        SerializerConfig(time_sep=" 1")
    with pytest.raises(ConfigError, match="share characters"):
        SerializerConfig(digit_sep="-")


def test_presets_follow_the_tokenizer(tiny_tokenizers):
    bpe, sp = tiny_tokenizers["bpe"], tiny_tokenizers["sentencepiece"]
    assert merges_digits(bpe) and not merges_digits(sp)
    assert preset_for_tokenizer(bpe) == LLMTIME_GPT  # digits separated by spaces
    assert preset_for_tokenizer(sp).digit_sep == "" and preset_for_tokenizer(sp).time_sep == ","
    assert preset_for_tokenizer(sp, precision=2).precision == 2


def test_gpt_preset_gives_one_digit_per_token(tiny_tokenizers):
    bpe = tiny_tokenizers["bpe"]
    x = np.cumsum(np.random.default_rng(1).normal(0, 1, 50)) + 20
    text = NumberSerializer(LLMTIME_GPT).fit(x).serialize(x)
    texts = token_texts(bpe)
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert max(sum(c.isdigit() for c in texts[i]) for i in ids) == 1
    digits = sum(c.isdigit() for c in text)
    assert len(ids) >= digits  # every digit its own token


def test_tokens_per_value_prefers_each_tokenizers_preset(tiny_tokenizers):
    sp = tiny_tokenizers["sentencepiece"]
    # a sentencepiece tokenizer that splits digits only pays for spaces it does not need
    assert tokens_per_value(sp, preset_for_tokenizer(sp)) < tokens_per_value(sp, LLMTIME_GPT)
    # and the spaced format costs about one token per digit and one per separator
    x = np.full((1, 10), 1.0)
    plain = tokens_per_value(sp, replace(LLMTIME_LLAMA, alpha=None), x)
    assert plain == pytest.approx(5.0, abs=0.2)  # "1000," = 4 digits + ","


def test_token_texts_recover_sentencepiece_spaces(tiny_tokenizers):
    sp = tiny_tokenizers["sentencepiece"]
    texts = token_texts(sp)
    ids = sp(" 12, 3", add_special_tokens=False)["input_ids"]
    assert "".join(texts[i] for i in ids).strip() == "12, 3"
