"""Per-input directions folded into the generation's prefill: :class:`FoldedRows`, built by
:func:`auralens.steering.directions.silence_rows` and applied by
:func:`auralens.steering.apply.apply_vector` (``per_row=``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["FoldedRows"]


@dataclass(frozen=True, kw_only=True, eq=False)
class FoldedRows:
    """Per-input directions whose real pass is the generation's own prefill (``per_row=`` of
    :func:`auralens.steering.apply.apply_vector`; built by :func:`auralens.steering.directions.silence_rows`).

    Holds only ``h_L(silence)`` at the last prompt token of every row.  At the first prefill of
    the steering context the hook at ``layer`` reads the still unsteered ``h_L`` at column ``-1``
    of every row (the last prompt token, left padding), forms ``s_i = direction(h_real_i -
    h_sil_i)`` and keeps ``alpha * s_i`` for every later forward of the context (the decoding
    steps, and any further full forward, e.g. the record stage's silence pass, which the
    two-pass path steers with the same ``s``).  Exact (identical to precomputing ``s`` with a
    separate real forward, up to float noise between a cached prefill and an uncached forward)
    when ``layer`` is the only steered site, nothing else modifies the model upstream of it,
    and the context's first forward is the generation's prefill of the same prompts: checked at
    that prefill (same prompt tokens per row, and audio inputs that are not the silent ones).

    Attributes:
        layer: the one steered decoder layer (site ``hook_resid_post``).
        silence: ``[batch, width]`` float32, ``h_L(silence)`` at the last prompt token.
        direction: ``[batch, width]`` raw difference -> the direction to add (scaling like the
            vector, the random control), float32 on the hidden states' device.
        prompts: each row's prompt tokens (padding excluded), or ``None`` (not checked).
        features: the silent batch's floating-point inputs (audio features), or ``None``.
    """

    layer: int
    silence: Tensor
    direction: Any
    prompts: tuple[tuple[int, ...], ...] | None = None
    features: dict[str, Tensor] | None = None

    @property
    def n_rows(self) -> int:
        return int(self.silence.shape[0])
