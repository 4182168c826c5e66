"""Small helpers the tests share about a loaded torch model (tests may not import each other).

- :func:`hook_count`: forward and forward-pre hooks left on every submodule (a hook engine that
  cleans up leaves the count as it found it);
- :func:`sharpen_attention`: scales every decoder layer's query/key projections so a random-init
  model's attention is peaked rather than near-uniform (yield comparisons then test something).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from auralens.interp.arch import describe

__all__ = ["hook_count", "sharpen_attention"]


def hook_count(model: Any) -> int:
    """Forward and forward-pre hooks registered on ``model`` and its submodules."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def sharpen_attention(model: Any, factor: float = 3.0) -> None:
    """Multiply every decoder layer's query and key projections (weights and biases) by
    ``factor``, in place: ``q_proj`` and ``k_proj``, or the query and key rows of a fused
    ``qkv_proj`` (Phi-4-multimodal: ``[H*d | KV*d | KV*d]`` output rows)."""
    arch = describe(model)
    q_rows, k_rows = arch.n_heads * arch.head_dim, arch.n_kv_heads * arch.head_dim
    with torch.no_grad():
        for layer in range(arch.n_layers):
            attn = arch.attention(model, layer)
            if hasattr(attn, "q_proj"):
                parts = [(attn.q_proj, slice(None)), (attn.k_proj, slice(None))]
            else:
                parts = [(attn.qkv_proj, slice(0, q_rows + k_rows))]
            for lin, rows in parts:
                lin.weight[rows].mul_(factor)
                if lin.bias is not None:
                    lin.bias[rows].mul_(factor)


def eager_yields(model: Any, batch: Any, seq: torch.Tensor, audio_mask: torch.Tensor) -> torch.Tensor:
    """[batch, pos, layer, head] audio yield of a teacher-forced eager forward over ``seq``
    (``output_attentions=True`` on a copy switched to eager; each head's weights summed over the
    audio keys): the independent reference the recorders are checked against."""
    new = seq.shape[1] - batch["input_ids"].shape[1]
    mask = torch.cat([batch["attention_mask"], torch.ones(seq.shape[0], new, dtype=torch.long)], 1)
    kw = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        out = eager(input_ids=seq, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).masked_fill(mask == 0, 0),
                    output_attentions=True, **kw)
    t = seq.shape[1]
    keys = torch.nn.functional.pad(audio_mask, (0, t - audio_mask.shape[1])).float()
    per_layer = [(a.float() * keys[:, None, None, :]).sum(-1) for a in out.attentions]  # [b, h, q]
    return torch.stack(per_layer, 2).permute(0, 3, 2, 1)
