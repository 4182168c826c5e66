"""PAUSE tokens at generation time: a ``<pause>`` token inserted where the next-token entropy is high.

HyPeR (Wang et al., arXiv 2604.14806, "Listen, Pause, and Reason"; the authors' code is public,
github.com/JOY-SWang/HyPeR) gives its model room for latent computation "during acoustically
ambiguous phases": while decoding, when the entropy of the next-token distribution reaches a
threshold and the answer has used fewer than ``max_pauses`` pauses, the next token is a
``<pause>`` (their logits processor adds a large bias to it).  What is taken from their design:
the entropy trigger, the per-answer cap, and that the pause is emitted by the decoding rule, not
chosen by the policy.  What is ours: the rule is exact (the pause is *forced*, never sampled,
and never emitted otherwise — so a trained model's behaviour does not depend on how often it
would have chosen a pause by itself), no two pauses in a row, and no separate "think" budget
after a pause (their ``<THINK>`` mode); the threshold is calibrated per model (a quantile of the
entropies of its own sampled answers, :func:`auralens.finetuning.hyper.calibrate_threshold`).

A model folder that carries ``pause.json`` (``{"token": "<pause>", "token_id": int,
"entropy_threshold": float, "max_pauses": int}``) gets the rule on every ``generate`` call that
uses :attr:`auralens.interp.loading.LoadedModel.generate_kwargs` (evaluation, record, steering, compare),
so a PAUSE-trained model is always measured the way it was trained.  The pause token is a special
token: decoded text skips it; the recorder keeps its rows (it is a real forward).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from auralens.interp.errors import ConfigError

__all__ = ["PAUSE_FILE", "PAUSE_TOKEN", "PauseConfig", "PauseProcessor", "count_pauses", "next_token_entropy",
           "read_pause_config"]

PAUSE_FILE = "pause.json"
PAUSE_TOKEN = "<pause>"


@dataclass(frozen=True, kw_only=True)
class PauseConfig:
    token_id: int
    entropy_threshold: float
    max_pauses: int = 3
    token: str = PAUSE_TOKEN

    def __post_init__(self) -> None:

        if isinstance(self.token_id, bool) or not isinstance(self.token_id, int) or self.token_id < 0:
            raise ConfigError(f"pause token_id: expected an integer >= 0, found {self.token_id!r}")
        if isinstance(self.max_pauses, bool) or not isinstance(self.max_pauses, int) or self.max_pauses < 1:
            raise ConfigError(f"pause max_pauses: expected an integer >= 1, found {self.max_pauses!r}")
        t = self.entropy_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"pause entropy_threshold: expected a finite number >= 0 (nats), found {t!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_pause_config(source: str | Path) -> PauseConfig | None:
    """The folder's ``pause.json`` as a :class:`PauseConfig`, or ``None`` when there is none
    (hub ids and embedded models without PAUSE training)."""
    p = Path(source) / PAUSE_FILE
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
        return PauseConfig(token_id=int(d["token_id"]), entropy_threshold=float(d["entropy_threshold"]),
                           max_pauses=int(d.get("max_pauses", 3)), token=str(d.get("token", PAUSE_TOKEN)))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{p}: expected {{'token_id', 'entropy_threshold', 'max_pauses'}}, found an unreadable file ({exc})") from exc


def next_token_entropy(logits, left_out):
    """Entropy (nats) of each row's next-token distribution with the ids ``left_out`` removed — the
    quantity the rule thresholds (:class:`PauseProcessor`) and its threshold is calibrated on
    (:func:`auralens.finetuning.hyper.calibrate_threshold`)."""
    import torch

    logits = logits.float().clone()
    logits[:, list(left_out)] = float("-inf")
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)


class PauseProcessor:
    """A transformers logits processor: rows whose next-token entropy (nats, of the logits it
    receives) is ``>= entropy_threshold``, that have used fewer than ``max_pauses`` pauses and did
    not just pause, must emit the pause token; every other row may not.  Stateless: the pauses used
    are counted in ``input_ids`` (a prompt never contains the token)."""

    def __init__(self, cfg: PauseConfig):
        self.cfg = cfg

    def __call__(self, input_ids, scores):
        pid = self.cfg.token_id
        if pid >= scores.shape[-1]:
            raise ConfigError(f"pause token id {pid}: outside the model's vocabulary of {scores.shape[-1]}")
        ent = next_token_entropy(scores, [pid])  # of the answer tokens, the pause left out
        used = (input_ids == pid).sum(-1)
        trigger = (ent >= self.cfg.entropy_threshold) & (used < self.cfg.max_pauses) & (input_ids[:, -1] != pid)
        out = scores.clone()
        out[:, pid] = float("-inf")
        if bool(trigger.any()):
            out[trigger] = float("-inf")
            out[trigger, pid] = 0.0
        return out


def count_pauses(ids, cfg: PauseConfig | None) -> list[int]:
    """Pause tokens per row of generated ids ``[rows, new]`` (0 for every row without a config)."""
    if cfg is None:
        return [0] * int(ids.shape[0])
    return [int(x) for x in (ids == cfg.token_id).sum(-1).tolist()]


def generate_kwargs_for(cfg: PauseConfig | None) -> dict[str, Any]:
    """``generate`` keyword arguments that apply the rule (empty without a config)."""
    if cfg is None:
        return {}
    from transformers import LogitsProcessorList

    return {"logits_processor": LogitsProcessorList([PauseProcessor(cfg)])}
