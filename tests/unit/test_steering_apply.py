"""Steering during generate: exactness, the two engines, hook hygiene, input errors, adaptive alpha.

- alpha = 0 leaves generation bit-identical (tokens and every step's logits), both engines;
- torch hooks and nnsight give identical tokens and logits (every position mode, every site,
  adaptive alpha, and on the tiny models of the other architectures);
- ``last_prompt`` changes the output of the hooked layer by exactly alpha * v at the last prompt
  position and by nothing elsewhere; at the last layer the first token's logits are exactly
  lm_head(norm(h + alpha * v)); ``generated`` leaves the prefill alone and edits decode steps;
- hooks (and the generate shadow) are gone after the block, also when it raises;
- bad input raises before any forward runs;
- adaptive alpha: gain 0 equals constant alpha; the live gains equal the formula applied to the
  yields the recorder computes at the end (an independent path).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from auralens.interp.errors import ConfigError, VectorFileError
from auralens.testing.model_checks import hook_count

ALPHA = 25.0


@pytest.fixture(scope="module")
def lm(small_lm):
    return small_lm


@pytest.fixture(scope="module")
def items():
    from auralens.interp.datasets import load_dataset

    return load_dataset("cafe", n=4, seed=3)


@pytest.fixture(scope="module")
def batch(lm, items):
    from auralens.interp.generation import cast_features, model_inputs

    b = dict(cast_features(lm, model_inputs(lm, items[:3], "direct")))
    assert int((b["attention_mask"] == 0).sum()) > 0  # left-padded
    return b


@pytest.fixture(scope="module")
def vecs(lm, items):
    from auralens.steering.directions import fit_with_controls

    resid = fit_with_controls(lm, items, layers=[0, 1, 2], normalize="unit", controls=False)["audio_minus_silence"]
    z = fit_with_controls(lm, items, site="attn.hook_z", heads=[(1, 0), (1, 3)], normalize="unit",
                          controls=False)["audio_minus_silence"]
    return {"resid": resid, "z": z}


def _kw(lm, n=5):
    return dict(max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True,
                pad_token_id=lm.tokenizer.pad_token_id)


def _gen(lm, batch, n=5):
    with torch.inference_mode():
        return lm.model.generate(**batch, **_kw(lm, n))


def _same(a, b) -> bool:
    return torch.equal(a.sequences, b.sequences) and len(a.logits) == len(b.logits) and all(
        torch.equal(x, y) for x, y in zip(a.logits, b.logits)
    )


@pytest.mark.parametrize("backend", ["torch", "nnsight"])
def test_alpha_zero_is_bit_identical(lm, batch, vecs, backend):
    from auralens.steering.apply import apply_vector

    base = _gen(lm, batch)
    with apply_vector(lm, vecs["resid"], alpha=0.0, positions="both", backend=backend) as s:
        out = _gen(lm, batch)
    assert _same(out, base)
    assert s.n_edits > 0  # the hooks ran and added zeros


@pytest.mark.parametrize("positions", ["last_prompt", "generated", "both"])
def test_torch_and_nnsight_identical(lm, batch, vecs, positions):
    from auralens.steering.apply import apply_vector

    base = _gen(lm, batch)
    for key in ("resid", "z"):
        outs = {}
        for backend in ("torch", "nnsight"):
            with apply_vector(lm, vecs[key], alpha=ALPHA, positions=positions, backend=backend) as s:
                outs[backend] = _gen(lm, batch)
            assert s.n_edits > 0
        assert _same(outs["torch"], outs["nnsight"])
        assert not all(torch.equal(x, y) for x, y in zip(outs["torch"].logits, base.logits))


def test_steering_generate_method_and_sugar(lm, batch, vecs):
    from auralens.steering.apply import apply_vector, steered_generate

    with apply_vector(lm, vecs["resid"], alpha=ALPHA, positions="both") as s:
        with torch.inference_mode():
            a = s.generate(**batch, **_kw(lm))
    with torch.inference_mode():
        b = steered_generate(lm, vecs["resid"], batch, alpha=ALPHA, positions="both", backend="nnsight", **_kw(lm))
    assert _same(a, b)


def _capture(lm, layer):
    """Register (after the steering hooks) a hook keeping every output of ``layer``."""
    outs = []
    h = lm.arch.decoder_layer(lm.model, layer).register_forward_hook(lambda m, a, o: outs.append(o.detach().clone()))
    return outs, h


def test_last_prompt_adds_exactly_alpha_v_at_the_last_position(lm, batch, vecs):
    from auralens.steering.apply import apply_vector

    vec = vecs["resid"]
    L = 1
    ref, h = _capture(lm, L)
    try:
        _gen(lm, batch, n=2)
    finally:
        h.remove()
    with apply_vector(lm, vec, alpha=ALPHA, positions="last_prompt", layers=[L]):
        got, h = _capture(lm, L)  # registered after the steering hook: sees the steered output
        try:
            _gen(lm, batch, n=2)
        finally:
            h.remove()
    diff = got[0] - ref[0]  # the prefill: [batch, prompt, d_model]
    expected = ALPHA * vec.directions[L]
    for b in range(diff.shape[0]):
        torch.testing.assert_close(diff[b, -1], expected, atol=2e-5, rtol=1e-5)
    assert torch.equal(diff[:, :-1], torch.zeros_like(diff[:, :-1]))  # nothing else moved


def test_last_prompt_first_token_logits_exact_at_last_layer(lm, batch, vecs):
    """At the last decoder layer, the first generated token's logits are exactly
    lm_head(final_norm(h_last + alpha * v))."""
    from auralens.interp.arch import get_attr_path
    from auralens.steering.apply import apply_vector

    vec = vecs["resid"]
    L = lm.arch.n_layers - 1
    ref, h = _capture(lm, L)
    try:
        base = _gen(lm, batch, n=2)
    finally:
        h.remove()
    with apply_vector(lm, vec, alpha=ALPHA, positions="last_prompt", layers=[L]):
        out = _gen(lm, batch, n=2)
    norm = get_attr_path(lm.model, lm.arch.table.final_norm)
    with torch.inference_mode():
        expected = lm.model.lm_head(norm(ref[0][:, -1] + ALPHA * vec.directions[L]))
        unsteered = lm.model.lm_head(norm(ref[0][:, -1]))
    torch.testing.assert_close(base.logits[0], unsteered, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits[0], expected, atol=1e-5, rtol=1e-5)
    assert float((out.logits[0] - base.logits[0]).abs().max()) > 1e-2


def test_generated_positions_leave_the_prefill_alone(lm, batch, vecs):
    from auralens.steering.apply import apply_vector

    vec = vecs["resid"]
    L = 1
    ref, h = _capture(lm, L)
    try:
        base = _gen(lm, batch, n=3)
    finally:
        h.remove()
    with apply_vector(lm, vec, alpha=ALPHA, positions="generated", layers=[L]):
        got, h = _capture(lm, L)
        try:
            out = _gen(lm, batch, n=3)
        finally:
            h.remove()
    assert torch.equal(got[0], ref[0])  # prefill untouched
    torch.testing.assert_close(out.logits[0], base.logits[0], atol=0, rtol=0)  # first token too
    # first decoding step reads the same (unsteered) first token: its layer-L output moved by alpha*v
    assert got[1].shape[1] == 1
    diff = got[1][:, 0] - ref[1][:, 0]
    for b in range(diff.shape[0]):
        torch.testing.assert_close(diff[b], ALPHA * vec.directions[L], atol=2e-5, rtol=1e-5)


def test_steer_tensor_adds_one_direction_or_one_per_row():
    """``delta`` is ``[width]`` (every row) or ``[batch, width]`` (per-input and folded
    steering); under pytest a per-row delta whose batch disagrees with ``h``'s is refused."""
    from jaxtyping import TypeCheckError

    from auralens.steering.apply import steer_tensor

    g = torch.Generator().manual_seed(0)
    prefill, step = torch.randn(3, 4, 8, generator=g), torch.randn(3, 1, 8, generator=g)
    one, rows, scale = torch.randn(8, generator=g), torch.randn(3, 8, generator=g), torch.tensor([0.0, 1.0, 2.0])
    for delta in (one, rows):
        out = steer_tensor(prefill, delta, "last_prompt")
        assert torch.equal(out[:, :-1], prefill[:, :-1]) and torch.equal(out[:, -1], prefill[:, -1] + delta)
        assert torch.equal(steer_tensor(step, delta, "generated", scale), step + (scale[:, None] * delta)[:, None])
        assert steer_tensor(step, delta, "last_prompt") is step
    with pytest.raises(TypeCheckError, match="steer_tensor"):
        steer_tensor(prefill, rows[:2], "last_prompt")


def test_batched_equals_one_by_one(lm, items, vecs):
    from auralens.interp.generation import cast_features, model_inputs
    from auralens.steering.apply import apply_vector

    with apply_vector(lm, vecs["resid"], alpha=ALPHA, positions="both", layers=[1]):
        full = _gen(lm, dict(cast_features(lm, model_inputs(lm, items[:3], "direct"))), n=4)
        for i in range(3):
            one = _gen(lm, dict(cast_features(lm, model_inputs(lm, items[i : i + 1], "direct"))), n=4)
            n = one.sequences.shape[1]
            assert torch.equal(full.sequences[i, -4:], one.sequences[0, n - 4 :])
            for x, y in zip(full.logits, one.logits):
                torch.testing.assert_close(x[i], y[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "nnsight"])
def test_hooks_removed_even_on_exception(lm, batch, vecs, backend):
    from auralens.steering.apply import AdaptiveAlpha, apply_vector

    before = hook_count(lm.model)
    for adaptive in (None, AdaptiveAlpha(heads=[(0, 1)])):
        with pytest.raises(RuntimeError, match="boom"):
            with apply_vector(lm, vecs["resid"], alpha=ALPHA, positions="both", backend=backend, adaptive=adaptive):
                assert hook_count(lm.model) > before or backend == "nnsight"
                _gen(lm, batch, n=2)
                raise RuntimeError("boom")
        assert hook_count(lm.model) == before
        assert "generate" not in lm.model.__dict__
    base = _gen(lm, batch)
    with apply_vector(lm, vecs["resid"], alpha=0.0, backend=backend):
        pass
    assert _same(_gen(lm, batch), base)


def test_bad_input_fails_before_generation(lm, batch, vecs):
    from dataclasses import replace

    from auralens.steering.apply import AdaptiveAlpha, apply_vector

    calls = []
    h = lm.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    vec = vecs["resid"]
    try:
        cases = [
            (dict(vec=replace(vec, architecture="audioflamingo3")), VectorFileError, "architecture"),
            (dict(vec=replace(vec, d_model=lm.arch.d_model * 2,
                              directions={0: torch.zeros(lm.arch.d_model * 2)})), VectorFileError, "d_model"),
            (dict(vec=replace(vec, n_layers=12, directions={9: vec.directions[0]})), VectorFileError, "layers"),
            (dict(alpha=float("nan")), ConfigError, "alpha"),
            (dict(alpha=float("inf")), ConfigError, "alpha"),
            (dict(alpha="2"), ConfigError, "alpha"),
            (dict(positions="everywhere"), ConfigError, "positions"),
            (dict(backend="tl"), ConfigError, "backend"),
            (dict(layers=[5]), ConfigError, "layers"),
            (dict(adaptive=AdaptiveAlpha(heads=[(0, 7)])), ConfigError, "heads"),
        ]
        for kw, exc, msg in cases:
            args = {"vec": vec, "alpha": 1.0, "positions": "both", **kw}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with pytest.raises(exc, match=msg):
                    with apply_vector(lm, args.pop("vec"), **args):
                        _gen(lm, batch)
        assert calls == []
        with pytest.raises(ConfigError, match="gain"):
            AdaptiveAlpha(heads=[(0, 1)], gain=-1.0)
        with apply_vector(lm, vec, alpha=1.0) as s:
            with pytest.raises(ConfigError, match="use_cache"):
                s.generate(**batch, max_new_tokens=2, use_cache=False)
        assert calls == []
    finally:
        h.remove()


def test_adaptive_gain_zero_equals_constant(lm, batch, vecs):
    from auralens.steering.apply import AdaptiveAlpha, apply_vector

    with apply_vector(lm, vecs["resid"], alpha=ALPHA, positions="both") as s:
        const = _gen(lm, batch)
    with apply_vector(lm, vecs["resid"], alpha=ALPHA, positions="both",
                      adaptive=AdaptiveAlpha(heads=[(0, 1), (2, 3)], gain=0.0)) as s:
        gated = _gen(lm, batch)
    assert _same(gated, const)
    assert all(torch.equal(g, torch.ones_like(g)) for g in s.gains[0])


def test_adaptive_gains_follow_the_recorded_yields(lm, batch, vecs):
    from auralens.steering.apply import AdaptiveAlpha, apply_vector

    heads = ((0, 1), (2, 3), (2, 0))
    gain, n = 4.0, 5
    outs = {}
    for backend in ("torch", "nnsight"):
        with apply_vector(lm, vecs["resid"], alpha=ALPHA, positions="generated", backend=backend,
                          adaptive=AdaptiveAlpha(heads=heads, gain=gain)) as s:
            outs[backend] = _gen(lm, batch, n=n)
        assert len(s.gains) == 1 and len(s.gains[0]) == n - 1  # one per decoding step
        rec = s.yields[0]
        assert rec.n_steps == n
        y = torch.stack([rec.total[:, :, rec.layers.index(L), h] for L, h in heads], -1).mean(-1)  # [batch, step]
        for t, g in enumerate(s.gains[0], start=1):
            ref = 1 + gain * (1 - y[:, t - 1] / y[:, 0]).clamp(0, 1)
            torch.testing.assert_close(g, ref.cpu(), atol=1e-5, rtol=1e-5)
        assert torch.equal(s.gains[0][0], torch.ones(3))  # step 1 reads the last prompt token: g = 1
    assert _same(outs["torch"], outs["nnsight"])


def test_adaptive_refuses_plain_forwards(lm, batch, vecs):
    from auralens.steering.apply import AdaptiveAlpha, apply_vector

    with apply_vector(lm, vecs["resid"], alpha=1.0, adaptive=AdaptiveAlpha(heads=[(0, 1)])):
        with pytest.raises(ConfigError, match="generate"):
            with torch.inference_mode():
                lm.model(**batch)


@pytest.fixture(scope="module", params=["qwen2_5_omni_thinker", "audioflamingo3"])
def tiny(request, tmp_path_factory):
    from auralens.interp.loading import load_model
    from auralens.testing.tiny import save_tiny

    folder = tmp_path_factory.mktemp(request.param)
    save_tiny(request.param, folder)
    return load_model(str(folder), device="cpu", dtype="float32")


def test_engines_agree_on_other_architectures(tiny):
    from auralens.steering.apply import apply_vector
    from auralens.steering.vector import SteeringVector, fingerprint
    from auralens.testing.tiny import tiny_batch

    arch = tiny.arch
    g = torch.Generator().manual_seed(0)
    vec = SteeringVector(
        directions={L: torch.randn(arch.d_model, generator=g) for L in range(arch.n_layers)},
        model_id=tiny.model_id, architecture=arch.name, d_model=arch.d_model, n_layers=arch.n_layers,
        method="random_direction", data_fingerprint=fingerprint("tiny"),
    )
    b = {k: v for k, v in tiny_batch(tiny.processor).items()}
    kw = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True,
              pad_token_id=tiny.tokenizer.pad_token_id, **arch.table.generate_kwargs)
    with torch.inference_mode():
        base = tiny.model.generate(**b, **kw)
        outs = {}
        for backend in ("torch", "nnsight"):
            with apply_vector(tiny, vec, alpha=3.0, positions="both", backend=backend):
                outs[backend] = tiny.model.generate(**b, **kw)
    assert _same(outs["torch"], outs["nnsight"])
    assert not _same(outs["torch"], base)


def test_answer_mask_arms_after_the_marker_in_generated_tokens(lm):
    from auralens.steering.apply import AnswerMask

    m = AnswerMask(lm)
    tok = lm.tokenizer
    gen = tok("answer : chirp up", add_special_tokens=False)["input_ids"]
    other = tok("sound one is noise", add_special_tokens=False)["input_ids"]
    m.on_forward(None, (), {"input_ids": torch.zeros(2, 7, dtype=torch.long)})  # prefill: reset
    armed_at = None
    for step in range(min(len(gen), len(other))):
        m.on_forward(None, (), {"input_ids": torch.tensor([[gen[step]], [other[step]]])})
        if armed_at is None and bool(m.armed[0]):
            armed_at = step
        assert not bool(m.armed[1])  # a row that never writes the marker is never steered
    assert armed_at is not None and tok.decode(gen[: armed_at + 1]).replace(" ", "").endswith("answer:")
    assert tok.decode(gen[:armed_at]).strip().endswith("answer")  # not before the marker is complete
    m.on_forward(None, (), {"input_ids": torch.zeros(2, 5, dtype=torch.long)})  # a new generate call
    assert not bool(m.armed.any())


@pytest.mark.parametrize("backend", ["torch", "nnsight"])
def test_answer_positions_steer_only_rows_past_the_marker(lm, batch, vecs, backend, monkeypatch):
    """Rows that wrote the marker are steered from the step that reads it on; other rows are
    bit-identical to the unsteered run.  (The untrained model never writes ``answer :``; row 0 is
    armed once it has two generated tokens, as if they were ``answer :``.)"""
    import auralens.steering.apply as apply_mod

    orig = apply_mod.AnswerMask.on_forward

    def on_forward(self, module, args, kwargs):
        orig(self, module, args, kwargs)
        if self.history and len(self.history[0]) >= 2:
            self.armed[0] = True

    monkeypatch.setattr(apply_mod.AnswerMask, "on_forward", on_forward)
    base = _gen(lm, batch, n=5)
    with apply_mod.apply_vector(lm, vecs["resid"], alpha=ALPHA, positions="answer", layers=[1],
                                backend=backend) as s:
        with torch.inference_mode():
            out = s.generate(**batch, **_kw(lm, 5))
    assert s.n_edits > 0
    for t in range(2):  # the prefill and the step reading the first generated token: never steered
        assert torch.equal(out.logits[t], base.logits[t])
    assert not torch.equal(out.logits[2][0], base.logits[2][0])  # the step reading the marker's end
    assert torch.equal(out.sequences[1:], base.sequences[1:])  # rows without the marker: untouched
    assert all(torch.equal(a[1:], b[1:]) for a, b in zip(out.logits, base.logits))
