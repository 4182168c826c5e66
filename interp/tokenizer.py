"""A word-level tokenizer built locally (for `micro` and the tiny test models).

Written with the `tokenizers` library's WordLevel model and wrapped as a transformers fast
tokenizer, so it saves/loads with ``AutoTokenizer`` exactly like a real checkpoint's.  Newlines
are kept as their own token so that reasoning steps survive tokenisation.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

QWEN_AUDIO_SPECIALS = [
    "<pad>",
    "<unk>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
]


def build_word_tokenizer(
    words: Iterable[str],
    *,
    specials: list[str] | None = None,
    eos_token: str = "<|im_end|>",
    pad_token: str = "<pad>",
    unk_token: str = "<unk>",
):
    from transformers import PreTrainedTokenizerFast

    specials = list(specials or QWEN_AUDIO_SPECIALS)
    vocab: dict[str, int] = {}
    for tok in [*specials, "\n", *words]:
        if tok not in vocab:
            vocab[tok] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[ \t]+"), "removed"),
            pre_tokenizers.Split(Regex(r"\n"), "isolated"),
        ]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=unk_token,
        pad_token=pad_token,
        eos_token=eos_token,
        additional_special_tokens=[s for s in specials if s not in (unk_token, pad_token)],
    )
    tok.padding_side = "left"
    return tok


def clean_decoded(text: str) -> str:
    """Undo the word-level decoder's spaces around newlines."""
    return text.replace(" \n ", "\n").replace(" \n", "\n").replace("\n ", "\n").strip()
