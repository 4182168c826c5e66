"""Steering the paper's way: per-input s(x), dev/test protocol, refusals before generation.

- ``apply_vector(per_row=...)`` adds row i's direction to batch row i only (and equals the
  constant vector when every row is the same);
- ``stage_steer_eval`` (protocol ``dev_test``) chooses beta/layer/mode on dev, reports on test
  with paired CIs and controls, keeps the dev sweep in ``steering.parquet`` and records the
  choice and the split fingerprints in ``vectors/selected.safetensors``;
- overlapping splits, data without splits, another model's vector, bad beta/layers are
  ConfigErrors before anything is written.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from interp.errors import ConfigError


@pytest.fixture(scope="module")
def lm(small_lm):
    return small_lm


@pytest.fixture(scope="module")
def fitted(lm, tmp_path_factory):
    from steering.pipeline import stage_steer_fit

    out = tmp_path_factory.mktemp("pvec") / "vec.safetensors"
    vec = stage_steer_fit(model=lm.source, data="cafe-conflict", n=4, layers=None, out_vector=out, lm=lm,
                          normalize="unit")
    return vec, out


def test_fit_defaults_to_calibration_and_last_layer(lm, fitted):
    from interp.cafe.cues import SPLITS

    vec, path = fitted
    fit = vec.extra["fit"]
    assert fit["data"] == "cafe-conflict:calibration" and vec.layers == (lm.arch.n_layers - 1,)
    assert fit["split"]["seeds"] == [SPLITS["calibration"], SPLITS["calibration"] + 4]
    assert len(fit["split"]["ids_sha256"]) == 64


def test_per_input_directions_average_to_the_vector(lm, fitted):
    from interp.datasets import load_dataset
    from steering.directions import per_input_directions

    vec, _ = fitted
    items = load_dataset("cafe-conflict:calibration", n=4)
    s = per_input_directions(lm, items, vec, batch_size=2)
    L = vec.layers[0]
    assert s[L].shape == (4, lm.arch.d_model)
    torch.testing.assert_close(s[L].mean(0), vec.directions[L], atol=1e-5, rtol=1e-4)


def test_per_row_steering_matches_constant_and_is_row_specific(lm, fitted):
    from interp.datasets import load_dataset
    from interp.generation import cast_features, model_inputs
    from steering.apply import apply_vector

    vec, _ = fitted
    L = vec.layers[0]
    items = load_dataset("cafe-conflict:dev", n=2)
    batch = cast_features(lm, model_inputs(lm, items, "direct"))
    kw = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True,
              pad_token_id=lm.tokenizer.pad_token_id)
    with torch.inference_mode():
        with apply_vector(lm, vec, alpha=5.0, positions="both"):
            const = lm.model.generate(**batch, **kw)
        same = {L: vec.directions[L].expand(2, -1).clone()}
        with apply_vector(lm, vec, alpha=5.0, positions="both", per_row=same):
            rowwise = lm.model.generate(**batch, **kw)
        only0 = {L: torch.stack([vec.directions[L], torch.zeros_like(vec.directions[L])])}
        with apply_vector(lm, vec, alpha=5.0, positions="both", per_row=only0):
            mixed = lm.model.generate(**batch, **kw)
        plain = lm.model.generate(**batch, **kw)
    torch.testing.assert_close(const.logits[0], rowwise.logits[0])
    torch.testing.assert_close(mixed.logits[0][0], const.logits[0][0])  # row 0 steered
    torch.testing.assert_close(mixed.logits[0][1], plain.logits[0][1])  # row 1 not
    with pytest.raises(ConfigError, match="per_row"):
        with apply_vector(lm, vec, alpha=1.0, per_row={L: torch.zeros(2, 3)}):
            pass


def test_dev_test_protocol(lm, fitted, tmp_path):
    from steering.formats import load_vector
    from steering.pipeline import stage_steer_eval

    _, path = fitted
    out = tmp_path / "run"
    res = stage_steer_eval(model=lm.source, data="cafe-conflict", n=3, vector=path, alphas=[0, 2.0, -2.0], out=out,
                           lm=lm, quiet=True, max_new_tokens=3, batch_size=3, n_boot=100)
    sel, test = res["selected"], res["test"]
    assert sel["mode"] in ("mean", "per_input") and sel["beta"] in (2.0, -2.0) and sel["positions"] == "both"
    assert test["n"] == 3 and test["ci"][0] <= test["gain"] <= test["ci"][1]
    assert abs(test["steered"] - test["base"] - test["gain"]) < 1e-9
    assert set(res["controls"]) == {"random_direction"}
    assert res["splits"]["dev"]["data"] == "cafe-conflict:dev" and res["splits"]["test"]["data"] == "cafe-conflict:test"
    table = pd.read_parquet(out / "steering.parquet")  # the whole dev sweep
    assert set(table["vector"]) == {"audio_minus_silence", "per_input"} and set(table["alpha"]) == {0.0, 2.0, -2.0}
    test_rows = pd.read_parquet(out / "test_items.parquet")
    assert len(set(test_rows["item_id"])) == 3
    assert all(i.endswith("-conflict") for i in test_rows["item_id"])
    meta = load_vector(out / "vectors" / "selected.safetensors").extra["steer"]
    assert meta["beta"] == sel["beta"] and meta["mode"] == sel["mode"] and meta["chosen_on"] == "dev"
    assert meta["layers"] == sel["layers"] and meta["positions"] == "both"
    assert meta["splits"]["test"]["ids_sha256"] == res["splits"]["test"]["ids_sha256"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["splits"]["test"]["ids_sha256"] == res["splits"]["test"]["ids_sha256"]
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(res))


def test_refusals_before_generation(lm, fitted, tmp_path):
    from steering.pipeline import stage_steer_eval, stage_steer_fit

    vec, path = fitted
    leaky = stage_steer_fit(model=lm.source, data="cafe-neutral:test", n=3, out_vector=tmp_path / "leak.safetensors",
                            lm=lm)
    kw = dict(model=lm.source, n=3, alphas=[1.0], lm=lm, quiet=True, max_new_tokens=2)
    with pytest.raises(ConfigError, match="shares 3 of the 3 test items"):
        stage_steer_eval(data="cafe-conflict", vector=leaky, out=tmp_path / "a", **kw)
    with pytest.raises(ConfigError, match="without a split"):
        stage_steer_eval(data="cafe-conflict:test", vector=vec, out=tmp_path / "b", **kw)
    with pytest.raises(ConfigError, match="splits"):
        stage_steer_eval(data=str(tmp_path), vector=vec, out=tmp_path / "c", **kw)
    with pytest.raises(ConfigError, match="fitted on model"):
        stage_steer_eval(data="cafe-conflict", vector=path, out=tmp_path / "d", model="micro-prior", n=3, alphas=[1.0],
                         quiet=True)
    with pytest.raises(ConfigError, match="alphas"):
        stage_steer_eval(data="cafe-conflict", vector=vec, out=tmp_path / "e", **{**kw, "alphas": ["x"]})
    with pytest.raises(ConfigError, match="layers"):
        stage_steer_eval(data="cafe-conflict", vector=vec, out=tmp_path / "f", layers=[0], **kw)
    with pytest.raises(ConfigError, match="modes"):
        stage_steer_eval(data="cafe-conflict", vector=vec, out=tmp_path / "g", modes=("bogus",), **kw)
    for name in "abcdefg":
        assert not (tmp_path / name).exists()
