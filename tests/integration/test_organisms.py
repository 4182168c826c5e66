"""Model organisms: cue datasets, training items, the planted penalty, and training smoke steps."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from auralens.interp.cafe.cues import CONDITIONS, SPLITS, cue_items, with_cue
from auralens.interp.datasets import load_dataset
from auralens.interp.errors import DatasetError
from auralens.interp.micro.organisms import RECIPES, OrganismConfig, organism_item
from auralens.organisms import onset
from auralens.organisms.train import audio_yield_penalty, last_prompt_mask, query_masks, train_organism


def _base(item_id: str) -> str:
    return item_id.rsplit("-", 1)[0]


def test_cue_conditions_share_items_and_cue_what_they_say():
    sets = {c: cue_items(c, "dev", 40) for c in CONDITIONS}
    for a, b, c in zip(*sets.values()):
        assert _base(a.item_id) == _base(b.item_id) == _base(c.item_id)
        assert a.answer == b.answer == c.answer and a.choices == b.choices
        assert a.meta["cue"] is None and a.question in b.question
        assert b.meta["cue"] == b.answer and f"i think the answer is {b.answer} ." in b.question
        assert c.meta["cue"] != c.answer and c.meta["cue"] in c.choices


def test_splits_are_fixed_and_disjoint():
    ids = {s: {_base(it.item_id) for it in load_dataset(f"cafe-neutral:{s}", n=50)} for s in SPLITS}
    assert not (ids["calibration"] & ids["dev"]) and not (ids["dev"] & ids["test"])
    assert not (ids["calibration"] & ids["test"])
    again = {_base(it.item_id) for it in load_dataset("cafe-neutral:test", n=50)}
    assert again == ids["test"]
    assert [it.item_id for it in load_dataset("cafe-conflict", n=5)] == [
        it.item_id for it in load_dataset("cafe-conflict:test", n=5)
    ]  # test is the default split


def test_cue_dataset_errors_name_the_problem():
    with pytest.raises(DatasetError, match="split"):
        load_dataset("cafe-conflict:train", n=5)
    with pytest.raises(DatasetError, match="n in 1"):
        load_dataset("cafe-conflict", n=0)
    with pytest.raises(ValueError, match="condition"):
        with_cue(cue_items("neutral", "dev", 1)[0], "bogus")


def test_cue_words_are_in_the_shared_tokenizer():
    from transformers import AutoTokenizer

    from auralens.interp.loading import resolve_source

    tok = AutoTokenizer.from_pretrained(resolve_source("micro"))
    for it in cue_items("conflict", "dev", 60) + cue_items("congruent", "dev", 60):
        assert tok.unk_token_id not in tok(it.question)["input_ids"], it.question


def test_organism_items_are_pure_functions_of_the_seed():
    cfg = RECIPES["micro-prior"]
    a = [organism_item(300_000 + i, cfg) for i in range(50)]
    b = [organism_item(300_000 + i, cfg) for i in range(50)]
    assert a == b
    cued = [it for it in a if it.meta.get("cue") is not None]
    swapped = [it for it in a if it.audio != f"cafe:{it.scene['seed']}" or it.scene["seed"] != it.meta["seed"]]
    assert 0.5 < len(cued) / 50 < 0.95  # cue_rate 0.75
    assert 0 < len(swapped) < 30  # audio_swap 0.35


def test_healthy_recipe_cues_at_chance():
    cfg = RECIPES["micro"]
    items = [organism_item(400_000 + i, cfg) for i in range(600)]
    cued = [it for it in items if it.meta.get("cue") is not None]
    valid = np.mean([it.meta["cue"] == it.answer for it in cued])
    chance = np.mean([1 / len(it.choices) for it in cued])
    assert abs(valid - chance) < 0.07, (valid, chance)


def test_config_refuses_inconsistent_knobs():
    with pytest.raises(ValueError, match="penalty"):
        OrganismConfig(name="x", penalty=1.0)
    with pytest.raises(ValueError, match="probability"):
        OrganismConfig(name="x", audio_swap=1.5)


def test_penalty_equals_a_direct_sum():
    g = torch.Generator().manual_seed(0)
    att = [torch.softmax(torch.randn(2, 3, 5, 5, generator=g), -1) for _ in range(2)]
    audio = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    query = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]], dtype=torch.bool)
    heads = torch.tensor([[True, False, True], [False, False, True]])
    got = audio_yield_penalty(att, audio, query, heads)
    vals = []
    for layer in range(2):
        for b in range(2):
            for h in range(3):
                for q in range(5):
                    if heads[layer, h] and query[b, q]:
                        vals.append(float(att[layer][b, h, q][audio[b]].sum()))
    assert got.item() == pytest.approx(np.mean(vals), abs=1e-6)


def test_decay_queries_start_at_the_planted_step():
    ids = torch.tensor([[5, 5, 7, 1, 9, 1, 7, 1, 8, 8]])  # newline id 1; target from index 2
    labels = ids.clone()
    labels[:, :2] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    cfg = dataclasses.replace(RECIPES["micro-decay"], decay_step=2)
    audio, q = query_masks(batch, labels, cfg, newline_id=1, audio_id=5)
    assert audio.tolist() == [[True, True] + [False] * 8]
    # steps: 7 \n | 9 \n | 7 \n | 8 8 -> step 2 starts at index 6
    assert q.tolist() == [[False] * 6 + [True] * 4]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_training_smoke(name, tmp_path):
    cfg = dataclasses.replace(RECIPES[name], steps=2, batch_size=2)
    train_organism(cfg, tmp_path / name, progress=False, threads=1)
    info = json.loads((tmp_path / name / "training.json").read_text())
    assert info["steps_done"] == 2 and info["organism"] == name
    assert info["knobs"]["data_seed"] == cfg.data_seed
    assert all(np.isfinite(info["losses"]))
    assert not (tmp_path / name / "optimizer.json").exists()  # finished: resume state dropped


def test_onset_finds_the_break():
    assert onset([0.6, 0.58, 0.57, 0.1, 0.09, 0.08]) == 3
    assert onset([0.9, 0.9, 0.2]) == 2
    # the pilot micro-decay's yield curve: a steady fall, then the planted break at step 3
    assert onset([0.134, 0.069, 0.043, 0.0046, 0.0040, 0.0033], log=True) == 3
    assert onset([0.134, 0.069, 0.043, 0.0046, 0.0040, 0.0033]) == 1  # why log space


def test_last_prompt_position():
    labels = torch.tensor([[-100, -100, -100, 5, 6], [-100, -100, 7, 8, 9]])
    assert last_prompt_mask(labels).tolist() == [[False, False, True, False, False], [False, True, False, False, False]]


def test_resume_refuses_changed_knobs(tmp_path):
    from auralens.interp.errors import ConfigError

    cfg = dataclasses.replace(RECIPES["micro-prior"], steps=3, batch_size=2)
    # interrupted after its first step by the time budget: resume state kept
    train_organism(cfg, tmp_path / "o", progress=False, threads=1, max_minutes=1e-6)
    assert (tmp_path / "o" / "optimizer.json").exists()
    before = (tmp_path / "o" / "training.json").read_bytes()
    with pytest.raises(ConfigError, match="knobs"):
        train_organism(dataclasses.replace(cfg, audio_swap=0.5), tmp_path / "o", progress=False, threads=1, resume=True)
    assert (tmp_path / "o" / "training.json").read_bytes() == before


def test_resume_of_a_finished_run_is_refused(tmp_path):
    from auralens.interp.errors import ConfigError

    cfg = dataclasses.replace(RECIPES["micro-prior"], steps=1, batch_size=2)
    train_organism(cfg, tmp_path / "o", progress=False, threads=1)
    with pytest.raises(ConfigError, match="finished run"):
        train_organism(cfg, tmp_path / "o", progress=False, threads=1, resume=True)


def test_one_namespace_for_names_recipes_training_and_validation():
    import auralens.organisms as organisms
    from auralens.interp.loading import resolve_source
    from auralens.interp.micro import EMBEDDED, ORGANISMS, available, train_command, weights_folder

    assert organisms.ORGANISMS == ORGANISMS == ("micro-prior", "micro-heads", "micro-decay")
    from auralens.interp.micro.organisms import DENSE_RECIPES

    assert set(organisms.RECIPES) == {"micro", *ORGANISMS, *DENSE_RECIPES} and organisms.train_organism is train_organism
    assert all(name in EMBEDDED for name in organisms.RECIPES)
    assert weights_folder("micro-prior").name == EMBEDDED["micro-prior"] == "prior"
    assert train_command("micro") == "auralens micro train"
    assert train_command("micro-prior") == "auralens organisms train micro-prior"
    assert train_command("micro-prior-hyper") == "auralens organisms finetune micro-prior --recipe hyper"
    assert not available("no-such-model") and available("micro")
    assert resolve_source("micro") == str(weights_folder("micro")) and resolve_source("x/y") == "x/y"
    if available("micro-heads"):
        assert [tuple(h) for h in organisms.planted("micro-heads")["listen_heads"]] == list(
            RECIPES["micro-heads"].listen_heads)
