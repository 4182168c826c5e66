"""Prompt templates: every template renders through every supported processor, system turns
land where the chat template puts them, defaults come from the model, bad names are refused
before anything is written."""

import pytest

from auralens.interp.cafe import make_items
from auralens.interp.errors import ConfigError, PromptError
from auralens.interp.prompts import build_inputs
from auralens.interp.templates import QWEN25_OMNI_SYSTEM, TEMPLATES, default_template, question_text
from auralens.testing.tiny import TINY_ARCHS

ITEMS = make_items(2, seed=3)


def _contains(processor, row, text: str) -> bool:
    """The tokens of ``text`` (less its first and last, which may merge with their neighbours
    under BPE) occur contiguously in ``row``."""
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"][1:-1]
    row = [int(x) for x in row]
    return any(row[i:i + len(ids)] == ids for i in range(len(row) - len(ids) + 1))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_template_renders_through_every_processor(arch, tiny_cache):
    _, processor = tiny_cache(arch)
    for name, tpl in TEMPLATES.items():
        for fmt in ("direct", "cot"):
            if arch == "voxtral" and tpl.system is not None:
                with pytest.raises(PromptError, match="system turn"):
                    build_inputs(processor, ITEMS, fmt, template=name)
                continue
            batch = build_inputs(processor, ITEMS, fmt, template=name)
            for it, row in zip(ITEMS, batch["input_ids"]):
                # the template's user turn and system turn reach the model's tokens as written
                assert _contains(processor, row, question_text(it, fmt, name)), (arch, name, fmt)
                if tpl.system is not None:
                    assert _contains(processor, row, tpl.system), (arch, name)


def test_template_wordings():
    it = ITEMS[0]
    r1 = question_text(it, "direct", "r1-aqa")
    assert r1.endswith("Output the final answer in <answer> </answer>.")
    assert "<think>" in question_text(it, "cot", "r1-aqa")
    mmau = question_text(it, "direct", "mmau")
    assert "Choose the correct option from the following options:\n(A) " in mmau
    assert question_text(it, "direct", "cafe") != mmau
    assert TEMPLATES["qwen2.5-omni"].system == QWEN25_OMNI_SYSTEM
    with pytest.raises(ConfigError, match="prompt_template: expected one of"):
        question_text(it, "direct", "alpaca")


def test_defaults_come_from_the_folder_then_the_id():
    assert default_template("micro") == "cafe"
    assert default_template("Qwen/Qwen2-Audio-7B-Instruct") == "qwen2-audio-instruct"
    assert default_template("mispeech/r1-aqa") == "r1-aqa"
    assert default_template("Qwen/Qwen2.5-Omni-7B") == "qwen2.5-omni"
    assert default_template("Qwen/Qwen2-Audio-7B-Instruct", {"prompt_template": "mmau"}) == "mmau"
    with pytest.raises(ConfigError):
        default_template("x", {"prompt_template": "nope"})


def test_stage_option_sets_the_template_and_a_bad_one_writes_nothing(small_lm, tmp_path):
    from auralens.interp.evaluate import stage_eval

    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match="prompt_template"):
        stage_eval(model="micro", n=2, formats=("direct",), silence=False, out=out, prompt_template="alpaca",
                   lm=small_lm, quiet=True)
    assert not out.exists()
    before = small_lm.prompt_template
    try:
        res = stage_eval(model="micro", n=2, formats=("direct",), silence=False, out=tmp_path / "ok",
                         prompt_template="r1-aqa", max_new_tokens=2, lm=small_lm, quiet=True)
        assert small_lm.prompt_template == "r1-aqa"
        assert set(res["extraction"]) == {"real/direct"} and sum(res["extraction"]["real/direct"].values()) == 2
        assert 0 < res["chance"]["all"] < 1
    finally:
        small_lm.use_template(before)


def test_a_template_voxtral_cannot_take_is_refused_up_front(tiny_cache):
    from auralens.interp.prompts import check_template_fits

    _, vox = tiny_cache("voxtral")
    _, qwen = tiny_cache("qwen2_audio")
    with pytest.raises(PromptError, match="system turn"):
        check_template_fits(vox, "qwen2.5-omni")
    check_template_fits(vox, "r1-aqa")
    check_template_fits(qwen, "qwen2.5-omni")
