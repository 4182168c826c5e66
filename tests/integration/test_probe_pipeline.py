"""The probe stage end to end on a handful of cafe items with an untrained micro-sized model:
run folder contents, exact table columns, both figures, summary, resume, bad input, and the
probe -> steering-vector path (saved and reloaded with auralens.steering.formats)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from auralens.interp.errors import ProbeError

N_ITEMS = 16
FAST = dict(n_folds=2, n_bootstrap=50, max_new_tokens=8, max_steps=3, batch_size=8, chunk_size=6)


@pytest.fixture(scope="module")
def micro_dir(small_micro_dir):
    return str(small_micro_dir)


@pytest.fixture(scope="module")
def lm(micro_dir):
    from auralens.interp.loading import load_model

    return load_model(micro_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def run(lm, micro_dir, tmp_path_factory):
    from auralens.probes.stage import stage_probe

    out = tmp_path_factory.mktemp("runs") / "probe"
    summary = stage_probe(model=micro_dir, data="cafe", n=N_ITEMS, out=out, seed=5, lm=lm, quiet=True,
                          audio_layers=(0,), **FAST)
    return out, summary


def test_run_folder_table_and_figures(run, lm):
    from auralens.probes.tables import TABLE_COLUMNS

    out, summary = run
    for name in ("manifest.json", "probes.parquet", "probes_by_layer.html", "probes_by_step.html",
                 "probe_summary.json", "probe_directions.safetensors", "labels.parquet",
                 "generations.parquet", "activations/index.json"):
        assert (out / name).exists(), name
    assert len(list((out / "activations").glob("chunk-*.safetensors"))) == 3  # 16 rows / 6
    table = pd.read_parquet(out / "probes.parquet")
    assert tuple(table.columns) == TABLE_COLUMNS
    assert set(table["site"]) == {"lm.blocks.{L}.hook_resid_post", "audio_encoder.blocks.{L}.hook_resid_post"}
    assert set(table["position"]) == {"audio_mean", "last_prompt", "step_mean"}
    lm_prompt = table[(table["site"] == "lm.blocks.{L}.hook_resid_post") & table["step"].isna()]
    for (attribute, position, _split), sub in lm_prompt.groupby(["attribute", "position", "split"]):
        assert sorted(sub["layer"]) == list(range(lm.arch.n_layers)), (attribute, position)
    steps = table[table["position"] == "step_mean"]
    assert not steps.empty and steps["step"].notna().all()
    assert table.loc[table["position"] != "step_mean", "step"].isna().all()
    assert ((table["accuracy"] >= 0) & (table["accuracy"] <= 1)).all()
    assert (table["selectivity"] - (table["accuracy"] - table["control_accuracy"])).abs().max() < 1e-12
    for name in ("probes_by_layer.html", "probes_by_step.html"):
        text = (out / name).read_text()
        assert "plotly" in text.lower() and "Plotly.newPlot" in text
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"

    # summary: every probed attribute has a best layer; decay over steps is reported
    assert summary["n"] == N_ITEMS and summary["n_probes"] == len(table)
    probed = set(table.loc[table["site"] == "lm.blocks.{L}.hook_resid_post", "attribute"])
    assert set(summary["attributes"]) == probed
    # the best location is chosen on the select half and scored on the disjoint report half
    assert set(table["split"]) == {"select", "report"}
    man = json.loads((out / "manifest.json").read_text())["splits"]
    sel_ids, rep_ids = set(man["select"]["item_ids"]), set(man["report"]["item_ids"])
    assert not sel_ids & rep_ids and len(sel_ids | rep_ids) == N_ITEMS and len(sel_ids) == N_ITEMS // 2
    assert summary["best_chosen_on"] == man["select"]["data"] and summary["reported_on"] == man["report"]["data"]
    for attribute, entry in summary["attributes"].items():
        best, chosen = entry["best"], entry["selection"]
        sub = lm_prompt[lm_prompt["attribute"] == attribute]
        sel, rep = sub[sub["split"] == "select"], sub[sub["split"] == "report"]
        assert chosen["accuracy"] == pytest.approx(sel["accuracy"].max())
        at = rep[(rep["layer"] == best["layer"]) & (rep["position"] == best["position"])]
        assert len(at) == 1 and best["accuracy"] == pytest.approx(at["accuracy"].iloc[0])
        assert (best["layer"], best["position"]) == (chosen["layer"], chosen["position"])
        assert best["selectivity"] == pytest.approx(best["accuracy"] - best["control_accuracy"])
        if entry["decay"] is not None and len(entry["decay"]["steps"]) >= 2:
            assert isinstance(entry["decay"]["falls"], bool)
    for key in ("skipped", "skipped_steps", "dropped_classes"):
        assert isinstance(summary[key], dict)
    saved = json.loads((out / "probe_summary.json").read_text())
    assert saved["attributes"].keys() == summary["attributes"].keys()


def test_resume_reuses_activations(run, lm, micro_dir, monkeypatch):
    import auralens.probes.collect as collect
    from auralens.probes.stage import stage_probe

    out, first = run

    def fail(*args, **kwargs):  # every chunk is on disk: nothing may be collected again
        raise AssertionError("collect_batch called on resume")

    monkeypatch.setattr(collect, "collect_batch", fail)
    again = stage_probe(model=micro_dir, data="cafe", n=N_ITEMS, out=out, seed=5, lm=lm, quiet=True,
                        audio_layers=(0,), resume=True, **FAST)
    assert again["attributes"] == first["attributes"]


def test_bad_input_names_the_problem(lm, micro_dir, tmp_path):
    from auralens.probes.stage import stage_probe

    common = dict(model=micro_dir, data="cafe", seed=5, lm=lm, quiet=True, positions=("last_prompt",), **FAST)
    with pytest.raises(ProbeError, match="'has_nothing'"):
        stage_probe(n=N_ITEMS, out=tmp_path / "a", attributes=["n_events", "has_nothing"], **common)
    with pytest.raises(ProbeError, match=r"'louder_of_12'.*(one class|fewer)"):
        stage_probe(n=4, out=tmp_path / "b", attributes=["louder_of_12"], **{**common, "n_folds": 3})
    with pytest.raises(ProbeError, match=r"'n_events'.*fewer than the 5 folds"):
        stage_probe(n=3, out=tmp_path / "c", attributes=["n_events"], **{**common, "n_folds": 5})
    with pytest.raises(ProbeError, match=r"decoder layer\(s\) \[3\] out of range.*3 decoder layers"):
        stage_probe(n=N_ITEMS, out=tmp_path / "d", layers=[0, 3], **common)


def test_probe_direction_to_steering_vector(run, lm, tmp_path):
    from auralens.probes.collect import LM_SITE
    from auralens.probes.directions import load_probe_direction, probe_direction
    from auralens.probes.fit import ProbeConfig, fit_probe
    from auralens.probes.tables import ProbeRow
    from auralens.steering.formats import export, load_vector
    from auralens.steering.from_probe import probe_to_steering_vector

    out, summary = run
    # binary probe fitted here, so the direction can be checked against the ProbeResult
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, lm.arch.d_model))
    y = np.where(X[:, 3] > 0, "loud", "soft")
    result = fit_probe(X, y, np.arange(40), ProbeConfig(n_folds=2, n_bootstrap=0), attribute="event1_loudness")
    row = ProbeRow(site=LM_SITE, layer=1, position="last_prompt", step=None, attribute="event1_loudness", result=result)
    d = probe_direction(row)
    v = d["directions"][1]
    assert d["metadata"]["target"] == "soft"  # classes sorted: ("loud", "soft"); binary points to classes[1]
    np.testing.assert_allclose(v.numpy(), result.direction / np.linalg.norm(result.direction), rtol=1e-6)
    flipped = probe_direction(row, target="loud")["directions"][1]
    torch.testing.assert_close(flipped, -v)
    with pytest.raises(ProbeError, match="target"):
        probe_direction(row, target="medium")
    with pytest.raises(ProbeError, match="layer"):
        probe_direction(result)

    vec = probe_to_steering_vector(d, arch=lm.arch, model_id="micro-test")
    assert vec.method == "probe" and vec.layers == (1,) and vec.extra["attribute"] == "event1_loudness"
    vec.check_compatible(lm.arch)
    path = export(vec, tmp_path / "probe.safetensors")
    back = load_vector(path)
    assert back.equals(vec)

    # the stage's best directions, read back from the run folder
    from safetensors import safe_open

    with safe_open(str(out / "probe_directions.safetensors"), framework="pt") as f:
        info = json.loads(f.metadata()["probes"])
    assert set(info) == set(summary["attributes"])
    manifest = json.loads((out / "manifest.json").read_text())
    for a, m in info.items():
        assert m["layer"] == summary["attributes"][a]["best"]["layer"]
        if len(m["classes"]) == 2:
            loaded = load_probe_direction(out, a)
            assert loaded["metadata"]["model_id"] == manifest["model"]
            vec2 = probe_to_steering_vector(loaded, arch=lm.arch)
            assert vec2.data_fingerprint == manifest["data_fingerprint"]
            assert vec2.layers == (m["layer"],)
        else:
            with pytest.raises(ProbeError, match="target"):
                load_probe_direction(out, a)
            got = load_probe_direction(out, a, target=m["classes"][0])
            assert abs(float(got["directions"][m["layer"]].norm()) - 1) < 1e-5


def test_probe_splits_are_disjoint_and_named():
    from auralens.probes.stage import half_split, probe_splits

    assert probe_splits("cafe-neutral", seed=7) == ("cafe-neutral:calibration", "cafe-neutral:test")
    assert probe_splits("cafe-conflict:dev", seed=7) == ("cafe-conflict:calibration", "cafe-conflict:dev")
    assert probe_splits("cafe-neutral:calibration", seed=7) is None and probe_splits("cafe", seed=7) is None
    assert probe_splits("x/m.json", seed=7) == ("x/m.json:calibration", "x/m.json:test")
    assert probe_splits("x/m.json:dev@2", seed=7) == ("x/m.json:calibration@2", "x/m.json:dev@2")
    h = half_split([f"i{k}" for k in range(9)], seed=3)
    assert len(h["select"]) == 4 and not set(h["select"]) & set(h["report"])
    assert h == half_split([f"i{k}" for k in range(9)], seed=3) != half_split([f"i{k}" for k in range(9)], seed=4)


def test_stage_splits_load_disjoint_named_items():
    from auralens.probes.stage import stage_splits

    cue = stage_splits("cafe-neutral", n=4, seed=7)
    assert cue.names == {"select": "cafe-neutral:calibration", "report": "cafe-neutral:test"}
    assert [it.item_id for it in cue.items] == cue.ids["select"] + cue.ids["report"]
    assert len(cue.ids["select"]) == len(cue.ids["report"]) == 4 and not set(cue.ids["select"]) & set(cue.ids["report"])
    man = cue.manifest()
    assert man["select"] == {"data": "cafe-neutral:calibration", "n": 4, "item_ids": cue.ids["select"]}
    plain = stage_splits("cafe", n=6, seed=7)
    assert len(plain.items) == 6 and len(plain.ids["select"]) == 3
    assert plain.names["select"] == "cafe: first half by sha256('7:<item id>') order"


def test_probing_steps_choose_label_and_drop():
    import pandas as pd

    from auralens.interp.datasets import load_cafe
    from auralens.probes.probing import LabelledRows, checked_splits, default_attributes, drop_rare_classes

    items = load_cafe(6, seed=2)
    assert default_attributes(None, items)[:1] and "category" not in default_attributes(None, items)
    assert default_attributes(["category", "category"], items) == ["category"]
    with pytest.raises(ProbeError, match="at least one attribute"):
        default_attributes([], items)
    rows = pd.DataFrame({"item_id": [it.item_id for it in items], "format": ["cot"] * 6})
    assert checked_splits(None, rows) == {"all": rows["item_id"].tolist()}
    with pytest.raises(ProbeError, match="disjoint"):
        checked_splits({"select": ["a"], "report": ["a"]}, rows)
    data = LabelledRows.build(rows, items, ["category"], checked_splits(None, rows))
    assert data.formats == ["cot"] and data.in_split["all"].all() and len(data.labels["category"]) == 6
    data.labels["category"] = np.array(["a", "a", "b", "b", "c", "b"], dtype=object)
    assert drop_rare_classes(data, ["category"], n_folds=2) == {"category": {"c": 1}}
    assert data.labels["category"].tolist() == ["a", "a", "b", "b", None, "b"]
    with pytest.raises(ProbeError, match="not among the given items"):
        LabelledRows.build(rows, items[:5], ["category"], checked_splits(None, rows))
