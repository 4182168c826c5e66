"""LoRA in the fine-tuning recipe (auralens.finetuning.lora): adapters on the decoder only, the base
weights untouched by SFT and GRPO, the merged folder equal to the peft model and loadable, the
full fine-tune unchanged at lora_r=0, bad options refused before any folder, the time budget."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

import auralens.finetuning.recipe as ft
from auralens.finetuning.config import FinetuneConfig
from auralens.finetuning.lora import apply_lora, resolve_targets
from auralens.interp.cafe.questions import make_items
from auralens.interp.errors import ConfigError
from auralens.interp.generation import model_inputs
from auralens.interp.loading import load_model
from auralens.testing.faults import crash_on_call

TINY = dict(sft_steps=2, sft_batch_size=4, lr=3e-2, grpo_steps=1, grpo_lr=1e-2, grpo_prompts=2, group_size=2,
            max_new_tokens=16, threads=1, save_every=0, max_minutes=5.0)


def _lm(folder):
    return load_model(str(folder), device="cpu", dtype="float32")


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits.float()


def _batch(lm):
    return model_inputs(lm, make_items(2, seed=5), "structured")


def _base_state(model) -> dict[str, torch.Tensor]:
    """Every non-adapter weight, under the base model's own names (peft's wrapping removed)."""
    out = {}
    for k, v in model.state_dict().items():
        if "lora_" in k:
            continue
        k = k.removeprefix("base_model.model.").replace(".base_layer.", ".")
        out[k] = v.detach().clone()
    return out


def test_bad_lora_options_are_one_line_errors_before_any_folder(tmp_path, small_micro_dir):
    for bad, match in ((dict(lora_r=-1), "lora_r"), (dict(lora_r=2.0), "lora_r"),
                       (dict(lora_r=4, lora_alpha=0), "lora_alpha"), (dict(lora_r=4, lora_alpha=1.5), "lora_alpha"),
                       (dict(lora_r=4, lora_dropout=1.0), "lora_dropout"), (dict(lora_r=4, lora_targets=""), "lora_targets"),
                       (dict(lora_r=4, lora_targets="q_proj,"), "lora_targets"),
                       (dict(lora_r=4, recipe="hyper"), "hyper")):
        with pytest.raises(ConfigError, match=match) as e:
            FinetuneConfig(**bad)
        assert "\n" not in str(e.value)
    out = tmp_path / "ft"
    cfg = FinetuneConfig(**TINY, lora_r=4, lora_targets="q_proj,no_such_proj")
    with pytest.raises(ConfigError, match="no_such_proj") as e:
        ft.finetune(str(small_micro_dir), out, cfg, progress=False)
    assert "\n" not in str(e.value) and "q_proj" in str(e.value)
    assert not out.exists() and not (tmp_path / ".ft.work").exists()


def test_auto_targets_are_the_decoders_linear_modules_only(small_micro_dir):
    lm = _lm(small_micro_dir)
    path = lm.arch.table.decoder_layers
    names = resolve_targets(lm.model, path, "auto")
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= leaves
    assert all(n.startswith(path + ".") for n in names)
    # the audio encoder has q_proj too: never adapted
    enc = [n for n, m in lm.model.named_modules() if n.endswith("q_proj") and not n.startswith(path + ".")]
    assert enc
    assert len(resolve_targets(lm.model, path, "q_proj,v_proj")) == 2 * lm.model.config.text_config.num_hidden_layers
    info = apply_lora(lm, r=4, alpha=8, dropout=0.0, targets="auto")
    trainable = [n for n, p in lm.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not [n for n in trainable if lm.arch.table.audio_tower in n]
    assert info["trainable_params"] == sum(p.numel() for p in lm.model.parameters() if p.requires_grad)


def test_lora_run_trains_only_adapters_and_the_merged_folder_equals_the_peft_model(tmp_path, small_micro_dir,
                                                                                 monkeypatch):
    """SFT and GRPO under LoRA: every base weight bit-identical before the merge, the adapters
    changed the outputs, and the final folder (merged) reloads with the peft model's logits."""
    base = _lm(small_micro_dir)
    batch = _batch(base)
    base_logits = _logits(base.model, batch)
    base_state = _base_state(base.model)
    seen = {}
    real_merge = ft.merge_lora

    def checking_merge(lm):
        seen["is_peft"] = ft.is_lora(lm.model)
        after = _base_state(lm.model)
        assert after.keys() == base_state.keys()
        seen["changed_base"] = [k for k in base_state if not torch.equal(after[k], base_state[k])]
        seen["peft_logits"] = _logits(lm.model, batch)
        real_merge(lm)

    monkeypatch.setattr(ft, "merge_lora", checking_merge)
    out = tmp_path / "lora"
    info = ft.finetune(str(small_micro_dir), out, FinetuneConfig(**TINY, lora_r=4, lora_alpha=8), progress=False)
    assert seen["is_peft"] and seen["changed_base"] == []
    assert info["steps"] == {"sft": 2, "grpo": 1}
    assert info["lora"]["r"] == 4 and "q_proj" in info["lora"]["targets"]
    assert (seen["peft_logits"] - base_logits).abs().max() > 1e-3  # the adapters changed the model
    stored = json.loads((out / "finetune.json").read_text())
    assert stored["config"]["lora_r"] == 4
    c = stored["compute_flops"]
    assert c["grpo_updates"] == pytest.approx(2 * c["grpo_sampling"])  # 4·N per trained token under LoRA
    assert not list(out.glob("adapter_*")) and (out / "model.safetensors").exists()
    merged = _lm(out)
    assert type(merged.model) is type(base.model)
    assert not [n for n, _ in merged.model.named_modules() if "lora_" in n or "base_layer" in n]
    torch.testing.assert_close(_logits(merged.model, batch), seen["peft_logits"], atol=1e-5, rtol=0)
    # the merged folder is an ordinary model folder: the eval stage runs on it by path
    from auralens.interp.evaluate import stage_eval

    res = stage_eval(model=str(out), data="cafe", n=2, formats=("structured",), silence=False, out=tmp_path / "eval",
                     max_new_tokens=8, batch_size=2, quiet=True)
    assert res["n"] == 2 and (tmp_path / "eval" / "items.parquet").exists()


def test_lora_r_0_is_the_full_fine_tune(tmp_path, small_micro_dir):
    """The default trains every weight (the decoder's and the audio encoder's), as before LoRA;
    its identity (what resume compares) has no LoRA keys, so earlier runs still resume."""
    cfg = FinetuneConfig(**{**TINY, "grpo_steps": 0})
    assert cfg.lora_r == 0
    old = {k: v for k, v in asdict(cfg).items() if not k.startswith("lora_")}
    assert ft._identity(asdict(cfg)) == ft._identity(old)
    assert ft._identity(asdict(cfg)) != ft._identity(asdict(FinetuneConfig(**{**TINY, "grpo_steps": 0}, lora_r=2)))
    base = _lm(small_micro_dir)
    out = tmp_path / "full"
    info = ft.finetune(str(small_micro_dir), out, cfg, progress=False)
    assert info["lora"] is None and info["steps"] == {"sft": 2, "grpo": 0}
    after = _lm(out).model.state_dict()
    before = base.model.state_dict()
    q = f"{base.arch.table.decoder_layers}.0.self_attn.q_proj.weight"
    assert not torch.equal(after[q], before[q])
    enc = [k for k in before if k.startswith(base.arch.table.audio_tower) and k.endswith("weight")
           and before[k].ndim == 2]
    assert enc and any(not torch.equal(after[k], before[k]) for k in enc)


def test_the_time_budget_stops_a_lora_run_with_a_loadable_folder(tmp_path, small_micro_dir):
    cfg = FinetuneConfig(**{**TINY, "sft_steps": 400, "grpo_steps": 50, "max_minutes": 0.02}, lora_r=2)
    out = tmp_path / "budget"
    info = ft.finetune(str(small_micro_dir), out, cfg, progress=False)
    assert info["stopped_early"] is True
    assert 1 <= info["steps"]["sft"] < 400 and info["steps"]["grpo"] == 0
    assert info["minutes"] < 1.0
    assert not (tmp_path / ".budget.work").exists()
    lm = _lm(out)
    assert torch.isfinite(_logits(lm.model, _batch(lm))).all()


def test_an_interrupted_lora_run_resumes_from_its_adapter_checkpoint(tmp_path, small_micro_dir, monkeypatch):
    """The SFT checkpoint under LoRA is the adapter; resume loads it (no retraining of SFT)."""
    cfg = FinetuneConfig(**{**TINY, "grpo_steps": 1}, lora_r=2)
    out = tmp_path / "res"
    real = ft._grpo_phase

    def crash(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(ft, "_grpo_phase", crash)
    with pytest.raises(RuntimeError, match="boom"):
        ft.finetune(str(small_micro_dir), out, cfg, progress=False)
    sft_dir = tmp_path / ".res.work" / "sft"
    assert (sft_dir / "adapter_model.safetensors").exists() and not (sft_dir / "model.safetensors").exists()
    monkeypatch.setattr(ft, "_grpo_phase", real)
    monkeypatch.setattr(ft, "run_sft", lambda *a, **k: pytest.fail("resume retrained SFT"))
    info = ft.finetune(str(small_micro_dir), out, cfg, progress=False, resume=True)
    assert info["steps"] == {"sft": 2, "grpo": 1} and (out / "model.safetensors").exists()


def test_a_lora_grpo_checkpoint_resumes_with_its_adapter_and_optimizer(tmp_path, small_micro_dir, monkeypatch):
    """GRPO under LoRA checkpoints the adapter and the adapters' AdamW moments (no base weights);
    a crash in step 2 resumes at step 2 from them."""
    cfg = FinetuneConfig(**{**TINY, "grpo_steps": 2, "save_every": 1}, lora_r=2)
    out = tmp_path / "g"
    real_update = ft.grpo_update
    crash_on_call(monkeypatch, ft, "grpo_update", call=2)
    with pytest.raises(RuntimeError, match="boom"):
        ft.finetune(str(small_micro_dir), out, cfg, progress=False)
    g = tmp_path / ".g.work" / "grpo"
    assert (g / "adapter_model.safetensors").exists() and (g / "optimizer.safetensors").exists()
    assert not (g / "model.safetensors").exists()
    from safetensors.torch import load_file

    n_adapter = len(load_file(str(g / "adapter_model.safetensors")))
    moments = load_file(str(g / "optimizer.safetensors"))
    assert 0 < len([k for k in moments if k.endswith("exp_avg")]) <= n_adapter
    monkeypatch.setattr(ft, "grpo_update", real_update)
    seen = []
    real_load = ft.load_adapter

    def counting_load(model, folder):
        seen.append(folder.name)
        real_load(model, folder)

    monkeypatch.setattr(ft, "load_adapter", counting_load)
    info = ft.finetune(str(small_micro_dir), out, cfg, progress=False, resume=True)
    assert seen == ["sft", "grpo"] and info["steps"] == {"sft": 2, "grpo": 2}
    assert [r["step"] for r in info["reward_curves"]] == [0, 1]


def test_grpo_stops_before_a_step_that_would_end_past_the_budget(tmp_path, small_micro_dir, monkeypatch):
    """With steps of 60 s and a 3-minute cap (0.5 reserved to save), GRPO runs two steps: a third
    would end at minute 3, past 2.5 (the check before a step used to let it start at minute 2)."""
    clock = {"t": 1_000_000.0}

    class FakeTime:
        @staticmethod
        def time():
            return clock["t"]

        strftime = staticmethod(__import__("time").strftime)

    def step(ctx, i, grpo):
        clock["t"] += 60.0
        return {"step": i, "total": 0.0, "answer": 0.0, "kl": 0.0}

    monkeypatch.setattr(ft, "time", FakeTime)
    monkeypatch.setattr(ft, "_grpo_step", step)
    cfg = FinetuneConfig(**{**TINY, "sft_steps": 0, "grpo_steps": 10, "max_minutes": 3.0}, lora_r=2)
    info = ft.finetune(str(small_micro_dir), tmp_path / "clock", cfg, progress=False)
    assert info["steps"]["grpo"] == 2 and info["stopped_early"] is True
    assert info["minutes"] <= 3.0 - 0.5
