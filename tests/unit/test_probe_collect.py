"""Activation collection (the capture engine) against nnsight and hidden states; streaming.

- nnsight's per-layer outputs (``trace_sites``, the reference) equal an independent path,
  ``output_hidden_states=True`` of a plain forward (``hidden_states[L + 1]`` is the output of
  layer L; in this transformers version the last entry is after the final norm, so the last
  layer is compared through the norm);
- audio-mean / last-prompt / step-mean reductions of the capture engine equal a hand
  computation from the full residuals read through nnsight;
- a left-padded batch equals one item at a time to 1e-5;
- chunked streaming writes several chunk files and a resumed run skips finished chunks;
- labels from a known scene.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from auralens.interp.errors import ConfigError, ProbeError, RunFolderError

N_ITEMS = 5


@pytest.fixture(scope="module")
def lm(small_lm):
    return small_lm


@pytest.fixture(scope="module")
def items():
    from auralens.interp.datasets import load_dataset

    return load_dataset("cafe", n=N_ITEMS, seed=3)


def _reasoning_ids(lm, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


# A known three-step chain of thought, so step reductions do not depend on what an untrained
# model happens to generate.
COT = "i hear two sounds\nsound 1 is tone\nso the answer is one"


def test_nnsight_equals_output_hidden_states(lm, items):
    from auralens.interp.capture import position_ids
    from auralens.interp.generation import cast_features, model_inputs
    from auralens.probes.collect import LM_SITE, trace_sites

    batch = dict(cast_features(lm, model_inputs(lm, items[:3], "cot")))
    batch["position_ids"] = position_ids(batch["attention_mask"])
    sites = [LM_SITE.format(L=L) for L in range(lm.arch.n_layers)]
    got = trace_sites(lm, batch, sites[::-1])  # any order in, execution order inside
    with torch.inference_mode():
        ref = lm.model(**batch, output_hidden_states=True).hidden_states
    assert len(ref) == lm.arch.n_layers + 1
    real = batch["attention_mask"].bool()
    last = lm.arch.n_layers - 1
    for L in range(last):
        torch.testing.assert_close(got[sites[L]][real], ref[L + 1][real], rtol=0, atol=1e-5)
    # transformers ties hidden_states[-1] to last_hidden_state, i.e. after the final norm
    from auralens.interp.arch import get_attr_path

    norm = get_attr_path(lm.model, lm.arch.table.final_norm)
    with torch.inference_mode():
        normed = norm(got[sites[last]])
    torch.testing.assert_close(normed[real], ref[-1][real], rtol=0, atol=1e-5)
    assert not torch.allclose(got[sites[last]][real], ref[-1][real], atol=1e-3)


def test_reductions_equal_hand_computation(lm, items):
    from auralens.probes.collect import LM_SITE, CollectConfig, collect_batch, prepare_batch, trace_sites

    cfg = CollectConfig(max_steps=4)
    gens = [_reasoning_ids(lm, COT), _reasoning_ids(lm, "answer : one")]
    acts = collect_batch(lm, items[:2], "cot", cfg, generations=gens)
    assert acts.n_steps == [3, 1]
    assert acts.step_present.tolist() == [[True, True, True, False], [True, False, False, False]]

    prep = prepare_batch(lm, items[:2], "cot", cfg, generations=gens)
    sites = [LM_SITE.format(L=L) for L in range(lm.arch.n_layers)]
    full = trace_sites(lm, prep.inputs, sites)
    ids = prep.inputs["input_ids"]
    for i in range(2):
        for L, site in enumerate(sites):
            h = full[site][i]
            audio = ids[i, : prep.prompt_len] == lm.arch.audio_token_id
            torch.testing.assert_close(acts.lm["audio_mean"][i, L], h[: prep.prompt_len][audio].mean(0), atol=1e-5, rtol=0)
            torch.testing.assert_close(acts.lm["last_prompt"][i, L], h[prep.prompt_len - 1], atol=1e-5, rtol=0)
            steps = prep.token_steps[i]
            for s in range(acts.n_steps[i]):
                cols = prep.prompt_len + np.flatnonzero(steps == s)
                torch.testing.assert_close(acts.lm_steps[i, s, L], h[cols].mean(0), atol=1e-5, rtol=0)
    # the steps are the lines of the chain of thought
    words = [lm.tokenizer.decode([t]) for t in gens[0]]
    assert [w for w, s in zip(words, prep.token_steps[0]) if s == 1 and w.strip()] == ["sound", "1", "is", "tone"]


def test_audio_encoder_mean(lm, items):
    from auralens.interp.arch import get_attr_path
    from auralens.interp.generation import cast_features, model_inputs
    from auralens.probes.collect import CollectConfig, collect_batch

    cfg = CollectConfig(positions=("audio_mean",), audio_layers=None)
    acts = collect_batch(lm, items[:2], "direct", cfg)
    assert acts.audio.shape == (2, lm.arch.n_audio_layers, lm.arch.d_audio)
    # independent path: plain forward hooks on the encoder layers (reference only)
    got: dict[int, torch.Tensor] = {}
    layers = get_attr_path(lm.model, lm.arch.table.audio_layers)
    handles = [
        layer.register_forward_hook(lambda m, a, o, L=L: got.__setitem__(L, o[0] if isinstance(o, tuple) else o))
        for L, layer in enumerate(layers)
    ]
    try:
        batch = cast_features(lm, model_inputs(lm, items[:2], "direct"))
        with torch.inference_mode():
            lm.model(**batch)
    finally:
        for h in handles:
            h.remove()
    for L in range(lm.arch.n_audio_layers):
        torch.testing.assert_close(acts.audio[:, L], got[L].float().mean(1), atol=1e-5, rtol=0)


def test_batched_left_padded_equals_one_at_a_time(lm, items):
    from auralens.probes.collect import CollectConfig, collect_batch

    cfg = CollectConfig(max_new_tokens=6, max_steps=3)
    batched = collect_batch(lm, items[:3], "cot", cfg)
    mask = batched.step_present
    lengths = [len(g) for g in batched.generated]
    for i, it in enumerate(items[:3]):
        one = collect_batch(lm, [it], "cot", cfg, generations=[batched.generated[i]])
        for pos in ("audio_mean", "last_prompt"):
            torch.testing.assert_close(batched.lm[pos][i], one.lm[pos][0], atol=1e-5, rtol=0)
        assert one.step_present[0].tolist() == mask[i].tolist()
        torch.testing.assert_close(batched.lm_steps[i][mask[i]], one.lm_steps[0][mask[i]], atol=1e-5, rtol=0)
    # the prompts really were padded differently
    from auralens.interp.generation import model_inputs

    am = model_inputs(lm, items[:3], "cot")["attention_mask"]
    assert len(set(am.sum(-1).tolist())) > 1 or len(set(lengths)) > 1


def test_config_and_layer_errors(lm, items, tmp_path):
    from auralens.probes.collect import CollectConfig, collect_activations, collect_batch

    with pytest.raises(ConfigError, match="positions"):
        CollectConfig(positions=("audio_mean", "middle"))
    with pytest.raises(ConfigError, match="formats"):
        CollectConfig(formats=("essay",))
    with pytest.raises(ProbeError, match=r"decoder layer\(s\) \[7\] out of range"):
        collect_batch(lm, items[:1], "cot", CollectConfig(layers=(0, 7)))
    with pytest.raises(ProbeError, match="audio-encoder layer"):
        collect_activations(lm, items[:1], tmp_path, CollectConfig(audio_layers=(5,)))


def test_streaming_chunks_and_resume(lm, items, tmp_path, monkeypatch):
    import auralens.probes.collect as collect
    from auralens.probes.collect import LM_SITE, ActivationStore, CollectConfig, collect_activations

    cfg = CollectConfig(chunk_size=2, batch_size=2, max_new_tokens=4, max_steps=2, audio_layers=(0,))
    reference = collect_activations(lm, items, tmp_path / "ref", cfg)
    files = sorted((tmp_path / "ref" / "activations").glob("chunk-*.safetensors"))
    assert [f.name for f in files] == ["chunk-00000.safetensors", "chunk-00001.safetensors", "chunk-00002.safetensors"]
    assert reference.complete and len(reference.rows) == N_ITEMS
    assert reference.rows["row_id"].tolist() == [f"{it.item_id}|cot" for it in items]

    # crash while collecting the second chunk
    real = collect.collect_batch
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(collect, "collect_batch", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        collect_activations(lm, items, tmp_path / "run", cfg)
    index = json.loads((tmp_path / "run" / "activations" / "index.json").read_text())
    assert [c["file"] for c in index["chunks"]] == ["chunk-00000.safetensors"] and not index["complete"]
    with pytest.raises(ProbeError, match="complete collection"):
        ActivationStore(tmp_path / "run").rows
    with pytest.raises(RunFolderError, match="resume"):
        collect_activations(lm, items, tmp_path / "run", cfg)

    # resume: only chunks 1 and 2 are collected (one batch each)
    seen: list[list[str]] = []

    def counting(lm_, batch_items, *args, **kwargs):
        seen.append([it.item_id for it in batch_items])
        return real(lm_, batch_items, *args, **kwargs)

    monkeypatch.setattr(collect, "collect_batch", counting)
    store = collect_activations(lm, items, tmp_path / "run", cfg, resume=True)
    assert seen == [[items[2].item_id, items[3].item_id], [items[4].item_id]]
    assert store.complete
    for position in ("audio_mean", "last_prompt"):
        for layer in store.layers():
            X, rows = store.matrix(LM_SITE, position, layer)
            X_ref, rows_ref = reference.matrix(LM_SITE, position, layer)
            np.testing.assert_array_equal(rows, rows_ref)
            np.testing.assert_allclose(X, X_ref, atol=1e-5, rtol=0)
    X, rows = store.matrix(collect.AUDIO_SITE, "audio_mean", 0)
    assert X.shape == (N_ITEMS, lm.arch.d_audio)
    X, rows = store.matrix(LM_SITE, "step_mean", 0, step=0)
    assert X.shape[0] == rows.size and set(rows.tolist()) <= set(range(N_ITEMS))

    # a different configuration cannot resume this folder
    with pytest.raises(RunFolderError, match="config differs"):
        collect_activations(lm, items, tmp_path / "run", CollectConfig(chunk_size=3), resume=True)
    with pytest.raises(ProbeError, match="step"):
        store.matrix(LM_SITE, "step_mean", 0)
    with pytest.raises(ProbeError, match="layer 9"):
        store.matrix(LM_SITE, "last_prompt", 9)


def test_labels_from_known_scene():
    from auralens.interp.cafe.scenes import Event, Scene
    from auralens.probes.labels import CAFE_ATTRIBUTES, cafe_labels

    def ev(cls, pitch, loud, onset):
        return Event(cls=cls, onset=onset, duration=0.4, loudness_db=-10.0 if loud == "loud" else -28.0,
                     pitch_hz=300.0 if pitch == "low" else 1000.0, pitch_level=pitch, loudness_level=loud)

    scene = Scene(scene_id="t", seed=0, events=(
        ev("noise", "high", "soft", 0.1), ev("tone", "low", "loud", 1.0), ev("clicks", "low", "soft", 2.0),
    )).to_dict()
    lab = cafe_labels(scene)
    assert set(lab) == set(CAFE_ATTRIBUTES)
    assert lab["n_events"] == 3
    assert [lab[f"event{k}_class"] for k in range(1, 5)] == ["noise", "tone", "clicks", None]
    assert (lab["event1_pitch"], lab["event1_loudness"]) == ("high", "soft")
    assert lab["loudness_differs_12"] is True and lab["louder_of_12"] == "second"
    assert lab["pitch_differs_12"] is True and lab["higher_of_12"] == "first"
    assert lab["has_noise"] is True and lab["has_buzz"] is False
    assert lab["order_tone_noise"] == "noise_first" and lab["order_tone_clicks"] == "tone_first"
    assert lab["order_tone_buzz"] is None
    assert lab["n_loud"] == 1

    one = cafe_labels(Scene(scene_id="u", seed=0, events=(ev("tone", "low", "loud", 0.1),)).to_dict())
    assert one["louder_of_12"] is None and one["loudness_differs_12"] is None and one["event2_class"] is None
    same = cafe_labels(Scene(scene_id="v", seed=0, events=(ev("tone", "low", "loud", 0.1), ev("tone", "high", "loud", 1.0))).to_dict())
    assert same["loudness_differs_12"] is False and same["louder_of_12"] is None
    assert same["order_tone_noise"] is None  # tone occurs twice: order undefined
    assert all(v is None for v in cafe_labels(None).values())


def test_metadata_labels_and_table(items):
    from auralens.interp.items import Item
    from auralens.probes.labels import label_support, label_table, metadata_labels

    mmau = Item(item_id="m1", audio="x.wav", question="q ?", choices=("a", "b"), answer="a",
                task="sound", category="", sub_category="Sound-Based Event Recognition",
                meta={"sub-category": "Sound-Based Event Recognition", "difficulty": "easy", "split": ["a"]})
    got = metadata_labels(mmau, ("task", "category", "sub_category", "sub-category", "split", "nothing"))
    assert got == {"task": "sound", "category": None, "sub_category": "Sound-Based Event Recognition",
                   "sub-category": "Sound-Based Event Recognition", "split": "a", "nothing": None}
    table = label_table([*items, mmau], ["n_events", "sub_category"])
    assert table.loc["m1", "n_events"] is None and table.loc["m1", "sub_category"] == "Sound-Based Event Recognition"
    assert table.loc[items[0].item_id, "n_events"] == len(items[0].scene["events"])
    with pytest.raises(ProbeError, match="nonsense"):
        label_table(items, ["nonsense"])
    assert label_support(["a", "a", "b", "b"], [1, 2, 3, 4], 2) is None
    assert "one class" in label_support(["a", "a", None], [1, 2, 3], 2)
    assert "fewer than" in label_support(["a", "b"], [1, 2], 5)


@pytest.mark.parametrize("arch_name", ["qwen2_5_omni_thinker", "audioflamingo3"])
def test_other_architectures(arch_name, items, tmp_path):
    """Tiny random-init models of the other real classes: nnsight collection equals
    output_hidden_states, batches equal single items; Omni's audio encoder (frames of all
    items flattened together) and AF3's (batched by window, two windows per clip here) are
    refused with a clear error instead of being mis-reduced."""
    tiny = pytest.importorskip("auralens.testing.tiny")
    import warnings

    from auralens.interp.capture import position_ids
    from auralens.interp.generation import cast_features, model_inputs
    from auralens.interp.loading import load_model
    from auralens.probes.collect import LM_SITE, CollectConfig, collect_batch, trace_sites

    tiny.save_tiny(arch_name, tmp_path)
    lm = load_model(str(tmp_path), device="cpu", dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4 s cafe clips are longer than the tiny 2 s chunks
        batch = dict(cast_features(lm, model_inputs(lm, items[:3], "cot")))
        if arch_name != "qwen2_5_omni_thinker":  # Omni derives its 3-D rope positions itself
            batch["position_ids"] = position_ids(batch["attention_mask"])
        got = trace_sites(lm, batch, [LM_SITE.format(L=0)])
        with torch.inference_mode():
            ref = lm.model(**batch, output_hidden_states=True).hidden_states
        real = batch["attention_mask"].bool()
        torch.testing.assert_close(got[LM_SITE.format(L=0)][real], ref[1][real], atol=1e-5, rtol=0)

        cfg = CollectConfig(max_new_tokens=4, max_steps=2)
        batched = collect_batch(lm, items[:3], "cot", cfg)
        for i, it in enumerate(items[:3]):
            one = collect_batch(lm, [it], "cot", cfg, generations=[batched.generated[i]])
            for pos in ("audio_mean", "last_prompt"):
                torch.testing.assert_close(batched.lm[pos][i], one.lm[pos][0], atol=1e-5, rtol=0)
        # Omni flattens all items' frames together; AF3 batches its encoder by 2-s window and a 4-s
        # clip is now two windows (long audio is no longer cut to one): neither can be reduced per
        # item without the window -> item map, so both are refused with the site named
        with pytest.raises(ProbeError, match="audio_encoder.blocks.0.hook_resid_post"):
            collect_batch(lm, items[:2], "direct", CollectConfig(positions=("audio_mean",), audio_layers=(0,)))


def test_silence_audio_mode_collects_the_silence_baseline(lm, items, tmp_path):
    """``audio_mode="silence"``: the same prompts with silence of the clip's length; checked
    against output_hidden_states of a plain forward on ``model_inputs(..., "silence")``."""
    from auralens.interp.capture import position_ids
    from auralens.interp.generation import cast_features, model_inputs
    from auralens.probes.collect import CollectConfig, collect_activations, collect_batch

    with pytest.raises(ConfigError, match=r"audio_mode.*'noise'"):
        CollectConfig(audio_mode="noise")
    assert "audio_mode" not in CollectConfig().to_dict()  # older collections still resume
    assert CollectConfig(audio_mode="silence").to_dict()["audio_mode"] == "silence"

    cfg = CollectConfig(positions=("audio_mean", "last_prompt"), audio_mode="silence")
    quiet = collect_batch(lm, items[:3], "direct", cfg)
    real = collect_batch(lm, items[:3], "direct", CollectConfig(positions=("audio_mean", "last_prompt")))
    batch = dict(cast_features(lm, model_inputs(lm, items[:3], "direct", "silence")))
    batch["position_ids"] = position_ids(batch["attention_mask"])
    with torch.inference_mode():
        hs = lm.model(**batch, output_hidden_states=True).hidden_states
    ids = batch["input_ids"]
    for i in range(3):
        audio = (ids[i] == lm.arch.audio_token_id) & batch["attention_mask"][i].bool()
        for L in range(lm.arch.n_layers - 1):  # the last hidden state is after the final norm
            torch.testing.assert_close(quiet.lm["audio_mean"][i, L], hs[L + 1][i][audio].mean(0), atol=1e-5, rtol=0)
            torch.testing.assert_close(quiet.lm["last_prompt"][i, L], hs[L + 1][i, -1], atol=1e-5, rtol=0)
    assert not torch.allclose(quiet.lm["audio_mean"], real.lm["audio_mean"], atol=1e-3)
    # a stored silence collection records its mode, and resuming it as a real one is refused
    collect_activations(lm, items[:2], tmp_path / "q", cfg)
    assert json.loads((tmp_path / "q" / "activations" / "index.json").read_text())["config"]["audio_mode"] == "silence"
    with pytest.raises(RunFolderError, match="config differs"):
        collect_activations(lm, items[:2], tmp_path / "q", CollectConfig(positions=("audio_mean", "last_prompt")),
                            resume=True)
