"""The SFT dataset: label masks, answers the constrained decoder allows, cutting, cache,
packing with a block-diagonal mask (checked against real tiny GPT-2 / LLaMA forwards),
ST placeholders, window tensors and column types."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import llm_st.prompting.dataset as sft
from llm_st.data.synthetic import synthetic_traffic
from llm_st.data.task import prepare_task
from llm_st.data.windows import pick_windows
from llm_st.errors import ConfigError, DataError
from llm_st.prompting import PromptBuilder, load_template
from llm_st.prompting.context import window_histories
from llm_st.prompting.dataset import (
    PACKED_FEATURES,
    SFT_FEATURES,
    ST_SENTINEL,
    SFTBatches,
    SFTDataConfig,
    build_sft_dataset,
    dataset_fingerprint,
    sft_collate,
    sft_texts,
)
from llm_st.tokens.serialize import SerializerConfig, preset_for_tokenizer
from llm_st.zeroshot.constrained import NumberConstraint, NumberGrammar

pytest_plugins = ["conftest_prompt"]  # tiny-model fixtures

HISTORY, HORIZON = 12, 4


@pytest.fixture(scope="module")
def data():
    """6 road sensors, 2 days at 30 minutes (96 steps), dropouts masked."""
    return synthetic_traffic(num_nodes=6, num_days=2, interval_minutes=30)


@pytest.fixture(scope="module")
def task(data):
    return prepare_task(data, history=HISTORY, horizon=HORIZON)


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def lm(request):
    return request.getfixturevalue(request.param)


def reference(task, tok, window, node, channel, template="plain", **kw):
    """PromptBuilder's batch for one row, built on its own."""
    dataset = task.dataset("test")
    builder = PromptBuilder(template, preset_for_tokenizer(tok), tok, **kw)
    return builder.build(
        task.data, dataset.index.starts[[window]], HISTORY, HORIZON, [node], [channel]
    )


def targets(task, window, node, channel):
    start = task.dataset("test").index.starts[window] + HISTORY
    return window_histories(
        task.data, np.array([start]), HORIZON, np.array([node]), np.array([channel])
    )[0, 0, 0]


def test_labels_cover_the_answer_and_the_answer_parses_to_the_targets(task, lm):
    _, tok = lm
    config = SFTDataConfig(max_windows=3)
    ds = build_sft_dataset(task, "test", tok, config)
    texts = sft_texts(task, "test", tok, config)
    assert len(ds) == len(texts) == 3 * 6
    for row, (prompt_text, answer_text) in zip(ds, texts, strict=True):
        ids, labels, n = row["input_ids"], row["labels"], row["prompt_length"]
        assert all(x == -100 for x in labels[:n]) and labels[n:] == ids[n:]
        assert ids[-1] == tok.eos_token_id and row["kept"] == HISTORY
        ref = reference(task, tok, row["window"], row["node"], row["channel"])
        assert prompt_text == ref.texts[0]
        assert tok.decode(ids[:n], skip_special_tokens=True) == ref.texts[0]
        # the answer: each value with its leading digit_sep, as the decoder writes it
        assert answer_text == "".join(ref.serializer.value_strings(targets(task, *_key(row)))[0])
        decoded = tok.decode(ids[n:-1], clean_up_tokenization_spaces=False)
        assert decoded.strip() == answer_text.strip()
        parsed = ref.serializer.parse(decoded, HORIZON).values[0]
        truth = targets(task, *_key(row))
        scale = ref.serializer.scale[0] * 10.0**-ref.serializer.config.precision
        np.testing.assert_array_equal(np.isnan(parsed), np.isnan(truth))
        ok = ~np.isnan(truth)
        assert np.all(np.abs(parsed[ok] - truth[ok]) <= scale / 2 + 1e-9)


def _key(row):
    return row["window"], row["node"], row["channel"]


def test_answer_tokens_are_exactly_what_the_constrained_decoder_allows(data, lm):
    _, tok = lm
    config = preset_for_tokenizer(tok)
    mask = data.mask.copy()
    mask[86:88, ::2] = False  # missing targets: the answer writes the missing token
    task = prepare_task(replace(data, mask=mask), history=HISTORY, horizon=HORIZON)
    ds = build_sft_dataset(task, "test", tok, SFTDataConfig(max_windows=4))
    answers = [tok.decode(r["input_ids"][r["prompt_length"] : -1]) for r in ds]
    assert any("Nan" in a for a in answers) and any("-" in a for a in answers)
    vocab = len(tok)
    for row in ds:
        ids, n = torch.tensor(row["input_ids"]), row["prompt_length"]
        answer = tok.decode(ids[n:-1])
        digits = max(len(piece.replace(" ", "")) for piece in answer.split(","))
        grammar = NumberGrammar(tok, config, max_digits=max(digits, 1), allow_missing=True)
        constraint = NumberConstraint(grammar, HORIZON, tok.eos_token_id)
        for k in range(n, len(ids)):
            scores = constraint(ids[None, :k], torch.zeros(1, vocab))
            assert torch.isfinite(scores[0, ids[k]]), (k - n, tok.decode(ids[n : k + 1]))
        # after the last value only the end token was allowed: exactly HORIZON values
        assert torch.isfinite(scores[0]).sum() == 1 and ids[-1] == tok.eos_token_id


def test_long_prompts_lose_their_oldest_steps_only(data, tiny_gpt2):
    _, tok = tiny_gpt2
    task = prepare_task(data, history=48, horizon=HORIZON)
    full = build_sft_dataset(task, "test", tok, SFTDataConfig(max_windows=2))
    cut = build_sft_dataset(task, "test", tok, SFTDataConfig(max_windows=2, max_length=80))
    builder = PromptBuilder("plain", preset_for_tokenizer(tok), tok)
    starts = task.dataset("test").index.starts
    assert max(len(r) for r in full["input_ids"]) > 80
    for a, b in zip(full, cut, strict=True):
        assert len(b["input_ids"]) <= 80 and b["kept"] < 48 == a["kept"]
        # the answer (and end token) is intact
        assert b["input_ids"][b["prompt_length"] :] == a["input_ids"][a["prompt_length"] :]
        batch = builder.build(task.data, starts[[b["window"]]], 48, HORIZON, [b["node"]])
        newest = batch.serializer.join(batch.values[0][-b["kept"] :])
        assert tok.decode(b["input_ids"][: b["prompt_length"]]) == newest
    answer = len(full[0]["input_ids"]) - full[0]["prompt_length"]
    with pytest.raises(ConfigError, match="max_length=.*answer of horizon 4 takes up to"):
        build_sft_dataset(task, "test", tok, SFTDataConfig(max_windows=1, max_length=answer + 2))


def test_cache_reuses_equal_settings_and_rebuilds_on_any_change(
    task, tiny_gpt2, tmp_path, monkeypatch
):
    _, tok = tiny_gpt2
    calls = []
    original = sft._render_rows

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(sft, "_render_rows", counting)
    cache = tmp_path / "cache"
    template = tmp_path / "mine.j2"
    template.write_text("{# mine: history #}\nA: {{ history }}")
    config = SFTDataConfig(template=str(template), max_windows=2)
    first = build_sft_dataset(task, "test", tok, config, cache_dir=cache)
    built = len(calls)
    assert built > 0 and [p.name for p in cache.iterdir()] == [
        dataset_fingerprint(task, "test", tok, config)
    ]
    second = build_sft_dataset(task, "test", tok, config, cache_dir=cache)
    assert len(calls) == built  # loaded, not rendered
    assert second[:] == first[:] and second.features == first.features
    assert tok.decode(first[0]["input_ids"]).startswith("A: ")

    template.write_text("{# mine: history #}\nB: {{ history }}")  # same name, new text
    edited = build_sft_dataset(task, "test", tok, config, cache_dir=cache)
    assert len(calls) > built and len(list(cache.iterdir())) == 2
    assert tok.decode(edited[0]["input_ids"]).startswith("B: ")

    coarse = replace(config, serializer=replace(preset_for_tokenizer(tok), precision=2))
    before = len(calls)
    changed = build_sft_dataset(task, "test", tok, coarse, cache_dir=cache)
    assert len(calls) > before and len(list(cache.iterdir())) == 3
    row = changed[0]
    ref = PromptBuilder(str(template), coarse.serializer, tok).build(
        task.data, task.dataset("test").index.starts[[row["window"]]], HISTORY, HORIZON, [0]
    )
    assert tok.decode(row["input_ids"][: row["prompt_length"]]) == ref.texts[0]
    assert ref.texts[0] != tok.decode(edited[0]["input_ids"][: edited[0]["prompt_length"]])
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no staging left


def test_cache_under_distributed_ranks(task, tiny_gpt2, tmp_path, monkeypatch):
    _, tok = tiny_gpt2
    config = SFTDataConfig(max_windows=1)
    barriers = []
    monkeypatch.setattr(torch.distributed, "barrier", lambda: barriers.append(1))
    monkeypatch.setattr(sft, "_distributed", lambda: (1, 2))
    with pytest.raises(DataError, match="rank 0 did not save"):  # rank 1 never builds
        build_sft_dataset(task, "test", tok, config, cache_dir=tmp_path)
    monkeypatch.setattr(sft, "_distributed", lambda: (0, 2))
    built = build_sft_dataset(task, "test", tok, config, cache_dir=tmp_path)
    monkeypatch.setattr(sft, "_distributed", lambda: (1, 2))
    monkeypatch.setattr(sft, "_render_rows", None)  # would fail if called
    assert build_sft_dataset(task, "test", tok, config, cache_dir=tmp_path)[:] == built[:]
    assert len(barriers) == 3


def test_packing_keeps_every_token_and_restarts_positions(task, tiny_gpt2):
    _, tok = tiny_gpt2
    plain = build_sft_dataset(task, "test", tok, SFTDataConfig(max_length=160))
    packed = build_sft_dataset(task, "test", tok, SFTDataConfig(max_length=160, packing=True))
    assert packed.features == PACKED_FEATURES and len(packed) <= len(plain) // 2 + 1
    sizes = [len(r) for r in plain["input_ids"]]
    assert sum(sum(r) for r in packed["example_lengths"]) == sum(sizes)
    assert [n for r in packed["example_lengths"] for n in r] == sizes
    assert sum(packed["input_ids"], []) == sum(plain["input_ids"], [])
    assert sum(packed["labels"], []) == sum(plain["labels"], [])
    first = 0
    for row in packed:
        assert len(row["input_ids"]) <= 160 and len(row["example_lengths"]) >= 1
        assert row["position_ids"] == [p for n in row["example_lengths"] for p in range(n)]
        assert (row["window"], row["node"], row["channel"]) == _key(plain[first])
        first += len(row["example_lengths"])


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_packed_logits_equal_each_example_alone(task, lm, impl):
    model, tok = lm
    packed = build_sft_dataset(
        task, "test", tok, SFTDataConfig(max_windows=2, max_length=160, packing=True)
    )
    batch = SFTBatches(packed, tok.pad_token_id)[list(range(len(packed)))]
    mask = batch["attention_mask"]
    S = batch["input_ids"].shape[1]
    assert mask.shape == (len(packed), 1, S, S)
    assert mask.dtype == torch.float32 and set(mask.unique().tolist()) == {
        0.0,
        torch.finfo(torch.float32).min,
    }
    before = model.config._attn_implementation
    model.set_attn_implementation(impl)
    try:
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=mask,
                position_ids=batch["position_ids"],
                use_cache=False,
            ).logits
            naive = model(input_ids=batch["input_ids"], use_cache=False).logits
            loss_packed = loss_alone = 0.0
            leaked = 0.0
            for i, sizes in enumerate(packed["example_lengths"]):
                off = 0
                for n in sizes:
                    ids, labels = (
                        batch["input_ids"][i, off : off + n],
                        batch["labels"][i, off : off + n],
                    )
                    alone = model(input_ids=ids[None], use_cache=False).logits[0]
                    torch.testing.assert_close(logits[i, off : off + n], alone, atol=1e-4, rtol=0)
                    leaked = max(leaked, (naive[i, off : off + n] - alone).abs().max().item())
                    loss_alone += F.cross_entropy(alone[:-1], labels[1:], reduction="sum")
                    off += n
            shifted = batch["labels"][:, 1:]
            loss_packed = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), shifted.reshape(-1), reduction="sum"
            )
            mean = model(
                input_ids=batch["input_ids"],
                attention_mask=mask,
                position_ids=batch["position_ids"],
                labels=batch["labels"],
                use_cache=False,
            ).loss
    finally:
        model.set_attn_implementation(before)
    assert leaked > 1e-3  # without the mask the examples do see each other
    torch.testing.assert_close(loss_packed, loss_alone, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        mean, loss_packed / batch["num_label_tokens"].sum(), atol=1e-5, rtol=1e-5
    )


def test_collate_of_unpacked_rows(task, tiny_llama):
    _, tok = tiny_llama
    ds = build_sft_dataset(task, "test", tok, SFTDataConfig(max_windows=2))
    rows = ds[[0, 3, 5]]
    batch = sft_collate(rows, tok.pad_token_id)
    lengths = [len(r) for r in rows["input_ids"]]
    S = max(lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == (3, S)
    assert batch["attention_mask"].tolist() == [[1] * n + [0] * (S - n) for n in lengths]
    assert batch["position_ids"].tolist() == [list(range(n)) + [0] * (S - n) for n in lengths]
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    answers = [n - p for n, p in zip(lengths, rows["prompt_length"], strict=True)]
    assert batch["num_label_tokens"].tolist() == answers  # answer + end token
    assert batch["st_positions"].shape == (3, 0) and batch["window"].dtype == torch.int64
    assert batch["prompt_length"].tolist() == rows["prompt_length"]


def test_prompt_only_rows_train_nothing(task, tiny_gpt2):
    _, tok = tiny_gpt2
    ds = build_sft_dataset(task, "test", tok, SFTDataConfig(max_windows=1, with_answer=False))
    for row in ds:
        assert len(row["input_ids"]) == row["prompt_length"]
        assert set(row["labels"]) == {-100}
    assert sft_texts(task, "test", tok, SFTDataConfig(max_windows=1, with_answer=False))[0][1] == ""


def test_st_placeholders_sit_between_the_rendered_prompt_parts(task, tiny_llama):
    _, tok = tiny_llama
    config = SFTDataConfig(template="st_instruct", st_tokens=3, num_neighbors=1, max_windows=1)
    ds = build_sft_dataset(task, "test", tok, config)
    builder = PromptBuilder("st_instruct", preset_for_tokenizer(tok), tok, num_neighbors=1)
    starts = task.dataset("test").index.starts
    for row in ds:
        ids, pos, n = row["input_ids"], row["st_positions"], row["prompt_length"]
        assert len(pos) == 3 and pos == list(range(pos[0], pos[0] + 3)) and 0 < pos[0]
        assert pos[-1] < n - 1 and [ids[p] for p in pos] == [tok.pad_token_id] * 3
        text = builder.build(
            task.data,
            starts[[row["window"]]],
            HISTORY,
            HORIZON,
            [row["node"]],
            variables={"st_tokens": ST_SENTINEL},
        ).texts[0]
        before, after = text.split(ST_SENTINEL)
        assert "Its spatio-temporal encoding: " in before and before.startswith("<s>[INST]")
        assert tok.decode(ids[: pos[0]]) == before
        assert tok.decode(ids[pos[-1] + 1 : n]) == after
    batch = SFTBatches(ds, tok.pad_token_id)[[0, 1]]
    assert batch["st_positions"].tolist() == ds[:2]["st_positions"]
    # without placeholders the template leaves the sentence out
    plain = build_sft_dataset(task, "test", tok, replace(config, st_tokens=0))
    assert "spatio-temporal encoding" not in tok.decode(plain[0]["input_ids"])
    assert plain[0]["st_positions"] == []
    with pytest.raises(ConfigError, match="does not read the variable st_tokens"):
        build_sft_dataset(task, "test", tok, replace(config, template="instruct"))
    with pytest.raises(ConfigError, match="st_tokens"):
        sft_texts(task, "test", tok, config)


def test_batches_carry_the_window_tensors(task, tiny_gpt2):
    _, tok = tiny_gpt2
    windows = task.dataset("test")
    ds = build_sft_dataset(task, "test", tok, SFTDataConfig(max_windows=5, max_nodes=2))
    batches = SFTBatches(ds, tok.pad_token_id, windows)
    rows = np.array([0, 3, 7, 9])
    batch = batches[rows]
    for i, r in enumerate(rows.tolist()):
        w = ds[r]["window"]
        assert batch["window"][i] == w
        for key in ("x", "x_mask", "y", "y_scaled", "x_time"):
            torch.testing.assert_close(batch[key][i], windows[w][key])
    assert all(v.shape[0] == 4 for v in batch.values())
    loader = torch.utils.data.DataLoader(batches, batch_size=4, collate_fn=lambda b: b)
    first = next(iter(loader))  # through __getitems__
    assert first["input_ids"].shape[0] == 4 and first["x"].shape[0] == 4
    with pytest.raises(DataError, match="windows passed"):
        SFTBatches(ds, tok.pad_token_id, task.dataset("val"))[[len(ds) - 1]]


def test_features_and_evenly_spread_windows_and_nodes(task, tiny_gpt2):
    _, tok = tiny_gpt2
    ds = build_sft_dataset(task, "test", tok, SFTDataConfig(max_windows=4, max_nodes=3))
    declared = {
        "window": "int64",
        "node": "int32",
        "channel": "int32",
        "prompt_length": "int32",
        "kept": "int32",
    }
    assert ds.features == SFT_FEATURES
    assert {k: ds.features[k].dtype for k in declared} == declared
    for k in ("input_ids", "labels", "st_positions"):
        assert ds.features[k].feature.dtype == "int32"
    n = len(task.dataset("test"))
    windows = pick_windows(n, 4)
    nodes = np.unique(np.linspace(0, 5, 3).round().astype(int))
    assert windows.tolist() == np.unique(np.linspace(0, n - 1, 4).round()).astype(int).tolist()
    assert ds["window"][:] == np.repeat(windows, 3).tolist()
    assert ds["node"][:] == np.tile(nodes, 4).tolist() and set(ds["channel"][:]) == {0}
    everything = build_sft_dataset(task, "test", tok, SFTDataConfig(max_windows=2))
    assert len(everything) == 2 * 6


def test_fingerprint_covers_data_tokenizer_and_config(task, data, tiny_gpt2, tiny_llama):
    gpt2, llama = tiny_gpt2[1], tiny_llama[1]
    config = SFTDataConfig()
    key = dataset_fingerprint(task, "test", gpt2, config)
    assert len(key) >= 16 and key == dataset_fingerprint(task, "test", gpt2, config)
    other_task = prepare_task(data.select_nodes([0, 1, 2, 3]), HISTORY, HORIZON)
    assert (
        len(
            {
                key,
                dataset_fingerprint(task, "val", gpt2, config),
                dataset_fingerprint(task, "test", llama, config),
                dataset_fingerprint(task, "test", gpt2, replace(config, max_length=512)),
                dataset_fingerprint(task, "test", gpt2, replace(config, num_neighbors=2)),
                dataset_fingerprint(other_task, "test", gpt2, config),
                dataset_fingerprint(prepare_task(data, HISTORY + 1, HORIZON), "test", gpt2, config),
            }
        )
        == 7
    )
    explicit = replace(config, serializer=preset_for_tokenizer(gpt2)).fingerprint_dict()
    assert explicit["template_source"] == load_template("plain").source
    assert SerializerConfig(**explicit["serializer"]) == preset_for_tokenizer(gpt2)


def test_unknown_paths_are_errors(task, tiny_gpt2, tmp_path: Path):
    _, tok = tiny_gpt2
    with pytest.raises(ConfigError, match="does not exist"):
        build_sft_dataset(task, "test", tok, SFTDataConfig(template=str(tmp_path / "no.j2")))
    with pytest.raises(ConfigError, match="max_windows"):
        SFTDataConfig(max_windows=0)
