"""Linear probes on cached activations: cross-validated by item, with a control task.

This module is model-independent: it takes arrays (activations collected elsewhere) and labels,
and returns numbers. The protocol follows AudioLens (arXiv 2506.05140) and Hewitt & Liang (2019):

- One probe per (site, layer, position, step) and attribute: ``StandardScaler`` followed by
  ``LogisticRegression`` for categorical attributes (score: accuracy) or ``Ridge`` for continuous
  ones (score: R^2).
- Cross-validation is grouped by item id (``StratifiedGroupKFold`` for categorical labels,
  ``GroupKFold`` for continuous ones), so no item is ever in both a training and a test fold,
  whatever the number of rows (positions, tokens, events) it contributes.
- The *control task* (Hewitt & Liang's control task) gives every value of a type key (their word
  type; for cafe audio the scene's sound type) one random label drawn from the real labels'
  empirical distribution, fixed by the key value and shared by every row with it, so the control
  labels are tied to the input only through the key. A probe that does well on the control task
  is memorising keys, not reading information; ``selectivity`` = score on the real task minus
  score on the control task.
- A 95 % confidence interval comes from a bootstrap over items of the out-of-fold predictions.
- The probe refitted on all rows gives a direction in the *original* (unstandardised) feature
  space, ready to be turned into a steering vector.

Public API: :class:`ProbeConfig`, :class:`ProbeResult`, :func:`fit_probe`, :func:`make_folds`,
:func:`control_labels`, :func:`predict`; the tables over sites, layers, positions and steps
(:class:`~auralens.probes.tables.ProbeRow`, :func:`~auralens.probes.tables.probe_results`, ...)
are in :mod:`auralens.probes.tables`.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from jaxtyping import Float

from auralens.interp.errors import ConfigError, ProbeError
from auralens.interp.stats import bootstrap_stat_ci
from auralens.probes.inputs import as_1d, as_features, check_lengths, check_support, encode_groups, encode_labels

__all__ = ["ProbeConfig", "ProbeResult", "control_labels", "fit_probe", "make_folds", "predict"]

_KINDS = ("logistic", "ridge")
_CONTROLS = ("random_label_mapping", "none")


# --------------------------------------------------------------------------------------------
# Configuration and result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """How to fit and score one probe.

    Attributes:
        kind: ``"logistic"`` for categorical attributes (score: accuracy) or ``"ridge"`` for
            continuous ones (score: R^2).
        n_folds: number of cross-validation folds; every fold holds out whole items.
        C: inverse L2 regularisation strength of the logistic probe.
        alpha: L2 regularisation strength of the ridge probe.
        max_iter: iteration cap of the logistic solver (lbfgs).
        control: ``"random_label_mapping"`` (Hewitt & Liang 2019) or ``"none"`` to skip the
            control task (``control_accuracy`` and ``selectivity`` are then NaN).
        n_bootstrap: bootstrap resamples of items for the confidence interval; 0 skips it
            (``ci_low``/``ci_high`` are then NaN).
        confidence: level of the BCa bootstrap interval (auralens.interp.stats.bootstrap_stat_ci).
        seed: seeds the fold assignment, the control mapping and the bootstrap.
    """

    kind: Literal["logistic", "ridge"] = "logistic"
    n_folds: int = 5
    C: float = 1.0
    alpha: float = 1.0
    max_iter: int = 1000
    control: Literal["random_label_mapping", "none"] = "random_label_mapping"
    n_bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ConfigError(f"ProbeConfig.kind: expected one of {_KINDS}, found {self.kind!r}")
        if self.control not in _CONTROLS:
            raise ConfigError(
                f"ProbeConfig.control: expected one of {_CONTROLS}, found {self.control!r}"
            )
        _check_int("n_folds", self.n_folds, minimum=2)
        _check_int("max_iter", self.max_iter, minimum=1)
        _check_int("n_bootstrap", self.n_bootstrap, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        for name in ("C", "alpha"):
            value = getattr(self, name)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (is_number and np.isfinite(value) and value > 0):
                raise ConfigError(
                    f"ProbeConfig.{name}: expected a positive number, found {value!r}"
                )
        c = self.confidence
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c < 1:
            raise ConfigError(f"ProbeConfig.confidence: expected a number in (0, 1), found {c!r}")

    @property
    def metric(self) -> str:
        """``"accuracy"`` for logistic probes, ``"r2"`` for ridge probes."""
        return "accuracy" if self.kind == "logistic" else "r2"


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"ProbeConfig.{name}: expected an integer >= {minimum}, found {value!r}")


@dataclass(frozen=True, kw_only=True, eq=False)  # eq=False: holds arrays
class ProbeResult:
    """Scores and fitted direction of one probe.

    ``accuracy`` is the pooled out-of-fold score: the fraction of rows predicted correctly
    (logistic) or the R^2 of all out-of-fold predictions (ridge). ``fold_scores`` are the
    per-fold scores, the numbers ``sklearn.model_selection.cross_val_score`` returns for the
    same folds; their mean equals ``accuracy`` only when folds have equal sizes.

    ``direction`` lives in the original (unstandardised) feature space: the probe refitted on
    all rows computes ``X @ direction.T + intercept`` (it is ``coef / scale`` of the scaler).

    - binary logistic: shape ``(d_model,)``, pointing from ``classes[0]`` towards ``classes[1]``
      (the decision function, whose sign picks ``classes[1]`` when positive);
    - multiclass logistic: shape ``(n_classes, d_model)``, row ``k`` is the logit direction of
      ``classes[k]`` (softmax over rows; differences of rows separate pairs of classes);
    - ridge: shape ``(d_model,)``, the direction along which the predicted value grows
      (one unit of ``X @ direction`` is one unit of the label).

    Normalise it (and pick its scale) before using it as a steering vector.
    """

    kind: str
    metric: str
    attribute: str
    accuracy: float
    control_accuracy: float
    selectivity: float
    chance: float
    ci_low: float
    ci_high: float
    n: int
    n_items: int
    n_classes: int | None
    classes: tuple[Any, ...] | None
    fold_scores: tuple[float, ...]
    control_fold_scores: tuple[float, ...]
    direction: np.ndarray = field(repr=False)
    intercept: np.ndarray | float = field(repr=False)
    config: ProbeConfig = field(repr=False)


# --------------------------------------------------------------------------------------------
# Folds, control task, pipeline
# --------------------------------------------------------------------------------------------


def _attribute_seed(seed: int, attribute: str) -> int:
    return int(seed) * 1_000_003 + zlib.crc32(attribute.encode("utf-8"))


def make_folds(
    y: Sequence[Any] | np.ndarray,
    groups: Sequence[Hashable] | np.ndarray,
    config: ProbeConfig,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, test) row indices :func:`fit_probe` uses; whole items go to one side.

    ``StratifiedGroupKFold`` on the labels for logistic probes, ``GroupKFold`` for ridge probes,
    both shuffled with ``config.seed``. Inputs are not validated here beyond what sklearn does;
    :func:`fit_probe` validates before calling it.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    y_arr = np.asarray(y)
    g = encode_groups(np.asarray(groups))
    placeholder = np.zeros((y_arr.shape[0], 1))
    if config.kind == "logistic":
        splitter = StratifiedGroupKFold(
            n_splits=config.n_folds, shuffle=True, random_state=config.seed
        )
        strat = np.unique(y_arr, return_inverse=True)[1].reshape(-1)
        splits = splitter.split(placeholder, strat, g)
    else:
        splitter = GroupKFold(n_splits=config.n_folds, shuffle=True, random_state=config.seed)
        splits = splitter.split(placeholder, y_arr, g)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in splits]


def control_labels(
    y: Sequence[Any] | np.ndarray,
    *,
    key: Sequence[Hashable] | np.ndarray | None = None,
    seed: int = 0,
    attribute: str = "y",
) -> np.ndarray:
    """Hewitt & Liang (2019) control labels: a fixed random function from a type ``key`` to labels.

    As in H&L's control tasks (each word *type* gets one control label, drawn from the empirical
    distribution of the real labels and shared by all its tokens), each distinct key *value*
    gets one control label, and every row with that key takes it:

    - the control label of a key value is drawn from the empirical distribution of ``y`` (over
      rows) with a random number fixed by ``(seed, attribute, str(key value))`` alone, so two
      rows, items or calls with the same key get the same control label whatever else is
      passed with them (a calibration and a test split share the mapping, up to the marginal
      of ``y`` they are given);
    - the control labels are tied to the input only through the key: a probe scores above
      chance on them only by memorising key -> label for keys it saw in training, which is what
      the control measures (a probe on features that do not encode the key scores at chance);
    - over key values the control labels follow the real labels' marginal distribution.

    ``key`` is the type of the probed input: for cafe audio attributes the sound type of the
    scene (:func:`auralens.probes.labels.sound_type_key`: the first event's class, pitch level
    and loudness level, 24 types recurring across items), for text the token id at the probed
    position or the question template.  With no ``key`` every row is its own type: no type
    recurs, so no probe can memorise and the control is only a random-label null (a probe that
    reads nothing scores between ``sum(p**2)`` and ``max(p)`` of the labels' marginal ``p``,
    below the majority-class ``chance`` of :class:`ProbeResult` unless it always predicts the
    majority): selectivity against it is inflated.  Pass a key wherever the input has types.
    """
    y_arr = np.asarray(y)
    n = y_arr.shape[0]
    if key is None:
        names = [f"row{i}" for i in range(n)]
    else:
        key_arr = np.asarray(key)
        if key_arr.shape[0] != n:
            raise ProbeError(
                f"control key for attribute {attribute!r}: expected {n} entries (one per row of "
                f"y), found {key_arr.shape[0]}"
            )
        names = [str(k) for k in key_arr.tolist()]
    if n == 0:
        return y_arr.copy()
    unique, codes = np.unique(np.asarray(names, dtype=object), return_inverse=True)
    # one uniform number per key value, from (seed, attribute, key value) only
    u = np.array([_key_uniform(seed, attribute, str(k)) for k in unique.tolist()])
    ordered = np.sort(y_arr, kind="stable")  # inverse empirical CDF of the labels over rows
    key_label = ordered[np.minimum((u * n).astype(np.int64), n - 1)]
    return key_label[codes.reshape(-1)]


def _key_uniform(seed: int, attribute: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by ``(seed, attribute, key)``."""
    words = [int(seed), zlib.crc32(attribute.encode("utf-8")), zlib.crc32(key.encode("utf-8")),
             zlib.adler32(key.encode("utf-8"))]
    return float(np.random.default_rng(words).random())


def predict(result: ProbeResult, X: Float[Any, "batch d_model"]) -> np.ndarray:
    """The predictions of ``result``'s probe refitted on all its rows, for new rows ``X``.

    From :attr:`ProbeResult.direction` and ``intercept`` (the pipeline in the original feature
    space): the class of the largest logit (logistic; binary: ``classes[1]`` where the decision
    function is positive) or the predicted value (ridge).  Use it to apply a probe fitted on one
    set of activations to another (held-out items, silence-audio activations).
    """
    X_arr = as_features(X, result.attribute)
    width = np.shape(result.direction)[-1]
    if X_arr.shape[1] != width:
        raise ProbeError(
            f"X for attribute {result.attribute!r}: expected {width} features (the probe's), "
            f"found {X_arr.shape[1]}"
        )
    scores = X_arr @ np.asarray(result.direction).T + result.intercept
    if result.kind == "ridge":
        return scores
    classes = np.asarray(result.classes, dtype=object)
    if scores.ndim == 1:
        return classes[(scores > 0).astype(np.int64)]
    return classes[np.argmax(scores, axis=1)]


def _pipeline(config: ProbeConfig):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if config.kind == "logistic":
        model = LogisticRegression(C=config.C, max_iter=config.max_iter)
    else:
        model = Ridge(alpha=config.alpha)
    return Pipeline([("scale", StandardScaler()), ("probe", model)])


def _oof_predict(
    X: np.ndarray,
    target: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    config: ProbeConfig,
) -> tuple[np.ndarray, list[float]]:
    """Out-of-fold predictions and per-fold scores (accuracy or R^2)."""
    from sklearn.base import clone
    from sklearn.metrics import r2_score

    template = _pipeline(config)
    pred = np.empty(target.shape[0], dtype=target.dtype if config.kind == "logistic" else float)
    scores: list[float] = []
    for train, test in folds:
        y_train = target[train]
        if config.kind == "logistic" and np.unique(y_train).size < 2:
            # a training fold with one class (possible for a control task on tiny data):
            # the only sensible prediction is that class
            fold_pred = np.full(test.size, y_train[0], dtype=target.dtype)
        else:
            model = clone(template).fit(X[train], y_train)
            fold_pred = model.predict(X[test])
        pred[test] = fold_pred
        if config.kind == "logistic":
            scores.append(float(np.mean(fold_pred == target[test])))
        else:
            scores.append(float(r2_score(target[test], fold_pred)))
    return pred, scores


def _pooled_score(target: np.ndarray, pred: np.ndarray, kind: str) -> float:
    if kind == "logistic":
        return float(np.mean(pred == target))
    ss_res = float(np.sum((target - pred) ** 2))
    ss_tot = float(np.sum((target - target.mean()) ** 2))
    return 1.0 - ss_res / ss_tot


def _bootstrap_ci(
    target: np.ndarray,
    pred: np.ndarray,
    group_codes: np.ndarray,
    config: ProbeConfig,
    attribute: str,
) -> tuple[float, float]:
    """BCa CI of the pooled out-of-fold score, resampling items (``scipy.stats.bootstrap``
    through :func:`auralens.interp.stats.bootstrap_stat_ci`): the samples are per-item sums
    (an item's rows stay together), resampled together, and the score is a ratio of their sums.
    All items alike (e.g. every item right): the degenerate rule, bounds [0, 1] for accuracy."""
    if config.n_bootstrap == 0:
        return float("nan"), float("nan")
    n_items = int(group_codes.max()) + 1
    seed = _attribute_seed(config.seed, attribute) + 1
    rows = np.bincount(group_codes, minlength=n_items).astype(np.float64)
    if config.kind == "logistic":
        hits = (pred == target).astype(np.float64)
        correct = np.bincount(group_codes, weights=hits, minlength=n_items)

        def accuracy(c, r, axis=-1):
            return c.sum(axis) / r.sum(axis)

        _, low, high = bootstrap_stat_ci((correct, rows), accuracy, n_boot=config.n_bootstrap, seed=seed,
                                         confidence=config.confidence, bounds=(0.0, 1.0),
                                         what=f"probe accuracy of {attribute!r}")
        return low, high
    t = target.astype(float)
    s_res = np.bincount(group_codes, weights=(t - pred) ** 2, minlength=n_items)
    s_y = np.bincount(group_codes, weights=t, minlength=n_items)
    s_yy = np.bincount(group_codes, weights=t * t, minlength=n_items)

    def r2(res, y, yy, r, axis=-1):
        n_rows, sum_y = r.sum(axis), y.sum(axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1.0 - res.sum(axis) / (yy.sum(axis) - sum_y**2 / n_rows)

    _, low, high = bootstrap_stat_ci((s_res, s_y, s_yy, rows), r2, n_boot=config.n_bootstrap, seed=seed,
                                     confidence=config.confidence, bounds=None,
                                     what=f"probe R^2 of {attribute!r}")
    return low, high


# --------------------------------------------------------------------------------------------
# fit_probe
# --------------------------------------------------------------------------------------------


def fit_probe(
    X: Float[Any, "batch d_model"],
    y: Sequence[Any] | np.ndarray,
    groups: Sequence[Hashable] | np.ndarray,
    config: ProbeConfig | None = None,
    *,
    control_key: Sequence[Hashable] | np.ndarray | None = None,
    control_y: Sequence[Any] | np.ndarray | None = None,
    attribute: str = "y",
) -> ProbeResult:
    """Fit and score one linear probe, cross-validated by item, with a control task.

    Args:
        X: features, one row per (item, ...) observation; a numpy array or torch tensor.
        y: labels, one per row: any sortable values for ``kind="logistic"``, finite numbers for
            ``kind="ridge"``.
        groups: item id of each row; folds never split an item.
        config: :class:`ProbeConfig` (default: logistic, 5 folds).
        control_key: type key of each row for the control task (see :func:`control_labels`;
            for cafe items :func:`auralens.probes.labels.control_keys`); default: every row its
            own key (no type recurs: a random-label null).
        control_y: ready-made control labels, one per row (e.g. :func:`control_labels` computed
            once over all items, so that subsets of them share one mapping); exclusive with
            ``control_key``.
        attribute: name used in error messages and to fix the control mapping and bootstrap.

    Raises:
        ProbeError: mismatched lengths, non-finite features, a single class, too few items
            (or items per class) for the folds.
    """
    config, X_arr, y_arr, key_arr, control_arr, group_codes = _fit_inputs(
        X, y, groups, config, control_key, control_y, attribute
    )
    classes, target, chance = _encode_target(y_arr, group_codes, config, attribute)

    folds = make_folds(target, group_codes, config)
    pred, fold_scores = _oof_predict(X_arr, target, folds, config)
    score = _pooled_score(target, pred, config.kind)
    ci_low, ci_high = _bootstrap_ci(target, pred, group_codes, config, attribute)
    control_score, control_fold_scores = _control_score(
        X_arr, target, folds, config, key_arr, control_arr, attribute
    )
    direction, intercept = _full_direction(X_arr, target, config, classes)

    return ProbeResult(
        kind=config.kind,
        metric=config.metric,
        attribute=attribute,
        accuracy=score,
        control_accuracy=control_score,
        selectivity=score - control_score,
        chance=chance,
        ci_low=ci_low,
        ci_high=ci_high,
        n=int(X_arr.shape[0]),
        n_items=int(group_codes.max()) + 1,
        n_classes=None if classes is None else int(classes.size),
        classes=None if classes is None else tuple(classes.tolist()),
        fold_scores=tuple(fold_scores),
        control_fold_scores=tuple(control_fold_scores),
        direction=direction,
        intercept=intercept,
        config=config,
    )


def _fit_inputs(
    X: Any,
    y: Sequence[Any] | np.ndarray,
    groups: Sequence[Hashable] | np.ndarray,
    config: ProbeConfig | None,
    control_key: Sequence[Hashable] | np.ndarray | None,
    control_y: Sequence[Any] | np.ndarray | None,
    attribute: str,
) -> tuple[ProbeConfig, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """:func:`fit_probe`'s validated inputs: the config (default :class:`ProbeConfig`), the
    feature, label, group, control-key and control-label arrays, and the item codes."""
    config = ProbeConfig() if config is None else config
    if not isinstance(config, ProbeConfig):
        raise ProbeError(f"config: expected a ProbeConfig, found {type(config).__name__}")
    X_arr = as_features(X, attribute)
    y_arr = as_1d(y, "y", attribute)
    g_arr = as_1d(groups, "groups", attribute)
    check_lengths(attribute, X=X_arr, y=y_arr, groups=g_arr)
    if control_key is not None:
        key_arr = as_1d(control_key, "control_key", attribute)
        check_lengths(attribute, X=X_arr, control_key=key_arr)
    else:
        key_arr = None
    if control_y is not None:
        if control_key is not None:
            raise ProbeError(
                f"attribute {attribute!r}: expected control_key or control_y, found both"
            )
        control_arr = as_1d(control_y, "control_y", attribute)
        check_lengths(attribute, X=X_arr, control_y=control_arr)
    else:
        control_arr = None
    if X_arr.shape[0] == 0:
        raise ProbeError(f"attribute {attribute!r}: expected rows to probe, found 0")
    group_codes = encode_groups(g_arr)
    return config, X_arr, y_arr, key_arr, control_arr, group_codes


def _encode_target(
    y_arr: np.ndarray, group_codes: np.ndarray, config: ProbeConfig, attribute: str
) -> tuple[np.ndarray | None, np.ndarray, float]:
    """``(classes, target, chance)``: class codes and majority-class rate for a logistic probe,
    float targets (no classes, chance 0) for a ridge probe; the folds' support is checked."""
    if config.kind == "logistic":
        classes, target = encode_labels(y_arr, attribute)
        check_support(target, classes, None, group_codes, config.n_folds, attribute)
        chance = float(np.bincount(target).max() / target.size)
    else:
        if not np.issubdtype(y_arr.dtype, np.number) or y_arr.dtype.kind in "cb":
            raise ProbeError(
                f"y for attribute {attribute!r}: expected real numbers for a ridge probe, "
                f"found dtype {y_arr.dtype}"
            )
        classes = None
        target = y_arr.astype(np.float64)
        check_support(None, None, target, group_codes, config.n_folds, attribute)
        chance = 0.0
    return classes, target, chance


def _control_score(
    X_arr: np.ndarray,
    target: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    config: ProbeConfig,
    key_arr: np.ndarray | None,
    control_arr: np.ndarray | None,
    attribute: str,
) -> tuple[float, list[float]]:
    """Pooled and per-fold out-of-fold scores of the control task on the same folds (NaN and no
    folds when ``config.control`` is ``"none"``; NaN for a constant ridge control target)."""
    if config.control != "random_label_mapping":
        return float("nan"), []
    if control_arr is None:
        control_target = control_labels(
            target, key=key_arr, seed=config.seed, attribute=attribute
        )
    elif config.kind == "logistic":
        control_target = encode_labels(control_arr, f"{attribute} (control_y)")[1]
    else:
        control_target = control_arr.astype(np.float64)
    control_pred, control_fold_scores = _oof_predict(X_arr, control_target, folds, config)
    if config.kind == "ridge" and np.ptp(control_target) == 0:
        control_score = float("nan")
    else:
        control_score = _pooled_score(control_target, control_pred, config.kind)
    return control_score, control_fold_scores


def _full_direction(
    X_arr: np.ndarray, target: np.ndarray, config: ProbeConfig, classes: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | float]:
    """Direction and intercept of the probe refitted on all rows, in the unstandardised
    feature space (see :class:`ProbeResult`)."""
    full = _pipeline(config).fit(X_arr, target)
    scale = full.named_steps["scale"]
    probe = full.named_steps["probe"]
    coef = np.asarray(probe.coef_, dtype=np.float64)
    direction = coef / scale.scale_
    intercept = np.asarray(probe.intercept_, dtype=np.float64) - direction @ scale.mean_
    if config.kind == "logistic" and classes is not None and classes.size == 2:
        direction, intercept = direction[0], intercept[0]
    if config.kind == "ridge" or np.ndim(intercept) == 0:
        return direction, float(intercept)
    return direction, intercept
