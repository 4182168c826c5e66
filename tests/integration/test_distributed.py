"""Data parallelism (auralens.interp.distributed): a 2-process CPU (gloo) launch of ``record`` (``accelerate
launch``) and ``probe`` (``torchrun``) on micro writes the same run folder as one process; the row loop's
shards resume after a crash whatever the world size; ``--device-map`` reaches transformers and
the recorder, capture engine and steering work on a dispatched model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from auralens.interp.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

RECORD = ["record", "--model", "micro", "--data", "cafe", "--n", "8", "--batch-size", "2", "--max-new-tokens", "24",
          "--n-boot", "40", "--json"]
PROBE = ["probe", "--model", "micro", "--data", "cafe", "--n", "24", "--positions", "audio_mean,last_prompt",
         "--batch-size", "4", "--chunk-size", "4", "--n-folds", "2", "--n-bootstrap", "20", "--json"]
# manifest keys that differ between any two runs (times, the command line, the machine)
_VOLATILE = {"created_at", "finished_at", "resumed_at", "argv", "command_line", "timing_s", "run", "git_revision", "processes"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _single(args: list[str], out: Path) -> dict:
    p = subprocess.run([sys.executable, "-m", "auralens", *args, "--out", str(out)], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return _json_out(p)


def _launch(args: list[str], out: Path, launcher: str, n: int = 2) -> dict:
    """``args`` in ``n`` CPU processes (gloo).  ``accelerate``: ``accelerate launch --multi_gpu``
    (torchrun underneath; on a machine without GPUs the processes run on the CPU with gloo --
    accelerate's ``--cpu`` starts several processes only through MPI, which is not installed
    here); ``torchrun``: torchrun itself."""
    port = str(_free_port())
    if launcher == "accelerate":
        cmd = [str(VENV_BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]
    else:
        cmd = [str(VENV_BIN / "torchrun"), "--nproc-per-node", str(n), "--master-port", port]
    # "--": torchrun's own parser would take auralens' --n for an abbreviation of its --nnodes
    p = subprocess.run([*cmd, "-m", "auralens", "--", *args, "--out", str(out)], cwd=ROOT,
                       env={**_env(), "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return _json_out(p)


def _json_out(p) -> dict:
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"expected one JSON summary on stdout ({exc}); stdout: {p.stdout[-2000:]!r}; "
                             f"stderr: {p.stderr[-2000:]!r}") from None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in _VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _close(a, b, where: str) -> None:
    """JSON-like values equal, floats within tolerance."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None and np.isclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True), \
            f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(a: Path, b: Path) -> None:
    """Same files; tables, tensors (and their metadata), JSON and figures equal within float
    tolerance; manifests equal but for times and the command line."""
    from safetensors import safe_open

    files_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    files_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for name in files_a:
        pa, pb = a / name, b / name
        if name.endswith(".parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(pa), pd.read_parquet(pb), check_exact=False, rtol=1e-5,
                                          atol=1e-6, obj=name)
        elif name.endswith(".safetensors"):
            with safe_open(str(pa), "pt") as fa, safe_open(str(pb), "pt") as fb:
                assert fa.metadata() == fb.metadata(), name
                assert sorted(fa.keys()) == sorted(fb.keys()), name
                for k in fa.keys():
                    torch.testing.assert_close(fa.get_tensor(k), fb.get_tensor(k), rtol=1e-5, atol=1e-6, msg=name)
        elif name.endswith(".json"):
            _close(_strip(json.loads(pa.read_text())), _strip(json.loads(pb.read_text())), name)
        elif name.endswith(".html"):
            assert _UUID.sub("", pa.read_text()) == _UUID.sub("", pb.read_text()), name
        else:
            assert pa.read_bytes() == pb.read_bytes(), name


@pytest.fixture(scope="module")
def one_record(tmp_path_factory):
    """The single-process record run the launches are compared with: (folder, summary)."""
    out = tmp_path_factory.mktemp("one") / "one-record"
    return out, _single(RECORD, out)


@pytest.mark.distributed
def test_two_process_record_and_probe_equal_one_process(tmp_path, one_record):
    import shutil

    shutil.copytree(one_record[0], tmp_path / "one-record")
    one = {"record": one_record[1], "probe": _single(PROBE, tmp_path / "one-probe")}
    two = {"record": _launch(RECORD, tmp_path / "two-record", "accelerate"),
           "probe": _launch(PROBE, tmp_path / "two-probe", "torchrun")}
    for stage in ("record", "probe"):
        for n, where in ((1, "one"), (2, "two")):
            assert json.loads((tmp_path / f"{where}-{stage}" / "manifest.json").read_text())["processes"] == n
        assert_same_run(tmp_path / f"one-{stage}", tmp_path / f"two-{stage}")
        _close(_strip(one[stage]), _strip(two[stage]), f"{stage} summary")
    assert not (tmp_path / "two-record" / "shards").exists()


COMPARE = ["compare", "--base", "micro", "--mpar2", "none", "--hyper", "none", "--steer", "none", "--data",
           "cafe-neutral:test", "--n", "4", "--n-cal", "4", "--batch-size", "2", "--max-new-tokens", "24",
           "--n-boot", "20", "--json"]


@pytest.mark.distributed
def test_two_process_compare_equals_one_process(tmp_path):
    """compare: rank 0 creates the folder, its record sub-runs (heads on calibration, then the
    test items) share items across the ranks; compare.parquet equals the single-process run's."""
    import pandas as pd

    _single(COMPARE, tmp_path / "one")
    _launch(COMPARE, tmp_path / "two", "torchrun")
    a = pd.read_parquet(tmp_path / "one" / "compare.parquet")
    b = pd.read_parquet(tmp_path / "two" / "compare.parquet")
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6)
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["processes"] == 2


@pytest.mark.distributed
def test_killed_rank_resumes(tmp_path, one_record):
    """Rank 1 of a 2-process record is killed after its first batch (torchrun then stops rank
    0); the same command with --resume finishes the run, identical to one process."""
    import time

    port = str(_free_port())
    cmd = [str(VENV_BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", port, "-m", "auralens", "--",
           *RECORD, "--out", str(tmp_path / "two")]
    env = {**_env(), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = tmp_path / "two" / "shards" / "items.rank1.parquet"
    deadline = time.time() + 240
    while not shard.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert shard.exists(), "rank 1 wrote no shard"
    killed = False
    for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"RANK=1" in environ:
            os.kill(int(pid), 9)
            killed = True
    proc.wait(timeout=240)
    if not killed or proc.returncode == 0:
        pytest.skip("the launch finished before rank 1 could be killed")
    assert (tmp_path / "two" / "shards").exists()
    two = _launch([*RECORD, "--resume"], tmp_path / "two", "torchrun")
    assert_same_run(one_record[0], tmp_path / "two")
    _close(_strip(one_record[1]), _strip(two), "record summary")


# --- no launcher: the helpers are no-ops ----------------------------------------------------------


def test_single_process_helpers_are_no_ops(monkeypatch):
    from auralens.interp import distributed as dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (dist.world(), dist.rank(), dist.active(), dist.is_main()) == (1, 0, False, True)
    assert dist.shard([1, 2, 3]) == [1, 2, 3]
    assert dist.gather_objects({"a": 1}) == [{"a": 1}]
    assert dist.on_main(lambda: 5) == 5
    assert dist.device() is None
    with pytest.raises(ValueError):
        dist.agree(lambda: (_ for _ in ()).throw(ValueError("x")))
    dist.barrier()


def test_parse_device_map():
    from auralens.interp.stage_config import parse_device_map

    assert parse_device_map(None) is None and parse_device_map("none") is None and parse_device_map("") is None
    assert parse_device_map("auto") == "auto"
    assert parse_device_map('{"model.layers.0": 0, "lm_head": "cpu"}') == {"model.layers.0": 0, "lm_head": "cpu"}
    for bad in ("everywhere", "{not json", "[1, 2]", '{"a": -1}', '{"a": true}', "{}"):
        with pytest.raises(ConfigError, match="device_map"):
            parse_device_map(bad)


def test_bad_device_map_leaves_no_folder(tmp_path):
    from auralens.interp.record import stage_record

    with pytest.raises(ConfigError, match="device_map"):
        stage_record(model="micro", n=2, out=tmp_path / "r", device_map="everywhere", quiet=True)
    assert not (tmp_path / "r").exists()


# --- resume after a crashed rank: shards of any world size are merged, their rows count as done ----


def test_fill_rows_merges_shards_of_a_crashed_launch(tmp_path):
    from auralens.interp.runs import RowLog, RunFolder, fill_rows

    run = RunFolder.create(tmp_path / "run", manifest={"command": "t"})
    items = [f"i{k}" for k in range(7)]
    # a 2-rank launch died: rank 0 had written batches 0 and 2 (items 0-1, 4-5) to its shard,
    # rank 1 nothing (it crashed), and the table holds nothing yet
    RowLog(run, "shards/items.rank0.parquet", key="row_id").extend(
        [{"row_id": i, "v": int(i[1:])} for i in ("i4", "i5", "i0", "i1")])
    calls: list[list[str]] = []

    def rows_for(_s, chunk):
        calls.append(list(chunk))
        return [{"row_id": i, "v": int(i[1:])} for i in chunk]

    log = RowLog(run, "items.parquet", key="row_id", resume=True)
    df = fill_rows(["s"], items, key=lambda it, _s: it, rows_for=rows_for, batch_size=2, log=log, progress=False)
    assert calls == [["i2", "i3"], ["i6"]]  # only the rows no shard holds
    assert list(df["row_id"]) == items  # the single-process order
    assert list(run.read_table("items.parquet")["row_id"]) == items
    assert not (run.path / "shards").exists()


# --- model parallel: --device-map reaches transformers; hooks work on a dispatched model ----------


def test_device_map_reaches_transformers(tmp_path, monkeypatch):
    """``--device-map`` (a JSON object on the command line) is what from_pretrained receives."""
    import transformers
    from typer.testing import CliRunner

    from auralens.cli import app

    cls = transformers.Qwen2AudioForConditionalGeneration
    real = cls.from_pretrained.__func__
    seen = []

    def spy(klass, *args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return real(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    device_map = {"model.audio_tower": "cpu", "model.multi_modal_projector": "cpu", "model.language_model": "cpu",
                  "lm_head": "cpu"}
    res = CliRunner().invoke(app, ["eval", "--model", "micro", "--n", "2", "--formats", "direct", "--no-silence",
                                   "--max-new-tokens", "2", "--out", str(tmp_path / "e"), "--json",
                                   "--device-map", json.dumps(device_map)])
    assert res.exit_code == 0, res.output
    assert seen == [device_map]


def test_recorder_capture_and_steering_on_a_dispatched_model():
    """Layers placed by accelerate's dispatch hooks (a per-module device map; every piece on
    "cpu" here, no GPU): the yield recorder, the capture engine and a steering vector give the
    same numbers as on the plain model."""
    from accelerate import dispatch_model

    from auralens.interp.capture import capture
    from auralens.interp.datasets import load_dataset
    from auralens.interp.generation import cast_features, model_inputs
    from auralens.interp.loading import load_model
    from auralens.interp.record import record_batch
    from auralens.steering.apply import apply_vector
    from auralens.steering.vector import SteeringVector

    plain = load_model("micro")
    split = load_model("micro")
    names = [n for n, _ in split.model.named_children()]
    inner = [f"{names[0]}.{n}" for n, _ in getattr(split.model, names[0]).named_children()]
    device_map = {name: "cpu" for name in inner + names[1:]}
    dispatch_model(split.model, device_map=device_map, force_hooks=True)
    assert any(hasattr(m, "_hf_hook") for m in split.model.modules())
    items = load_dataset("cafe", n=3, seed=0)

    a = record_batch(plain, items, "direct", max_new_tokens=6, time_bins=2)
    b = record_batch(split, items, "direct", max_new_tokens=6, time_bins=2)
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1].total, b[1].total)
    torch.testing.assert_close(a[2], b[2])

    site = "lm.blocks.1.hook_resid_post"
    got = []
    for lm in (plain, split):
        batch = cast_features(lm, model_inputs(lm, items, "direct"))
        with torch.inference_mode():
            got.append(capture(lm, batch, [site])[site])
    torch.testing.assert_close(got[0], got[1])

    d = plain.arch.d_model
    vec = SteeringVector(directions={1: torch.ones(d) / d ** 0.5}, method="test", model_id=plain.model_id,
                         architecture=plain.arch.name, d_model=d, n_layers=plain.arch.n_layers, data_fingerprint="0" * 64)
    logits = []
    for lm in (plain, split):
        batch = cast_features(lm, model_inputs(lm, items, "direct"))
        with torch.inference_mode(), apply_vector(lm, vec, alpha=4.0, layers=[1]):
            logits.append(lm.model(**batch).logits)
    torch.testing.assert_close(logits[0], logits[1])


def test_bench_recorder_batches_smoke():
    """The recorder part of `auralens bench stages` runs (numbers are not checked: not a timed test)."""
    from auralens.bench import bench_recorder_batches

    res = bench_recorder_batches(batches=(1, 2), new_tokens=2, repeats=1)
    assert set(res["batches"]) == {"1", "2"}
    assert all(r["ratio"] > 0 for r in res["batches"].values())


def test_bench_stages_rejects_bad_options():
    from typer.testing import CliRunner

    from auralens.cli import app

    res = CliRunner().invoke(app, ["bench", "stages", "--processes", "1,0"])
    assert res.exit_code == 2 and "--processes" in res.output


def test_device_map_with_several_processes_is_refused(monkeypatch):
    from auralens.interp import distributed as dist

    assert dist.placement(None) == {"device": None}
    assert dist.placement("auto") == {"device_map": "auto"}
    monkeypatch.setattr(dist, "active", lambda: True)
    monkeypatch.setattr(dist, "world", lambda: 2)
    with pytest.raises(ConfigError, match="device_map.*2 processes"):
        dist.placement("auto")
