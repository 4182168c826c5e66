"""User architecture tables without Python (`--arch-table FILE.json`) and `auralens models`."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from auralens.interp import arch
from auralens.interp.errors import ArchitectureError

QWEN2_AUDIO = json.loads(json.dumps(dataclasses.asdict(arch.TABLES["Qwen2AudioForConditionalGeneration"])))  # as a JSON file holds it


@pytest.fixture
def tables(monkeypatch):
    """A private copy of the table registry (tests may add or remove tables)."""
    copy = dict(arch.TABLES)
    monkeypatch.setattr(arch, "TABLES", copy)
    return copy


def test_table_from_dict_names_each_problem():
    with pytest.raises(ArchitectureError, match=r"unknown key\(s\) \['decoder_layer'\]"):
        arch.table_from_dict({**QWEN2_AUDIO, "decoder_layer": "x"})
    missing = {k: v for k, v in QWEN2_AUDIO.items() if k != "projector"}
    with pytest.raises(ArchitectureError, match=r"required key\(s\) \['projector'\]"):
        arch.table_from_dict(missing)
    with pytest.raises(ArchitectureError, match="'own_position_ids' expected true or false, found 'yes'"):
        arch.table_from_dict({**QWEN2_AUDIO, "own_position_ids": "yes"})
    with pytest.raises(ArchitectureError, match="'aliases' expected a list of strings"):
        arch.table_from_dict({**QWEN2_AUDIO, "aliases": "qwen"})
    t = arch.table_from_dict({**QWEN2_AUDIO, "aliases": ["a", "b"], "containers": []})
    assert t.aliases == ("a", "b") and t == dataclasses.replace(arch.TABLES[t.model_class], aliases=("a", "b"))


def test_a_json_table_makes_an_unknown_class_usable_from_the_cli(tables, small_micro_dir, tmp_path):
    from auralens.cli import app

    del tables["Qwen2AudioForConditionalGeneration"]  # as if auralens did not know the class
    runner = CliRunner()
    args = ["eval", "--model", str(small_micro_dir), "--n", "1", "--formats", "direct", "--no-silence",
            "--max-new-tokens", "4", "--json"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "refused")])
    assert res.exit_code == 2
    assert "no architecture table for model class 'Qwen2AudioForConditionalGeneration'" in res.output
    assert "--arch-table" in res.output
    assert not (tmp_path / "refused").exists()

    table = tmp_path / "qwen2_audio.json"
    table.write_text(json.dumps({**QWEN2_AUDIO, "name": "my_qwen2_audio", "aliases": [], "containers": []}))
    res = runner.invoke(app, ["--arch-table", str(table), *args, "--out", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    assert tables["Qwen2AudioForConditionalGeneration"].name == "my_qwen2_audio"
    assert json.loads(res.stdout)["n"] == 1


def test_a_bad_table_file_is_one_line_and_exit_2(tables, tmp_path):
    from auralens.cli import app

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**QWEN2_AUDIO, "audio_tower_path": "x"}))
    res = CliRunner().invoke(app, ["--arch-table", str(bad), "models"])
    assert res.exit_code == 2
    assert "unknown key(s) ['audio_tower_path']" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["--arch-table", str(tmp_path / "missing.json"), "models"])
    assert res.exit_code == 2 and "found nothing there" in res.output


def test_models_json_lists_tables_and_the_unsupported(tables):
    from auralens.cli import app

    res = CliRunner().invoke(app, ["models", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    names = {r["table"]: r for r in out["supported"]}
    af3 = names["audioflamingo3"]
    assert (af3["max_audio_seconds"], af3["window_seconds"], af3["audio_windowing"]) == (600.0, 30.0, "windows")
    assert af3["tested_here"]["tiny_exactness"] is True and af3["tested_here"]["long_audio"] is True
    assert af3["tested_here"]["real_checkpoint"] is False and af3["tested_here"]["transformers"]
    assert names["qwen3_asr"]["max_audio_seconds"] is None
    assert {r["class"] for r in out["unsupported"]} == set(arch.UNSUPPORTED)
    # issue 24's four once-blocked classes: three supported (tiny exactness), Gemma 3n with its reason
    supported = {r["class"]: r for r in out["supported"]}
    for cls in ("GraniteSpeechForConditionalGeneration", "Phi4MultimodalForCausalLM",
                "Qwen3OmniMoeThinkerForConditionalGeneration"):
        assert supported[cls]["tested_here"]["tiny_exactness"] is True, cls
    (gemma,) = [r for r in out["unsupported"] if r["class"] == "Gemma3nForConditionalGeneration"]
    assert "timm" in gemma["why"] and "torchvision" in gemma["why"]


def test_entry_point_tables_are_loaded_on_the_first_unknown_class(tables, monkeypatch):
    import importlib.metadata as md

    class EP:
        name = "demo"

        def load(self):
            return {**QWEN2_AUDIO, "name": "plugin", "model_class": "PluginAudioModel", "aliases": [], "containers": []}

    monkeypatch.setattr(md, "entry_points", lambda group: [EP()] if group == arch.ENTRY_POINT_GROUP else [])
    assert arch.table_for_class("PluginAudioModel").name == "plugin"
