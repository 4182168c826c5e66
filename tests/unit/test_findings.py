"""auralens.findings: the claim table read from run folders, on run folders with planted numbers
(paired differences computed by hand here, a correlation planted in the yields, partial and missing
runs turned into "not run" rows, never numbers)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from auralens.findings import findings, heads_rows, main, text_prior_rows
from auralens.interp.runs import RunFolder


def _eval_run(folder, name, correct_real, correct_sil, *, cond, finish=True):
    run = RunFolder.create(folder / name, manifest={"command": "eval"})
    rows = []
    for audio, vals in (("real", correct_real), ("silence", correct_sil)):
        for i, c in enumerate(vals):
            rows.append({"item_id": f"cafe-{9200000 + i}-perception-identity-{cond}", "audio": audio,
                         "format": "direct", "correct": bool(c)})
    run.write_table("items.parquet", pd.DataFrame(rows))
    if finish:
        run.finish()
    return run


def test_text_prior_rows_pair_items_by_their_base_id(tmp_path):
    rng = np.random.default_rng(0)
    n = 80
    neu = rng.random(n) < 0.6
    con = neu & (rng.random(n) < 0.5)  # the wrong cue flips about half the right answers
    cong = neu | (rng.random(n) < 0.3)
    sil_neu = rng.random(n) < 0.3
    sil_cong = rng.random(n) < 0.8
    _eval_run(tmp_path, "eval-neutral", neu, sil_neu, cond="neutral")
    _eval_run(tmp_path, "eval-congruent", cong, sil_cong, cond="congruent")
    _eval_run(tmp_path, "eval-conflict", con, sil_neu, cond="conflict")
    rows = text_prior_rows(tmp_path)
    assert len(rows) == 3
    gap = rows[0]
    assert gap["n"] == n
    assert gap["value"] == pytest.approx(float(np.mean(neu.astype(float) - con)), abs=1e-4)
    assert gap["ci"][0] > 0 and gap["verdict"] == "replicates"
    assert rows[1]["value"] == pytest.approx(float(np.mean(cong.astype(float) - neu)), abs=1e-4)
    assert rows[2]["value"] == pytest.approx(float(np.mean(sil_cong.astype(float) - sil_neu)), abs=1e-4)


def test_no_effect_is_not_called_a_replication(tmp_path):
    same = np.arange(60) % 2 == 0
    _eval_run(tmp_path, "eval-neutral", same, same, cond="neutral")
    _eval_run(tmp_path, "eval-congruent", same, same, cond="congruent")
    _eval_run(tmp_path, "eval-conflict", same, same, cond="conflict")
    rows = text_prior_rows(tmp_path)
    assert rows[0]["value"] == 0 and rows[0]["verdict"] == "inconclusive at this n"


def test_missing_or_unfinished_runs_give_not_run_rows(tmp_path):
    same = np.ones(10, dtype=bool)
    _eval_run(tmp_path, "eval-neutral", same, same, cond="neutral")
    _eval_run(tmp_path, "eval-congruent", same, same, cond="congruent")
    _eval_run(tmp_path, "eval-conflict", same, same, cond="conflict", finish=False)  # still running
    rows = findings(tmp_path)["rows"]
    assert rows and all(r["verdict"] == "not run" and r["value"] is None for r in rows)


def _record_run(folder, last, correct, heads):
    run = RunFolder.create(folder / "record-neutral", manifest={"command": "record",
                                                                  "heads": {"heads_selection": "calibration items (disjoint)"}})
    for i, y in enumerate(last):
        t = torch.from_numpy(y[None].astype(np.float32))  # the record layout: last-prompt row, steps, silence
        run.write_tensors(f"yields/{i:05d}.safetensors", {"yield": t, "steps": torch.zeros(1, dtype=torch.int64),
                                                          "silence_last": t[0].clone()})
    run.write_table("items.parquet", pd.DataFrame({"item_index": np.arange(len(last)), "correct": correct}))
    run.write_table("heads.parquet", heads)
    run.finish()


def test_heads_row_measures_the_planted_correlation(tmp_path):
    rng = np.random.default_rng(1)
    n, L, H = 120, 3, 4
    correct = rng.random(n) < 0.5
    last = rng.uniform(0.02, 0.2, size=(n, L, H))
    last[:, 2, 1] += 0.3 * correct  # the one listening head tracks correctness
    heads = pd.DataFrame([{"layer": la, "head": h, "rank": 1 if (la, h) == (2, 1) else 2 + la * H + h,
                           "mean_yield": float(last[:, la, h].mean())} for la in range(L) for h in range(H)])
    _record_run(tmp_path, last, correct, heads)
    row = heads_rows(tmp_path, k=1)[0]
    assert row["n"] == n
    expect = np.corrcoef(last[:, 2, 1], correct.astype(float))[0, 1]
    assert row["value"] == pytest.approx(expect, abs=1e-4)
    assert row["ci"][0] > 0.3 and row["verdict"] == "replicates"
    assert "above 100% of 200 random" in row["measured"]


def test_cli_json_and_a_missing_folder(tmp_path, capsys):
    assert main([str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["verdict"] for r in out["rows"]} == {"not run"}
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a folder of run folders" in err


def test_ablation_row_reads_the_ablate_summary(tmp_path):
    run = RunFolder.create(tmp_path / "ablate-neutral", manifest={"command": "ablate"})
    run.write_json("ablation.json", {"n": 100, "k": 8, "mode": "mean", "n_draws": 5, "diff": 0.12, "ci": [0.04, 0.2],
                                     "accuracy": {"none": 0.6, "top_k": 0.4, "random_k": 0.52},
                                     "ci_method": "percentile bootstrap"})
    run.finish()
    row = heads_rows(tmp_path)[1]
    assert row["value"] == 0.12 and row["ci"] == [0.04, 0.2] and row["n"] == 100
    assert row["verdict"] == "replicates" and "0.600 → 0.400" in row["measured"]


def test_probe_row_reports_the_layer_chosen_on_the_select_half(tmp_path):
    from auralens.findings import probe_rows

    run = RunFolder.create(tmp_path / "probe-spoken", manifest={"command": "probe"})
    rows = []
    for split, best in (("select", 3), ("report", 5)):  # the report half alone would pick layer 5
        for layer in range(6):
            acc = 0.9 if layer == best else 0.5
            rows.append({"site": "s", "layer": layer, "position": "audio_mean", "step": None, "attribute": "category",
                         "accuracy": acc if split == "select" or layer != 3 else 0.7, "control_accuracy": 0.4,
                         "selectivity": (0.7 if layer == 3 else acc) - 0.4, "chance": 0.35,
                         "ci_low": 0.55, "ci_high": 0.85, "n": 40, "split": split})
    run.write_table("probes.parquet", pd.DataFrame(rows))
    run.finish()
    (row,) = probe_rows(tmp_path)
    assert "layer 3" in row["measured"] and row["value"] == 0.7 and row["verdict"] == "replicates"


def test_steering_row_needs_the_test_ci_and_the_random_directions(tmp_path):
    from auralens.findings import steering_rows

    def write(name, test_ci, above):
        run = RunFolder.create(tmp_path / name / "steer-eval", manifest={"command": "steer eval"})
        run.write_json("summary.json", {
            "decision": "steer", "rule": "r", "selected": {"layer": 3, "beta": 2.0, "dev": {"gain": 0.2, "ci": [0.1, 0.3]}},
            "test": {"n": 50, "gain": 0.15, "ci": test_ci, "decision": "steer"},
            "random_directions": {"k": 20, "vector_percentile": 97.0 if above else 60.0, "above_p95": above,
                                  "n_declined": 3},
            "neutral": {"gain": -0.02, "ci": [-0.06, 0.02]}})
        run.finish()
        return steering_rows(tmp_path / name)[0]

    assert write("good", [0.05, 0.25], True)["verdict"] == "replicates"
    assert write("like_random", [0.05, 0.25], False)["verdict"] == "inconclusive at this n"  # random does as well
    row = write("wide", [-0.05, 0.3], True)
    assert row["verdict"] == "inconclusive at this n" and "layer 3, β 2.0" in row["measured"]
