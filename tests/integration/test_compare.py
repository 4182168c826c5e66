"""``auralens.compare.stage_compare``: the systems × organisms grid on the same items.

On micro as the base; the "MPAR²" arm is a copy of its weights with a ``finetune.json`` and the
"HyPeR" arm a copy with a ``pause.json`` (the PAUSE rule on an existing special token), so the
numbers can be checked against the sub-runs they come from: accuracy and paired gains recomputed
from each record run's items.parquet, pauses counted in the generated token ids, forwards per
item = generated tokens (+2 for per-input steering), costs from finetune.json; steering chosen on
dev inside the run (``steer="auto"``) equals the same setting read back from its steer eval run;
resume generates nothing; bad options fail before the folder exists.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

FAST = dict(n_boot=50, max_new_tokens=72, batch_size=8, top_k=4, quiet=True, n_cal=4, n_dev=4, betas=(0.0, 4.0))
DATA = "cafe-neutral:test,cafe-conflict:test"
PAUSE_ID = 6  # <|audio_bos|>: a special token micro never generates, skipped when decoding


def _copy_micro(dst, **json_files):
    from auralens.interp.micro import BASE_DIR

    shutil.copytree(BASE_DIR, dst, ignore=shutil.ignore_patterns("training.json", "optimizer.*"))
    for name, obj in json_files.items():
        (dst / name).write_text(json.dumps(obj))
    return str(dst)


@pytest.fixture(scope="module")
def arms(tmp_path_factory):
    root = tmp_path_factory.mktemp("arms")
    mpar2 = _copy_micro(root / "micro-ft", **{"finetune.json": {"compute_flops": {"total": 1.5e12}, "minutes": 3.5,
                                                                "timing": {"threads": 1}}})
    hyper = _copy_micro(root / "micro-hyper", **{
        "finetune.json": {"compute_flops": {"total": 2.5e12}, "minutes": 4.0},
        "pause.json": {"token_id": PAUSE_ID, "entropy_threshold": 0.05, "max_pauses": 2, "token": "<|audio_bos|>"}})
    return mpar2, hyper


@pytest.fixture(scope="module")
def models(arms):
    from auralens.interp.loading import load_model

    return {name: load_model(name, device="cpu", dtype="float32") for name in ("micro", *arms)}


@pytest.fixture(scope="module")
def compared(arms, models, tmp_path_factory):
    from auralens.compare import stage_compare

    out = tmp_path_factory.mktemp("cmp") / "run"
    summary = stage_compare(base="micro", mpar2=arms[0], hyper=arms[1], data=DATA, n=6, out=out,
                            base_format="structured", models=models, **FAST)
    return out, summary


def _items(out, system_dir, cond):
    return pd.read_parquet(out / "micro" / system_dir / cond.replace(":", "_") / "items.parquet")


def test_table_columns_systems_and_reported_rows(compared):
    from auralens.compare import REPORTED, SYSTEMS
    from auralens.interp.schemas import COMPARE

    out, summary = compared
    df = pd.read_parquet(out / "compare.parquet")
    assert tuple(df.columns) == COMPARE.names
    measured = df[df.source == "measured"]
    assert set(measured.system) == set(SYSTEMS) and set(measured.organism) == {"micro"}
    assert set(measured.condition) == {"cafe-neutral:test", "cafe-conflict:test", ""}
    rep = df[df.source == "reported"]
    assert len(rep) == len(REPORTED) and (rep.organism == "").all()
    assert not rep.system.isin(SYSTEMS).any()  # the papers' models, never our systems
    assert not rep.condition.isin(measured.condition).any()  # other benchmarks, never a cafe condition
    assert rep.note.str.contains("not measured").all()
    for system in SYSTEMS:
        for cond in ("cafe-neutral:test", "cafe-conflict:test"):
            s = measured[(measured.system == system) & (measured.condition == cond)]
            acc = s[(s.metric == "accuracy") & (s.group == "all")]
            assert len(acc) == 1 and acc.n.iloc[0] == 6 and acc.ci_low.iloc[0] <= acc.value.iloc[0] <= acc.ci_high.iloc[0]
            assert (s.format == "structured").all()
            shares = s[s.metric == "error_share"]
            assert set(shares.group) == {"perception", "reasoning", "unverifiable"}
            if shares.n.iloc[0] > 0:
                assert shares.value.sum() == pytest.approx(1.0)
            assert (s.metric == "claim_onset").sum() == 1
    assert summary["organisms"]["micro"]["systems"]["base"]["cafe-conflict:test"]["accuracy"]["n"] == 6
    assert summary["organisms"]["micro"]["formats"] == {s: "structured" for s in SYSTEMS}


def test_numbers_equal_the_sub_runs(compared):
    """Accuracy, paired gains and inference cost recomputed from each system's record run."""
    from safetensors.numpy import load_file

    out, summary = compared
    df = pd.read_parquet(out / "compare.parquet")
    dirs = {"base": "base", "base+steering": "base_steering", "mpar2": "mpar2", "mpar2+steering": "mpar2_steering",
            "hyper": "hyper"}
    steer = summary["organisms"]["micro"]["steering"]
    for cond in ("cafe-neutral:test", "cafe-conflict:test"):
        items = {s: _items(out, d, cond).set_index("item_id") for s, d in dirs.items()}

        def value(system, metric):
            r = df[(df.system == system) & (df.condition == cond) & (df.metric == metric) & (df.group == "all")]
            return r.value.iloc[0]

        for s, t in items.items():
            assert value(s, "accuracy") == pytest.approx(t.correct.astype(float).mean())
            extra = 1 if steer.get(s, {}).get("mode") == "per_input" else 0  # s(x): the silence pass (real one folded)
            assert value(s, "forwards_per_item") == pytest.approx(t.n_tokens.mean() + extra)
            assert value(s, "generated_tokens") == pytest.approx(t.n_tokens.mean())
        c = {s: t.correct.astype(float) for s, t in items.items()}
        assert value("mpar2", "gain_vs_base") == pytest.approx((c["mpar2"] - c["base"]).mean())
        assert value("hyper", "gain_vs_base") == pytest.approx((c["hyper"] - c["base"]).mean())
        assert value("base+steering", "gain_vs_unsteered") == pytest.approx((c["base+steering"] - c["base"]).mean())
        assert value("mpar2+steering", "gain_vs_unsteered") == pytest.approx((c["mpar2+steering"] - c["mpar2"]).mean())
        # pauses: counted in the generated ids of the HyPeR arm (only it has a PAUSE rule)
        hy = items["hyper"]
        counts = [int((load_file(str(out / "micro" / "hyper" / cond.replace(":", "_") / "yields" /
                                     f"{int(i):05d}.safetensors"))["token_ids"] == PAUSE_ID).sum())
                  for i in hy.item_index]
        assert value("hyper", "pauses_per_item") == pytest.approx(np.mean(counts))
        assert max(counts) <= 2  # the per-answer cap
        assert value("mpar2", "pauses_per_item") == 0.0
    assert sum(counts) > 0, "the PAUSE rule never fired (threshold 0.05 nats)"


def test_costs_and_steering_provenance(compared):
    out, summary = compared
    df = pd.read_parquet(out / "compare.parquet")
    cost = df[df.condition == ""]
    flops = cost[cost.metric == "training_flops"].set_index("system").value
    assert flops["base"] == 0 and flops["base+steering"] == 0
    assert flops["mpar2"] == 1.5e12 and flops["mpar2+steering"] == 1.5e12 and flops["hyper"] == 2.5e12
    minutes = cost[cost.metric == "training_minutes"].set_index("system").value
    assert minutes["mpar2"] == 3.5 and minutes["hyper"] == 4.0
    fit = cost[cost.metric == "steering_fit_flops"]
    assert set(fit.system) == {"base+steering", "mpar2+steering"} and (fit.value > 0).all()
    assert fit.note.str.contains("4 fit items").all()
    st = summary["organisms"]["micro"]["steering"]
    assert set(st) == {"base+steering", "mpar2+steering"}
    for s in st.values():  # chosen on dev by the steer eval run inside the compare folder
        assert s["mode"] in ("mean", "per_input") and s["beta"] in (0.0, 4.0)
        assert (out / "micro" / "steer").exists() and s["source"].endswith("eval")
    assert st["base+steering"]["fitted_on"] != st["mpar2+steering"]["fitted_on"]  # each model its own vector


def test_a_given_steer_run_reproduces_the_auto_choice(compared, models, arms, tmp_path):
    """The base+steering rows with steer=<the auto run's steer eval folder> equal those of auto."""
    from auralens.compare import stage_compare

    out, summary = compared
    src = summary["organisms"]["micro"]["steering"]["base+steering"]["source"]
    stage_compare(base="micro", mpar2="none", hyper="none", steer=src, data="cafe-conflict:test", n=6,
                  out=tmp_path / "given", base_format="structured", models=models, **FAST)
    a = _items(out, "base_steering", "cafe-conflict:test")
    b = _items(tmp_path / "given", "base_steering", "cafe-conflict:test")
    assert a.prediction.tolist() == b.prediction.tolist()


def test_figure_summary_and_resume(compared, arms, models, monkeypatch):
    import re

    from auralens.compare import stage_compare

    out, _ = compared
    html = (out / "compare.html").read_text()
    assert len(html) > 1_000_000 and not [t for t in re.findall(r"<script[^>]*>", html) if "src=" in t.lower()]
    json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["command"] == "auralens compare"
    before = pd.read_parquet(out / "compare.parquet")

    def refuse(*a, **k):
        raise AssertionError("generate called on resume")

    for lm in models.values():
        monkeypatch.setattr(lm.model, "generate", refuse)
    stage_compare(base="micro", mpar2=arms[0], hyper=arms[1], data=DATA, n=6, out=out, base_format="structured",
                  models=models, resume=True, **FAST)
    pd.testing.assert_frame_equal(before, pd.read_parquet(out / "compare.parquet"))


def test_bad_options_fail_before_the_folder(tmp_path, arms):
    from auralens.compare import stage_compare
    from auralens.interp.errors import AuralensError

    out = tmp_path / "never"
    with pytest.raises(AuralensError, match="mpar2.*one base model"):
        stage_compare(base="micro,micro-prior", mpar2=arms[0], out=out)
    with pytest.raises(AuralensError, match="steer run"):
        stage_compare(base="micro", steer=str(tmp_path / "nothing"), out=out)
    with pytest.raises(AuralensError, match="base_format"):
        stage_compare(base="micro", base_format="essay", out=out)
    with pytest.raises(AuralensError, match="data"):
        stage_compare(base="micro", data="cafe-neutral:test,cafe-neutral:test", out=out)
    with pytest.raises(AuralensError, match="cafe:x"):  # the steering's data, checked before anything is written
        stage_compare(base="micro", steer_data="cafe:x", n=2, out=out)
    with pytest.raises(AuralensError, match="steer_mpar2.*same"):  # was: mpar2+steering silently left out
        stage_compare(base="micro", steer="none", steer_mpar2="same", out=out)
    assert not out.exists()


def test_mmau_json_without_scenes(models, tmp_path):
    """An MMAU-shaped JSON split by item id: accuracy by task/difficulty, no claim or error rows,
    heads ranked on its calibration split; no arms, no steering (steer='none')."""
    import soundfile as sf

    from auralens.compare import stage_compare
    from auralens.interp.cafe.questions import make_items
    from auralens.interp.cafe.scenes import make_scene, synthesize

    (tmp_path / "test-mini-audios").mkdir()
    rows = []
    for i, it in enumerate(make_items(40, seed=9)):
        sf.write(tmp_path / "test-mini-audios" / f"q{i}.wav", synthesize(make_scene(it.scene["seed"])), 16_000)
        rows.append({"id": f"q{i}", "audio_id": f"./test-mini-audios/q{i}.wav", "question": it.question,
                     "choices": list(it.choices), "answer": it.answer, "task": ("sound", "music", "speech")[i % 3],
                     "split": "test-mini", "category": "Reasoning", "sub-category": "x",
                     "difficulty": ("easy", "hard")[i % 2]})
    data = tmp_path / "mmau-test-mini.json"
    data.write_text(json.dumps(rows))
    s = stage_compare(base="micro", mpar2="none", hyper="none", steer="none", data=f"{data}:test", n=6,
                      out=tmp_path / "run", base_format="structured", models=models, **FAST)
    df = pd.read_parquet(tmp_path / "run" / "compare.parquet")
    m = df[df.source == "measured"]
    assert set(m.system) == {"base"}
    assert not m.metric.isin(["claim_accuracy", "error_share", "claim_onset"]).any()
    assert {"task=sound", "task=music", "task=speech"} & set(m[m.metric == "accuracy"].group)
    assert np.isfinite(m[m.metric == "yield_slope_specialists"].value).all()
    assert list(s["organisms"]["micro"]["systems"]) == ["base"]


def test_resume_refuses_a_model_replaced_under_the_same_name(models, tmp_path):
    """A fine-tune retrained (weights) or given another PAUSE rule in the same folder is another run."""
    from auralens.compare import stage_compare
    from auralens.interp.errors import AuralensError

    arm = _copy_micro(tmp_path / "arm", **{"finetune.json": {"minutes": 1.0},
                                           "pause.json": {"token_id": PAUSE_ID, "entropy_threshold": 0.05,
                                                          "max_pauses": 2, "token": "<|audio_bos|>"}})
    out = tmp_path / "run"
    kw = dict(base="micro", mpar2="none", hyper=arm, steer="none", steer_mpar2="none", data="cafe-neutral:test", n=2,
              out=out, base_format="structured", models={"micro": models["micro"]}, **FAST)
    stage_compare(**kw)
    stage_compare(**kw, resume=True)  # unchanged: accepted
    pause = tmp_path / "arm" / "pause.json"
    original = pause.read_text()
    pause.write_text(original.replace("0.05", "0.5"))
    with pytest.raises(AuralensError, match="cannot resume"):
        stage_compare(**kw, resume=True)
    pause.write_text(original)
    w = tmp_path / "arm" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1  # a retrained weight
    w.write_bytes(bytes(data))
    with pytest.raises(AuralensError, match="cannot resume"):
        stage_compare(**kw, resume=True)


def test_a_missing_arm_fails_before_the_folder(models, tmp_path):
    """The run opens through interp.runs.open_run: every model is checked before the folder exists."""
    from auralens.compare import stage_compare
    from auralens.interp.errors import AuralensError

    out = tmp_path / "never"
    given = {"micro": models["micro"]}
    with pytest.raises(AuralensError, match="no-such-model"):
        stage_compare(base="micro", mpar2=str(tmp_path / "no-such-model"), hyper="none", steer="none",
                      steer_mpar2="none", data="cafe-neutral:test", n=2, out=out, models=given, **FAST)
    assert not out.exists() and list(given) == ["micro"]  # the caller's dict is not filled


def test_cell_metrics_and_summary():
    from auralens.compare_metrics import ERROR_TYPES, Rows, add_accuracy, add_errors, add_gain, finite, summarize
    from auralens.interp.schemas import COMPARE

    df = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "correct": [True, False, True, True],
                       "tier": ["1", "1", "2", "2"], "task": ["t", "t", "t", "t"],
                       "error_type": ["", "perception", "", ""]})
    ref = df.assign(correct=[False, False, True, False])
    r = Rows("o", "s", "c", "direct")
    add_accuracy(r, df, n_boot=20, seed=0)
    add_gain(r, "gain_vs_base", df, ref, "base", n_boot=20, seed=0)
    add_errors(r, df, n_boot=20, seed=0)
    got = {(x["metric"], x["group"]): x for x in r}
    assert got[("accuracy", "all")]["value"] == 0.75 and got[("accuracy", "all")]["n"] == 4
    assert got[("accuracy", "tier=1")]["value"] == 0.5 and got[("accuracy", "tier=2")]["value"] == 1.0
    assert ("accuracy", "task=t") not in got  # one value: does not split the items
    assert got[("gain_vs_base", "all")]["value"] == 0.5 and "vs base" in got[("gain_vs_base", "all")]["note"]
    assert got[("error_share", "perception")]["value"] == 1.0 and got[("error_share", "reasoning")]["value"] == 0.0
    assert all(x["organism"] == "o" and x["system"] == "s" and x["source"] == "measured" for x in r)
    s = finite(summarize(COMPARE.frame(list(r)), ["s"], ["c"]))
    assert s["s"]["c"]["accuracy"]["value"] == 0.75 and s["s"]["c"]["claim_onset"] is None
    assert set(s["s"]["c"]["error_shares"]) == set(ERROR_TYPES) and s["s"]["c"]["error_shares"]["perception"] == 1.0
    assert finite({"x": [float("nan"), 1.0]}) == {"x": [None, 1.0]}


# ------------------------------------------------------------------ arms trained in the run (LoRA)
TRAIN = dict(n_boot=20, max_new_tokens=16, batch_size=4, top_k=2, quiet=True, n_cal=2, n_dev=2, betas=(0.0, 4.0),
             data="cafe-conflict:test", n=2, base_format="structured", hyper="none", steer_mpar2="auto",
             mpar2="train", sft="train", lora_r=2, ft_sft_steps=1, ft_grpo_steps=1, ft_threads=1, ft_minutes=5.0,
             ft_sft_batch_size=2, ft_grpo_prompts=2, ft_group_size=2)


def test_arms_trained_here_with_lora_sit_beside_steering_with_their_costs(small_micro_dir, tmp_path, monkeypatch):
    """--mpar2 train --sft train --lora-r 2: both arms fine-tuned inside the run folder (LoRA,
    merged), answered on the same items as base and base+steering, with their training minutes
    and the steering's fit + dev sweep minutes in the cost rows; resume trains nothing again."""
    from auralens.compare import stage_compare

    out = tmp_path / "run"
    summary = stage_compare(base=str(small_micro_dir), out=out, **TRAIN)
    org = next(iter(summary["organisms"].values()))
    assert set(org["systems"]) == {"base", "base+steering", "mpar2", "mpar2+steering", "sft"}
    arms = org["arms"]
    for arm in ("mpar2", "sft"):
        info = json.loads((Path(arms[arm]) / "finetune.json").read_text())
        assert info["lora"]["r"] == 2 and info["config"]["lora_r"] == 2
        assert (info["config"]["sft_batch_size"], info["config"]["grpo_prompts"], info["config"]["group_size"]) == (2, 2, 2)
        assert info["steps"] == {"sft": 1, "grpo": 1 if arm == "mpar2" else 0}
        assert arms[arm].startswith(str(out))
    df = pd.read_parquet(out / "compare.parquet")
    m = df[df.source == "measured"]
    acc = m[(m.metric == "accuracy") & (m.group == "all")]
    assert set(acc.system) == {"base", "base+steering", "mpar2", "mpar2+steering", "sft"} and (acc.n == 2).all()
    cost = m[m.condition == ""].set_index(["system", "metric"]).value
    for arm in ("mpar2", "sft"):
        assert cost[(arm, "training_minutes")] > 0 and cost[(arm, "training_flops")] > 0
    assert cost[("base+steering", "steering_minutes")] > 0 and ("base", "steering_minutes") not in cost.index
    assert cost[("mpar2+steering", "steering_minutes")] > 0  # fitted and chosen on the merged LoRA arm
    assert org["steering"]["mpar2+steering"]["fitted_on"] == arms["mpar2"]
    notes = m[(m.condition == "") & (m.metric == "training_flops")].set_index("system").note
    assert notes["mpar2"].count("LoRA r=2") == 1
    # the same items: every system's record run holds the same item ids
    ids = {s: set(pd.read_parquet(next((out).glob(f"*/{d}/cafe-conflict_test/items.parquet"))).item_id)
           for s, d in (("base", "base"), ("mpar2", "mpar2"), ("sft", "sft"))}
    assert ids["base"] == ids["mpar2"] == ids["sft"]
    before = df

    import auralens.compare_systems as cs

    real = cs.finetune

    def finished_only(base, folder, cfg, *, resume, progress):
        assert resume and (folder / "finetune.json").exists(), "resume trained again"
        return real(base, folder, cfg, resume=resume, progress=progress)

    monkeypatch.setattr(cs, "finetune", finished_only)
    stage_compare(base=str(small_micro_dir), out=out, resume=True, **TRAIN)
    pd.testing.assert_frame_equal(before, pd.read_parquet(out / "compare.parquet"))


def test_trained_arm_options_fail_before_the_folder(tmp_path, monkeypatch):
    from auralens.compare import CompareConfig, stage_compare
    from auralens.interp import distributed
    from auralens.interp.errors import ConfigError

    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="--mpar2 train: FinetuneConfig.lora_r") as e:
        stage_compare(base="micro", mpar2="train", lora_r=-1, out=out)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="--sft train: FinetuneConfig.max_minutes"):
        stage_compare(base="micro", sft="train", ft_minutes=0, out=out)
    with pytest.raises(ConfigError, match="hyper: 'train'"):
        stage_compare(base="micro", hyper="train", out=out)
    with monkeypatch.context() as m:  # a multi-process launch would train once per rank into one folder
        m.setattr(distributed, "active", lambda: True)
        m.setattr(distributed, "world", lambda: 2)
        with pytest.raises(ConfigError, match="--sft train: fine-tunes in one process"):
            stage_compare(base="micro", sft="train", out=out)
    assert not out.exists()
    # micro's defaults: no arm trained here, no LoRA, the manifest config as before these options
    cfg = CompareConfig()
    assert cfg.trained_arms == () and cfg.lora_r == 0 and cfg.sft == "none"
    assert not {"sft", "lora_r", "ft_minutes", "ft_sft_steps", "ft_grpo_steps", "ft_threads", "ft_sft_batch_size",
                "ft_grpo_prompts", "ft_group_size"} & set(cfg.manifest()["config"])
