"""The steering stages on a handful of items: vector files, the run folder, the table, resume.

- ``stage_steer_fit`` writes a vector file that reads back identical, records its fit data,
  takes heads from pairs or a heads table;
- ``stage_steer_eval`` writes ``steering.parquet`` with the documented columns, self-contained
  plotly figures, the vectors it used and a summary; beta = 0 rows are the baseline (delta 0);
  a resumed run generates nothing new;
- the table's accuracy and paired delta equal a direct computation from the item rows, and its
  CIs equal :func:`auralens.interp.stats.bootstrap_mean_ci` on the per-item values.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from auralens.interp.errors import ConfigError

COLUMNS = ["vector", "method", "layer", "beta", "positions", "category", "accuracy", "ci_low", "ci_high",
           "n", "delta", "delta_ci_low", "delta_ci_high"]


@pytest.fixture(scope="module")
def lm(small_lm):
    return small_lm


@pytest.fixture(scope="module")
def fitted(lm, tmp_path_factory):
    from auralens.steering.stage_fit import stage_steer_fit

    out = tmp_path_factory.mktemp("vec") / "vec.safetensors"
    vec = stage_steer_fit(model=lm.source, data="cafe", n=6, layers=None, positions="last_prompt",
                          heads_from="1:0,1:2,2:3", out_vector=out, seed=11, lm=lm, normalize="unit")
    return vec, out


def test_fit_writes_a_vector_that_reads_back(lm, fitted):
    from auralens.interp.datasets import fingerprint, load_dataset
    from auralens.steering.formats import load_vector

    vec, path = fitted
    back = load_vector(path)
    assert back.equals(vec)
    assert vec.layers == (1, 2) and vec.heads == ((1, 0), (1, 2), (2, 3))
    assert vec.data_fingerprint == fingerprint(load_dataset("cafe", n=6, seed=11))
    assert vec.extra["fit"]["seed"] == 11 and vec.extra["fit"]["data"] == "cafe"


def test_fit_defaults_and_heads_table(lm, tmp_path):
    from auralens.interp.listening import heads_table
    from auralens.steering.stage_fit import stage_steer_fit

    vec = stage_steer_fit(model=lm.source, data="cafe", n=3, layers=None, positions="audio_mean",
                          out_vector=tmp_path / "new" / "v.npz", seed=1, lm=lm)
    assert vec.layers == (lm.arch.n_layers - 1,) and vec.heads == ()  # the last layer (final representation)
    assert (tmp_path / "new" / "v.npz").exists()  # the folder is created
    corr = np.zeros((lm.arch.n_layers, lm.arch.n_heads))
    corr[2, 1], corr[0, 3] = 0.9, 0.5
    heads_table(correlation=corr).to_parquet(tmp_path / "heads.parquet")
    vec = stage_steer_fit(model=lm.source, data="cafe", n=3, layers=None, positions="last_prompt",
                          heads_from=tmp_path, k_heads=2, out_vector=tmp_path / "h.safetensors", seed=1,
                          lm=lm, site="attn.hook_z")
    assert vec.heads == ((2, 1), (0, 3)) and vec.layers == (0, 2)
    with pytest.raises(ConfigError):
        stage_steer_fit(model=lm.source, data="cafe", n=3, layers=[9], positions="last_prompt",
                        out_vector=tmp_path / "x.safetensors", seed=1, lm=lm)


def test_eval_writes_the_run_folder(lm, fitted, tmp_path):
    from auralens.steering.stage_eval import stage_steer_eval

    _, path = fitted
    out = tmp_path / "run"
    kw = dict(model=lm.source, data="cafe", n=4, vector=path, betas=[0, 3.0], layers=[1], out=out, seed=7,
              lm=lm, quiet=True, max_new_tokens=6, batch_size=4, n_boot=200, protocol="sweep")
    res = stage_steer_eval(**kw)
    table = pd.read_parquet(out / "steering.parquet")
    assert list(table.columns[: len(COLUMNS)]) == COLUMNS
    assert set(table["vector"]) == {"audio_minus_silence", "random_direction", "random_heads"}
    assert set(table["method"]) == {"audio_minus_silence", "random_direction", "random_heads"}
    assert set(table["beta"]) == {0.0, 3.0} and set(table["layer"]) == {1}
    assert "all" in set(table["category"]) and len(set(table["category"])) > 1
    zero = table[table["beta"] == 0.0]
    assert (zero["delta"] == 0).all() and (zero["delta_ci_low"] == 0).all() and (zero["delta_ci_high"] == 0).all()
    assert (table.loc[table["category"] == "all", "n"] == 4).all()
    assert ((table["ci_low"] <= table["accuracy"] + 1e-12) & (table["accuracy"] <= table["ci_high"] + 1e-12)).all()
    for name in ("steering_accuracy.html", "steering_delta.html"):
        html = (out / name).read_text()
        assert "<script" in html and len(html) > 1_000_000  # plotly.js embedded: self-contained
    for v in ("audio_minus_silence", "random_direction", "random_heads"):
        assert (out / "vectors" / f"{v}.safetensors").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["command"] == "auralens steer eval"
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(res))
    best = res["best"]
    assert best["vector"] == "audio_minus_silence" and best["layer"] == 1 and best["beta"] == 3.0
    assert set(best["controls"]) == {"random_direction", "random_heads"}
    assert best["delta_ci"][0] <= best["delta"] <= best["delta_ci"][1]
    assert res["fit_overlap"] == 0  # fit on data seed 11, evaluated on seed 7

    items = pd.read_parquet(out / "items.parquet")
    assert len(items) == 4 * (1 + 3)  # baseline + three vectors at beta 3 (beta 0 is the baseline)
    # resume: nothing new is generated, the same table comes out
    res2 = stage_steer_eval(**kw, resume=True)
    assert len(pd.read_parquet(out / "items.parquet")) == len(items)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "steering.parquet"), table)
    assert res2["best"] == res["best"]


def test_eval_adaptive_and_errors(lm, fitted, tmp_path):
    from auralens.steering.stage_eval import stage_steer_eval

    vec, path = fitted
    res = stage_steer_eval(model=lm.source, data="cafe", n=2, vector=vec, betas=[2.0], out=tmp_path / "a",
                           seed=7, lm=lm, quiet=True, max_new_tokens=4, controls=False, adaptive_gain=1.0,
                           positions=("both",), n_boot=50, protocol="sweep")
    assert res["vectors"] == ["audio_minus_silence"]
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["config"]["adaptive_gain"] == 1.0 and m["config"]["adaptive_heads"] == [[1, 0], [1, 2], [2, 3]]
    with pytest.raises(ConfigError, match="layers"):
        stage_steer_eval(model=lm.source, data="cafe", n=2, vector=path, betas=[1.0], layers=[0],
                         out=tmp_path / "b", lm=lm, quiet=True)
    with pytest.raises(ConfigError, match="betas"):
        stage_steer_eval(model=lm.source, data="cafe", n=2, vector=path, betas=[float("nan")],
                         out=tmp_path / "c", lm=lm, quiet=True)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # nothing written


def test_table_equals_direct_computation():
    from scipy.stats import binomtest

    from auralens.interp.stats import bootstrap_mean_ci
    from auralens.steering.evaluate import steering_table

    rng = np.random.default_rng(0)
    n = 30
    ids = [f"i{k}" for k in range(n)]
    cats = ["a" if k % 3 else "b" for k in range(n)]
    base = rng.random(n) < 0.5
    steered = rng.random(n) < 0.6
    rows = []
    for vector, method, layer, alpha, correct in (("baseline", "none", -1, 0.0, base), ("v", "audio_minus_silence", 2, 4.0, steered)):
        for i, c, ok in zip(ids, cats, correct):
            rows.append({"row_id": f"{i}|{vector}", "item_id": i, "vector": vector, "method": method, "layer": layer,
                         "beta": alpha, "positions": "none" if vector == "baseline" else "last_prompt",
                         "format": "direct", "category": c, "tier": c, "correct": bool(ok)})
    table = steering_table(pd.DataFrame(rows), n_boot=300, seed=1)
    row = table[(table["beta"] == 4.0) & (table["category"] == "all")].iloc[0]
    assert row["accuracy"] == pytest.approx(steered.mean())
    assert row["delta"] == pytest.approx(steered.mean() - base.mean())
    mean, lo, hi = bootstrap_mean_ci(np.stack([steered, steered.astype(float) - base], -1), n_boot=300, seed=1)
    w = binomtest(int(steered.sum()), n).proportion_ci(method="wilson")  # accuracies get Wilson intervals
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((w.low, w.high))
    assert (row["delta_ci_low"], row["delta_ci_high"]) == pytest.approx((lo[1], hi[1]))
    b = np.array(cats) == "b"
    row_b = table[(table["beta"] == 4.0) & (table["category"] == "b")].iloc[0]
    assert row_b["n"] == b.sum() and row_b["delta"] == pytest.approx(steered[b].mean() - base[b].mean())
    zero = table[(table["beta"] == 0.0) & (table["category"] == "all")].iloc[0]
    assert zero["accuracy"] == pytest.approx(base.mean()) and zero["delta"] == 0.0


def test_cli_betas_and_the_hidden_alphas_alias(tmp_path, monkeypatch):
    """``--betas`` is the flag; ``--alphas`` is a hidden deprecated spelling that maps to it with a warning."""
    from typer.testing import CliRunner

    import auralens.steering.stage_eval as stage_eval
    from auralens.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["steer", "eval", "--help"], env={"COLUMNS": "200"})
    assert "--betas" in res.output and "--alphas" not in res.output
    res = runner.invoke(app, ["steer", "eval", "--vector", str(tmp_path / "v.safetensors"), "--betas", "0,x",
                              "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "--betas" in res.output and "'x'" in res.output
    seen = {}
    monkeypatch.setattr(stage_eval, "stage_steer_eval", lambda **kw: seen.update(kw) or {"ok": True})
    res = runner.invoke(app, ["steer", "eval", "--vector", str(tmp_path / "v.safetensors"), "--alphas", "0,3",
                              "--out", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.output
    assert seen["betas"] == (0.0, 3.0) and "--alphas is deprecated, use --betas" in res.output
