"""Audio -> silence activation patching, per decoder layer x position group.

Two runs of one prompt differ only in their audio: the item's real clip ("clean") and digital
silence of the same length ("corrupt"); the audio placeholders, and so every token id and
position, are identical (checked).  Patching copies the residual stream
(``lm.blocks.{L}.hook_resid_post``, the output of decoder layer ``L``) of one run into the
other at a group of positions:

- ``before_audio``: prompt tokens before the first audio token.  In a causal decoder they
  cannot see the audio, so both runs hold the same values there: patching them changes nothing.
  It is the built-in null (tested: exactly no effect).
- ``audio``: the audio tokens;
- ``after_audio``: prompt tokens after the last audio token, except the last prompt token;
- ``last_prompt``: the last prompt token (where the answer is read out);
- ``all``: every position, the scored answer tokens too.  Denoising at ``all`` reproduces the
  clean run from layer ``L`` on (tested: exactly the clean score).

``direction="denoise"`` runs the silence prompt with clean values patched in (what is
*sufficient* to restore the answer); ``"noise"`` runs the real prompt with silence values
patched in (what is *necessary*).

The score of a run is the log-probability the model gives the correct choice among the
choices: each choice's answer text (``render_target``'s direct answer, "answer : <choice>",
the text `micro` and smol-audio are trained to produce) is teacher-forced after the prompt;
``score = log_softmax_c(sum_t log p(target_c,t))[correct]``.  The effect of a patch is
``patched - corrupt`` (denoise) or ``clean - patched`` (noise), per item; the table reports its
mean with a bootstrap CI over items and the *restored share* ``sum(patched - corrupt) /
sum(clean - corrupt)``.

Hand-written because no kept library does this over a multimodal ``generate``-style prompt:
nnsight and TransformerLens patch activations, but neither knows where the audio tokens are nor
scores multiple-choice answers; ``tests/unit/test_patching.py`` checks the patched scores
against nnsight doing the same patch (``envoy.trace`` assigning the layer's output).

Public API: :data:`PATCH_GROUPS`, :data:`PATCH_DIRECTIONS`, :class:`ChoiceInputs`, :func:`choice_inputs`,
:func:`choice_scores`, :func:`prompt_lengths`,
:func:`group_masks`, :func:`patch_residual`, :func:`activation_patching`,
:func:`patching_table`, :class:`PatchConfig`, :func:`stage_patch`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from auralens.interp.arch import site_name
from auralens.interp.audio import item_audio, silence_like
from auralens.interp.cafe.formats import render_target
from auralens.interp.capture import capture, site_hooks, with_position_ids
from auralens.interp.distributed import on_main
from auralens.interp.errors import ArchitectureError, ConfigError
from auralens.interp.generation import batches, cast_features
from auralens.interp.prompts import build_inputs
from auralens.interp.runs import check_dtype, check_int, check_n, load_items, open_run
from auralens.interp.stage_config import DTYPE_HELP, ModelDataConfig, option, takes_config
from auralens.interp.stats import bootstrap_mean_ci

__all__ = [
    "PATCH_DIRECTIONS",
    "PATCH_GROUPS",
    "PatchConfig",
    "ChoiceInputs",
    "activation_patching",
    "choice_inputs",
    "choice_scores",
    "prompt_lengths",
    "group_masks",
    "patch_residual",
    "patching_table",
    "stage_patch",
]

PATCH_GROUPS = ("before_audio", "audio", "after_audio", "last_prompt", "all")
PATCH_DIRECTIONS = ("denoise", "noise")
SITE = "hook_resid_post"


def _target(item, choice: str) -> str:
    return render_target(dataclasses.replace(item, answer=choice), "direct")


def _check_groups(groups: Sequence[str]) -> tuple[str, ...]:
    groups = tuple(groups)
    bad = [g for g in groups if g not in PATCH_GROUPS]
    if not groups or bad:
        raise ConfigError(f"groups: expected one or more of {PATCH_GROUPS}, found {list(groups)!r}")
    return groups


# --------------------------------------------------------------------------------------------
# Inputs, masks, scores
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ChoiceInputs:
    """One choice slot of a batch: clean and corrupt inputs (same ids), the positions of the
    scored answer tokens, and which rows have this choice at all."""

    clean: dict[str, Any]
    corrupt: dict[str, Any]
    target: Any  # [B, P] bool: the answer tokens (scored: log p of each given its prefix)
    prompt: Any  # [B, P] bool: real prompt positions (not padding, not the answer)
    valid: np.ndarray  # [B] bool


def _build(lm, items: Sequence, audios: Sequence[np.ndarray], targets: Sequence[str] | None = None):
    return build_inputs(lm.processor, items, "direct", audios=audios, targets=targets,
                        audio_kwarg=lm.arch.table.processor_audio_kwarg, template=lm.prompt_template)


def prompt_lengths(lm, items: Sequence, audios: Sequence[np.ndarray]):
    """Real (non-padding) tokens of each item's prompt without an answer: [B]."""
    return _build(lm, items, audios)["attention_mask"].sum(1)


def choice_inputs(lm, items: Sequence, audios: Sequence[np.ndarray], j: int, n_prompt=None) -> ChoiceInputs:
    """Choice slot ``j`` of ``items`` (``n_prompt``: :func:`prompt_lengths`, the same for every
    slot of a batch; computed when not given)."""
    import torch

    valid = np.array([j < len(it.choices) for it in items])
    targets = [_target(it, it.choices[j] if j < len(it.choices) else it.choices[0]) for it in items]
    silence = [silence_like(a) for a in audios]
    clean = _build(lm, items, audios, targets)
    corrupt = _build(lm, items, silence, targets)
    if not torch.equal(clean["input_ids"], corrupt["input_ids"]):
        raise ArchitectureError(f"{lm.arch.name}: expected the same token ids with real and silent audio of the same "
                                "length, found different ids (the processor counts audio tokens by content?)")
    mask = clean["attention_mask"].bool()
    n_prompt = prompt_lengths(lm, items, audios) if n_prompt is None else n_prompt
    n_full = mask.sum(1)
    target = torch.zeros_like(mask)
    prompt = torch.zeros_like(mask)
    for r in range(mask.shape[0]):
        real = mask[r].nonzero().flatten()
        k = int(n_full[r] - n_prompt[r])
        if k < 1:
            raise ArchitectureError(f"item {items[r].item_id!r}: expected answer tokens after the prompt, found none")
        target[r, real[-k:]] = True
        prompt[r, real[:-k]] = True

    def ready(b):
        return with_position_ids(lm.arch, dict(cast_features(lm, b.to(lm.device))))

    return ChoiceInputs(clean=ready(clean), corrupt=ready(corrupt), target=target, prompt=prompt, valid=valid)


def group_masks(ids, prompt, target, audio_token_id: int, groups: Sequence[str]) -> dict[str, Any]:
    """``{group: [B, P] bool}`` for the position groups (module docstring) of a batch whose
    real prompt positions are ``prompt`` and scored answer positions ``target``."""
    import torch

    audio = (ids.cpu() == audio_token_id) & prompt
    out = {}
    for g in _check_groups(groups):
        m = torch.zeros_like(prompt)
        for r in range(prompt.shape[0]):
            pos = prompt[r].nonzero().flatten()
            a = audio[r].nonzero().flatten()
            if g == "all":
                m[r] = prompt[r] | target[r]
            elif g == "last_prompt":
                m[r, pos[-1]] = True
            elif len(a) == 0:
                continue
            elif g == "audio":
                m[r] = audio[r]
            elif g == "before_audio":
                m[r, pos[pos < a[0]]] = True
            elif g == "after_audio":
                m[r, pos[(pos > a[-1]) & (pos < pos[-1])]] = True
        out[g] = m
    return out


def _target_logprob(logits, ids, target) -> Any:
    """Sum over the answer positions t of log p(ids[t] | ids[<t]): [B]."""
    import torch

    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None].to(logits.device))[..., 0]
    return (lp * target[:, 1:].to(lp.device)).sum(1)


def _forward_logprob(lm, inputs, target) -> Any:
    import torch

    with torch.inference_mode():
        logits = lm.model(**inputs, use_cache=False).logits
    return _target_logprob(logits, inputs["input_ids"], target).cpu()


def choice_scores(logprobs: np.ndarray, valid: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """``log_softmax`` over each item's choices of the answers' log-probabilities, at the correct
    choice: ``logprobs``/``valid`` [B, C], ``correct`` [B] -> [B]."""
    lp = np.where(valid, logprobs, -np.inf)
    m = lp.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(lp - m).sum(1))
    return lp[np.arange(len(correct)), correct] - lse


@contextlib.contextmanager
def patch_residual(lm, layer: int, mask, source) -> Iterator[None]:
    """Within the block, the output of decoder layer ``layer`` at ``mask`` ([B, P] bool) is
    replaced by ``source`` ([B, P, width]) at the same positions (hooks removed on exit)."""
    import torch

    point = lm.arch.hook_point(site_name(int(layer), SITE))
    m = mask.to(lm.device)

    def hook(value):
        if value.shape[:2] != m.shape:
            raise ArchitectureError(f"patch layer {layer}: expected values [B, P] = {tuple(m.shape)}, "
                                    f"found {tuple(value.shape)} (a cached decoding step?)")
        return torch.where(m[..., None], source.to(device=value.device, dtype=value.dtype), value)

    with site_hooks(lm.model, [(point, hook)]):
        yield


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------


def activation_patching(lm, items: Sequence, *, layers: Sequence[int] | None = None,
                        groups: Sequence[str] = PATCH_GROUPS, direction: str = "denoise",
                        batch_size: int = 8) -> list[dict[str, Any]]:
    """Per item: the clean and corrupt scores, and per (layer, group) the patched score.

    Rows: ``item_id, layer, group, clean, corrupt, patched, effect`` (``effect``: patched -
    corrupt for denoise, clean - patched for noise; NaN where an item has no position in the
    group, e.g. no audio tokens)."""
    groups = _check_groups(groups)
    if direction not in PATCH_DIRECTIONS:
        raise ConfigError(f"direction: expected one of {PATCH_DIRECTIONS}, found {direction!r}")
    n_layers = lm.arch.n_layers
    layers = tuple(range(n_layers)) if layers is None else tuple(int(x) for x in layers)
    bad = [x for x in layers if not 0 <= x < n_layers]
    if not layers or bad:
        raise ConfigError(f"layers: expected decoder layers in 0..{n_layers - 1}, found {list(layers)}")
    sites = [site_name(L, SITE) for L in layers]
    rows: list[dict[str, Any]] = []
    for chunk in batches(list(items), batch_size):
        audios = [item_audio(it, lm.processor) for it in chunk]
        n_choices = max(len(it.choices) for it in chunk)
        correct = np.array([it.answer_index for it in chunk])
        base = {"clean": np.zeros((len(chunk), n_choices)), "corrupt": np.zeros((len(chunk), n_choices))}
        patched = np.zeros((len(layers), len(groups), len(chunk), n_choices))
        has = np.ones((len(groups), len(chunk)), dtype=bool)
        valid = np.zeros((len(chunk), n_choices), dtype=bool)
        n_prompt = prompt_lengths(lm, chunk, audios)
        for j in range(n_choices):
            ci = choice_inputs(lm, chunk, audios, j, n_prompt)
            valid[:, j] = ci.valid
            base["clean"][:, j] = _forward_logprob(lm, ci.clean, ci.target).numpy()
            base["corrupt"][:, j] = _forward_logprob(lm, ci.corrupt, ci.target).numpy()
            src_run, run = (ci.clean, ci.corrupt) if direction == "denoise" else (ci.corrupt, ci.clean)
            src = capture(lm, src_run, sites, stop_early=True)
            masks = group_masks(ci.clean["input_ids"], ci.prompt, ci.target, lm.arch.audio_token_id, groups)
            for gi, g in enumerate(groups):
                has[gi] &= masks[g].any(1).numpy()
                for li, L in enumerate(layers):
                    with patch_residual(lm, L, masks[g], src[site_name(L, SITE)]):
                        patched[li, gi, :, j] = _forward_logprob(lm, run, ci.target).numpy()
        clean = choice_scores(base["clean"], valid, correct)
        corrupt = choice_scores(base["corrupt"], valid, correct)
        for li, L in enumerate(layers):
            for gi, g in enumerate(groups):
                p = choice_scores(patched[li, gi], valid, correct)
                eff = p - corrupt if direction == "denoise" else clean - p
                for r, it in enumerate(chunk):
                    rows.append({"item_id": str(it.item_id), "layer": L, "group": g, "direction": direction,
                                 "clean": float(clean[r]), "corrupt": float(corrupt[r]), "patched": float(p[r]),
                                 "effect": float(eff[r]) if has[gi, r] else float("nan")})
    return rows


def patching_table(rows: Sequence[Mapping[str, Any]], *, n_boot: int = 1000, seed: int = 0):
    """Per (layer, group): n, mean effect with its item-bootstrap CI, and the restored share
    ``sum(effect) / sum(clean - corrupt)`` over the items with a position in the group."""
    import pandas as pd

    df = pd.DataFrame(list(rows))
    out = []
    df["group"] = pd.Categorical(df["group"], categories=[g for g in PATCH_GROUPS if g in set(df["group"])])
    for (L, g), d in df.groupby(["layer", "group"], sort=True, observed=True):
        d = d[d["effect"].notna()]
        if not len(d):
            out.append({"layer": int(L), "group": str(g), "n": 0, "effect": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                        "restored": np.nan})
            continue
        eff = d["effect"].to_numpy()
        if np.ptp(eff) == 0:  # every item the same (e.g. the exact null before the audio): no interval to draw
            m = lo = hi = float(eff[0])
        else:
            m, lo, hi = bootstrap_mean_ci(eff, n_boot=n_boot, seed=seed)
        gap = float((d["clean"] - d["corrupt"]).sum())
        out.append({"layer": int(L), "group": str(g), "n": len(d), "effect": float(m), "ci_low": float(lo),
                    "ci_high": float(hi), "restored": float(d["effect"].sum()) / gap if gap else np.nan})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class PatchConfig(ModelDataConfig):
    """``auralens patch``: audio -> silence activation patching per layer x position group."""

    COMMAND = "auralens patch"

    data: str = option("cafe-neutral:test", short="-d", help="Items to patch (any dataset).")
    n: int = option(32, help="Items (>= 1).")
    direction: str = option("denoise", help="denoise (silence run, clean values patched in: what suffices) | "
                                            "noise (real run, silence values patched in: what is needed).")
    groups: str = option(",".join(PATCH_GROUPS), help=f"Position groups, comma-separated: {', '.join(PATCH_GROUPS)}.")
    layers: str = option("all", help="Decoder layers (comma-separated) or 'all'.")
    batch_size: int = option(8, identity=False, help="Items per forward batch (>= 1).")
    n_boot: int = option(1000, help="Bootstrap resamples of the CIs (>= 1).")
    seed: int = option(7, help="Data seed and bootstrap seed.")
    out: Path | None = option(None, identity=False, help="Run folder (default: runs/patch-<model>).")
    dtype: str = option("auto", help=DTYPE_HELP)
    command: str = option("auralens patch", identity=False, cli=False, help="The command line that started the run.")

    def __post_init__(self) -> None:
        check_n(self.n)
        for name in ("batch_size", "n_boot"):
            check_int(name, getattr(self, name))
        if self.direction not in PATCH_DIRECTIONS:
            raise ConfigError(f"direction: expected one of {PATCH_DIRECTIONS}, found {self.direction!r}")
        self.group_list()
        self.layer_list()
        check_dtype(self.dtype)
        if self.out is not None:
            self._set("out", Path(self.out))

    def group_list(self) -> tuple[str, ...]:
        if not isinstance(self.groups, str):
            raise ConfigError(f"groups: expected comma-separated names from {PATCH_GROUPS}, found {self.groups!r}")
        return _check_groups([g.strip() for g in self.groups.split(",") if g.strip()])

    def layer_list(self) -> tuple[int, ...] | None:
        text = str(self.layers).strip()
        if text == "all":
            return None
        try:
            got = tuple(int(x) for x in text.split(","))
        except ValueError:
            raise ConfigError(f"layers: expected 'all' or comma-separated layer numbers, found {self.layers!r}") from None
        if not got or min(got) < 0 or len(set(got)) != len(got):
            raise ConfigError(f"layers: expected distinct non-negative layer numbers, found {self.layers!r}")
        return got

    @property
    def run_folder(self) -> Path:
        return self.out if self.out is not None else Path("runs") / f"patch-{Path(self.model).name}"


@takes_config(PatchConfig)
def stage_patch(cfg: PatchConfig, *, lm=None, quiet: bool = False) -> dict[str, Any]:
    """The patching run into ``cfg.run_folder``: ``items.parquet`` (per item, layer, group) and
    ``patching.parquet`` (the table) + ``patching.json`` (the summary, also returned).  Options,
    items and the layers (against the model) are checked before the folder exists."""
    import pandas as pd

    items = load_items(cfg.data, n=cfg.n, seed=cfg.seed)
    layers = cfg.layer_list()

    def before_create(loaded):
        if layers is not None and max(layers) >= loaded.arch.n_layers:
            raise ConfigError(f"layers: expected decoder layers in 0..{loaded.arch.n_layers - 1} "
                              f"({loaded.arch.name}), found {list(layers)}")

    run, lm = open_run(cfg.run_folder, manifest=cfg.manifest(), items=items, lm=lm, model=cfg.model,
                       dtype=cfg.dtype, device_map=cfg.device_map, before_create=before_create)
    rows = activation_patching(lm, items, layers=layers, groups=cfg.group_list(), direction=cfg.direction,
                               batch_size=cfg.batch_size)
    table = patching_table(rows, n_boot=cfg.n_boot, seed=cfg.seed)

    def finish():
        frame = pd.DataFrame(rows)
        run.write_table("items.parquet", frame)
        run.write_table("patching.parquet", table)
        df = frame.drop_duplicates("item_id")
        summary = {"model": cfg.model, "data": cfg.data, "n": len(items), "direction": cfg.direction,
                   "clean_minus_corrupt": float((df["clean"] - df["corrupt"]).mean()), "run": str(cfg.run_folder),
                   "table": table.replace({np.nan: None}).to_dict("records")}
        run.write_json("patching.json", summary)
        run.mark_stage("patch", n_items=len(items))
        run.finish()
        return summary

    return on_main(finish)
