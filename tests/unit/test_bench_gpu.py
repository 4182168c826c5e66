"""`auralens bench gpu` (issue 24 item 4): where no GPU exists it refuses in one line, exit 2,
before any model is built; its measuring core (:func:`auralens.bench.bench_gpu_run`) runs on
any device, and its exactness figure agrees with an eager reference computed here."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from auralens import bench
from auralens.cli import app
from auralens.interp.arch import describe
from auralens.interp.attention_yield import audio_mask_from_ids
from auralens.interp.loading import LoadedModel
from auralens.testing.model_checks import sharpen_attention

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")


def test_bench_gpu_refuses_in_one_line_before_building_anything(monkeypatch):
    def built(*a, **k):
        raise AssertionError("a model was built although no GPU exists")

    monkeypatch.setattr(bench, "build_shaped", built)
    monkeypatch.setattr(bench, "load_model", built)
    res = CliRunner().invoke(app, ["bench", "gpu", "--json"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "expected a CUDA device, found none" in lines[0], res.output
    assert "Traceback" not in res.output


def test_bench_gpu_checks_its_options_first(monkeypatch):
    monkeypatch.setattr(bench, "require_cuda", lambda: pytest.fail("options are checked before the device"))
    res = CliRunner().invoke(app, ["bench", "gpu", "--batch", "1,0"])
    assert res.exit_code == 2 and "--batch" in res.output, res.output


def test_bench_gpu_core_is_exact_against_eager_on_a_tiny_model(tiny_model):
    model, processor = tiny_model("qwen2_audio")
    sharpen_attention(model)  # yields far from uniform, so a wrong key set would show
    processor.tokenizer.padding_side = "left"
    lm = LoadedModel(model=model, processor=processor, arch=describe(model), model_id="tiny", source="")
    res = bench.bench_gpu_run(lm, batches=(1, 2), new_tokens=4, repeats=1, clip_seconds=2.0)
    assert [r["batch"] for r in res["runs"]] == [1, 2]
    for r in res["runs"]:
        assert r["max_abs_recorder_minus_eager"] <= 1e-5, r
        assert r["tokens_equal_plain_recorder"] and r["tokens_equal_plain_eager"], r
        assert r["recorder"]["ratio"] > 0 and r["plain_sdpa"]["seconds"] > 0
    assert res["audio_tokens"] > 0 and res["device_name"] == "cpu"


def test_eager_reference_sees_a_wrong_yield(tiny_model):
    """The exactness figure can fail: yields of another audio mask differ from the reference."""
    model, processor = tiny_model("qwen2_audio")
    sharpen_attention(model)
    processor.tokenizer.padding_side = "left"
    lm = LoadedModel(model=model, processor=processor, arch=describe(model), model_id="tiny", source="")
    batch = bench._inputs(lm, 2.0)
    amask = audio_mask_from_ids(batch["input_ids"], lm.arch)
    gen = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    out = bench._eager_generate(lm, batch, gen)
    ref, shifted = bench._audio_attention(out, amask), bench._audio_attention(out, torch.roll(amask, 1, dims=1))
    assert ref.shape[:2] == (1, 3) and float((ref - shifted).abs().max()) > 1e-3
