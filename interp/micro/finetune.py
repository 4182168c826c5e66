"""MPAR²-style fine-tuning: SFT on perception → reasoning → review traces, then GRPO.

The recipe of Mao et al. (MPAR², arXiv 2603.02266; their code is not public), re-implemented
for any model :func:`interp.loading.load_model` can load, and sized so the default run on the
embedded ``micro`` fits in 30 minutes on 2 CPU cores::

    from interp.micro.finetune import FinetuneConfig, finetune
    info = finetune("micro", "interp/micro/weights/mpar2", FinetuneConfig())   # `auralens micro finetune`

1. **SFT** (``sft_steps`` steps of ``sft_batch_size``): teacher-forced next-token loss on the
   structured traces of fresh cafe items (``render_target(item, "structured")``: ``<perception>``
   one claim line per sound, ``<reasoning>``, ``<review>``, ``answer : X``), loss on the answer
   tokens only; the batches are built by :func:`interp.micro.train.make_batch`.
2. **GRPO** (``grpo_steps`` steps): per step ``grpo_prompts`` fresh cafe prompts, ``group_size``
   completions each sampled at ``temperature`` (full distribution: no top-k / top-p), each
   scored by :func:`trace_rewards`; advantages ``A = (r − mean_group) / (std_group + 1e-4)``
   (unbiased std, as TRL and DeepSeekMath); loss per completion token
   ``−min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) + β·KL``, with ``ρ`` the ratio to the sampling policy
   (1 at the single update per batch the default makes, so the clip only acts when
   ``grpo_iterations > 1``) and ``KL`` the k3 estimator ``exp(q − p) − (q − p) − 1`` against the
   frozen SFT model ``q``; averaged over all completion tokens of the batch (``loss_type="dapo"``,
   TRL's default; the paper's per-completion average, ``"grpo"``, gives the tokens a wrong
   completion shares with right ones a net push ``Σ A_i / len_i`` ≠ 0 — in one dev run on micro,
   lr 1e-4, it produced duplicated section tags and "chirp down" → "chirp up" flips, dev
   accuracy 0.83 against 0.88 with ``"dapo"`` at the same settings; at lr 2e-4 the two were
   within noise, 0.89 and 0.87).  No value model.  Log-probs use the logits divided by the
   sampling temperature (checked equal, to 1e-6, to the sampler's own log-probs).

**Rewards** (each in [0, 1], from the generated text alone plus the item's ground truth):

- *perception*: the claims made inside ``<perception>`` (:func:`interp.cafe.formats.parse_claims`)
  checked against the scene (:func:`~interp.cafe.formats.check_claims`):
  ``correct / max(claims, 3 · sounds)`` — a sound not described counts as three wrong claims
  (class, pitch, loudness), so describing fewer sounds is not a way to be right more often.
- *consistency* (stepwise perception → reasoning): every checkable statement in
  ``<reasoning>`` and ``<review>`` is compared with what ``<perception>`` claimed, not with the
  truth: ``sound k is X`` / ``the X is sound k`` (class), ``sound k is loud`` (pitch/loudness),
  ``there are N sounds`` / ``i heard N sounds`` (number of sounds described), ``loud : sound a
  and sound b`` / ``no sound is loud`` / ``that is N loud sounds`` (the set of sounds perceived as
  loud).  Reward = consistent / checked; a reasoning section with nothing checkable is
  vacuously consistent (1), a missing or empty one scores 0.
- *answer*: MMAU matching (:func:`interp.generation.score`) of the final ``answer : X`` span.
- *format*: the seven markers ``<perception> </perception> <reasoning> </reasoning> <review>
  </review> answer :`` each on its own line; score = (longest run of markers that occur exactly
  once and appear in the canonical order) / 7.

**Combined reward: the plain geometric mean** ``(r_p · r_c · r_a · r_f)^(1/4)``, as the paper
combines its rewards: a wrong answer, or no perception section, zeroes the reward (no
epsilon).  That is the paper's point — perception counts only inside a trace that is also
consistent, well-formed and right — and GRPO tolerates it: a group whose rewards are all zero
has zero advantage and only the KL term acts on it.

**TRL.**  Phase 1 runs on TRL's :class:`trl.SFTTrainer` (``skip_prepare_dataset``, our
collator = ``make_batch``, which returns ``input_features`` / ``feature_attention_mask`` that
the Trainer passes straight to ``model(**batch)``).  Phase 2 is our own loop because trl 1.16's
``GRPOTrainer`` cannot carry audio through the policy-gradient forward: its rollouts tokenise
prompts with ``processor.apply_chat_template`` and only collect images from the messages
(``_tokenize_prompts``), and the log-prob forward of the policy and the reference
(``_get_per_token_logps_and_entropies``, called from ``_generate_and_score_completions``) takes
only image keyword arguments (``pixel_values``, ``image_grid_thw``, ...), building them with
``processor(images=...)`` only when the prompts had images.  ``input_features`` and
``feature_attention_mask`` never reach that forward, so the loss would be computed on a model
that hears nothing (Qwen2-Audio embeds the ``<|AUDIO|>`` placeholders as plain tokens when
no features are given: no error, silently wrong).  The loop here is ~100 lines around
``model.generate`` and ``model(**batch)`` and passes every processor output through.

**Compute estimate** (``finetune.json["compute_flops"]``, N = parameters, tokens = non-padding
positions, audio placeholders included): SFT ``6·N·tokens``; GRPO sampling ``2·N·(prompt +
generated tokens)``; GRPO updates ``6·N·tokens`` per update; the reference model's forward
``2·N·tokens`` (listed separately; it is real compute the paper's recipe also pays).

**Budget** (``micro``): measured on the shared 2-core development machine (:data:`MEASURED`,
1 thread: 0.36 s per SFT step of 16, 2.3 s per GRPO step of 8 × 8 completions), the defaults —
600 SFT steps (~4 min) and 400 GRPO steps (~16 min), each phase's ``finetune.json["timing"]``
records the real figure — fit in 30 minutes with room for a busy machine (the shipped
``micro-mpar2``: 600 + 400 steps in 19.2 minutes, 0.38 s and 2.30 s per step, 1 thread beside
another 1-thread training run; with ``threads=2`` beside that run SFT took 5.7 s per step —
never give torch more threads than free cores); ``max_minutes``
(28) is a hard stop either way (SFT may use at most :data:`SFT_TIME_SHARE` of it; GRPO stops
early enough to save).  GRPO's learning rate, on dev items (seed 8, 300 structured answers,
greedy), each run 300 SFT + 100 GRPO steps: on the 1530-step micro 2e-4 added +3 points over SFT
alone (0.600 → 0.633; base 0.523) at KL ~0.02/token, while 5e-4 (GRPO only) drifted to KL ~0.6;
on the 4200-step micro (base 0.900, SFT 0.913) no GRPO setting beat SFT alone (0.83–0.89 over
four runs: lr 1e-4 / 2e-4 × both aggregations), so the default is the conservative 1e-4 with
``"dapo"``.  A model this sharp (mean log-prob −0.008 per sampled token at T = 1) yields few
groups whose completions differ, hence little signal per step.

**Resume** (``resume=True``): after SFT the SFT weights are checkpointed in
``.<out>.work/sft``; GRPO checkpoints (weights and AdamW moments as safetensors, optimizer
structure and curves as JSON; nothing pickled) every ``save_every`` steps in ``.<out>.work/grpo``.
An interrupted SFT phase restarts from the base: the Trainer's own checkpoints (``optimizer.pt``,
``rng_state.pth``: pickles) are never written (``save_strategy="no"``) nor resumed from, and its
output folder is deleted after training; the phase is a few minutes.  An interrupted GRPO
phase continues from its last checkpoint with the same items and sampling seeds.  The final
folder (``model.safetensors``, config, processor, ``finetune.json``) appears in one rename.

**On a real checkpoint** (Qwen2-Audio-7B-Instruct, or a Qwen2.5-Omni-7B thinker, on a GPU)::

    cfg = FinetuneConfig(sft_steps=500, sft_batch_size=8, lr=1e-5, grpo_steps=300, grpo_prompts=8,
                         group_size=8, grpo_lr=1e-6, kl_coef=0.04, temperature=1.0,
                         max_new_tokens=256, max_minutes=600, dtype="bfloat16", threads=8)
    finetune("Qwen/Qwen2-Audio-7B-Instruct", "runs/qwen2-audio-mpar2", cfg)

The code path is the same (``load_model`` → the processor's chat template → ``make_batch`` /
``generate`` / ``model(**batch)``); on a GPU the SFT Trainer runs on CUDA (bf16 follows
``dtype``).  Full fine-tuning of 8B parameters needs ~4×80 GB with AdamW; on one GPU wrap the
model with PEFT LoRA before calling :func:`run_sft` / :func:`grpo_update` (not done here).  The
rewards need cafe ground truth (``item.scene``); to train on other data, supply items with a
scene dict in the cafe shape or replace :func:`trace_rewards`.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from interp.errors import ConfigError

__all__ = [
    "FORMAT_MARKERS",
    "MEASURED",
    "REWARD_NAMES",
    "FinetuneConfig",
    "answer_reward",
    "combine_rewards",
    "completion_logprobs",
    "consistency_reward",
    "finetune",
    "format_reward",
    "LOSS_TYPES",
    "group_advantages",
    "grpo_loss",
    "grpo_update",
    "perception_reward",
    "run_sft",
    "sample_completions",
    "split_sections",
    "trace_rewards",
]

REWARD_NAMES: tuple[str, ...] = ("perception", "consistency", "answer", "format")
FORMAT_MARKERS: tuple[str, ...] = (
    "<perception>", "</perception>", "<reasoning>", "</reasoning>", "<review>", "</review>", "answer :",
)
SECTIONS: tuple[str, ...] = ("perception", "reasoning", "review")
SFT_TIME_SHARE = 0.4  # SFT stops after this share of max_minutes, leaving the rest to GRPO
_SAVE_RESERVE_MIN = 0.5  # GRPO stops this many minutes before max_minutes to save
_ADV_EPS = 1e-4
# seeds: SFT items data_seed*100000 + i, GRPO prompts data_seed*100000 + 50000 + i
_BLOCK, _GRPO_OFFSET = 100_000, 50_000

#: seconds per step measured on the shared 2-core development machine (micro; 1 torch thread while
#: another training run held the other core), from which the default step counts were set:
#: SFT at batch 16, GRPO at 8 prompts x 8 completions (~50 generated tokens each).
MEASURED: dict[str, float] = {"sft_step_b16_1thread": 0.36, "grpo_step_p8_g8_1thread": 2.32}


# ----------------------------------------------------------------------------------- config
@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """The MPAR²-style recipe's knobs (see the module docstring).

    Attributes:
        sft_steps, sft_batch_size, lr: phase 1 (AdamW, cosine schedule with warmup).
        grpo_steps, grpo_prompts, group_size, grpo_lr: phase 2 (prompts per step, completions
            per prompt, AdamW learning rate).
        kl_coef: β of the KL penalty to the SFT model.  clip_eps: ε of the clipped ratio.
        grpo_iterations: updates per sampled batch (1: plain policy gradient with a baseline).
        loss_type: ``"dapo"`` (token-level mean over the batch, no length bias; TRL's default) or
            ``"grpo"`` (per-completion mean, the original paper's aggregation).
        temperature, max_new_tokens: sampling of the GRPO completions.
        max_minutes: wall-clock cap of the whole run.  seed: torch / sampling seed.
        data_seed: cafe item block (keep it different from the evaluation seed, 7 by default).
        threads: torch CPU threads.  save_every: GRPO checkpoint period (steps; 0 = never).
        dtype: model dtype ("float32" on CPU; "bfloat16" for a 7B model on GPU).
    """

    sft_steps: int = 600
    sft_batch_size: int = 16
    lr: float = 3e-4
    grpo_steps: int = 400
    grpo_prompts: int = 8
    group_size: int = 8
    grpo_lr: float = 1e-4
    kl_coef: float = 0.04
    clip_eps: float = 0.2
    grpo_iterations: int = 1
    loss_type: str = "dapo"
    temperature: float = 1.0
    max_new_tokens: int = 80
    max_minutes: float = 28.0
    seed: int = 0
    data_seed: int = 3
    threads: int = 2
    save_every: int = 20
    dtype: str = "float32"

    def __post_init__(self) -> None:
        ints = {"sft_steps": 0, "sft_batch_size": 1, "grpo_steps": 0, "grpo_prompts": 1, "group_size": 2,
                "grpo_iterations": 1, "max_new_tokens": 1, "threads": 1, "save_every": 0, "seed": 0, "data_seed": 0}
        for name, lo in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"FinetuneConfig.{name}: expected an integer >= {lo}, found {v!r}")
        positive = ("lr", "grpo_lr", "temperature", "max_minutes")
        for name in (*positive, "kl_coef", "clip_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"FinetuneConfig.{name}: expected a finite number, found {v!r}")
            if (name in positive and v <= 0) or v < 0:
                raise ConfigError(f"FinetuneConfig.{name}: expected a number {'> 0' if name in positive else '>= 0'}, found {v!r}")
        if self.sft_steps + self.grpo_steps == 0:
            raise ConfigError("FinetuneConfig: expected sft_steps + grpo_steps >= 1, found 0 and 0")
        if self.sft_steps * self.sft_batch_size > _GRPO_OFFSET:
            raise ConfigError(
                f"FinetuneConfig: sft_steps * sft_batch_size must be <= {_GRPO_OFFSET} (one seed block), "
                f"found {self.sft_steps * self.sft_batch_size}"
            )
        if self.grpo_steps * self.grpo_prompts > _BLOCK - _GRPO_OFFSET:
            raise ConfigError(
                f"FinetuneConfig: grpo_steps * grpo_prompts must be <= {_BLOCK - _GRPO_OFFSET}, "
                f"found {self.grpo_steps * self.grpo_prompts}"
            )
        if self.data_seed == 7:
            raise ConfigError(
                "FinetuneConfig.data_seed: expected a seed other than 7 (the default evaluation seed of every "
                "stage, so training would see the evaluation items), found 7"
            )
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"FinetuneConfig.loss_type: expected one of {list(LOSS_TYPES)}, found {self.loss_type!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"FinetuneConfig.dtype: expected float32, bfloat16 or float16, found {self.dtype!r}")


# ----------------------------------------------------------------------------------- rewards
def split_sections(text: str) -> dict[str, tuple[int, int] | None]:
    """Line ranges ``(first, last)`` (exclusive) of the content of each section, by line index
    of ``text.split("\\n")`` (the step index of :func:`~interp.cafe.formats.parse_claims`);
    ``None`` when the section's opening or closing tag is missing.  The first opening tag and
    the first closing tag after it delimit a section."""
    lines = [ln.strip().lower() for ln in text.split("\n")]
    out: dict[str, tuple[int, int] | None] = {}
    for name in SECTIONS:
        try:
            a = lines.index(f"<{name}>")
            b = lines.index(f"</{name}>", a + 1)
        except ValueError:
            out[name] = None
            continue
        out[name] = (a + 1, b)
    return out


def _claims_in(text: str, span: tuple[int, int] | None):
    from interp.cafe.formats import parse_claims

    if span is None:
        return []
    return [c for c in parse_claims(text) if span[0] <= c.step < span[1]]


def perception_reward(text: str, scene: Mapping[str, Any]) -> float:
    """Share of the perception section's claims that the scene supports, with every sound not
    described counted as three wrong claims: ``correct / max(claims, 3 · sounds)``."""
    from interp.cafe.formats import check_claims

    claims = _claims_in(text, split_sections(text)["perception"])
    if not claims:
        return 0.0
    correct = sum(ok for _, ok in check_claims(claims, dict(scene)))
    return correct / max(len(claims), 3 * len(scene["events"]), 1)


def _class_words():
    from interp.cafe.questions import CLASS_WORDS

    return CLASS_WORDS


_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _num(s: str) -> int:
    return _NUMBERS.index(s) if s in _NUMBERS else int(s)


def _consistency_patterns():
    words = sorted((re.escape(w) for w in _class_words().values()), key=len, reverse=True)
    cls = "|".join(words)
    num = "|".join(_NUMBERS) + r"|\d+"
    return {
        "reverse_class": re.compile(rf"\bthe\s+({cls})\s+is\s+sound\s+(\d+)\b"),
        "loud_list": re.compile(r"^\s*loud\s*:\s*(.+)$"),
        "no_loud": re.compile(r"\bno\s+sound\s+is\s+loud\b"),
        "n_loud": re.compile(rf"\b(?:that\s+is|there\s+are)\s+({num})\s+loud\s+sounds?\b"),
    }


def consistency_reward(text: str) -> float:
    """Agreement of the reasoning and review sections with the perception section (see the
    module docstring): consistent statements / checked statements."""
    secs = split_sections(text)
    if secs["perception"] is None or secs["reasoning"] is None or secs["reasoning"][0] >= secs["reasoning"][1]:
        return 0.0
    word_cls = {w: c for c, w in _class_words().items()}
    perceived: dict[tuple[int, str], str] = {}
    for c in _claims_in(text, secs["perception"]):
        if c.kind != "count":
            perceived.setdefault((c.sound, c.kind), c.value)
    sounds = {k for k, _ in perceived}
    loud = {k for (k, kind), v in perceived.items() if kind == "loudness" and v == "loud"}
    checks: list[bool] = []
    spans = [s for s in (secs["reasoning"], secs["review"]) if s is not None]
    for c in (c for s in spans for c in _claims_in(text, s)):
        if c.kind == "count":
            checks.append(int(c.value) == len(sounds))
        else:
            checks.append(perceived.get((c.sound, c.kind)) == c.value)
    pat = _consistency_patterns()
    lines = text.split("\n")
    for a, b in spans:
        for line in lines[a:b]:
            line = line.strip().lower()
            for m in pat["reverse_class"].finditer(line):
                checks.append(perceived.get((int(m.group(2)) - 1, "class")) == word_cls[m.group(1)])
            m = pat["loud_list"].match(line)
            if m:
                listed = {int(k) - 1 for k in re.findall(r"sound\s+(\d+)", m.group(1))}
                checks.append(listed == loud)
            if pat["no_loud"].search(line):
                checks.append(not loud)
            for m in pat["n_loud"].finditer(line):
                checks.append(_num(m.group(1)) == len(loud))
    if not checks:
        return 1.0
    return sum(checks) / len(checks)


def answer_reward(text: str, item) -> float:
    """1 when the final answer span matches the item's answer under MMAU's rule, else 0."""
    from interp.generation import score

    return 1.0 if score(item, text)["correct"] else 0.0


def format_reward(text: str) -> float:
    """Longest in-order run of the markers that occur exactly once, over the 7 markers."""
    lines = [ln.strip().lower() for ln in text.split("\n")]
    where: list[int] = []
    for marker in FORMAT_MARKERS:
        if marker == "answer :":
            hits = [i for i, ln in enumerate(lines) if re.match(r"^answer\s*:", ln)]
        else:
            hits = [i for i, ln in enumerate(lines) if ln == marker]
        where.append(hits[0] if len(hits) == 1 else -1)
    # longest increasing subsequence of the present markers' line indices (canonical order)
    seq = [w for w in where if w >= 0]
    best = [1] * len(seq)
    for i in range(len(seq)):
        for j in range(i):
            if seq[j] < seq[i]:
                best[i] = max(best[i], best[j] + 1)
    return (max(best) if best else 0) / len(FORMAT_MARKERS)


def combine_rewards(rewards: Mapping[str, float]) -> float:
    """The geometric mean of the four rewards (MPAR²'s combination; no epsilon: one zero zeroes it)."""
    vals = [float(rewards[k]) for k in REWARD_NAMES]
    for k, v in zip(REWARD_NAMES, vals):
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"reward {k!r}: expected a value in [0, 1], found {v}")
    return float(np.prod(vals) ** (1.0 / len(vals)))


def trace_rewards(text: str, item) -> dict[str, float]:
    """The four rewards of one generated trace for ``item`` (which needs a cafe scene) and
    their geometric mean under ``"total"``."""
    if not item.scene:
        raise ConfigError(f"item {item.item_id!r}: expected a cafe scene (ground truth) for the perception reward, found none")
    r = {
        "perception": perception_reward(text, item.scene),
        "consistency": consistency_reward(text),
        "answer": answer_reward(text, item),
        "format": format_reward(text),
    }
    r["total"] = combine_rewards(r)
    return r


# -------------------------------------------------------------------------------------- GRPO
def group_advantages(rewards, group_size: int):
    """``(r − mean_group) / (std_group + 1e-4)`` with the unbiased std, groups of
    ``group_size`` consecutive completions.  ``rewards``: [groups * group_size]."""
    import torch

    r = torch.as_tensor(rewards, dtype=torch.float32)
    if r.ndim != 1 or group_size < 2 or r.numel() % group_size:
        raise ConfigError(
            f"group_advantages: expected a 1-D tensor of groups of {group_size} (>= 2) rewards, found shape {tuple(r.shape)}"
        )
    g = r.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + _ADV_EPS)).view(-1)


def repeat_batch(batch: Mapping[str, Any], times: int) -> dict[str, Any]:
    """Every per-row tensor of a processor batch repeated ``times`` times, row by row."""
    n = batch["input_ids"].shape[0]
    return {k: v.repeat_interleave(times, dim=0) if hasattr(v, "shape") and v.ndim and v.shape[0] == n else v
            for k, v in batch.items()}


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    out = {int(i) for i in ids if i is not None}
    if tokenizer.eos_token_id is not None:
        out.add(int(tokenizer.eos_token_id))
    return out


def completion_mask(ids, eos_ids: set[int]):
    """1 up to and including each row's first end-of-turn token, 0 after."""
    import torch

    is_eos = torch.zeros_like(ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= ids == e
    after = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first eos
    return (~after).long()


def sample_completions(model, tokenizer, batch, *, group_size: int, temperature: float, max_new_tokens: int,
                       generate_kwargs: Mapping[str, Any] | None = None, suppress_ids: Sequence[int] = ()):
    """Sample ``group_size`` completions per prompt; returns (repeated batch, completion ids
    [rows, new], completion mask [rows, new]), rows grouped by prompt.

    ``suppress_ids``: tokens never sampled — the audio placeholder: a generated ``<|AUDIO|>``
    would make the log-prob forward expect audio features that do not exist."""
    import torch

    rep = repeat_batch(batch, group_size)
    extra = {"suppress_tokens": list(suppress_ids)} if suppress_ids else {}
    with torch.no_grad():
        out = model.generate(
            **rep, do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0,
            max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **extra, **dict(generate_kwargs or {}),
        )
    ids = out[:, rep["input_ids"].shape[1]:]
    return rep, ids, completion_mask(ids, _eos_ids(model, tokenizer))


def completion_logprobs(model, batch: Mapping[str, Any], ids, mask, *, temperature: float = 1.0,
                        suppress_ids: Sequence[int] = ()):
    """Log-probability of each completion token under ``model`` (logits / temperature, the
    ``suppress_ids`` removed as in sampling), with the prompt's audio features passed through:
    [rows, new] (0 where ``mask`` is 0)."""
    import torch

    prompt = batch["input_ids"]
    input_ids = torch.cat([prompt, ids], dim=1)
    attn = torch.cat([batch["attention_mask"], mask.to(batch["attention_mask"].dtype)], dim=1)
    position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    logits = model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids, **extra).logits
    P = prompt.shape[1]
    logits = logits[:, P - 1 : -1].float() / temperature
    if suppress_ids:
        logits[..., list(suppress_ids)] = float("-inf")
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return logp * mask


LOSS_TYPES: tuple[str, ...] = ("dapo", "grpo")


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, *, kl_coef: float, clip_eps: float, loss_type: str = "dapo"):
    """GRPO's objective as a loss: per token ``−min(ρA, clip(ρ)A) + β·KL_k3``, aggregated over the
    completion tokens of the whole batch (``"dapo"``, TRL's default) or over each completion's
    tokens and then over completions (``"grpo"``, the original, which has a length bias: the
    tokens a right and a wrong completion share get a net push ``Σ A_i / len_i`` ≠ 0).
    Returns (loss, stats)."""
    import torch

    m = mask.float()
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    pg = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    d = ref_logp - logp
    kl = torch.expm1(d) - d  # = e^d - d - 1, without cancellation for small d
    per_token = (pg + kl_coef * kl) * m
    if loss_type == "dapo":
        loss = per_token.sum() / m.sum().clamp(min=1)
    elif loss_type == "grpo":
        loss = (per_token.sum(1) / m.sum(1).clamp(min=1)).mean()
    else:
        raise ConfigError(f"loss_type: expected one of {list(LOSS_TYPES)}, found {loss_type!r}")
    mean_kl = float(((kl.detach() * m).sum(1) / m.sum(1).clamp(min=1)).mean())
    return loss, {"kl": mean_kl, "clip_frac": float((((ratio.detach() - 1).abs() > clip_eps).float() * m).sum() / m.sum().clamp(min=1))}


def grpo_update(policy, ref, opt, batch, ids, mask, advantages, *, kl_coef: float, clip_eps: float = 0.2,
                temperature: float = 1.0, iterations: int = 1, max_grad_norm: float = 1.0,
                suppress_ids: Sequence[int] = (), loss_type: str = "dapo") -> dict[str, float]:
    """``iterations`` optimiser steps of GRPO on one sampled batch (completions ``ids`` with
    ``mask`` for the rows of ``batch``, and their ``advantages``)."""
    import torch

    with torch.no_grad():
        ref_logp = completion_logprobs(ref, batch, ids, mask, temperature=temperature, suppress_ids=suppress_ids)
        old_logp = None
    stats: dict[str, float] = {}
    policy.train()
    for _ in range(iterations):
        logp = completion_logprobs(policy, batch, ids, mask, temperature=temperature, suppress_ids=suppress_ids)
        if old_logp is None:
            old_logp = logp.detach()
        loss, stats = grpo_loss(logp, old_logp, ref_logp, advantages.to(logp.device), mask,
                                kl_coef=kl_coef, clip_eps=clip_eps, loss_type=loss_type)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
        opt.step()
        stats["loss"] = float(loss.detach())
    policy.eval()
    return stats


# ------------------------------------------------------------------------------- checkpoints
def _save_folder(folder: Path, model, processor, *, json_files: Mapping[str, Any], opt=None) -> None:
    """Weights (safetensors), processor, JSON files and optimizer state (tensors as safetensors,
    structure as JSON: :func:`interp.micro.train.save_optimizer`) into a temporary folder that
    replaces ``folder`` only when complete.  Nothing is pickled."""
    from interp.micro.train import save_optimizer

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    if opt is not None:
        save_optimizer(tmp, opt)
    for name, obj in json_files.items():
        (tmp / name).write_text(json.dumps(obj, indent=2, default=str))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _load_weights(model, folder: Path) -> None:
    """Load a checkpoint written by ``save_pretrained`` into ``model`` (strict).  Through
    ``from_pretrained``: transformers renames keys on save (``model.audio_tower.*`` is stored as
    ``audio_tower.*``), so the raw safetensors keys do not match ``model.state_dict()``."""
    param = next(model.parameters())
    loaded = type(model).from_pretrained(str(folder), dtype=param.dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)


# --------------------------------------------------------------------------------------- SFT
def _items(cfg: FinetuneConfig, start: int, n: int):
    from interp.cafe.questions import make_item

    return [make_item(cfg.data_seed * _BLOCK + start + i) for i in range(n)]


def run_sft(lm, cfg: FinetuneConfig, *, work_dir: Path, max_minutes: float, progress: bool = True) -> dict[str, Any]:
    """Phase 1 on TRL's SFTTrainer: structured traces of ``sft_steps * sft_batch_size`` fresh cafe
    items, batches from :func:`interp.micro.train.make_batch`.  Trains ``lm.model`` in place."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from interp.cafe.questions import make_item
    from interp.micro.train import make_batch

    n_items = cfg.sft_steps * cfg.sft_batch_size
    seeds = [cfg.data_seed * _BLOCK + i for i in range(n_items)]
    tokens = {"n": 0}

    def collate(rows):
        items = [make_item(int(r["seed"])) for r in rows]
        batch, labels = make_batch(lm.processor, items, ["structured"] * len(items))
        tokens["n"] += int(batch["attention_mask"].sum())
        return {**batch, "labels": labels}

    t0 = time.time()

    class Deadline(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if (time.time() - t0) / 60 > max_minutes:
                control.should_training_stop = True
            return control

    on_cpu = lm.device.type == "cpu"
    args = SFTConfig(
        output_dir=str(work_dir / "trl"), max_steps=cfg.sft_steps, per_device_train_batch_size=cfg.sft_batch_size,
        learning_rate=cfg.lr, lr_scheduler_type="cosine", warmup_steps=max(1, cfg.sft_steps // 20),
        weight_decay=0.0, max_grad_norm=1.0, seed=cfg.seed, data_seed=cfg.seed,
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False, report_to=[],
        use_cpu=on_cpu, save_strategy="no", logging_steps=1, dataloader_num_workers=0, disable_tqdm=not progress,
        bf16=(not on_cpu and cfg.dtype == "bfloat16"), fp16=False, activation_checkpointing=False,
    )
    trainer = SFTTrainer(model=lm.model, args=args, train_dataset=Dataset.from_dict({"seed": seeds}),
                         data_collator=collate, processing_class=lm.processor, callbacks=[Deadline()])
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # the per-step log lines
    use_cache = lm.model.config.get_text_config().use_cache
    trainer.train()
    shutil.rmtree(work_dir / "trl", ignore_errors=True)
    # The Trainer (accelerate's prepare) leaves a wrapped ``forward`` in the instance's __dict__,
    # bound to this instance: a deepcopy of the model (GRPO's reference) would keep calling
    # *this* model's forward, and the KL to the reference would be identically zero.
    lm.model.__dict__.pop("forward", None)
    if getattr(lm.model, "is_activation_checkpointing", False):
        lm.model.activation_checkpointing_disable()
    lm.model.config.get_text_config().use_cache = use_cache
    lm.model.eval()
    torch.set_num_threads(cfg.threads)  # the Trainer may change it
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    return {"steps": int(trainer.state.global_step), "losses": [round(x, 5) for x in losses],
            "tokens": tokens["n"], "minutes": round((time.time() - t0) / 60, 3)}


# -------------------------------------------------------------------------------------- main
def _n_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _base_training(source: str) -> dict[str, Any] | None:
    """Provenance of an embedded / locally trained base: its training.json summary, if any."""
    p = Path(source) / "training.json"
    if not p.exists():
        return None
    info = json.loads(p.read_text())
    return {k: info.get(k) for k in ("steps_done", "items_seen", "minutes", "final_loss")}


def _compute(n_params: int, sft_tokens: int, sample_tokens: int, update_tokens: int, ref_tokens: int) -> dict[str, float]:
    c = {
        "sft": 6.0 * n_params * sft_tokens,
        "grpo_sampling": 2.0 * n_params * sample_tokens,
        "grpo_updates": 6.0 * n_params * update_tokens,
        "grpo_reference": 2.0 * n_params * ref_tokens,
    }
    c["total"] = sum(c.values())
    return c


def finetune(base_dir: str | Path, out_dir: str | Path, cfg: FinetuneConfig = FinetuneConfig(), *,
             resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``base_dir`` (anything :func:`interp.loading.load_model` loads: ``"micro"``, a
    folder, a hub id) the MPAR² way into ``out_dir``; returns what ``finetune.json`` holds."""
    import copy

    import torch

    from interp.generation import model_inputs
    from interp.loading import load_model

    if not isinstance(cfg, FinetuneConfig):
        raise ConfigError(f"cfg: expected a FinetuneConfig, found {type(cfg).__name__}")
    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    out_dir = Path(out_dir)
    work = out_dir.with_name(f".{out_dir.name}.work")
    cfg_dict = asdict(cfg)
    runtime = {"max_minutes", "threads", "save_every"}  # may change between sessions
    identity = {k: v for k, v in cfg_dict.items() if k not in runtime}
    if (out_dir / "finetune.json").exists():
        done = json.loads((out_dir / "finetune.json").read_text())
        if resume and {k: v for k, v in done.get("config", {}).items() if k not in runtime} == identity:
            return done
        raise ConfigError(
            f"finetune: expected no finished fine-tune in {out_dir}, found one (finetune.json); "
            "choose another folder or remove it"
        )
    state: dict[str, Any] = {}
    if resume and (work / "state.json").exists():
        state = json.loads((work / "state.json").read_text())
        old = {k: v for k, v in state.get("config", {}).items() if k not in runtime}
        if old != identity or state.get("base") != str(base_dir):
            raise ConfigError(f"finetune --resume: {work} was started with {old} on {state.get('base')}, not {identity} on {base_dir}")
    elif work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    minutes_before = float(state.get("minutes", 0.0))

    def minutes() -> float:
        return minutes_before + (time.time() - t_start) / 60

    def save_state(**changes) -> None:
        state.update(changes, config=cfg_dict, base=str(base_dir), minutes=round(minutes(), 3))
        (work / "state.json").write_text(json.dumps(state, indent=2))

    lm = load_model(str(base_dir), dtype=cfg.dtype)
    n_params = _n_params(lm.model)
    torch.manual_seed(cfg.seed)

    # ---- phase 1: SFT -------------------------------------------------------------------
    if "sft" in state and (work / "sft" / "config.json").exists():
        _load_weights(lm.model, work / "sft")
        sft = state["sft"]
    elif cfg.sft_steps > 0:
        sft = run_sft(lm, cfg, work_dir=work, max_minutes=cfg.max_minutes * SFT_TIME_SHARE - minutes(), progress=progress)
        torch.set_num_threads(cfg.threads)
        _save_folder(work / "sft", lm.model, lm.processor, json_files={})
        save_state(sft=sft)
    else:
        sft = {"steps": 0, "losses": [], "tokens": 0, "minutes": 0.0}
        save_state(sft=sft)

    # ---- phase 2: GRPO ------------------------------------------------------------------
    policy = lm.model
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.grpo_lr, weight_decay=0.0, betas=(0.9, 0.99))
    grpo = state.get("grpo", {"steps": 0, "curves": [], "sample_tokens": 0, "update_tokens": 0, "ref_tokens": 0,
                              "step_seconds": []})
    from interp.micro.train import has_optimizer, load_optimizer

    if grpo["steps"] and has_optimizer(work / "grpo"):
        _load_weights(policy, work / "grpo")
        load_optimizer(work / "grpo", opt)
    suppress = [int(lm.arch.audio_token_id)]
    bar = None
    if progress and cfg.grpo_steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.grpo_steps, initial=grpo["steps"], desc="GRPO", unit="step")
    stopped_early = False
    for step in range(grpo["steps"], cfg.grpo_steps):
        if minutes() > cfg.max_minutes - _SAVE_RESERVE_MIN:
            stopped_early = True
            break
        t0 = time.time()
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        items = _items(cfg, _GRPO_OFFSET + step * cfg.grpo_prompts, cfg.grpo_prompts)
        batch = model_inputs(lm, items, "structured")
        policy.eval()
        rep, ids, mask = sample_completions(policy, lm.tokenizer, batch, group_size=cfg.group_size,
                                            temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                            generate_kwargs=lm.arch.table.generate_kwargs, suppress_ids=suppress)
        from interp.tokenizer import clean_decoded

        texts = [clean_decoded(t) for t in lm.tokenizer.batch_decode(ids * mask + lm.tokenizer.pad_token_id * (1 - mask),
                                                                      skip_special_tokens=True)]
        rewards = [trace_rewards(t, items[i // cfg.group_size]) for i, t in enumerate(texts)]
        total = torch.tensor([r["total"] for r in rewards])
        adv = group_advantages(total, cfg.group_size)
        stats = grpo_update(policy, ref, opt, rep, ids, mask, adv, kl_coef=cfg.kl_coef, clip_eps=cfg.clip_eps,
                            temperature=cfg.temperature, iterations=cfg.grpo_iterations, suppress_ids=suppress,
                            loss_type=cfg.loss_type)
        seq_tokens = int(rep["attention_mask"].sum() + mask.sum())
        grpo["sample_tokens"] += seq_tokens
        grpo["update_tokens"] += seq_tokens * cfg.grpo_iterations
        grpo["ref_tokens"] += seq_tokens
        g = total.view(-1, cfg.group_size)
        row = {"step": step, **{k: round(float(np.mean([r[k] for r in rewards])), 4) for k in (*REWARD_NAMES, "total")},
               "zero_std_groups": int((g.std(1) < 1e-8).sum()), "completion_tokens": round(float(mask.sum(1).float().mean()), 2),
               **{k: float(f"{v:.6g}") for k, v in stats.items()}}
        grpo["curves"].append(row)
        grpo["step_seconds"].append(round(time.time() - t0, 3))
        grpo["steps"] = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{row['total']:.3f}", acc=f"{row['answer']:.2f}", kl=f"{row['kl']:.3f}")
        if cfg.save_every and grpo["steps"] % cfg.save_every == 0 and grpo["steps"] < cfg.grpo_steps:
            _save_folder(work / "grpo", policy, lm.processor, json_files={}, opt=opt)
            save_state(grpo=grpo)
    if bar is not None:
        bar.close()

    # ---- final folder -------------------------------------------------------------------
    policy.eval()
    sft_steps_s = sft["minutes"] * 60 / max(sft["steps"], 1)
    info = {
        "recipe": "MPAR²-style SFT (TRL SFTTrainer) + GRPO (own loop), see interp.micro.finetune",
        "base": str(base_dir), "base_source": lm.source, "base_training": _base_training(lm.source),
        "config": cfg_dict, "n_params": n_params,
        "sft": sft,
        "grpo": {k: v for k, v in grpo.items() if k not in ("step_seconds", "curves")},  # curves: reward_curves
        "steps": {"sft": sft["steps"], "grpo": grpo["steps"]},
        "stopped_early": stopped_early or sft["steps"] < cfg.sft_steps,
        "minutes": round(minutes(), 3),
        "timing": {"sft_seconds_per_step": round(sft_steps_s, 3),
                   "grpo_seconds_per_step": round(float(np.mean(grpo["step_seconds"])), 3) if grpo["step_seconds"] else None,
                   "threads": cfg.threads},
        "reward_curves": grpo["curves"],
        "compute_flops": _compute(n_params, sft["tokens"], grpo["sample_tokens"], grpo["update_tokens"], grpo["ref_tokens"]),
        "rewards": {"combination": "geometric mean, no epsilon", "names": list(REWARD_NAMES)},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _save_folder(out_dir, policy, lm.processor, json_files={"finetune.json": info})
    shutil.rmtree(work, ignore_errors=True)
    return info
