"""llama.cpp's control-vector convention, without building llama.cpp (``make interop`` runs the
real thing on smol-audio's SmolLM2 decoder).

The reference here is a transcription of what llama.cpp does with a control-vector file
(:func:`llama_cpp_cvec`, from ``common/common.cpp`` ``common_control_vector_load_one``,
``src/llama-adapter.cpp`` ``llama_adapter_cvec::apply`` / ``tensor_for`` and the graph builders'
``cur = build_cvec(cur, il)`` after each block's FFN residual), applied with plain torch hooks on
the decoder blocks, on the file as the ``gguf`` reader reads it.  Checked against it:

- ``direction.N`` is the output of 0-based block ``N`` (transformers ``hidden_states[N + 1]``):
  auralens' export of a ``hook_resid_post`` vector at ``L`` (``N = L``) and of a
  ``hook_resid_pre`` vector at ``L`` (``N = L - 1``) steer exactly as ``apply_vector`` does with
  ``positions="all"``, single and several layers, scaled, and under a layer range; the same
  vector read one block off differs (so the check can fail);
- ``direction.0`` is refused by both (llama.cpp never steers block 0's output);
- the metadata: ``general.architecture`` ``controlvector``, ``controlvector.model_hint`` the
  decoder's architecture (its text config's ``model_type``, ``qwen2`` here, not the
  ``qwen2_audio`` table name), ``controlvector.layer_count`` the number of tensors;
- ``steer fit --site hook_resid_pre`` (its vector is the resid_post fit one layer down);
- the export warning: one stderr line and the report's ``warnings``.
"""

from __future__ import annotations

import contextlib
import json

import gguf
import numpy as np
import pytest
import torch

from auralens.interp.errors import ConfigError, VectorFileError


@pytest.fixture(scope="module")
def lm(small_lm):
    return small_lm


@pytest.fixture(scope="module")
def items():
    from auralens.interp.datasets import load_dataset

    return load_dataset("cafe", n=4, seed=5)


@pytest.fixture(scope="module")
def batch(lm, items):
    from auralens.interp.generation import cast_features, model_inputs

    return dict(cast_features(lm, model_inputs(lm, items[:2], "direct")))


@pytest.fixture(scope="module")
def vec(lm, items):
    from auralens.steering.directions import fit_with_controls

    return fit_with_controls(lm, items, layers=[1, 2], normalize="unit", controls=False)["audio_minus_silence"]


# --- the reference: what llama.cpp does with the file -----------------------------------------
def llama_cpp_cvec(paths_strengths, n_layer: int, layer_range: tuple[int, int] | None = None) -> dict[int, torch.Tensor]:
    """``{il: tensor added to the output of block il}``, as llama.cpp builds it (hand-written: no
    Python library loads a control vector the llama.cpp way)."""
    n_embd, data = -1, np.zeros(0, dtype=np.float32)
    for path, strength in paths_strengths:  # common_control_vector_load: the files summed
        reader = gguf.GGUFReader(path)
        for t in reader.tensors:  # common_control_vector_load_one
            head, _, idx = t.name.partition(".")
            layer_idx = int(idx) if head == "direction" and idx.isdigit() else -1
            if layer_idx < 0:
                raise ValueError("invalid/unparsable direction tensor layer index")
            if layer_idx == 0:
                raise ValueError("invalid (zero) direction tensor layer index")
            if t.tensor_type != gguf.GGMLQuantizationType.F32 or len(t.shape) != 1:
                raise ValueError("invalid direction tensor")
            n_embd = int(t.shape[0]) if n_embd == -1 else n_embd
            if data.size < n_embd * layer_idx:
                data = np.concatenate([data, np.zeros(n_embd * layer_idx - data.size, dtype=np.float32)])
            data[n_embd * (layer_idx - 1): n_embd * layer_idx] += np.asarray(t.data, dtype=np.float32) * np.float32(strength)
    start, end = layer_range if layer_range is not None else (1, n_layer)  # common_init_from_params defaults
    out = {}
    for il in range(1, n_layer):  # llama_adapter_cvec::apply: tensors[il] <- data[n_embd * (il - 1)]
        off = n_embd * (il - 1)
        if off + n_embd <= data.size and start <= il <= end:  # tensor_for: il in [layer_start, layer_end]
            out[il] = torch.from_numpy(data[off: off + n_embd].copy())
    return out


@contextlib.contextmanager
def block_output_hooks(lm, adds: dict[int, torch.Tensor]):
    """``build_cvec(cur, il)``: ``adds[il]`` added to the output of decoder block ``il`` at every position."""
    def hook(il):
        def f(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            h = h + adds[il].to(h.dtype)
            return (h, *output[1:]) if isinstance(output, tuple) else h
        return f
    handles = [lm.arch.decoder_layer(lm.model, il).register_forward_hook(hook(il)) for il in adds]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _logits(lm, batch):
    with torch.no_grad():
        return lm.model(**batch).logits.float()


def _auralens_logits(lm, batch, vec, alpha, layers=None):
    from auralens.steering.apply import apply_vector

    with apply_vector(lm, vec, alpha=alpha, positions="all", layers=layers):
        return _logits(lm, batch)


def _reference_logits(lm, batch, files, layer_range=None, shift=0):
    adds = llama_cpp_cvec(files, lm.arch.n_layers, layer_range)
    adds = {il + shift: v for il, v in adds.items() if 0 <= il + shift < lm.arch.n_layers}
    with block_output_hooks(lm, adds):
        return _logits(lm, batch)


def _maxdiff(a, b) -> float:
    return float((a - b).abs().max())


# --- the index convention -----------------------------------------------------------------------
def test_direction_n_is_the_output_of_block_n(lm, batch, vec, tmp_path):
    from auralens.steering.formats import export

    path = export(vec, tmp_path / "v.gguf")
    names = sorted(t.name for t in gguf.GGUFReader(path).tensors)
    assert names == ["direction.1", "direction.2"]  # resid_post at L -> direction.L
    plain = _logits(lm, batch)
    for alpha in (1.0, 2.5):  # --control-vector (strength 1) and --control-vector-scaled FILE:2.5
        ours = _auralens_logits(lm, batch, vec, alpha)
        ref = _reference_logits(lm, batch, [(path, alpha)])
        assert _maxdiff(ours, plain) > 1e-2  # the vector does something
        assert _maxdiff(ours, ref) <= 1e-6
        off = _reference_logits(lm, batch, [(path, alpha)], shift=-1)  # added one block earlier
        assert _maxdiff(off, ref) > 1e-2
    # --control-vector-layer-range 2 2: only direction.2
    ours = _auralens_logits(lm, batch, vec, 1.0, layers=[2])
    assert _maxdiff(ours, _reference_logits(lm, batch, [(path, 1.0)], layer_range=(2, 2))) <= 1e-6
    assert _maxdiff(ours, _auralens_logits(lm, batch, vec, 1.0)) > 1e-3


def test_single_layer_is_hidden_states_n_plus_one(lm, batch, vec, tmp_path):
    """Steering direction.1 moves block 1's output (transformers' hidden_states[2], which is what
    block 2 receives) by exactly the direction at every position and leaves block 0's output
    (hidden_states[1], block 1's input) alone.  transformers records hidden_states before a
    forward hook edits a block's output, so the steered values are read as the next block's input."""
    from auralens.steering.apply import apply_vector
    from auralens.steering.formats import export

    one = vec.__class__(**{**_fields(vec), "directions": {1: vec.directions[1]}})
    path = export(one, tmp_path / "one.gguf")
    (t,) = gguf.GGUFReader(path).tensors
    n = int(t.name.split(".")[1])
    assert n == 1 and np.array_equal(np.asarray(t.data), vec.directions[1].numpy())

    def run(steer: bool):
        seen = {}
        handles = [lm.arch.decoder_layer(lm.model, il).register_forward_pre_hook(
            lambda m, args, il=il: seen.__setitem__(il, args[0].detach().clone())) for il in (n, n + 1)]
        try:
            with torch.no_grad(), (apply_vector(lm, one, alpha=1.0, positions="all") if steer
                                   else contextlib.nullcontext()):
                hs = lm.model(**batch, output_hidden_states=True).hidden_states
        finally:
            for h in handles:
                h.remove()
        return hs, seen

    hs, plain = run(False)
    _, steered = run(True)
    assert torch.equal(hs[n], plain[n]) and torch.equal(hs[n + 1], plain[n + 1])  # hidden_states[k] = input of block k
    assert torch.equal(plain[n], steered[n])
    moved = steered[n + 1] - plain[n + 1]
    torch.testing.assert_close(moved, vec.directions[1].expand_as(moved), atol=1e-6, rtol=0)
    ref = _reference_logits(lm, batch, [(path, 1.0)])
    assert _maxdiff(_auralens_logits(lm, batch, one, 1.0), ref) <= 1e-6


def test_resid_pre_is_written_one_block_down(lm, batch, vec, tmp_path):
    import dataclasses

    from auralens.steering.formats import export
    from auralens.steering.vector import SITE_PATTERNS

    pre = dataclasses.replace(vec, site=SITE_PATTERNS["hook_resid_pre"], directions={2: vec.directions[1]})
    path = export(pre, tmp_path / "pre.gguf")
    assert [t.name for t in gguf.GGUFReader(path).tensors] == ["direction.1"]  # input of 2 = output of 1
    assert _maxdiff(_auralens_logits(lm, batch, pre, 1.5), _reference_logits(lm, batch, [(path, 1.5)])) <= 1e-6


def test_direction_zero_is_refused_by_both(lm, vec, tmp_path):
    import dataclasses

    from auralens.steering.formats import export, load_gguf
    from auralens.steering.vector import SITE_PATTERNS

    at0 = dataclasses.replace(vec, directions={0: vec.directions[1]})
    with pytest.raises(VectorFileError, match="direction.0"):
        export(at0, tmp_path / "a.gguf")
    pre1 = dataclasses.replace(vec, site=SITE_PATTERNS["hook_resid_pre"], directions={1: vec.directions[1]})
    with pytest.raises(VectorFileError, match="direction.0"):
        export(pre1, tmp_path / "b.gguf")
    assert not (tmp_path / "a.gguf").exists() and not (tmp_path / "b.gguf").exists()
    w = gguf.GGUFWriter(tmp_path / "zero.gguf", "controlvector")  # as another tool could write it
    w.add_string("controlvector.model_hint", "qwen2")
    w.add_uint32("controlvector.layer_count", 1)
    w.add_tensor("direction.0", np.ones(lm.arch.d_model, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="zero"):
        llama_cpp_cvec([(tmp_path / "zero.gguf", 1.0)], lm.arch.n_layers)
    with pytest.raises(VectorFileError, match="N >= 1"):
        load_gguf(tmp_path / "zero.gguf")


def test_metadata_is_what_llama_cpp_and_repeng_expect(lm, vec, tmp_path):
    from auralens.steering.formats import export_report, llama_cpp_arch

    report = export_report(vec, tmp_path / "v.gguf")
    r = gguf.GGUFReader(tmp_path / "v.gguf")
    assert r.get_field("general.architecture").contents() == "controlvector"
    # the decoder's own architecture, read independently from the loaded model's text config
    decoder = lm.arch.text_config(lm.model).model_type
    assert decoder == "qwen2" != vec.architecture
    assert r.get_field("controlvector.model_hint").contents() == decoder == report["model_hint"]
    field = r.get_field("controlvector.layer_count")
    assert field.types == [gguf.GGUFValueType.UINT32]  # what repeng's export_gguf writes
    assert field.contents() == len(r.tensors) == report["layer_count"] == 2
    assert report["directions"] == {"direction.1": 1, "direction.2": 2}
    # smol-audio is a Qwen2-Audio class around a llama decoder; a recorded model type wins
    assert llama_cpp_arch(vec.__class__(**{**_fields(vec), "model_id": "smol-audio"})) == "llama"
    assert llama_cpp_arch(vec.__class__(**{**_fields(vec), "extra": {"decoder_model_type": "mistral"}})) == "mistral"
    export_report(vec, tmp_path / "h.gguf", model_hint="llama")
    assert gguf.GGUFReader(tmp_path / "h.gguf").get_field("controlvector.model_hint").contents() == "llama"
    with pytest.raises(ConfigError, match="model_hint: only a GGUF"):
        export_report(vec, tmp_path / "h.npz", model_hint="llama")
    assert not (tmp_path / "h.npz").exists()


def _fields(vec):
    return {k: getattr(vec, k) for k in ("model_id", "architecture", "d_model", "n_layers", "method",
                                         "data_fingerprint", "site", "extra", "directions")}


def test_export_warns_how_llama_cpp_applies_it(vec, tmp_path):
    from typer.testing import CliRunner

    from auralens.cli import app
    from auralens.steering.formats import export, export_report, llama_cpp_notes

    notes = llama_cpp_notes(vec)
    assert len(notes) == 1 and notes[0].startswith("positions:") and "'last_prompt'" in notes[0]
    assert llama_cpp_notes(vec.__class__(**{**_fields(vec), "extra": {**vec.extra, "apply_positions": "all"}})) == []
    scaled = vec.__class__(**{**_fields(vec), "default_alpha": 4.0})
    assert any("--control-vector-scaled FILE:4" in n for n in llama_cpp_notes(scaled))
    assert export_report(vec, tmp_path / "v.npz")["warnings"] == []  # only GGUF is llama.cpp's
    src = export(vec, tmp_path / "v.safetensors")
    res = CliRunner().invoke(app, ["export", str(src), "--format", "gguf", "--out", str(tmp_path / "c.gguf"), "--json"])
    assert res.exit_code == 0, res.output
    warn = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "every token position" in warn[0] and len(res.stderr.splitlines()) == 1
    report = json.loads(res.stdout)
    assert report["warnings"] == notes and report["model_hint"] == "qwen2" and report["format"] == "gguf"


# --- the 'all' positions mode ---------------------------------------------------------------
def test_all_positions_steers_prompt_and_generated_tokens(lm, batch, vec, tmp_path):
    """``generate`` under positions='all' equals generate under llama.cpp's rule (the block-output
    hooks of the reference), token for token and logit for logit."""
    from auralens.steering.apply import apply_vector, steer_tensor
    from auralens.steering.formats import export

    h, d = torch.zeros(2, 5, 3), torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(steer_tensor(h, d, "all"), d.expand(2, 5, 3))
    assert torch.equal(steer_tensor(h[:, :1], d, "all"), d.expand(2, 1, 3))
    path = export(vec, tmp_path / "v.gguf")
    kw = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True,
              pad_token_id=lm.tokenizer.pad_token_id)
    with torch.no_grad():
        with apply_vector(lm, vec, alpha=2.0, positions="all"):
            ours = lm.model.generate(**batch, **kw)
        with block_output_hooks(lm, llama_cpp_cvec([(path, 2.0)], lm.arch.n_layers)):
            ref = lm.model.generate(**batch, **kw)
        with apply_vector(lm, vec, alpha=2.0, positions="both"):
            both = lm.model.generate(**batch, **kw)
    assert torch.equal(ours.sequences, ref.sequences)
    assert max(_maxdiff(a.float(), b.float()) for a, b in zip(ours.logits, ref.logits)) <= 1e-6
    assert _maxdiff(ours.logits[0].float(), both.logits[0].float()) > 1e-3  # 'both' is not llama.cpp's rule


# --- steer fit --site hook_resid_pre ----------------------------------------------------------
def test_steer_fit_accepts_resid_pre(lm, small_micro_dir, tmp_path):
    from auralens.steering.formats import load_vector
    from auralens.steering.stage_fit import SteerFitConfig, stage_steer_fit
    from auralens.steering.vector import SITE_PATTERNS

    common = dict(model=str(small_micro_dir), data="cafe", n=4, seed=1, batch_size=4, lm=lm)
    pre = stage_steer_fit(**common, site="hook_resid_pre", layers=(2,), out_vector=tmp_path / "pre.gguf")
    post = stage_steer_fit(**common, layers=(1,), out_vector=tmp_path / "post.safetensors")
    assert pre.site == SITE_PATTERNS["hook_resid_pre"] and pre.layers == (2,)
    assert torch.equal(pre.directions[2], post.directions[1])  # input of layer 2 = output of layer 1
    assert pre.extra["decoder_model_type"] == "qwen2"
    back = load_vector(tmp_path / "pre.gguf")
    assert back.site == pre.site and back.layers == (2,) and torch.equal(back.directions[2], pre.directions[2])
    assert [t.name for t in gguf.GGUFReader(tmp_path / "pre.gguf").tensors] == ["direction.1"]
    with pytest.raises(ConfigError, match="hook_resid_pre, layer 0"):
        SteerFitConfig(site="hook_resid_pre", layers=(0,), out_vector=tmp_path / "x.gguf")
    with pytest.raises(ConfigError, match="head-restricted"):
        SteerFitConfig(site="resid_pre", heads_from="1:0", out_vector=tmp_path / "x.gguf")
    with pytest.raises(ConfigError, match="site: expected one of"):
        SteerFitConfig(site="lm.blocks.1.hook_resid_pre", out_vector=tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
