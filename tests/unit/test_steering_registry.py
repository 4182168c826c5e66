"""The steering registry (:mod:`auralens.steering.registry`), the one validation of beta
(:func:`auralens.steering.evaluate.check_betas`) and the pure steps of the dev/test protocol
(:mod:`auralens.steering.protocol`)."""

from __future__ import annotations

import contextlib

import pandas as pd
import pytest

from auralens.interp.errors import ConfigError
from auralens.steering import apply, registry
from auralens.steering.evaluate import SweepConfig, check_betas
from auralens.steering.stage_eval import SteerEvalConfig


@contextlib.contextmanager
def _registered(reg, name, **kw):
    """``name`` registered in ``reg`` inside the block only."""
    reg.register(name, **kw)
    try:
        yield
    finally:
        reg.entries.pop(name)


def test_builtin_choices_and_help():
    assert registry.MODES.names() == ("mean", "per_input")
    assert registry.POSITIONS.names() == ("last_prompt", "generated", "both", "answer", "all")
    assert registry.POSITIONS.names() == apply.POSITION_MODES  # every built-in rule is implemented
    assert registry.DIRECTIONS.controls() == ("random_direction", "random_heads")
    assert registry.MODES.help() == "mean (the fitted v) | per_input (s(x) per item)"
    help_ = {f.name: f.metadata["help"] for f in SteerEvalConfig.__dataclass_fields__.values()}
    assert help_["modes"].startswith(registry.MODES.help())
    assert help_["positions"].startswith(registry.POSITIONS.help())


def test_registering_a_mode_makes_it_a_valid_choice(tmp_path):
    kw = dict(model="micro", data="cafe", vector=tmp_path / "v.safetensors")
    with pytest.raises(ConfigError, match=r"modes: expected distinct values among \['mean', 'per_input'\]"):
        SteerEvalConfig(modes=("halved",), **kw)
    with _registered(registry.MODES, "halved", help="v / 2", build=lambda vec: vec):
        cfg = SteerEvalConfig(modes=("mean", "halved"), **kw)
        assert cfg.modes == ("mean", "halved")
        assert "halved (v / 2)" in registry.MODES.help()
    assert "halved" not in registry.MODES


def test_registering_a_position_rule_makes_it_a_valid_sweep_choice():
    with pytest.raises(ConfigError, match="SweepConfig.positions"):
        SweepConfig(betas=(1.0,), positions=("first_audio",))
    with _registered(registry.POSITIONS, "first_audio", help="the first audio token"):
        assert SweepConfig(betas=(1.0,), positions=("first_audio",)).positions == ("first_audio",)


def test_registering_a_control_direction():
    with _registered(registry.DIRECTIONS, "shuffled", help="control: shuffled items", control=True):
        assert "shuffled" in registry.DIRECTIONS.controls()
        assert registry.DIRECTIONS.check("shuffled") == "shuffled"


def test_registry_refusals():
    with pytest.raises(ConfigError, match="already registered"):
        registry.MODES.register("mean", help="again")
    with pytest.raises(ConfigError, match="identifier"):
        registry.MODES.register("not a name", help="")
    with pytest.raises(ConfigError, match="callable"):
        registry.MODES.register("bad_build", help="", build=3)
    with pytest.raises(ConfigError, match=r"positions: expected one of .*found 'nowhere'"):
        registry.POSITIONS.check("nowhere")


def test_beta_is_validated_in_one_place():
    assert check_betas([0, 2, -1.5]) == (0.0, 2.0, -1.5)
    for bad, needle in (([], "non-empty"), ("0,1", "non-empty"), ([float("nan")], "finite"), ([True], "finite"),
                        ([1, 1.0], "distinct")):
        with pytest.raises(ConfigError, match=needle):
            check_betas(bad, option="betas")
    with pytest.raises(ConfigError, match="SweepConfig.betas: expected finite"):
        SweepConfig(betas=(float("inf"),))
    with pytest.raises(ConfigError, match="SweepConfig.betas"):
        SteerEvalConfig(model="micro", data="cafe", vector="v.safetensors", betas=("x",))


def _dev_table(rows):
    base = dict(method="audio_minus_silence", positions="both", format="direct", category="all", n=3,
                ci_low=0.0, ci_high=1.0, delta_ci_low=-0.5, delta_ci_high=0.5)
    return pd.DataFrame([{**base, **r, "accuracy": 0.5 + r["delta"]} for r in rows])


def test_select_on_dev_prefers_the_largest_gain_then_the_smaller_beta():
    from auralens.steering.protocol import select_on_dev

    table = _dev_table([
        dict(vector="audio_minus_silence", layer=1, beta=0.0, delta=0.0),
        dict(vector="audio_minus_silence", layer=1, beta=4.0, delta=0.2),
        dict(vector="audio_minus_silence", layer=1, beta=-2.0, delta=0.2),
        dict(vector="per_input", layer=2, beta=2.0, delta=0.1),
        dict(vector="random_direction", layer=1, beta=2.0, delta=0.9),  # not a mode: never chosen
    ])
    names = {"audio_minus_silence": "mean", "per_input": "per_input"}
    sel = select_on_dev(table, names, rule="best")
    assert (sel["vector"], sel["mode"], sel["layer"], sel["beta"]) == ("audio_minus_silence", "mean", 1, -2.0)
    assert sel["dev"]["gain"] == pytest.approx(0.2) and sel["dev"]["base"] == pytest.approx(0.5)
    # the default rule: every CI lower bound here is -0.5 -> declined (beta 0), the candidate recorded
    dec = select_on_dev(table, names)
    assert dec["decision"] == "decline" and dec["beta"] == 0.0 and dec["candidate"]["beta"] == -2.0
    table.loc[table["beta"] == -2.0, "delta_ci_low"] = 0.01
    kept = select_on_dev(table, names)
    assert kept["decision"] == "steer" and kept["beta"] == -2.0
    with pytest.raises(ConfigError, match="non-zero beta"):
        select_on_dev(table[table["beta"] == 0.0], {"audio_minus_silence": "mean"})


def test_mode_vector_builds_each_mode():
    from auralens.steering.evaluate import PerInput
    from auralens.steering.protocol import main_name, mode_vector

    class _Vec:
        method = "audio_minus_silence"

    vec = _Vec()
    assert mode_vector("mean", vec) is vec
    assert isinstance(mode_vector("per_input", vec), PerInput)
    with _registered(registry.MODES, "twice", help="", build=lambda v: ("twice", v)):
        assert mode_vector("twice", vec) == ("twice", vec)
    assert main_name(vec) == "audio_minus_silence"
    vec.method = "random_direction"
    assert main_name(vec) == "random_direction_vector"
