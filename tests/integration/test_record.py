"""The perception-decay stage end to end on `micro`, checked against eager attention."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from auralens.interp.datasets import load_dataset
from auralens.interp.generation import model_inputs
from auralens.interp.loading import load_model
from auralens.interp.record import stage_record
from auralens.interp.runs import RunFolder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "run"
    stage_record(model="micro", data="cafe", n=5, fmt="cot", out=out, batch_size=5, max_new_tokens=48,
                 time_bins=4, top_k=3, n_boot=200, quiet=True)
    return RunFolder.open(out)


def test_files_and_columns(run):
    items = run.read_table("items.parquet")
    assert len(items) == 5 and set(items.error_type) <= {"correct", "perception", "reasoning", "unverifiable"}
    decay = run.read_table("decay.parquet")
    assert list(decay.columns) == ["group", "axis", "layer", "head", "step", "mean_yield", "ci_low", "ci_high", "n"]
    assert {"all", "topk", "head", "all:reach_last", "topk:reach_last"} <= set(decay.group)
    assert set(decay.group) <= {"all", "topk", "head"} | {f"{g}:{s}" for g in ("all", "topk")
                                                         for s in ("claim", "reasoning", "reach_last")}
    heads = run.read_table("heads.parquet")
    assert {"layer", "head", "corr", "contrast", "rank"} <= set(heads.columns)
    assert run.manifest["status"] == "complete" and run.has("decay.html") and run.has("claim_accuracy.parquet")
    for r in items.itertuples():
        t = load_file(run.file(f"yields/{r.item_index:05d}.safetensors"))
        assert t["yield"].shape[0] == r.n_tokens == len(t["steps"]) == len(t["token_ids"])
        assert np.allclose(t["time_bins"].sum(-1), t["yield"], atol=1e-6)
        assert ((t["yield"] >= -1e-6) & (t["yield"] <= 1 + 1e-6)).all()
        assert run.file(r.audio_path).exists()


def test_recorded_yields_equal_eager_attention(run):
    """Row t of the stored yields == eager softmax attention summed over audio keys, for the
    query that produced generated token t (teacher-forced forward, one item, no padding)."""
    lm = load_model("micro", attn_implementation="eager", dtype="float32", device="cpu")
    items = load_dataset("cafe", n=5, seed=7)
    rows = run.read_table("items.parquet").set_index("item_id")
    for k in (0, 3):
        it = items[k]
        idx = int(rows.loc[it.item_id, "item_index"])
        with safe_open(str(run.file(f"yields/{idx:05d}.safetensors")), "pt") as f:
            stored = f.get_tensor("yield")
            gen = f.get_tensor("token_ids")
            assert json.loads(f.metadata()["tokens"])
        batch = model_inputs(lm, [it], "cot", "real")
        P = batch["input_ids"].shape[1]
        ids = torch.cat([batch["input_ids"], gen[None, :-1]], dim=1)
        mask = torch.ones_like(ids)
        with torch.no_grad():
            out = lm.model(input_ids=ids, attention_mask=mask, input_features=batch["input_features"],
                           feature_attention_mask=batch["feature_attention_mask"], output_attentions=True)
        audio = (batch["input_ids"][0] == lm.arch.audio_token_id)
        att = torch.stack(out.attentions, 0)[:, 0]  # [L, H, T, T]
        ref = att[:, :, P - 1 :, :P][..., audio].sum(-1).permute(2, 0, 1)  # [n_tokens, L, H]
        assert ref.shape == stored.shape
        assert torch.allclose(stored, ref, atol=1e-5), (stored - ref).abs().max()


def test_resume_skips_done_items(run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(run.path, out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "yields").iterdir()}
    res = stage_record(model="micro", data="cafe", n=5, fmt="cot", out=out, resume=True, batch_size=5,
                       max_new_tokens=48, time_bins=4, top_k=3, n_boot=200, quiet=True)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "yields").iterdir()}
    assert before == after and res["n"] == 5


def test_heads_ranked_on_calibration_items_by_default_for_cue_test_splits(tmp_path, run):
    common = dict(model="micro", fmt="cot", batch_size=4, max_new_tokens=48, time_bins=2, top_k=2, n_boot=50,
                  quiet=True)
    res = stage_record(data="cafe-neutral", n=4, n_cal=3, out=tmp_path / "a", **common)
    assert res["heads_selection"] == "calibration items (disjoint)"
    assert res["heads_ranked_on"] == "cafe-neutral:calibration" and res["heads_ranked_on_items"] == 3
    a = RunFolder.open(tmp_path / "a")
    assert a.manifest["config"]["heads_from"] == "calibration:cafe-neutral:calibration:3"
    assert a.manifest["heads"]["heads_selection"] == "calibration items (disjoint)"
    cal = RunFolder.open(tmp_path / "a" / "calibration")
    assert a.read_table("heads.parquet")[["layer", "head", "rank"]].equals(cal.read_table("heads.parquet")[["layer", "head", "rank"]])
    assert res["error_shares_of"] == "wrong answers" and set(res["error_shares"]) == {"perception", "reasoning",
                                                                                         "unverifiable"}
    summ = a.read_table("decay_summary.parquet")
    r = summ[(summ.group == "all") & (summ.axis == "step")].iloc[0]
    assert r.slope_ci_low <= r.slope <= r.slope_ci_high and r.n_items == 4
    # heads taken from a run on the same items: said to be biased; none: the same
    same = stage_record(data="cafe", n=5, heads_from=str(run.path), out=tmp_path / "b", **common)
    assert same["heads_selection"] == "same items (biased)"
    none = stage_record(data="cafe-neutral", n=3, calibration="none", out=tmp_path / "c", **common)
    assert none["heads_selection"] == "same items (biased)" and not (tmp_path / "c" / "calibration").exists()


def test_heads_options_are_checked(tmp_path):
    from auralens.interp.errors import ConfigError
    from auralens.interp.record import RecordConfig

    with pytest.raises(ConfigError, match="n_cal"):
        RecordConfig(n_cal=-1)
    with pytest.raises(ConfigError, match="heads_from"):
        RecordConfig(heads_from="x", calibration="cafe-neutral:calibration")
    with pytest.raises(ConfigError, match="heads_from"):
        stage_record(model="micro", data="cafe", n=2, heads_from=str(tmp_path / "nothing"), out=tmp_path / "o",
                     quiet=True)
    assert RecordConfig(data="cafe-conflict:dev").calibration_data() == "cafe-conflict:calibration"
    assert RecordConfig(data="cafe-conflict:calibration").calibration_data() is None
    assert RecordConfig(data="cafe").calibration_data() is None


def test_calibration_auto_for_file_datasets(tmp_path, folder_dataset):
    from auralens.interp.record import RecordConfig

    assert RecordConfig(data="x/m.json:test").calibration_data() == "x/m.json:calibration"
    assert RecordConfig(data="x/m.json:dev@3").calibration_data() == "x/m.json:calibration@3"
    assert RecordConfig(data="x/m.json:calibration").calibration_data() is None
    assert RecordConfig(data="x/m.json").calibration_data() is None  # whole file: ranked on its own items
    assert RecordConfig(data="cafe:perception").calibration_data() is None
    assert RecordConfig(data="x/m.json:test", calibration="none").calibration_data() is None
    d = folder_dataset(20)
    common = dict(model="micro", fmt="cot", batch_size=4, max_new_tokens=24, time_bins=2, top_k=2, n_boot=20,
                  quiet=True)
    res = stage_record(data=f"{d}:test", n=3, n_cal=2, out=tmp_path / "f", **common)
    assert res["heads_selection"] == "calibration items (disjoint)"
    assert res["heads_ranked_on"] == f"{d}:calibration" and res["heads_ranked_on_items"] == 2
    whole = stage_record(data=str(d), n=3, out=tmp_path / "w", **common)
    assert whole["heads_selection"] == "same items (biased)" and not (tmp_path / "w" / "calibration").exists()
