"""The perception-decay stage end to end on `micro`, checked against eager attention."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from interp.datasets import load_dataset
from interp.generation import model_inputs
from interp.loading import load_model
from interp.record import stage_record
from interp.runs import RunFolder


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
    assert {"all", "topk", "head"} == set(decay.group)
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
