"""Head ablation (auralens.interp.ablation) and the causal check of the listening heads.

- no heads: the model is bit-identical (forward logits and every generated step), no hook left;
- zero- and mean-ablation give the logits nnsight gives doing the same edit (an independent
  implementation: ``envoy.trace``, the o_proj input of each layer replaced), within 1e-5, on the
  GQA micro-shaped model (query heads 0..3 over 2 kv heads) and on the tiny models of the other
  architectures; and they change the logits;
- planted: a head whose o_proj columns are zero changes nothing when ablated, one that writes does;
- head means equal a masked mean of nnsight's o_proj inputs;
- hooks go away when the block raises; bad input is refused before any hook is installed;
- the effect and its CIs: by hand and against scipy.stats.bootstrap; planted effects found,
  identical conditions give 0;
- the stage/CLI refuse bad options (naming them) before a folder exists, and a small stage run
  writes per-item rows whose no-ablation accuracy equals a plain run_eval.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from auralens.interp.ablation import (
    ABLATION_MODES,
    AblateConfig,
    ablate_heads,
    ablation_effect,
    causal_check,
    check_heads,
    head_means,
    listening_pool,
    parse_heads,
    random_head_sets,
    stage_ablate,
)
from auralens.interp.arch import get_attr_path, site_name
from auralens.interp.capture import with_position_ids
from auralens.interp.errors import ConfigError
from auralens.testing.model_checks import hook_count
from auralens.testing.tiny import TINY_ARCHS, tiny_batch

HEADS = [(0, 1), (1, 3), (2, 0), (2, 2)]


@pytest.fixture(scope="module")
def lm(small_lm):
    return small_lm


@pytest.fixture(scope="module")
def items():
    from auralens.interp.datasets import load_dataset

    return load_dataset("cafe", n=5, seed=3)


@pytest.fixture(scope="module")
def batch(lm, items):
    from auralens.interp.generation import cast_features, model_inputs

    b = with_position_ids(lm.arch, dict(cast_features(lm, model_inputs(lm, items[:3], "direct"))))
    assert int((b["attention_mask"] == 0).sum()) > 0  # left-padded
    return b


@pytest.fixture(scope="module")
def means(lm, items):
    return head_means(lm, items, batch_size=2)


def _logits(model, inputs):
    with torch.inference_mode():
        return model(**inputs, use_cache=False).logits.float()


def _nnsight_ablated(model, arch, inputs, heads, fill=None):
    """The reference: one nnsight trace that replaces each ablated head's slice of o_proj's input."""
    import nnsight
    from nnsight import NNsight

    envoy = NNsight(model)
    d = arch.head_dim
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    with torch.inference_mode():
        with envoy.trace(**inputs, use_cache=False):
            for layer in sorted(by_layer):
                env = get_attr_path(envoy, arch.hook_point(site_name(layer, "attn.hook_z")).path)
                z = env.input.clone()
                for h in by_layer[layer]:
                    z[..., h * d:(h + 1) * d] = 0.0 if fill is None else fill[layer][h].to(z.dtype)
                env.input = z
            logits = nnsight.save(envoy.output.logits)
    return logits.float()


# ----------------------------------------------------------------------------- exactness
def test_no_heads_is_bit_identical(lm, batch):
    plain = _logits(lm.model, batch)
    kw = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True,
              pad_token_id=lm.tokenizer.pad_token_id)
    fwd_batch = {k: v for k, v in batch.items() if k != "position_ids"}
    with torch.inference_mode():
        gen = lm.model.generate(**fwd_batch, **kw)
    for mode in ABLATION_MODES:
        with ablate_heads(lm, [], mode=mode, means={}) as got:
            assert got == () and hook_count(lm.model) == 0
            assert torch.equal(_logits(lm.model, batch), plain)
            with torch.inference_mode():
                g = lm.model.generate(**fwd_batch, **kw)
        assert torch.equal(g.sequences, gen.sequences)
        assert all(torch.equal(a, b) for a, b in zip(g.logits, gen.logits))


@pytest.mark.parametrize("mode", ABLATION_MODES)
def test_ablation_equals_nnsight_and_changes_the_logits(lm, batch, means, mode):
    plain = _logits(lm.model, batch)
    fill = means if mode == "mean" else None
    ref = _nnsight_ablated(lm.model, lm.arch, batch, HEADS, fill)
    assert hook_count(lm.model) == 0
    with ablate_heads(lm, HEADS, mode=mode, means=means):
        assert hook_count(lm.model) == 3  # one pre-hook per ablated layer
        got = _logits(lm.model, batch)
    assert hook_count(lm.model) == 0
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert (got - plain).abs().max() > 1e-3  # the ablation does something
    # one head only: still equal to nnsight, and a different change from the four heads
    with ablate_heads(lm, [(1, 3)], mode=mode, means=means):
        one = _logits(lm.model, batch)
    torch.testing.assert_close(one, _nnsight_ablated(lm.model, lm.arch, batch, [(1, 3)], fill), atol=1e-5, rtol=0)
    assert (one - got).abs().max() > 1e-3


def test_mean_and_zero_differ(lm, batch, means):
    with ablate_heads(lm, HEADS, mode="zero"):
        zero = _logits(lm.model, batch)
    with ablate_heads(lm, HEADS, mode="mean", means=means):
        mean = _logits(lm.model, batch)
    assert (zero - mean).abs().max() > 1e-3


@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_zero_ablation_equals_nnsight_on_every_architecture(arch_name, tiny_model):
    from types import SimpleNamespace

    from auralens.interp.arch import describe

    model, processor = tiny_model(arch_name)
    lm_ = SimpleNamespace(model=model, arch=describe(model))
    inputs = with_position_ids(lm_.arch, dict(tiny_batch(processor)))
    heads = [(0, 0), (lm_.arch.n_layers - 1, lm_.arch.n_heads - 1)]
    ref = _nnsight_ablated(model, lm_.arch, inputs, heads)
    with ablate_heads(lm_, heads, mode="zero"):
        got = _logits(model, inputs)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert (got - _logits(model, inputs)).abs().max() > 0
    assert hook_count(model) == 0


def test_planted_silent_head_changes_nothing(lm, batch):
    """A head whose o_proj columns are zero writes nothing: ablating it leaves the logits
    bit-identical; ablating a head that writes changes them."""
    import copy
    from types import SimpleNamespace

    model = copy.deepcopy(lm.model)
    planted = SimpleNamespace(model=model, arch=lm.arch)
    d = lm.arch.head_dim
    with torch.no_grad():
        lm.arch.o_proj(model, 1).weight[:, 2 * d:3 * d] = 0.0
    plain = _logits(model, batch)
    with ablate_heads(planted, [(1, 2)], mode="zero"):
        assert torch.equal(_logits(model, batch), plain)
    with ablate_heads(planted, [(1, 1)], mode="zero"):
        assert (_logits(model, batch) - plain).abs().max() > 1e-3


def _nnsight_mean(lm, items, layer, text_only):
    from auralens.interp.generation import cast_features, model_inputs
    from auralens.probes.collect import trace_sites

    sums, count = 0.0, 0.0
    for chunk in (items[:2], items[2:4], items[4:]):
        b = with_position_ids(lm.arch, dict(cast_features(lm, model_inputs(lm, chunk, "direct"))))
        z = trace_sites(lm, b, [site_name(layer, "attn.hook_z")])[site_name(layer, "attn.hook_z")]
        m = b["attention_mask"].bool()
        if text_only:
            m &= b["input_ids"] != lm.arch.audio_token_id
        m = m.float()[..., None]
        sums = sums + (z * m).sum((0, 1))
        count += float(m.sum())
    return (sums / count).reshape(lm.arch.n_heads, lm.arch.head_dim)


def test_head_means_equal_a_masked_mean_of_nnsight_values(lm, items, means):
    assert set(means) == set(range(lm.arch.n_layers))
    torch.testing.assert_close(means[1], _nnsight_mean(lm, items, 1, False), atol=1e-5, rtol=0)
    assert means[1].abs().max() > 0
    text = head_means(lm, items, layers=[2], batch_size=3, positions="text")
    assert set(text) == {2}
    torch.testing.assert_close(text[2], _nnsight_mean(lm, items, 2, True), atol=1e-5, rtol=0)
    assert (text[2] - means[2]).abs().max() > 1e-4  # audio positions excluded: another mean
    with pytest.raises(ConfigError, match="mean_positions: expected one of"):
        head_means(lm, items, positions="last")


def test_hooks_removed_when_the_block_raises(lm, means):
    with pytest.raises(RuntimeError, match="boom"):
        with ablate_heads(lm, HEADS, mode="mean", means=means):
            assert hook_count(lm.model) > 0
            raise RuntimeError("boom")
    assert hook_count(lm.model) == 0


def test_bad_input_is_refused_before_any_hook(lm, means):
    cases = [
        (dict(heads=[(0, 4)]), "3 layers x 4 \\(query\\) heads"),
        (dict(heads=[(3, 0)]), "found \\[\\(3, 0\\)\\]"),
        (dict(heads=[(0, 1), (0, 1)]), "distinct"),
        (dict(heads=[(0, True)]), "pairs of integers"),
        (dict(heads=[(0, 1)], mode="half"), "mode: expected one of"),
        (dict(heads=[(0, 1)], mode="mean"), "means: mode 'mean'"),
        (dict(heads=[(0, 1)], mode="mean", means={1: means[1]}), "missing \\[0\\]"),
        (dict(heads=[(0, 1)], mode="mean", means={0: means[0][:2]}), "means\\[0\\]: expected shape \\[4, 16\\]"),
    ]
    for kw, msg in cases:
        heads = kw.pop("heads")
        with pytest.raises(ConfigError, match=msg):
            with ablate_heads(lm, heads, **kw):
                pass  # pragma: no cover
        assert hook_count(lm.model) == 0
    assert parse_heads("0.1, 2.3") == ((0, 1), (2, 3))
    with pytest.raises(ConfigError, match="--heads: expected comma-separated layer.head"):
        parse_heads("0.1,2", "--heads")
    assert check_heads(lm.arch, [[np.int64(1), 2]]) == ((1, 2),)


# ------------------------------------------------------------------------ the effect + CI
def test_effect_by_hand_and_items_ci_against_scipy():
    rng = np.random.default_rng(0)
    n = 200
    base = rng.random(n) < 0.8
    top = base & (rng.random(n) < 0.6)
    rand = np.stack([base & (rng.random(n) < 0.9) for _ in range(4)])
    res = ablation_effect(base, top, rand, n_boot=4000, seed=1)
    assert res["accuracy"]["none"] == pytest.approx(base.mean())
    assert res["drop_top_k"] == pytest.approx(base.mean() - top.mean())
    assert res["drop_random_k"] == pytest.approx(base.mean() - rand.mean())
    assert res["diff"] == pytest.approx(res["drop_top_k"] - res["drop_random_k"])
    per_item = rand.mean(0) - top
    ref = stats.bootstrap((per_item,), np.mean, n_resamples=4000, method="percentile", confidence_level=0.95,
                          random_state=np.random.default_rng(5)).confidence_interval
    assert res["ci_items"] == pytest.approx([ref.low, ref.high], abs=0.01)
    assert res["ci"][0] > 0  # a planted effect: the top-k drop is larger
    # resampling the draws too can only widen it here (draws differ)
    assert res["ci"][1] - res["ci"][0] >= res["ci_items"][1] - res["ci_items"][0] - 0.005


def test_effect_is_zero_when_the_conditions_agree_and_refuses_bad_shapes():
    base = np.array([1, 0, 1, 1, 0, 1], float)
    res = ablation_effect(base, base, np.stack([base, base]), n_boot=200)
    assert res["diff"] == 0 and res["ci"] == [0.0, 0.0] and res["ci_items"] == [0.0, 0.0]
    res = ablation_effect(base, 1 - base, base[None], n_boot=200)  # one draw: the two CIs agree
    assert res["diff"] == pytest.approx(2 * base.mean() - 1)
    assert res["ci"] == pytest.approx(res["ci_items"])
    with pytest.raises(ConfigError, match="same items"):
        ablation_effect(base, base[:-1], base[None])


def test_random_sets_and_listening_pool():
    heads = pd.DataFrame({"layer": [0, 0, 1, 1, 2, 2], "head": [0, 1, 0, 1, 0, 1],
                          "rank": [1, 2, 3, 4, 5, 6], "corr_rank": [6, 5, 4, 3, 2, 1],
                          "mean_yield": [0.5, 0.4, 0.3, 0.002, 0.2, 0.1]})
    top, pool = listening_pool(heads, k=2, min_yield=0.01)
    assert top == [(0, 0), (0, 1)] and pool == [(1, 0), (2, 0), (2, 1)]  # (1, 1) does not listen
    top, pool = listening_pool(heads, k=2, min_yield=0.0, rank_by="corr_rank")
    assert top == [(2, 1), (2, 0)] and pool == [(0, 0), (0, 1), (1, 0), (1, 1)]
    sets = random_head_sets(pool, 2, 50, seed=3)
    assert sets == random_head_sets(pool, 2, 50, seed=3) and sets != random_head_sets(pool, 2, 50, seed=4)
    assert all(len(set(s)) == 2 and set(s) <= set(pool) for s in sets)
    assert len(set(sets)) > 1
    with pytest.raises(ConfigError, match="at least k = 5 heads in the pool.*found 4; lower --min-yield"):
        random_head_sets(pool, 5, 3)
    with pytest.raises(ConfigError, match="rank_by"):
        listening_pool(heads, k=2, rank_by="contrast_rank")
    # layer-matched: as many heads per layer as the top-k
    big = [(L, h) for L in range(3) for h in range(4)]
    top = [(0, 0), (2, 1), (2, 3)]
    matched = random_head_sets([h for h in big if h not in top], 3, 40, seed=1, layers_of=top)
    assert all(sorted(L for L, _ in m) == [0, 2, 2] and not set(m) & set(top) for m in matched)
    assert len(set(matched)) == 3  # every possible set (3 heads of layer 0 x the 2 of layer 2) is drawn
    with pytest.raises(ConfigError, match=r"layer-matched.*\{2: \(2, 1\)\}"):
        random_head_sets([(0, 1), (1, 0), (1, 1), (2, 0)], 3, 2, layers_of=top)
    top, pool = listening_pool(heads, k=2, top=[(2, 1), (1, 0)])  # given heads (planted ones)
    assert top == [(2, 1), (1, 0)] and pool == [(0, 0), (0, 1), (2, 0)]
    with pytest.raises(ConfigError, match="heads / k: expected k = 3"):
        listening_pool(heads, k=3, top=[(2, 1), (1, 0)])


# ------------------------------------------------------------------------- stage and CLI
def _heads_file(tmp_path, arch, ids=()):
    L, H = arch.n_layers, arch.n_heads
    df = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L)})
    df["mean_yield"] = np.linspace(0.5, 0.02, len(df))
    df["rank"] = np.arange(1, len(df) + 1)
    folder = tmp_path / "heads"
    folder.mkdir()
    df.to_parquet(folder / "heads.parquet")
    pd.DataFrame({"item_id": list(ids) or ["other-0"]}).to_parquet(folder / "items.parquet")
    return folder


@pytest.mark.parametrize("bad, msg", [
    (dict(k=0), "^k: expected an integer >= 1"),
    (dict(random_k_draws=0), "^random_k_draws:"),
    (dict(mode="half"), "^mode:"),
    (dict(rank_by="score"), "^rank_by:"),
    (dict(min_yield=1.5), "^min_yield:"),
    (dict(fmt="essay"), "^format:"),
    (dict(heads_from="/nonexistent/run"), "^heads_from:.*found nothing"),
    (dict(data="cafe"), "^data: expected held-out items"),
    (dict(data="cafe-neutral:calibration"), "^data: expected held-out items"),
    (dict(heads="0.1,1.2"), "^heads: expected k = 5 distinct"),
    (dict(heads="0.1,x"), "^heads: expected comma-separated layer.head"),
    (dict(mean_positions="last"), "^mean_positions:"),
])
def test_config_refuses_bad_options(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        AblateConfig(**bad)


def test_stage_refuses_before_any_folder(lm, tmp_path):
    out = tmp_path / "run"
    heads = _heads_file(tmp_path, lm.arch)
    with pytest.raises(ConfigError, match="pool.*found 1; lower --min-yield"):
        stage_ablate(model="x", data="cafe-neutral:test", n=4, n_cal=3, heads_from=str(heads), k=2,
                     min_yield=0.4, out=out, lm=lm, quiet=True)
    from auralens.interp.cafe.cues import cue_items

    test_ids = [it.item_id for it in cue_items("neutral", "test", 4)]
    (tmp_path / "b").mkdir()
    shared = _heads_file(tmp_path / "b", lm.arch, ids=test_ids[:2])
    with pytest.raises(ConfigError, match="heads_from.*ranked on other items.*found 2 of the 4 test items"):
        stage_ablate(model="x", data="cafe-neutral:test", n=4, n_cal=3, heads_from=str(shared), out=out, lm=lm,
                     quiet=True)
    with pytest.raises(ConfigError, match="^heads: .* found \\[\\(5, 0\\)\\]"):
        stage_ablate(model="x", data="cafe-neutral:test", n=4, n_cal=3, heads_from="auto", k=2, heads="0.0,5.0",
                     out=out, lm=lm, quiet=True)
    with pytest.raises(ConfigError, match="^k: expected at most 12 heads"):
        stage_ablate(model="x", data="cafe-neutral:test", n=4, n_cal=3, heads_from="auto", k=13, out=out, lm=lm,
                     quiet=True)
    assert not out.exists()


def test_stage_writes_rows_and_summary(lm, tmp_path):
    from auralens.interp.cafe.cues import cue_items
    from auralens.interp.evaluate import run_eval
    from auralens.interp.generation import GenerationConfig

    heads = _heads_file(tmp_path, lm.arch)
    out = tmp_path / "run"
    res = stage_ablate(model="small", data="cafe-neutral:test", n=6, n_cal=3, heads_from=str(heads), k=2,
                       random_k_draws=2, max_new_tokens=4, batch_size=6, n_boot=100, out=out, lm=lm, quiet=True)
    assert res["top_k"] == [[0, 0], [0, 1]] and len(res["random_sets"]) == 2 and res["pool_size"] == 10
    assert all([0, 0] not in s and [0, 1] not in s for s in res["random_sets"])
    rows = pd.read_parquet(out / "items.parquet")
    assert len(rows) == 6 * 4 and set(rows["condition"]) == {"none", "top_k", "random_0", "random_1"}
    plain = run_eval(lm, cue_items("neutral", "test", 6), formats=("direct",), audio_modes=("real",),
                     cfg=GenerationConfig(max_new_tokens=4, batch_size=6), progress=False)
    assert res["accuracy"]["none"] == pytest.approx(plain["correct"].mean())
    assert res["accuracy"]["none"] == pytest.approx(rows[rows.condition == "none"]["correct"].mean())
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["diff"] == pytest.approx(res["diff"]) and saved["mode"] == "mean"
    assert hook_count(lm.model) == 0
    given = stage_ablate(model="small", data="cafe-neutral:test", n=6, n_cal=3, heads_from=str(heads), k=2,
                         heads="2.3,1.1", random_k_draws=1, max_new_tokens=4, batch_size=6, n_boot=100, mode="zero",
                         out=tmp_path / "given", lm=lm, quiet=True)
    assert given["top_k"] == [[2, 3], [1, 1]] and all([2, 3] not in s and [1, 1] not in s for s in given["random_sets"])
    assert given["accuracy"]["none"] == pytest.approx(res["accuracy"]["none"])


def test_causal_check_needs_reference_items_for_mean(lm, items):
    heads = pd.DataFrame({"layer": [0, 1, 2], "head": [0, 0, 0], "rank": [1, 2, 3], "mean_yield": [0.5] * 3})
    with pytest.raises(ConfigError, match="means_items"):
        causal_check(lm, items, heads, k=1, draws=1, mode="mean")


def test_cli_ablate_refuses_a_bad_option_naming_it(tmp_path):
    from typer.testing import CliRunner

    from auralens.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["ablate", "--k", "0", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "k: expected an integer >= 1" in res.output
    res = runner.invoke(app, ["ablate", "--mode", "half", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "mode: expected one of" in res.output
    assert not (tmp_path / "r").exists()
    res = runner.invoke(app, ["ablate", "--help"])
    assert res.exit_code == 0 and "--random-k-draws" in res.output and "--heads-from" in res.output


def test_config_is_frozen_keyword_only_with_help_and_resumable_identity():
    import dataclasses

    assert AblateConfig.__dataclass_params__.frozen
    for f in dataclasses.fields(AblateConfig):
        assert f.kw_only and f.metadata["help"].strip(), f.name
    ident = AblateConfig().identity()
    # options added with identity=None stay out of the manifest at their defaults
    assert "heads" not in ident and "match_layers" not in ident and "mean_positions" not in ident
    assert AblateConfig(match_layers=True).identity()["match_layers"] is True
    assert ident["k"] == 5 and ident["mode"] == "mean" and ident["format"] == "direct"
