"""The yield recorder does not disturb a mixture-of-experts decoder's routing.

The Qwen3-Omni MoE thinker routes every token of every decoder layer to 2 of 4 experts (tiny
config). The recorder replaces the attention function of each call; if it changed the attention
output by even a rounding step, a later layer's router would see other hidden states. Here the
router logits of every layer, the chosen experts and the logits are compared bit for bit with and
without the recorder, in a forward pass and in ``generate``; a control shows the router logits do
move when layer 0's attention output moves by 1e-3, so the comparison can fail. The yields
themselves are checked against eager attention in ``test_attention_yield.py`` (this class is one
of its parametrizations).
"""

from __future__ import annotations

import copy

import pytest
import torch

from auralens.interp.arch import describe
from auralens.interp.attention_yield import YieldRecorder, audio_mask_from_ids
from auralens.testing.model_checks import sharpen_attention
from auralens.testing.tiny import tiny_batch

ARCH = "qwen3_omni_moe_thinker"


@pytest.fixture
def moe(tiny_cache):
    model, processor = tiny_cache(ARCH)
    model = copy.deepcopy(model)
    sharpen_attention(model)
    arch = describe(model)
    batch = tiny_batch(processor)
    return model, arch, batch, audio_mask_from_ids(batch["input_ids"], arch)


def _experts(router_logits, k: int) -> torch.Tensor:
    return router_logits.topk(k, dim=-1).indices.sort(-1).values


def test_forward_routing_is_bit_identical_under_the_recorder(moe):
    model, arch, batch, audio_mask = moe
    tcfg = arch.text_config(model)
    with torch.no_grad():
        plain = model(**batch, output_router_logits=True)
        rec = YieldRecorder(model, arch, audio_mask, rows="all_prompt")
        with rec:
            recorded = model(**batch, output_router_logits=True)
    assert len(plain.router_logits) == arch.n_layers == len(recorded.router_logits)  # every layer is sparse
    assert rec.result.total.shape[2:] == (arch.n_layers, arch.n_heads)
    k = tcfg.num_experts_per_tok
    chosen = _experts(plain.router_logits[1], k)
    assert len({tuple(r) for r in chosen.tolist()}) > 1  # tokens really go to different experts
    for a, b in zip(plain.router_logits, recorded.router_logits, strict=True):
        assert a.shape[-1] == tcfg.num_experts
        assert torch.equal(a, b)
        assert torch.equal(_experts(a, k), _experts(b, k))
    assert torch.equal(plain.logits, recorded.logits)

    # control: a 1e-3 relative change of layer 0's attention output moves layer 1's router logits
    o_proj = arch.o_proj(model, 0)
    with torch.no_grad():
        o_proj.weight.mul_(1.001)
        try:
            moved = model(**batch, output_router_logits=True)
        finally:
            o_proj.weight.div_(1.001)
    assert (moved.router_logits[1] - plain.router_logits[1]).abs().max() > 1e-6


def test_generate_routing_and_tokens_are_unchanged_by_recording(moe):
    model, arch, batch, audio_mask = moe
    # (generate with output_router_logits=True fails inside transformers 5.24's aux-loss code for a
    # padded batch, so the routing is compared on the generated sequence, teacher-forced, below)
    gen = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    with torch.no_grad():
        plain = model.generate(**batch, **gen)
        rec = YieldRecorder(model, arch, audio_mask)
        with rec:
            recorded = model.generate(**batch, **gen)
    assert torch.equal(plain.sequences, recorded.sequences)
    assert rec.result.n_steps == 6
    # the routing of the whole generated sequence, re-run teacher-forced, is the same too
    seq = plain.sequences
    mask = torch.cat([batch["attention_mask"], torch.ones(seq.shape[0], 6, dtype=torch.long)], 1)
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        a = model(input_ids=seq, attention_mask=mask, output_router_logits=True, **extra)
        with YieldRecorder(model, arch, audio_mask, rows="all_prompt"):
            b = model(input_ids=seq, attention_mask=mask, output_router_logits=True, **extra)
    for x, y in zip(a.router_logits, b.router_logits, strict=True):
        assert torch.equal(x, y)
