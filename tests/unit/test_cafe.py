"""cafe: determinism, ground truth, question validity, formats and claim checking."""

import numpy as np
import pytest

from auralens.interp.answers import extract
from auralens.interp.cafe import (
    CLASSES,
    check_claims,
    make_item,
    make_items,
    make_scene,
    parse_claims,
    render_target,
    synthesize,
)
from auralens.interp.cafe.formats import FORMATS, prompt_text
from auralens.interp.cafe.questions import COUNT_WORDS, QTYPES, TIERS
from auralens.interp.cafe.scenes import Scene


def test_same_seed_same_data():
    a, b = make_items(30, seed=3), make_items(30, seed=3)
    assert [x.to_row() for x in a] == [x.to_row() for x in b]
    assert [x.scene for x in a] == [x.scene for x in b]
    wa, wb = synthesize(Scene.from_dict(a[0].scene)), synthesize(Scene.from_dict(b[0].scene))
    assert np.array_equal(wa, wb)
    assert [x.to_row() for x in make_items(30, seed=4)] != [x.to_row() for x in a]


def test_scene_events_do_not_overlap_and_fit():
    for seed in range(200):
        s = make_scene(seed)
        assert 1 <= len(s.events) <= 4
        for e1, e2 in zip(s.events, s.events[1:]):
            assert e1.offset <= e2.onset
        assert s.events[-1].offset <= s.duration
        assert all(e.cls in CLASSES for e in s.events)


def test_synthesis_puts_energy_where_events_are():
    s = make_scene(11, n_events=3)
    y = synthesize(s)
    sr = s.sample_rate
    assert y.dtype == np.float32 and len(y) == int(s.duration * sr)
    for e in s.events:
        seg = y[int(e.onset * sr) : int(e.offset * sr)]
        rms_db = 20 * np.log10(np.sqrt(np.mean(seg**2)))
        assert abs(rms_db - e.loudness_db) < 1.5, (e, rms_db)
    gap = y[: int(s.events[0].onset * sr) - 10]
    if len(gap):
        assert 20 * np.log10(np.sqrt(np.mean(gap**2)) + 1e-12) < -50


def test_every_question_type_is_answerable_from_ground_truth():
    for tier in TIERS:
        for qt in QTYPES[tier]:
            for seed in range(40):
                it = make_item(seed, tier=tier, qtype=qt)
                ev = it.scene["events"]
                assert it.answer in it.choices and len(set(it.choices)) == len(it.choices)
                if qt == "count":
                    assert it.answer == COUNT_WORDS[len(ev)]
                if qt == "last":
                    assert it.answer == ev[-1]["cls"].replace("_", " ")
                if qt == "count_loud":
                    assert it.answer == COUNT_WORDS[sum(e["loudness_level"] == "loud" for e in ev)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_reference_targets_make_only_true_claims_and_carry_the_answer(fmt):
    for it in make_items(60, seed=5):
        t = render_target(it, fmt)
        ex = extract(t, it.choices)
        assert (ex.choice, ex.how) == (it.answer, "choice")
        checked = check_claims(parse_claims(t), it.scene)
        assert all(ok for _, ok in checked)
        if fmt == "structured":
            # one full claim line per sound: class, pitch and loudness each checkable
            assert sum(c.kind == "class" for c, _ in checked) >= len(it.scene["events"])
        assert it.question in prompt_text(it, fmt)


def test_wrong_claims_are_caught_with_their_step():
    it = make_item(1, tier="perception", qtype="count")
    ev = it.scene["events"]
    wrong_cls = next(c for c in CLASSES if c != ev[0]["cls"]).replace("_", " ")
    text = f"i hear {COUNT_WORDS[len(ev)]} sounds\nsound 1 is {wrong_cls}\nsound 9 : tone low soft"
    checked = check_claims(parse_claims(text), it.scene)
    by_step = {(c.step, c.kind): ok for c, ok in checked}
    assert by_step[(0, "count")] is True
    assert by_step[(1, "class")] is False
    assert by_step[(2, "class")] is False  # a sound that does not exist


def test_answers_are_balanced_enough_that_text_alone_is_near_chance():
    items = make_items(600, seed=2)
    for qt in ("identity", "louder", "higher", "first_of_two", "last", "after"):
        idx = [it.answer_index for it in items if it.sub_category == qt]
        counts = np.bincount(idx)
        assert counts.max() / counts.sum() < 0.65, (qt, counts)
