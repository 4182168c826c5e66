"""The audio attention yield recorder against two independent implementations.

For every tiny architecture (GQA: 4 query heads, 2 kv heads; a batch of two prompts of different
lengths, left-padded), the yields the recorder measures while ``generate`` runs with SDPA and a KV
cache are compared, to 1e-5, with

(a) transformers' eager attention, ``output_attentions=True``, on one teacher-forced forward over
    prompt + generated tokens, summing each head's weights over the audio keys;
(b) TransformerLens 4.3's ``TransformerBridge`` ``blocks.{L}.attn.hook_pattern`` on the same
    sequence.  TL has adapters for ``Qwen2AudioForConditionalGeneration``,
    ``AudioFlamingo3ForConditionalGeneration``, ``MusicFlamingoForConditionalGeneration`` and
    ``GlmAsrForConditionalGeneration`` (booted from the HF object with
    ``boot_transformers(folder, hf_model=...)``), none for the Qwen2.5-Omni thinker: there the
    bridge wraps a ``Qwen2ForCausalLM`` holding the thinker decoder's weights, fed the thinker's
    own merged ``inputs_embeds`` (text + projected audio) and positions.  With audio and text
    only, the thinker's 3-D multimodal rotary positions have three equal components, so its rotary
    embedding is Qwen2's; the test checks that, and that the wrapped decoder reproduces the
    thinker's logits, before comparing patterns.  Classes TL has no adapter for (Qwen3-ASR, Voxtral) are
    skipped there and covered by (a).

Decoder q/k projections are scaled up so the random-init attention is far from uniform and the
yields spread over [0, 1] (otherwise every head would sit near the audio share of the keys).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from auralens.interp.arch import TABLES, describe
from auralens.interp.attention_yield import (
    YieldConfig,
    YieldRecorder,
    audio_mask_from_ids,
    audio_yield,
    time_bin_weights,
)
from auralens.interp.errors import ArchitectureError, ConfigError, PromptError
from auralens.testing.model_checks import sharpen_attention
from auralens.testing.tiny import TINY_ARCHS, tiny_batch

N_NEW = 5
ATOL = 1e-5
BINS = 3
# architectures that compute their 3-D rotary positions themselves (a fact of their table)
OWN_POSITIONS = {t.name for t in TABLES.values() if t.own_position_ids}


def _feature_kwargs(batch) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}


def _full_inputs(case: Case) -> dict[str, Any]:
    """Teacher-forced inputs over prompt + generated tokens, positions as generate computes them."""
    seq = case.sequences
    new = seq.shape[1] - case.batch["input_ids"].shape[1]
    mask = torch.cat([case.batch["attention_mask"], torch.ones(seq.shape[0], new, dtype=torch.long)], 1)
    kw = dict(input_ids=seq, attention_mask=mask, **_feature_kwargs(case.batch))
    if case.name not in OWN_POSITIONS:
        kw["position_ids"] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return kw


def _yield_from_patterns(patterns, audio_mask) -> torch.Tensor:
    """[batch, pos, layer, head] from per-layer [batch, head, q, k] patterns (naive sum)."""
    t = patterns[0].shape[-1]
    keys = torch.nn.functional.pad(audio_mask, (0, t - audio_mask.shape[1])).float()
    per_layer = [(p.float() * keys[:, None, None, :]).sum(-1) for p in patterns]  # [b, h, q]
    return torch.stack(per_layer, 2).permute(0, 3, 2, 1)


@dataclass
class Case:
    name: str
    model: Any
    processor: Any
    arch: Any
    batch: Any
    audio_mask: torch.Tensor
    sequences: torch.Tensor
    rec: YieldRecorder  # rows="all_prompt", time_bins=BINS
    eager: torch.Tensor  # [batch, pos, layer, head] over the full sequence


_CASES: dict[str, Case] = {}


@pytest.fixture
def case(request, tiny_cache) -> Case:
    name = request.param
    if name not in _CASES:
        model, processor = tiny_cache(name)
        model, processor = copy.deepcopy(model), copy.deepcopy(processor)
        sharpen_attention(model)
        arch = describe(model)
        batch = tiny_batch(processor)
        audio_mask = audio_mask_from_ids(batch["input_ids"], arch)
        rec = YieldRecorder(model, arch, audio_mask, rows="all_prompt", time_bins=BINS)
        with torch.no_grad(), rec:
            seq = model.generate(**batch, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
        c = Case(name, model, processor, arch, batch, audio_mask, seq, rec, torch.empty(0))
        eager = copy.deepcopy(model)
        eager.set_attn_implementation("eager")
        with torch.no_grad():
            out = eager(**_full_inputs(c), output_attentions=True)
        assert len(out.attentions) == arch.n_layers
        c.eager = _yield_from_patterns(out.attentions, audio_mask)
        _CASES[name] = c
    return _CASES[name]


def cases(*names: str):
    return pytest.mark.parametrize("case", names or TINY_ARCHS, indirect=True)


# --------------------------------------------------------------------------------------------
# (a) eager attention, (b) TransformerLens
# --------------------------------------------------------------------------------------------


@cases()
def test_generate_matches_eager_attention(case):
    res = case.rec.result
    p = case.audio_mask.shape[1]
    assert res.total.shape == (2, N_NEW, case.arch.n_layers, case.arch.n_heads)
    assert res.n_steps == N_NEW == case.sequences.shape[1] - p
    ref = case.eager[:, p - 1 : p - 1 + N_NEW]
    torch.testing.assert_close(res.total, ref, atol=ATOL, rtol=0)
    assert ((res.total >= 0) & (res.total <= 1 + 1e-6)).all()
    assert res.total.std() > 0.05  # the sharpened heads really differ


@cases()
def test_generate_matches_transformer_lens_hook_pattern(case, tmp_path, monkeypatch):
    import transformer_lens.model_bridge.sources.transformers.helpers as tl_helpers
    from transformer_lens.factories import architecture_adapter_factory
    from transformer_lens.model_bridge import TransformerBridge

    cls = type(case.model).__name__
    if case.name != "qwen2_5_omni_thinker" and cls not in architecture_adapter_factory.SUPPORTED_ARCHITECTURES:
        pytest.skip(f"TransformerLens has no adapter for {cls}; covered by the eager comparison")

    # TL's boot installs torchvision with pip when AutoProcessor fails: never let it.
    installs = []
    monkeypatch.setattr(tl_helpers, "_ensure_torchvision", lambda: installs.append(1) or False)
    case.processor.save_pretrained(tmp_path)
    full = _full_inputs(case)
    names = lambda n: n.endswith("attn.hook_pattern")  # noqa: E731

    if case.name == "qwen2_5_omni_thinker":
        lm, embeds, positions = _omni_decoder_as_qwen2(case, full)
        bridge = TransformerBridge.boot_transformers(str(tmp_path), hf_model=lm, tokenizer=case.processor.tokenizer)
        logits, cache = bridge.run_with_cache(
            embeds, attention_mask=full["attention_mask"], position_ids=positions, names_filter=names
        )
    else:
        bridge = TransformerBridge.boot_transformers(
            str(tmp_path), hf_model=copy.deepcopy(case.model), tokenizer=case.processor.tokenizer
        )
        ids = full.pop("input_ids")
        logits, cache = bridge.run_with_cache(ids, names_filter=names, **full)
    assert not installs
    patterns = [cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(case.arch.n_layers)]
    assert patterns[0].shape[1] == case.arch.n_heads  # one pattern per query head (GQA expanded)
    tl = _yield_from_patterns(patterns, case.audio_mask)
    p = case.audio_mask.shape[1]
    torch.testing.assert_close(case.rec.result.total, tl[:, p - 1 : p - 1 + N_NEW], atol=ATOL, rtol=0)


def _omni_decoder_as_qwen2(case: Case, full: dict[str, Any]):
    """A Qwen2ForCausalLM with the thinker decoder's weights, and the thinker's decoder inputs."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = case.model
    seen: dict[str, Any] = {}

    def grab(module, args, kwargs):
        seen.update(kwargs)

    handle = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            ref_logits = model(**full).logits
    finally:
        handle.remove()
    embeds, pos3 = seen["inputs_embeds"], seen["position_ids"]
    real = full["attention_mask"].bool()
    # Audio + text only: the three rotary components (temporal, height, width) are equal.
    pos3 = pos3[-3:]
    assert torch.equal(pos3[0][real], pos3[1][real]) and torch.equal(pos3[0][real], pos3[2][real])

    tc = model.config.text_config
    cfg = Qwen2Config(
        vocab_size=tc.vocab_size,
        hidden_size=tc.hidden_size,
        intermediate_size=tc.intermediate_size,
        num_hidden_layers=tc.num_hidden_layers,
        num_attention_heads=tc.num_attention_heads,
        num_key_value_heads=tc.num_key_value_heads,
        hidden_act=tc.hidden_act,
        rms_norm_eps=tc.rms_norm_eps,
        max_position_embeddings=tc.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": tc.rope_parameters["rope_theta"]},
        tie_word_embeddings=False,
        use_sliding_window=False,
    )
    lm = Qwen2ForCausalLM(cfg).eval()
    prefix = "model.language_model."
    state = {"model." + k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    state["lm_head.weight"] = model.lm_head.weight
    lm.load_state_dict(state, strict=True)
    positions = pos3[0]
    with torch.no_grad():
        lm_logits = lm(inputs_embeds=embeds, attention_mask=full["attention_mask"], position_ids=positions).logits
    torch.testing.assert_close(lm_logits[real], ref_logits[real], atol=ATOL, rtol=0)
    return lm, embeds, positions


# --------------------------------------------------------------------------------------------
# Rows, bins, layers, modes
# --------------------------------------------------------------------------------------------


@cases()
def test_all_prompt_rows_match_eager(case):
    res = case.rec.result
    p = case.audio_mask.shape[1]
    real = case.batch["attention_mask"].bool()
    prompt = res.prompt_total
    assert prompt.shape == (2, p, case.arch.n_layers, case.arch.n_heads)
    torch.testing.assert_close(prompt[real], case.eager[:, :p][real], atol=ATOL, rtol=0)
    assert prompt[~real].isnan().all()  # padding query rows attend to nothing
    torch.testing.assert_close(prompt[:, -1], res.total[:, 0], atol=0, rtol=0)


@cases()
def test_time_bins_sum_to_total_and_match_eager_per_bin(case):
    res = case.rec.result
    assert res.binned.shape[-1] == BINS
    # A plain recording (one bin) of the same generation is the bins' sum.
    plain = YieldRecorder(case.model, case.arch, case.audio_mask)
    with torch.no_grad(), plain:
        seq = case.model.generate(**case.batch, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
    assert torch.equal(seq, case.sequences)
    torch.testing.assert_close(res.binned.sum(-1), plain.yields, atol=1e-6, rtol=0)
    # Each bin against eager weights summed over that bin's audio keys (bins rebuilt by a loop).
    eager = copy.deepcopy(case.model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attns = eager(**_full_inputs(case), output_attentions=True).attentions
    p = case.audio_mask.shape[1]
    for k in range(BINS):
        keys = torch.zeros_like(case.audio_mask)
        for b in range(case.audio_mask.shape[0]):
            where = case.audio_mask[b].nonzero().flatten().tolist()
            for rank, pos in enumerate(where):
                if rank * BINS // len(where) == k:
                    keys[b, pos] = True
        ref = _yield_from_patterns(attns, keys)[:, p - 1 : p - 1 + N_NEW]
        torch.testing.assert_close(res.binned[..., k], ref, atol=ATOL, rtol=0)


def test_time_bin_weights_are_contiguous_and_balanced():
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, 2:9] = True  # 7 tokens
    mask[1, [1, 3, 4, 10]] = True  # 4 scattered tokens
    w = time_bin_weights(mask, 3)
    assert torch.equal(w.sum(-1), mask.float())
    assert w[0].sum(0).tolist() == [3.0, 2.0, 2.0]
    assert w[1].sum(0).tolist() == [2.0, 1.0, 1.0]
    bins = w.argmax(-1)
    assert (bins[0, 2:9].diff() >= 0).all()


@cases("qwen2_audio")
def test_teacher_forced_forward_gives_one_more_row(case):
    rec = YieldRecorder(case.model, case.arch, case.audio_mask)
    with torch.no_grad(), rec:
        case.model(**_full_inputs(case))
    p = case.audio_mask.shape[1]
    assert rec.yields.shape[1] == N_NEW + 1
    torch.testing.assert_close(rec.yields[:, :N_NEW], case.rec.yields, atol=ATOL, rtol=0)
    torch.testing.assert_close(rec.yields, case.eager[:, p - 1 :], atol=ATOL, rtol=0)


@cases("audioflamingo3")
def test_layer_subset_in_given_order(case):
    rec = YieldRecorder(case.model, case.arch, case.audio_mask, layers=[1, 0])
    with torch.no_grad(), rec:
        case.model.generate(**case.batch, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
    assert rec.result.layers == (1, 0)
    torch.testing.assert_close(rec.yields, case.rec.yields[:, :, [1, 0]], atol=1e-6, rtol=0)


@cases("qwen2_5_omni_thinker")
def test_latest_matches_final_rows_during_generate(case):
    rec = YieldRecorder(case.model, case.arch, case.audio_mask)
    live = []
    handle = case.model.register_forward_hook(lambda *_: live.append(rec.latest(1)[..., 0]))
    try:
        with torch.no_grad(), rec:
            case.model.generate(**case.batch, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
    finally:
        handle.remove()
    assert len(live) == N_NEW
    torch.testing.assert_close(torch.stack(live, 1), rec.yields[:, :, 1], atol=1e-6, rtol=0)


@cases("qwen2_audio")
def test_a_model_running_eager_attention_is_recorded_too(case):
    model = copy.deepcopy(case.model)
    model.set_attn_implementation("eager")
    rec = YieldRecorder(model, case.arch, case.audio_mask)
    with torch.no_grad(), rec:
        seq = model.generate(**case.batch, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
    assert torch.equal(seq, case.sequences)
    assert model.config.text_config._attn_implementation == "eager"
    torch.testing.assert_close(rec.yields, case.rec.yields, atol=ATOL, rtol=0)


@cases("qwen2_audio")
def test_nested_and_concurrent_recorders(case, tiny_model):
    """Two models recorded at once, and two recorders nested on one model, all see every call."""
    other, processor = tiny_model("audioflamingo3")
    o_arch = describe(other)
    o_batch = tiny_batch(processor)
    outer = YieldRecorder(case.model, case.arch, case.audio_mask, layers=[0])
    inner = YieldRecorder(case.model, case.arch, case.audio_mask, layers=[1, 0])
    o_rec = YieldRecorder(other, o_arch, audio_mask_from_ids(o_batch["input_ids"], o_arch))
    kw = dict(max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
    with torch.no_grad(), outer, o_rec:
        other.generate(**o_batch, **kw)
        with inner:
            case.model.generate(**case.batch, **kw)
    torch.testing.assert_close(outer.yields, case.rec.yields[:, :, [0]], atol=1e-6, rtol=0)
    torch.testing.assert_close(inner.yields, case.rec.yields[:, :, [1, 0]], atol=1e-6, rtol=0)
    assert o_rec.yields.shape == (2, N_NEW, o_arch.n_layers, o_arch.n_heads)
    assert torch.isfinite(o_rec.yields).all()
    assert case.model.config.text_config._attn_implementation == "sdpa"
    assert other.config.text_config._attn_implementation == "sdpa"


@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_sdpa_kernel_runs_and_outputs_are_unchanged(arch_name, tiny_model, monkeypatch):
    import transformers.models.audioflamingo3.modeling_audioflamingo3 as m_af3
    import transformers.models.qwen2.modeling_qwen2 as m_qwen2
    import transformers.models.qwen2_5_omni.modeling_qwen2_5_omni as m_omni
    import transformers.models.qwen2_audio.modeling_qwen2_audio as m_qa
    from transformers.modeling_utils import AttentionInterface

    model, processor = tiny_model(arch_name)
    arch = describe(model)
    batch = tiny_batch(processor)
    with torch.no_grad():
        plain = model.generate(**batch, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
        plain_logits = model(**batch).logits

    def eager_forbidden(*args, **kwargs):
        raise AssertionError("eager attention ran while recording")

    import sys

    # every transformers module that defines one of the model's submodules (llama, glmasr, ...)
    own = {sys.modules[type(m).__module__] for m in model.modules() if type(m).__module__.startswith("transformers.")}
    for mod in {m_qwen2, m_qa, m_omni, m_af3, *own}:
        monkeypatch.setattr(mod, "eager_attention_forward", eager_forbidden, raising=False)
    sdpa = AttentionInterface._global_mapping["sdpa"]
    decoder_attn = {arch.attention(model, layer) for layer in range(arch.n_layers)}
    q_lens: list[int] = []

    def spy(module, query, *args, **kwargs):
        if module in decoder_attn:
            q_lens.append(query.shape[2])
        return sdpa(module, query, *args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", spy)
    rec = YieldRecorder(model, arch, audio_mask_from_ids(batch["input_ids"], arch))
    with torch.no_grad(), rec:
        out = model.generate(**batch, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
        logits = model(**batch).logits
    p = batch["input_ids"].shape[1]
    n = arch.n_layers
    # prefill + N-1 decode steps of generate, then the plain forward: all through the SDPA kernel
    assert q_lens == [p] * n + [1] * (n * (N_NEW - 1)) + [p] * n
    assert torch.equal(out, plain)
    assert torch.equal(logits, plain_logits)


# --------------------------------------------------------------------------------------------
# Global state and errors
# --------------------------------------------------------------------------------------------


def _state(model):
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    arch = describe(model)
    impls = [arch.attention(model, layer).config._attn_implementation for layer in range(arch.n_layers)]
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    return (
        sorted(AttentionInterface._global_mapping),
        sorted(AttentionMaskInterface._global_mapping),
        impls,
        model.config.text_config._attn_implementation,
        model.config.audio_config._attn_implementation,
        hooks,
    )


def test_import_registers_nothing():
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    assert not [k for k in AttentionInterface._global_mapping if "auralens" in k]
    assert not [k for k in AttentionMaskInterface._global_mapping if "auralens" in k]


def test_context_restores_everything_even_on_errors(tiny_model):
    model, processor = tiny_model("qwen2_audio")
    arch = describe(model)
    batch = tiny_batch(processor)
    mask = audio_mask_from_ids(batch["input_ids"], arch)
    before = _state(model)
    assert before[2] == ["sdpa"] * arch.n_layers

    rec = YieldRecorder(model, arch, mask)
    with rec:
        assert _state(model) != before  # active: private implementation and a pre-hook
        assert arch.attention(model, 0).config._attn_implementation.startswith("auralens_yield_")
        with torch.no_grad():
            model(**batch)
    assert _state(model) == before

    rec = YieldRecorder(model, arch, mask)
    with pytest.raises(RuntimeError, match="boom"):
        with rec:
            with torch.no_grad():
                model(**batch)
            raise RuntimeError("boom")
    assert _state(model) == before
    with pytest.raises(ConfigError, match="no result"):
        rec.result

    # an error raised inside generate (by the recorder's own input check)
    rec = YieldRecorder(model, arch, mask[:, 1:])
    with pytest.raises(PromptError):
        with rec:
            model.generate(**batch, max_new_tokens=2)
    assert _state(model) == before


def test_errors_before_anything_runs(tiny_model, unchecked_shapes):  # the recorder's own mask checks
    model, processor = tiny_model("qwen2_audio")
    arch = describe(model)
    batch = tiny_batch(processor)
    mask = audio_mask_from_ids(batch["input_ids"], arch)
    ran = []
    model.model.language_model.layers[0].register_forward_hook(lambda *_: ran.append(1))
    model.model.audio_tower.register_forward_hook(lambda *_: ran.append(1))

    no_audio = mask.clone()
    no_audio[1] = False
    with pytest.raises(PromptError, match=r"batch row\(s\) \[1\] contain no audio token"):
        YieldRecorder(model, arch, no_audio)
    with pytest.raises(PromptError, match="torch.bool"):
        YieldRecorder(model, arch, mask.long())
    with pytest.raises(PromptError, match=r"\[batch, pos\]"):
        YieldRecorder(model, arch, mask[0])
    with pytest.raises(PromptError, match="fewer than time_bins=1000"):
        YieldRecorder(model, arch, mask, time_bins=1000)
    with pytest.raises(ArchitectureError, match="out of range"):
        YieldRecorder(model, arch, mask, layers=[arch.n_layers])
    with pytest.raises(ConfigError, match="rows='every'"):
        YieldRecorder(model, arch, mask, rows="every")
    with pytest.raises(ConfigError, match="time_bins=0"):
        YieldConfig(time_bins=0)
    with pytest.raises(ConfigError, match="at most once"):
        YieldConfig(layers=(0, 0))

    # mask of another batch (shape), or of other positions (values): refused at the first forward
    for bad, match in [(mask[:1], "do not match"), (mask.roll(1, dims=1), "differs")]:
        rec = YieldRecorder(model, arch, bad)
        with pytest.raises(PromptError, match=match), rec:
            model.generate(**batch, max_new_tokens=2)
    assert not ran


def test_class_without_table_is_refused():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )
    model = Qwen2ForCausalLM(cfg)
    with pytest.raises(ArchitectureError, match="no architecture table for model class 'Qwen2ForCausalLM'"):
        YieldRecorder(model, None, torch.ones(1, 4, dtype=torch.bool))


# --------------------------------------------------------------------------------------------
# The plain-tensor function
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_kind", ["none", "bool4d", "float4d", "padding2d"])
def test_audio_yield_from_tensors_matches_naive_softmax(mask_kind):
    g = torch.Generator().manual_seed(0)
    b, h, kvh, q, t, d, p = 2, 4, 2, 3, 10, 8, 7
    query = torch.randn(b, h, q, d, generator=g) * 2
    key = torch.randn(b, kvh, t, d, generator=g) * 2
    audio = torch.zeros(b, p, dtype=torch.bool)
    audio[0, 2:5] = True
    audio[1, 4:7] = True
    qpos = torch.arange(t - q, t)
    causal = torch.arange(t)[None, :] <= qpos[:, None]  # [q, t]
    padding = torch.ones(b, t, dtype=torch.bool)
    padding[1, :2] = False  # left padding in row 1
    allowed = causal[None] & padding[:, None, :]
    if mask_kind == "none":
        allowed, mask = causal[None].expand(b, -1, -1), None
    elif mask_kind == "bool4d":
        mask = allowed[:, None]
    elif mask_kind == "float4d":
        mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]
    else:
        mask = padding.long()
    y = audio_yield(query, key, audio, attention_mask=mask, scaling=0.3, query_positions=qpos)

    k_rep = key.repeat_interleave(h // kvh, dim=1)
    logits = (query @ k_rep.transpose(-1, -2)) * 0.3
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    probs = logits.softmax(-1)
    keys = torch.nn.functional.pad(audio, (0, t - p)).float()
    ref = (probs * keys[:, None, None, :]).sum(-1).transpose(1, 2)  # [b, q, h]
    torch.testing.assert_close(y[..., 0], ref, atol=1e-6, rtol=0)
