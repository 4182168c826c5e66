"""`auralens bench yield`: what recording the audio yield costs, in one process; `auralens bench
stages` (:func:`bench_stages`): data-parallel throughput of the stages and the recorder's cost
by batch size.

Phases, on the same model and inputs (wall time, peak memory):
 (a) plain ``generate`` with SDPA and nothing recorded — the reference;
 (b) ``generate`` with :class:`~auralens.interp.attention_yield.YieldRecorder`;
 (c) eager attention with ``output_attentions=True`` (what HF offers out of the box);
 (d) TransformerLens ``TransformerBridge.run_with_cache`` of ``hook_pattern`` over the full
     sequence (prompt + generated tokens).
Ratios are medians over ``repeats`` interleaved runs of (a) and (b); the maximum absolute
difference of (b) against (c) is reported as the exactness check.
"""

from __future__ import annotations

import copy
import gc
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

from auralens.interp import compat
from auralens.interp.arch import describe, table_by_name
from auralens.interp.audio import item_audio
from auralens.interp.cafe.questions import make_item
from auralens.interp.compat import boot_transformer_bridge
from auralens.interp.datasets import load_dataset
from auralens.interp.errors import AuralensError, ConfigError
from auralens.interp.evaluate import run_eval
from auralens.interp.generation import GenerationConfig, cast_features, model_inputs
from auralens.interp.loading import LoadedModel, load_model
from auralens.interp.prompts import build_inputs
from auralens.interp.stats import accuracy_ci
from auralens.testing.tiny import TINY_AUDIO, build_config, build_shaped, build_tiny_processor


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak on GPU, sampled process RSS on CPU."""

    def __init__(self, device: str):
        self.device = device
        self.peak = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:

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


def _interleaved(plain, recorded, repeats: int, device: str) -> tuple[list[float], list[float], list[int], list[int]]:
    """``repeats`` timed runs of each of ``plain`` and ``recorded``, interleaved with the order
    alternating: (plain seconds, recorded seconds, plain peak bytes, recorded peak bytes)."""
    tp: list[float] = []
    tr: list[float] = []
    mp: list[int] = []
    mr: list[int] = []
    for i in range(repeats):
        order = [(plain, tp, mp), (recorded, tr, mr)]
        for fn, times, mems in (order if i % 2 == 0 else order[::-1]):
            dt, _, mem = _timed(fn, device)
            times.append(dt)
            mems.append(mem)
    return tp, tr, mp, mr


def yield_bytes_prediction(*, layers: int, batch: int, heads: int, steps: int, bins: int = 1) -> int:
    """What the yields themselves take: ``L * B * H * N * bins`` float32."""
    return layers * batch * heads * steps * bins * 4


def retained_tensor_bytes(obj: Any, *, skip: tuple[Any, ...] = (), shapes: bool = False):
    """Bytes of the tensors reachable from ``obj`` (each storage once), found by walking its
    object graph with :func:`gc.get_referents`: the direct measure of what a recorder holds,
    independent of its own accounting.  The walk does not enter ``skip`` (e.g. the model),
    ``torch.nn.Module`` objects (their parameters are the model's), classes or functions.
    With ``shapes=True`` also returns the shapes of the tensors found."""
    import torch

    stop = {id(x) for x in skip}
    seen: set[int] = set()
    storages: dict[int, int] = {}
    found: list[tuple[int, ...]] = []
    todo = [obj]
    while todo:
        x = todo.pop()
        if id(x) in seen or id(x) in stop:
            continue
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            s = x.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
            found.append(tuple(x.shape))
            continue
        if isinstance(x, (torch.nn.Module, type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType)):
            continue
        todo.extend(gc.get_referents(x))
    total = sum(storages.values())
    return (total, found) if shapes else total


def _inputs(lm, clip_seconds: float, seed: int = 0):

    sr = lm.processor.feature_extractor.sampling_rate
    it = make_item(seed, tier="multihop")
    if it.scene and abs(clip_seconds - 4.0) < 1e-6:

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

    from auralens.interp.attention_yield import YieldRecorder, audio_mask_from_ids

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
        phase, err = _bench_eager(lm, batch, gen, amask, yields, a, device)
        res["phases"]["c_eager_output_attentions"] = phase
        res["max_abs_err_recorder_vs_eager"] = err

    if transformer_lens:
        res["phases"]["d_transformer_lens_hook_pattern"] = _bench_tl(lm, batch, full_ids, a, device, source_folder)
    return res


def _bench_eager(lm, batch, gen: dict[str, Any], amask, yields, a: float, device: str) -> tuple[dict[str, Any], float]:
    """The eager ``output_attentions`` generate phase (timed, then back to SDPA) and the largest
    absolute difference of the recorder's yields from the audio attention it returns."""
    dt, out, mem = _timed(lambda: _eager_generate(lm, batch, gen), device)
    ref = _audio_attention(out, amask)[0]  # [new_tokens, L, H]
    phase = {"seconds": dt, "ratio": dt / a, "peak_bytes": int(mem)}
    return phase, float((yields.float().cpu() - ref.cpu()).abs().max())


def _bench_tl(lm, batch, full_ids, a: float, device: str, source_folder: str | None) -> dict[str, Any]:

    import torch

    try:
        import transformer_lens  # noqa: F401
    except Exception as exc:  # pragma: no cover - TL missing
        return {"skipped": f"transformer_lens unavailable: {exc}"}

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
    return {"seconds": dt, "ratio": dt / a, "peak_bytes": int(mem),
            "note": "one forward over the full sequence (no generation), patterns cached for every layer"}


# --------------------------------------------------------------------------------------------
# `auralens bench stages`: data-parallel throughput and the recorder's cost by batch size
# --------------------------------------------------------------------------------------------

#: the stages `bench stages` times, as command-line arguments (``{n}`` the item count)
STAGE_ARGS = {
    "record": ["record", "--model", "micro", "--data", "cafe", "--n", "{n}", "--batch-size", "4",
               "--max-new-tokens", "32", "--n-boot", "100", "--json"],
    "probe": ["probe", "--model", "micro", "--data", "cafe", "--n", "{n}", "--positions", "audio_mean,last_prompt",
              "--batch-size", "8", "--chunk-size", "8", "--n-folds", "3", "--n-bootstrap", "100", "--json"],
    "steer_eval": ["steer", "eval", "--model", "micro", "--data", "cafe", "--vector", "{vector}", "--n", "{n}",
                   "--betas", "0,4", "--batch-size", "4", "--max-new-tokens", "16", "--n-boot", "100",
                   "--no-controls", "--json"],
}


def _launch_cmd(processes: int, port: int) -> list[str]:
    """``python -m auralens`` in one process, ``torchrun --nproc-per-node N -m auralens --`` in N."""

    if processes == 1:
        return [sys.executable, "-m", "auralens"]
    torchrun = Path(sys.executable).parent / "torchrun"
    return [str(torchrun), "--nproc-per-node", str(processes), "--master-port", str(port), "-m", "auralens", "--"]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _free_port() -> int:

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_stages(
    *,
    processes: tuple[int, ...] = (1, 2),
    n: dict[str, int] | None = None,
    recorder_batches: tuple[int, ...] = (1, 8, 32),
    new_tokens: int = 32,
    repeats: int = 5,
    threads: int = 1,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Items per second of ``record``, ``probe`` and ``steer eval`` on micro at each number of
    ``processes`` (each a separate launch: wall time of the whole command, so process start,
    imports and model load are included), the speed-up over one process, and the recorder's
    overhead (median ratio of ``generate`` with :class:`~auralens.interp.attention_yield.YieldRecorder`
    to plain ``generate``) at each batch size of ``recorder_batches``.  ``threads``: torch
    threads per process (``OMP_NUM_THREADS``)."""

    n = {"record": 48, "probe": 96, "steer_eval": 32, **(n or {})}
    small = {k: max(1, v // 4) if k != "probe" else max(24, v // 4) for k, v in n.items()}
    tmp = Path(workdir or tempfile.mkdtemp(prefix="auralens-bench-stages-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    vector = tmp / "vector.safetensors"
    subprocess.run([sys.executable, "-m", "auralens", "steer", "fit", "--model", "micro", "--data", "cafe", "--n", "16",
                    "--out", str(vector)], env=env, check=True, capture_output=True, text=True)

    def wall(stage: str, p: int, items: int) -> float:
        out = tmp / f"{stage}-{p}-{items}"
        cmd = [*_launch_cmd(p, _free_port()), *[a.format(n=items, vector=vector) for a in STAGE_ARGS[stage]],
               "--out", str(out)]
        t = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        dt = time.perf_counter() - t
        if done.returncode != 0:
            raise RuntimeError(f"bench stages: {' '.join(cmd)} failed: {done.stderr[-2000:]}")
        return dt

    stages: dict[str, Any] = {}
    for stage in STAGE_ARGS:
        row: dict[str, Any] = {"items": n[stage], "items_small": small[stage], "processes": {}}
        for p in processes:
            dt, dt_small = wall(stage, p, n[stage]), wall(stage, p, small[stage])
            marginal = (n[stage] - small[stage]) / (dt - dt_small) if dt > dt_small else None
            row["processes"][str(p)] = {"seconds": round(dt, 3), "items_per_s": round(n[stage] / dt, 3),
                                        "seconds_small": round(dt_small, 3),
                                        "items_per_s_marginal": None if marginal is None else round(marginal, 3)}
        first = row["processes"][str(processes[0])]
        for p in processes:
            r = row["processes"][str(p)]
            r["speedup"] = round(first["seconds"] / r["seconds"], 3)
            r["speedup_marginal"] = (round(r["items_per_s_marginal"] / first["items_per_s_marginal"], 3)
                                     if r["items_per_s_marginal"] and first["items_per_s_marginal"] else None)
        stages[stage] = row
    if workdir is None:  # the run folders were only timed

        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "model": "micro", "device": "cuda" if _cuda() else "cpu",
        "threads_per_process": threads, "cpu_count": os.cpu_count(),
        "launcher": "torchrun --nproc-per-node N -m auralens -- (N > 1); python -m auralens (N = 1)",
        "timing": ("seconds / items_per_s / speedup: wall time of the whole command (process start, imports, "
                   "model load included); *_marginal: (items - items_small) / (seconds - seconds_small), the "
                   "rate once the fixed cost of a launch is paid"),
        "stages": stages,
        "recorder_overhead": bench_recorder_batches(batches=recorder_batches, new_tokens=new_tokens, repeats=repeats,
                                                    threads=threads),
    }


def bench_recorder_batches(*, batches: tuple[int, ...] = (1, 8, 32), new_tokens: int = 32, repeats: int = 3,
                           threads: int = 1) -> dict[str, Any]:
    """Median wall time of plain ``generate`` and of ``generate`` with the yield recorder on
    micro, per batch size (cafe items, ``new_tokens`` forced), and their ratio."""
    import torch

    from auralens.interp.attention_yield import YieldRecorder, audio_mask_from_ids

    torch.set_num_threads(threads)
    device = "cuda" if _cuda() else "cpu"
    lm = load_model("micro", device=device)
    items = load_dataset("cafe", n=max(batches), seed=0)
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
               pad_token_id=lm.tokenizer.pad_token_id)
    out: dict[str, Any] = {}
    for b in batches:
        batch = cast_features(lm, model_inputs(lm, items[:b], "cot"))
        amask = audio_mask_from_ids(batch["input_ids"], lm.arch)

        def plain():
            with torch.inference_mode():
                return lm.model.generate(**batch, **gen)

        def recorded():
            with torch.inference_mode(), YieldRecorder(lm.model, lm.arch, amask, time_bins=8):
                return lm.model.generate(**batch, **gen)

        plain(), recorded()  # warm-up
        tp, tr = [], []
        for _ in range(repeats):
            tp.append(_timed(plain, device)[0])
            tr.append(_timed(recorded, device)[0])
        a, r = statistics.median(tp), statistics.median(tr)
        out[str(b)] = {"plain_s": round(a, 4), "recorded_s": round(r, 4), "ratio": round(r / a, 3),
                       "tokens_per_s_plain": round(b * new_tokens / a, 1),
                       "tokens_per_s_recorded": round(b * new_tokens / r, 1)}
    return {"model": "micro", "device": device, "new_tokens": new_tokens, "repeats": repeats, "batches": out}


# --------------------------------------------------------------------------------------------
# `auralens bench yield --batch ...`: the recorder by batch size and length (issue 26)
# --------------------------------------------------------------------------------------------

#: 7B layer dimensions (Qwen2-7B / Qwen2.5-Omni-7B thinker decoder layers: hidden 3584, 28 query
#: and 4 key/value heads of 128, ffn 18944) in 2 layers, the tiny word-level vocabulary and a
#: small audio encoder with 128 mels and 30 s chunks (750 audio tokens per 30 s clip): the decode
#: step costs what two real 7B layers cost, so the recorder's share of it is the real one.
LAYERS_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=2, num_attention_heads=28,
                 num_key_value_heads=4, max_position_embeddings=8192, rope_theta=1_000_000.0)


def build_7b_layers(*, dtype: Any = None, device: str = "cpu", seed: int = 0):
    """``(LoadedModel)`` of the Qwen2-Audio class with :data:`LAYERS_7B` decoder layers (random init)."""
    import torch
    import transformers

    processor = build_tiny_processor("qwen2_audio", n_mels=128, chunk_seconds=30)
    config = build_config("qwen2_audio", processor.tokenizer, text=dict(LAYERS_7B), audio=dict(TINY_AUDIO),
                          n_mels=128, chunk_seconds=30)
    cls = getattr(transformers, table_by_name("qwen2_audio").model_class)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = compat.model_from_config(cls, config, attn_implementation="sdpa", dtype=dtype or torch.float32)
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id, gc.bos_token_id, gc.do_sample = (
        processor.tokenizer.pad_token_id, processor.tokenizer.eos_token_id, None, False)
    model.eval()
    processor.tokenizer.padding_side = "left"
    return LoadedModel(model=model, processor=processor, arch=describe(model), model_id="7b-layers", source="")


#: ``recorder`` choices of :func:`bench_yield_scale`: the attention function swapped per context, or
#: a kernel-statistic backend installed once (:mod:`auralens.interp.kernel_stat`)
RECORDERS = ("swap", "kernel_value_channel", "kernel_lse")


def _served_model(lm, recorder: str):
    """The model the recorder ``recorder`` runs on: ``lm.model`` for ``"swap"``, else a copy with
    that kernel backend installed (plain ``generate`` keeps ``lm.model`` and its SDPA)."""
    from auralens.interp.kernel_stat import install_kernel_backend

    if recorder not in RECORDERS:
        raise ConfigError(f"recorder {recorder!r}: expected one of {', '.join(RECORDERS)}")
    if recorder == "swap":
        return lm.model
    model = copy.deepcopy(lm.model)
    install_kernel_backend(model, recorder.removeprefix("kernel_"), lm.arch)
    return model


def _generate_phases(lm, batch: Any, gen: dict[str, Any], amask: Any, *, inside: Any = None, after: Any = None,
                     recorder: str = "swap", served: Any = None):
    """``(plain, recorded)``: greedy ``generate`` on ``batch`` without and with a fresh recorder
    (both under ``inference_mode``), the pair :func:`_interleaved` times.  ``recorder="swap"``:
    :class:`YieldRecorder` on ``lm.model``; ``"kernel_*"``: :class:`KernelYieldRecorder` on a copy
    of the model with that kernel backend installed (``served``: one made by :func:`_served_model`,
    reused across calls; plain stays ``lm.model`` with its SDPA).
    ``inside(rec)`` runs before the recorder's context exits, ``after(rec)`` once it has."""
    import torch

    from auralens.interp.attention_yield import YieldRecorder
    from auralens.interp.kernel_stat import KernelYieldRecorder

    model = served if served is not None else _served_model(lm, recorder)

    def plain():
        with torch.inference_mode():
            return lm.model.generate(**batch, **gen)

    def recorded():
        cls = YieldRecorder if recorder == "swap" else KernelYieldRecorder
        rec = cls(model, lm.arch, amask)
        with torch.inference_mode(), rec:
            out = model.generate(**batch, **gen)
            if inside is not None:
                inside(rec)
        if after is not None:
            after(rec)
        return out

    return plain, recorded


def _repeat_batch(batch: Any, b: int) -> dict[str, Any]:
    """The one-prompt batch repeated to ``b`` rows (every batch-first tensor)."""
    n = batch["input_ids"].shape[0]
    return {k: (v.repeat(b, *([1] * (v.ndim - 1))) if hasattr(v, "ndim") and v.ndim and v.shape[0] == n else v)
            for k, v in batch.items()}


def bench_yield_scale(
    lm,
    *,
    batches: tuple[int, ...] = (1, 8, 32),
    new_tokens: tuple[int, ...] = (128, 512),
    repeats: int = 5,
    clip_seconds: float = 30.0,
    recorder: str = "swap",
) -> dict[str, Any]:
    """For every (batch, new tokens): median wall time of plain SDPA ``generate`` and of
    ``generate`` with the yield recorder (``recorder``: one of :data:`RECORDERS`) over ``repeats`` interleaved runs (order alternating),
    their ratio, and the memory the recorder holds at the end of ``generate`` (still inside its
    context, in an untimed run) against ``L * B * H * N * 4`` bytes.

    Held memory is measured two ways: ``held_walk_bytes``, every tensor storage reachable from the
    recorder object (:func:`retained_tensor_bytes`, a walk of its object graph that skips the model),
    and ``held_own_bytes``, the recorder's own :meth:`held_bytes`.  On CUDA each run also reports the
    allocator peak above the model (``torch.cuda.max_memory_allocated`` after ``synchronize``)."""
    import torch

    from auralens.interp.attention_yield import audio_mask_from_ids

    device = str(lm.device)
    one = _inputs(lm, clip_seconds)
    served = _served_model(lm, recorder)  # one copy for the whole grid (kernel recorders)
    rows: list[dict[str, Any]] = []
    for b in batches:
        batch = _repeat_batch(one, b)
        amask = audio_mask_from_ids(batch["input_ids"], lm.arch)
        for n in new_tokens:
            gen = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
            held: dict[str, int] = {}

            def measure(rec, held=held):  # once, in the untimed warm-up
                if not held:
                    held.update(walk=retained_tensor_bytes(rec, skip=(lm.model, rec.model)), own=rec.held_bytes())

            plain, recorded = _generate_phases(lm, batch, gen, amask, inside=measure, recorder=recorder,
                                               served=served)
            seq_plain = plain()  # warm-up of both, and the untimed memory measurement
            seq_rec = recorded()
            if not torch.equal(seq_plain, seq_rec):
                raise RuntimeError(f"batch {b}, {n} new tokens: the recorder changed the generated tokens")
            tp, tr, mp, mr = _interleaved(plain, recorded, repeats, device)
            pred = yield_bytes_prediction(layers=lm.arch.n_layers, batch=b, heads=lm.arch.n_heads, steps=n)
            a, r = statistics.median(tp), statistics.median(tr)
            row: dict[str, Any] = {
                "batch": b, "new_tokens": n, "plain_s": round(a, 4), "recorded_s": round(r, 4),
                "ratio": round(r / a, 4),
                "ratio_paired_median": round(statistics.median(x / y for x, y in zip(tr, tp)), 4),
                "plain_s_all": [round(x, 4) for x in tp], "recorded_s_all": [round(x, 4) for x in tr],
                "predicted_yield_bytes": pred, "held_walk_bytes": held["walk"], "held_own_bytes": held["own"],
                "held_over_prediction": round(held["walk"] / pred, 4),
            }
            if device.startswith("cuda"):
                row["peak_bytes_plain"] = int(np.median(mp))
                row["peak_bytes_recorded"] = int(np.median(mr))
            rows.append(row)
    return {
        "device": device, "dtype": str(next(lm.model.parameters()).dtype).replace("torch.", ""),
        "model": lm.model_id, "layers": lm.arch.n_layers, "heads": lm.arch.n_heads,
        "kv_heads": lm.arch.attention(lm.model, 0).config.num_key_value_heads,
        "head_dim": lm.arch.attention(lm.model, 0).head_dim, "clip_seconds": clip_seconds,
        "audio_tokens": int(audio_mask_from_ids(one["input_ids"], lm.arch).sum()),
        "prompt_tokens": int(one["input_ids"].shape[1]), "repeats": repeats, "threads": torch.get_num_threads(),
        "recorder": recorder,
        "held_memory_how": ("held_walk_bytes: every tensor storage reachable from the recorder object (gc "
                            "referents, model skipped), measured at the end of generate inside the context; "
                            "prediction L*B*H*N*4 bytes (the yields alone; the walk also counts the [B, P] audio "
                            "mask and indicator and the unused rows of the last buffer: 8, 8, 16, 32, then 64 rows per layer, at most max(2N, 8) rows)"),
        "runs": rows,
    }


# --------------------------------------------------------------------------------------------
# `auralens bench gpu`: the one-command GPU check (issue 24 item 4)
# --------------------------------------------------------------------------------------------


def require_cuda() -> None:
    """Refuse, before any model is built, where no CUDA device exists."""
    import torch

    if not torch.cuda.is_available():
        build = torch.version.cuda and f"CUDA {torch.version.cuda} build" or "CPU-only build"
        raise ConfigError(
            f"bench gpu: expected a CUDA device, found none (torch {torch.__version__}, {build}, "
            "torch.cuda.is_available() is False); run it on a machine with a GPU, or use `auralens bench yield "
            "--batch 1,8` for the CPU benchmark")


def _eager_generate(lm, batch, gen: dict[str, Any]):
    """``generate`` with eager attention and ``output_attentions`` (then back to SDPA)."""
    import torch

    lm.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            return lm.model.generate(**batch, **gen, output_attentions=True, return_dict_in_generate=True)
    finally:
        lm.model.set_attn_implementation("sdpa")


def _audio_attention(out, amask):
    """The audio attention of each generated token's query in an eager ``generate`` output,
    ``[B, N, L, H]`` (float32): each head's weights summed over the prompt's audio keys."""
    import torch

    P = amask.shape[1]
    am = amask.to(out.sequences.device).float()
    steps = [torch.stack([(la[:, :, -1, :P].float() * am[:, None, :]).sum(-1) for la in step_att], dim=1)
             for step_att in out.attentions]  # per generation step: tuple over layers [B, H, q, T] -> [B, L, H]
    return torch.stack(steps, dim=1)


def bench_gpu_run(
    lm,
    *,
    batches: tuple[int, ...] = (1, 8),
    new_tokens: int = 512,
    repeats: int = 3,
    clip_seconds: float = 30.0,
) -> dict[str, Any]:
    """Per batch size: plain SDPA ``generate``, ``generate`` with the yield recorder (median of
    ``repeats`` interleaved runs, order alternating) and eager ``output_attentions`` ``generate``
    (once), each with its peak memory (CUDA allocator peak above the model on GPU, sampled RSS on
    CPU), the recorder / plain ratio, and the largest |recorder - eager| yield over every row,
    step, layer and head.  Runs on any device; :func:`bench_gpu` is the GPU entry point."""
    import torch

    from auralens.interp.attention_yield import audio_mask_from_ids

    device = str(lm.device)
    one = _inputs(lm, clip_seconds)
    rows: list[dict[str, Any]] = []
    for b in batches:
        batch = _repeat_batch(one, b)
        amask = audio_mask_from_ids(batch["input_ids"], lm.arch)
        gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   pad_token_id=lm.tokenizer.pad_token_id)
        recs: list[Any] = []

        def keep(rec, recs=recs):  # the last recorded yields, for the eager comparison
            recs[:] = [rec.result.total]

        plain, recorded = _generate_phases(lm, batch, gen, amask, after=keep)
        seq_plain, seq_rec = plain(), recorded()  # warm-up
        tp, tr, mp, mr = _interleaved(plain, recorded, repeats, device)
        dt_e, out_e, mem_e = _timed(lambda batch=batch, gen=gen: _eager_generate(lm, batch, gen), device)
        seq_e, ref = out_e.sequences, _audio_attention(out_e, amask)
        yields = recs[0].float().to(ref.device)  # [B, N, L, H]
        a, r = statistics.median(tp), statistics.median(tr)
        rows.append({
            "batch": b, "new_tokens": new_tokens,
            "plain_sdpa": {"seconds": round(a, 4), "peak_bytes": int(np.median(mp))},
            "recorder": {"seconds": round(r, 4), "ratio": round(r / a, 4), "peak_bytes": int(np.median(mr))},
            "eager_output_attentions": {"seconds": round(dt_e, 4), "ratio": round(dt_e / a, 4), "peak_bytes": int(mem_e)},
            "max_abs_recorder_minus_eager": float((yields - ref).abs().max()),
            "tokens_equal_plain_recorder": bool(torch.equal(seq_plain, seq_rec)),
            "tokens_equal_plain_eager": bool(torch.equal(seq_plain, seq_e)),
            "plain_s_all": [round(x, 4) for x in tp], "recorded_s_all": [round(x, 4) for x in tr],
        })
    return {
        "device": device, "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "dtype": str(next(lm.model.parameters()).dtype).replace("torch.", ""), "model": lm.model_id,
        "layers": lm.arch.n_layers, "heads": lm.arch.n_heads, "clip_seconds": clip_seconds,
        "audio_tokens": int(audio_mask_from_ids(one["input_ids"], lm.arch).sum()),
        "prompt_tokens": int(one["input_ids"].shape[1]), "repeats": repeats,
        "memory_how": ("CUDA: torch.cuda.max_memory_allocated after synchronize, minus what was allocated before "
                       "the phase (the model); CPU: sampled RSS above the start"),
        "runs": rows,
    }


def bench_gpu_eval(model: str = "smol-audio", *, n: int = 200, device: str = "cuda", batch_size: int = 32,
                   max_new_tokens: int = 32) -> dict[str, Any]:
    """The real-weights model's accuracy on ``n`` cafe items (direct answers, real audio), with its
    Wilson interval and wall time; ``{"skipped": reason}`` where the model cannot be loaded here."""
    import torch

    try:
        lm = load_model(model, device=device, dtype="bfloat16" if device.startswith("cuda") else "float32")
    except (AuralensError, OSError) as exc:
        return {"model": model, "skipped": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}
    items = load_dataset("cafe", n=n, seed=0)
    t = time.perf_counter()
    df = run_eval(lm, items, formats=("direct",), audio_modes=("real",),
                  cfg=GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size), progress=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    acc, lo, hi = accuracy_ci(df["correct"].to_numpy(dtype=float))
    return {"model": model, "n": len(df), "accuracy": round(float(acc), 4), "ci_low": round(float(lo), 4),
            "ci_high": round(float(hi), 4), "seconds": round(dt, 2), "items_per_s": round(len(df) / dt, 2)}


def bench_gpu(*, batches: tuple[int, ...] = (1, 8), new_tokens: int = 512, repeats: int = 3, eval_n: int = 200,
              eval_model: str = "smol-audio") -> dict[str, Any]:
    """`auralens bench gpu`: :func:`bench_gpu_run` on a random-init model of Qwen2-Audio-7B's
    dimensions in bfloat16 on the GPU (30 s clip), then :func:`bench_gpu_eval`.  Refuses first
    (:func:`require_cuda`) where no GPU exists."""
    import torch

    require_cuda()
    m, proc = build_shaped("qwen2_audio", "qwen2-audio-7b", dtype=torch.bfloat16, device="cuda")
    proc.tokenizer.padding_side = "left"
    lm = LoadedModel(model=m, processor=proc, arch=describe(m), model_id="qwen2-audio-7b-shaped", source="")
    t = time.perf_counter()
    res = bench_gpu_run(lm, batches=batches, new_tokens=new_tokens, repeats=repeats)
    res["bench_seconds"] = round(time.perf_counter() - t, 1)
    del lm, m
    gc.collect()
    torch.cuda.empty_cache()
    res["eval"] = bench_gpu_eval(eval_model, n=eval_n) if eval_n else {"skipped": "--eval-n 0"}
    return res
