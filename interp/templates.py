"""Prompt templates: how one item's question and choices become the user turn (and system turn)
a model sees.  Selected with ``--prompt-template``; the default comes from the model
(:func:`default_template`).

==========================  ============================================================  =======================
name                        user turn (after the audio)                                   system turn
==========================  ============================================================  =======================
``cafe``                    cafe's own wording and answer-format instruction              the chat template's own
``chat``                    question, lettered choices, "Answer with the option."         the chat template's own
``mmau``                    MMAU's instruction wording (question, then "Choose the        the chat template's own
                            correct option from the following options:" and lettered
                            choices)
``qwen2-audio-instruct``    the question and choices as Qwen2-Audio-Instruct's model      "You are a helpful
                            card shows audio QA (plain text after the clip)               assistant."
``r1-aqa``                  R1-AQA's prompt: "... Please choose the answer from the       the chat template's own
                            following options: [...]. Output the final answer in
                            <answer> </answer>." (with ``cot``: thinking in <think>)
``qwen2.5-omni``            as ``qwen2-audio-instruct``                                   Qwen2.5-Omni's system
                                                                                          prompt (its model card)
==========================  ============================================================  =======================

Only ``cafe`` carries the ``cot``/``structured`` claim wording the decay and claim tools parse;
the other templates ask for reasoning in plain words with ``cot``/``structured``.  Whatever the
template, the answer is read by :mod:`auralens.interp.answers` (tags, letters, sentences).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass

from auralens.interp.cafe.formats import FORMATS, prompt_text
from auralens.interp.errors import ConfigError
from auralens.interp.items import Item

__all__ = ["TEMPLATES", "PromptTemplate", "check_template", "default_template", "question_text"]

QWEN25_OMNI_SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
                      "perceiving auditory and visual inputs, as well as generating text and speech.")


def _lettered(choices) -> str:
    return "\n".join(f"({string.ascii_uppercase[i]}) {c}" for i, c in enumerate(choices))


def _think(fmt: str) -> str:
    return "" if fmt == "direct" else " Think step by step before you answer."


def _chat(it: Item, fmt: str) -> str:
    return f"{it.question}\n{_lettered(it.choices)}\nAnswer with the option.{_think(fmt)}"


def _mmau(it: Item, fmt: str) -> str:
    return f"{it.question}\nChoose the correct option from the following options:\n{_lettered(it.choices)}{_think(fmt)}"


def _qwen(it: Item, fmt: str) -> str:
    return f"{it.question} Choices: {', '.join(it.choices)}.{_think(fmt)}"


def _r1(it: Item, fmt: str) -> str:
    opts = "[" + ", ".join(f"'{c}'" for c in it.choices) + "]"
    tail = ("Output the final answer in <answer> </answer>." if fmt == "direct" else
            "Output the thinking process in <think> </think> and final answer in <answer> </answer>.")
    return f"{it.question} Please choose the answer from the following options: {opts}. {tail}"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    question: Callable[[Item, str], str]  #: (item, answer format) -> the user turn's text
    system: str | None = None  #: None: the chat template's own default system turn, if any


TEMPLATES: dict[str, PromptTemplate] = {t.name: t for t in (
    PromptTemplate("cafe", prompt_text),
    PromptTemplate("chat", _chat),
    PromptTemplate("mmau", _mmau),
    PromptTemplate("qwen2-audio-instruct", _qwen, "You are a helpful assistant."),
    PromptTemplate("r1-aqa", _r1),
    PromptTemplate("qwen2.5-omni", _qwen, QWEN25_OMNI_SYSTEM),
)}

#: checkpoint id / folder name fragments (lower case) -> their template, first match wins; a
#: folder's ``auralens_model.json`` ``prompt_template`` overrides this, ``--prompt-template`` both
_BY_ID = (("r1-aqa", "r1-aqa"), ("qwen2.5-omni", "qwen2.5-omni"), ("qwen2-audio", "qwen2-audio-instruct"))


def check_template(name: str) -> str:
    """``name`` itself when it is a template, else a :class:`ConfigError` naming the options."""
    if name not in TEMPLATES:
        raise ConfigError(f"prompt_template: expected one of {sorted(TEMPLATES)}, found {name!r}")
    return name


def default_template(model_id: str, folder_info: dict | None = None) -> str:
    """The template a model gets without ``--prompt-template``: its folder's
    ``auralens_model.json`` ``prompt_template``, else by its id (R1-AQA, Qwen2.5-Omni,
    Qwen2-Audio), else ``cafe`` (micro, the organisms, models trained here)."""
    if folder_info and folder_info.get("prompt_template"):
        return check_template(str(folder_info["prompt_template"]))
    low = model_id.lower()
    for frag, name in _BY_ID:
        if frag in low:
            return name
    return "cafe"


def question_text(item: Item, fmt: str, template: str = "cafe") -> str:
    """The user turn's text for ``item`` in answer format ``fmt`` under ``template``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown answer format {fmt!r}; expected one of {FORMATS}")
    return TEMPLATES[check_template(template)].question(item, fmt)
