"""``auralens eval --mmau-output``: MMAU's prediction file, scored by MMAU's own rule
(tests/_reference/mmau_evaluation.py, a re-implementation of the official evaluation.py written
apart from auralens' matching), and items.parquet's task / difficulty columns.

Checked: the file holds every input row unchanged plus ``model_output`` (the whole generated
text, the items.parquet prediction) and ``auralens_extracted``; the official task-wise,
difficulty-wise and total accuracy computed from the file equal the same tables computed from
items.parquet (task, difficulty, prediction) with auralens' ``mmau_string_match``, and the two
implementations of the rule agree on random strings; a bad ``--mmau-output`` is refused before
any folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from auralens.interp.errors import ConfigError

REF = Path(__file__).resolve().parents[1] / "_reference" / "mmau_evaluation.py"
TASKS = ("sound", "music", "speech")
DIFFS = ("easy", "medium", "hard")


def _reference():
    spec = importlib.util.spec_from_file_location("mmau_evaluation", REF)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _mmau_json(folder: Path, n: int = 9) -> Path:
    import soundfile as sf

    from auralens.interp.datasets import load_cafe

    folder.mkdir(parents=True, exist_ok=True)
    sr, t = 16000, np.arange(8000) / 16000
    rows = []
    for i, it in enumerate(load_cafe(n, seed=4)):
        sf.write(folder / f"a{i}.wav", (0.1 * np.sin(2 * np.pi * (220 + 30 * i) * t)).astype(np.float32), sr)
        rows.append({"id": f"m{i}", "audio_id": f"a{i}.wav", "question": it.question, "choices": list(it.choices),
                     "answer": it.answer, "dataset": "cafe", "task": TASKS[i % 3], "split": "test",
                     "category": ["Counting"] if i % 2 else "Counting", "sub-category": "count",
                     "difficulty": DIFFS[(i // 3) % 3]})
    path = folder / "MMAU.json"
    path.write_text(json.dumps(rows))
    return path


def test_mmau_output_is_scored_by_the_official_rule(small_lm, small_micro_dir, tmp_path):
    from auralens.interp.evaluate import stage_eval
    from auralens.interp.matching import mmau_string_match

    ref = _reference()
    data = _mmau_json(tmp_path / "mmau")
    out = tmp_path / "preds" / "mmau-predictions.json"
    stage_eval(model=str(small_micro_dir), data=str(data), n=9, formats=("direct",), silence=False,
               max_new_tokens=6, batch_size=9, out=tmp_path / "run", mmau_output=out, lm=small_lm, quiet=True)
    items = pd.read_parquet(tmp_path / "run" / "items.parquet")
    rows_in = json.loads(data.read_text())
    got = json.loads(out.read_text())
    assert len(got) == len(rows_in) == len(items) == 9
    by_id = items.set_index("item_id")
    for src, row in zip(rows_in, got):
        assert {k: row[k] for k in src} == src  # the input row unchanged
        it = by_id.loc[src["id"]]
        assert row["model_output"] == it["prediction"] and row["auralens_extracted"] == it["answer_span"]
        assert (it["task"], it["difficulty"]) == (src["task"], src["difficulty"])
    official = ref.evaluate(out)
    assert official["n"] == 9 and official["corrupted"] == 0
    # the same tables from items.parquet alone, with auralens' implementation of the rule
    choices = {r["id"]: r["choices"] for r in rows_in}
    items["match"] = [mmau_string_match(a, p, choices[i]) for a, p, i in
                      zip(items["answer"], items["prediction"], items["item_id"])]
    assert official["task"] == pytest.approx({k: 100 * v for k, v in items.groupby("task")["match"].mean().items()})
    assert official["difficulty"] == pytest.approx(
        {k: 100 * v for k, v in items.groupby("difficulty")["match"].mean().items()})
    assert official["total"] == pytest.approx(100 * items["match"].mean())
    # the two rules agree on random strings over the choices' words (independent implementations)
    rng = np.random.default_rng(0)
    words = sorted({w for r in rows_in for c in r["choices"] for w in c.lower().split()}) + ["the", "answer", ":"]
    for _ in range(2000):
        r = rows_in[int(rng.integers(len(rows_in)))]
        pred = " ".join(rng.choice(words, size=int(rng.integers(0, 5))))
        assert ref.string_match(r["answer"], pred, r["choices"]) == mmau_string_match(r["answer"], pred, r["choices"])


def test_bad_mmau_output_is_refused_before_anything(tmp_path):
    from auralens.interp.evaluate import EvalConfig

    with pytest.raises(ConfigError, match=r"--mmau-output .*expected a \.json file path, found the extension '\.txt'"):
        EvalConfig(model="micro", data="cafe", mmau_output=tmp_path / "p.txt", out=tmp_path / "run")
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        EvalConfig(model="micro", data="cafe", mmau_output=tmp_path / "f" / "p.json", out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
