from auralens.interp.matching import match_choice, mmau_string_match


def test_mmau_rule_accepts_answer_and_rejects_distractor_words():
    choices = ["Man", "Woman", "Child", "Robot"]
    assert mmau_string_match("Man", "The speaker is a man.", choices)
    assert not mmau_string_match("Man", "a man or a woman", choices)
    assert not mmau_string_match("Man", "", choices)
    assert match_choice("chirp up", ["chirp up", "chirp down", "tone", "noise"]) == "chirp up"
    assert match_choice("chirp", ["chirp up", "chirp down", "tone", "noise"]) is None


def test_mmau_rule_on_multiword_choices():
    choices = ["Yes, it is the second sound.", "Yes, it is the third sound.", "No, it is not present."]
    assert mmau_string_match(choices[2], "No, it is not present", choices)
    assert not mmau_string_match(choices[0], "yes it is the third sound", choices)
