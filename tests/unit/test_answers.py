"""The free-text answer path: R1-AQA-, Qwen2-Audio- and MMAU-style outputs through extraction and
MMAU's string_match, negations, and failures counted."""

import pytest

from auralens.interp.answers import HOWS, extract, extraction_counts, score_text
from auralens.interp.generation import score
from auralens.interp.items import Item

CHOICES = ["Dog barking", "Cat meowing", "Car horn", "Rain"]

# (model style, generation, expected choice, expected step); answers recorded in the styles the
# models' papers and model cards show (R1-AQA: think/answer tags; Qwen2-Audio-Instruct: a letter
# or "The answer is ..."; MMAU baselines: "(B) text" or a sentence).
CASES = [
    ("r1-aqa", "<think>I hear a repeated high sound, likely a cat.</think><answer>Cat meowing</answer>", "Cat meowing", "choice"),
    ("r1-aqa", "<think>The dog? No. It is a horn.</think>\n<answer>(C)</answer>", "Car horn", "letter"),
    ("r1-aqa", "<think>Dog barking and rain are both possible, but</think><answer>Rain", "Rain", "choice"),
    ("r1-aqa", "<think>It is a dog barking.", "", "none"),  # cut off inside think: no answer at all
    ("qwen2-audio", "B", "Cat meowing", "letter"),
    ("qwen2-audio", "The answer is A.", "Dog barking", "letter"),
    ("qwen2-audio", "The answer is Car horn.", "Car horn", "choice"),
    ("qwen2-audio", "Answer: D", "Rain", "letter"),
    ("mmau", "(B) Cat meowing", "Cat meowing", "choice"),
    ("mmau", "The sound in the audio is a car horn.", "Car horn", "choice"),
    ("mmau", "It is rain, not a dog barking.", "Rain", "negation"),
    ("mmau", "I cannot tell from the audio.", "", "none"),
    ("mmau", "Dog barking or cat meowing.", "", "none"),  # names two: no single choice
    ("cafe", "i hear two sounds .\nanswer : car horn", "Car horn", "choice"),
]


@pytest.mark.parametrize("style,text,choice,how", CASES)
def test_recorded_answer_styles_extract_and_score(style, text, choice, how):
    ex = extract(text, CHOICES)
    assert (ex.choice, ex.how) == (choice, how), style
    for answer in CHOICES:
        row = score_text(answer, text, CHOICES)
        assert row["correct"] == (answer == choice), (style, answer)
        assert row["extracted"] == how


def test_a_sentence_naming_one_choice_and_negating_the_other_counts_once():
    choices = ["man", "woman"]
    text = "The voice belongs to a man, not a woman."
    assert score_text("man", text, choices)["correct"]
    assert not score_text("woman", text, choices)["correct"]
    # and the other way round: the negated choice is the one left out
    text2 = "Not a man; the speaker is a woman."
    assert extract(text2, choices).choice == "woman"
    assert score_text("woman", text2, choices)["correct"] and not score_text("man", text2, choices)["correct"]


def test_lowercase_words_are_not_letters():
    # "a" opens many sentences: it must not read as choice A unless it stands alone
    assert extract("a cat meowing, I think", CHOICES).choice == "Cat meowing"
    assert extract("a cat, I think", CHOICES).how == "none"  # MMAU needs every word of the choice
    assert extract("a", CHOICES).how == "letter"
    assert extract("e", CHOICES).how == "none"  # beyond the choices
    assert extract("(E)", CHOICES).how == "none"


def test_failures_are_counted_and_scored_wrong():
    texts = ["B", "<answer>Rain</answer>", "no idea", "It is rain, not a dog barking."]
    hows = [extract(t, CHOICES).how for t in texts]
    counts = extraction_counts(hows)
    assert set(counts) == set(HOWS)
    assert counts == {"choice": 1, "letter": 1, "negation": 1, "none": 1}
    assert not any(score_text(a, "no idea", CHOICES)["correct"] for a in CHOICES)


def test_generation_score_is_the_answer_path():
    it = Item(item_id="x", question="What is it?", choices=tuple(CHOICES), answer="Rain", tier="perception",
              category="perception", sub_category="class", audio="cafe:1")
    assert score(it, "<think>hmm</think><answer>D</answer>") == {
        "answer_span": "Rain", "matched_choice": "Rain", "extracted": "letter", "correct": True}
