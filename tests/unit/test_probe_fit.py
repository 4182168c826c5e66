"""Probe core: cross-validation by item, control task, bootstrap CI, directions, tables, figures.

Reference checks compare against independent sklearn code (``cross_val_score``,
``cross_val_predict``, a pipeline refitted by hand) and against a naive bootstrap loop.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import (
    KFold,
    StratifiedGroupKFold,
    cross_val_predict,
    cross_val_score,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from auralens.interp.errors import ConfigError, ProbeError
from auralens.probes.figures import accuracy_by_layer, accuracy_by_step, best_layers, write_html
from auralens.probes.fit import ProbeConfig, control_labels, fit_probe, make_folds
from auralens.probes.tables import TABLE_COLUMNS, ProbeRow, probe_results, probe_table, run_probes

N_ITEMS, D = 160, 12
FAST = dict(n_bootstrap=300, seed=3)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # 2 shared cores: BLAS threads fighting over them make tiny lbfgs fits ~8x slower
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def planted():
    """Features with very different scales; the label is linear in one direction of X."""
    rng = np.random.default_rng(0)
    scales = np.geomspace(0.1, 10.0, D)
    X = rng.normal(size=(N_ITEMS, D)) * scales
    w = rng.normal(size=D) / scales  # planted direction in the original feature space
    w /= np.linalg.norm(w)
    score = X @ w
    y = (score > np.median(score)).astype(int)
    y_cont = 2.0 * score + 0.05 * rng.normal(size=N_ITEMS)
    groups = np.array([f"item{i:03d}" for i in range(N_ITEMS)])
    return X, y, y_cont, groups, w


def _reference_pipeline(config: ProbeConfig) -> Pipeline:
    model = (
        LogisticRegression(C=config.C, max_iter=config.max_iter)
        if config.kind == "logistic"
        else Ridge(alpha=config.alpha)
    )
    return Pipeline([("scale", StandardScaler()), ("probe", model)])


# ------------------------------------------------------------------ reference implementations


def test_scores_match_sklearn_cross_val_score_on_the_same_folds(planted):
    X, y, _, groups, _ = planted
    config = ProbeConfig(n_folds=4, C=0.5, **FAST)
    folds = make_folds(y, groups, config)
    # the folds are sklearn's StratifiedGroupKFold with the config's seed
    expected = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=3).split(X, y, groups)
    for (tr, te), (tr2, te2) in zip(folds, expected, strict=True):
        np.testing.assert_array_equal(tr, tr2)
        np.testing.assert_array_equal(te, te2)

    result = fit_probe(X, y, groups, config, attribute="planted")
    ref_scores = cross_val_score(_reference_pipeline(config), X, y, cv=folds, n_jobs=1)
    np.testing.assert_allclose(result.fold_scores, ref_scores, atol=1e-12)
    ref_pred = cross_val_predict(_reference_pipeline(config), X, y, cv=folds, n_jobs=1)
    assert result.accuracy == pytest.approx(np.mean(ref_pred == y), abs=1e-12)
    assert result.chance == pytest.approx(max(np.mean(y), 1 - np.mean(y)))
    assert (result.n, result.n_items, result.n_classes) == (N_ITEMS, N_ITEMS, 2)


def test_ridge_scores_match_sklearn_r2(planted):
    X, _, y_cont, groups, _ = planted
    config = ProbeConfig(kind="ridge", alpha=3.0, **FAST)
    folds = make_folds(y_cont, groups, config)
    result = fit_probe(X, y_cont, groups, config, attribute="loudness")
    ref_scores = cross_val_score(_reference_pipeline(config), X, y_cont, cv=folds, n_jobs=1)
    np.testing.assert_allclose(result.fold_scores, ref_scores, atol=1e-12)
    ref_pred = cross_val_predict(_reference_pipeline(config), X, y_cont, cv=folds, n_jobs=1)
    assert result.accuracy == pytest.approx(r2_score(y_cont, ref_pred), abs=1e-12)
    assert result.chance == 0.0 and result.n_classes is None and result.metric == "r2"


def test_direction_is_the_refitted_pipeline_in_original_space():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, 6)) * [0.5, 1, 2, 4, 8, 16] + [1, -2, 3, 0, 5, -1]
    y = np.digitize(X @ rng.normal(size=6), [-5, 5])  # 3 ordered classes
    result = fit_probe(X, y, np.arange(90), ProbeConfig(n_folds=3, n_bootstrap=0))
    ref = _reference_pipeline(ProbeConfig()).fit(X, y)
    assert result.direction.shape == (3, 6)
    np.testing.assert_allclose(
        X @ result.direction.T + result.intercept, ref.decision_function(X), atol=1e-8
    )
    assert np.isnan(result.ci_low) and np.isnan(result.ci_high)  # n_bootstrap=0


# ------------------------------------------------------------------ synthetic ground truth


def test_planted_direction_is_read_and_recovered(planted):
    X, y, y_cont, groups, w = planted
    result = fit_probe(X, y, groups, ProbeConfig(**FAST), attribute="planted")
    assert result.accuracy > 0.9
    assert result.selectivity > 0.3
    assert result.direction.shape == (D,)
    assert _cos(result.direction, w) > 0.9  # original space: coef / scale
    assert _cos(result.direction * X.std(axis=0), w) < 0.8  # the standardised coef is not
    ridge = fit_probe(X, y_cont, groups, ProbeConfig(kind="ridge", **FAST), attribute="c")
    assert ridge.accuracy > 0.95 and ridge.selectivity > 0.5
    assert _cos(ridge.direction, w) > 0.99
    np.testing.assert_allclose(X @ ridge.direction + ridge.intercept, y_cont, atol=0.5)


def test_pure_noise_scores_near_chance(planted):
    _, y, _, groups, _ = planted
    X = np.random.default_rng(7).normal(size=(N_ITEMS, D))
    result = fit_probe(X, y, groups, ProbeConfig(**FAST), attribute="noise")
    assert abs(result.accuracy - result.chance) < 0.12
    assert abs(result.selectivity) < 0.15
    assert result.ci_low < result.chance + 0.03


def test_bootstrap_ci_contains_estimate_and_matches_a_naive_loop(planted):
    X, y, _, groups, _ = planted
    X = X + np.random.default_rng(2).normal(size=X.shape) * 3  # a mediocre probe: wide CI
    result = fit_probe(X, y, groups, ProbeConfig(n_bootstrap=2000, seed=3), attribute="b")
    assert result.ci_low <= result.accuracy <= result.ci_high
    assert result.ci_high - result.ci_low > 0.02
    # naive bootstrap over items of the out-of-fold correctness (one row per item here)
    folds = make_folds(y, groups, result.config)
    pred = cross_val_predict(_reference_pipeline(result.config), X, y, cv=folds, n_jobs=1)
    correct = (pred == y).astype(float)
    rng = np.random.default_rng(123)
    stats = [correct[rng.integers(0, N_ITEMS, N_ITEMS)].mean() for _ in range(2000)]
    low, high = np.quantile(stats, [0.025, 0.975])
    assert result.ci_low == pytest.approx(low, abs=0.03)
    assert result.ci_high == pytest.approx(high, abs=0.03)


def test_torch_tensors_are_accepted(planted):
    torch = pytest.importorskip("torch")
    X, y, _, groups, _ = planted
    config = ProbeConfig(n_bootstrap=0)
    from_numpy = fit_probe(X.astype(np.float32), y, groups, config)
    from_torch = fit_probe(torch.from_numpy(X.astype(np.float32)), torch.from_numpy(y), groups,
                           config)
    assert from_torch.accuracy == from_numpy.accuracy
    np.testing.assert_allclose(from_torch.direction, from_numpy.direction)
    bf16 = fit_probe(torch.from_numpy(X).to(torch.bfloat16), y, groups, config)
    assert bf16.accuracy > 0.85


# ------------------------------------------------------------------ splitting by item


def test_no_item_is_in_both_train_and_test():
    rng = np.random.default_rng(4)
    n_items, rows_per_item = 40, 3
    groups = np.repeat(np.arange(n_items) * 7 + 1000, rows_per_item)  # non-contiguous ids
    y = np.repeat(rng.integers(0, 3, n_items), rows_per_item)
    for config in (ProbeConfig(n_folds=4), ProbeConfig(kind="ridge", n_folds=4)):
        folds = make_folds(y.astype(float), groups, config)
        assert len(folds) == 4
        tests = np.concatenate([te for _, te in folds])
        np.testing.assert_array_equal(np.sort(tests), np.arange(len(y)))  # a partition
        for train, test in folds:
            assert not set(groups[train]) & set(groups[test])


def test_memorisable_items_do_not_leak_across_folds():
    """Rows of one item share features and a random label: only a leaky split can score."""
    rng = np.random.default_rng(5)
    n_items, rows_per_item = 60, 4
    item_features = rng.normal(size=(n_items, 30))
    X = np.repeat(item_features, rows_per_item, axis=0) + 0.01 * rng.normal(size=(240, 30))
    y = np.repeat(rng.integers(0, 2, n_items), rows_per_item)
    groups = np.repeat(np.arange(n_items), rows_per_item)
    result = fit_probe(X, y, groups, ProbeConfig(n_bootstrap=0, C=100.0), attribute="leak")
    leaky = cross_val_score(
        _reference_pipeline(ProbeConfig(C=100.0)), X, y,
        cv=KFold(5, shuffle=True, random_state=0), n_jobs=1,
    ).mean()
    assert leaky > 0.9  # a row-level split memorises items
    assert result.accuracy < 0.75  # the item-level split does not
    assert result.n_items == n_items and result.n == 240


# ------------------------------------------------------------------ control task


def test_control_labels_keep_the_distribution_and_are_a_function_of_the_key():
    from scipy.stats import chisquare

    rng = np.random.default_rng(6)
    y = rng.choice(np.array(["one", "two", "three"]), size=200, p=[0.6, 0.3, 0.1])
    control = control_labels(y, seed=1, attribute="count")
    names = ["one", "two", "three"]
    observed = np.array([np.sum(control == v) for v in names])
    expected = np.array([np.sum(y == v) for v in names], dtype=float)
    assert chisquare(observed, expected).pvalue > 0.001  # drawn from the real marginal
    assert (control != y).mean() > 0.2  # but a different assignment
    np.testing.assert_array_equal(control, control_labels(y, seed=1, attribute="count"))
    assert not np.array_equal(control, control_labels(y, seed=2, attribute="count"))
    assert not np.array_equal(control, control_labels(y, seed=1, attribute="order"))

    key = rng.integers(0, 25, size=200)  # e.g. a question template recurring across items
    keyed = control_labels(y, key=key, seed=1, attribute="count")
    for k in np.unique(key):
        assert len(set(keyed[key == k].tolist())) == 1  # a function of the key
    # the label of a key value depends on the other rows only through the marginal they give
    half = np.flatnonzero(key < 12)
    assert np.mean(control_labels(y[half], key=key[half], seed=1, attribute="count") == keyed[half]) > 0.9
    order = rng.permutation(200)
    np.testing.assert_array_equal(control_labels(y[order], key=key[order], seed=1, attribute="count"),
                                  keyed[order])


def test_control_task_exposes_memorisation_of_a_recurring_key():
    """Hewitt & Liang: X encodes the template; a probe can memorise template -> control label."""
    rng = np.random.default_rng(8)
    n_templates, n = 8, 160
    template = rng.integers(0, n_templates, size=n)
    X = rng.normal(size=(n_templates, 20))[template] * 3 + rng.normal(size=(n, 20))
    y = rng.integers(0, 2, size=n)  # unrelated to X
    result = fit_probe(
        X, y, np.arange(n), ProbeConfig(n_bootstrap=0), control_key=template, attribute="mem"
    )
    assert result.control_accuracy > 0.9
    assert result.selectivity < 0
    control = control_labels(np.unique(y, return_inverse=True)[1], key=template, attribute="mem")
    assert result.control_accuracy >= max(np.mean(control), 1 - np.mean(control))


def test_no_control_gives_nan_selectivity(planted):
    X, y, _, groups, _ = planted
    result = fit_probe(X, y, groups, ProbeConfig(control="none", n_bootstrap=0))
    assert np.isnan(result.control_accuracy) and np.isnan(result.selectivity)
    assert result.control_fold_scores == ()


# ------------------------------------------------------------------ tables


def test_run_probes_table_over_sites_layers_and_steps(planted):
    X, y, y_cont, groups, _ = planted
    rng = np.random.default_rng(9)
    acts = {
        ("lm.blocks.{L}.hook_resid_post".format(L=layer), layer, "last_prompt", None):
            X * layer + rng.normal(size=X.shape) * (2 - layer)
        for layer in range(3)
    }
    for step in range(2):  # later steps exist for fewer items
        rows = np.arange(N_ITEMS - 40 * step)
        acts[("lm.blocks.2.hook_resid_post", 2, "step_end", step)] = (X[rows], rows)
    y_missing = y_cont.copy()
    y_missing[::10] = np.nan  # undefined for some items: dropped for that attribute only
    configs = {
        "high": ProbeConfig(n_bootstrap=100),
        "loud": ProbeConfig(kind="ridge", n_bootstrap=100),
    }
    table = run_probes(acts, {"high": y, "loud": y_missing}, groups, configs, n_layers=3)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert len(table) == 5 * 2
    assert table["step"].dtype == "Int64" and table["layer"].dtype == np.int64
    n = table.set_index(["layer", "position", "attribute"], drop=False)
    assert n.loc[(2, "last_prompt", "high"), "n"] == N_ITEMS
    assert n.loc[(2, "last_prompt", "loud"), "n"] == N_ITEMS - N_ITEMS // 10
    assert sorted(table.loc[table["position"] == "step_end", "n"].unique()) == [
        108, 120, 144, 160,
    ]
    np.testing.assert_allclose(table["selectivity"], table["accuracy"] - table["control_accuracy"])
    best = table[(table["layer"] == 2) & (table["position"] == "last_prompt")]
    worst = table[(table["layer"] == 0) & (table["position"] == "last_prompt")]
    assert (best["accuracy"].to_numpy() > worst["accuracy"].to_numpy() + 0.3).all()
    # the same data as a single fit_probe call gives the same row
    direct = fit_probe(X * 2, y, groups, configs["high"], attribute="high")
    row = n.loc[(2, "last_prompt", "high")]
    assert row["accuracy"] == pytest.approx(direct.accuracy)
    assert row["control_accuracy"] == pytest.approx(direct.control_accuracy)
    assert row["ci_low"] == pytest.approx(direct.ci_low)


def test_probe_results_keep_directions_and_probe_table_accepts_mappings(planted):
    X, y, _, groups, _ = planted
    config = ProbeConfig(n_bootstrap=0)
    rows = probe_results({("resid", 1, -1, None): X}, {"high": y}, groups, config)
    assert isinstance(rows[0], ProbeRow) and rows[0].result.direction.shape == (D,)
    record = rows[0].as_record()
    table = probe_table([rows[0], record, {**{k: record[k] for k in TABLE_COLUMNS[:5]},
                                           "result": rows[0].result}])
    assert list(table.columns) == list(TABLE_COLUMNS) and len(table) == 3
    assert table.iloc[0].equals(table.iloc[1])
    assert probe_table([]).columns.tolist() == list(TABLE_COLUMNS)


# ------------------------------------------------------------------ errors


def _small(n=30, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, 2, n), np.arange(n)


def test_error_single_class_names_attribute_and_class():
    X, _, g = _small()
    with pytest.raises(ProbeError, match=r"'speaker'.*only class 'alice'"):
        fit_probe(X, np.array(["alice"] * 30), g, attribute="speaker")
    with pytest.raises(ProbeError, match=r"'pitch'.*single value 3\.0"):
        fit_probe(X, np.full(30, 3.0), g, ProbeConfig(kind="ridge"), attribute="pitch")


def test_error_too_few_items_says_needed_and_found():
    X, y, _ = _small()
    groups = np.arange(30) % 3  # 3 items, 10 rows each
    with pytest.raises(ProbeError, match=r"'count'.*at least 5 distinct items.*found 3"):
        fit_probe(X, y, groups, attribute="count")
    y_rare = np.zeros(30, dtype=int)
    y_rare[:2] = 1  # class 1 occurs in 2 items
    with pytest.raises(ProbeError, match=r"every class in at least 5 distinct items.*1: 2"):
        fit_probe(X, y_rare, np.arange(30), attribute="count")
    fit_probe(X, y_rare, np.arange(30), ProbeConfig(n_folds=2, n_bootstrap=0))  # enough for 2


def test_error_mismatched_lengths(unchecked_shapes):  # X[:, 0]: the probe's own check of a 1-D X
    X, y, g = _small()
    with pytest.raises(ProbeError, match=r"same number of rows.*X=30, y=29, groups=30"):
        fit_probe(X, y[:-1], g, attribute="order")
    with pytest.raises(ProbeError, match=r"X=30, y=30, groups=31"):
        fit_probe(X, y, np.arange(31))
    with pytest.raises(ProbeError, match=r"control_key=10"):
        fit_probe(X, y, g, control_key=np.arange(10))
    with pytest.raises(ProbeError, match=r"2-D array.*found shape \(30,\)"):
        fit_probe(X[:, 0], y, g)


def test_error_non_finite_features():
    X, y, g = _small()
    X[3, 1] = np.nan
    X[7, 0] = np.inf
    with pytest.raises(ProbeError, match=r"finite features, found 2 non-finite.*\[3, 7\]"):
        fit_probe(X, y, g)


def test_error_layer_out_of_range():
    X, y, g = _small()
    acts = {("lm.blocks.4.hook_resid_post", 4, "last", None): X}
    with pytest.raises(ProbeError, match=r"layer in \[0, 3\] \(n_layers=4\), found 4"):
        run_probes(acts, {"a": y}, g, ProbeConfig(n_bootstrap=0), n_layers=4)
    with pytest.raises(ProbeError, match=r"layer in \[0, 3\].*found -1"):
        run_probes({("resid", -1, "last", None): X}, {"a": y}, g, n_layers=4)


def test_error_run_probes_names_the_location():
    X, _, g = _small()
    with pytest.raises(ProbeError, match=r"\('resid', 0, 'last', None\).*'a'.*only class 1"):
        run_probes({("resid", 0, "last", None): X}, {"a": np.ones(30, int)}, g)


@pytest.mark.parametrize(
    "kwargs",
    [{"kind": "svm"}, {"n_folds": 1}, {"C": 0.0}, {"alpha": -1.0}, {"n_bootstrap": -1},
     {"control": "shuffle"}, {"confidence": 1.0}, {"seed": -3}, {"n_folds": 2.5}],
)
def test_config_validation(kwargs):
    with pytest.raises(ConfigError, match="ProbeConfig"):
        ProbeConfig(**kwargs)
    with pytest.raises(TypeError):
        ProbeConfig("logistic")  # keyword-only


# ------------------------------------------------------------------ figures


@pytest.fixture(scope="module")
def table():
    rows = []
    for attribute, base in (("count", 0.4), ("pitch", 0.2)):
        for layer in range(4):
            for step in (None, 0, 1, 2):
                acc = base + 0.1 * layer - (0.05 * step if step is not None else 0)
                rows.append(dict(
                    site="lm.blocks.{L}.hook_resid_post", layer=layer, position="last",
                    step=step, attribute=attribute, accuracy=acc, control_accuracy=0.3,
                    selectivity=acc - 0.3, chance=0.33, ci_low=acc - 0.05, ci_high=acc + 0.05,
                    n=100,
                ))
    return probe_table(rows)


def test_accuracy_by_layer_traces(table, tmp_path):
    fig = accuracy_by_layer(table)  # step=None: the prompt probes
    names = [t.name for t in fig.data]
    for attribute in ("count", "pitch"):
        for suffix in ("", " control", " chance", " 95% CI"):
            assert f"{attribute}{suffix}" in names
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["count"].x) == [0, 1, 2, 3]
    np.testing.assert_allclose(by_name["count"].y, [0.4, 0.5, 0.6, 0.7])
    assert by_name["count control"].line.dash == "dash"
    assert by_name["count 95% CI"].fill == "toself" and len(by_name["count 95% CI"].x) == 8
    one_step = accuracy_by_layer(table, step=1, attributes=["pitch"])
    np.testing.assert_allclose(one_step.data[1].y, [0.15, 0.25, 0.35, 0.45])
    with pytest.raises(ProbeError, match="expected rows"):
        accuracy_by_layer(table, step=9)
    path = write_html(fig, tmp_path / "figs" / "layers.html")
    html = path.read_text()
    assert path.stat().st_size > 1_000_000  # plotly.js is embedded
    assert '<script src="https://cdn.plot.ly' not in html


def test_accuracy_by_step_uses_best_layer(table):
    assert best_layers(table) == {"count": 3, "pitch": 3}
    fig = accuracy_by_step(table, layers={"count": 1, "pitch": 3})
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["count"].x) == [0, 1, 2]
    np.testing.assert_allclose(by_name["count"].y, [0.5, 0.45, 0.4])
    np.testing.assert_allclose(by_name["pitch"].y, [0.5, 0.45, 0.4])
    assert "layer 1" in by_name["count"].hovertemplate
    assert {"count chance", "pitch control"} <= set(by_name)
    assert len(accuracy_by_step(table).data) == 8
