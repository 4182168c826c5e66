"""A synthetic run folder with every stage's schema, for trying and testing the dashboard
without a model: random but valid tables and per-item arrays (numpy only, seeded).

    python -m auralens.dashboards.synthetic runs/synthetic        # then: auralens dashboard runs/synthetic

The numbers mean nothing; the shapes and value ranges are those the stages write, and every
table is built from, and checked against, its declaration in :mod:`auralens.interp.schemas`.  ``long_item_tokens`` makes one item as
long as a real chain of thought (1,000 tokens by default) so responsiveness can be checked.
"""

from __future__ import annotations

import json
import warnings
import wave
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from auralens.interp import schemas
from auralens.interp.papers import reported_rows
from auralens.interp.schemas import COMPARE, SYSTEMS

__all__ = ["write_synthetic_run"]

TIERS = ("perception", "temporal", "multihop")
FORMATS = ("direct", "cot", "structured")
WORDS = ("the", "first", "sound", "is", "a", "tone", "then", "chirp", "louder", "higher", "so", "answer", "B", ".", "\n")


def _manifest(folder: Path, stage: str, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    m = {
        "command": f"auralens {stage} --model synthetic", "model": "synthetic", "data": "cafe", "seed": 0, "n": n,
        "config": {"synthetic": True}, "packages": {"python": "3"}, "git_revision": None, "status": "complete",
        "stages": {stage: {"finished_at": "2026-01-01T00:00:00"}}, "created_at": "2026-01-01T00:00:00",
    }
    (folder / "manifest.json").write_text(json.dumps(m, indent=2))


def _ci(rng, mean, n, shape=None):
    half = 1.96 * np.sqrt(np.clip(mean * (1 - mean), 1e-4, None) / np.maximum(n, 1)) * rng.uniform(0.8, 1.2, shape)
    return np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1)


def _write_wav(path: Path, seconds: float, rng, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * rng.choice([330, 440, 660]) * t) * (t % 1.0 < 0.4) + 0.02 * rng.standard_normal(len(t))
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def _write(folder: Path, table: schemas.Table, df):
    """``df`` as ``folder/<table.name>``, checked against its declaration (the real writers'
    columns and kinds)."""
    table.check(df).to_parquet(folder / table.name, index=False)
    return df


def _eval(folder: Path, rng, n_items: int) -> None:
    _manifest(folder, "eval", n_items)
    rows = []
    for i in range(n_items):
        tier = TIERS[i % 3]
        for fmt in FORMATS:
            for audio in ("real", "silence"):
                correct = bool(rng.random() < (0.7 if audio == "real" else 0.3))
                rows.append({"item_id": f"cafe-{i}-{tier}", "row_id": f"cafe-{i}-{tier}|{fmt}|{audio}", "tier": tier,
                             "category": tier, "sub_category": "count", "task": "", "difficulty": "",
                             "format": fmt, "audio": audio, "answer": "B",
                             "prediction": "answer: B" if correct else "answer: C", "answer_span": "B" if correct else "C",
                             "matched_choice": "B" if correct else "C", "extracted": "choice", "correct": correct})
    items = _write(folder, schemas.EVAL_ITEMS, schemas.EVAL_ITEMS.frame(rows))
    acc = items.groupby(["audio", "format", "tier"], as_index=False).agg(accuracy=("correct", "mean"), n=("correct", "size"))
    acc["ci_low"], acc["ci_high"] = _ci(rng, acc["accuracy"].to_numpy(), acc["n"].to_numpy(), len(acc))
    _write(folder, schemas.ACCURACY, acc[list(schemas.ACCURACY.names)])


def _record(folder: Path, rng, n_items: int, layers: int, heads: int, long_item_tokens: int, time_bins: int) -> None:

    _manifest(folder, "record", n_items)
    (folder / "yields").mkdir(exist_ok=True)
    base = rng.uniform(0.05, 0.6, (layers, heads)).astype(np.float32)
    items, claims = [], []
    per_item_step: list[np.ndarray] = []
    for i in range(n_items):
        n_tok = long_item_tokens if i == n_items - 1 else int(rng.integers(20, 80))
        item, m, item_claims = _record_item(folder, rng, i, n_tok, base, time_bins)
        items.append(item)
        per_item_step.append(m)
        claims += item_claims
    _write(folder, schemas.RECORD_ITEMS, schemas.RECORD_ITEMS.frame(items))

    arr = np.stack(per_item_step)  # [items, 8, L, H]
    heads_df = _heads(rng, layers, heads)
    decay_df = _write(folder, schemas.DECAY, schemas.DECAY.frame(_decay_rows(arr, heads_df)))
    _write(folder, schemas.DECAY_SUMMARY, schemas.DECAY_SUMMARY.frame(_decay_summary(decay_df, n_items)))
    _write(folder, schemas.HEADS, heads_df)
    claims_df = _write(folder, schemas.CLAIMS, schemas.CLAIMS.frame(claims))
    ca = claims_df.groupby("step", as_index=False).agg(accuracy=("claim_correct", "mean"), n_claims=("claim_correct", "size"),
                                                       n_items=("item_id", "nunique"))
    ca["ci_low"], ca["ci_high"] = _ci(rng, ca["accuracy"].to_numpy(), ca["n_items"].to_numpy(), len(ca))
    _write(folder, schemas.CLAIM_ACCURACY, ca[list(schemas.CLAIM_ACCURACY.names)])


def _record_item(folder: Path, rng, i: int, n_tok: int, base: np.ndarray, time_bins: int):
    """Item ``i`` of the record stage: its yields file and wav written; returns its items row, its
    per-step mean yield ``[8, L, H]`` (NaN for steps it lacks) and its claims."""
    layers, heads = base.shape
    n_steps = int(rng.integers(3, 8))
    steps = np.sort(rng.integers(0, n_steps, n_tok)).astype(np.int64)
    steps[0] = 0
    decay = np.exp(-0.15 * steps)[:, None, None]
    y = np.clip(base[None] * decay + rng.normal(0, 0.03, (n_tok, layers, heads)), 0, 1).astype(np.float32)
    tokens = [str(rng.choice(WORDS)) + ("" if j % 5 == 4 else " ") for j in range(n_tok)]
    tensors = {"yield": y, "steps": steps, "token_ids": rng.integers(0, 500, n_tok).astype(np.int64),
               "silence_last": np.clip(0.3 * base + rng.normal(0, 0.02, (layers, heads)), 0, 1).astype(np.float32),
               "prompt_yield": np.clip(base[None] + rng.normal(0, 0.05, (12, layers, heads)), 0, 1).astype(np.float32)}
    if time_bins:
        w = rng.dirichlet(np.ones(time_bins), size=(n_tok, layers, heads)).astype(np.float32)
        tensors["time_bins"] = (w * y[..., None]).astype(np.float32)
    item_id = f"cafe-{i}-{TIERS[i % 3]}"
    save_file(tensors, str(folder / "yields" / f"{i:05d}.safetensors"),
              metadata={"item_id": item_id, "text": "".join(tokens), "tokens": json.dumps(tokens)})
    audio_rel = f"audio/{i:05d}.wav"
    _write_wav(folder / audio_rel, 2.0, rng)
    correct = bool(rng.random() < 0.6)
    item = {"item_index": i, "item_id": item_id, "tier": TIERS[i % 3], "category": TIERS[i % 3],
            "sub_category": "count", "format": "structured", "question": f"How many sounds are in clip {i}?",
            "answer": "B", "prediction": "B" if correct else "C", "answer_span": "B" if correct else "C",
            "matched_choice": "B" if correct else "C", "extracted": "choice", "correct": correct, "n_tokens": n_tok, "n_steps": n_steps,
            "audio_path": audio_rel,
            "error_type": "correct" if correct else str(rng.choice(["perception", "reasoning", "unverifiable"]))}
    m = np.full((8, layers, heads), np.nan)
    for s in np.unique(steps):
        if s < 8:
            m[s] = y[steps == s].mean(0)
    claims = []
    for s in range(n_steps):
        for _ in range(int(rng.integers(0, 3))):
            # as auralens.interp.cafe.formats.Claim: sound = 0-based sound index, -1 for count claims
            claims.append({"item_id": item_id, "step": s, "kind": "count", "sound": -1, "value": "2",
                           "claim_correct": bool(rng.random() < 0.8 - 0.08 * s)})
    return item, m, claims


def _decay_rows(arr: np.ndarray, heads_df) -> list[tuple]:
    """Rows of the decay table from the per-item step means ``arr`` ``[items, 8, L, H]``: the
    "all" and "topk" (4 best-ranked heads) groups and every head, per step, for both axes."""
    layers, heads = arr.shape[2:]
    top = [(int(r.layer), int(r.head)) for r in heads_df.nsmallest(4, "rank").itertuples()]
    groups = {"all": np.nanmean(arr.reshape(*arr.shape[:2], -1), -1),
              "topk": np.nanmean(np.stack([arr[:, :, a, b] for a, b in top]), 0)}
    decay_rows: list[tuple] = []
    for axis in ("step", "token_bin"):
        for g, vals in groups.items():
            mean, n = np.nanmean(vals, 0), (~np.isnan(vals)).sum(0)
            for s in range(8):
                if n[s]:
                    decay_rows.append((g, axis, -1, -1, s, mean[s], mean[s] - 0.03, mean[s] + 0.03, int(n[s])))
        with np.errstate(all="ignore"):
            hm, hn = np.nanmean(arr, 0), (~np.isnan(arr)).sum(0)
        for s in range(8):
            for a in range(layers):
                for b in range(heads):
                    if hn[s, a, b]:
                        decay_rows.append(("head", axis, a, b, s, hm[s, a, b], hm[s, a, b] - 0.05, hm[s, a, b] + 0.05, int(hn[s, a, b])))
    return decay_rows


def _decay_summary(decay_df, n_items: int) -> list[dict]:
    """Rows of the decay summary: slope and last/first ratio of each (group, axis, layer, head)
    curve of ``decay_df``, with fixed CIs for the groups and none for single heads."""
    summ = []
    for (g, axis, a, b), d in decay_df.groupby(["group", "axis", "layer", "head"]):
        d = d.sort_values("step")
        summ.append({"group": g, "axis": axis, "layer": int(a), "head": int(b),
                     "slope": float(np.polyfit(d["step"], d["mean_yield"], 1)[0]) if len(d) > 1 else float("nan"),
                     "last_first_ratio": float(d["mean_yield"].iloc[-1] / d["mean_yield"].iloc[0]),
                     "first": float(d["mean_yield"].iloc[0]), "last": float(d["mean_yield"].iloc[-1]), "n_steps": len(d),
                     # as auralens.interp.decay.decay_summary: item-bootstrap CIs for the groups, none for single heads
                     **({"slope_ci_low": np.nan, "slope_ci_high": np.nan, "ratio_ci_low": np.nan, "ratio_ci_high": np.nan,
                         "n_items": -1} if g == "head" else
                        {"slope_ci_low": -0.2, "slope_ci_high": -0.01, "ratio_ci_low": 0.2, "ratio_ci_high": 0.9,
                         "n_items": n_items})})
    return summ


def _heads(rng, layers: int, heads: int):
    import pandas as pd

    df = pd.DataFrame({"layer": np.repeat(np.arange(layers), heads), "head": np.tile(np.arange(heads), layers)})
    df["corr"] = rng.uniform(-0.3, 0.6, len(df))
    df["corr_rank"] = df["corr"].rank(ascending=False, method="first").astype(int)
    df["contrast"] = rng.uniform(-0.05, 0.3, len(df))
    df["contrast_rank"] = df["contrast"].rank(ascending=False, method="first").astype(int)
    df["contrast_dz"] = df["contrast"] * 5
    df["mean_yield"] = rng.uniform(0.0, 0.6, len(df))
    df["listens"] = df["mean_yield"] >= 0.01
    df["rank"] = df[["corr_rank", "contrast_rank"]].mean(axis=1).rank(method="first").astype(int)
    return df[list(schemas.HEADS.names)].sort_values("rank").reset_index(drop=True)


def _probe(folder: Path, rng, layers: int) -> None:
    _manifest(folder, "probe", 24)
    rows = []
    attrs = {"event_count": 1 / 4, "first_event": 1 / 6, "louder": 1 / 2}
    for site in ("lm.blocks.{L}.hook_resid_post",):
        for attr, chance in attrs.items():
            for step in (None, 0, 1, 2):
                for layer in range(layers):
                    acc = float(np.clip(chance + (1 - chance) * (layer + 1) / (layers + 1) * rng.uniform(0.5, 1.0)
                                        - 0.05 * (step or 0), 0, 1))
                    ctrl = float(np.clip(chance + rng.uniform(0, 0.1), 0, 1))
                    rows.append({"site": site, "layer": layer, "position": "last_prompt" if step is None else "step_mean",
                                 "step": step, "attribute": attr, "accuracy": acc, "control_accuracy": ctrl,
                                 "selectivity": acc - ctrl, "chance": chance, "ci_low": max(0.0, acc - 0.08),
                                 "ci_high": min(1.0, acc + 0.08), "n": 24, "split": "report"})
    df = schemas.PROBES.frame(rows)
    df["step"] = df["step"].astype("Int64")
    _write(folder, schemas.PROBES, df)
    html = "<html><body><p>synthetic probe figure</p></body></html>"
    (folder / "probes_by_layer.html").write_text(html)
    (folder / "probes_by_step.html").write_text(html)


def _steer(folder: Path, rng, layers: int) -> None:
    _manifest(folder, "steer", 24)
    rows = []
    # the fitted vector and its random-direction control, as auralens.steering.protocol names them
    for vector, method in (("audio_minus_silence", "audio_minus_silence"), ("random_direction", "random_direction")):
        for layer in (max(0, layers // 2 - 1), layers // 2):
            for category in ("all", "perception", "temporal", "multihop"):
                base = 0.5
                for alpha in (0.0, 0.5, 1.0, 2.0, 4.0):
                    acc = float(np.clip(base + 0.06 * alpha - 0.012 * alpha**2 + rng.normal(0, 0.01), 0, 1))
                    d = acc - base
                    rows.append({"vector": vector, "method": method, "layer": layer, "beta": alpha, "positions": "last_prompt",
                                 "category": category, "accuracy": acc, "ci_low": acc - 0.07, "ci_high": acc + 0.07, "n": 24,
                                 "delta": d, "delta_ci_low": d - 0.05, "delta_ci_high": d + 0.05, "format": "direct"})
    _write(folder, schemas.STEERING, schemas.STEERING.frame(rows))
    # the dev/test protocol's summary: beta chosen on dev (a small dev gain), the held-out test
    # result (here a loss) and the random-direction control, as auralens.steering.protocol writes them
    selected = {"vector": "audio_minus_silence", "mode": "mean", "layer": layers // 2, "beta": 1.0,
                "positions": "last_prompt", "format": "direct",
                "dev": {"n": 24, "base": 0.5, "steered": 0.517, "gain": 0.017, "ci": [-0.033, 0.083]}}
    test = {"n": 24, "base": 0.55, "base_ci": [0.35, 0.75], "steered": 0.5, "steered_ci": [0.3, 0.7],
            "gain": -0.05, "ci": [-0.117, 0.0]}
    controls = {"random_direction": {"steered": 0.5, "gain": -0.05, "ci": [-0.133, 0.017],
                                     "vector_minus_control": 0.0, "vector_minus_control_ci": [-0.083, 0.083]},
                "random_heads": {"skipped": "the vector has no specialist heads (its layers are not taken from heads)"}}
    random_directions = {"k": 20, "vector_gain": -0.05, "mean": -0.01, "p95": 0.042, "max": 0.05,
                         "vector_percentile": 12.5, "above_p95": False, "vector_minus_mean": -0.04, "n_declined": 14,
                         "mode": "mean", "layer": layers // 2, "positions": "last_prompt"}
    summary = {"protocol": "dev_test", "decision": "steer", "rule": "best: the largest nonzero dev gain, whatever its sign",
               "selected": {**selected, "decision": "steer"}, "test": {**test, "decision": "steer"},
               "controls": controls, "random_directions": random_directions}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))


def _compare(folder: Path, rng) -> None:
    """compare.parquet as :func:`auralens.compare.stage_compare` writes it (the
    :data:`auralens.interp.schemas.COMPARE` columns): 2 organisms x the 5 systems x 3 cue conditions, the
    cost rows, and the papers' rows (:mod:`auralens.interp.papers`); plus summary.json."""
    import pandas as pd


    _manifest(folder, "compare", 24)
    n = 24
    organisms = ("micro", "micro-decay")
    conditions = ("cafe-neutral:test", "cafe-congruent:test", "cafe-conflict:test")
    formats = {"base": "cot", "base+steering": "cot", "mpar2": "structured", "mpar2+steering": "structured",
               "hyper": "cot"}
    acc = {"base": 0.5, "base+steering": 0.56, "mpar2": 0.66, "mpar2+steering": 0.67, "hyper": 0.63}
    shift = {"cafe-neutral:test": 0.0, "cafe-congruent:test": 0.08, "cafe-conflict:test": -0.15}
    rows = []

    def row(org, system, cond, metric, group, value, half=0.06, n=n, note="", fmt=None):
        value = float(value)
        lo, hi = (value - half, value + half) if half is not None else (float("nan"), float("nan"))
        rows.append({"organism": org, "system": system, "condition": cond,
                     "format": (formats[system] if cond else "") if fmt is None else fmt, "metric": metric,
                     "group": group, "value": value, "ci_low": lo, "ci_high": hi, "n": int(n), "source": "measured",
                     "note": note})

    summary: dict = {"organisms": {}}
    for org in organisms:
        hurt = 0.1 if org != "micro" else 0.0  # the organism's planted deficit
        summary["organisms"][org] = {"systems": {}}
        for system in SYSTEMS:
            per_cond = summary["organisms"][org]["systems"].setdefault(system, {})
            for cond in conditions:
                a = float(np.clip(acc[system] - hurt + shift[cond] + rng.normal(0, 0.02), 0, 1))
                row(org, system, cond, "accuracy", "all", a)
                per_cond[cond] = {"accuracy": {"value": a, "ci": [a - 0.06, a + 0.06], "n": n}}
                for tier in TIERS:
                    row(org, system, cond, "accuracy", f"tier={tier}", np.clip(a + rng.normal(0, 0.05), 0, 1), half=0.1,
                        n=n // 3)
                if system != "base":
                    g = a - (acc["base"] - hurt + shift[cond])
                    row(org, system, cond, "gain_vs_base", "all", g, half=0.05, note="paired bootstrap over items vs base")
                    per_cond[cond]["gain_vs_base"] = {"value": g, "ci": [g - 0.05, g + 0.05], "n": n}
                if system.endswith("+steering"):
                    plain = system.removesuffix("+steering")
                    row(org, system, cond, "gain_vs_unsteered", "all", acc[system] - acc[plain], half=0.04,
                        note=f"paired bootstrap over items vs {plain}")
                decay = 0.08 if org == "micro-decay" and not system.startswith("mpar2") else 0.02
                row(org, system, cond, "claim_accuracy", "all", np.clip(a + 0.1, 0, 1), n=3 * n)
                for s in range(4):
                    row(org, system, cond, "claim_accuracy", f"step={s}", np.clip(a + 0.15 - decay * s, 0, 1), half=0.1)
                row(org, system, cond, "claim_onset", "all", 2.0, half=None, note="first step below the early accuracy")
                row(org, system, cond, "claim_gap", "all", 2 * decay, half=0.05,
                    note="class-claim accuracy before the onset minus after")
                for et, share in zip(("perception", "reasoning", "unverifiable"), rng.dirichlet([3, 2, 1])):
                    row(org, system, cond, "error_share", et, share, half=0.1, n=round((1 - a) * n))
                slope = -0.02 if system.startswith("base") else -0.005
                for s in range(4):
                    row(org, system, cond, "specialist_yield", f"step={s}", 0.4 + slope * s, half=0.03)
                row(org, system, cond, "yield_slope_specialists", "all", slope, half=None, n=4)
                row(org, system, cond, "yield_slope_all_heads", "all", slope / 2, half=None, n=4)
                tokens = 60.0 + (25.0 if system == "hyper" else 0.0) + rng.normal(0, 2)
                row(org, system, cond, "generated_tokens", "all", tokens, half=4.0)
                row(org, system, cond, "forwards_per_item", "all", tokens + (1 if system.endswith("+steering") else 0),
                    half=None, note="per-input steering adds a silence pass" if system.endswith("+steering") else "")
                row(org, system, cond, "pauses_per_item", "all", 3.0 if system == "hyper" else 0.0, half=None)
            trained = system.startswith(("mpar2", "hyper"))
            row(org, system, "", "training_flops", "all", 5.1e13 if trained else 0.0, half=None, n=0)
            row(org, system, "", "training_minutes", "all", 24.0 if trained else 0.0, half=None, n=0)
            if system.endswith("+steering"):
                row(org, system, "", "steering_fit_flops", "all", 2.4e9, half=None, n=0)
                row(org, system, "", "steering_minutes", "all", 3.5, half=None, n=0)
    _write(folder, COMPARE, pd.concat([COMPARE.frame(rows), reported_rows()], ignore_index=True))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))


def _quiet(fn):
    def wrapped(*a, **k):

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of steps no item reached
            return fn(*a, **k)

    return wrapped


@_quiet
def write_synthetic_run(
    path: str | Path,
    *,
    n_items: int = 6,
    layers: int = 4,
    heads: int = 4,
    long_item_tokens: int = 1000,
    time_bins: int = 16,
    stages: tuple[str, ...] = ("eval", "record", "probe", "steer", "compare"),
    seed: int = 0,
) -> Path:
    """Write a parent run folder with one sub-folder per stage in ``stages``; returns ``path``."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if "eval" in stages:
        _eval(path / "eval", rng, n_items)
    if "record" in stages:
        _record(path / "record", rng, n_items, layers, heads, long_item_tokens, time_bins)
    if "probe" in stages:
        _probe(path / "probe", rng, layers)
    if "steer" in stages:
        _steer(path / "steer", rng, layers)
    if "compare" in stages:
        _compare(path / "compare", rng)
    return path


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(write_synthetic_run(sys.argv[1] if len(sys.argv) > 1 else "runs/synthetic"))
