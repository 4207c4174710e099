"""Tiny test models and model loading: determinism, caching, clear errors offline."""

from __future__ import annotations

import json

import pytest
import torch

from llm_st.backbones import TINY_MODELS, load_causal_lm, register_tiny, tiny_model_dir
from llm_st.backbones.tiny import TINY_VERSION, tiny_corpus
from llm_st.errors import ConfigError, ModelLoadError

pytest_plugins = ["conftest_prompt"]  # tiny-model fixtures


def test_tiny_models_have_the_advertised_shape(tiny_gpt2, tiny_llama):
    gpt2, gpt2_tok = tiny_gpt2
    llama, llama_tok = tiny_llama
    assert type(gpt2).__name__ == "GPT2LMHeadModel" and type(llama).__name__ == "LlamaForCausalLM"
    assert (gpt2.config.n_layer, gpt2.config.n_embd) == (2, 64)
    assert (llama.config.num_hidden_layers, llama.config.hidden_size) == (2, 64)
    assert not gpt2.training and not llama.training
    assert gpt2.get_input_embeddings().weight.shape[0] == len(gpt2_tok)
    assert llama.get_input_embeddings().weight.shape[0] == len(llama_tok)


def test_tokenizers_behave_like_their_families(tiny_gpt2, tiny_llama):
    gpt2_tok, llama_tok = tiny_gpt2[1], tiny_llama[1]
    bpe_tokens = gpt2_tok.convert_ids_to_tokens(
        gpt2_tok("2024 12345", add_special_tokens=False)["input_ids"]
    )
    assert any(sum(c.isdigit() for c in t) > 1 for t in bpe_tokens)  # BPE merges digit runs
    sp_tokens = llama_tok.convert_ids_to_tokens(
        llama_tok("2024 12345", add_special_tokens=False)["input_ids"]
    )
    assert all(sum(c.isdigit() for c in t) <= 1 for t in sp_tokens)  # split_digits
    assert llama_tok("1")["input_ids"][0] == llama_tok.bos_token_id  # LLaMA prepends <s>
    chat = llama_tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<s>[INST] hi [/INST]"
    assert gpt2_tok.pad_token == gpt2_tok.eos_token == "<|endoftext|>"


def test_builds_are_deterministic_and_cached(tmp_path, tiny_cache):
    first = tiny_model_dir("tiny-llama", tiny_cache)
    second = tiny_model_dir("tiny-llama", tmp_path)
    assert first.name == second.name == f"tiny-llama-v{TINY_VERSION}"
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
    a, _ = load_causal_lm(first)
    b, _ = load_causal_lm(second)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    stamp = (second / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_dir("tiny-llama", tmp_path) == second  # reused, not rebuilt
    assert (second / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [second.name]  # no staging folders left
    assert tiny_corpus() == tiny_corpus()


def test_registry_takes_new_builders_and_failed_builds_leave_nothing(tmp_path):
    calls = []

    @register_tiny("tiny-broken")
    def _broken(out):
        (out / "config.json").write_text(json.dumps({}))
        calls.append(out)
        raise RuntimeError("builder failed")

    try:
        with pytest.raises(RuntimeError, match="builder failed"):
            tiny_model_dir("tiny-broken", tmp_path)
        assert len(calls) == 1 and list(tmp_path.iterdir()) == []
    finally:
        del TINY_MODELS["tiny-broken"]
    with pytest.raises(ConfigError, match="tiny-gpt2"):
        tiny_model_dir("tiny-unknown", tmp_path)


def test_hub_id_offline_names_the_model_and_the_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm("some-org/some-model-that-is-not-here")
    message = str(info.value)
    assert "some-org/some-model-that-is-not-here" in message
    assert "HF_HUB_OFFLINE" in message
    assert "hf download some-org/some-model-that-is-not-here --local-dir" in message


def test_local_paths_fail_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_causal_lm(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_causal_lm(tmp_path)
