"""The site resolver (auralens.interp.arch) and the one capture engine (auralens.interp.capture).

- every site of the vocabulary resolves to the module and side it names, on each real class
  (``attn.hook_z`` is the input of the attention output projection, decoder and audio encoder
  alike); an unknown site or a layer out of range is an ArchitectureError naming it;
- the engine's values equal nnsight's (``auralens.probes.collect.trace_sites``, an independent
  implementation) at every site, full and reduced;
- it stops after the last site, removes its hooks (also when a hook raises), reads a module's
  own value before another hook on that module edits it;
- position ids, stop-token trimming and the per-architecture facts of the tables.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from auralens.interp.arch import (
    SITE_HOOKS,
    TABLES,
    container_table,
    containers,
    describe,
    get_attr_path,
    site_name,
    table_by_name,
    table_for_checkpoint,
)
from auralens.interp.capture import (
    SiteShapeError,
    capture,
    position_ids,
    site_hooks,
    stop_ids,
    trim_at_stop,
    with_position_ids,
)
from auralens.interp.errors import ArchitectureError, ConfigError
from auralens.testing.model_checks import hook_count
from auralens.testing.tiny import TINY_ARCHS, tiny_batch


def _lm(model):
    return SimpleNamespace(model=model, arch=describe(model))


def _inputs(lm, processor):
    return with_position_ids(lm.arch, tiny_batch(processor))


# Audio encoders that flatten the frames of all items into one sequence (no batch axis).
FLAT_AUDIO = {"qwen2_5_omni_thinker", "qwen3_asr", "qwen3_omni_moe_thinker"}


@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_every_site_resolves_to_its_module(arch_name, tiny_model):
    model, _ = tiny_model(arch_name)
    arch = describe(model)
    for L in range(arch.n_layers):
        layer = arch.decoder_layer(model, L)
        expected = {
            "hook_resid_pre": (layer, "input"),
            "hook_resid_post": (layer, "output"),
            "attn.hook_z": (arch.o_proj(model, L), "input"),
        }
        for hook, (module, kind) in expected.items():
            point = arch.hook_point(site_name(L, hook))
            assert (point.where, point.layer, point.hook, point.kind) == ("lm", L, hook, kind)
            got, got_kind = arch.module_for_site(model, point.site)
            assert got is module and got_kind == kind
    for L in range(arch.n_audio_layers):
        layer = arch.audio_layer(model, L)
        expected = {
            "hook_resid_pre": (layer, "input"),
            "hook_resid_post": (layer, "output"),
            "attn.hook_z": (get_attr_path(layer, arch.table.audio_o_proj), "input"),
        }
        for hook, (module, kind) in expected.items():
            got, got_kind = arch.module_for_site(model, site_name(L, hook, "audio_encoder"))
            assert got is module and got_kind == kind
    assert arch.o_proj(model, 0).in_features == arch.n_heads * arch.head_dim
    # execution order: audio encoder, then decoder layer by layer, pre < z < post
    sites = [site_name(1, "hook_resid_post"), site_name(0, "attn.hook_z"), site_name(1, "hook_resid_pre"),
             site_name(0, "hook_resid_post", "audio_encoder"), site_name(0, "hook_resid_pre")]
    assert [p.site for p in arch.hook_points(sites)] == [sites[3], sites[4], sites[1], sites[2], sites[0]]
    for bad in ("lm.blocks.0.mlp.hook_post", "vision.blocks.0.hook_resid_post", "blocks.0.hook_resid_post", 3):
        with pytest.raises(ArchitectureError, match="unknown site"):
            arch.hook_point(bad)
    with pytest.raises(ArchitectureError, match=r"site 'lm.blocks.2.attn.hook_z': decoder layer 2 out of range"):
        arch.hook_point("lm.blocks.2.attn.hook_z")
    with pytest.raises(ArchitectureError, match="audio-encoder layer 9 out of range"):
        arch.hook_point("audio_encoder.blocks.9.hook_resid_post")


@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_capture_equals_nnsight(arch_name, tiny_model):
    from auralens.probes.collect import trace_sites

    model, processor = tiny_model(arch_name)
    lm = _lm(model)
    inputs = _inputs(lm, processor)
    sites = [site_name(L, h) for L in range(lm.arch.n_layers) for h in SITE_HOOKS]
    if arch_name not in FLAT_AUDIO:
        sites += [site_name(L, h, "audio_encoder") for L in range(lm.arch.n_audio_layers) for h in SITE_HOOKS]
    got = capture(lm, inputs, sites[::-1])
    ref = trace_sites(lm, inputs, sites)
    assert set(got) == set(ref) == set(sites)
    for s in sites:
        assert got[s].dtype == torch.float32
        torch.testing.assert_close(got[s], ref[s], atol=1e-6, rtol=0)
    # reduced inside the hook: [batch, slot, pos] and [batch, pos] weights
    t = inputs["input_ids"].shape[1]
    w3 = torch.softmax(torch.randn(2, 3, t, generator=torch.Generator().manual_seed(0)), -1)
    lm_sites = [s for s in sites if s.startswith("lm.")]
    red = capture(lm, inputs, lm_sites, weights={lm_sites[0]: w3, lm_sites[-1]: w3[:, 0]})
    torch.testing.assert_close(red[lm_sites[0]], torch.bmm(w3, ref[lm_sites[0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(red[lm_sites[-1]], torch.bmm(w3[:, :1], ref[lm_sites[-1]])[:, 0], atol=1e-5, rtol=0)
    assert hook_count(model) == 0
    if arch_name in FLAT_AUDIO:
        with pytest.raises(SiteShapeError, match="audio_encoder.blocks.0.hook_resid_post"):
            capture(lm, inputs, ["audio_encoder.blocks.0.hook_resid_post", "lm.blocks.0.hook_resid_post"])
        assert hook_count(model) == 0


def test_capture_stops_early_and_always_removes_hooks(tiny_model):
    model, processor = tiny_model("qwen2_audio")
    lm = _lm(model)
    inputs = _inputs(lm, processor)
    ran = []
    handle = lm.arch.decoder_layer(model, 1).register_forward_hook(lambda *a: ran.append(1))
    try:
        capture(lm, inputs, ["lm.blocks.0.hook_resid_post"])
        assert ran == []  # stopped after layer 0
        capture(lm, inputs, ["lm.blocks.0.hook_resid_post"], stop_early=False)
        assert ran == [1]
    finally:
        handle.remove()
    assert hook_count(model) == 0

    def broken(value):
        raise RuntimeError("weights failed")

    with pytest.raises(RuntimeError, match="weights failed"):
        capture(lm, inputs, ["lm.blocks.0.hook_resid_post", "lm.blocks.1.attn.hook_z"],
                weights={"lm.blocks.1.attn.hook_z": broken})
    assert hook_count(model) == 0
    with pytest.raises(ConfigError, match="weights"):
        capture(lm, inputs, ["lm.blocks.0.hook_resid_post"], weights={"lm.blocks.1.hook_resid_post": None})
    with pytest.raises(ArchitectureError, match="out of range"):
        capture(lm, inputs, ["lm.blocks.5.hook_resid_post"])
    with pytest.raises(ConfigError, match="at least one site"):
        capture(lm, inputs, [])
    # site_hooks removes what it installed even when installing a later hook fails
    good = lm.arch.hook_point("lm.blocks.0.hook_resid_post")
    missing = SimpleNamespace(path="model.language_model.nowhere", kind="output")
    with pytest.raises(ArchitectureError, match="nowhere"):
        with site_hooks(model, [(good, lambda h: None), (missing, lambda h: None)]):
            pass
    assert hook_count(model) == 0


def test_capture_reads_a_module_before_other_hooks_edit_it(tiny_model):
    model, processor = tiny_model("qwen2_audio")
    lm = _lm(model)
    inputs = _inputs(lm, processor)
    sites = ["lm.blocks.0.hook_resid_post", "lm.blocks.1.hook_resid_pre"]
    clean = capture(lm, inputs, sites)
    point = lm.arch.hook_point(sites[0])
    with site_hooks(model, [(point, lambda h: h + 1.0)]):  # a steering-like edit of layer 0's output
        edited = capture(lm, inputs, sites)
    torch.testing.assert_close(edited[sites[0]], clean[sites[0]])  # its own value, unedited
    torch.testing.assert_close(edited[sites[1]], clean[sites[1]] + 1.0)  # the next layer sees the edit
    torch.testing.assert_close(clean[sites[0]], clean[sites[1]])


def test_positions_and_stop_tokens(tiny_model):
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    omni = SimpleNamespace(table=table_by_name("qwen2_5_omni_thinker"))
    qwen = SimpleNamespace(table=table_by_name("qwen2_audio"))
    assert "position_ids" not in with_position_ids(omni, {"attention_mask": mask})
    assert torch.equal(with_position_ids(qwen, {"attention_mask": mask})["position_ids"], position_ids(mask))

    assert trim_at_stop([5, 6, 2, 7], {2}) == [5, 6]
    assert trim_at_stop(torch.tensor([5, 6, 2, 7]), {2}, inclusive=True) == [5, 6, 2]
    assert trim_at_stop([5, 6, 7], {2}) == [5, 6, 7]
    assert trim_at_stop([2, 5], {2}) == []
    assert trim_at_stop([5, 0, 0], {2}, inclusive=True, pad_id=0) == [5]
    assert trim_at_stop([0, 5, 0], {2}, inclusive=True, pad_id=0) == [0, 5]

    model, processor = tiny_model("qwen2_audio")
    lm = SimpleNamespace(model=model, tokenizer=processor.tokenizer)
    tok = processor.tokenizer
    assert stop_ids(lm, pad=False) == {tok.eos_token_id}
    assert stop_ids(lm) == {tok.eos_token_id, tok.pad_token_id}


def test_architecture_facts_live_in_the_tables():
    assert {t.name for t in TABLES.values() if t.own_position_ids} == {"qwen2_5_omni_thinker", "qwen3_omni_moe_thinker"}
    omni = table_by_name("qwen2_5_omni_thinker")
    assert containers() == {"Qwen2_5OmniForConditionalGeneration": "thinker", "Qwen2_5OmniModel": "thinker",
                            "Qwen3OmniMoeForConditionalGeneration": "thinker"}
    assert table_for_checkpoint("Qwen3OmniMoeForConditionalGeneration").name == "qwen3_omni_moe_thinker"
    assert container_table("Qwen2_5OmniModel") is omni and container_table(omni.model_class) is None
    assert table_for_checkpoint("Qwen2_5OmniForConditionalGeneration") is omni
    assert table_for_checkpoint("Qwen2AudioForConditionalGeneration").name == "qwen2_audio"
    for name in ("qwen2_5_omni", "Qwen2_5OmniThinkerForConditionalGeneration", " QWEN2_5_OMNI_THINKER "):
        assert table_by_name(name) is omni
    assert table_by_name("audio_flamingo_3").name == "audioflamingo3"
    with pytest.raises(ArchitectureError, match="architecture 'gpt2'"):
        table_by_name("gpt2")
    from auralens.interp.loading import CONTAINERS

    assert CONTAINERS == containers()
