"""Per-input steering with the real pass folded into the generation's prefill.

``PerInput(vec)`` (``fold_real=True``, the default where exact: one steered layer, a
residual-stream vector read at the last prompt token) runs only the silence forward per batch
and forms ``s(x) = h_L(real) - h_L(silence)`` from the generation's own prefill
(:class:`auralens.steering.apply.FoldedRows`).  Against the two-pass path (``fold_real=False``), on the
trained ``micro`` model and the small untrained one, for batched left-padded rows of different
prompt lengths and every position mode (and the matched random control):

- the same generated token ids and the same steered hidden states at the steered layer (1e-5);
- exactly one model forward fewer per batch (counted with a forward pre-hook on the model), in
  ``apply_vector`` and through ``run_sweep`` (what ``steer eval`` runs);
- several layers (or other fit positions) keep the two-pass path; misuse is refused.
"""

from __future__ import annotations

import pytest
import torch

from auralens.interp.errors import ConfigError

MODES = ("both", "last_prompt", "generated", "answer")


@pytest.fixture(scope="module")
def micro_lm():
    from auralens.interp.loading import load_model

    return load_model("micro", device="cpu", dtype="float32")


@pytest.fixture(scope="module", params=["micro", "small"])
def setup(request, small_lm, micro_lm):
    """(lm, vector at the last layer (unit-normalised), dev items of different prompt lengths, batch)."""
    from auralens.interp.datasets import load_dataset
    from auralens.interp.generation import cast_features, model_inputs
    from auralens.steering.directions import audio_minus_silence

    lm = micro_lm if request.param == "micro" else small_lm
    L = lm.arch.n_layers - 1
    vec = audio_minus_silence(lm, load_dataset("cafe-conflict:calibration", n=4), layers=[L], normalize="unit")
    items = load_dataset("cafe-conflict:dev", n=3)
    batch = cast_features(lm, model_inputs(lm, items, "direct"))
    lengths = batch["attention_mask"].sum(-1)
    assert len(set(lengths.tolist())) > 1, "expected rows of different prompt lengths (left padding)"
    return request.param, lm, vec, items, batch


class _Count:
    """Forwards of ``model`` (a forward pre-hook: also counts forwards the capture stops early)."""

    def __init__(self, model):
        self.n = 0
        self.h = model.register_forward_pre_hook(self)

    def __call__(self, *args):
        self.n += 1

    def close(self):
        self.h.remove()


def _steered(lm, vec, items, batch, pi, *, alpha, positions, backend="torch"):
    """Generate with ``pi``'s per-row directions; (sequences, logits, layer-L outputs per forward, forwards)."""
    from auralens.interp.arch import site_name
    from auralens.interp.capture import site_hooks
    from auralens.steering.apply import apply_vector

    L = vec.layers[0]
    count = _Count(lm.model)
    seen: list[torch.Tensor] = []
    try:
        rows = pi.rows(lm, items, [L], "direct", 8)
        with torch.inference_mode(), apply_vector(lm, vec, alpha=alpha, positions=positions, layers=[L],
                                                  per_row=rows, backend=backend) as steer:
            # registered after the steering hook: sees the steered output of layer L
            point = lm.arch.hook_point(site_name(L, "hook_resid_post"))
            with site_hooks(lm.model, [(point, lambda h: seen.append(h.detach().clone()))]):
                out = lm.model.generate(**batch, max_new_tokens=6, do_sample=False, output_logits=True,
                                        return_dict_in_generate=True, pad_token_id=lm.tokenizer.pad_token_id)
    finally:
        count.close()
    return out.sequences, out.logits, seen, count.n, steer.n_edits


@pytest.mark.parametrize("positions", MODES)
def test_folded_equals_two_pass(setup, positions):
    from auralens.steering.apply import FoldedRows
    from auralens.steering.evaluate import PerInput

    name, lm, vec, items, batch = setup
    L = vec.layers[0]
    folded, two = PerInput(vec), PerInput(vec, fold_real=False)
    assert folded.folds([L]) and folded.extra_forwards([L]) == 1 and two.extra_forwards([L]) == 2
    assert isinstance(folded.rows(lm, items, [L], "direct", 8), FoldedRows)
    seq_f, log_f, h_f, n_f, e_f = _steered(lm, vec, items, batch, folded, alpha=4.0, positions=positions)
    seq_t, log_t, h_t, n_t, e_t = _steered(lm, vec, items, batch, two, alpha=4.0, positions=positions)
    assert torch.equal(seq_f, seq_t)
    assert len(h_f) == len(h_t) and len(h_f) >= 2
    for a, b in zip(h_f, h_t):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for a, b in zip(log_f, log_t):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert n_t - n_f == 1  # one batch: the real forward is the generation's prefill
    assert e_f == e_t
    if positions != "answer" or name == "micro":  # the untrained model never writes "answer :"
        assert e_f > 0  # something was steered: the comparison is not vacuous


def test_folded_random_control_and_nnsight(setup):
    """The matched random control (per-item norm of s(x)) folds the same way; so does nnsight."""
    from auralens.steering.evaluate import PerInput

    _, lm, vec, items, batch = setup
    a = _steered(lm, vec, items, batch, PerInput(vec, random_seed=3), alpha=-3.0, positions="both")
    b = _steered(lm, vec, items, batch, PerInput(vec, random_seed=3, fold_real=False), alpha=-3.0, positions="both")
    assert torch.equal(a[0], b[0]) and b[3] - a[3] == 1
    for x, y in zip(a[2], b[2]):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    c = _steered(lm, vec, items, batch, PerInput(vec), alpha=4.0, positions="both", backend="nnsight")
    d = _steered(lm, vec, items, batch, PerInput(vec, fold_real=False), alpha=4.0, positions="both", backend="nnsight")
    assert torch.equal(c[0], d[0])
    for x, y in zip(c[1], d[1]):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_run_sweep_folds_one_forward_fewer_per_batch(setup):
    """What ``steer eval`` runs: same rows, one forward fewer per batch of per-input steering."""
    from auralens.steering.evaluate import PerInput, SweepConfig, run_sweep

    _, lm, vec, items, _ = setup
    cfg = SweepConfig(betas=(0.0, 4.0), positions=("both",), max_new_tokens=4, batch_size=2, n_boot=10)
    got = {}
    for fold in (True, False):
        count = _Count(lm.model)
        try:
            got[fold] = (run_sweep(lm, items, {"per_input": PerInput(vec, fold_real=fold)}, cfg, progress=False),
                         count.n)
        finally:
            count.close()
    n_batches = 2  # 3 items, batches of 2
    assert got[False][1] - got[True][1] == n_batches
    cols = ["row_id", "prediction", "correct"]
    assert got[True][0][cols].reset_index(drop=True).equals(got[False][0][cols].reset_index(drop=True))


def test_two_pass_kept_where_folding_is_not_exact(small_lm):
    from auralens.compare_systems import Steer as _Steer
    from auralens.interp.datasets import load_dataset
    from auralens.steering.directions import audio_minus_silence, can_fold
    from auralens.steering.evaluate import PerInput

    lm = small_lm
    cal = load_dataset("cafe-conflict:calibration", n=2)
    vec2 = audio_minus_silence(lm, cal, layers=[0, lm.arch.n_layers - 1])
    items = load_dataset("cafe-conflict:dev", n=2)
    pi = PerInput(vec2)
    assert not pi.folds(vec2.layers) and pi.extra_forwards(vec2.layers) == 2
    rows = pi.rows(lm, items, list(vec2.layers), "direct", 8)
    assert isinstance(rows, dict) and set(rows) == set(vec2.layers)
    assert pi.folds([0]) and not PerInput(vec2, fold_real=False).folds([0])
    mean_pos = audio_minus_silence(lm, cal, layers=[0], positions="audio_mean")
    assert not can_fold(mean_pos, [0]) and PerInput(mean_pos).extra_forwards([0]) == 2
    st = _Steer(vec=vec2, mode="per_input", layer=0, beta=1.0, positions="both", fmt="direct", source="x")
    assert st.extra_forwards == 1
    assert _Steer(vec=mean_pos, mode="per_input", layer=0, beta=1.0, positions="both", fmt="direct",
                  source="x").extra_forwards == 2
    assert _Steer(vec=vec2, mode="mean", layer=0, beta=1.0, positions="both", fmt="direct",
                  source="x").extra_forwards == 0


def test_folded_refuses_misuse(small_lm):
    from auralens.interp.datasets import load_dataset
    from auralens.interp.generation import cast_features, model_inputs
    from auralens.steering.apply import apply_vector
    from auralens.steering.evaluate import PerInput

    lm = small_lm
    L = lm.arch.n_layers - 1
    vec = audio_minus_silence_at(lm, L)
    items = load_dataset("cafe-conflict:dev", n=2)
    rows = PerInput(vec).rows(lm, items, [L], "direct", 8)
    kw = dict(max_new_tokens=2, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    with pytest.raises(ConfigError, match="folded per-input"):  # another layer than the folded one
        with apply_vector(lm, audio_minus_silence_at(lm, L, layers=[0, L]), alpha=1.0, layers=[0, L], per_row=rows):
            pass
    swapped = cast_features(lm, model_inputs(lm, items[::-1], "direct"))
    with pytest.raises(ConfigError, match="not the prompt"), torch.inference_mode():
        with apply_vector(lm, vec, alpha=1.0, positions="both", per_row=rows):
            lm.model.generate(**swapped, **kw)
    silent = cast_features(lm, model_inputs(lm, items, "direct", "silence"))
    with pytest.raises(ConfigError, match="silent audio"), torch.inference_mode():
        with apply_vector(lm, vec, alpha=1.0, positions="both", per_row=rows):
            lm.model(**silent)
    # after the real prefill, a later full forward (record's silence pass) is steered with the same s(x)
    real = cast_features(lm, model_inputs(lm, items, "direct"))
    with torch.inference_mode(), apply_vector(lm, vec, alpha=1.0, positions="both", per_row=rows) as steer:
        lm.model.generate(**real, **kw)
        lm.model(**silent)
    assert steer.n_edits >= 3


def audio_minus_silence_at(lm, L, layers=None):
    from auralens.interp.datasets import load_dataset
    from auralens.steering.directions import audio_minus_silence

    return audio_minus_silence(lm, load_dataset("cafe-conflict:calibration", n=2), layers=layers or [L])


def test_cost_is_recorded_as_one_silence_forward(small_lm):
    """steer eval's summary and compare's note say what s(x) costs."""
    import pandas as pd

    from auralens.compare_metrics import Rows as _Rows, add_inference_cost as _inference_cost
    from auralens.steering.protocol import per_input_cost

    L = small_lm.arch.n_layers - 1
    cost = per_input_cost(audio_minus_silence_at(small_lm, L))
    assert cost["extra_forwards_per_item"] == 1 and "one extra forward" in cost["note"] and "silence" in cost["note"]
    notes = {}
    for k in (0, 1, 2):
        rows = _Rows("o", "s", "c", "direct")
        _inference_cost(rows, None, pd.DataFrame({"n_tokens": [3, 5]}), None, k, n_boot=10, seed=0)
        r = next(r for r in rows if r["metric"] == "forwards_per_item")
        assert r["value"] == pytest.approx(4 + k)
        notes[k] = r["note"]
    assert "s(x)" not in notes[0] and "+1 for s(x) (its silence pass" in notes[1] and "real and silence" in notes[2]


def test_steer_eval_summary_records_the_cost(small_lm, tmp_path):
    from auralens.steering.stage_eval import stage_steer_eval
    from auralens.steering.stage_fit import stage_steer_fit

    path = tmp_path / "vec.safetensors"
    stage_steer_fit(model=small_lm.source, data="cafe-conflict", n=3, layers=None, out_vector=path, lm=small_lm,
                    normalize="unit")
    res = stage_steer_eval(model=small_lm.source, data="cafe-conflict", n=2, vector=path, betas=[0, 2.0],
                           out=tmp_path / "run", lm=small_lm, quiet=True, max_new_tokens=2, batch_size=2, n_boot=20)
    assert res["per_input"]["extra_forwards_per_item"] == 1
    assert "silence pass" in res["per_input"]["note"]


@pytest.mark.parametrize("arch", ["qwen2_5_omni_thinker", "voxtral"])
def test_folded_equals_two_pass_on_other_architectures(arch, tmp_path):
    from auralens.interp.datasets import load_dataset
    from auralens.interp.generation import cast_features, model_inputs
    from auralens.interp.loading import load_model
    from auralens.steering.evaluate import PerInput
    from auralens.testing.tiny import save_tiny

    save_tiny(arch, tmp_path)
    lm = load_model(str(tmp_path), device="cpu", dtype="float32")
    L = lm.arch.n_layers - 1
    vec = audio_minus_silence_at(lm, L)
    items = load_dataset("cafe-conflict:dev", n=3)
    batch = cast_features(lm, model_inputs(lm, items, "direct"))
    a = _steered(lm, vec, items, batch, PerInput(vec), alpha=3.0, positions="both")
    b = _steered(lm, vec, items, batch, PerInput(vec, fold_real=False), alpha=3.0, positions="both")
    assert torch.equal(a[0], b[0]) and b[3] - a[3] == 1
    for x, y in zip(a[2], b[2]):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
