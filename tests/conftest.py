"""Shared test fixtures: tiny random-init models of the real LALM classes.

Models are built once per session (seeded) and handed out as deep copies, so a test may hook,
sharpen or break its copy freely.  No test reaches the model hub: the hub is switched to
offline mode for the whole session, so a library that would try to download fails at once
instead of retrying for minutes.
"""

from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: the modules whose public functions and dataclasses carry jaxtyping shapes ("batch pos",
#: "layer d_model", ...): under pytest every call into them checks the shape-annotated
#: arguments and results (auralens.testing.shapes), the named dimensions agreeing across the
#: arguments of one call.  The hook must be installed before they are first imported, hence
#: here, above every other import of auralens.
SHAPE_CHECKED = (
    "auralens.interp.attention_yield",
    "auralens.probes.collect",
    "auralens.probes.fit",
    "auralens.steering.apply",
    "auralens.steering.directions",
    "auralens.steering.vector",
)


def _install_shape_checks() -> None:
    import sys

    from jaxtyping import install_import_hook

    import auralens.testing.shapes  # noqa: F401  (the hook names its checker by this path)

    early = [m for m in SHAPE_CHECKED if m in sys.modules]
    assert not early, f"imported before the shape-check hook, so not checked: {early}"
    install_import_hook(list(SHAPE_CHECKED), "auralens.testing.shapes.shape_checker")


_install_shape_checks()


@pytest.fixture
def unchecked_shapes():
    """Shape checks off for one test: for the tests of how the library itself reports a
    malformed input (its own error, as a user gets it, where no checker runs)."""
    from jaxtyping import config

    config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        config.update("jaxtyping_disable", False)


@pytest.fixture(scope="session")
def tiny_cache():
    """``get(arch, seed=0) -> (model, processor)``, built once per session; do not mutate."""
    from auralens.testing.tiny import build_tiny, canonical_arch

    cache: dict[tuple[str, int], tuple] = {}

    def get(arch: str, seed: int = 0):
        key = (canonical_arch(arch), seed)
        if key not in cache:
            cache[key] = build_tiny(key[0], seed=seed)
        return cache[key]

    return get


@pytest.fixture
def tiny_model(tiny_cache):
    """``make(arch, seed=0) -> (model, processor)``: private deep copies of the session models."""

    def make(arch: str, seed: int = 0):
        model, processor = tiny_cache(arch, seed)
        return copy.deepcopy(model), copy.deepcopy(processor)

    return make


@pytest.fixture(scope="session")
def small_micro_dir(tmp_path_factory):
    """A saved, untrained, smaller micro-shaped checkpoint (the real Qwen2-Audio class with
    micro's processor and tokenizer; 3 layers, d_model 64, 4 heads / 2 kv heads), for tests that
    need the real pipeline but not a trained model."""
    from auralens.interp.micro.build import MicroConfig, build_model, build_processor

    folder = tmp_path_factory.mktemp("small_micro")
    cfg = MicroConfig(layers=3, d_model=64, heads=4, kv_heads=2, ffn=128, d_audio=64)
    processor = build_processor(cfg)
    build_model(processor, cfg).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def small_lm(small_micro_dir):
    """The small untrained micro-shaped model loaded through load_model, one per test module
    (modules hook and steer it)."""
    from auralens.interp.loading import load_model

    return load_model(str(small_micro_dir), device="cpu", dtype="float32")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One BLAS/OpenMP thread per test module: the suite runs two workers on two cores."""
    import torch
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """A real run folder produced by `micro` (eval + record stages, a handful of items), laid out
    like `auralens demo`'s: the dashboard and report tests read it."""
    from auralens.interp.evaluate import stage_eval
    from auralens.interp.loading import load_model
    from auralens.interp.record import stage_record

    root = tmp_path_factory.mktemp("micro_run") / "demo"
    lm = load_model("micro", device="cpu")
    stage_eval(model="micro", data="cafe", n=6, formats=("direct",), out=root / "eval", lm=lm, quiet=True,
               batch_size=6, max_new_tokens=48)
    stage_record(model="micro", data="cafe", n=6, fmt="structured", out=root / "record", lm=lm, batch_size=6,
                 max_new_tokens=80, top_k=3, n_boot=100, all_prompt=True, quiet=True)
    return root


def write_folder_dataset(folder, n: int, *, seed: int = 11, seconds: float = 0.5):
    """A folder dataset of ``n`` cafe-worded questions (micro's vocabulary) over short wav files
    (silence plus a tone whose pitch depends on the row), with ids ``f<i>``.  Returns the folder."""
    import json
    from pathlib import Path

    import numpy as np
    import soundfile as sf

    from auralens.interp.datasets import load_cafe

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sr = 16000
    t = np.arange(int(sr * seconds)) / sr
    lines = []
    for i, it in enumerate(load_cafe(n, seed=seed)):
        sf.write(folder / f"a{i}.wav", (0.1 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32), sr)
        lines.append(json.dumps({"id": f"f{i}", "audio": f"a{i}.wav", "question": it.question,
                                 "choices": list(it.choices), "answer": it.answer}))
    (folder / "questions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def folder_dataset(tmp_path):
    """``make(n, name="ds") -> folder``: a folder dataset under tmp_path (see write_folder_dataset)."""
    return lambda n, name="ds": write_folder_dataset(tmp_path / name, n)
