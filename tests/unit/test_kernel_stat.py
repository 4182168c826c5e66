"""Audio yields from kernel statistics (auralens.interp.kernel_stat) against the plain softmax and
the recorder's own formula (audio_yield): GQA, left padding, causal decode rows."""

from __future__ import annotations

import pytest
import torch

from auralens.interp.attention_yield import audio_yield
from auralens.interp.errors import ConfigError
from auralens.interp.kernel_stat import yield_from_lse, yield_from_value_channel

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
