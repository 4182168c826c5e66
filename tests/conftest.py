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


@pytest.fixture(scope="session")
def tiny_cache():
    """``get(arch, seed=0) -> (model, processor)``, built once per session; do not mutate."""
    from interp.tiny import build_tiny, canonical_arch

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
def untrained_micro_dir(tmp_path_factory):
    """A saved, untrained micro-shaped checkpoint (same class, processor and tokenizer as
    `micro`), for tests that need a real pipeline but not a trained model."""
    from interp.micro.build import build_model, build_processor

    folder = tmp_path_factory.mktemp("untrained_micro")
    processor = build_processor()
    build_model(processor).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """A real run folder produced by `micro` (eval + record stages, a handful of items), laid out
    like `auralens demo`'s: the dashboard and report tests read it."""
    from auralens.stages import stage_eval
    from interp.loading import load_model
    from interp.record import stage_record

    root = tmp_path_factory.mktemp("micro_run") / "demo"
    lm = load_model("micro", device="cpu")
    stage_eval(model="micro", data="cafe", n=6, formats=("direct",), out=root / "eval", lm=lm, quiet=True,
               batch_size=6, max_new_tokens=48)
    stage_record(model="micro", data="cafe", n=6, fmt="structured", out=root / "record", lm=lm, batch_size=6,
                 max_new_tokens=80, top_k=3, n_boot=100, all_prompt=True, quiet=True)
    return root
