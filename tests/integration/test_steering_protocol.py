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

from auralens.interp.errors import ConfigError


@pytest.fixture(scope="module")
def lm(small_lm):
    return small_lm


@pytest.fixture(scope="module")
def fitted(lm, tmp_path_factory):
    from auralens.steering.stage_fit import stage_steer_fit

    out = tmp_path_factory.mktemp("pvec") / "vec.safetensors"
    vec = stage_steer_fit(model=lm.source, data="cafe-conflict", n=4, layers=None, out_vector=out, lm=lm,
                          normalize="unit")
    return vec, out


def test_fit_defaults_to_calibration_and_last_layer(lm, fitted):
    from auralens.interp.cafe.cues import SPLITS

    vec, path = fitted
    fit = vec.extra["fit"]
    assert fit["data"] == "cafe-conflict:calibration" and vec.layers == (lm.arch.n_layers - 1,)
    assert fit["split"]["seeds"] == [SPLITS["calibration"], SPLITS["calibration"] + 4]
    assert len(fit["split"]["ids_sha256"]) == 64


def test_per_input_directions_average_to_the_vector(lm, fitted):
    from auralens.interp.datasets import load_dataset
    from auralens.steering.directions import per_input_directions

    vec, _ = fitted
    items = load_dataset("cafe-conflict:calibration", n=4)
    s = per_input_directions(lm, items, vec, batch_size=2)
    L = vec.layers[0]
    assert s[L].shape == (4, lm.arch.d_model)
    torch.testing.assert_close(s[L].mean(0), vec.directions[L], atol=1e-5, rtol=1e-4)


def test_per_row_steering_matches_constant_and_is_row_specific(lm, fitted):
    from auralens.interp.datasets import load_dataset
    from auralens.interp.generation import cast_features, model_inputs
    from auralens.steering.apply import apply_vector

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
    from auralens.steering.formats import load_vector
    from auralens.steering.stage_eval import stage_steer_eval

    _, path = fitted
    out = tmp_path / "run"
    res = stage_steer_eval(model=lm.source, data="cafe-conflict", n=3, vector=path, betas=[0, 2.0, -2.0], out=out,
                           lm=lm, quiet=True, max_new_tokens=3, batch_size=3, n_boot=100, selection="best",
                           random_directions=3)
    sel, test = res["selected"], res["test"]
    assert sel["mode"] in ("mean", "per_input") and sel["beta"] in (2.0, -2.0) and sel["positions"] == "both"
    assert res["decision"] == sel["decision"] == test["decision"] == "steer"
    null = res["random_directions"]  # each random direction with its own dev beta, the same rule
    assert null["k"] == 3 and null["mode"] == sel["mode"] and null["layer"] == sel["layer"]
    gains = [d["test_gain"] for d in null["directions"].values()]
    assert all(d["beta"] in (2.0, -2.0) for d in null["directions"].values())
    below, equal = sum(g < test["gain"] for g in gains), sum(g == test["gain"] for g in gains)
    assert null["vector_percentile"] == pytest.approx(100 * (below + equal / 2) / 3)
    assert null["vector_gain"] == test["gain"]
    assert res["neutral"]["data"] == "cafe-neutral:test" and res["neutral"]["n"] == 3
    assert res["answers"]["n"] == 3 and 0 <= res["answers"]["total_variation"] <= 1
    assert set(pd.read_parquet(out / "neutral_items.parquet")["item_id"]) == {
        i.replace("-conflict", "-neutral") for i in pd.read_parquet(out / "test_items.parquet")["item_id"]}
    assert test["n"] == 3 and test["ci"][0] <= test["gain"] <= test["ci"][1]
    assert abs(test["steered"] - test["base"] - test["gain"]) < 1e-9
    assert set(res["controls"]) == {"random_direction", "random_heads"}  # a stable shape
    assert "no specialist heads" in res["controls"]["random_heads"]["skipped"]
    assert set(res["best"]["controls"]) == {"random_direction"}
    assert res["splits"]["dev"]["data"] == "cafe-conflict:dev" and res["splits"]["test"]["data"] == "cafe-conflict:test"
    table = pd.read_parquet(out / "steering.parquet")  # the whole dev sweep
    assert set(table["vector"]) == {"audio_minus_silence", "per_input"} and set(table["beta"]) == {0.0, 2.0, -2.0}
    test_rows = pd.read_parquet(out / "test_items.parquet")
    assert len(set(test_rows["item_id"])) == 3
    assert {f"random_{i:02d}" for i in range(3)} <= set(test_rows["vector"])
    assert all(i.endswith("-conflict") for i in test_rows["item_id"])
    meta = load_vector(out / "vectors" / "selected.safetensors").extra["steer"]
    assert meta["beta"] == sel["beta"] and meta["mode"] == sel["mode"] and meta["chosen_on"] == "dev"
    assert meta["layers"] == sel["layers"] and meta["positions"] == "both"
    assert meta["splits"]["test"]["ids_sha256"] == res["splits"]["test"]["ids_sha256"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["splits"]["test"]["ids_sha256"] == res["splits"]["test"]["ids_sha256"]
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(res))


def test_dev_test_declines_when_no_beta_helps_on_dev(lm, fitted, tmp_path):
    """A beta too small to change any answer: every dev gain is 0, its interval the degenerate
    rule of auralens.interp.stats (3 all-equal items could hide a gain either way: the interval
    straddles 0 and is not [0, 0]), so the rule declines — the test step reports the unsteered model (gain 0), the candidate beside it, and
    the recorded setting is beta 0; the random directions decline too (gain 0, percentile 50)."""
    from auralens.steering.formats import load_vector
    from auralens.steering.stage_eval import stage_steer_eval

    _, path = fitted
    out = tmp_path / "run"
    res = stage_steer_eval(model=lm.source, data="cafe-conflict", n=3, vector=path, betas=[0, 1e-6], out=out,
                           lm=lm, quiet=True, max_new_tokens=3, batch_size=3, n_boot=50, random_directions=2,
                           modes="mean")
    sel, test = res["selected"], res["test"]
    assert res["decision"] == sel["decision"] == test["decision"] == "decline" and sel["beta"] == 0.0
    lo, hi = sel["candidate"]["dev"]["ci"]
    assert sel["candidate"]["beta"] == 1e-6 and sel["candidate"]["dev"]["gain"] == 0.0 and lo < 0.0 < hi
    assert test["gain"] == 0.0 and test["ci"] == [0.0, 0.0] and test["steered"] == test["base"]
    assert test["candidate"]["gain"] == 0.0  # beta 1e-6 changes nothing on test either
    assert res["random_directions"]["n_declined"] == 2 and res["random_directions"]["vector_percentile"] == 50.0
    assert res["neutral"]["decision"] == "decline" and res["neutral"]["gain"] == 0.0
    assert not (out / "neutral_items.parquet").exists()
    assert res["answers"]["total_variation"] == 0.0
    meta = load_vector(out / "vectors" / "selected.safetensors").extra["steer"]
    assert meta["beta"] == 0.0 and meta["decision"] == "decline"


def test_refusals_before_generation(lm, fitted, tmp_path):
    from auralens.steering.stage_eval import stage_steer_eval
    from auralens.steering.stage_fit import stage_steer_fit

    vec, path = fitted
    leaky = stage_steer_fit(model=lm.source, data="cafe-neutral:test", n=3, out_vector=tmp_path / "leak.safetensors",
                            lm=lm)
    kw = dict(model=lm.source, n=3, betas=[1.0], lm=lm, quiet=True, max_new_tokens=2)
    with pytest.raises(ConfigError, match="shares 3 of the 3 test items"):
        stage_steer_eval(data="cafe-conflict", vector=leaky, out=tmp_path / "a", **kw)
    with pytest.raises(ConfigError, match="without a split"):
        stage_steer_eval(data="cafe-conflict:test", vector=vec, out=tmp_path / "b", **kw)
    with pytest.raises(ConfigError, match="splits"):
        stage_steer_eval(data=str(tmp_path / "x.txt"), vector=vec, out=tmp_path / "c", **kw)
    with pytest.raises(ConfigError, match="fitted on model"):
        stage_steer_eval(data="cafe-conflict", vector=path, out=tmp_path / "d", model="micro-prior", n=3, betas=[1.0],
                         quiet=True)
    with pytest.raises(ConfigError, match="betas"):
        stage_steer_eval(data="cafe-conflict", vector=vec, out=tmp_path / "e", **{**kw, "betas": ["x"]})
    with pytest.raises(ConfigError, match="layers"):
        stage_steer_eval(data="cafe-conflict", vector=vec, out=tmp_path / "f", layers=[0], **kw)
    with pytest.raises(ConfigError, match="modes"):
        stage_steer_eval(data="cafe-conflict", vector=vec, out=tmp_path / "g", modes=("bogus",), **kw)
    for name in "abcdefg":
        assert not (tmp_path / name).exists()


def test_file_dataset_fit_on_calibration_eval_on_dev_and_test(lm, folder_dataset, tmp_path):
    """A folder dataset: fit on its hashed calibration split, choose on dev, report on test."""
    from auralens.interp.datasets import file_split, load_dataset
    from auralens.steering.formats import load_vector
    from auralens.steering.stage_eval import stage_steer_eval
    from auralens.steering.stage_fit import stage_steer_fit

    d = folder_dataset(24)
    vec = stage_steer_fit(model=lm.source, data=str(d), n=3, out_vector=tmp_path / "f.safetensors", lm=lm)
    fit = vec.extra["fit"]
    assert fit["data"] == f"{d}:calibration"
    assert fit["split"]["split"] == "calibration" and fit["split"]["split_seed"] == 0
    assert "sha256" in fit["split"]["split_rule"] and len(fit["split"]["ids_sha256"]) == 64
    cal = [it.item_id for it in load_dataset(f"{d}:calibration", n=3)]
    assert all(file_split(i) == "calibration" for i in cal)
    out = tmp_path / "run"
    res = stage_steer_eval(model=lm.source, data=str(d), n=2, vector=tmp_path / "f.safetensors", betas=[0, 2.0],
                           out=out, lm=lm, quiet=True, max_new_tokens=2, batch_size=2, n_boot=50, modes="mean")
    assert res["splits"]["dev"]["data"] == f"{d}:dev" and res["splits"]["test"]["data"] == f"{d}:test"
    assert res["splits"]["calibration"]["data"] == f"{d}:calibration"
    test_ids = set(pd.read_parquet(out / "test_items.parquet")["item_id"])
    dev_ids = set(pd.read_parquet(out / "items.parquet")["item_id"])
    assert all(file_split(i) == "test" for i in test_ids) and all(file_split(i) == "dev" for i in dev_ids)
    meta = load_vector(out / "vectors" / "selected.safetensors").extra["steer"]
    assert meta["splits"]["test"]["split_seed"] == 0 and meta["splits"]["dev"]["split"] == "dev"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["splits"]["test"]["ids_sha256"] == res["splits"]["test"]["ids_sha256"]
    # split seed 1 in the spec: fit on <d>:calibration@1; a vector fitted on dev/test is refused
    v1 = stage_steer_fit(model=lm.source, data=f"{d}@1", n=2, out_vector=tmp_path / "g.safetensors", lm=lm)
    assert v1.extra["fit"]["data"] == f"{d}:calibration@1" and v1.extra["fit"]["split"]["split_seed"] == 1
    leaky = stage_steer_fit(model=lm.source, data=f"{d}:test", n=1000, out_vector=tmp_path / "h.safetensors", lm=lm)
    with pytest.raises(ConfigError, match="expected disjoint splits"):
        stage_steer_eval(model=lm.source, data=str(d), n=2, vector=leaky, betas=[1.0], out=tmp_path / "x", lm=lm,
                         quiet=True, max_new_tokens=2)
    with pytest.raises(ConfigError, match="without a split"):
        stage_steer_eval(model=lm.source, data=f"{d}:dev", n=2, vector=vec, betas=[1.0], out=tmp_path / "y", lm=lm,
                         quiet=True, max_new_tokens=2)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_heads_choose_the_layer_set_and_must_come_from_calibration(lm, folder_dataset, tmp_path):
    """--heads-from without --layers: the layers of the top-k heads, recorded; heads ranked on
    the eval's dev/test split (or the whole file dataset) are refused."""
    import numpy as np

    from auralens.interp.listening import heads_table
    from auralens.steering.splits import check_heads_data
    from auralens.steering.stage_eval import stage_steer_eval
    from auralens.steering.stage_fit import stage_steer_fit

    d = folder_dataset(24)
    corr = np.zeros((lm.arch.n_layers, lm.arch.n_heads))
    corr[1, 2], corr[0, 1], corr[2, 0] = 0.9, 0.7, 0.1
    for name, data in (("cal", f"{d}:calibration"), ("leak", f"{d}:dev"), ("cue", "cafe-neutral")):
        (tmp_path / name).mkdir()
        heads_table(correlation=corr).to_parquet(tmp_path / name / "heads.parquet")
        (tmp_path / name / "manifest.json").write_text(json.dumps({"data": data}))
    kw = dict(model=lm.source, n=2, lm=lm)
    vec = stage_steer_fit(data=str(d), heads_from=str(tmp_path / "cal"), k_heads=2, heads_use="layers",
                          out_vector=tmp_path / "l.safetensors", **kw)
    fit = vec.extra["fit"]
    assert vec.layers == (0, 1) and vec.heads == () and vec.hook == "hook_resid_post"
    assert fit["layers"] == [0, 1] and fit["layers_from"].startswith("heads")
    assert fit["heads"] == [[1, 2], [0, 1]] and fit["heads_data"] == f"{d}:calibration"
    restricted = stage_steer_fit(data=str(d), heads_from=str(tmp_path / "cal"), k_heads=1, site="attn.hook_z",
                                 out_vector=tmp_path / "r.safetensors", **kw)
    assert restricted.heads == ((1, 2),) and restricted.layers == (1,)
    assert stage_steer_fit(data=str(d), out_vector=tmp_path / "d.safetensors", **kw).extra["fit"]["layers_from"] \
        .startswith("default")
    with pytest.raises(ConfigError, match="calibration run"):
        stage_steer_fit(data=str(d), heads_from=str(tmp_path / "leak"), out_vector=tmp_path / "x.safetensors", **kw)
    with pytest.raises(ConfigError, match="calibration run"):
        stage_steer_fit(data="cafe-conflict", heads_from=str(tmp_path / "cue"), out_vector=tmp_path / "y.safetensors",
                        **kw)
    with pytest.raises(ConfigError, match="heads_use"):
        stage_steer_fit(data=str(d), heads_use="layers", out_vector=tmp_path / "z.safetensors", **kw)
    check_heads_data("cafe-neutral:calibration", ["cafe-conflict:dev", "cafe-conflict:test"])
    check_heads_data("cafe", ["cafe"])  # no splits to check
    for bad in (str(d), f"{d}:calibration@1", f"{d}:test"):
        with pytest.raises(ConfigError, match="calibration run"):
            check_heads_data(bad, [f"{d}:dev", f"{d}:test"])
    # the eval re-checks the vector's recorded heads data and runs with it
    res = stage_steer_eval(data=str(d), vector=vec, betas=[0, 1.0], out=tmp_path / "run", quiet=True,
                           max_new_tokens=2, batch_size=2, n_boot=20, **kw)
    assert res["selected"]["layer"] in (0, 1)
    for name in "xyz":
        assert not (tmp_path / f"{name}.safetensors").exists()


def test_random_heads_control_for_layers_from_heads(lm, folder_dataset, tmp_path):
    """heads_use='layers': the same mode at the layer of k random non-specialist heads of the
    same table (seeded, outside the specialist layers when possible), reported like the others."""
    import numpy as np

    from auralens.interp.listening import heads_table
    from auralens.steering.controls import random_heads_layers
    from auralens.steering.stage_eval import stage_steer_eval
    from auralens.steering.stage_fit import stage_steer_fit

    d = folder_dataset(24)
    corr = np.zeros((lm.arch.n_layers, lm.arch.n_heads))
    corr[1, 2], corr[0, 1] = 0.9, 0.7
    (tmp_path / "cal").mkdir()
    heads_table(correlation=corr).to_parquet(tmp_path / "cal" / "heads.parquet")
    (tmp_path / "cal" / "manifest.json").write_text(json.dumps({"data": f"{d}:calibration"}))
    vec = stage_steer_fit(model=lm.source, data=str(d), heads_from=str(tmp_path / "cal"), k_heads=2,
                          heads_use="layers", out_vector=tmp_path / "l.safetensors", n=2, lm=lm)
    fit = vec.extra["fit"]
    draw = random_heads_layers(fit, lm.arch, 7)
    assert draw == random_heads_layers(fit, lm.arch, 7)  # seeded
    assert len(draw["heads"]) == 2 and all(L == 2 for L, _ in draw["heads"])  # outside layers 0, 1
    assert draw["layer_for"] == {1: 2, 0: 2}
    assert "no specialist heads" in random_heads_layers({**fit, "heads": []}, lm.arch, 7)
    for mode in ("per_input", "mean"):
        res = stage_steer_eval(model=lm.source, data=str(d), vector=vec, betas=[0, 2.0], out=tmp_path / mode,
                               n=2, lm=lm, quiet=True, max_new_tokens=2, batch_size=2, n_boot=20, modes=(mode,),
                               layers=[1])
        rh = res["controls"]["random_heads"]
        assert rh["mode"] == mode and rh["layer"] == 2 and rh["vector_layer"] == 1 and not rh["same_layer_as_vector"]
        assert rh["heads"] == [list(h) for h in draw["heads"]]
        for key in ("steered", "gain", "ci", "vector_minus_control", "vector_minus_control_ci"):
            assert key in rh
        assert set(res["best"]["controls"]) == {"random_direction", "random_heads"}
        rows = pd.read_parquet(tmp_path / mode / "test_items.parquet")
        assert set(rows.loc[rows["vector"] == "random_heads", "layer"]) == {2}
        assert set(rows.loc[rows["vector"] == res["selected"]["vector"], "layer"]) == {1}


def test_control_model_without_deficit(lm, fitted, small_micro_dir, tmp_path):
    """--control-model: the selected setting on another model of the same architecture, same
    test items; another width is refused before anything is written."""
    from auralens.interp.loading import load_model
    from auralens.interp.micro.build import MicroConfig, build_model, build_processor
    from auralens.steering.stage_eval import stage_steer_eval

    _, path = fitted
    kw = dict(model=lm.source, data="cafe-conflict", n=2, vector=path, betas=[0, 2.0], lm=lm, quiet=True,
              max_new_tokens=2, batch_size=2, n_boot=20)
    for mode in ("mean", "per_input"):
        res = stage_steer_eval(out=tmp_path / mode, control_model=str(small_micro_dir), modes=(mode,), **kw)
        cm = res["controls"]["model_without_deficit"]
        assert cm["model"] == str(small_micro_dir) and cm["mode"] == mode and cm["n"] == 2
        assert abs(cm["steered"] - cm["base"] - cm["gain"]) < 1e-9 and cm["ci"][0] <= cm["gain"] <= cm["ci"][1]
        # the same weights: the control model reproduces the vector's own test numbers
        assert cm["base"] == res["test"]["base"] and cm["steered"] == res["test"]["steered"]
        rows = pd.read_parquet(tmp_path / mode / "control_model_items.parquet")
        assert set(rows["item_id"]) == set(pd.read_parquet(tmp_path / mode / "test_items.parquet")["item_id"])
        manifest = json.loads((tmp_path / mode / "manifest.json").read_text())
        assert manifest["config"]["control_model"] == str(small_micro_dir)
    other = tmp_path / "wide"
    cfg = MicroConfig(layers=3, d_model=32, heads=4, kv_heads=2, ffn=64, d_audio=32)
    proc = build_processor(cfg)
    build_model(proc, cfg).save_pretrained(other)
    proc.save_pretrained(other)
    with pytest.raises(ConfigError, match="control_model.*d_model"):
        stage_steer_eval(out=tmp_path / "bad", control_model=str(other), **kw)
    with pytest.raises(ConfigError, match="control_model.*d_model"):
        stage_steer_eval(out=tmp_path / "bad2", control_lm=load_model(str(other), device="cpu", dtype="float32"), **kw)
    with pytest.raises(ConfigError, match="^control_model: model"):
        stage_steer_eval(out=tmp_path / "bad3", control_model="/nonexistent/ckpt", **kw)
    with pytest.raises(ConfigError, match="dev_test"):
        stage_steer_eval(out=tmp_path / "bad4", control_model=str(small_micro_dir), protocol="sweep", **kw)
    for name in ("bad", "bad2", "bad3", "bad4"):
        assert not (tmp_path / name).exists()
