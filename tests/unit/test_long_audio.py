"""Long audio: each table's maximum clip and windows; windowed classes (Audio Flamingo 3, Music
Flamingo, GLM-ASR) are not cut at one window, only past their maximum; Voxtral pads each clip to
whole windows and gives the padding audio tokens too, so its time bins span the padded windows.

The tiny models' processors use 2-s windows and ``max_audio_len`` 8 s (4 windows), the shape of
the real Audio Flamingo 3 (30-s windows up to 600 s).  For each windowed class, a 5-s clip is 3
windows: it reaches the model whole, its audio tokens are the processor's, the recorder's yields
over it (batched with a 3.3-s clip, left-padded) equal eager attention within 1e-5 (prompt rows,
generated rows, each time bin), and its time bins map the tokens of all windows onto [0, 5] s in
order.  Past the maximum the clip is cut to it, with a warning naming the maximum and the model.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from auralens.interp.arch import TABLES, describe, table_by_name, table_from_dict
from auralens.interp.attention_yield import YieldRecorder, audio_mask_from_ids
from auralens.interp.audio import audio_limits, item_audio, time_bin_seconds, token_seconds
from auralens.interp.errors import ArchitectureError
from auralens.interp.items import Item
from auralens.interp.prompts import build_inputs
from auralens.testing.tiny import SAMPLING_RATE, TINY_ARCHS
from auralens.testing.verified import LONG_AUDIO_PADDED, LONG_AUDIO_WINDOWED

ATOL = 1e-5
N_NEW = 4
BINS = 5
WINDOWED = LONG_AUDIO_WINDOWED
# classes whose processor pads the last window whole and gives the padding audio tokens too
PADDED = LONG_AUDIO_PADDED


def _item(tmp_path, seconds: float, seed: int = 0, name: str = "clip") -> Item:
    rng = np.random.default_rng(seed)
    path = tmp_path / f"{name}.wav"
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * SAMPLING_RATE))).astype(np.float32), SAMPLING_RATE)
    return Item(item_id=name, audio=str(path), question="what is the sound ?",
                choices=("noise", "tone"), answer="noise")


def _window_tokens(model, batch) -> list[int]:
    """Audio tokens each window yields: the encoder's output lengths (AF3, Music Flamingo), or the
    model's own audio features of that window alone (GLM-ASR)."""
    f, m = batch["input_features"], batch["input_features_mask"]
    tower = model.model.audio_tower
    if hasattr(tower, "_get_feat_extract_output_lengths"):
        return [int(n) for n in tower._get_feat_extract_output_lengths(m.sum(-1))[1]]
    with torch.no_grad():
        return [int(model.get_audio_features(f[i : i + 1], m[i : i + 1]).pooler_output.shape[0]) for i in range(len(f))]


def test_tables_state_max_audio_and_windowing():
    # the released checkpoints' limits (processor defaults / preprocessor_config.json)
    expect = {
        "qwen2_audio": ("one_chunk", 30.0, 30.0),
        "qwen2_5_omni_thinker": ("one_chunk", 300.0, 300.0),
        "audioflamingo3": ("windows", 600.0, 30.0),
        "musicflamingo": ("windows", 1200.0, 30.0),
        "glmasr": ("windows", 630.0, 30.0),  # max_audio_len 655 keeps 21 whole 30-s windows
        "qwen3_asr": ("unbounded", None, 1.0),
        "voxtral": ("padded_windows", None, 30.0),  # 30-s windows, the padding has tokens; no cut
        "granite_speech": ("unbounded", None, None),  # no cut; 0.3-s projector windows
        "phi4_multimodal": ("unbounded", None, None),  # no cut; one token per 80 ms
        "qwen3_omni_moe_thinker": ("unbounded", None, 1.0),  # truncation=False; 100-frame encoder windows
    }
    for name, (windowing, max_s, window) in expect.items():
        t = table_by_name(name)
        assert (t.audio_windowing, t.max_audio_seconds, t.window_seconds) == (windowing, max_s, window), name
        assert t.processor_classes
    assert set(expect) == {t.name for t in TABLES.values()}


@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_tiny_processor_limits(arch_name, tiny_cache):
    _, processor = tiny_cache(arch_name)
    lim = audio_limits(processor)
    if arch_name in WINDOWED:  # 4 windows of 2 s (max_audio_len 8)
        assert (lim.windowing, lim.max_seconds, lim.window_seconds) == ("windows", 8.0, 2.0)
        assert lim.windows(5.0) == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.0)]
        assert table_by_name(arch_name).name in lim.model
    elif arch_name in ("qwen3_asr", "qwen3_omni_moe_thinker"):  # the processor cuts nothing
        assert (lim.windowing, lim.max_seconds, lim.window_seconds) == ("unbounded", None, 1.0)
    elif arch_name in ("granite_speech", "phi4_multimodal"):  # the processor cuts nothing, no windows
        assert (lim.windowing, lim.max_seconds, lim.window_seconds) == ("unbounded", None, None)
        assert lim.windows(5.0) == [(0.0, 5.0)]
    elif arch_name == "voxtral":  # whole 2-s windows, the last one padded (with audio tokens)
        assert (lim.windowing, lim.max_seconds, lim.window_seconds) == ("padded_windows", None, 2.0)
        assert lim.windows(5.0) == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
    else:  # one padded 2-s chunk (the tiny Omni thinker uses a Qwen2AudioProcessor)
        assert (lim.windowing, lim.max_seconds, lim.window_seconds) == ("one_chunk", 2.0, 2.0)


def test_real_af3_processor_defaults_give_600_s():
    from transformers import AudioFlamingo3Processor, WhisperFeatureExtractor

    from auralens.interp.tokenizer import build_word_tokenizer
    from auralens.testing.tiny import AF3_CHAT_TEMPLATE, AF3_SPECIALS, TINY_WORDS

    proc = AudioFlamingo3Processor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128, chunk_length=30),
        tokenizer=build_word_tokenizer(TINY_WORDS, specials=AF3_SPECIALS),
        chat_template=AF3_CHAT_TEMPLATE,
    )
    lim = audio_limits(proc)
    assert (lim.max_seconds, lim.window_seconds) == (600.0, 30.0)
    assert len(lim.windows(70.0)) == 3 and lim.windows(70.0)[-1] == (60.0, 70.0)


def test_real_voxtral_window_gives_375_tokens_per_30_s():
    """A VoxtralProcessor with the released shapes (128 mels, 30-s windows, tekken chunk_length_s
    30): build_inputs passes the class's own defaults (pad_to_multiple_of 480000,
    max_source_positions 3000), and a 3-s clip becomes one padded window of 375 audio tokens."""
    from transformers import MistralCommonBackend, VoxtralProcessor, WhisperFeatureExtractor

    from auralens.testing.tiny import VOXTRAL_AUDIO_ID, tiny_tekken_file

    fe = WhisperFeatureExtractor(feature_size=128, chunk_length=30)
    proc = VoxtralProcessor(feature_extractor=fe, tokenizer=MistralCommonBackend(str(tiny_tekken_file(128, 30))))
    assert (fe.n_samples, fe.nb_max_frames) == (480000, 3000) == (
        proc.audio_kwargs["pad_to_multiple_of"], proc.audio_kwargs["max_source_positions"])
    lim = audio_limits(proc)
    assert (lim.windowing, lim.max_seconds, lim.window_seconds) == ("padded_windows", None, 30.0)
    assert lim.windows(70.0) == [(0.0, 30.0), (30.0, 60.0), (60.0, 90.0)]
    batch = build_inputs(proc, None, "cot", audios=[np.zeros(3 * SAMPLING_RATE, np.float32)],
                         questions=["what is the sound ?"])
    assert tuple(batch["input_features"].shape) == (1, 128, 3000)
    assert int((batch["input_ids"] == VOXTRAL_AUDIO_ID).sum()) == 375


_LONG: dict[str, tuple] = {}


@pytest.fixture(params=WINDOWED)
def windowed(request, tiny_cache, tmp_path_factory):
    """A tiny windowed model (sharpened), a batch of a 5-s clip (3 windows) and a 3.3-s one, left-padded."""
    if request.param in _LONG:
        return _LONG[request.param]
    model, processor = tiny_cache(request.param)
    model, processor = copy.deepcopy(model), copy.deepcopy(processor)
    arch = describe(model)
    with torch.no_grad():
        for layer in range(arch.n_layers):
            attn = arch.attention(model, layer)
            for lin in (attn.q_proj, attn.k_proj):
                lin.weight.mul_(3.0)
                if lin.bias is not None:
                    lin.bias.mul_(3.0)
    tmp = tmp_path_factory.mktemp("long")
    items = [_item(tmp, 5.0, 0, "five"), _item(tmp, 3.3, 1, "three")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither clip is past the 8-s maximum: no clipping warning
        audios = [item_audio(it, processor) for it in items]
    batch = build_inputs(processor, None, "cot", audios=audios, questions=["what is the sound ?"] * 2)
    _LONG[request.param] = (model, processor, arch, items, audios, batch)
    return _LONG[request.param]


def test_windowed_clip_is_not_cut_and_tokens_are_the_processors(windowed):
    model, processor, arch, items, audios, batch = windowed
    assert [len(a) for a in audios] == [5 * SAMPLING_RATE, int(3.3 * SAMPLING_RATE)]
    # the processor split the clips into 3 + 2 windows of at most 2 s
    assert batch["input_features"].shape[0] == 5
    per_window = _window_tokens(model, batch)
    if arch.name == "audioflamingo3":
        assert per_window == [50, 50, 25, 50, 32]  # 25 tokens per second
    counts = (batch["input_ids"] == arch.audio_token_id).sum(1).tolist()
    assert counts == [sum(per_window[:3]), sum(per_window[3:])]
    # the same clip cut at one window (the old behaviour) has the first window's tokens only
    one = processor(text=[batch_text(processor)], audio=[audios[0][: 2 * SAMPLING_RATE]],
                    sampling_rate=SAMPLING_RATE, return_tensors="pt")
    assert int((one["input_ids"] == arch.audio_token_id).sum()) == per_window[0] < counts[0]
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.logits).all()


def batch_text(processor) -> str:
    from auralens.interp.prompts import chat_text

    return chat_text(processor, "what is the sound ?")


def test_windowed_yields_match_eager_and_time_bins_span_the_clip(windowed):
    model, processor, arch, items, audios, batch = windowed
    audio_mask = audio_mask_from_ids(batch["input_ids"], arch)
    rec = YieldRecorder(model, arch, audio_mask, rows="all_prompt", time_bins=BINS)
    with torch.no_grad(), rec:
        seq = model.generate(**batch, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
    res = rec.result
    p = batch["input_ids"].shape[1]
    mask = torch.cat([batch["attention_mask"], torch.ones(2, N_NEW, dtype=torch.long)], 1)
    feats = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attns = eager(input_ids=seq, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).masked_fill(mask == 0, 0),
                      output_attentions=True, **feats).attentions

    def yields(keys):
        k = torch.nn.functional.pad(keys, (0, seq.shape[1] - keys.shape[1])).float()
        return torch.stack([(a.float() * k[:, None, None, :]).sum(-1) for a in attns], 2).permute(0, 3, 2, 1)

    ref = yields(audio_mask)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(res.total, ref[:, p - 1 : p - 1 + N_NEW], atol=ATOL, rtol=0)
    torch.testing.assert_close(res.prompt_total[real], ref[:, :p][real], atol=ATOL, rtol=0)
    assert res.total.std() > 0.02  # heads differ (audio is 125 of 148 prompt tokens, so yields sit high)

    lim = audio_limits(processor)
    per_window = _window_tokens(model, batch)
    for b, (audio, wins) in enumerate(zip(audios, (per_window[:3], per_window[3:]))):
        seconds = len(audio) / SAMPLING_RATE
        where = audio_mask[b].nonzero().flatten().tolist()
        secs = token_seconds(seconds, len(where), lim, wins)
        # the proportional split (no encoder lengths) is the encoder's own split within one token
        np.testing.assert_allclose(token_seconds(seconds, len(where), lim), secs, atol=lim.window_seconds / per_window[0] + 1e-9)
        assert secs[0, 0] == 0.0 and secs[-1, 1] == pytest.approx(seconds)
        assert (np.diff(secs[:, 0]) > 0).all() and np.allclose(secs[1:, 0], secs[:-1, 1])
        edges = time_bin_seconds(secs, BINS)
        assert edges[0, 0] == 0.0 and edges[-1, 1] == pytest.approx(seconds)
        assert (np.diff(edges[:, 0]) > 0).all() and np.allclose(edges[1:, 0], edges[:-1, 1])
        # each bin is a fifth of the clip to within one token, whatever window its tokens are in
        np.testing.assert_allclose(edges[:, 0], np.arange(BINS) * seconds / BINS, atol=2 * lim.window_seconds / per_window[0])
        # and each recorded bin is eager attention summed over exactly those tokens
        for k in range(BINS):
            keys = torch.zeros_like(audio_mask)
            for rank, pos in enumerate(where):
                if rank * BINS // len(where) == k:
                    keys[b, pos] = True
            torch.testing.assert_close(res.binned[b, ..., k], yields(keys)[b, p - 1 : p - 1 + N_NEW], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch_name", PADDED)
def test_padded_windows_tokens_yields_and_time_bins_span_the_padded_clip(arch_name, tiny_cache, tmp_path):
    """Voxtral (tiny: 2-s windows, 25 tokens each): a 5-s clip is not cut, it is padded to 3 whole
    windows (75 audio tokens, the last 12.5 for the padding), a 3.3-s one to 2 (50); the yields
    equal eager attention (prompt rows, generated rows, each time bin), and token / time-bin
    seconds span the padded windows [0, 6] and [0, 4] s, not the clips."""
    model, processor = tiny_cache(arch_name)
    model, processor = copy.deepcopy(model), copy.deepcopy(processor)
    arch = describe(model)
    with torch.no_grad():
        for layer in range(arch.n_layers):
            attn = arch.attention(model, layer)
            for lin in (attn.q_proj, attn.k_proj):
                lin.weight.mul_(3.0)
    items = [_item(tmp_path, 5.0, 0, "five"), _item(tmp_path, 3.3, 1, "three")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no maximum: nothing is clipped
        audios = [item_audio(it, processor) for it in items]
    assert [len(a) for a in audios] == [5 * SAMPLING_RATE, int(3.3 * SAMPLING_RATE)]
    batch = build_inputs(processor, None, "cot", audios=audios, questions=["what is the sound ?"] * 2)
    assert batch["input_features"].shape[0] == 5  # 3 + 2 whole windows
    with torch.no_grad():
        per_window = [int(model.get_audio_features(batch["input_features"][i : i + 1]).pooler_output.shape[0])
                      for i in range(5)]
    assert per_window == [25] * 5
    counts = (batch["input_ids"] == arch.audio_token_id).sum(1).tolist()
    assert counts == [75, 50]

    audio_mask = audio_mask_from_ids(batch["input_ids"], arch)
    rec = YieldRecorder(model, arch, audio_mask, rows="all_prompt", time_bins=BINS)
    with torch.no_grad(), rec:
        seq = model.generate(**batch, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
    res = rec.result
    p = batch["input_ids"].shape[1]
    mask = torch.cat([batch["attention_mask"], torch.ones(2, N_NEW, dtype=torch.long)], 1)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attns = eager(input_ids=seq, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).masked_fill(mask == 0, 0),
                      input_features=batch["input_features"], output_attentions=True).attentions

    def yields(keys):
        k = torch.nn.functional.pad(keys, (0, seq.shape[1] - keys.shape[1])).float()
        return torch.stack([(a.float() * k[:, None, None, :]).sum(-1) for a in attns], 2).permute(0, 3, 2, 1)

    real = batch["attention_mask"].bool()
    ref = yields(audio_mask)
    torch.testing.assert_close(res.total, ref[:, p - 1 : p - 1 + N_NEW], atol=ATOL, rtol=0)
    torch.testing.assert_close(res.prompt_total[real], ref[:, :p][real], atol=ATOL, rtol=0)

    lim = audio_limits(processor)
    for b, (audio, padded) in enumerate(zip(audios, (6.0, 4.0))):
        seconds = len(audio) / SAMPLING_RATE
        where = audio_mask[b].nonzero().flatten().tolist()
        secs = token_seconds(seconds, len(where), lim, per_window[: len(where) // 25])
        np.testing.assert_allclose(token_seconds(seconds, len(where), lim), secs, atol=1e-9)
        # 12.5 tokens per second of the padded windows: token r covers [0.08 r, 0.08 (r + 1)]
        np.testing.assert_allclose(secs[:, 0], np.arange(len(where)) * 0.08, atol=1e-9)
        assert secs[-1, 1] == pytest.approx(padded) and padded > seconds
        edges = time_bin_seconds(secs, BINS)
        assert edges[0, 0] == 0.0 and edges[-1, 1] == pytest.approx(padded)
        assert np.allclose(edges[1:, 0], edges[:-1, 1])
        for k in range(BINS):
            keys = torch.zeros_like(audio_mask)
            for rank, pos in enumerate(where):
                if rank * BINS // len(where) == k:
                    keys[b, pos] = True
            torch.testing.assert_close(res.binned[b, ..., k], yields(keys)[b, p - 1 : p - 1 + N_NEW], atol=ATOL, rtol=0)


def test_past_the_maximum_is_clipped_with_a_warning_naming_it(tiny_cache, tmp_path):
    model, processor = tiny_cache("audioflamingo3")
    arch = describe(model)
    item = _item(tmp_path, 10.0)
    with pytest.warns(UserWarning, match=r"10\.00 s is longer than the model's maximum 8\.00 s of audioflamingo3 "
                                         r"\(AudioFlamingo3Processor\)"):
        audio = item_audio(item, processor)
    assert len(audio) == 8 * SAMPLING_RATE
    batch = build_inputs(processor, None, "cot", audios=[audio], questions=["what is the sound ?"])
    assert batch["input_features"].shape[0] == 4
    assert int((batch["input_ids"] == arch.audio_token_id).sum()) == 200  # 4 full windows of 50
    # what the processor itself keeps of the whole 10 s: the same 8 s
    raw = sf.read(item.audio, dtype="float32")[0]
    whole = processor(text=[batch_text(processor)], audio=[raw], sampling_rate=SAMPLING_RATE, return_tensors="pt")
    assert torch.equal(whole["input_features"], batch["input_features"])


def test_one_chunk_class_still_clips_at_its_window(tiny_cache, tmp_path):
    _, processor = tiny_cache("qwen2_audio")
    with pytest.warns(UserWarning, match=r"maximum 2\.00 s of qwen2_audio \(Qwen2AudioProcessor\)"):
        audio = item_audio(_item(tmp_path, 3.0), processor)
    assert len(audio) == 2 * SAMPLING_RATE


def test_table_from_dict_checks_the_audio_fields():
    base = dict(name="x", model_class="X", decoder_layers="a", final_norm="b", audio_layers="c",
                audio_tower="d", projector="e")
    t = table_from_dict(dict(base, audio_windowing="windows", max_audio_seconds=120, window_seconds=30,
                             processor_classes=["XProcessor"]))
    assert (t.max_audio_seconds, t.window_seconds, t.processor_classes) == (120.0, 30.0, ("XProcessor",))
    for bad, match in [
        (dict(max_audio_seconds=-1), "max_audio_seconds' expected a positive number"),
        (dict(window_seconds="30"), "window_seconds' expected a positive number"),
        (dict(max_audio_seconds=True), "max_audio_seconds' expected a positive number"),
        (dict(audio_windowing="sliding"), "audio_windowing' expected one of"),
        (dict(audio_windowing="windows"), "expected window_seconds, found null"),
        (dict(max_audio_seconds=10, window_seconds=30), "max_audio_seconds expected >= window_seconds"),
        (dict(processor_classes="XProcessor"), "processor_classes' expected a list of strings"),
    ]:
        with pytest.raises(ArchitectureError, match=match):
            table_from_dict(dict(base, **bad), where="t")
