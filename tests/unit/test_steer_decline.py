"""Steering that can decline, and the nulls its gain is read against.

- the dev rule (:func:`auralens.steering.nulls.choose_on_dev`) declines when every beta hurts,
  and when the best gain's paired-bootstrap CI reaches 0 (where the old "largest gain" rule
  steers), and keeps a setting whose CI lower bound is > 0 — on dev tables built from synthetic
  item rows by the real :func:`auralens.steering.evaluate.steering_table`, whose CI is checked
  against scipy's bootstrap;
- the vector's percentile among the random directions, their mean and 95th percentile,
  against a hand computation;
- the answer-distribution shift against hand-counted shares;
- the random directions of the null: equal norm, distinct, seeded, one per index.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from auralens.interp.errors import ConfigError
from auralens.steering.nulls import SELECTION_RULES, UNPARSED, answer_shift, choose_on_dev, null_summary

N = 60


def _rows(base: np.ndarray, steered: dict[float, np.ndarray], *, vector: str = "v") -> pd.DataFrame:
    """Item rows of a dev sweep: the baseline and ``vector`` at each beta (1 = correct)."""
    rows = []
    for i, c in enumerate(base):
        rows.append(dict(item_id=f"i{i}", vector="baseline", method="none", layer=-1, beta=0.0, positions="none",
                         format="direct", category="perception", correct=bool(c)))
    for beta, got in steered.items():
        for i, c in enumerate(got):
            rows.append(dict(item_id=f"i{i}", vector=vector, method="audio_minus_silence", layer=3, beta=beta,
                             positions="both", format="direct", category="perception", correct=bool(c)))
    return pd.DataFrame(rows)


def _flip(base: np.ndarray, *, to_wrong: int = 0, to_right: int = 0) -> np.ndarray:
    out = base.copy()
    out[np.flatnonzero(base == 1)[:to_wrong]] = 0
    out[np.flatnonzero(base == 0)[:to_right]] = 1
    return out


def _table(rows: pd.DataFrame, betas) -> pd.DataFrame:
    from auralens.steering.evaluate import steering_table

    return steering_table(rows, n_boot=2000, seed=0, betas=sorted({0.0, *betas}))


BASE = np.array([1] * (N // 2) + [0] * (N // 2))


def test_declines_when_every_beta_hurts_on_dev():
    betas = {1.0: _flip(BASE, to_wrong=5), 2.0: _flip(BASE, to_wrong=10), 4.0: _flip(BASE, to_wrong=25)}
    table = _table(_rows(BASE, betas), betas)
    sel = choose_on_dev(table, {"v": "mean"})
    assert sel["decision"] == "decline" and sel["beta"] == 0.0
    assert sel["dev"]["gain"] == 0.0 and sel["dev"]["ci"] == [0.0, 0.0] and sel["dev"]["base"] == pytest.approx(0.5)
    assert sel["candidate"]["beta"] == 1.0 and sel["candidate"]["dev"]["gain"] == pytest.approx(-5 / N)
    assert sel["rule"] == SELECTION_RULES["ci_low"]
    # the old rule forces the least-bad beta
    forced = choose_on_dev(table, {"v": "mean"}, rule="best")
    assert forced["decision"] == "steer" and forced["beta"] == 1.0 and forced["dev"]["gain"] < 0


def test_a_positive_gain_whose_ci_reaches_zero_is_declined():
    betas = {1.0: _flip(BASE, to_wrong=2, to_right=4), 2.0: _flip(BASE, to_wrong=4)}  # +2/60, CI across 0
    table = _table(_rows(BASE, betas), betas)
    row = table[(table["beta"] == 1.0) & (table["category"] == "all")].iloc[0]
    assert row["delta"] == pytest.approx(2 / N) and row["delta_ci_low"] <= 0 < row["delta"]
    assert choose_on_dev(table, {"v": "mean"})["decision"] == "decline"
    assert choose_on_dev(table, {"v": "mean"}, rule="best")["beta"] == 1.0


def test_kept_when_the_ci_lower_bound_is_positive_and_the_ci_matches_scipy():
    betas = {1.0: _flip(BASE, to_right=3), 2.0: _flip(BASE, to_right=15, to_wrong=1), 4.0: _flip(BASE, to_wrong=20)}
    table = _table(_rows(BASE, betas), betas)
    sel = choose_on_dev(table, {"v": "mean"})
    assert sel["decision"] == "steer" and sel["beta"] == 2.0 and "candidate" not in sel
    assert sel["dev"]["gain"] == pytest.approx(14 / N) and sel["dev"]["ci"][0] > 0
    diff = (betas[2.0] - BASE).astype(float)
    ref = stats.bootstrap((diff,), np.mean, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    assert sel["dev"]["ci"][0] == pytest.approx(ref.low, abs=0.03)
    assert sel["dev"]["ci"][1] == pytest.approx(ref.high, abs=0.03)


def test_only_named_vectors_are_candidates_and_a_sweep_needs_a_nonzero_beta():
    betas = {2.0: _flip(BASE, to_right=20)}
    rows = pd.concat([_rows(BASE, {2.0: _flip(BASE, to_wrong=3)}),
                      _rows(BASE, betas, vector="random_direction").query("vector != 'baseline'")])
    table = _table(rows, betas)
    assert choose_on_dev(table, {"v": "mean"})["decision"] == "decline"
    assert choose_on_dev(table, {"random_direction": "mean"})["decision"] == "steer"
    with pytest.raises(ConfigError, match="non-zero beta"):
        choose_on_dev(table[table["beta"] == 0.0], {"v": "mean"})
    with pytest.raises(ConfigError, match="selection"):
        choose_on_dev(table, {"v": "mean"}, rule="bogus")


def test_percentile_among_random_directions_by_hand():
    gains = {"r0": 0.3, "r1": 0.1, "r2": 0.0, "r3": 0.2, "r4": 0.1}
    s = null_summary(0.1, gains)
    # below: 0.0 (1); equal: 0.1, 0.1 (2) -> 100 * (1 + 2/2) / 5 = 40
    assert s["vector_percentile"] == pytest.approx(40.0)
    assert s["k"] == 5 and s["mean"] == pytest.approx(0.14) and s["max"] == pytest.approx(0.3)
    # p95, linear: sorted [0, .1, .1, .2, .3], position 0.95 * 4 = 3.8 -> 0.2 + 0.8 * 0.1
    assert s["p95"] == pytest.approx(0.28) and not s["above_p95"]
    top = null_summary(0.29, gains)
    assert top["above_p95"] and top["vector_percentile"] == pytest.approx(80.0)
    assert null_summary(0.5, gains)["vector_percentile"] == pytest.approx(100.0)
    assert null_summary(-0.1, gains)["vector_percentile"] == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="random_directions"):
        null_summary(0.1, {})


def test_answer_shift_by_hand():
    def row(i, v, a):
        return dict(item_id=f"i{i}", vector=v, matched_choice=a)

    base = ["noise", "buzz", "buzz", "tone", ""]
    steer = ["noise", "noise", "buzz", "noise", "tone"]
    rows = pd.DataFrame([row(i, "baseline", a) for i, a in enumerate(base)]
                        + [row(i, "v", a) for i, a in enumerate(steer)] + [row(9, "v", "buzz")])  # i9: no baseline
    s = answer_shift(rows, "v")
    assert s["n"] == 5
    assert s["unsteered"] == pytest.approx({"buzz": 0.4, "noise": 0.2, "tone": 0.2, UNPARSED: 0.2})
    assert s["steered"] == pytest.approx({"noise": 0.6, "buzz": 0.2, "tone": 0.2})
    # 0.5 * (|.2-.6| + |.4-.2| + |.2-.2| + |.2-0|) = 0.4
    assert s["total_variation"] == pytest.approx(0.4)
    assert s["most_increased"]["answer"] == "noise" and s["watch"]["noise"] == pytest.approx(
        {"unsteered": 0.2, "steered": 0.6})
    assert answer_shift(rows, "baseline")["total_variation"] == 0.0
    with pytest.raises(ConfigError, match="answer_shift"):
        answer_shift(rows, "missing")


def _vector():
    from auralens.steering.vector import SteeringVector, fingerprint

    g = torch.Generator().manual_seed(0)
    return SteeringVector(directions={L: torch.randn(16, generator=g) * (L + 1) for L in (1, 2)}, model_id="m",
                          architecture="tiny", d_model=16, n_layers=3, method="audio_minus_silence",
                          data_fingerprint=fingerprint("x"))


def test_random_null_vectors_equal_norm_distinct_and_seeded():
    from auralens.steering.controls import random_null_vectors
    from auralens.steering.evaluate import PerInput

    vec = _vector()
    sel = {"layer": 2, "mode": "mean"}
    r = random_null_vectors(vec, sel, 6, seed=7)
    assert list(r) == [f"random_{i:02d}" for i in range(6)]
    norm = float(torch.linalg.vector_norm(vec.directions[2]))
    dirs = torch.stack([v.directions[2] for v in r.values()])
    assert all(v.layers == (2,) and v.method == "random_direction" for v in r.values())
    torch.testing.assert_close(torch.linalg.vector_norm(dirs, dim=1), torch.full((6,), norm))
    cos = torch.nn.functional.normalize(dirs, dim=1) @ torch.nn.functional.normalize(dirs, dim=1).T
    assert (cos - torch.eye(6)).abs().max() < 0.99  # no two the same
    again = random_null_vectors(vec, sel, 6, seed=7)
    torch.testing.assert_close(torch.stack([v.directions[2] for v in again.values()]), dirs)
    other = random_null_vectors(vec, sel, 1, seed=8)["random_00"].directions[2]
    assert not torch.allclose(other, dirs[0])
    per = random_null_vectors(vec, {"layer": 1, "mode": "per_input"}, 3, seed=7)
    assert all(isinstance(v, PerInput) and v.layers == (1,) for v in per.values())
    assert len({v.random_seed for v in per.values()}) == 3
    with pytest.raises(ConfigError, match="random_directions"):
        random_null_vectors(vec, {"layer": 1, "mode": "twice"}, 2, seed=7)


def test_neutral_spec_and_config_refusals():
    from auralens.steering.protocol import neutral_spec
    from auralens.steering.stage_eval import SteerEvalConfig

    assert neutral_spec("cafe-conflict:test") == ("cafe-neutral:test", None)
    assert neutral_spec("cafe-congruent:test")[0] == "cafe-neutral:test"
    assert neutral_spec("cafe-neutral:test")[0] is None and neutral_spec("cafe")[0] is None
    cfg = SteerEvalConfig(model="micro", data="cafe-conflict", vector="v.safetensors")
    assert cfg.selection == "ci_low" and cfg.random_directions == 20 and cfg.neutral
    with pytest.raises(ConfigError, match="selection"):
        SteerEvalConfig(model="micro", data="cafe-conflict", vector="v.safetensors", selection="max")
    with pytest.raises(ConfigError, match="random_directions"):
        SteerEvalConfig(model="micro", data="cafe-conflict", vector="v.safetensors", random_directions=-1)


def test_off_gate_threshold_on_dev_and_its_test_effect_by_hand():
    from auralens.steering.nulls import choose_gate, gate_on_test

    # steering helps the low-listening items and hurts the high-listening ones
    y = np.linspace(0.0, 1.0, 40)
    diff = np.where(y < 0.5, 1.0, -1.0)
    dev = choose_gate(y, diff, n_boot=500, seed=0)
    assert dev["decision"] == "gate" and dev["dev"]["ci"][0] > 0
    assert dev["tau"] == pytest.approx(float(np.quantile(y, 0.5)))  # 20 of 40 items below it: +0.5
    assert dev["dev"]["gain"] == pytest.approx(0.5) and dev["dev"]["share_steered"] == pytest.approx(0.5)
    always = [c for c in dev["candidates"] if c["tau"] == float("inf")][0]
    assert always["gain"] == pytest.approx(0.0) and always["share_steered"] == 1.0
    t = gate_on_test(y, diff, dev["tau"], n_boot=500, seed=0)
    assert t["gain"] == pytest.approx(0.5) and t["ungated_gain"] == pytest.approx(0.0)
    assert t["gated_minus_ungated"] == pytest.approx(0.5) and t["helps"]
    # a gate that cannot find a good threshold shuts (never steers): test gain 0
    bad = choose_gate(y, -np.ones(40), n_boot=200, seed=0)
    assert bad["decision"] == "shut" and bad["tau"] is None
    shut = gate_on_test(y, -np.ones(40), None, n_boot=200, seed=0)
    assert shut["gain"] == 0.0 and shut["share_steered"] == 0.0 and shut["gated_minus_ungated"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="gate"):
        choose_gate(y, diff[:3])


def test_listening_signal_equals_eager_attention_on_audio(small_lm):
    from auralens.interp.attention_yield import audio_mask_from_ids
    from auralens.interp.datasets import load_dataset
    from auralens.interp.generation import cast_features, model_inputs
    from auralens.steering.gate import gate_heads, listening_signal

    lm = small_lm
    items = load_dataset("cafe-conflict:dev", n=3)
    heads = [(0, 1), (1, 0)]
    got = listening_signal(lm, items, heads, fmt="direct", batch_size=2)
    ref = []
    for it in items:  # one unpadded item at a time, eager attention, weights summed over audio keys
        batch = cast_features(lm, model_inputs(lm, [it], "direct"))
        mask = audio_mask_from_ids(batch["input_ids"], lm.arch)[0]
        cfgs = lm.model.config
        old = cfgs._attn_implementation
        lm.model.set_attn_implementation("eager")
        try:
            with torch.inference_mode():
                att = lm.model(**batch, output_attentions=True).attentions
        finally:
            lm.model.set_attn_implementation(old)
        ref.append(np.mean([float(att[L][0, h, -1][mask].sum()) for L, h in heads]))
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert gate_heads(_vector(), lm.arch)[1] == "every head of the model"
