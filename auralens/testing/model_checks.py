"""Small helpers the tests share about a loaded torch model (tests may not import each other).

- :func:`hook_count`: forward and forward-pre hooks left on every submodule (a hook engine that
  cleans up leaves the count as it found it);
- :func:`sharpen_attention`: scales every decoder layer's q/k projections so a random-init
  model's attention is peaked rather than near-uniform (yield comparisons then test something).
"""

from __future__ import annotations

from typing import Any

import torch

from auralens.interp.arch import describe

__all__ = ["hook_count", "sharpen_attention"]


def hook_count(model: Any) -> int:
    """Forward and forward-pre hooks registered on ``model`` and its submodules."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def sharpen_attention(model: Any, factor: float = 3.0) -> None:
    """Multiply every decoder layer's q_proj and k_proj (weights and biases) by ``factor``, in place."""
    arch = describe(model)
    with torch.no_grad():
        for layer in range(arch.n_layers):
            attn = arch.attention(model, layer)
            for lin in (attn.q_proj, attn.k_proj):
                lin.weight.mul_(factor)
                if lin.bias is not None:
                    lin.bias.mul_(factor)
