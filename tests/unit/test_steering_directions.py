"""Audio-minus-silence directions and their controls, against independent computations.

- the direction equals a hand computation from ``output_hidden_states=True`` of plain forwards,
  one item at a time, with the real audio and with silence (``hidden_states[L + 1]`` is the
  output of layer L; the last entry is after the final norm in this transformers version, so
  the last layer is not compared that way);
- a left-padded batch gives the same activations as one item at a time (1e-5);
- a head-restricted direction at ``attn.hook_z`` is non-zero only in the chosen heads' slices
  and equals the masked mean difference of ``o_proj``'s input read by an independent hook; at
  ``hook_resid_post`` it is that masked difference mapped through ``o_proj``;
- normalisations, integer positions, controls (equal norm, seeded, other heads) and errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auralens.interp.errors import ConfigError

N_ITEMS = 5


@pytest.fixture(scope="module")
def lm(small_lm):
    return small_lm


@pytest.fixture(scope="module")
def items():
    from auralens.interp.datasets import load_dataset

    return load_dataset("cafe", n=N_ITEMS, seed=3)


@pytest.fixture(scope="module")
def acts(lm, items):
    from auralens.steering.directions import collect_paired

    return collect_paired(lm, items, layers=[0, 1, 2], batch_size=3)


def _one(lm, item, mode):
    from auralens.interp.generation import cast_features, model_inputs

    return dict(cast_features(lm, model_inputs(lm, [item], "direct", mode)))


def _hidden_one_by_one(lm, items, layer: int, reduce):
    """mean_i reduce(h_L(real_i)) - reduce(h_L(silence_i)), one unpadded item at a time."""
    diffs, norms = [], []
    for it in items:
        vals = {}
        for mode in ("real", "silence"):
            batch = _one(lm, it, mode)
            with torch.inference_mode():
                hs = lm.model(**batch, output_hidden_states=True).hidden_states
            ids = batch["input_ids"][0]
            vals[mode] = reduce(hs[layer + 1][0].float(), ids)
        diffs.append(vals["real"] - vals["silence"])
        norms.append(float(vals["real"].norm()))
    return torch.stack(diffs).mean(0), float(np.mean(norms))


def _last(h, ids):
    return h[-1]


def test_direction_equals_hidden_states_hand_computation(lm, items, acts):
    from auralens.interp.datasets import fingerprint
    from auralens.steering.directions import direction_from

    vec = direction_from(acts, lm, layers=[0, 1])
    assert vec.method == "audio_minus_silence"
    assert vec.data_fingerprint == fingerprint(items)
    assert vec.site == "lm.blocks.{L}.hook_resid_post"
    for L in (0, 1):
        ref, _ = _hidden_one_by_one(lm, items, L, _last)
        assert float(ref.norm()) > 0
        torch.testing.assert_close(vec.directions[L], ref, atol=1e-5, rtol=1e-5)


def test_audio_mean_position_equals_hand_computation(lm, items):
    from auralens.steering.directions import audio_minus_silence

    vec = audio_minus_silence(lm, items, layers=[1], positions="audio_mean", batch_size=5)
    audio_id = lm.arch.audio_token_id

    def audio_mean(h, ids):
        return h[ids == audio_id].mean(0)

    ref, _ = _hidden_one_by_one(lm, items, 1, audio_mean)
    torch.testing.assert_close(vec.directions[1], ref, atol=1e-5, rtol=1e-5)
    assert vec.extra["positions"] == "audio_mean"


def test_integer_positions(lm, items):
    from auralens.steering.directions import audio_minus_silence, collect_paired

    last = collect_paired(lm, items, layers=[1], positions="last_prompt", batch_size=5)
    minus_one = collect_paired(lm, items, layers=[1], positions=-1, batch_size=5)
    torch.testing.assert_close(last.resid["real"], minus_one.resid["real"], atol=0, rtol=0)
    # position 2 of the prompt's real tokens (padding is never counted), batched vs by hand
    vec = audio_minus_silence(lm, items, layers=[1], positions="2", batch_size=5)
    ref, _ = _hidden_one_by_one(lm, items, 1, lambda h, ids: h[2])
    torch.testing.assert_close(vec.directions[1], ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="position 500"):
        collect_paired(lm, items[:1], layers=[1], positions=500)


def test_batched_equals_one_by_one(lm, items, acts):
    from auralens.steering.directions import collect_paired

    ids = [it.item_id for it in items]
    assert acts.item_ids == ids
    one = collect_paired(lm, items, layers=[0, 1, 2], batch_size=1)
    for mode in ("real", "silence"):
        torch.testing.assert_close(acts.resid[mode], one.resid[mode], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(acts.z[mode], one.z[mode], atol=1e-5, rtol=1e-5)
    # the batch really was left-padded
    from auralens.interp.generation import model_inputs

    mask = model_inputs(lm, items[:3], "direct")["attention_mask"]
    assert int((mask == 0).sum()) > 0


def _z_one_by_one(lm, items, layer: int):
    """Mean difference of o_proj's input at the last prompt token, by an independent hook."""
    o_proj = lm.arch.o_proj(lm.model, layer)
    got = {}

    def hook(module, args):
        got["z"] = args[0][0, -1].float().clone()

    diffs = []
    h = o_proj.register_forward_pre_hook(hook)
    try:
        for it in items:
            vals = {}
            for mode in ("real", "silence"):
                with torch.inference_mode():
                    lm.model(**_one(lm, it, mode))
                vals[mode] = got["z"]
            diffs.append(vals["real"] - vals["silence"])
    finally:
        h.remove()
    return torch.stack(diffs).mean(0)


def test_head_restricted_hook_z_only_in_chosen_slices(lm, items, acts):
    from auralens.steering.directions import direction_from

    heads = [(1, 0), (1, 2), (2, 3)]
    vec = direction_from(acts, lm, site="attn.hook_z", heads=heads)
    hd = lm.arch.head_dim
    assert vec.site == "lm.blocks.{L}.attn.hook_z"
    assert vec.layers == (1, 2)
    assert vec.heads == tuple(heads)
    assert vec.width == lm.arch.n_heads * hd
    for L in (1, 2):
        chosen = {h for hl, h in heads if hl == L}
        v = vec.directions[L].view(lm.arch.n_heads, hd)
        for h in range(lm.arch.n_heads):
            if h in chosen:
                assert float(v[h].abs().max()) > 0
            else:
                assert torch.equal(v[h], torch.zeros(hd))
        ref = _z_one_by_one(lm, items, L).view(lm.arch.n_heads, hd)
        for h in chosen:
            torch.testing.assert_close(v[h], ref[h], atol=1e-5, rtol=1e-5)


def test_head_restricted_resid_post_maps_through_o_proj(lm, items, acts):
    """At hook_resid_post a head-restricted direction is o_proj applied to the masked z
    difference: the chosen heads' direct write into the residual stream."""
    from auralens.steering.directions import direction_from

    heads = [(1, 1), (1, 3)]
    vz = direction_from(acts, lm, site="attn.hook_z", heads=heads)
    vr = direction_from(acts, lm, site="hook_resid_post", heads=heads)
    o_proj = lm.arch.o_proj(lm.model, 1)
    assert o_proj.bias is None  # Qwen2: no bias; a bias would cancel in the difference anyway
    with torch.inference_mode():
        mapped = o_proj(vz.directions[1])
    assert vr.width == lm.arch.d_model
    torch.testing.assert_close(vr.directions[1], mapped, atol=1e-5, rtol=1e-5)
    # the same as the mean of o_proj(masked z_real) - o_proj(masked z_silence) over items
    i = acts.layer_index(1)
    mask = torch.zeros(lm.arch.n_heads, lm.arch.head_dim)
    mask[[1, 3]] = 1
    mask = mask.flatten()
    with torch.inference_mode():
        per_item = o_proj(acts.z["real"][:, i] * mask) - o_proj(acts.z["silence"][:, i] * mask)
    torch.testing.assert_close(vr.directions[1], per_item.mean(0), atol=1e-5, rtol=1e-5)


def test_normalisations(lm, items, acts):
    from auralens.steering.directions import direction_from

    raw = direction_from(acts, lm, layers=[0, 1])
    unit = direction_from(acts, lm, layers=[0, 1], normalize="unit")
    matched = direction_from(acts, lm, layers=[0, 1], normalize="resid_norm")
    for L in (0, 1):
        assert float(unit.directions[L].norm()) == pytest.approx(1.0, abs=1e-5)
        torch.testing.assert_close(unit.directions[L], raw.directions[L] / raw.directions[L].norm())
        _, mean_norm = _hidden_one_by_one(lm, items, L, _last)
        assert float(matched.directions[L].norm()) == pytest.approx(mean_norm, rel=1e-4)
        assert matched.extra["raw_norm"][str(L)] == pytest.approx(float(raw.directions[L].norm()), rel=1e-5)
    assert matched.extra["normalize"] == "resid_norm"


def test_random_direction_control(lm, items, acts):
    from auralens.steering.directions import direction_from, random_direction

    vec = direction_from(acts, lm, layers=[0, 2])
    r1 = random_direction(vec, seed=3)
    r2 = random_direction(vec, seed=3)
    r3 = random_direction(vec, seed=4)
    assert r1.method == "random_direction" and r1.data_fingerprint == vec.data_fingerprint
    assert r1.equals(r2) and not r1.equals(r3)
    for L in (0, 2):
        assert float(r1.directions[L].norm()) == pytest.approx(float(vec.directions[L].norm()), rel=1e-5)
        cos = torch.nn.functional.cosine_similarity(r1.directions[L], vec.directions[L], dim=0)
        assert abs(float(cos)) < 0.6
    # head-restricted hook_z: same support
    vz = direction_from(acts, lm, site="attn.hook_z", heads=[(1, 2)])
    rz = random_direction(vz, seed=0)
    v = rz.directions[1].view(lm.arch.n_heads, lm.arch.head_dim)
    assert float(v[2].abs().max()) > 0 and float(v[[0, 1, 3]].abs().max()) == 0
    assert float(rz.directions[1].norm()) == pytest.approx(float(vz.directions[1].norm()), rel=1e-5)


def test_random_heads_control(lm, items, acts):
    from auralens.steering.directions import direction_from, draw_random_heads, fit_with_controls, random_heads

    heads = [(1, 0), (1, 2), (2, 1)]
    vec = direction_from(acts, lm, heads=heads, normalize="unit")
    ctrl = random_heads(acts, lm, vec, seed=5)
    assert ctrl.method == "random_heads"
    assert ctrl.layers == vec.layers
    drawn = draw_random_heads(lm.arch, heads, seed=5)
    assert ctrl.heads == drawn
    for L in (1, 2):
        mine = {h for hl, h in heads if hl == L}
        theirs = {h for hl, h in drawn if hl == L}
        assert len(mine) == len(theirs) and not (mine & theirs)  # 4 heads: enough others remain
        assert float(ctrl.directions[L].norm()) == pytest.approx(float(vec.directions[L].norm()), rel=1e-5)
    assert draw_random_heads(lm.arch, heads, seed=5) == draw_random_heads(lm.arch, heads, seed=5)
    assert ctrl.extra["heads_shared_with_vector"] == 0
    # more than half of a layer's heads chosen: all the others are taken, the overlap is minimal
    for seed in range(6):
        many = draw_random_heads(lm.arch, [(2, 0), (2, 1), (2, 3)], seed=seed)
        assert len(many) == 3 and (2, 2) in many and many != ((2, 0), (2, 1), (2, 3))
    # the control is audio-minus-silence on those heads (rescaled): same direction
    same = direction_from(acts, lm, heads=drawn, normalize="unit")
    for L in (1, 2):
        torch.testing.assert_close(ctrl.directions[L], same.directions[L], atol=1e-5, rtol=1e-5)
    # one collection, all three
    out = fit_with_controls(lm, items, heads=heads, seed=5)
    assert set(out) == {"audio_minus_silence", "random_direction", "random_heads"}
    assert [v.method for v in out.values()] == list(out)
    plain = fit_with_controls(lm, items, layers=[1], seed=5)
    assert set(plain) == {"audio_minus_silence", "random_direction"}  # no heads, no random heads


def test_parse_heads_and_positions(tmp_path):
    import pandas as pd

    from auralens.interp.listening import heads_table
    from auralens.steering.directions import parse_heads, parse_positions

    assert parse_heads("1:0, 2:3") == ((1, 0), (2, 3))
    assert parse_heads([(1, 0), [2, 3]], k=1) == ((1, 0),)
    corr = np.array([[0.1, 0.9], [0.5, -0.2]])
    table = heads_table(correlation=corr)
    table.to_parquet(tmp_path / "heads.parquet")
    assert parse_heads(tmp_path / "heads.parquet", k=2) == ((0, 1), (1, 0))
    assert parse_heads(str(tmp_path), k=1) == ((0, 1),)  # a run folder with heads.parquet
    assert parse_heads(pd.DataFrame({"layer": [2], "head": [1]})) == ((2, 1),)
    assert parse_positions("last_prompt,audio_mean") == ("last_prompt", "audio_mean")
    assert parse_positions("-3") == (-3,)
    for bad in ("middle", [], True, "1:x"):
        with pytest.raises(ConfigError):
            (parse_heads if bad == "1:x" else parse_positions)(bad)


def test_errors(lm, items, acts):
    from auralens.steering.directions import audio_minus_silence, direction_from

    with pytest.raises(ConfigError, match="out of range"):
        audio_minus_silence(lm, items, layers=[7])
    with pytest.raises(ConfigError, match="normalize"):
        direction_from(acts, lm, layers=[0], normalize="l1")
    with pytest.raises(ConfigError, match="heads"):
        direction_from(acts, lm, heads=[(1, 9)])
    with pytest.raises(ConfigError, match="chosen heads in each steered layer"):
        direction_from(acts, lm, heads=[(1, 0)], layers=[0, 1])
    with pytest.raises(ConfigError, match="site"):
        direction_from(acts, lm, layers=[0], site="hook_resid_pre")
    with pytest.raises(ConfigError, match="positions"):
        audio_minus_silence(lm, items, layers=[0], positions="first_word")
    with pytest.raises(ConfigError, match="expected at least one item"):
        audio_minus_silence(lm, [], layers=[0])
