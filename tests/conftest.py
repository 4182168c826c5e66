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
