"""Stage configs (auralens.interp.stage_config): validated before anything happens, the manifest identity
comes from their fields, the keyword call style builds them, and the CLI flags are derived."""

from __future__ import annotations

import dataclasses

import pytest

from auralens.interp.errors import ConfigError


def _configs():
    from auralens.compare import CompareConfig
    from auralens.interp.evaluate import EvalConfig
    from auralens.interp.record import RecordConfig
    from auralens.probes.stage import ProbeStageConfig
    from auralens.steering.stage_eval import SteerEvalConfig
    from auralens.steering.stage_fit import SteerFitConfig

    return [EvalConfig, RecordConfig, ProbeStageConfig, SteerFitConfig, SteerEvalConfig, CompareConfig]


def test_configs_are_frozen_keyword_only_and_every_field_has_help():
    for cls in _configs():
        assert cls.__dataclass_params__.frozen
        for f in dataclasses.fields(cls):
            assert f.kw_only and f.metadata["help"].strip(), (cls.__name__, f.name)


def test_identity_is_what_the_stages_always_recorded():
    from auralens.compare import CompareConfig
    from auralens.interp.evaluate import EvalConfig
    from auralens.interp.record import RecordConfig

    assert EvalConfig(n=3, batch_size=4, out="x").manifest() == {
        "command": "auralens eval", "model": "micro", "data": "cafe", "seed": 7, "n": 3,
        "config": {"formats": ["direct", "cot", "structured"], "silence": True, "max_new_tokens": 96, "dtype": "auto"}}
    assert RecordConfig(n=2, fmt="structured").identity() == {
        "format": "structured", "max_new_tokens": 128, "time_bins": 8, "top_k": 8, "all_prompt": False, "dtype": "auto"}
    m = CompareConfig(base="micro-prior", n=2).manifest(arms={"micro-prior": {"mpar2": "micro-prior-mpar2"}})
    assert m["model"] == "micro-prior" and m["n"] == 2 and m["config"]["arms"] == {"micro-prior": {"mpar2": "micro-prior-mpar2"}}
    assert set(m["config"]) == {"base", "mpar2", "hyper", "steer", "steer_mpar2", "steer_data", "n_cal", "n_dev", "betas",
                                "base_format", "ft_format", "max_new_tokens", "top_k", "min_claims", "dtype", "arms"}


@pytest.mark.parametrize("kwargs, needle", [
    ({"n": 0}, "n:"), ({"formats": ("bogus",)}, "formats"), ({"batch_size": 0}, "batch_size"),
    ({"dtype": "float8"}, "dtype"),
])
def test_validation_names_the_option(kwargs, needle):
    from auralens.interp.evaluate import EvalConfig

    with pytest.raises(ConfigError, match=needle):
        EvalConfig(**kwargs)


def test_keyword_style_and_config_style_agree(monkeypatch):
    from auralens.interp.stage_config import StageConfig, option, takes_config

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Cfg(StageConfig):
        n: int = option(3, help="n")

    @takes_config(Cfg)
    def stage(cfg, *, lm=None):
        return cfg, lm

    assert stage(n=4, lm="m") == (Cfg(n=4), "m")
    assert stage(Cfg(n=5), n=6) == (Cfg(n=6), None)
    with pytest.raises(TypeError):
        stage(n=4, bogus=1)
    with pytest.raises(ConfigError):
        stage("not a config")


def test_cli_flags_come_from_the_config_fields():
    import typer.main

    from auralens.cli import app

    root = typer.main.get_command(app)
    paths = {"eval": ("eval",), "record": ("record",), "probe": ("probe",), "steer fit": ("steer", "fit"),
             "steer eval": ("steer", "eval"), "compare": ("compare",)}
    for cls, path in zip(_configs(), paths.values()):
        cmd = root
        for part in path:
            cmd = cmd.commands[part]
        opts = {p.name: p for p in cmd.params if p.param_type_name == "option"}
        for f in dataclasses.fields(cls):
            if f.metadata["cli"]:
                assert f.name in opts and opts[f.name].help == f.metadata["help"], (path, f.name)
            else:
                assert f.name not in opts
