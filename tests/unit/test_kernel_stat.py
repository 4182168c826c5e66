"""Audio yields from kernel statistics (auralens.interp.kernel_stat) against the plain softmax and
the recorder's own formula (audio_yield): GQA, left padding, causal decode rows; and the recorder
built on them (KernelYieldRecorder over a backend installed once) against eager attention's weights
in generate, dynamic and static caches."""

from __future__ import annotations

import copy

import pytest
import torch

from auralens.interp import compat, kernel_stat
from auralens.interp.arch import describe
from auralens.interp.attention_yield import YieldRecorder, audio_mask_from_ids, audio_yield
from auralens.interp.errors import ArchitectureError, ConfigError
from auralens.interp.kernel_stat import (
    BACKENDS,
    KernelYieldRecorder,
    install_kernel_backend,
    yield_from_lse,
    yield_from_value_channel,
)
from auralens.testing.model_checks import eager_yields, sharpen_attention
from auralens.testing.tiny import tiny_batch

B, H, KV, Q, K, D = 2, 4, 2, 5, 23, 16


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = 3 * torch.randn(B, H, Q, D, generator=g)  # peaked attention
    k = torch.randn(B, KV, K, D, generator=g)
    audio = torch.zeros(B, K, dtype=torch.bool)
    audio[0, 3:12] = True
    audio[1, 6:9] = True
    pad = torch.ones(B, K, dtype=torch.bool)
    pad[1, :4] = False  # row 1 left-padded
    causal = torch.arange(K)[None, :] <= torch.arange(K - Q, K)[:, None]
    allowed = causal[None] & pad[:, None, :]
    return q, k, audio, allowed


def _naive(q, k, audio, allowed):
    kk = k.repeat_interleave(H // KV, 1)
    s = (q @ kk.transpose(-1, -2)) / D**0.5
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    p = s.softmax(-1)
    return (p * audio[:, None, None, :].float()).sum(-1).transpose(1, 2)  # [b, q, h]


@pytest.mark.parametrize("fn", [yield_from_lse, yield_from_value_channel])
def test_kernel_statistic_yields_equal_the_softmax(fn):
    q, k, audio, allowed = _case()
    got = fn(q, k, audio, allowed=allowed)
    ref = _naive(q, k, audio, allowed)
    assert got.shape == (B, Q, H)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert ref.std() > 0.05  # yields spread: the comparison can fail
    # the recorder's plain-tensor formula agrees (4-D bool mask: True = attend)
    rec = audio_yield(q, k, audio, attention_mask=allowed[:, None])[..., 0]
    torch.testing.assert_close(got, rec, atol=1e-5, rtol=0)
    # a shifted audio mask gives other yields
    assert (fn(q, k, audio.roll(5, 1), allowed=allowed) - ref).abs().max() > 1e-2


def test_causal_default_and_rows_without_audio():
    q, k, audio, _ = _case(1)
    causal = (torch.arange(K)[None, :] <= torch.arange(K - Q, K)[:, None])[None].expand(B, Q, K)
    for fn in (yield_from_lse, yield_from_value_channel):
        torch.testing.assert_close(fn(q, k, audio), _naive(q, k, audio, causal), atol=1e-5, rtol=0)
        none = fn(q, k, torch.zeros_like(audio))
        assert torch.equal(none, torch.zeros_like(none))


def test_shapes_are_checked_first():
    q, k, audio, allowed = _case()
    with pytest.raises(ConfigError, match="audio_mask: expected"):
        yield_from_lse(q, k, audio[:, :-1])
    with pytest.raises(ConfigError, match="allowed: expected"):
        yield_from_value_channel(q, k, audio, allowed=allowed[:, :-1])
    with pytest.raises(ConfigError, match="kv_head"):
        yield_from_lse(q[:, :3], k, audio)


# --- the recorder on a kernel statistic: a backend chosen once, never swapped --------------------

@pytest.fixture(autouse=True)
def _unregister_backends():
    """install_kernel_backend registers for the process (as an engine's backend choice is); other
    modules check that nothing auralens is registered, so each test here leaves none behind."""
    yield
    for name in BACKENDS.values():
        compat.unregister_attention(name)


def _sharp(tiny_model, name="qwen2_audio", **batch_kw):
    model, processor = tiny_model(name)
    sharpen_attention(model)
    arch = describe(model)
    batch = tiny_batch(processor, **batch_kw)
    return model, arch, batch, audio_mask_from_ids(batch["input_ids"], arch)


def _generate(model, batch, n, **kw):
    with torch.no_grad():
        return model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False, **kw)


@pytest.mark.parametrize("method", sorted(BACKENDS))
@pytest.mark.parametrize("name", ["qwen2_audio", "audioflamingo3"])
def test_kernel_recorder_matches_eager_and_the_swapping_recorder(tiny_model, name, method):
    model, arch, batch, amask = _sharp(tiny_model, name)  # a left-padded batch of two
    n = 6
    plain = YieldRecorder(model, arch, amask, rows="all_prompt", time_bins=2)
    with plain:
        seq = _generate(model, batch, n)
    served = copy.deepcopy(model)
    backend = install_kernel_backend(served, method)
    configs = [arch.attention(served, layer).config for layer in range(arch.n_layers)]
    fn = compat.attention_functions()[backend]
    rec = KernelYieldRecorder(served, arch, amask, rows="all_prompt", time_bins=2)
    with rec:
        assert {compat.get_attn_impl(c) for c in configs} == {backend}  # nothing swapped on entry
        seq_k = _generate(served, batch, n)
    assert {compat.get_attn_impl(c) for c in configs} == {backend}
    assert compat.attention_functions()[backend] is fn
    assert torch.equal(seq, seq_k)  # the backend's outputs are SDPA's: same tokens
    p = amask.shape[1]
    ref = eager_yields(model, batch, seq, amask)
    torch.testing.assert_close(rec.yields, ref[:, p - 1 : p - 1 + n], atol=1e-5, rtol=0)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(rec.result.prompt_total[real], ref[:, :p][real], atol=1e-5, rtol=0)
    torch.testing.assert_close(rec.result.binned, plain.result.binned, atol=1e-5, rtol=0)
    assert rec.yields.std() > 0.05 and rec.result.binned[..., 1].abs().sum() > 0  # both bins carry yield


def test_kernel_recorder_with_a_static_cache(tiny_model):
    model, arch, batch, amask = _sharp(tiny_model)
    install_kernel_backend(model, "lse")
    dyn = KernelYieldRecorder(model, arch, amask)
    with dyn:
        seq = _generate(model, batch, 5)
    rec = KernelYieldRecorder(model, arch, amask)
    with rec:
        seq_s = _generate(model, batch, 5, cache_implementation="static")
    assert torch.equal(seq, seq_s)
    torch.testing.assert_close(rec.yields, dyn.yields, atol=1e-5, rtol=0)
    p = amask.shape[1]
    torch.testing.assert_close(rec.yields, eager_yields(model, batch, seq, amask)[:, p - 1 : p + 4], atol=1e-5, rtol=0)


def test_backend_without_a_listener_is_one_kernel_call(tiny_model, monkeypatch):
    model, arch, batch, amask = _sharp(tiny_model)
    with torch.no_grad():
        ref = model(**batch).logits
    install_kernel_backend(model, "lse")
    calls = []
    real = kernel_stat.flex_attention

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(kernel_stat, "flex_attention", counted)
    with torch.no_grad():
        out = model(**batch).logits
    assert len(calls) == arch.n_layers  # no statistic computed: nobody listens
    real_rows = batch["attention_mask"].bool()
    torch.testing.assert_close(out[real_rows], ref[real_rows], atol=1e-5, rtol=0)
    calls.clear()
    with KernelYieldRecorder(model, arch, amask, time_bins=2):
        with torch.no_grad():
            model(**batch)
    assert len(calls) == arch.n_layers * 3  # output + one LSE per time bin


def test_kernel_recorder_needs_the_backend_and_names_the_fix(tiny_model):
    model, arch, _, amask = _sharp(tiny_model)
    with pytest.raises(ArchitectureError, match="install_kernel_backend"):
        KernelYieldRecorder(model, arch, amask)
    with pytest.raises(ConfigError, match="expected one of"):
        install_kernel_backend(model, "paged")
