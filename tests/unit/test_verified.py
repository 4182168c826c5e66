"""The 'tested here' registry (auralens.testing.verified) can only claim what the suite runs."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from auralens.interp.arch import TABLES, table_by_name
from auralens.testing import verified
from auralens.testing.tiny import TINY_ARCHS
from auralens.testing.verified import TESTED_HERE, TESTED_WITH

HERE = Path(__file__).resolve().parent


@cache
def _collected(test_file: str) -> tuple[str, ...]:
    """The node ids pytest collects from a test file (asked of pytest in a subprocess, so no
    test module is imported by another and the answer is what the suite really runs)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         str(HERE / test_file)],
        capture_output=True, text=True, cwd=HERE.parents[1], timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return tuple(line.strip() for line in out.stdout.splitlines() if "::" in line)


def _params(test_file: str, test: str) -> set[str]:
    """The parameter ids a test function is collected with (``test[<id>]``)."""
    ids = {m[1] for node in _collected(test_file) if (m := re.search(rf"::{test}\[([^\]]+)\]$", node))}
    assert ids, f"{test_file}::{test} is not parametrised (or not collected)"
    return ids


def test_every_entry_is_a_table():
    assert set(TESTED_HERE) <= {t.name for t in TABLES.values()}
    for name, row in TESTED_HERE.items():
        assert set(row) == {"tiny_exactness", "transformer_lens", "long_audio", "real_checkpoint"}, name
        assert all(isinstance(v, bool) for v in row.values())


@pytest.mark.parametrize("name", sorted(TESTED_HERE))
def test_tiny_exactness_claims_have_a_tiny_model_and_parametrised_exactness_tests(name):
    if not TESTED_HERE[name]["tiny_exactness"]:
        pytest.skip(f"{name} claims no tiny exactness")
    assert name in TINY_ARCHS
    for test in ("test_generate_matches_eager_attention", "test_all_prompt_rows_match_eager",
                 "test_time_bins_sum_to_total_and_match_eager_per_bin"):
        assert name in _params("test_attention_yield.py", test), test


def test_every_tiny_model_is_in_the_registry():
    assert {n for n in TINY_ARCHS} == {n for n, r in TESTED_HERE.items() if r["tiny_exactness"]}


def test_transformer_lens_claims_match_the_comparison_that_runs():
    from transformer_lens.factories import architecture_adapter_factory

    for name, row in TESTED_HERE.items():
        cls = table_by_name(name).model_class
        runs = name == "qwen2_5_omni_thinker" or cls in architecture_adapter_factory.SUPPORTED_ARCHITECTURES
        assert row["transformer_lens"] == (runs and row["tiny_exactness"]), name
    assert {n for n, r in TESTED_HERE.items() if r["transformer_lens"]} <= _params(
        "test_attention_yield.py", "test_generate_matches_transformer_lens_hook_pattern")


def test_long_audio_claims_are_the_windowed_tests():
    from auralens.testing.verified import LONG_AUDIO_PADDED as PADDED, LONG_AUDIO_WINDOWED as WINDOWED

    assert {n for n, r in TESTED_HERE.items() if r["long_audio"]} == set(WINDOWED) | set(PADDED)
    assert _params("test_long_audio.py", "test_windowed_yields_match_eager_and_time_bins_span_the_clip") == set(WINDOWED)
    assert _params("test_long_audio.py",
                   "test_padded_windows_tokens_yields_and_time_bins_span_the_padded_clip") == set(PADDED)
    assert all(table_by_name(n).audio_windowing == "windows" for n in WINDOWED)
    assert all(table_by_name(n).audio_windowing == "padded_windows" for n in PADDED)


def test_no_real_checkpoint_is_claimed():
    assert not any(r["real_checkpoint"] for r in TESTED_HERE.values())


def test_versions_are_the_installed_ones():
    import torch
    import transformers

    assert TESTED_WITH == {"transformers": transformers.__version__, "torch": torch.__version__}, (
        "rerun the tiny-model tests on these versions and update auralens.testing.verified.TESTED_WITH"
    )
    assert verified.tested_here("qwen2_audio")["transformers"] == transformers.__version__
    assert verified.tested_here("no_such_table") is None
