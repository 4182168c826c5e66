"""Audio -> silence activation patching (auralens.interp.patching).

- the patched answer log-probabilities equal nnsight doing the same patch (an independent
  implementation: ``envoy.trace`` assigning the decoder layer's output at the masked positions),
  within 1e-4, for a middle layer and each position group, both directions;
- exact nulls and identities: patching the prompt before the audio changes nothing (a causal
  decoder cannot see the audio there), denoising at every position reproduces the clean score,
  noising at every position the corrupt score; the hook is gone afterwards;
- the groups partition the prompt as stated; the choice score is a log-softmax over the choices;
- bad options are refused before a folder exists; a small stage run writes its tables.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from auralens.interp.arch import get_attr_path, site_name
from auralens.interp.audio import item_audio
from auralens.interp.errors import ConfigError
from auralens.interp.patching import (
    PATCH_GROUPS,
    activation_patching,
    choice_inputs,
    choice_scores,
    group_masks,
    patch_residual,
    patching_table,
    stage_patch,
)
from auralens.testing.model_checks import hook_count


@pytest.fixture(scope="module")
def lm(small_lm):
    return small_lm


@pytest.fixture(scope="module")
def items():
    from auralens.interp.datasets import load_dataset

    return load_dataset("cafe", n=3, seed=11)


@pytest.fixture(scope="module")
def slot(lm, items):
    audios = [item_audio(it, lm.processor) for it in items]
    return choice_inputs(lm, items, audios, 0)


def _lp(logits, ids, target):
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    return (lp * target[:, 1:]).sum(1)


def _nnsight_patched(lm, run, layer, mask, source, target):
    import nnsight
    from nnsight import NNsight

    envoy = NNsight(lm.model)
    env = get_attr_path(envoy, lm.arch.hook_point(site_name(layer, "hook_resid_post")).path)
    with torch.inference_mode():
        with envoy.trace(**run, use_cache=False):
            out = env.output
            h = out[0] if isinstance(out, tuple) else out
            h[mask] = source[mask].to(h.dtype)
            logits = nnsight.save(envoy.output.logits)
    return _lp(logits.float(), run["input_ids"], target)


def _ours(lm, run, layer, mask, source, target):
    with patch_residual(lm, layer, mask, source), torch.inference_mode():
        logits = lm.model(**run, use_cache=False).logits
    return _lp(logits.float(), run["input_ids"], target)


def _resid(lm, run, layer):
    with torch.inference_mode():
        return lm.model(**run, use_cache=False, output_hidden_states=True).hidden_states[layer + 1].float()


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_patch_equals_nnsight(lm, slot, direction):
    layer = lm.arch.n_layers // 2
    src_run, run = (slot.clean, slot.corrupt) if direction == "denoise" else (slot.corrupt, slot.clean)
    src = _resid(lm, src_run, layer)
    masks = group_masks(slot.clean["input_ids"], slot.prompt, slot.target, lm.arch.audio_token_id, PATCH_GROUPS)
    plain = _lp(lm.model(**run, use_cache=False).logits.detach().float(), run["input_ids"], slot.target)
    changed = 0
    for g in ("audio", "after_audio", "last_prompt"):
        before = hook_count(lm.model)
        ours = _ours(lm, run, layer, masks[g], src, slot.target)
        assert hook_count(lm.model) == before  # our hook is gone (nnsight keeps its own)
        ref = _nnsight_patched(lm, run, layer, masks[g], src, slot.target)
        assert torch.allclose(ours, ref, atol=1e-4), (g, ours, ref)
        changed += int(not torch.allclose(ours, plain, atol=1e-4))
    assert changed >= 2  # the patch does something (else the comparison is vacuous)


def test_groups_partition_the_prompt(lm, slot):
    m = group_masks(slot.clean["input_ids"], slot.prompt, slot.target, lm.arch.audio_token_id, PATCH_GROUPS)
    parts = m["before_audio"].int() + m["audio"].int() + m["after_audio"].int() + m["last_prompt"].int()
    assert torch.equal(parts.bool(), slot.prompt) and int(parts.max()) == 1
    assert torch.equal(m["all"], slot.prompt | slot.target)
    assert (m["audio"].sum(1) > 0).all() and (m["before_audio"].sum(1) > 0).all()
    assert not (slot.prompt & slot.target).any()


def test_exact_nulls_and_identities(lm, items):
    rows = pd.DataFrame(activation_patching(lm, items, layers=[0, lm.arch.n_layers - 1], direction="denoise",
                                            batch_size=2))
    assert (rows["clean"] != rows["corrupt"]).any()  # the audio matters to this model at all
    before = rows[rows["group"] == "before_audio"]
    assert np.allclose(before["patched"], before["corrupt"], atol=1e-5)
    everything = rows[rows["group"] == "all"]
    assert np.allclose(everything["patched"], everything["clean"], atol=1e-5)
    noise = pd.DataFrame(activation_patching(lm, items, layers=[1], groups=["all", "before_audio"],
                                             direction="noise"))
    assert np.allclose(noise[noise["group"] == "all"]["patched"], noise[noise["group"] == "all"]["corrupt"], atol=1e-5)
    assert np.allclose(noise[noise["group"] == "before_audio"]["effect"], 0.0, atol=1e-5)
    table = patching_table(rows.to_dict("records"), n_boot=200)
    assert set(table["group"]) == set(PATCH_GROUPS) and (table["n"] == len(items)).all()
    full = table[table["group"] == "all"]
    assert np.allclose(full["restored"], 1.0, atol=1e-4)
    assert np.allclose(table[table["group"] == "before_audio"]["effect"], 0.0, atol=1e-5)


def test_choice_scores_is_a_log_softmax():
    lp = np.array([[-1.0, -2.0, -3.0], [-5.0, -0.5, -9.0]])
    valid = np.array([[True, True, True], [True, True, False]])
    got = choice_scores(lp, valid, np.array([0, 1]))
    want0 = -1.0 - np.log(np.exp(-1.0) + np.exp(-2.0) + np.exp(-3.0))
    want1 = -0.5 - np.log(np.exp(-5.0) + np.exp(-0.5))
    assert np.allclose(got, [want0, want1])


def test_bad_options_refused_before_a_folder(tmp_path):
    out = tmp_path / "run"
    for kw, word in [({"direction": "sideways"}, "direction"), ({"groups": "audio,nowhere"}, "groups"),
                     ({"layers": "1,x"}, "layers"), ({"layers": "1,1"}, "layers"), ({"n": 0}, "n")]:
        with pytest.raises(ConfigError, match=word):
            stage_patch(model="micro", out=out, **kw)
        assert not out.exists()


def test_layer_out_of_range_refused_before_a_folder(lm, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="layers"):
        stage_patch(model="micro", data="cafe", n=2, layers=str(lm.arch.n_layers), out=out, lm=lm, quiet=True)
    assert not out.exists()


def test_stage_writes_tables(lm, tmp_path):
    out = tmp_path / "run"
    res = stage_patch(model="micro", data="cafe", n=2, layers="0", groups="audio,last_prompt", out=out, lm=lm,
                      quiet=True, n_boot=50)
    assert res["n"] == 2 and len(res["table"]) == 2
    table = pd.read_parquet(out / "patching.parquet")
    rows = pd.read_parquet(out / "items.parquet")
    assert len(rows) == 2 * 2 and set(table["group"]) == {"audio", "last_prompt"}
    assert json.loads((out / "patching.json").read_text())["direction"] == "denoise"
