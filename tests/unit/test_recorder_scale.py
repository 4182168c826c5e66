"""The yield recorder at serving scale (issue 26): yields computed on the fly (only the yields
are retained), static caches, and a compiled decode step, each exact against eager attention.

The reference is independent of the recorder: transformers' eager attention with
``output_attentions=True`` on one teacher-forced forward over prompt + generated tokens, each
head's weights summed over the audio keys (as in ``test_attention_yield``).  The memory check
walks the recorder's object graph with :func:`auralens.bench.retained_tensor_bytes` (not the
recorder's own accounting) and compares it with the L·B·H·N·4-byte prediction.
"""

from __future__ import annotations

import pytest
import torch

from auralens.bench import retained_tensor_bytes, yield_bytes_prediction
from auralens.interp import attention_yield, compat
from auralens.interp.arch import describe
from auralens.interp.attention_yield import YieldRecorder, audio_mask_from_ids
from auralens.testing.model_checks import eager_yields, sharpen_attention
from auralens.testing.tiny import tiny_batch

ATOL = 1e-5


@pytest.fixture
def sharp(tiny_model):
    def make(name: str = "qwen2_audio", **batch_kw):
        model, processor = tiny_model(name)
        sharpen_attention(model)
        arch = describe(model)
        batch = tiny_batch(processor, **batch_kw)
        return model, arch, batch, audio_mask_from_ids(batch["input_ids"], arch)

    return make


def _generate(model, batch, n, **kw):
    with torch.no_grad():
        return model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False, **kw)


@pytest.mark.parametrize("name", ["qwen2_audio", "audioflamingo3"])
def test_static_cache_matches_eager_and_dynamic(sharp, name):
    model, arch, batch, amask = sharp(name)
    n = 6
    dyn = YieldRecorder(model, arch, amask, rows="all_prompt", time_bins=2)
    with dyn:
        seq = _generate(model, batch, n)
    rec = YieldRecorder(model, arch, amask, rows="all_prompt", time_bins=2)
    with rec:
        seq_static = _generate(model, batch, n, cache_implementation="static")
    assert torch.equal(seq, seq_static)
    p = amask.shape[1]
    ref = eager_yields(model, batch, seq, amask)
    torch.testing.assert_close(rec.yields, ref[:, p - 1 : p - 1 + n], atol=ATOL, rtol=0)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(rec.result.prompt_total[real], ref[:, :p][real], atol=ATOL, rtol=0)
    torch.testing.assert_close(rec.result.binned, dyn.result.binned, atol=1e-6, rtol=0)
    assert rec.yields.std() > 0.05


def test_batch_of_one_without_a_mask_matches_eager(sharp):
    """Batch 1, no padding: SDPA receives no mask (causal skip), the recorder builds the causal rows."""
    model, arch, batch, amask = sharp(durations=(1.3,), questions=("what is the sound ?",))
    rec = YieldRecorder(model, arch, amask)
    with rec:
        seq = _generate(model, batch, 5)
    p = amask.shape[1]
    torch.testing.assert_close(rec.yields, eager_yields(model, batch, seq, amask)[:, p - 1 : p + 4], atol=ATOL, rtol=0)


def test_compiled_static_decode_step_matches_eager_without_graph_breaks(sharp):
    """generate compiles the decode step (fullgraph=True: a graph break would raise); a second
    recorder reuses the compiled step (recompiling would raise); yields exact against eager.
    Backend aot_eager (dynamo + AOTAutograd functionalisation, where an op that the graph drops
    would lose its rows) keeps the test short; the inductor run is the slow test below."""
    import torch._dynamo

    # Regression (the 2026-12-03 "known defect"): a recorder first entered under inference_mode
    # (as bench does) made the custom op's sink an inference tensor, and a later compiled step
    # outside inference_mode failed mutating it ("Inplace update to inference tensor").
    model0, arch0, batch0, amask0 = sharp()
    attention_yield._SINKS.clear()
    with torch.inference_mode(), YieldRecorder(model0, arch0, amask0):
        _generate(model0, batch0, 2)
    assert not any(t.is_inference() for t in attention_yield._SINKS.values())

    model, arch, batch, amask = sharp()
    n = 5
    seq = _generate(model, batch, n)
    ref = eager_yields(model, batch, seq, amask)[:, amask.shape[1] - 1 : amask.shape[1] - 1 + n]
    cc = compat.compile_config(fullgraph=True, backend="aot_eager", mode=None)
    torch._dynamo.reset()
    for attempt in range(2):
        rec = YieldRecorder(model, arch, amask)
        with torch._dynamo.config.patch(error_on_recompile=attempt == 1), rec:
            out = _generate(model, batch, n, cache_implementation="static", compile_config=cc)
        assert hasattr(model, "_compiled_call")  # the decode step really was compiled
        assert torch.equal(out, seq)
        torch.testing.assert_close(rec.yields, ref, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_compiled_with_inductor_matches_eager(sharp):
    model, arch, batch, amask = sharp()
    n = 4
    seq = _generate(model, batch, n)
    ref = eager_yields(model, batch, seq, amask)[:, amask.shape[1] - 1 : amask.shape[1] - 1 + n]
    rec = YieldRecorder(model, arch, amask)
    with rec:
        out = _generate(model, batch, n, cache_implementation="static",
                        compile_config=compat.compile_config(fullgraph=True, mode="default"))
    assert torch.equal(out, seq)
    torch.testing.assert_close(rec.yields, ref, atol=ATOL, rtol=0)


def test_compile_config_sets_the_all_devices_flag():
    from transformers import CompileConfig

    cc = compat.compile_config(fullgraph=True)
    assert isinstance(cc, CompileConfig) and cc.fullgraph
    assert cc._compile_all_devices is True
    assert "_compile_all_devices" not in cc.to_dict()  # not passed on to torch.compile


def test_held_memory_is_the_yields_only_across_buffer_boundaries(sharp):
    """70 decode rows (past one 64-row buffer): what the recorder retains mid-generate, found by
    walking its object graph, is within 2x of L·B·H·N·4 bytes plus the audio indicator, no
    retained tensor has a head_dim axis (no query rows, no keys), and the rows stay exact."""
    model, arch, batch, amask = sharp()
    n = 70
    rec = YieldRecorder(model, arch, amask)
    seen: list[int] = []
    big: list[tuple[int, ...]] = []

    own: list[int] = []

    def probe(*_):
        size, shapes = retained_tensor_bytes(rec, skip=(model,), shapes=True)
        seen.append(size)
        own.append(rec.held_bytes())
        big.extend(shapes)

    handle = model.register_forward_hook(probe)
    try:
        with rec:
            seq = _generate(model, batch, n)
    finally:
        handle.remove()
    b, p = amask.shape
    pred = yield_bytes_prediction(layers=arch.n_layers, batch=b, heads=arch.n_heads, steps=n)
    extra = amask.numel() * (1 + 4)  # the bool mask and its float32 indicator
    assert len(seen) == n
    assert seen[-1] <= 2 * pred + extra
    assert seen[-1] >= pred  # the walk finds the buffers (it can fail)
    d = arch.attention(model, 0).head_dim
    assert big and all(s[-1] != d for s in big)  # nothing shaped [..., head_dim]: no queries, no keys
    ref = eager_yields(model, batch, seq, amask)[:, p - 1 : p - 1 + n]
    torch.testing.assert_close(rec.yields, ref, atol=ATOL, rtol=0)
    assert own == seen  # the recorder's own account agrees with the walk
    assert rec.held_bytes() < pred  # after exit the buffers are gone (the result holds the yields)


def test_retained_tensor_bytes_counts_shared_storage_once():
    class Holder:
        pass

    h = Holder()
    x = torch.zeros(10, 4)
    h.a, h.b, h.c = x, x[2:], [x.T, {"k": torch.zeros(3, dtype=torch.float64)}]
    assert retained_tensor_bytes(h) == 10 * 4 * 4 + 3 * 8
    h.d = torch.nn.Linear(2, 2)
    assert retained_tensor_bytes(h, skip=(h.d,)) == 10 * 4 * 4 + 3 * 8


def test_step_buffers_hold_at_most_twice_the_rows():
    from auralens.interp.attention_yield import _chunk_of  # noqa: PLC2701  (the buffer layout itself)

    for n in range(1, 300):
        c, _, _ = _chunk_of(n - 1)
        held = sum(_chunk_of(s)[2] for s in range(n) if _chunk_of(s)[1] == 0)
        assert c == len([s for s in range(n) if _chunk_of(s)[1] == 0]) - 1
        assert n <= held <= max(2 * n, 8), n
