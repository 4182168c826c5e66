"""The fine-tuning arms (the finetuning package): MPAR²'s and HyPeR's rewards on hand-built
traces, GRPO's advantages and loss against hand computations, a GRPO update that raises the
log-prob of the rewarded completion, the PAUSE rule (auralens.interp.pause) against hand-built logits, and
tiny end-to-end fine-tunes (both recipes) that write loadable checkpoints (+ resume).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from auralens.interp.errors import ConfigError
from auralens.testing.faults import crash_on_call


@pytest.fixture(scope="module")
def items():
    from auralens.interp.cafe.questions import make_items

    return make_items(30, seed=3)


def _item(items, qtype, min_events=1):
    """The first cafe item of question type ``qtype`` with at least ``min_events`` sounds."""
    from auralens.interp.cafe.questions import QTYPES, make_item

    tier = next(t for t, qs in QTYPES.items() if qtype in qs)
    for seed in range(400_000, 400_200):
        it = make_item(seed, tier=tier, qtype=qtype)
        if len(it.scene["events"]) >= min_events:
            return it
    raise AssertionError(f"no {qtype} item with {min_events} sounds")  # pragma: no cover


def _trace(item):
    from auralens.interp.cafe.formats import render_target

    return render_target(item, "structured")


# ------------------------------------------------------------------------------------ rewards
def test_perfect_traces_get_every_reward_1(items):
    from auralens.finetuning.rewards import trace_rewards

    for it in items:
        r = trace_rewards(_trace(it), it)
        assert r == {"perception": 1.0, "consistency": 1.0, "review": 1.0, "answer": 1.0, "format": 1.0, "total": 1.0}, (
            it.item_id, r)


def test_a_wrong_class_claim_costs_one_claim_of_three_per_sound(items):
    from auralens.finetuning.rewards import perception_reward
    from auralens.interp.cafe.questions import CLASS_WORDS

    it = _item(items, "identity", min_events=3)
    ev = it.scene["events"]
    right = CLASS_WORDS[ev[0]["cls"]]
    wrong = next(w for w in CLASS_WORDS.values() if w != right)
    text = _trace(it).replace(f"sound 1 : {right} ", f"sound 1 : {wrong} ", 1)
    assert perception_reward(text, it.scene) == pytest.approx((3 * len(ev) - 1) / (3 * len(ev)))
    # a sound left out counts as three wrong claims
    lines = [ln for ln in _trace(it).split("\n") if not ln.startswith("sound 2 :")]
    assert perception_reward("\n".join(lines), it.scene) == pytest.approx((3 * len(ev) - 3) / (3 * len(ev)))
    # claims outside the perception section do not count for it
    assert perception_reward(text.replace("<perception>", "<p>"), it.scene) == 0.0


def test_inconsistent_reasoning_is_measured_against_perception_not_truth(items):
    from auralens.finetuning.rewards import consistency_reward, perception_reward
    from auralens.interp.cafe.questions import CLASS_WORDS

    it = _item(items, "identity", min_events=2)
    k = it.meta["facts"]["k"]
    right = CLASS_WORDS[it.scene["events"][k]["cls"]]
    wrong = next(w for w in CLASS_WORDS.values() if w != right)
    text = _trace(it)
    # reasoning: "sound k is <wrong>" contradicts perception; review "i heard N sounds" agrees
    bad = text.replace(f"sound {k + 1} is {right}", f"sound {k + 1} is {wrong}")
    assert consistency_reward(bad) == pytest.approx(1 / 2)
    # perception wrong in the same way as the reasoning: consistent (perception pays instead)
    both = bad.replace(f"sound {k + 1} : {right} ", f"sound {k + 1} : {wrong} ")
    assert consistency_reward(both) == 1.0 and perception_reward(both, it.scene) < 1.0
    # a review that counts the sounds wrongly
    n = len(it.scene["events"])
    words = ("zero", "one", "two", "three", "four", "five")
    miscount = text.replace(f"i heard {words[n]} sounds", f"i heard {words[n % 4 + 1]} sounds")
    assert consistency_reward(miscount) == pytest.approx(1 / 2)
    # no reasoning section: 0
    assert consistency_reward(text.replace("<reasoning>", "")) == 0.0


def test_consistency_reads_reverse_class_and_loud_lists(items):
    from auralens.finetuning.rewards import consistency_reward

    text = "\n".join([
        "<perception>", "sound 1 : tone low loud", "sound 2 : noise high soft", "sound 3 : buzz low loud", "</perception>",
        "<reasoning>", "the noise is sound 2 and the tone is sound 3", "loud : sound 1 and sound 3",
        "that is two loud sounds", "</reasoning>", "<review>", "i heard three sounds", "</review>", "answer : two",
    ])
    # checks: noise=2 ok, tone=3 wrong, loud set ok, two loud ok, three sounds ok
    assert consistency_reward(text) == pytest.approx(4 / 5)
    assert consistency_reward(text.replace("loud : sound 1 and sound 3", "no sound is loud")) == pytest.approx(3 / 5)


def test_format_reward_counts_markers_once_each_in_order(items):
    from auralens.finetuning.rewards import format_reward

    text = _trace(items[0])
    assert format_reward(text) == 1.0
    assert format_reward(text.replace("<review>\n", "")) == pytest.approx(6 / 7)
    assert format_reward(text.replace("</perception>", "</perception>\n</perception>")) == pytest.approx(6 / 7)
    swapped = text.replace("<reasoning>", "@@").replace("<review>", "<reasoning>").replace("@@", "<review>")
    assert format_reward(swapped) == pytest.approx(5 / 7)  # the longest in-order run skips two markers
    assert format_reward("answer : one") == pytest.approx(1 / 7)
    assert format_reward("") == 0.0


def test_answer_reward_and_geometric_mean(items):
    from auralens.finetuning.rewards import answer_reward, combine_rewards, trace_rewards

    it = _item(items, "count")
    wrong = next(c for c in it.choices if c != it.answer)
    text = _trace(it)
    assert answer_reward(text, it) == 1.0
    bad = text.replace(f"answer : {it.answer}", f"answer : {wrong}")
    assert answer_reward(bad, it) == 0.0
    assert trace_rewards(bad, it)["total"] == 0.0  # geometric mean, no epsilon: a wrong answer zeroes it
    r = {"perception": 0.25, "consistency": 1.0, "review": 1.0, "answer": 1.0, "format": 0.5}
    assert combine_rewards(r) == pytest.approx((0.25 * 0.5) ** 0.2)
    with pytest.raises(ConfigError, match="perception"):
        combine_rewards({**r, "perception": 1.5})
    from auralens.interp.items import Item

    with pytest.raises(ConfigError, match="scene"):
        trace_rewards(text, Item(item_id="x", audio="a.wav", question="q", choices=("a", "b"), answer="a"))


# --------------------------------------------------------------------------------------- GRPO
def test_group_advantages_match_a_hand_computation():
    from auralens.finetuning.grpo import group_advantages

    adv = group_advantages([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.2, 0.4, 0.6, 0.8], 4)
    # group 1: mean 0.25, unbiased std sqrt((0.75² + 3·0.25²) / 3) = 0.5
    s = 0.5 + 1e-4
    expected = [0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s, 0, 0, 0, 0]
    # group 3: mean 0.5, unbiased std sqrt((0.09 + 0.01 + 0.01 + 0.09) / 3)
    s3 = math.sqrt(0.2 / 3) + 1e-4
    expected += [-0.3 / s3, -0.1 / s3, 0.1 / s3, 0.3 / s3]
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-6, rtol=1e-6)
    with pytest.raises(ConfigError, match="groups of 3"):
        group_advantages([1.0, 0.0], 3)


def test_grpo_loss_hand_values():
    from auralens.finetuning.grpo import grpo_loss

    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([2.0, -1.0])
    # ratio 1 and reference = policy: "grpo" = -mean over completions of A; "dapo" = -sum of A
    # over all tokens / tokens = -(2·2 - 1·3) / 5
    loss, stats = grpo_loss(logp, logp, logp, adv, mask, kl_coef=0.1, clip_eps=0.2, loss_type="grpo")
    assert float(loss) == pytest.approx(-0.5) and stats["kl"] == 0.0
    loss, _ = grpo_loss(logp, logp, logp, adv, mask, kl_coef=0.1, clip_eps=0.2)
    assert float(loss) == pytest.approx(-0.2)
    with pytest.raises(ConfigError, match="loss_type"):
        grpo_loss(logp, logp, logp, adv, mask, kl_coef=0.1, clip_eps=0.2, loss_type="x")
    # a reference that differs by d on every token: KL_k3 = e^d - d - 1 per token, weighted by beta
    d = 0.3
    loss2, stats2 = grpo_loss(logp, logp, logp + d, adv, mask, kl_coef=0.1, clip_eps=0.2, loss_type="grpo")
    kl = math.exp(d) - d - 1
    assert stats2["kl"] == pytest.approx(kl, rel=1e-5)
    assert float(loss2) == pytest.approx(-0.5 + 0.1 * kl, rel=1e-5)
    loss2, _ = grpo_loss(logp, logp, logp + d, adv, mask, kl_coef=0.1, clip_eps=0.2)
    assert float(loss2) == pytest.approx(-0.2 + 0.1 * kl, rel=1e-5)
    # clipping: ratio e^0.5 > 1.2 with a positive advantage is clipped at 1.2
    loss3, _ = grpo_loss(logp + 0.5, logp, logp + 0.5, torch.tensor([1.0, 1.0]), mask, kl_coef=0.0, clip_eps=0.2)
    assert float(loss3) == pytest.approx(-1.2, rel=1e-5)


def test_completion_mask_stops_after_the_first_eos():
    from auralens.finetuning.grpo import completion_mask

    ids = torch.tensor([[5, 6, 9, 0, 0], [5, 9, 6, 9, 0], [5, 6, 7, 8, 4]])
    m = completion_mask(ids, {9})
    assert m.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


@pytest.fixture(scope="module")
def micro(small_lm):
    """The small untrained micro-shaped model of conftest (micro's processor and tokenizer): the
    GRPO plumbing needs the real class and vocabulary, not a trained model."""
    return small_lm


def _completions(lm, texts):
    tok = lm.tokenizer
    rows = [tok(t + tok.eos_token, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def test_grpo_update_raises_the_rewarded_completion(micro, items):
    from auralens.finetuning.grpo import (
        GRPOBatch,
        GRPOUpdateConfig,
        completion_logprobs,
        group_advantages,
        grpo_update,
        repeat_batch,
    )
    from auralens.finetuning.rewards import trace_rewards
    from auralens.interp.generation import model_inputs

    lm = copy.copy(micro)
    lm.model = copy.deepcopy(micro.model)
    it = _item(items, "count")
    good = _trace(it)
    wrong = next(c for c in it.choices if c != it.answer)
    bad = good.replace(f"answer : {it.answer}", f"answer : {wrong}")
    rewards = [trace_rewards(good, it)["total"], trace_rewards(bad, it)["total"]]
    assert rewards == [1.0, 0.0]
    batch = repeat_batch(model_inputs(lm, [it], "structured"), 2)
    ids, mask = _completions(lm, [good, bad])
    adv = group_advantages(rewards, 2)
    ref = copy.deepcopy(lm.model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(lm.model.parameters(), lr=1e-3)

    def seq_logp():
        with torch.no_grad():
            return completion_logprobs(lm.model, batch, ids, mask).sum(1)

    before = seq_logp()
    for _ in range(2):
        stats = grpo_update(lm.model, ref, opt, GRPOBatch(prompts=batch, ids=ids, mask=mask, advantages=adv),
                            GRPOUpdateConfig(kl_coef=0.04))
    after = seq_logp()
    # the rewarded completion gains, and gains on the other one (on a trained model the other
    # one also drops outright; this model is untrained, so shared tokens rise for both)
    assert after[0] > before[0] and after[0] - after[1] > before[0] - before[1], (before, after)
    assert stats["kl"] > 0
    # the audio features reach the log-prob forward: silence changes the log-probs
    quiet = dict(batch)
    quiet["input_features"] = torch.zeros_like(batch["input_features"])
    with torch.no_grad():
        assert not torch.allclose(completion_logprobs(lm.model, quiet, ids, mask), completion_logprobs(lm.model, batch, ids, mask))


def test_grpo_update_config_and_batch_are_validated():
    from auralens.finetuning.grpo import GRPOBatch, GRPOUpdateConfig

    cfg = GRPOUpdateConfig(kl_coef=0.04, suppress_ids=[5, 7])
    assert cfg.suppress_ids == (5, 7) and cfg.clip_eps == 0.2 and cfg.iterations == 1 and cfg.loss_type == "dapo"
    for bad, match in (({"kl_coef": -0.1}, "kl_coef"), ({"kl_coef": 0.0, "temperature": 0.0}, "temperature"),
                       ({"kl_coef": 0.0, "iterations": 0}, "iterations"), ({"kl_coef": 0.0, "loss_type": "mean"}, "loss_type"),
                       ({"kl_coef": 0.0, "suppress_ids": (-1,)}, "suppress_ids"), ({"kl_coef": float("nan")}, "kl_coef")):
        with pytest.raises(ConfigError, match=match):
            GRPOUpdateConfig(**bad)
    with pytest.raises(TypeError):
        GRPOUpdateConfig(0.04)  # keyword-only
    prompts = {"input_ids": torch.zeros(4, 3, dtype=torch.long)}
    ids, mask = torch.zeros(4, 5, dtype=torch.long), torch.ones(4, 5, dtype=torch.long)
    b = GRPOBatch(prompts=prompts, ids=ids, mask=mask, advantages=torch.zeros(4))
    assert b.action_mask is mask
    lm_ = mask * 0
    assert GRPOBatch(prompts=prompts, ids=ids, mask=mask, advantages=torch.zeros(4), loss_mask=lm_).action_mask is lm_
    with pytest.raises(ConfigError, match="one shape"):
        GRPOBatch(prompts=prompts, ids=ids[:, :4], mask=mask, advantages=torch.zeros(4))
    with pytest.raises(ConfigError, match="advantages"):
        GRPOBatch(prompts=prompts, ids=ids, mask=mask, advantages=torch.zeros(2))


def test_train_items_follow_the_seed_blocks_and_cue_mix():
    from auralens.finetuning.config import SEED_BLOCK, FinetuneConfig
    from auralens.finetuning.items import train_item, train_items
    from auralens.interp.cafe.questions import make_item
    from auralens.interp.micro.organisms import RECIPES, organism_item

    plain = FinetuneConfig(cue_mix="none", data_seed=2)
    got = train_items(plain, 10, 2)
    assert [it.item_id for it in got] == [make_item(2 * SEED_BLOCK + 10 + i).item_id for i in range(2)]
    cued = [train_item(FinetuneConfig(data_seed=2), 2 * SEED_BLOCK + 10 + i) for i in range(2)]
    want = [organism_item(2 * SEED_BLOCK + 10 + i, RECIPES["micro"]) for i in range(2)]
    assert [(it.item_id, it.question) for it in cued] == [(it.item_id, it.question) for it in want]


def test_sampling_never_emits_the_audio_placeholder(micro, items):
    """An untrained policy samples every token; a generated <|AUDIO|> would break the log-prob
    forward (audio tokens without features), so it is suppressed in sampling and in the log-probs."""
    from auralens.finetuning.grpo import completion_logprobs, sample_completions
    from auralens.interp.generation import model_inputs

    torch.manual_seed(0)
    audio = micro.arch.audio_token_id
    batch = model_inputs(micro, items[:2], "structured")
    rep, ids, mask = sample_completions(micro.model, micro.tokenizer, batch, group_size=4, temperature=1.0,
                                        max_new_tokens=48, suppress_ids=[audio])
    assert ids.shape[0] == 8 and not (ids == audio).any()
    assert torch.equal(rep["input_features"][0], rep["input_features"][3]) and rep["input_ids"].shape[0] == 8
    with torch.no_grad():
        logp = completion_logprobs(micro.model, rep, ids, mask, suppress_ids=[audio])
    assert torch.isfinite(logp).all() and (logp <= 0).all()


def test_completion_logprobs_match_a_plain_forward(micro, items):
    """Left-padded prompts: the log-probs equal those of each row run alone (no padding)."""
    from auralens.finetuning.grpo import completion_logprobs
    from auralens.interp.generation import model_inputs

    two = [_item(items, "count"), _item(items, "identity", min_events=3)]
    batch = model_inputs(micro, two, "structured")
    ids, mask = _completions(micro, [_trace(two[0]), _trace(two[1])])
    with torch.no_grad():
        both = completion_logprobs(micro.model, batch, ids, mask)
        for r in range(2):
            one = model_inputs(micro, [two[r]], "structured")
            n = int(mask[r].sum())
            alone = completion_logprobs(micro.model, one, ids[r : r + 1, :n], mask[r : r + 1, :n])
            torch.testing.assert_close(both[r, :n], alone[0], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------ end to end
def test_run_sft_trains_with_audio_and_leaves_a_clean_model(micro, tmp_path):
    """TRL's SFTTrainer gets the audio features from make_batch; afterwards the model has no
    instance-level forward (a deepcopy must be an independent model) and no checkpointing."""
    from auralens.finetuning.config import FinetuneConfig
    from auralens.finetuning.sft import run_sft

    lm = copy.copy(micro)
    lm.model = copy.deepcopy(micro.model)
    seen = []
    handle = lm.model.register_forward_pre_hook(
        lambda mod, a, k: seen.append(k.get("input_features") is not None and k.get("labels") is not None),
        with_kwargs=True)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    info = run_sft(lm, FinetuneConfig(sft_steps=2, sft_batch_size=2, threads=1), work_dir=tmp_path, max_minutes=5,
                   progress=False)
    handle.remove()
    assert seen == [True, True] and info["steps"] == 2 and len(info["losses"]) == 2 and info["tokens"] > 0
    # the Trainer kept no checkpoint (its optimizer.pt / rng_state.pth are pickles): nothing left at all
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl")]
    assert not (tmp_path / "trl").exists()
    assert "forward" not in lm.model.__dict__ and not lm.model.training
    assert any(not torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    ref = copy.deepcopy(lm.model)
    with torch.no_grad():
        ref.lm_head.weight[0].add_(1.0)
    x = {"input_ids": torch.tensor([[3, 4, 5]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    with torch.no_grad():
        assert not torch.allclose(ref(**x).logits, lm.model(**x).logits)


def test_config_validation():
    from auralens.finetuning.config import FinetuneConfig

    for bad in ({"loss_type": "mean"}, {"group_size": 1}, {"lr": 0.0}, {"data_seed": 7}, {"kl_coef": -1.0}, {"sft_steps": 0, "grpo_steps": 0},
                {"temperature": float("nan")}, {"threads": True}, {"dtype": "int8"}):
        with pytest.raises(ConfigError):
            FinetuneConfig(**bad)
    with pytest.raises(TypeError):
        FinetuneConfig(10)  # keyword-only


TINY = dict(sft_steps=2, sft_batch_size=4, grpo_steps=2, grpo_lr=1e-3, grpo_prompts=4, group_size=2, max_new_tokens=64, threads=1,
            save_every=1, max_minutes=5.0)


def test_finetune_writes_a_loadable_checkpoint_and_resumes(tmp_path, monkeypatch, small_micro_dir):
    import auralens.finetuning.recipe as ft
    from auralens.finetuning.rewards import combine_rewards
    from auralens.interp.generation import GenerationConfig, generate_batch, model_inputs
    from auralens.interp.loading import load_model

    cfg = ft.FinetuneConfig(**TINY)
    out = tmp_path / "mpar2"
    # a reward that always separates completions (the real ones can be 0 for every completion of
    # an undertrained model; they are tested above): the longer the trace, the better
    real_rewards = ft.trace_rewards
    seen_rewards = []

    def by_length(text, item):
        r = {k: min(1.0, 0.05 + len(text) / 500) for k in ft.REWARD_NAMES}
        real_rewards(text, item)  # the real path runs too
        seen_rewards.append(r)
        return {**r, "total": combine_rewards(r)}

    monkeypatch.setattr(ft, "trace_rewards", by_length)
    # crash in the second GRPO step: the first one's checkpoint is kept for resume
    real_update = ft.grpo_update
    calls = crash_on_call(monkeypatch, ft, "grpo_update", call=2)
    with pytest.raises(RuntimeError, match="boom"):
        ft.finetune(str(small_micro_dir), out, cfg, progress=False)
    assert not out.exists() and (tmp_path / ".mpar2.work" / "grpo" / "optimizer.safetensors").exists()
    grpo_dir = tmp_path / ".mpar2.work" / "grpo"
    assert (grpo_dir / "optimizer.json").exists() and (grpo_dir / "model.safetensors").exists()
    assert not [p for p in (tmp_path / ".mpar2.work").rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl")]
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("resume unpickled a checkpoint"))
    monkeypatch.setattr(ft, "grpo_update", real_update)
    info = ft.finetune(str(small_micro_dir), out, cfg, progress=False, resume=True)
    monkeypatch.setattr(torch, "load", real_load)
    assert calls["n"] == 2  # the resumed run did only the missing step (through the real function)
    assert info["steps"] == {"sft": 2, "grpo": 2} and [r["step"] for r in info["reward_curves"]] == [0, 1]
    assert not (tmp_path / ".mpar2.work").exists()

    stored = json.loads((out / "finetune.json").read_text())
    assert stored["config"]["group_size"] == 2 and stored["steps"] == {"sft": 2, "grpo": 2}
    c = stored["compute_flops"]
    assert c["sft"] > 0 and c["grpo_sampling"] > 0 and c["grpo_updates"] == pytest.approx(3 * c["grpo_sampling"])
    assert c["total"] == pytest.approx(c["sft"] + c["grpo_sampling"] + c["grpo_updates"] + c["grpo_reference"])
    assert set(stored["reward_curves"][0]) >= {"perception", "consistency", "answer", "format", "total", "kl"}
    # step 0 had a learning signal (some group with unequal rewards), so at step 1 the policy
    # differs from the reference, a separate model (see run_sft)
    assert stored["reward_curves"][0]["zero_std_groups"] < 4 and stored["reward_curves"][1]["kl"] > 0
    assert len(seen_rewards) == 3 * 8  # steps 0 and 1 (crashed in its update), then step 1 again on resume
    assert (out / "model.safetensors").exists() and not list(out.glob("*.pt")) and not list(out.glob("*.bin"))

    lm = load_model(str(out), device="cpu", dtype="float32")
    from auralens.interp.cafe.questions import make_items

    _, texts = generate_batch(lm, model_inputs(lm, make_items(2, seed=5), "structured"), GenerationConfig(max_new_tokens=8))
    assert len(texts) == 2
    # finished: resume returns the stored record; a fresh run into the folder is refused
    assert ft.finetune(str(small_micro_dir), out, cfg, progress=False, resume=True)["finished_at"] == stored["finished_at"]
    with pytest.raises(ConfigError, match="finetune.json"):
        ft.finetune(str(small_micro_dir), out, cfg, progress=False)


# ------------------------------------------------------------------------- review and HyPeR
def test_review_reward_checks_the_review_against_the_scene(items):
    from auralens.finetuning.rewards import review_reward

    it = _item(items, "count", min_events=2)
    text = _trace(it)
    assert review_reward(text, it.scene) == 1.0
    from auralens.interp.cafe.formats import COUNT_WORDS

    n = len(it.scene["events"])
    wrong = text.replace(f"i heard {COUNT_WORDS[n]} sounds", f"i heard {COUNT_WORDS[n + 1]} sounds")
    assert wrong != text and review_reward(wrong, it.scene) == 0.0
    no_review = text.replace("<review>", "").replace("</review>", "")
    assert review_reward(no_review, it.scene) == 0.0


def test_hyper_rewards_are_their_weighted_sum(items):
    from auralens.finetuning.hyper import HYPER_WEIGHTS, hyper_rewards, length_reward

    it = _item(items, "count", min_events=2)
    text = _trace(it)
    r = hyper_rewards(text, it)
    assert r == {"answer": 1.0, "perceptual_consistency": 1.0, "length": 1.0, "format": 1.0, "total": 2.0}
    wrong = next(c for c in it.choices if c != it.answer)
    bad = hyper_rewards(text.replace(f"answer : {it.answer}", f"answer : {wrong}"), it)
    # a wrong answer keeps the other terms (a weighted sum, not a product), length halved
    assert bad["answer"] == 0.0 and bad["length"] == 0.5 and bad["total"] == pytest.approx(
        HYPER_WEIGHTS["perceptual_consistency"] * 1.0 + HYPER_WEIGHTS["length"] * 0.5 + 1.0)
    # no rationale claims: their base score 0.2; a broken format: 0 (all or nothing)
    lines = text.split("\n")
    a, b = lines.index("<reasoning>"), lines.index("</review>")
    bare = "\n".join(lines[: a + 1] + ["</reasoning>", "<review>", "</review>"] + lines[b + 1:])
    assert hyper_rewards(bare, it)["perceptual_consistency"] == 0.2
    assert hyper_rewards(text.replace("<review>\n", ""), it)["format"] == 0.0
    # their window: 0 below Lmin/2, ramp, 1 inside [0.8, 1.5] x reference, ramp down, 0 past 1.5 x Lmax
    assert [length_reward(n, 10) for n in (4, 6, 8, 15, 18.75, 23)] == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.5, 0.0])


def test_the_pause_rule_forces_pauses_only_where_entropy_is_high():
    from auralens.interp.pause import PauseConfig, PauseProcessor, count_pauses

    pid = 5
    proc = PauseProcessor(PauseConfig(token_id=pid, entropy_threshold=0.5, max_pauses=2))
    sharp = torch.tensor([10.0, 0, 0, 0, 0, 0])  # entropy ~0.002 nats
    flat = torch.zeros(6)  # entropy ln 5 over the non-pause tokens
    scores = torch.stack([sharp, flat, flat, flat])
    ids = torch.tensor([[1, 2], [1, 2], [pid, pid], [2, pid]])  # row 2: cap used; row 3: just paused
    out = proc(ids, scores.clone())
    assert torch.isinf(out[0, pid]) and out[0].argmax() == 0  # low entropy: never a pause
    assert out[1].argmax() == pid and torch.isinf(out[1, :pid]).all()  # forced
    assert torch.isinf(out[2, pid]) and torch.isinf(out[3, pid])  # cap reached / no two in a row
    assert count_pauses(ids, proc.cfg) == [0, 0, 2, 1] and count_pauses(ids, None) == [0, 0, 0, 0]
    with pytest.raises(ConfigError, match="entropy_threshold"):
        PauseConfig(token_id=1, entropy_threshold=float("nan"))


def test_completion_logprobs_leave_forced_pauses_out():
    from auralens.finetuning.grpo import completion_logprobs

    class Tiny(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            logits = torch.zeros(*input_ids.shape, 6)
            return type("O", (), {"logits": logits})()

    batch = {"input_ids": torch.tensor([[1, 2]]), "attention_mask": torch.ones(1, 2, dtype=torch.long)}
    ids, mask = torch.tensor([[3, 5, 4]]), torch.ones(1, 3, dtype=torch.long)
    loss_mask = mask * (ids != 5).long()
    lp = completion_logprobs(Tiny(), batch, ids, mask, suppress_ids=[5], loss_mask=loss_mask)
    assert torch.isfinite(lp).all() and lp[0, 1] == 0.0
    assert lp[0, 0] == pytest.approx(-math.log(5))  # the pause removed from the distribution


def test_hyper_finetune_adds_the_pause_token_and_keeps_the_rule(tmp_path, small_micro_dir):
    import auralens.finetuning.recipe as ft
    from auralens.interp.generation import GenerationConfig, generate_batch, model_inputs
    from auralens.interp.loading import load_model
    from auralens.interp.pause import PAUSE_TOKEN

    cfg = ft.FinetuneConfig(**{**TINY, "save_every": 0}, recipe="hyper")
    out = tmp_path / "hyper"
    info = ft.finetune(str(small_micro_dir), out, cfg, progress=False)
    assert info["recipe"] == "hyper" and info["rewards"]["names"] == ["answer", "perceptual_consistency", "length", "format"]
    pause = json.loads((out / "pause.json").read_text())
    assert pause == info["pause"] and pause["max_pauses"] == 3 and pause["entropy_threshold"] >= 0
    assert {"pauses_per_completion", "perceptual_consistency"} <= set(info["reward_curves"][0])
    lm = load_model(str(out), device="cpu", dtype="float32")
    assert lm.tokenizer.convert_tokens_to_ids(PAUSE_TOKEN) == pause["token_id"] == lm.model.config.text_config.vocab_size - 1
    assert lm.pause is not None and "logits_processor" in lm.generate_kwargs
    from auralens.interp.cafe.questions import make_items

    new, texts = generate_batch(lm, model_inputs(lm, make_items(3, seed=5), "structured"), GenerationConfig(max_new_tokens=24))
    assert all(PAUSE_TOKEN not in t for t in texts)  # a special token: decoded text skips it
    assert int((new == pause["token_id"]).sum(1).max()) <= 3
    with pytest.raises(ConfigError, match="recipe"):
        ft.FinetuneConfig(recipe="dpo")


def test_a_bad_base_model_fails_before_the_work_folder(tmp_path):
    from auralens.finetuning.config import FinetuneConfig
    from auralens.finetuning.recipe import finetune
    from auralens.interp.errors import AuralensError

    out = tmp_path / "ft"
    earlier = tmp_path / ".ft.work"
    earlier.mkdir()
    (earlier / "state.json").write_text("{}")  # an interrupted run's checkpoints, not to be wiped by a typo
    with pytest.raises(AuralensError):
        finetune(tmp_path / "no-such-model", out, FinetuneConfig(sft_steps=1, grpo_steps=0, threads=1), progress=False)
    assert (earlier / "state.json").exists() and not out.exists()
    with pytest.raises(AuralensError):
        finetune(tmp_path / "no-such-model", tmp_path / "ft2", FinetuneConfig(sft_steps=1, grpo_steps=0, threads=1),
                 progress=False)
    assert not (tmp_path / ".ft2.work").exists()


def test_an_output_folder_with_other_files_is_refused_before_training(tmp_path):
    from auralens.finetuning.config import FinetuneConfig
    from auralens.finetuning.recipe import finetune
    from auralens.interp.errors import AuralensError

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not a model")
    cfg = FinetuneConfig(sft_steps=1, grpo_steps=0, threads=1)
    with pytest.raises(AuralensError, match="holding other files"):
        finetune("micro", out, cfg, progress=False)
    assert (out / "notes.txt").read_text() == "not a model"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(AuralensError, match="found a file"):
        finetune("micro", f, cfg, progress=False)
    assert f.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine"]


def test_cli_lora_options_are_one_line_errors_before_any_folder(tmp_path, small_micro_dir):
    """`auralens micro finetune --lora-r/--lora-targets` (and compare's --lora-r on a trained arm):
    a bad value is one line, exit 2, before a folder exists (an unknown target module after the
    base model loads: its names are read from the loaded architecture; the rest before)."""
    from typer.testing import CliRunner

    from auralens.cli import app

    runner = CliRunner()
    out = tmp_path / "ft"
    for args, needle in ((["--lora-r", "-1"], "lora_r"), (["--lora-r", "4", "--lora-alpha", "0"], "lora_alpha"),
                         (["--lora-r", "4", "--lora-targets", "q_proj,bogus_proj"], "bogus_proj"),
                         (["--lora-r", "4", "--recipe", "hyper"], "hyper")):
        res = runner.invoke(app, ["micro", "finetune", "--base", str(small_micro_dir), "--out", str(out),
                                  "--sft-steps", "1", "--grpo-steps", "0", "--threads", "1", *args])
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        if needle == "bogus_proj":  # transformers' loading bar
            lines = [ln for ln in lines if not ln.startswith("Loading weights")]
        else:
            assert "Loading weights" not in res.output
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), res.output
        assert needle in lines[0], (needle, lines[0])
        assert not out.exists() and not (tmp_path / ".ft.work").exists()
    res = runner.invoke(app, ["compare", "--base", "micro", "--mpar2", "train", "--lora-r", "-2",
                              "--out", str(tmp_path / "cmp")])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "lora_r" in lines[0], res.output
    assert not (tmp_path / "cmp").exists()
