"""Decay metrics and head ranking against independent (naive / scipy) computations."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from auralens.interp.decay import attribute_errors, claim_accuracy_by_step, claim_rows, decay_summary, decay_table
from auralens.interp.listening import contrast_scores, correlation_scores, heads_table, top_k
from auralens.interp.stats import bootstrap_mean_ci


def _fake(n_items=12, L=3, H=4, seed=0):
    rng = np.random.default_rng(seed)
    yields, steps = [], []
    for _ in range(n_items):
        n = int(rng.integers(10, 40))
        s = np.sort(rng.integers(0, 5, size=n))
        base = 0.6 - 0.1 * s[:, None, None]  # planted decay: 0.1 per step
        yields.append(np.clip(base + 0.02 * rng.standard_normal((n, L, H)), 0, 1))
        steps.append(s)
    return yields, steps


def test_decay_means_match_a_naive_computation():
    yields, steps = _fake()
    df = decay_table(yields, steps, top_heads=[(0, 1), (2, 3)], n_boot=200)
    for step in range(5):
        naive_all, naive_top, naive_head = [], [], []
        for y, s in zip(yields, steps):
            if (s == step).any():
                m = y[s == step].mean(0)
                naive_all.append(m.mean())
                naive_top.append((m[0, 1] + m[2, 3]) / 2)
                naive_head.append(m[1, 2])
        row = df[(df.group == "all") & (df.axis == "step") & (df.step == step)].iloc[0]
        assert row.mean_yield == pytest.approx(np.mean(naive_all), abs=1e-12)
        assert row.n == len(naive_all) and row.ci_low <= row.mean_yield <= row.ci_high
        row = df[(df.group == "topk") & (df.axis == "step") & (df.step == step)].iloc[0]
        assert row.mean_yield == pytest.approx(np.mean(naive_top), abs=1e-12)
        row = df[(df.group == "head") & (df.layer == 1) & (df["head"] == 2) & (df.step == step) & (df.axis == "step")].iloc[0]
        assert row.mean_yield == pytest.approx(np.mean(naive_head), abs=1e-12)
    summ = decay_summary(df)
    slope = summ[summ.group == "all"].slope.iloc[0]
    assert slope == pytest.approx(-0.1, abs=0.01)
    assert summ[summ.group == "all"].last_first_ratio.iloc[0] < 0.5
    assert set(df.axis) == {"step", "token_bin"}


def test_vectorised_bootstrap_matches_a_naive_loop():
    rng = np.random.default_rng(1)
    v = rng.random(50)
    mean, lo, hi = bootstrap_mean_ci(v, n_boot=4000, seed=3)
    naive = [rng.choice(v, size=len(v)).mean() for _ in range(4000)]
    assert mean == pytest.approx(v.mean())
    assert lo == pytest.approx(np.quantile(naive, 0.025), abs=0.01)
    assert hi == pytest.approx(np.quantile(naive, 0.975), abs=0.01)


def test_correlation_and_contrast_against_scipy():
    rng = np.random.default_rng(2)
    n, L, H = 40, 2, 3
    correct = rng.random(n) < 0.5
    y = rng.random((n, L, H))
    y[:, 1, 2] += 0.5 * correct  # a listening head
    r = correlation_scores(y, correct)
    for layer in range(L):
        for head in range(H):
            assert r[layer, head] == pytest.approx(stats.pearsonr(y[:, layer, head], correct.astype(float))[0], abs=1e-10)
    sil = y - 0.3 * (np.arange(L * H).reshape(L, H) == 5) + 0.01 * rng.standard_normal((n, L, H))
    mean, dz = contrast_scores(y, sil)
    d = y[:, 1, 2] - sil[:, 1, 2]
    assert mean[1, 2] == pytest.approx(d.mean()) and dz[1, 2] == pytest.approx(d.mean() / d.std(ddof=1))
    t = heads_table(correlation=r, contrast=mean, contrast_dz=dz)
    assert top_k(t, 1) == [(1, 2)]
    assert top_k(t, 1, by="corr_rank") == [(1, 2)]
    assert set(t.columns) >= {"layer", "head", "corr", "corr_rank", "contrast", "contrast_rank", "rank"}


def test_claim_accuracy_and_error_attribution():
    from auralens.interp.cafe import make_item, render_target

    it = make_item(3, tier="perception", qtype="count")
    good = render_target(it, "structured")
    ev = it.scene["events"]
    wrong = good.replace(f"sound 1 : {ev[0]['cls'].replace('_', ' ')}", "sound 1 : zzz")
    wrong_cls = "tone" if ev[0]["cls"] != "tone" else "noise"
    bad = good.replace(f"sound 1 : {ev[0]['cls'].replace('_', ' ')}", f"sound 1 : {wrong_cls}")
    claims = pd.DataFrame(claim_rows("a", good, it.scene) + claim_rows("b", bad, it.scene))
    by_step = claim_accuracy_by_step(claims, n_boot=100)
    # item-level mean: item a all right, item b 2 of 3 claims of step 1 right
    assert by_step.loc[by_step.step == 1, "accuracy"].iloc[0] == pytest.approx((1 + 2 / 3) / 2)
    items = pd.DataFrame([{"item_id": "a", "correct": False}, {"item_id": "b", "correct": False},
                          {"item_id": "c", "correct": True}, {"item_id": "d", "correct": False}])
    lab = attribute_errors(items, claims).set_index("item_id")["error_type"].to_dict()
    assert lab == {"a": "reasoning", "b": "perception", "c": "correct", "d": "unverifiable"}
    assert wrong  # the unparseable variant simply makes no class claim


def test_correlation_undefined_when_all_answers_agree_ranks_by_contrast():
    rng = np.random.default_rng(4)
    y = rng.random((10, 2, 2))
    r = correlation_scores(y, np.ones(10, dtype=bool))
    assert np.isnan(r).all()
    sil = y.copy()
    sil[:, 0, 1] -= 0.4
    mean, dz = contrast_scores(y, sil)
    t = heads_table(correlation=r, contrast=mean, contrast_dz=dz)
    assert "corr" in t.columns and top_k(t, 1) == [(0, 1)]


def test_heads_that_do_not_attend_to_audio_rank_last():
    from auralens.interp.listening import heads_table

    rng = np.random.default_rng(0)
    corr = rng.normal(size=(2, 3))
    contrast = rng.normal(size=(2, 3))
    mean_yield = np.array([[0.0, 0.3, 0.001], [0.2, 0.0, 0.4]])
    t = heads_table(correlation=corr, contrast=contrast, mean_yield=mean_yield)
    listeners = {(0, 1), (1, 0), (1, 2)}
    top = {(int(r.layer), int(r.head)) for r in t.head(3).itertuples()}
    assert top == listeners
    assert t.head(3)["listens"].all() and not t.tail(3)["listens"].any()
    # among listeners the order is the plain one (mean of the two ranks)
    plain = heads_table(correlation=corr, contrast=contrast)
    order = [(int(r.layer), int(r.head)) for r in plain.itertuples() if (int(r.layer), int(r.head)) in listeners]
    assert order == [(int(r.layer), int(r.head)) for r in t.head(3).itertuples()]


def test_decay_by_step_type_and_reach_last_subset_match_naive_means():
    from auralens.interp.decay import reach_last_step

    yields, steps = _fake(n_items=16)
    types = [np.where(s % 2 == 0, "claim", "reasoning").astype(object) for s in steps]
    df, per_item = decay_table(yields, steps, top_heads=[(0, 1)], n_boot=100, step_types=types, return_per_item=True)
    n_steps = [int(s.max()) + 1 for s in steps]
    s_max = reach_last_step(n_steps)
    assert sum(n > s_max for n in n_steps) >= 8 and (s_max == max(n_steps) - 1 or sum(n > s_max + 1 for n in n_steps) < 8)
    keep = [i for i, n in enumerate(n_steps) if n > s_max]
    for step in range(s_max + 1):
        naive = [yields[i][steps[i] == step].mean() for i in keep if (steps[i] == step).any()]
        row = df[(df.group == "all:reach_last") & (df.step == step)].iloc[0]
        assert row.mean_yield == pytest.approx(np.mean(naive)) and row.n == len(naive)
    assert df[df.group == "all:reach_last"].step.max() == s_max
    # claim steps are the even ones here: no row at odd steps, the plain mean at even ones
    claim = df[df.group == "all:claim"]
    assert set(claim.step) == {s for s in range(5) if s % 2 == 0}
    assert set(df[df.group == "all:reasoning"].step) == {1, 3}
    row = claim[claim.step == 2].iloc[0]
    plain = df[(df.group == "all") & (df.axis == "step") & (df.step == 2)].iloc[0]
    assert row.mean_yield == pytest.approx(plain.mean_yield)
    assert set(per_item) >= {"all", "topk", "all:claim", "topk:reasoning", "all:reach_last"}


def test_summary_cis_bootstrap_the_slope_over_items():
    yields, steps = _fake(n_items=30)
    df, per_item = decay_table(yields, steps, n_boot=100, return_per_item=True, per_head=False)
    summ = decay_summary(df, per_item=per_item, n_boot=500, seed=1)
    r = summ[(summ.group == "all") & (summ.axis == "step")].iloc[0]
    assert r.slope_ci_low <= r.slope <= r.slope_ci_high and r.slope_ci_high < 0
    assert r.ratio_ci_low <= r.last_first_ratio <= r.ratio_ci_high and r.n_items == 30
    # against scipy's BCa bootstrap directly: the steps as paired samples, items resampled together
    from scipy import stats

    v = per_item["all"][:, :5]
    ref = stats.bootstrap(tuple(v.T), lambda *c: np.polyfit(np.arange(5), [np.nanmean(x) for x in c], 1)[0],
                          n_resamples=500, method="BCa", paired=True, vectorized=False, rng=np.random.default_rng(1))
    assert r.slope_ci_low == pytest.approx(ref.confidence_interval.low, abs=1e-9)
    assert r.slope_ci_high == pytest.approx(ref.confidence_interval.high, abs=1e-9)
    # identical items: a zero-width interval
    flat = [np.full((10, 2, 2), 0.5) for _ in range(5)]
    st = [np.repeat(np.arange(5), 2) for _ in range(5)]
    d2, p2 = decay_table(flat, st, n_boot=50, return_per_item=True)
    s2 = decay_summary(d2, per_item=p2, n_boot=50)
    r2 = s2[(s2.group == "all") & (s2.axis == "step")].iloc[0]
    assert r2.slope_ci_low == pytest.approx(0, abs=1e-12) and r2.slope_ci_high == pytest.approx(0, abs=1e-12)
    heads = s2[s2.group == "head"]
    assert heads.slope_ci_low.isna().all() and (heads.n_items == -1).all()


def test_step_types_follow_the_claims_of_each_step():
    from auralens.interp.decay import step_types_of

    text = "i hear two sounds\nthe first sound is sound 1\nsound 1 is tone\nso the answer is tone"
    steps = np.array([0, 0, 1, 1, 2, 2, 3])
    assert list(step_types_of(text, steps)) == ["claim", "claim", "reasoning", "reasoning", "claim", "claim",
                                                "reasoning"]


def test_perception_errors_count_only_claims_the_question_depends_on():
    from auralens.interp.cafe import make_item
    from auralens.interp.decay import depends_on, error_shares

    it = next(i for i in (make_item(s, tier="perception", qtype="identity") for s in range(50))
              if len(i.scene["events"]) >= 2)
    k = it.meta["facts"]["k"]
    assert depends_on(it) == {("class", k)}
    other = (k + 1) % len(it.scene["events"])
    claims = pd.DataFrame([
        {"item_id": "x", "step": 1, "kind": "class", "sound": other, "value": "tone", "claim_correct": False},
        {"item_id": "x", "step": 2, "kind": "class", "sound": k, "value": "tone", "claim_correct": True},
        {"item_id": "y", "step": 1, "kind": "class", "sound": k, "value": "tone", "claim_correct": False},
        {"item_id": "z", "step": 1, "kind": "class", "sound": other, "value": "tone", "claim_correct": False},
    ])
    items = pd.DataFrame([{"item_id": i, "correct": False} for i in "xyz"] + [{"item_id": "w", "correct": True}])
    dep = {i: depends_on(it) for i in "xyzw"}
    lab = attribute_errors(items, claims, dep).set_index("item_id")["error_type"].to_dict()
    assert lab == {"x": "reasoning", "y": "perception", "z": "unverifiable", "w": "correct"}
    # without the dependency any wrong claim is a perception error (the old rule)
    assert attribute_errors(items, claims).set_index("item_id")["error_type"]["x"] == "perception"
    shares = error_shares(attribute_errors(items, claims, dep))
    assert shares == {"perception": pytest.approx(1 / 3, abs=1e-4), "reasoning": pytest.approx(1 / 3, abs=1e-4),
                      "unverifiable": pytest.approx(1 / 3, abs=1e-4)}
    for qt, facts_kind in (("count", "count"), ("louder", "loudness"), ("higher", "pitch")):
        d = depends_on(make_item(5, tier="perception", qtype=qt))
        assert {kd for kd, _ in d} == {facts_kind}
    assert depends_on(make_item(5, tier="multihop", qtype="after")) == {
        ("class", make_item(5, tier="multihop", qtype="after").meta["facts"]["ia"] + i) for i in (0, 1)}


def test_claim_accuracy_point_estimate_is_the_item_level_mean():
    claims = pd.DataFrame([{"item_id": "a", "step": 0, "claim_correct": c, "kind": "class", "sound": 0, "value": "t"}
                           for c in (True, True, True, False)]
                          + [{"item_id": "b", "step": 0, "claim_correct": False, "kind": "class", "sound": 0, "value": "t"}])
    r = claim_accuracy_by_step(claims, n_boot=200).iloc[0]
    assert r.accuracy == pytest.approx((0.75 + 0.0) / 2) and r.ci_low <= r.accuracy <= r.ci_high
    assert r.n_claims == 5 and r.n_items == 2


def test_equivalence_is_two_one_sided_t_tests():
    from auralens.organisms.validate import equivalence

    rng = np.random.default_rng(7)
    for truth, n in ((0.0, 400), (0.03, 100), (0.1, 300), (-0.02, 50)):
        d = (rng.random(n) < 0.3 + truth).astype(float) - (rng.random(n) < 0.3).astype(float)
        e = equivalence(d, 0.05)
        m, se = d.mean(), d.std(ddof=1) / np.sqrt(n)
        p_low = stats.t.sf((m + 0.05) / se, n - 1)  # H0: mean <= -margin
        p_up = stats.t.cdf((m - 0.05) / se, n - 1)  # H0: mean >= +margin
        assert e["p_lower"] == pytest.approx(p_low) and e["p_upper"] == pytest.approx(p_up)
        assert e["p"] == pytest.approx(max(p_low, p_up))
        half = stats.t.ppf(0.95, n - 1) * se
        assert e["ci"] == pytest.approx((m - half, m + half))
        # equivalent exactly when the 90% interval lies inside the margin
        assert e["equivalent"] == (-0.05 < m - half and m + half < 0.05)
    big = equivalence(rng.normal(0, 0.3, 2000), 0.05)
    assert big["equivalent"] and big["power_at_0"] > 0.95 and big["n_for_power"] < 2000
    assert not equivalence(rng.normal(0.1, 0.3, 2000), 0.05)["equivalent"]
    x = rng.normal(0, 0.3, 20)
    small = equivalence(x, 0.05)
    need = np.ceil(((stats.norm.ppf(0.95) + stats.norm.ppf(0.9)) * x.std(ddof=1) / 0.05) ** 2)
    assert not small["equivalent"] and small["power_at_0"] < 0.2 and small["n_for_power"] == need > 100


def test_healthy_checks_are_equivalence_rows_and_the_table_says_none():
    from auralens.organisms.validate import healthy_checks, summary_rows

    rng = np.random.default_rng(8)
    base = rng.random(600) < 0.6
    same = {f"i{i}": float(c) for i, c in enumerate(base)}
    flip = {f"i{i}": float(c if rng.random() > 0.02 else not c) for i, c in enumerate(base)}
    worse = {f"i{i}": float(c and rng.random() > 0.25) for i, c in enumerate(base)}
    ok = healthy_checks("micro", {"neutral/real": same, "conflict/real": flip})[0]
    bad = healthy_checks("micro", {"neutral/real": same, "conflict/real": worse})[0]
    assert ok["pass"] and ok["threshold"] == "TOST ±0.05" and ok["ci"][0] > -0.05 and ok["ci"][1] < 0.05
    assert not bad["pass"] and bad["value"] > 0.1
    res = {"accuracy": {}, "checks": [
        {"organism": "micro", "found": {"yield_onset": None, "claim_onset": None, "k": 3, "claim_gap": 0.01}},
        {"organism": "micro-decay", "found": {"yield_onset": 3, "claim_onset": 3, "k": 3, "claim_gap": 0.6}}]}
    rows = summary_rows(res)
    assert rows[0][3] == "none / none (k=3)" and rows[1][3] == "3 / 3 (k=3)"


def test_seed_offset_items_are_the_split_from_that_seed():
    from auralens.interp.cafe.cues import cue_items
    from auralens.interp.errors import ConfigError
    from auralens.organisms.validate import check_seeds, offset_cue_items

    late = offset_cue_items("conflict", "dev", 6, 7)
    ref = cue_items("conflict", "dev", 13)[7:]
    assert [(i.item_id, i.question, i.choices, i.answer) for i in late] == [
        (i.item_id, i.question, i.choices, i.answer) for i in ref]
    assert check_seeds("test", 10, 5) == range(9_200_005, 9_200_015)
    for bad, match in ((("calibration", 10, 0), "--split"), (("test", 10, -1), "--seed-offset"),
                       (("test", 10, 100_000), "--seed-offset"), (("test", 0, 0), "--n")):
        with pytest.raises(ConfigError, match=match):
            check_seeds(*bad)
