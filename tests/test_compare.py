"""``auralens.compare.stage_compare``: base / base+steering / fine-tuned / fine-tuned+steering on
the same items, on micro (as both models; the "fine-tuned" one is a copy of its weights with a
``finetune.json``), with a vector fitted by ``steering.pipeline.stage_steer_fit``; the MMAU path
on a tiny MMAU-shaped JSON with wav files; resume; alpha = 0 is the unsteered model.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

COLUMNS = ["system", "metric", "group", "value", "ci_low", "ci_high", "n", "source", "note"]
FAST = dict(n_boot=100, max_new_tokens=72, batch_size=8, top_k=4, quiet=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(base lm, "fine-tuned" lm = micro's weights in a folder with a finetune.json)."""
    from interp.loading import load_model
    from interp.micro import BASE_DIR

    folder = tmp_path_factory.mktemp("ft") / "micro-ft"
    shutil.copytree(BASE_DIR, folder, ignore=shutil.ignore_patterns("training.json", "optimizer.*"))
    (folder / "finetune.json").write_text(json.dumps({"compute_flops": {"total": 1.5e12}}))
    base = load_model("micro", device="cpu", dtype="float32")
    return base, load_model(str(folder), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def vector_file(models, tmp_path_factory):
    from steering.pipeline import stage_steer_fit

    path = tmp_path_factory.mktemp("vec") / "vec.safetensors"
    stage_steer_fit(model="micro", data="cafe", n=4, layers=[models[0].arch.n_layers // 2], out_vector=path, seed=11,
                    lm=models[0])  # the middle layer: the fit default is now the last
    return path


@pytest.fixture(scope="module")
def compared(models, vector_file, tmp_path_factory):
    from auralens.compare import stage_compare

    base, ft = models
    out = tmp_path_factory.mktemp("cmp") / "run"
    summary = stage_compare(base="micro", finetuned=ft.source, vector=vector_file, data="cafe", n=6, out=out,
                            alpha=4.0, lm_base=base, lm_ft=ft, **FAST)
    return out, summary


def test_table_columns_systems_and_reported_rows(compared):
    from auralens.compare import REPORTED, SYSTEMS

    out, summary = compared
    df = pd.read_parquet(out / "compare.parquet")
    assert list(df.columns) == COLUMNS
    measured = df[df.source == "measured"]
    assert set(measured.system) == set(SYSTEMS)
    assert set(df.source) == {"measured", "reported"}
    rep = df[df.source == "reported"]
    assert len(rep) == len(REPORTED)
    assert not rep.system.isin(SYSTEMS).any()  # the papers' models, never our systems
    assert rep.note.str.contains("not measured").all()
    mmau = rep[(rep.metric == "accuracy") & (rep.group == "MMAU")].sort_values("value")
    assert mmau.value.tolist() == pytest.approx([0.6590, 0.7459])
    assert rep.note.str.contains("2603.02266").sum() == 4 and rep.note.str.contains("Interspeech 2026").sum() == 2
    for system in SYSTEMS:
        s = measured[measured.system == system]
        acc = s[(s.metric == "accuracy") & (s.group == "structured/all")]
        assert len(acc) == 1 and acc.n.iloc[0] == 6 and acc.ci_low.iloc[0] <= acc.value.iloc[0] <= acc.ci_high.iloc[0]
        tiers = s[(s.metric == "accuracy") & s.group.str.startswith("structured/tier=")]
        assert set(tiers.group) == {f"structured/tier={t}" for t in ("perception", "temporal", "multihop")}
        assert tiers.n.sum() == 6
        assert (s.metric == "claim_accuracy").any() and s.group.str.contains("step=").any()
        shares = s[s.metric == "error_share"]
        assert len(shares) == 3
        if shares.n.iloc[0] > 0:
            assert shares.value.sum() == pytest.approx(1.0)
        assert (s.metric == "yield_slope_specialists").sum() == 1 and (s.metric == "specialist_yield").any()
    assert summary["systems"]["base"]["structured"]["accuracy"]["n"] == 6


def test_costs(compared):
    out, _ = compared
    df = pd.read_parquet(out / "compare.parquet")
    flops = df[df.metric == "training_flops"].set_index("system").value
    assert flops["base"] == 0 and flops["base+steering"] == 0
    assert flops["finetuned"] == 1.5e12 and flops["finetuned+steering"] == 1.5e12
    fit = df[df.metric == "steering_fit_flops"]
    assert set(fit.system) == {"base+steering", "finetuned+steering"} and (fit.value > 0).all()
    assert fit.note.str.contains("4 fit items").all()


def test_numbers_equal_the_sub_runs(compared):
    """Accuracy and gains recomputed from each system's items.parquet."""
    out, _ = compared
    df = pd.read_parquet(out / "compare.parquet")
    items = {s: pd.read_parquet(out / d / "structured" / "items.parquet").set_index("item_id")["correct"].astype(float)
             for s, d in (("base", "base"), ("base+steering", "base_steering"), ("finetuned", "finetuned"),
                          ("finetuned+steering", "finetuned_steering"))}

    def value(system, metric):
        return df[(df.system == system) & (df.metric == metric) & (df.group == "structured/all")].value.iloc[0]

    for s, c in items.items():
        assert value(s, "accuracy") == pytest.approx(c.mean())
    assert value("base+steering", "gain_vs_unsteered") == pytest.approx((items["base+steering"] - items["base"]).mean())
    assert value("finetuned+steering", "gain_vs_unsteered") == pytest.approx(
        (items["finetuned+steering"] - items["finetuned"]).mean())
    assert value("finetuned", "gain_vs_base") == pytest.approx((items["finetuned"] - items["base"]).mean())


def test_figure_and_summary_files(compared):
    out, _ = compared
    html = (out / "compare.html").read_text()
    import re

    assert len(html) > 1_000_000  # plotly.js inlined
    assert not [t for t in re.findall(r"<script[^>]*>", html) if "src=" in t.lower()]  # no external script
    json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["command"] == "auralens compare" and m["config"]["alpha"] == 4.0


def test_resume_generates_nothing_new(compared, models, vector_file, monkeypatch):
    from auralens.compare import stage_compare

    out, _ = compared
    base, ft = models
    before = pd.read_parquet(out / "compare.parquet")

    def refuse(*a, **k):
        raise AssertionError("generate called on resume")

    monkeypatch.setattr(base.model, "generate", refuse)
    monkeypatch.setattr(ft.model, "generate", refuse)
    stage_compare(base="micro", finetuned=ft.source, vector=vector_file, data="cafe", n=6, out=out, alpha=4.0,
                  lm_base=base, lm_ft=ft, resume=True, **FAST)
    after = pd.read_parquet(out / "compare.parquet")
    pd.testing.assert_frame_equal(before, after)


def test_alpha_zero_is_the_unsteered_model_and_no_vector_skips_steering(models, vector_file, tmp_path):
    from auralens.compare import stage_compare

    base, _ = models
    s = stage_compare(base="micro", finetuned="micro", vector=vector_file, data="cafe", n=3, out=tmp_path / "a0",
                      alpha=0.0, lm_base=base, vector_ft=vector_file, **FAST)
    assert any("own vector" in n for n in s["notes"]) and s["alpha_ft"] == 0.0
    for sys_ in ("base+steering", "finetuned+steering"):
        assert s["systems"][sys_]["structured"]["gain_vs_unsteered"]["value"] == 0.0
    a = pd.read_parquet(tmp_path / "a0" / "base" / "structured" / "items.parquet")
    b = pd.read_parquet(tmp_path / "a0" / "base_steering" / "structured" / "items.parquet")
    assert a.prediction.tolist() == b.prediction.tolist()

    s = stage_compare(base="micro", finetuned="micro", vector=None, data="cafe", n=2, out=tmp_path / "nov",
                      lm_base=base, **FAST)
    assert set(s["systems"]) == {"base", "finetuned"} and any("no steering vector" in n for n in s["notes"])
    df = pd.read_parquet(tmp_path / "nov" / "compare.parquet")
    assert set(df[df.source == "measured"].system) == {"base", "finetuned"}
    assert df[df.metric == "training_flops"].value.isna().tolist() == [False, True]  # micro has no finetune.json


def test_mmau_json_with_audio_files(models, vector_file, tmp_path):
    """An MMAU-shaped JSON with ./test-mini-audios/*.wav: accuracy by task/category/difficulty,
    MMAU matching, and no claim or error-attribution rows (no scenes)."""
    import soundfile as sf

    from auralens.compare import stage_compare
    from interp.cafe.questions import make_items
    from interp.cafe.scenes import make_scene, synthesize

    (tmp_path / "test-mini-audios").mkdir()
    rows = []
    tasks = ("sound", "music", "speech")
    for i, it in enumerate(make_items(3, seed=9)):
        sf.write(tmp_path / "test-mini-audios" / f"q{i}.wav", synthesize(make_scene(it.scene["seed"])), 16_000)
        rows.append({"id": f"q{i}", "audio_id": f"./test-mini-audios/q{i}.wav", "question": it.question,
                     "choices": list(it.choices), "answer": it.answer, "task": tasks[i], "split": "test-mini",
                     "category": ["Reasoning"] if i == 2 else ("Reasoning" if i else "Information Extraction"),
                     "sub-category": "x", "difficulty": ("easy", "easy", "hard")[i]})
    data = tmp_path / "mmau-test-mini.json"
    data.write_text(json.dumps(rows))
    base, ft = models
    s = stage_compare(base="micro", finetuned=ft.source, vector=vector_file, data=str(data), n=3,
                      out=tmp_path / "run", lm_base=base, lm_ft=ft, **FAST)
    df = pd.read_parquet(tmp_path / "run" / "compare.parquet")
    m = df[df.source == "measured"]
    assert not m.metric.isin(["claim_accuracy", "error_share"]).any()
    groups = set(m[(m.system == "base") & (m.metric == "accuracy")].group)
    assert {"structured/task=sound", "structured/task=music", "structured/task=speech",
            "structured/difficulty=easy"} <= groups
    assert {"structured/tier=Reasoning", "structured/tier=Information Extraction"} <= groups
    assert any("no item has a cafe scene" in n for n in s["notes"])
    assert np.isfinite(m[m.metric == "yield_slope_specialists"].value).all()
