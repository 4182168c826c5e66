"""load_model: every supported architecture through the path a user's checkpoint takes."""

import json

import pytest
import torch

from auralens.interp.arch import ArchTable, describe, register_table, table_for_class
from auralens.interp.errors import ArchitectureError, ConfigError
from auralens.interp.loading import load_model
from auralens.testing.tiny import TINY_ARCHS, save_tiny


@pytest.fixture(scope="module", params=TINY_ARCHS)
def saved(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    save_tiny(request.param, folder)
    return request.param, folder


def test_load_resolves_table_and_dims(saved):
    arch_name, folder = saved
    lm = load_model(str(folder), device="cpu")
    cfg = lm.arch.text_config(lm.model)
    assert lm.arch.name == arch_name
    assert lm.arch.n_layers == cfg.num_hidden_layers == len(lm.arch.decoder_layers(lm.model))
    assert lm.arch.n_heads == cfg.num_attention_heads and lm.arch.n_kv_heads == cfg.num_key_value_heads
    assert lm.arch.n_kv_heads < lm.arch.n_heads  # GQA exercised
    assert lm.arch.d_model == cfg.hidden_size and lm.arch.head_dim * lm.arch.n_heads == lm.arch.o_proj(lm.model, 0).in_features
    tok_id = lm.processor.tokenizer.convert_tokens_to_ids(lm.processor.audio_token)
    assert lm.arch.audio_token_id == tok_id
    assert lm.model.config._attn_implementation == "sdpa"
    # every path in the table exists
    for L in range(lm.arch.n_layers):
        lm.arch.attention(lm.model, L)
    lm.arch.audio_layer(lm.model, 0)
    from auralens.interp.arch import get_attr_path

    for path in (lm.arch.table.projector, lm.arch.table.audio_tower, lm.arch.table.final_norm):
        assert isinstance(get_attr_path(lm.model, path), torch.nn.Module)
    with pytest.raises(ArchitectureError, match="out of range"):
        lm.arch.decoder_layer(lm.model, lm.arch.n_layers)


def test_load_bf16(saved):
    _, folder = saved
    lm = load_model(str(folder), dtype="bfloat16", device="cpu")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype"):
        load_model(str(folder), dtype="float8")


def test_unknown_architecture_says_how_to_add_a_table(tmp_path):
    save_tiny("qwen2_audio", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["architectures"] = ["MysteryAudioForConditionalGeneration"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArchitectureError, match="MysteryAudioForConditionalGeneration.*register_table"):
        load_model(str(tmp_path), device="cpu")


def test_explicit_table_override(tmp_path):
    save_tiny("qwen2_audio", tmp_path)
    base = table_for_class("Qwen2AudioForConditionalGeneration")
    custom = ArchTable(**{**base.__dict__, "name": "my_qwen2_audio"})
    lm = load_model(str(tmp_path), device="cpu", table=custom)
    assert lm.arch.name == "my_qwen2_audio"
    with pytest.raises(ArchitectureError, match="already exists"):
        register_table(base)
    assert describe(lm.model).name == "qwen2_audio"


def test_missing_embedded_weights_message(monkeypatch, tmp_path):
    import auralens.interp.micro as micro

    monkeypatch.setattr(micro, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ConfigError, match="auralens micro train"):
        load_model("micro")
