"""`auralens bench yield`: what recording the audio yield costs, in one process.

Phases, on the same model and inputs (wall time, peak memory):
 (a) plain ``generate`` with SDPA and nothing recorded — the reference;
 (b) ``generate`` with :class:`~interp.attention_yield.YieldRecorder`;
 (c) eager attention with ``output_attentions=True`` (what HF offers out of the box);
 (d) TransformerLens ``TransformerBridge.run_with_cache`` of ``hook_pattern`` over the full
     sequence (prompt + generated tokens).
Ratios are medians over ``repeats`` interleaved runs of (a) and (b); the maximum absolute
difference of (b) against (c) is reported as the exactness check.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import numpy as np


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak on GPU, sampled process RSS on CPU."""

    def __init__(self, device: str):
        self.device = device
        self.peak = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._rss()
            self._stop = threading.Event()
            self.peak_abs = self.base

            def sample():
                while not self._stop.is_set():
                    self.peak_abs = max(self.peak_abs, self._rss())
                    time.sleep(0.002)

            self._t = threading.Thread(target=sample, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._t.join()
            self.peak = max(self.peak_abs, self._rss()) - self.base
        return False


def _timed(fn, device: str) -> tuple[float, Any, int]:
    import torch

    with PeakMemory(device) as mem:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
    return dt, out, mem.peak


def _inputs(lm, clip_seconds: float, seed: int = 0):
    from interp.cafe.questions import make_item
    from interp.generation import cast_features
    from interp.prompts import build_inputs

    sr = lm.processor.feature_extractor.sampling_rate
    it = make_item(seed, tier="multihop")
    if it.scene and abs(clip_seconds - 4.0) < 1e-6:
        from interp.audio import item_audio

        audio = item_audio(it, lm.processor)
    else:  # a clip of the requested length (e.g. 30 s for the 7B-shaped model)
        rng = np.random.default_rng(seed)
        audio = (0.05 * rng.standard_normal(int(clip_seconds * sr))).astype(np.float32)
    batch = build_inputs(lm.processor, [it], "cot", audios=[audio], audio_kwarg=lm.arch.table.processor_audio_kwarg)
    return cast_features(lm, batch.to(lm.device))


def bench_yield(
    lm,
    *,
    clip_seconds: float = 4.0,
    new_tokens: int = 128,
    repeats: int = 3,
    eager: bool = True,
    transformer_lens: bool = True,
    source_folder: str | None = None,
) -> dict[str, Any]:
    import torch

    from interp.attention_yield import YieldRecorder, audio_mask_from_ids

    device = str(lm.device)
    batch = _inputs(lm, clip_seconds)
    amask = audio_mask_from_ids(batch["input_ids"], lm.arch)
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
               pad_token_id=lm.tokenizer.pad_token_id)

    def plain():
        with torch.inference_mode():
            return lm.model.generate(**batch, **gen)

    recs = []

    def recorded():
        rec = YieldRecorder(lm.model, lm.arch, amask)
        with torch.inference_mode(), rec:
            out = lm.model.generate(**batch, **gen)
        recs.append(rec.result.total)
        return out

    plain()  # warm-up (allocator, kernels, lazy imports)
    recorded()
    t_plain, t_rec, m_plain, m_rec = [], [], [], []
    for _ in range(repeats):
        dt, seq, mem = _timed(plain, device)
        t_plain.append(dt)
        m_plain.append(mem)
        dt, seq_rec, mem = _timed(recorded, device)
        t_rec.append(dt)
        m_rec.append(mem)
    if not torch.equal(seq, seq_rec):
        raise RuntimeError("the recorder changed the generated tokens")
    a = statistics.median(t_plain)
    res: dict[str, Any] = {
        "device": device, "dtype": str(next(lm.model.parameters()).dtype).replace("torch.", ""),
        "model": lm.model_id, "layers": lm.arch.n_layers, "heads": lm.arch.n_heads,
        "audio_tokens": int(amask.sum()), "prompt_tokens": int(batch["input_ids"].shape[1]),
        "new_tokens": new_tokens, "repeats": repeats,
        "phases": {
            "a_plain_sdpa_generate": {"seconds": a, "ratio": 1.0, "peak_bytes": int(np.median(m_plain))},
            "b_recorder_generate": {"seconds": statistics.median(t_rec), "ratio": statistics.median(t_rec) / a,
                                    "peak_bytes": int(np.median(m_rec))},
        },
    }
    yields = recs[-1][0]  # [new_tokens, L, H]
    P = batch["input_ids"].shape[1]
    full_ids = seq[:, : P + new_tokens - 1]

    if eager:
        lm.model.set_attn_implementation("eager")
        try:
            def eager_gen():
                with torch.inference_mode():
                    return lm.model.generate(**batch, **gen, output_attentions=True, return_dict_in_generate=True)

            dt, out, mem = _timed(eager_gen, device)
        finally:
            lm.model.set_attn_implementation("sdpa")
        audio = amask[0]
        rows = []
        for step_att in out.attentions:  # per generation step: tuple over layers [B, H, q, T]
            rows.append(torch.stack([la[0, :, -1, : len(audio)][:, audio].float().sum(-1) for la in step_att]))
        ref = torch.stack(rows)  # [new_tokens, L, H]
        res["phases"]["c_eager_output_attentions"] = {"seconds": dt, "ratio": dt / a, "peak_bytes": int(mem)}
        res["max_abs_err_recorder_vs_eager"] = float((yields.float().cpu() - ref.cpu()).abs().max())

    if transformer_lens:
        res["phases"]["d_transformer_lens_hook_pattern"] = _bench_tl(lm, batch, full_ids, a, device, source_folder)
    return res


def _bench_tl(lm, batch, full_ids, a: float, device: str, source_folder: str | None) -> dict[str, Any]:
    import copy

    import torch

    try:
        import transformer_lens  # noqa: F401
    except Exception as exc:  # pragma: no cover - TL missing
        return {"skipped": f"transformer_lens unavailable: {exc}"}
    from interp.compat import boot_transformer_bridge

    folder = source_folder or lm.source
    try:
        bridge = boot_transformer_bridge(folder, hf_model=copy.deepcopy(lm.model), tokenizer=lm.tokenizer)
    except Exception as exc:
        return {"skipped": f"TransformerBridge cannot boot this model: {type(exc).__name__}: {exc}"}
    rest = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    mask = torch.ones_like(full_ids)

    def run():
        with torch.inference_mode():
            return bridge.run_with_cache(full_ids, attention_mask=mask, names_filter=lambda n: n.endswith("hook_pattern"), **rest)

    dt, _, mem = _timed(run, device)
    del bridge
    return {"seconds": dt, "ratio": dt / a, "peak_bytes": int(mem),
            "note": "one forward over the full sequence (no generation), patterns cached for every layer"}
