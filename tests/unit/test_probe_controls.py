"""Probe controls: Hewitt & Liang's control task, the sound-type key, applying a fitted probe,
and the micro-prior probe check's silence control on planted stores.

- control labels are a function of the key *value* (same key, same label, across items, calls
  and subsets) and follow the real labels' marginal (chi-square, scipy);
- on features that carry no information the control scores at chance; on features that encode
  a recurring key it scores well above chance (memorisation), which the per-row baseline this
  replaced (the labels permuted over rows) can never show;
- :func:`predict` equals the refitted sklearn pipeline's ``predict`` (independent code);
- the silence check passes where silence activations carry nothing and fails where they carry
  the label (a probe that reads the text).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chisquare
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from auralens.interp.errors import ProbeError
from auralens.probes.fit import ProbeConfig, control_labels, fit_probe, predict
from auralens.probes.labels import control_keys, sound_type_key


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _permuted_control(y: np.ndarray, seed: int) -> np.ndarray:
    """The control this replaced: the labels permuted over rows (each row its own key)."""
    return np.random.default_rng(seed).permutation(y)


# ------------------------------------------------------------------ control labels


def test_same_key_same_control_label_across_items_calls_and_subsets():
    rng = np.random.default_rng(0)
    key = rng.choice([f"type{i}" for i in range(24)], size=300)
    y = rng.choice(np.array(["a", "b", "c"]), size=300)
    c = control_labels(y, key=key, seed=4, attribute="event1_class")
    for k in np.unique(key):
        assert len(set(c[key == k].tolist())) == 1, k  # every item of a type: one label
    # a subset of the rows (another split) keeps the label of every key it holds
    sub = rng.choice(300, size=150, replace=False)
    c_sub = control_labels(y[sub], key=key[sub], seed=4, attribute="event1_class")
    agree = np.mean(c_sub == c[sub])
    assert agree > 0.85  # only a shift of the marginal between the subsets can move a label
    # the mapping depends on the seed and the attribute
    assert not np.array_equal(c, control_labels(y, key=key, seed=5, attribute="event1_class"))
    assert not np.array_equal(c, control_labels(y, key=key, seed=4, attribute="n_events"))
    # same rows in another order: the same label per row
    order = rng.permutation(300)
    np.testing.assert_array_equal(control_labels(y[order], key=key[order], seed=4, attribute="event1_class"),
                                  c[order])
    with pytest.raises(ProbeError, match="expected 300 entries"):
        control_labels(y, key=key[:10])


def test_control_labels_follow_the_real_marginal():
    rng = np.random.default_rng(1)
    p = np.array([0.6, 0.3, 0.1])
    y = rng.choice(np.array(["one", "two", "three"]), size=3000, p=p)
    key = np.arange(3000)  # every key once: the control labels over keys are draws from y's marginal
    c = control_labels(y, key=key, seed=2, attribute="count")
    names = ["one", "two", "three"]
    observed = np.array([np.sum(c == v) for v in names])
    expected = np.array([np.sum(y == v) for v in names], dtype=float)
    assert chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 0.001
    # and they are not the real labels
    assert np.mean(c == y) < 0.6


def test_control_on_pure_noise_is_at_chance_with_and_without_a_key():
    """Balanced 3 classes, features independent of everything.  A probe that cannot read its
    target scores between sum(p^2) (predictions drawn from the target's own marginal p) and
    max(p) (always the majority class), p the control labels' marginal."""
    n, d = 240, 10
    free, keyed, low, high, permuted = [], [], [], [], []
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        y = np.repeat(np.arange(3), n // 3)
        rng.shuffle(y)
        X = rng.normal(size=(n, d))
        key = rng.integers(0, 24, size=n)  # 24 recurring types, as the cafe sound types
        cfg = ProbeConfig(n_bootstrap=0, seed=seed)
        free.append(fit_probe(X, y, np.arange(n), cfg, attribute="noise").control_accuracy)
        keyed.append(fit_probe(X, y, np.arange(n), cfg, control_key=key, attribute="noise").control_accuracy)
        p = np.bincount(control_labels(y, key=key, seed=seed, attribute="noise"), minlength=3) / n
        low.append(float(np.sum(p**2)))
        high.append(float(p.max()))
        permuted.append(fit_probe(X, y, np.arange(n), cfg, control_y=_permuted_control(y, seed),
                                  attribute="noise").control_accuracy)
    chance = 1 / 3
    assert abs(np.mean(free) - chance) < 0.03, np.mean(free)  # 240 types: p ~ balanced
    assert np.mean(low) - 0.02 < np.mean(keyed) < np.mean(high) + 0.02, (np.mean(keyed), np.mean(low))
    # the baseline this replaced (the labels permuted over rows) is no higher: it is a
    # random-label null, not a memorisation control
    assert np.mean(permuted) < chance + 0.01, np.mean(permuted)


def test_control_on_a_memorisable_key_is_above_chance():
    """Features encode a recurring type (24 of them) but not the label: only memorisation scores."""
    rng = np.random.default_rng(3)
    n, d, n_types = 480, 40, 24
    key = rng.integers(0, n_types, size=n)
    X = 3.0 * rng.normal(size=(n_types, d))[key] + rng.normal(size=(n, d))
    y = rng.integers(0, 2, size=n)  # unrelated to X
    r = fit_probe(X, y, np.arange(n), ProbeConfig(n_bootstrap=0, C=10.0), control_key=key, attribute="mem")
    assert abs(r.accuracy - 0.5) < 0.1  # the real task: nothing to read
    assert r.control_accuracy > r.chance + 0.25  # the control: memorised type -> label
    assert r.selectivity < -0.15
    # the same features without a recurring key: nothing to memorise
    free = fit_probe(X, y, np.arange(n), ProbeConfig(n_bootstrap=0, C=10.0), attribute="mem")
    assert free.control_accuracy < r.control_accuracy - 0.2


# ------------------------------------------------------------------ the sound-type key


def _scene(*events):
    from auralens.interp.cafe.scenes import Event, Scene

    evs = tuple(Event(cls=c, onset=0.1 + i, duration=0.4, loudness_db=-10.0, pitch_hz=300.0, pitch_level=p,
                      loudness_level=lo) for i, (c, p, lo) in enumerate(events))
    return Scene(scene_id="s", seed=0, events=evs).to_dict()


def test_sound_type_key_and_item_keys():
    from auralens.interp.items import Item

    a = _scene(("tone", "low", "loud"), ("noise", "high", "soft"))
    b = _scene(("tone", "low", "loud"))
    c = _scene(("tone", "high", "loud"))
    assert sound_type_key(a) == sound_type_key(b) == "tone/low/loud"  # one type, different scenes
    assert sound_type_key(c) == "tone/high/loud"
    assert sound_type_key(None) is None
    items = [Item(item_id=f"i{k}", question="q", choices=("x", "y"), answer="x", audio="cafe:0",
                  scene=s) for k, s in enumerate((a, b, None))]
    assert control_keys(items) == ["tone/low/loud", "tone/low/loud", "item:i2"]
    c1 = control_labels(np.array(["one", "two", "one"]), key=control_keys(items), attribute="n_events")
    assert c1[0] == c1[1]


# ------------------------------------------------------------------ predict


@pytest.mark.parametrize("n_classes", [2, 4])
def test_predict_equals_the_refitted_sklearn_pipeline(n_classes):
    rng = np.random.default_rng(n_classes)
    X = rng.normal(size=(200, 8)) * np.geomspace(0.1, 10, 8)
    y = np.array([f"c{v}" for v in np.argmax(X[:, :n_classes] / np.geomspace(0.1, 10, 8)[:n_classes], axis=1)])
    r = fit_probe(X, y, np.arange(200), ProbeConfig(n_bootstrap=0, control="none"), attribute="cls")
    ref = Pipeline([("scale", StandardScaler()), ("probe", LogisticRegression(max_iter=1000))]).fit(X, y)
    X_new = rng.normal(size=(100, 8)) * np.geomspace(0.1, 10, 8)
    np.testing.assert_array_equal(predict(r, X_new), ref.predict(X_new))
    with pytest.raises(ProbeError, match="expected 8 features"):
        predict(r, X_new[:, :3])


def test_predict_ridge_equals_sklearn():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(120, 5))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1 * rng.normal(size=120)
    r = fit_probe(X, y, np.arange(120), ProbeConfig(kind="ridge", n_bootstrap=0, control="none"), attribute="v")
    ref = Pipeline([("scale", StandardScaler()), ("probe", Ridge(alpha=1.0))]).fit(X, y)
    X_new = rng.normal(size=(30, 5))
    np.testing.assert_allclose(predict(r, X_new), ref.predict(X_new), rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------ the silence control of probe_checks


class _Store:
    """The part of an ActivationStore the probe checks read: planted features per layer."""

    def __init__(self, item_ids, features):  # features: {(position, layer): X}
        self.rows = pd.DataFrame({"item_id": item_ids})
        self._features = features

    def layers(self, site):
        return sorted({layer for _, layer in self._features})

    def matrix(self, site, position, layer, step=None):
        return self._features[(position, layer)], np.arange(len(self.rows))


def _planted_stores(leak: bool):
    """Layer 1 at the last prompt token carries event1_class (and n_events); layer 0 nothing.
    Silence activations carry nothing, or (``leak``) the same information as the real ones."""
    from auralens.interp.cafe.cues import cue_items
    from auralens.probes.labels import cafe_labels

    items = {s: cue_items("conflict", s, 150) for s in ("calibration", "test")}
    rng = np.random.default_rng(0)
    classes = sorted({cafe_labels(it.scene)["event1_class"] for it in items["calibration"]})
    d = 16
    basis = rng.normal(size=(len(classes) + 4, d)) * 3.0

    def feats(its, informative):
        lab = [cafe_labels(it.scene) for it in its]
        X = rng.normal(size=(len(its), d))
        if informative:
            X += basis[[classes.index(v["event1_class"]) for v in lab]]
            X += basis[[len(classes) + v["n_events"] - 1 for v in lab]]
        return X

    stores = {}
    for split, its in items.items():
        ids = [it.item_id for it in its]
        stores[split] = _Store(ids, {(p, L): feats(its, L == 1) for p in ("audio_mean", "last_prompt")
                                     for L in (0, 1)})
    ids = [it.item_id for it in items["test"]]
    stores["silence"] = _Store(ids, {(p, L): feats(items["test"], leak and L == 1)
                                     for p in ("audio_mean", "last_prompt") for L in (0, 1)})
    items["silence"] = items["test"]
    return stores, items


@pytest.mark.parametrize("leak", [False, True])
def test_silence_control_passes_only_when_silence_carries_nothing(leak):
    import importlib

    # the module (the package's name ``validate`` is the function)
    validate = importlib.import_module("auralens.organisms.validate")
    stores, items = _planted_stores(leak)
    # one attribute at one position of validate.probe_checks (whose stores it would collect)
    checks = validate._probe_position_checks("planted", stores, items, "event1_class", "last_prompt")
    rows = {r["check"]: r for r in checks}
    acc = rows["probe_event1_class_last_prompt_accuracy"]
    assert acc["pass"] and "layer 1" in acc["note"]  # the informative layer, chosen on calibration
    assert rows["probe_event1_class_last_prompt_selectivity"]["pass"]
    silence = rows["probe_event1_class_last_prompt_silence_excess"]
    assert silence["found"]["real_accuracy"] > 0.8  # the calibration-fitted probe transfers to test
    if leak:
        assert not silence["pass"] and silence["value"] > 0.3
    else:
        assert silence["pass"] and abs(silence["value"]) < 0.1
        assert silence["ci"][0] <= 0.0 <= silence["ci"][1] + 0.05


# ------------------------------------------------------------------ the probe stage uses the sound-type key


class _StageStore:
    """The part of an ActivationStore :func:`probe_store` reads: one decoder layer, last prompt."""

    def __init__(self, item_ids, X):
        from auralens.probes.collect import LM_SITE

        self.rows = pd.DataFrame({"item_id": item_ids, "format": "direct"})
        self.sites = {LM_SITE: {}}
        self.index = {"n_layers": 1}
        self._X = X

    def layers(self, site):
        return (0,)

    def positions(self, site):
        return ("last_prompt",)

    def steps(self):
        return ()

    def matrix(self, site, position, layer, step=None):
        return self._X, np.arange(len(self.rows))


def test_probe_stage_control_memorises_the_sound_type():
    """Features encode the first event's sound type only; n_events is drawn independently of
    it, so the real task is near chance while the control (a random label per sound type)
    is memorised: selectivity is negative.  A control keyed per row could not see this."""
    from auralens.interp.cafe.cues import cue_items
    from auralens.probes.probing import probe_store

    items = cue_items("neutral", "calibration", 400)
    keys = control_keys(items)
    types = sorted(set(keys))
    rng = np.random.default_rng(0)
    X = 3.0 * rng.normal(size=(len(types), 48))[[types.index(k) for k in keys]] + rng.normal(size=(400, 48))
    _, best, _ = probe_store(_StageStore([it.item_id for it in items], X), items, attributes=["n_events"],
                             n_bootstrap=0)
    r = best["n_events"][0].result
    assert r.accuracy < r.chance + 0.08
    assert r.control_accuracy > r.accuracy + 0.15
    assert r.selectivity < -0.15
