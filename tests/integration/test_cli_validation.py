"""Trustworthy runs through the CLI and the stages: bad options, data, audio files and models
fail with one line (exit 2) before any folder exists; resume refuses a different run and leaves
the manifest byte-identical; corrupt files in a run folder are named; --json is strict; every
option has help."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from auralens.cli import app
from auralens.interp.errors import AudioInputError, ConfigError, RunFolderError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def lm():
    from auralens.interp.loading import load_model

    return load_model("micro", device="cpu")


def _folder_dataset(root, n=3, *, bad_at=None):
    """A folder dataset: ``n`` cafe clips as wav files + questions.jsonl; item ``bad_at`` gets a
    file that is not audio."""
    import soundfile as sf

    from auralens.interp.cafe.questions import make_items
    from auralens.interp.cafe.scenes import make_scene, synthesize

    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, it in enumerate(make_items(n, seed=3)):
        name = f"q{i}.wav"
        if i == bad_at:
            (root / name).write_bytes(b"RIFF not really a wave file")
        else:
            sf.write(root / name, synthesize(make_scene(it.scene["seed"])), 16_000)
        lines.append(json.dumps({"id": f"q{i}", "audio": name, "question": it.question, "choices": list(it.choices),
                                 "answer": it.answer}))
    (root / "questions.jsonl").write_text("\n".join(lines) + "\n")
    return root


# --- bad options: exit 2, one line, no folder ---------------------------------------------------


@pytest.mark.parametrize("args, needles", [
    (["eval", "--formats", "bogus"], ["formats", "bogus"]),
    (["eval", "--batch-size", "0"], ["batch_size", "0"]),
    (["eval", "--dtype", "float8"], ["dtype", "float8"]),
    (["eval", "--n", "0"], ["n:", "positive", "0"]),
    (["eval", "--n", "-3"], ["n:", "-3"]),
    (["eval", "--max-new-tokens", "0"], ["max_new_tokens"]),
    (["record", "--format", "bogus"], ["format", "bogus"]),
    (["record", "--time-bins", "0"], ["time_bins"]),
    (["record", "--top-k", "0"], ["top_k"]),
    (["record", "--n", "0"], ["n:"]),
    (["probe", "--positions", "nowhere"], ["positions", "nowhere"]),
    (["probe", "--n", "0"], ["n:"]),
    (["compare", "--base", "micro", "--ft-format", "bogus"], ["ft_format", "bogus"]),
    (["compare", "--base", "micro,micro-prior", "--mpar2", "some/folder"], ["mpar2", "one base model"]),
])
def test_bad_option_leaves_no_folder(tmp_path, args, needles):
    out = tmp_path / "run"
    res = invoke(*args, "--out", out)
    assert_one_line_error(res, *needles)
    assert not out.exists()


def test_bad_steering_options(tmp_path):
    res = invoke("steer", "eval", "--vector", tmp_path / "v.safetensors", "--alphas", "0,x", "--out", tmp_path / "s")
    assert_one_line_error(res, "--alphas", "'x'")
    res = invoke("steer", "fit", "--layers", "a", "--out", tmp_path / "v.safetensors")
    assert_one_line_error(res, "--layers", "'a'")
    res = invoke("steer", "fit", "--out", tmp_path / "v.txt")
    assert_one_line_error(res, "--out", ".txt")
    res = invoke("steer", "eval", "--vector", tmp_path / "missing.safetensors", "--out", tmp_path / "s")
    assert res.exit_code == 2 and "missing.safetensors" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "s").exists() and not (tmp_path / "v.safetensors").exists()


def test_out_that_is_a_file(tmp_path):
    f = tmp_path / "taken"
    f.write_text("keep me")
    res = invoke("eval", "--n", "2", "--out", f)
    assert_one_line_error(res, "--out", "existing file")
    assert f.read_text() == "keep me"


def test_unsupported_architecture_leaves_no_folder(tmp_path):
    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    out = tmp_path / "run"
    res = invoke("eval", "--model", model, "--n", "2", "--out", out)
    assert_one_line_error(res, "BertModel")
    assert not out.exists()
    res = invoke("eval", "--model", tmp_path / "nothing-here", "--n", "2", "--out", out)
    assert_one_line_error(res, "nothing-here")
    assert not out.exists()


def test_bad_audio_file_is_found_before_the_folder(tmp_path, lm):
    from auralens.interp.evaluate import stage_eval
    from auralens.interp.record import stage_record

    data = _folder_dataset(tmp_path / "data", n=3, bad_at=2)
    out = tmp_path / "run"
    res = invoke("eval", "--data", data, "--n", "3", "--out", out)
    assert res.exit_code == 2 and "q2" in res.output and "q2.wav" in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()
    with pytest.raises(AudioInputError, match="q2"):
        stage_eval(model="micro", data=str(data), n=3, out=out, lm=lm, quiet=True)
    with pytest.raises(AudioInputError, match="q2"):
        stage_record(model="micro", data=str(data), n=3, out=out, lm=lm, quiet=True)
    assert not out.exists()


def test_stage_functions_validate_before_the_folder(tmp_path, lm):
    from auralens.interp.evaluate import stage_eval
    from auralens.interp.record import stage_record

    out = tmp_path / "run"
    common = dict(model="micro", data="cafe", out=out, lm=lm, quiet=True)
    for kwargs in ({"n": 0}, {"n": 2, "formats": ("bogus",)}, {"n": 2, "batch_size": 0}, {"n": 2, "dtype": "float8"}):
        with pytest.raises(ConfigError):
            stage_eval(**common, **kwargs)
    for kwargs in ({"n": -1}, {"n": 2, "fmt": "bogus"}, {"n": 2, "time_bins": 0}, {"n": 2, "dtype": "float8"}):
        with pytest.raises(ConfigError):
            stage_record(**common, **kwargs)
    assert not out.exists()


# --- resume: never two runs in one folder -----------------------------------------------------


def _eval(lm, out, **kw):
    from auralens.interp.evaluate import stage_eval

    args = dict(model="micro", data="cafe", n=2, formats=("direct",), silence=False, out=out, lm=lm, quiet=True,
                max_new_tokens=4, batch_size=4)
    return stage_eval(**{**args, **kw})


def test_resume_with_changed_n_is_refused(tmp_path, lm):
    out = tmp_path / "run"
    _eval(lm, out)
    before = (out / "manifest.json").read_bytes()
    m = json.loads(before)
    assert m["n"] == 2 and m["items"]["count"] == 2 and m["data_fingerprint"] and m["status"] == "complete"
    with pytest.raises(RunFolderError, match="n differs"):
        _eval(lm, out, n=3, resume=True)
    assert (out / "manifest.json").read_bytes() == before
    res = invoke("eval", "--n", "3", "--formats", "direct", "--no-silence", "--max-new-tokens", "4", "--out", out,
                 "--resume")
    assert_one_line_error(res, "n differs")
    assert (out / "manifest.json").read_bytes() == before
    for kw in ({"formats": ("cot",)}, {"seed": 8}, {"max_new_tokens": 5}):
        with pytest.raises(RunFolderError, match="differs"):
            _eval(lm, out, resume=True, **kw)
    assert (out / "manifest.json").read_bytes() == before
    _eval(lm, out, resume=True)  # the same run resumes (nothing to do) and completes again
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_resume_with_changed_data_content_is_refused(tmp_path, lm):
    data = _folder_dataset(tmp_path / "data", n=2)
    out = tmp_path / "run"
    _eval(lm, out, data=str(data))
    before = (out / "manifest.json").read_bytes()
    q = data / "questions.jsonl"
    rows = [json.loads(x) for x in q.read_text().splitlines()]
    rows[1]["question"] = rows[1]["question"] + " Really?"
    q.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(RunFolderError, match="data_fingerprint differs"):
        _eval(lm, out, data=str(data), resume=True)
    rows[1]["id"] = "renamed"
    q.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(RunFolderError, match="differs"):
        _eval(lm, out, data=str(data), resume=True)
    assert (out / "manifest.json").read_bytes() == before


def test_corrupt_parquet_on_resume_is_named(tmp_path, lm):
    out = tmp_path / "run"
    _eval(lm, out)
    before = (out / "manifest.json").read_bytes()
    p = out / "items.parquet"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(RunFolderError, match=r"items\.parquet to be a parquet table"):
        _eval(lm, out, resume=True)
    res = invoke("eval", "--n", "2", "--formats", "direct", "--no-silence", "--max-new-tokens", "4",
                 "--batch-size", "4", "--out", out, "--resume")
    assert_one_line_error(res, "items.parquet", "parquet table")
    assert (out / "manifest.json").read_bytes() == before


def test_failed_first_batch_leaves_a_reusable_folder(tmp_path, lm, monkeypatch):
    import auralens.interp.evaluate as evaluate

    out = tmp_path / "run"

    def boom(*a, **k):
        raise RuntimeError("generation failed")

    monkeypatch.setattr(evaluate, "generate_batch", boom)
    with pytest.raises(RuntimeError):
        _eval(lm, out)
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    monkeypatch.undo()
    _eval(lm, out, n=3)  # a plain rerun (even with other settings) takes the row-less folder
    assert json.loads((out / "manifest.json").read_text())["n"] == 3


# --- reading run folders, JSON, help ------------------------------------------------------------


def test_report_and_export_errors_are_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{not json")
    res = invoke("report", run)
    assert res.exit_code == 2 and "manifest.json" in res.output and "Traceback" not in res.output, res.output
    bad = tmp_path / "v.safetensors"
    bad.write_bytes(b"\x00" * 4)
    res = invoke("export", bad, "--format", "npz", "--out", tmp_path / "v.npz")
    assert res.exit_code == 2 and "v.safetensors" in res.output and "Traceback" not in res.output, res.output


def test_json_output_is_strict(tmp_path, monkeypatch):
    import auralens.interp.evaluate as evaluate

    monkeypatch.setattr(evaluate, "stage_eval", lambda **kw: {"accuracy": {"all": float("nan")}, "inf": float("inf"),
                                                            "n": 2})
    res = invoke("eval", "--n", "2", "--json", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output

    def no_constants(c):
        raise AssertionError(f"bare {c} in --json output")

    obj = json.loads(res.output, parse_constant=no_constants)
    assert obj == {"accuracy": {"all": None}, "inf": None, "n": 2}


def _walk(cmd, path=()):
    yield path, cmd
    # typer vendors click: duck-typed (groups have .commands, parameters a param_type_name)
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        yield from _walk(sub, (*path, name))


def test_every_option_has_help():
    root = typer.main.get_command(app)
    missing = []
    n_options = 0
    for path, cmd in _walk(root):
        for p in cmd.params:
            if p.param_type_name == "option" and p.name != "help":
                n_options += 1
                if not (p.help or "").strip():
                    missing.append(f"auralens {' '.join(path)} {p.opts[0]}")
            elif p.param_type_name == "argument" and not (getattr(p, "help", None) or "").strip():
                missing.append(f"auralens {' '.join(path)} <{p.name}>")
    assert n_options > 50
    assert not missing, missing


def test_demo_replace_refuses_the_current_folder(tmp_path, monkeypatch):
    import auralens.demo

    monkeypatch.setattr(auralens.demo, "run_demo", lambda **k: pytest.fail("run_demo called"))
    here = tmp_path / "work"
    here.mkdir()
    (here / "keep.txt").write_text("x")
    monkeypatch.chdir(here)
    for out in (".", "..", here):
        res = invoke("demo", "--replace", "--out", out)
        assert_one_line_error(res, "--replace")
    assert (here / "keep.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_finetune_from_a_folder_without_a_config_is_one_line(tmp_path):
    base = tmp_path / "empty"
    base.mkdir()
    for args in (("micro", "finetune", "--base", base), ("micro", "finetune", "--base", base, "--recipe", "hyper")):
        res = invoke(*args, "--out", tmp_path / "ft", "--sft-steps", 1, "--grpo-steps", 0)
        assert_one_line_error(res, str(base))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_non_finite_audio_is_refused_before_the_folder(tmp_path):
    import numpy as np
    import soundfile as sf

    data = _folder_dataset(tmp_path / "data", n=3)
    wavs = sorted(data.glob("*.wav"))
    x = np.zeros(8000, dtype=np.float32)
    x[100] = np.nan
    sf.write(wavs[1], x, 16000, subtype="FLOAT")
    out = tmp_path / "run"
    res = invoke("eval", "--data", data, "--n", "3", "--out", out)
    assert res.exit_code == 2 and "finite samples" in res.output and wavs[1].name in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()


def test_arch_table_nested_too_deep_is_a_named_error(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    res = invoke("--arch-table", deep, "models")
    assert res.exit_code == 2 and "nesting too deep" in res.output and "Traceback" not in res.output, res.output


def test_resume_needs_a_manifest_and_leaves_the_folder_alone(tmp_path, lm):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("not a run")
    with pytest.raises(RunFolderError, match="--resume expected a run folder with a manifest.json"):
        _eval(lm, out, resume=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    res = invoke("eval", "--n", "2", "--formats", "direct", "--no-silence", "--out", out, "--resume")
    assert_one_line_error(res, "--resume", "manifest.json", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    _eval(lm, tmp_path / "fresh", resume=True)  # a folder that does not exist yet: --resume starts it
    assert json.loads((tmp_path / "fresh" / "manifest.json").read_text())["status"] == "complete"


def test_time_bins_above_the_shortest_clips_tokens_leaves_no_folder(tmp_path, folder_dataset):
    data = folder_dataset(2)  # 0.5 s clips: 6 audio tokens on micro
    out = tmp_path / "run"
    res = invoke("record", "--data", data, "--n", "2", "--time-bins", "8", "--max-new-tokens", "2", "--out", out)
    # a model-dependent check: the model loads first (its progress bar), then one error line, no folder
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and res.output.rstrip().endswith(errors[0]), res.output
    for needle in ("time_bins", "time_bins=8", "6 audio tokens", "'f0'", "--time-bins 6"):
        assert needle in errors[0], (needle, errors[0])
    assert not out.exists()
