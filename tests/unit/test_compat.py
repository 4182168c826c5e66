"""interp/compat.py: one test per private behaviour, and per supported transformers convention.

The KV cache reaches a model's forward as ``past_key_values=`` (transformers <= 5.23) or as
``cache=`` (5.24).  ``test_manual_decode_matches_generate`` drives the model by hand with each
convention the installed release accepts and checks the recorder's yields equal those recorded
under ``generate`` (whichever name it uses), so a rename is caught here and in ``make compat``.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
import tomllib
import torch

from auralens.interp import compat
from auralens.interp.arch import describe
from auralens.interp.attention_yield import YieldRecorder, audio_mask_from_ids
from auralens.testing.tiny import tiny_batch

ROOT = Path(__file__).resolve().parents[2]
N_NEW = 4


def _v(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", s)[:3])


TF = _v(version("transformers"))
# convention name -> (keyword the forward takes, the first transformers release using it, the last)
CONVENTIONS = {
    "transformers-5.23": ("past_key_values", (5, 0), (5, 39)),  # deprecated alias until 5.40 in 5.24
    "transformers-5.24": ("cache", (5, 24), (99,)),
}


def test_find_cache_by_type_under_any_name():
    from transformers.cache_utils import DynamicCache

    c = DynamicCache()
    assert compat.find_cache({"past_key_values": c}) is c
    assert compat.find_cache({"cache": c}) is c
    assert compat.find_cache({"some_future_name": c}) is c
    assert compat.find_cache({"cache": None, "input_ids": torch.ones(1, 2)}) is None
    assert compat.is_prefill({"cache": c}) and compat.is_prefill({})


def test_prefill_read_from_cache_length_and_cache_position():
    from transformers.cache_utils import DynamicCache

    c = DynamicCache()
    k = torch.zeros(1, 2, 5, 4)
    c.update(k, k, 0)
    for name in ("cache", "past_key_values"):
        assert compat.cached_length({name: c}) == 5
        assert not compat.is_prefill({name: c})
    assert compat.cached_length({"cache_position": torch.tensor([7, 8])}) == 7
    assert compat.is_prefill({"cache_position": torch.tensor([0, 1, 2])})


def test_static_cache_detected():
    from transformers.cache_utils import DynamicCache

    class Static(DynamicCache):
        is_compileable = True

    assert compat.is_static_cache({"cache": Static()})
    assert not compat.is_static_cache({"cache": DynamicCache()})


def _greedy_by_hand(model, batch, kw: str):
    """Prefill + N_NEW-1 decode steps, passing the cache under keyword ``kw``."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    rest = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    out = model(input_ids=ids, attention_mask=mask, use_cache=True, **rest)
    cache = compat.output_cache(out)
    assert cache is not None
    tokens = []
    for _ in range(N_NEW - 1):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(nxt)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        out = model(input_ids=nxt, attention_mask=mask, use_cache=True, **{kw: cache})
        cache = compat.output_cache(out)
    return torch.cat(tokens, 1)


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_manual_decode_matches_generate(convention, tiny_model):
    kw, first, last = CONVENTIONS[convention]
    if not (first <= TF[:2] <= last):
        pytest.skip(f"transformers {version('transformers')} does not accept {kw}= in forward")
    model, processor = tiny_model("qwen2_audio")
    arch = describe(model)
    batch = tiny_batch(processor)
    amask = audio_mask_from_ids(batch["input_ids"], arch)
    ref = YieldRecorder(model, arch, amask)
    with torch.no_grad(), ref:
        gen = model.generate(**batch, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
    rec = YieldRecorder(model, arch, amask)
    with torch.no_grad(), rec:
        tokens = _greedy_by_hand(model, batch, kw)
    p = batch["input_ids"].shape[1]
    assert torch.equal(tokens, gen[:, p : p + N_NEW - 1])
    assert rec.result.total.shape[1] == N_NEW  # last prompt row + N_NEW-1 decode rows, none mistaken for a prompt
    torch.testing.assert_close(rec.result.total, ref.result.total, atol=1e-6, rtol=0)


def test_attention_registry_roundtrip_and_impl_swap(tiny_model):
    model, _ = tiny_model("qwen2_audio")
    cfg = model.config.text_config
    before = compat.get_attn_impl(cfg)
    compat.register_attention("auralens-test", compat.attention_functions()["sdpa"], "sdpa")
    try:
        assert "auralens-test" in compat.registered_attention_names()
        compat.set_attn_impl(cfg, "auralens-test")
        assert cfg._attn_implementation == "auralens-test"
        compat.set_attn_impl(cfg, before)
        assert compat.get_attn_impl(cfg) == before
    finally:
        compat.unregister_attention("auralens-test")
    assert "auralens-test" not in compat.registered_attention_names()
    assert "auralens-test" not in compat.mask_functions()


def test_unwrap_container_disables_talker_and_names_missing_attribute():
    from auralens.interp.errors import ArchitectureError

    class Outer:
        talker_on = True
        thinker = object()

        def disable_talker(self):
            self.talker_on = False

    o = Outer()
    assert compat.unwrap_container(o, "thinker") is Outer.thinker and not o.talker_on
    with pytest.raises(ArchitectureError, match="'thinker'"):
        compat.unwrap_container(object(), "thinker")


def test_tl_boot_never_installs_and_restores_the_hook(tiny_model, tmp_path):
    import transformer_lens.model_bridge.sources.transformers.helpers as tl_helpers

    saved = tl_helpers._ensure_torchvision
    model, processor = tiny_model("qwen2_audio")
    processor.save_pretrained(tmp_path)
    bridge = compat.boot_transformer_bridge(str(tmp_path), hf_model=model, tokenizer=processor.tokenizer)
    assert bridge is not None
    assert tl_helpers._ensure_torchvision is saved


def _bounds(spec: str) -> tuple[str, str]:
    lo = re.search(r">=\s*([\d.]+)", spec)
    hi = re.search(r"<\s*([\d.]+)", spec)
    assert lo and hi, f"{spec!r}: expected a >=lo,<hi range"
    return lo.group(1), hi.group(1)


def test_pyproject_bounds_lock_and_installed_agree_with_tested_ranges():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(meta["dependencies"]) + [d for ds in meta["optional-dependencies"].values() for d in ds]
    by_name = {re.match(r"[A-Za-z0-9_.\-]+", s).group(0).lower(): s for s in specs}
    lock = dict(
        re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if re.match(r"[A-Za-z0-9_.\-]+==", line)
    )
    for name, (lo, hi) in compat.TESTED.items():
        assert name in by_name, f"pyproject.toml: expected a dependency on {name}"
        plo, phi = _bounds(by_name[name])
        assert (_v(plo), phi) == (_v(lo), hi), f"{name}: pyproject {by_name[name]!r} vs compat.TESTED {(lo, hi)}"
        assert _v(lo) <= _v(lock[name]) < _v(hi), f"requirements.lock pins {name}=={lock[name]} outside {(lo, hi)}"
        assert _v(lo) <= _v(version(name)) < _v(hi), f"installed {name} {version(name)} outside {(lo, hi)}"



def test_eager_attention_forward_is_the_modeling_files_function(tiny_model):
    from transformers.models.qwen2 import modeling_qwen2

    model, _ = tiny_model("qwen2_audio")
    attention = describe(model).attention(model, 0)
    assert type(attention).__module__ == modeling_qwen2.__name__  # the tiny Qwen2-Audio decoder is a Qwen2
    assert compat.eager_attention_forward(attention) is modeling_qwen2.eager_attention_forward

    class NoEager:  # defined here: this test module has no eager_attention_forward
        pass

    assert compat.eager_attention_forward(NoEager()) is None


def test_encoder_output_lengths_first_of_a_tuple_a_tensor_or_none(tiny_model):
    from auralens.interp.arch import get_attr_path

    model, _ = tiny_model("qwen2_audio")
    tower = get_attr_path(model, describe(model).table.audio_tower)
    frames = torch.tensor([100, 37])
    # Qwen2-Audio returns (after the stride-2 convolution, after the pooling): the first
    assert compat.encoder_output_lengths(tower, frames).tolist() == [50, 19]

    class Plain:
        def _get_feat_extract_output_lengths(self, n):
            return n // 4

    assert compat.encoder_output_lengths(Plain(), frames).tolist() == [25, 9]
    assert compat.encoder_output_lengths(object(), frames) is None


def test_get_attn_impl_reads_what_the_config_holds(tiny_model):
    model, _ = tiny_model("qwen2_audio")
    cfg = model.config.text_config
    assert compat.get_attn_impl(cfg) == cfg._attn_implementation  # the property transformers reads
    compat.set_attn_impl(cfg, "eager")
    assert compat.get_attn_impl(cfg) == "eager" == cfg._attn_implementation


def test_model_from_config_sets_dtype_and_attention_on_every_sub_config(tiny_cache):
    import copy

    model, _ = tiny_cache("qwen2_audio")
    config = copy.deepcopy(model.config)  # _from_config writes to the config it is given
    built = compat.model_from_config(type(model), config, attn_implementation="eager", dtype=torch.float64)
    assert next(built.parameters()).dtype == torch.float64
    for cfg in (built.config, built.config.text_config, built.config.audio_config):
        assert compat.get_attn_impl(cfg) == "eager" and cfg.dtype == torch.float64


def test_click_exceptions_are_the_ones_typer_raises():
    import typer
    from typer.testing import CliRunner

    errors = compat.click_exceptions()
    app = typer.Typer(no_args_is_help=True)

    @app.command()
    def one(n: int = 1) -> None:
        pass

    @app.command()
    def two() -> None:
        pass

    with pytest.raises(errors.UsageError):
        app(args=["one", "--n", "abc"], standalone_mode=False)
    with pytest.raises(errors.NoArgsIsHelpError):
        app(args=[], standalone_mode=False)
    assert CliRunner().invoke(app, ["one", "--n", "2"]).exit_code == 0
