"""The 'tested here' registry (auralens.testing.verified) can only claim what the suite runs."""

from __future__ import annotations

import importlib

import pytest

from auralens.testing.tiny import TINY_ARCHS
from auralens.testing import verified
from auralens.testing.verified import TESTED_HERE, TESTED_WITH
from interp.arch import TABLES, table_by_name


def _params(module: str, test: str, argname: str) -> set[str]:
    """The values a test function is parametrised over (its pytest.mark.parametrize)."""
    fn = getattr(importlib.import_module(module), test)
    marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize" and m.args[0] == argname]
    assert marks, f"{module}.{test} is not parametrised over {argname!r}"
    return set(marks[0].args[1])


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
        assert name in _params("tests.test_attention_yield", test, "case"), test


def test_every_tiny_model_is_in_the_registry():
    assert {n for n in TINY_ARCHS} == {n for n, r in TESTED_HERE.items() if r["tiny_exactness"]}


def test_transformer_lens_claims_match_the_comparison_that_runs():
    from transformer_lens.factories import architecture_adapter_factory

    for name, row in TESTED_HERE.items():
        cls = table_by_name(name).model_class
        runs = name == "qwen2_5_omni_thinker" or cls in architecture_adapter_factory.SUPPORTED_ARCHITECTURES
        assert row["transformer_lens"] == (runs and row["tiny_exactness"]), name
    assert {n for n, r in TESTED_HERE.items() if r["transformer_lens"]} <= _params(
        "tests.test_attention_yield", "test_generate_matches_transformer_lens_hook_pattern", "case")


def test_long_audio_claims_are_the_windowed_tests():
    from tests.test_long_audio import PADDED, WINDOWED

    assert {n for n, r in TESTED_HERE.items() if r["long_audio"]} == set(WINDOWED) | set(PADDED)
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
