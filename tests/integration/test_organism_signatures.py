"""Each committed organism shows its planted signature, and the healthy micro does not.

The checks of ``auralens organisms validate`` (auralens/organisms/validate.py), on small fixed item sets
(the cue datasets' dev split; the first items of the calibration / test splits), with the
thresholds unchanged.  Deterministic: greedy decoding on CPU, fixed seeds.
"""

from __future__ import annotations

import pytest

from auralens.organisms import (
    cue_accuracy,
    decay_checks,
    heads_checks,
    healthy_checks,
    planted,
    prior_checks,
    probe_checks,
)


def _lm(name):
    from auralens.interp.loading import load_model

    return load_model(name, device="cpu", dtype="float32")


def _assert_all_pass(rows):
    failed = [r for r in rows if not r["pass"]]
    assert not failed, "\n".join(f"{r['organism']} {r['check']}: {r['value']} (threshold {r['threshold']}; {r['note']})"
                                 for r in failed)
    assert rows


@pytest.fixture(scope="module")
def prior():
    return _lm("micro-prior")


@pytest.fixture(scope="module")
def healthy():
    return _lm("micro")


def test_prior_signature(prior):
    _assert_all_pass(prior_checks("micro-prior", cue_accuracy(prior, 60, split="dev")))


def test_prior_information_is_still_there(prior, tmp_path):
    # n as `organisms validate` runs it: at 100 test items event1_class's selectivity over the
    # Hewitt & Liang control (24 sound types) is underpowered (0.15 measured; 0.28 at 300)
    rows = probe_checks("micro-prior", prior, 300, 200, tmp_path)
    _assert_all_pass(rows)
    assert {r["check"] for r in rows if r["threshold"] == "reported only"} == {
        "probe_event1_class_last_prompt_accuracy", "probe_event1_class_last_prompt_selectivity"}


def test_healthy_micro_ignores_cues_and_has_no_break(healthy, tmp_path):
    # the "no effect" rows are equivalence tests (TOST): they need the n that gives them power
    # at a true 0 (about 250 for the ±0.05 cue margin; at 60 their power is 0.02-0.06)
    rows = healthy_checks("micro", cue_accuracy(healthy, 300, split="dev"))
    rows += decay_checks("micro", healthy, None, 120, tmp_path / "micro")
    _assert_all_pass(rows)


def test_planted_heads_are_recovered(tmp_path):
    name = "micro-heads"
    _assert_all_pass(heads_checks(name, _lm(name), planted(name)["listen_heads"], 80, tmp_path / name))


def test_planted_decay_onset_is_recovered(tmp_path):
    name = "micro-decay"
    _assert_all_pass(decay_checks(name, _lm(name), planted(name)["decay_step"], 120, tmp_path / name))
