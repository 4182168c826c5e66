"""What a steering gain is read against, without torch: the dev rule that can decline, the
random-direction null and the answer-distribution shift.

- :data:`SELECTION_RULES` / :func:`choose_on_dev`: the setting chosen on dev from a
  ``steering.parquet``-shaped table.  Under ``ci_low`` (the default) beta = 0 ("no steering")
  is a candidate with gain 0 by construction; the nonzero setting with the largest dev gain
  (ties: the smaller |beta|, then the lower layer) replaces it only if the lower bound of its
  95% paired-bootstrap CI over the dev items is > 0.  ``best`` is the old rule (always the
  largest nonzero dev gain, even when every beta hurts).
- :func:`null_summary`: the vector's test gain against the test gains of K random directions
  of equal norm, each with its own beta chosen on dev by the same rule: their mean, their 95th
  percentile (numpy's linear interpolation), and the vector's percentile among them
  (:func:`scipy.stats.percentileofscore`, ``kind="mean"``: 100 * (#below + #equal / 2) / K).
- :func:`answer_shift`: the share of each answer (the matched choice; ``(unparsed)`` when none
  matched) unsteered vs steered on the same items, and their total-variation distance.
- :func:`choose_gate` / :func:`gate_on_test`: a per-item gate that can switch steering *off*
  from the listening signal ``y`` (the unsteered prefill's audio yield at the last prompt token):
  steer item i only if ``y_i < tau``.  ``tau`` is chosen on dev among the dev quantiles of ``y``
  (0%, 10%, ..., 100%, and +inf = always steer) by the same rule as beta: the largest dev gain
  (ties: the smaller tau, fewer items steered) kept only if its CI lower bound is > 0, else the
  gate is shut (never steer).  The gated item's answer is its steered answer when the gate is
  open and its unsteered answer when shut, so the gated gain is ``mean(diff_i * [y_i < tau])``
  from the rows already generated (the decision is made before generation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from auralens.interp.errors import ConfigError
from auralens.interp.stats import bootstrap_mean_ci
from auralens.steering.registry import SELECTION_RULES

__all__ = ["GATE_RULE", "SELECTION_RULES", "UNPARSED", "answer_shift", "choose_gate", "choose_on_dev", "gate_on_test",
           "null_summary"]

GATE_RULE = ("steer item i only if its listening signal y_i < tau; tau among the dev quantiles of y (0%, 10%, ..., "
             "100%) and +inf (always), the largest dev gain (ties: smaller tau) kept only if its 95% paired-bootstrap "
             "CI lower bound is > 0, else the gate is shut (never steer)")

UNPARSED = "(unparsed)"


def _check_rule(rule: str) -> str:
    if rule not in SELECTION_RULES:
        raise ConfigError(f"selection: expected one of {list(SELECTION_RULES)}, found {rule!r}")
    return rule


def choose_on_dev(table, names: dict[str, str], *, rule: str = "ci_low") -> dict[str, Any]:
    """The setting chosen on dev (see the module docstring) among the rows of ``table``
    (category ``all``) whose vector is in ``names`` (vector name -> mode).

    Returns ``vector, mode, layer, layers, beta, positions, format, dev, decision, rule``;
    ``decision`` is ``"steer"`` or ``"decline"``.  When declining, ``beta`` is 0, ``dev`` is the
    unsteered model's (gain 0, CI [0, 0]) and ``candidate`` holds the best nonzero setting's
    beta and dev statistics (its vector, mode, layer, positions and format are the returned ones,
    so that applying the result at beta 0 is the unsteered model)."""
    _check_rule(rule)
    t = table[(table["category"] == "all") & (table["beta"] != 0.0) & (table["vector"].isin(list(names)))].copy()
    if t.empty:
        raise ConfigError("betas: expected at least one non-zero beta to choose on dev, found none")
    t["abs_beta"] = t["beta"].abs()
    best = t.sort_values(["delta", "abs_beta", "layer"], ascending=[False, True, True]).iloc[0]
    base = float(best["accuracy"] - best["delta"])
    dev = {"n": int(best["n"]), "steered": float(best["accuracy"]), "base": base, "gain": float(best["delta"]),
           "ci": [float(best["delta_ci_low"]), float(best["delta_ci_high"])]}
    out = {
        "vector": str(best["vector"]), "mode": names[str(best["vector"])], "layer": int(best["layer"]),
        "layers": [int(best["layer"])], "beta": float(best["beta"]), "positions": str(best["positions"]),
        "format": str(best["format"]), "dev": dev, "rule": SELECTION_RULES[rule],
    }
    if rule == "best" or dev["ci"][0] > 0.0:
        return {**out, "decision": "steer"}
    return {**out, "beta": 0.0, "decision": "decline",
            "dev": {"n": dev["n"], "steered": base, "base": base, "gain": 0.0, "ci": [0.0, 0.0]},
            "candidate": {"beta": float(best["beta"]), "dev": dev}}


def null_summary(vector_gain: float, gains: dict[str, float]) -> dict[str, Any]:
    """The vector's test gain against the random directions' test gains (``gains``: name ->
    gain, each at its own dev-chosen beta; 0 where it declined): ``k``, ``mean``, ``p95``
    (``numpy.percentile(gains, 95)``, linear), ``max``, ``vector_percentile``
    (:func:`scipy.stats.percentileofscore`, ``kind='mean'``) and ``above_p95`` (gain > p95)."""
    if not gains:
        raise ConfigError("random_directions: expected at least one random direction's test gain, found none")
    g = np.asarray(list(gains.values()), dtype=np.float64)
    p95 = float(np.percentile(g, 95))
    return {
        "k": int(g.size), "vector_gain": float(vector_gain), "mean": float(g.mean()), "p95": p95,
        "max": float(g.max()), "vector_percentile": float(stats.percentileofscore(g, vector_gain, kind="mean")),
        "above_p95": bool(vector_gain > p95), "vector_minus_mean": float(vector_gain - g.mean()),
        "percentile_rule": "100 * (#random gains below + #equal / 2) / k (scipy.stats.percentileofscore, kind='mean'); "
                           "p95 = numpy.percentile(gains, 95) (linear interpolation)",
    }


def _shares(answers) -> dict[str, float]:
    vals = [UNPARSED if (a is None or (isinstance(a, float) and np.isnan(a)) or str(a) == "") else str(a)
            for a in answers]
    n = len(vals)
    out: dict[str, float] = {}
    for v in vals:
        out[v] = out.get(v, 0.0) + 1.0 / n
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def answer_shift(rows, name: str, *, base: str = "baseline", column: str = "matched_choice",
                 watch: tuple[str, ...] = ("noise",)) -> dict[str, Any]:
    """The answer distribution of ``base`` and of ``name`` on the items both answered: the
    share of each answer (``column``; empty = :data:`UNPARSED`), the total-variation distance
    ``0.5 * sum |p - q|``, the answer whose share grew most, and the shares of ``watch`` answers
    (and of correct answers) unsteered vs steered."""
    b = rows[rows["vector"] == base].set_index("item_id")
    s = rows[rows["vector"] == name].set_index("item_id")
    common = b.index.intersection(s.index)
    if len(common) == 0:
        raise ConfigError(f"answer_shift: expected items answered by both {base!r} and {name!r}, found none")
    p, q = _shares(b.loc[common, column].tolist()), _shares(s.loc[common, column].tolist())
    keys = sorted(set(p) | set(q))
    tv = 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)
    grew = max(keys, key=lambda k: (q.get(k, 0.0) - p.get(k, 0.0), k))
    return {
        "n": int(len(common)), "unsteered": p, "steered": q, "total_variation": float(tv),
        "most_increased": {"answer": grew, "unsteered": p.get(grew, 0.0), "steered": q.get(grew, 0.0)},
        "watch": {w: {"unsteered": p.get(w, 0.0), "steered": q.get(w, 0.0)} for w in watch},
        "column": column,
    }


def _mean_ci(v, *, n_boot: int, seed: int) -> tuple[float, list[float]]:
    mean, lo, hi = bootstrap_mean_ci(np.asarray(v, dtype=np.float64), n_boot=n_boot, seed=seed)
    return float(mean), [float(lo), float(hi)]


def _check_gate_inputs(y, diff) -> tuple[np.ndarray, np.ndarray]:
    y, diff = np.asarray(y, dtype=np.float64), np.asarray(diff, dtype=np.float64)
    if y.ndim != 1 or y.shape != diff.shape or y.size == 0 or not np.isfinite(y).all():
        raise ConfigError(f"gate: expected one finite listening signal per item beside its gain, found shapes "
                          f"{y.shape} and {diff.shape}")
    return y, diff


def choose_gate(y, diff, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The off-gate's threshold on dev (:data:`GATE_RULE`): ``y`` the dev items' listening
    signal, ``diff`` their steered-minus-unsteered correctness at the chosen setting.  Returns
    ``tau`` (``None``: shut), ``decision`` (``"gate"`` | ``"shut"``), the chosen candidate's dev
    gain, CI and share steered, and every candidate."""
    y, diff = _check_gate_inputs(y, diff)
    taus = sorted({float(t) for t in np.quantile(y, np.linspace(0.0, 1.0, 11))}) + [float("inf")]
    cands = []
    for tau in taus:
        on = y < tau
        gain, ci = _mean_ci(diff * on, n_boot=n_boot, seed=seed)
        cands.append({"tau": tau, "gain": gain, "ci": ci, "share_steered": float(on.mean())})
    best = max(cands, key=lambda c: (c["gain"], -c["tau"]))
    out = {"rule": GATE_RULE, "candidates": cands, "dev": best}
    if best["ci"][0] > 0.0:
        return {**out, "decision": "gate", "tau": best["tau"]}
    return {**out, "decision": "shut", "tau": None}


def gate_on_test(y, diff, tau: float | None, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The dev-chosen gate on the test items: the gated gain ``mean(diff * [y < tau])`` (0 when
    shut) with its CI, the ungated gain, and the paired difference gated − ungated with its CI
    (does switching steering off help?)."""
    y, diff = _check_gate_inputs(y, diff)
    on = np.zeros_like(y, dtype=bool) if tau is None else y < tau
    gated, gated_ci = _mean_ci(diff * on, n_boot=n_boot, seed=seed)
    ungated, ungated_ci = _mean_ci(diff, n_boot=n_boot, seed=seed)
    d, d_ci = _mean_ci(diff * on - diff, n_boot=n_boot, seed=seed)
    return {"n": int(y.size), "tau": tau, "share_steered": float(on.mean()), "gain": gated, "ci": gated_ci,
            "ungated_gain": ungated, "ungated_ci": ungated_ci, "gated_minus_ungated": d,
            "gated_minus_ungated_ci": d_ci, "helps": bool(d_ci[0] > 0.0)}
