"""Head ablation: silence chosen attention heads during a forward or ``generate``, and the causal
check of the listening signal (do the top-k listening heads matter more than k random ones?).

A head's output is its slice of the attention output projection's *input* (the
``lm.blocks.{L}.attn.hook_z`` site of :mod:`auralens.interp.arch`): ``z[..., h*d:(h+1)*d]`` with
``d = head_dim``.  For grouped-query attention models heads are *query* heads (``n_heads`` of
them per layer; ``z`` is ``n_heads * head_dim`` wide whatever ``n_kv_heads`` is).

- **zero-ablation** replaces that slice by 0 (the head adds nothing, not even its bias-free
  share of ``o_proj``);
- **mean-ablation** replaces it by the head's mean output over a reference set
  (:func:`head_means`: every real, non-padding prompt position of calibration items, real
  audio; or, ``positions="text"``, those that are not audio tokens), so the layer keeps the
  head's average contribution and loses only what varies with the input.

The hooks are installed with :func:`auralens.interp.capture.site_hooks` (the one hook engine:
removed on exit, also when the block raises) and act at every position of every forward in the
block, prefill and decoding steps alike.  Ablating no heads installs nothing, so the model is
bit-identical.  ``tests/unit/test_ablation.py`` checks the logits against nnsight doing the same
edit (``envoy.trace``, assigning the o_proj input).

The causal check (:func:`causal_check`, ``auralens ablate``): held-out accuracy with the top-k
listening heads ablated (ranked on calibration items, a record run's ``heads.parquet``) against
``R`` draws of k random heads from the heads that also attend to the audio (mean audio yield
>= ``min_yield``, top-k excluded; ``match_layers``: as many heads per layer as the top-k has).
The ranking's items must not be the test items (checked).  Per test item ``i``: ``c0`` (no ablation), ``ct`` (top-k),
``cr[r]`` (draw r).  The effect is ``drop_top - drop_random = mean_i mean_r cr[r, i] -
mean_i ct[i]``; its 95% CI is a percentile bootstrap that resamples the items (paired: every
condition keeps the same items) and, independently, the random draws (so the CI also carries
which random heads were drawn); ``ci_items`` beside it resamples the items only.

Public API: :data:`ABLATION_MODES`, :func:`check_heads`, :func:`parse_heads`, :func:`head_means`,
:func:`ablate_heads`, :func:`random_head_sets`, :func:`listening_pool`, :func:`ablation_effect`,
:func:`causal_check`, :class:`AblateConfig`, :func:`stage_ablate`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auralens.interp.arch import site_name
from auralens.interp.capture import capture, site_hooks, with_position_ids
from auralens.interp.dataspec import DataSpec
from auralens.interp.distributed import on_main
from auralens.interp.errors import ConfigError
from auralens.interp.evaluate import run_eval
from auralens.interp.generation import GenerationConfig, batches, cast_features, model_inputs
from auralens.interp.listening import MIN_YIELD
from auralens.interp.record import read_heads_source, stage_record
from auralens.interp.runs import check_dtype, check_formats, check_int, check_n, load_items, open_run
from auralens.interp.stage_config import DTYPE_HELP, ModelDataConfig, option, takes_config

__all__ = [
    "ABLATION_MODES",
    "AblateConfig",
    "ablate_heads",
    "ablation_effect",
    "causal_check",
    "check_heads",
    "head_means",
    "listening_pool",
    "parse_heads",
    "random_head_sets",
    "stage_ablate",
]

ABLATION_MODES = ("zero", "mean")
RANK_COLUMNS = ("rank", "corr_rank", "contrast_rank")
MEAN_POSITIONS = ("all", "text")

Head = tuple[int, int]


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------


def check_heads(arch, heads: Sequence[Sequence[int]], name: str = "heads") -> tuple[Head, ...]:
    """``heads`` as distinct ``(layer, head)`` int pairs that exist in ``arch`` (query heads),
    else a ConfigError naming ``name``."""
    out: list[Head] = []
    for h in heads:
        if (not isinstance(h, (tuple, list)) or len(h) != 2
                or any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) for x in h)):
            raise ConfigError(f"{name}: expected (layer, head) pairs of integers, found {h!r}")
        out.append((int(h[0]), int(h[1])))
    bad = [h for h in out if not (0 <= h[0] < arch.n_layers and 0 <= h[1] < arch.n_heads)]
    if bad:
        raise ConfigError(f"{name}: {arch.name} has {arch.n_layers} layers x {arch.n_heads} (query) heads, "
                          f"found {bad}")
    if len(set(out)) != len(out):
        raise ConfigError(f"{name}: expected distinct (layer, head) pairs, found {out}")
    return tuple(out)


def parse_heads(text: str, name: str = "heads") -> tuple[Head, ...]:
    """``"0.1,2.3"`` (layer.head, comma-separated) -> ((0, 1), (2, 3)); ConfigError naming ``name``."""
    out = []
    for part in str(text).split(","):
        layer, dot, head = part.strip().partition(".")
        if not dot or not layer.isdigit() or not head.isdigit():
            raise ConfigError(f"{name}: expected comma-separated layer.head pairs such as '0.1,2.3', "
                              f"found {part.strip()!r} in {text!r}")
        out.append((int(layer), int(head)))
    return tuple(out)


def _by_layer(heads: Sequence[Head]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(layer, []).append(head)
    return out


# --------------------------------------------------------------------------------------------
# Reference means
# --------------------------------------------------------------------------------------------


def head_means(lm, items: Sequence, *, layers: Sequence[int] | None = None, fmt: str = "direct",
               batch_size: int = 16, positions: str = "all") -> dict[int, Any]:
    """Each head's mean output over every real (non-padding) prompt position of ``items`` (real
    audio, prompts in ``fmt``): ``{layer: [n_heads, head_dim]}`` float32 on the model's device.
    ``positions="text"``: over the real positions that are not audio tokens only (the kind of
    position every generated token is).

    Read with the capture engine at ``lm.blocks.{L}.attn.hook_z``, reduced inside the hook by
    the attention mask (a position-sum per row), so no ``[batch, pos, width]`` is kept."""
    import torch

    if not items:
        raise ConfigError("head_means: expected at least one reference item, found none")
    check_int("batch_size", batch_size)
    if positions not in MEAN_POSITIONS:
        raise ConfigError(f"mean_positions: expected one of {MEAN_POSITIONS}, found {positions!r}")
    layers = sorted(set(range(lm.arch.n_layers) if layers is None else (int(x) for x in layers)))
    for layer in layers:
        lm.arch.check_layer(layer)
    sites = {layer: site_name(layer, "attn.hook_z") for layer in layers}
    sums: dict[int, Any] = {}
    count = 0.0
    for chunk in batches(list(items), batch_size):
        inputs = with_position_ids(lm.arch, dict(cast_features(lm, model_inputs(lm, chunk, fmt, "real"))))
        mask = inputs["attention_mask"].to(torch.float32)
        if positions == "text":
            mask = mask * (inputs["input_ids"] != lm.arch.audio_token_id).to(torch.float32)
        got = capture(lm, inputs, list(sites.values()), weights={s: mask for s in sites.values()})
        for layer, s in sites.items():
            total = got[s].sum(0)  # [width]: sum over rows and their real positions
            sums[layer] = total if layer not in sums else sums[layer] + total
        count += float(mask.sum())
    return {layer: (sums[layer] / count).reshape(lm.arch.n_heads, lm.arch.head_dim) for layer in layers}


# --------------------------------------------------------------------------------------------
# The ablation context
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def ablate_heads(lm, heads: Sequence[Sequence[int]], *, mode: str = "zero",
                 means: Mapping[int, Any] | None = None) -> Iterator[tuple[Head, ...]]:
    """Within the block every forward of ``lm.model`` (``generate`` included, every position)
    runs with ``heads`` ablated: zero (``mode="zero"``) or their mean output (``mode="mean"``,
    ``means`` from :func:`head_means` covering every ablated head's layer).  Yields the checked
    heads.  Everything is validated before any hook is installed; the hooks are removed on
    exit, also when the block raises.  No heads: nothing is installed."""
    import torch

    if mode not in ABLATION_MODES:
        raise ConfigError(f"mode: expected one of {ABLATION_MODES}, found {mode!r}")
    heads = check_heads(lm.arch, heads)
    by_layer = _by_layer(heads)
    d, H = lm.arch.head_dim, lm.arch.n_heads
    fills: dict[int, Any] = {}
    if mode == "mean":
        if means is None:
            raise ConfigError("means: mode 'mean' expected the heads' reference means (head_means), found None")
        missing = sorted(set(by_layer) - set(means))
        if missing:
            raise ConfigError(f"means: expected reference means for layers {sorted(by_layer)}, missing {missing}")
        for layer in by_layer:
            m = torch.as_tensor(means[layer])
            if tuple(m.shape) != (H, d):
                raise ConfigError(f"means[{layer}]: expected shape [{H}, {d}] (heads, head_dim), "
                                  f"found {list(m.shape)}")
            fills[layer] = m
    hooks = []
    for layer, hs in sorted(by_layer.items()):
        point = lm.arch.hook_point(site_name(layer, "attn.hook_z"))
        cols = torch.cat([torch.arange(h * d, (h + 1) * d) for h in sorted(hs)])
        fill = None if mode == "zero" else torch.cat([fills[layer][h] for h in sorted(hs)])

        def edit(value, cols=cols, fill=fill):
            if value.shape[-1] != H * d:
                raise ConfigError(f"ablate_heads: expected the o_proj input to be n_heads * head_dim = {H * d} "
                                  f"wide, found {value.shape[-1]}")
            out = value.clone()
            idx = cols.to(value.device)
            out[..., idx] = 0 if fill is None else fill.to(device=value.device, dtype=value.dtype)
            return out

        hooks.append((point, edit))
    with site_hooks(lm.model, hooks):
        yield heads


# --------------------------------------------------------------------------------------------
# The causal check
# --------------------------------------------------------------------------------------------


def random_head_sets(pool: Sequence[Head], k: int, draws: int, *, seed: int = 0,
                     layers_of: Sequence[Head] | None = None) -> list[tuple[Head, ...]]:
    """``draws`` sets of ``k`` distinct heads drawn uniformly from ``pool`` (seeded).

    ``layers_of`` (the top-k heads): layer-matched draws, each set holding as many heads of each
    layer as ``layers_of`` does (drawn uniformly among the pool's heads of that layer), so a
    random set ablates the same number of heads per layer as the top-k."""
    pool = [tuple(map(int, h)) for h in pool]
    check_int("k", k)
    check_int("random_k_draws", draws)
    if len(pool) < k:
        raise ConfigError(f"random heads: expected at least k = {k} heads in the pool of heads that attend to "
                          f"the audio (outside the top-k), found {len(pool)}; lower --min-yield or --k")
    rng = np.random.default_rng(seed)
    if layers_of is None:
        return [tuple(sorted(pool[j] for j in rng.choice(len(pool), size=k, replace=False))) for _ in range(draws)]
    need = _by_layer([tuple(map(int, h)) for h in layers_of])
    if sum(len(v) for v in need.values()) != k:
        raise ConfigError(f"layers_of: expected k = {k} heads to match layers with, found {list(layers_of)}")
    per_layer = {layer: [h for h in pool if h[0] == layer] for layer in need}
    short = {layer: (len(need[layer]), len(per_layer[layer])) for layer in need if len(per_layer[layer]) < len(need[layer])}
    if short:
        raise ConfigError("random heads (layer-matched): expected as many audio-attending heads outside the top-k in "
                          "each layer as the top-k has there, found (needed, available) by layer "
                          f"{short}; lower --min-yield or drop --match-layers")
    out = []
    for _ in range(draws):
        chosen = []
        for layer in sorted(need):
            cand = per_layer[layer]
            chosen += [cand[j] for j in rng.choice(len(cand), size=len(need[layer]), replace=False)]
        out.append(tuple(sorted(chosen)))
    return out


def ablation_effect(base: np.ndarray, top: np.ndarray, rand: np.ndarray, *, n_boot: int = 2000,
                    seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """``base`` [items], ``top`` [items], ``rand`` [draws, items] correctness (0/1) on the same
    items.  Returns the accuracies, the drops (base - ablated) and ``diff`` = top-k drop minus
    random-k drop, with ``ci`` (items and draws resampled) and ``ci_items`` (items only)."""
    b, t = np.asarray(base, np.float64), np.asarray(top, np.float64)
    r = np.asarray(rand, np.float64)
    if r.ndim == 1:
        r = r[None]
    if b.ndim != 1 or t.shape != b.shape or r.ndim != 2 or r.shape[1] != b.shape[0] or b.size == 0:
        raise ConfigError(f"ablation_effect: expected base [items], top [items], rand [draws, items] with the same "
                          f"items, found {b.shape}, {t.shape}, {r.shape}")
    check_int("n_boot", n_boot)
    n, R = b.size, r.shape[0]
    rng = np.random.default_rng(seed)
    ii = rng.integers(0, n, size=(n_boot, n))
    rr = rng.integers(0, R, size=(n_boot, R))
    # crossed resampling: mean over resampled draws of each resampled item's random correctness
    rand_item_boot = r[rr].mean(1)  # [n_boot, items]: mean over the resampled draws, per item
    boot = np.take_along_axis(rand_item_boot, ii, 1).mean(1) - t[ii].mean(1)
    per_item = r.mean(0) - t
    boot_items = per_item[ii].mean(1)
    a = (1 - confidence) / 2
    diff = float(per_item.mean())
    return {
        "n_items": int(n), "n_draws": int(R),
        "accuracy": {"none": float(b.mean()), "top_k": float(t.mean()), "random_k": float(r.mean()),
                     "random_k_draws": [float(x) for x in r.mean(1)]},
        "drop_top_k": float((b - t).mean()), "drop_random_k": float((b[None] - r).mean()),
        "diff": diff,
        "ci": [float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a))],
        "ci_items": [float(np.quantile(boot_items, a)), float(np.quantile(boot_items, 1 - a))],
        "ci_method": f"percentile bootstrap, {n_boot} resamples of the items (paired) and of the random draws",
        "confidence": confidence,
    }


def _accuracy(lm, items, fmt: str, gen: GenerationConfig) -> np.ndarray:
    df = run_eval(lm, items, formats=(fmt,), audio_modes=("real",), cfg=gen, progress=False)
    got = dict(zip(df["item_id"].astype(str), df["correct"].astype(float)))
    return np.array([got[str(it.item_id)] for it in items])


def listening_pool(heads, *, k: int, min_yield: float = MIN_YIELD, rank_by: str = "rank",
                   top: Sequence[Head] | None = None) -> tuple[list, list]:
    """The top-k heads of a heads table (``heads.parquet`` of a record run) by ``rank_by`` (or
    ``top`` as given, e.g. an organism's planted heads) and the pool of the other heads whose
    ``mean_yield`` is >= ``min_yield``."""
    if rank_by not in heads.columns:
        raise ConfigError(f"rank_by: expected a column of the heads table among {RANK_COLUMNS}, found {rank_by!r}")
    if "mean_yield" not in heads.columns:
        raise ConfigError("heads table: expected a mean_yield column (a record run's heads.parquet), found none")
    t = heads.sort_values(rank_by)
    if top is None:
        top = [(int(r.layer), int(r.head)) for r in t.head(k).itertuples()]
    else:
        top = [(int(a), int(b)) for a, b in top]
        if len(top) != k:
            raise ConfigError(f"heads / k: expected k = {k} heads to ablate, found {len(top)}: {top}")
    pool = [(int(r.layer), int(r.head)) for r in t.itertuples()
            if (int(r.layer), int(r.head)) not in set(top) and float(r.mean_yield) >= min_yield]
    return top, sorted(pool)


def causal_check(lm, items: Sequence, heads, *, k: int = 5, draws: int = 10, mode: str = "mean",
                 means_items: Sequence | None = None, min_yield: float = MIN_YIELD, rank_by: str = "rank",
                 fmt: str = "direct", max_new_tokens: int = 16, batch_size: int = 32, n_boot: int = 2000,
                 seed: int = 0, top: Sequence[Head] | None = None, match_layers: bool = False,
                 mean_positions: str = "all") -> dict[str, Any]:
    """Held-out accuracy on ``items`` with no ablation, the top-k listening heads of ``heads``
    (a heads table ranked on other items) ablated, and ``draws`` random k-sets of heads that
    attend to the audio (:func:`listening_pool`) ablated; :func:`ablation_effect` of the three.
    ``top``: ablate these heads instead of the ranking's top-k (``len(top) == k``);
    ``match_layers``: layer-matched random sets (:func:`random_head_sets`); ``mean_positions``:
    the reference positions of mean-ablation (:func:`head_means`).
    ``means_items``: the reference items of mean-ablation (calibration items; required for
    ``mode="mean"``).  Returns the effect plus ``top_k``, ``random_sets``, ``pool_size`` and
    the per-item correctness (``rows``)."""
    if mode not in ABLATION_MODES:
        raise ConfigError(f"mode: expected one of {ABLATION_MODES}, found {mode!r}")
    check_int("k", k)
    top, pool = listening_pool(heads, k=k, min_yield=min_yield, rank_by=rank_by, top=top)
    check_heads(lm.arch, top, "top_k")
    sets = random_head_sets(pool, k, draws, seed=seed, layers_of=top if match_layers else None)
    means = None
    if mode == "mean":
        if not means_items:
            raise ConfigError("means_items: mode 'mean' expected reference (calibration) items, found none")
        means = head_means(lm, means_items, fmt=fmt, batch_size=batch_size, positions=mean_positions)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    base = _accuracy(lm, items, fmt, gen)
    with ablate_heads(lm, top, mode=mode, means=means):
        t = _accuracy(lm, items, fmt, gen)
    rand = []
    for s in sets:
        with ablate_heads(lm, s, mode=mode, means=means):
            rand.append(_accuracy(lm, items, fmt, gen))
    r = np.stack(rand)
    res = ablation_effect(base, t, r, n_boot=n_boot, seed=seed)
    rows = [{"item_id": str(it.item_id), "condition": "none", "correct": bool(base[i])} for i, it in enumerate(items)]
    rows += [{"item_id": str(it.item_id), "condition": "top_k", "correct": bool(t[i])} for i, it in enumerate(items)]
    rows += [{"item_id": str(it.item_id), "condition": f"random_{j}", "correct": bool(r[j, i])}
             for j in range(len(sets)) for i, it in enumerate(items)]
    return {**res, "mode": mode, "k": k, "top_k": [list(h) for h in top],
            "random_sets": [[list(h) for h in s] for s in sets], "pool_size": len(pool), "min_yield": min_yield,
            "rank_by": rank_by, "match_layers": bool(match_layers),
            "mean_positions": mean_positions if mode == "mean" else None, "rows": rows}


# --------------------------------------------------------------------------------------------
# The stage (``auralens ablate``)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AblateConfig(ModelDataConfig):
    """``auralens ablate``: held-out accuracy with the top-k listening heads ablated vs k random
    heads that also attend to the audio (paired bootstrap CI of the difference of the drops)."""

    COMMAND = "auralens ablate"

    data: str = option("cafe-neutral:test", short="-d",
                       help="Held-out items the accuracies are measured on (a dataset with splits: a cue dataset "
                            "or a file dataset's dev/test split).")
    n: int = option(120, help="Held-out items (>= 1).")
    heads_from: str = option("auto", help="The listening ranking: a record run folder (its heads.parquet) or a "
                                          "heads.parquet file, ranked on other items than --data; 'auto' records "
                                          "--n-cal items of <data>:calibration into <out>/calibration first.")
    n_cal: int = option(120, help="Calibration items: the 'auto' ranking and the reference set of mean-ablation.")
    k: int = option(5, help="Heads ablated per condition (the top-k and each random draw).")
    random_k_draws: int = option(10, help="Random k-sets of audio-attending heads (>= 1).")
    mode: str = option("mean", help="mean | zero (mean: each head's mean output over the calibration prompts).")
    min_yield: float = option(MIN_YIELD, help="A random head must have at least this mean audio yield (heads.parquet "
                                              "mean_yield) to count as attending to the audio.")
    heads: str = option("", identity=None, help="Ablate these heads (layer.head,... e.g. an organism's planted ones) "
                                                "instead of the ranking's top-k; as many as --k.")
    mean_positions: str = option("all", identity=None, help="Reference positions of mean-ablation: all (every real "
                                                            "prompt position) | text (not the audio tokens).")
    match_layers: bool = option(False, identity=None,
                                help="Draw each random set layer-matched: as many heads per layer as the top-k has.")
    rank_by: str = option("rank", help="Ranking column of heads.parquet: rank (the listening signal with its "
                                       "floor) | corr_rank | contrast_rank.")
    fmt: str = option("direct", identity="format", flag="--format", help="direct | cot | structured")
    max_new_tokens: int = option(16, help="Generated tokens per answer (>= 1).")
    batch_size: int = option(32, identity=False, help="Items per generation batch (>= 1).")
    n_boot: int = option(2000, help="Bootstrap resamples of the CI (>= 1).")
    seed: int = option(7, help="Data seed and seed of the random head draws and the bootstrap.")
    out: Path | None = option(None, identity=False, help="Run folder (default: runs/ablate-<model>).")
    dtype: str = option("auto", help=DTYPE_HELP)
    command: str = option("auralens ablate", identity=False, cli=False, help="The command line that started the run.")

    def __post_init__(self) -> None:
        check_n(self.n)
        for name in ("n_cal", "k", "random_k_draws", "max_new_tokens", "batch_size", "n_boot"):
            check_int(name, getattr(self, name))
        if self.mode not in ABLATION_MODES:
            raise ConfigError(f"mode: expected one of {ABLATION_MODES}, found {self.mode!r}")
        if self.mean_positions not in MEAN_POSITIONS:
            raise ConfigError(f"mean_positions: expected one of {MEAN_POSITIONS}, found {self.mean_positions!r}")
        if self.rank_by not in RANK_COLUMNS:
            raise ConfigError(f"rank_by: expected one of {RANK_COLUMNS}, found {self.rank_by!r}")
        if (isinstance(self.min_yield, bool) or not isinstance(self.min_yield, (int, float))
                or not 0 <= self.min_yield < 1):
            raise ConfigError(f"min_yield: expected a number in [0, 1), found {self.min_yield!r}")
        if not isinstance(self.fmt, str):
            raise ConfigError(f"format: expected one answer format, found {self.fmt!r}")
        check_formats(self.fmt, "format")
        check_dtype(self.dtype)
        if not isinstance(self.heads_from, str) or not self.heads_from:
            raise ConfigError(f"heads_from: expected 'auto', a record run folder or a heads.parquet file, "
                              f"found {self.heads_from!r}")
        if self.heads_from != "auto" and not Path(self.heads_from).exists():
            raise ConfigError(f"heads_from: expected 'auto', a record run folder or a heads.parquet file, "
                              f"found nothing at {self.heads_from!r}")
        if self.heads:
            given = parse_heads(self.heads, "heads")
            if len(given) != self.k or len(set(given)) != len(given):
                raise ConfigError(f"heads: expected k = {self.k} distinct layer.head pairs, found {list(given)}")
        spec = DataSpec.parse(self.data, seed=self.seed)
        if spec.effective_split not in ("dev", "test"):
            raise ConfigError(f"data: expected held-out items (a dev or test split of a cue or file dataset), "
                              f"found {self.data!r} (split {spec.effective_split})")
        if self.out is not None:
            self._set("out", Path(self.out))

    @property
    def run_folder(self) -> Path:
        return self.out if self.out is not None else Path("runs") / f"ablate-{Path(self.model).name}"

    def calibration_data(self) -> str:
        """The same dataset's calibration split (the ranking with 'auto', the mean-ablation reference)."""
        return str(DataSpec.parse(self.data, seed=self.seed).split("calibration"))


@takes_config(AblateConfig)
def stage_ablate(cfg: AblateConfig, *, lm=None, quiet: bool = False) -> dict[str, Any]:
    """The causal check into ``cfg.run_folder``: ``items.parquet`` (per item and condition:
    correct) and ``ablation.json`` (the summary, also returned).

    Options, items (test and calibration), the heads source (its table, its pool size against
    ``k``, its items disjoint from the test items) are checked, and the model loaded, before the
    run folder is created."""
    import pandas as pd

    # 1. validate: options (AblateConfig), items, the heads source
    items = load_items(cfg.data, n=cfg.n, seed=cfg.seed)
    cal_data = cfg.calibration_data()
    cal_items = load_items(cal_data, n=cfg.n_cal, seed=cfg.seed)
    given = parse_heads(cfg.heads, "heads") if cfg.heads else None
    test_ids = {str(it.item_id) for it in items}
    both = test_ids & {str(it.item_id) for it in cal_items}
    if both:
        raise ConfigError(f"data {cfg.data!r} / calibration {cal_data!r}: expected disjoint items, found {len(both)} "
                          "shared")
    src = None
    if cfg.heads_from != "auto":
        src = read_heads_source(cfg.heads_from)
        shared = test_ids & (src["item_ids"] or set())
        if shared:
            raise ConfigError(f"heads_from {cfg.heads_from!r}: expected heads ranked on other items than --data, found "
                              f"{len(shared)} of the {len(test_ids)} test items in its run")
        top_heads, pool = listening_pool(src["heads"], k=cfg.k, min_yield=cfg.min_yield, rank_by=cfg.rank_by, top=given)
        # refuses a pool smaller than k (or, layer-matched, too few heads in a layer)
        random_head_sets(pool, cfg.k, cfg.random_k_draws, seed=cfg.seed, layers_of=top_heads if cfg.match_layers else None)
    out = cfg.run_folder

    def before_create(loaded):
        if given is not None:
            check_heads(loaded.arch, given, "heads")
        if cfg.k > loaded.arch.n_layers * loaded.arch.n_heads:
            raise ConfigError(f"k: expected at most {loaded.arch.n_layers * loaded.arch.n_heads} heads "
                              f"({loaded.arch.name}), found {cfg.k}")

    # 2-4. folder check, model, folder
    run, lm = open_run(out, manifest=cfg.manifest(calibration=cal_data), items=items, lm=lm, model=cfg.model,
                       dtype=cfg.dtype, device_map=cfg.device_map, before_create=before_create)
    run.update_manifest(architecture=lm.arch.to_dict())
    # 5. the ranking (recorded here on calibration items with 'auto'), then the check
    if src is None:
        cal_run = Path(run.path) / "calibration"
        stage_record(model=cfg.model, data=cal_data, n=cfg.n_cal, fmt="direct", out=cal_run, lm=lm, quiet=True,
                     seed=cfg.seed, n_boot=200, max_new_tokens=8, calibration="none", batch_size=cfg.batch_size)
        src = read_heads_source(str(cal_run))
    res = causal_check(lm, items, src["heads"], k=cfg.k, draws=cfg.random_k_draws, mode=cfg.mode,
                       means_items=cal_items, min_yield=cfg.min_yield, rank_by=cfg.rank_by, fmt=cfg.fmt,
                       max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, n_boot=cfg.n_boot,
                       seed=cfg.seed, top=given, match_layers=cfg.match_layers, mean_positions=cfg.mean_positions)
    rows = res.pop("rows")

    def finish():
        run.write_table("items.parquet", pd.DataFrame(rows))
        summary = {"model": cfg.model, "data": cfg.data, "calibration": cal_data, "n": len(items),
                   "heads_from": src["path"], "run": str(out), **res}
        run.write_json("ablation.json", summary)
        run.mark_stage("ablate", n_items=len(items))
        run.finish()
        return summary

    return on_main(finish)
