"""The public surface and the house rules: ``import auralens`` is light and lazy, every exported
name resolves, each run table is declared once and the writers use the declaration, the
papers' numbers are typed in one place, and the packages keep their layering (no cycles,
nothing imports dashboards or auralens from below)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import auralens
from interp import schemas
from interp.errors import RunFolderError

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("interp", "probes", "steering", "finetuning", "dashboards", "auralens")
HEAVY = ("torch", "transformers", "nnsight", "pandas", "plotly", "sklearn", "streamlit")


# ------------------------------------------------------------------------------ public API
def test_import_auralens_is_light_and_changes_nothing():
    code = (
        "import sys, warnings, json; before = set(sys.modules); filters = list(warnings.filters)\n"
        "import auralens\n"
        f"print(json.dumps({{'heavy': sorted(m for m in {HEAVY!r} if m in sys.modules), "
        "'filters': warnings.filters == filters, 'path': sys.path[0]}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["heavy"] == [] and res["filters"], res


def test_every_public_name_resolves():
    assert len(set(auralens.__all__)) == len(auralens.__all__)
    for name in auralens.__all__:
        assert getattr(auralens, name) is not None, name
    assert set(auralens.__all__) <= set(dir(auralens))
    from interp.loading import load_model
    from probes.figures import accuracy_by_layer
    from steering.formats import export

    assert auralens.load_model is load_model and auralens.export_vector is export
    assert auralens.figures.accuracy_by_layer is accuracy_by_layer
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        auralens.nope  # noqa: B018


def test_figures_namespace_gathers_every_package_figure():
    import interp.figures
    import probes.figures
    import steering.figures

    for mod in (interp.figures, probes.figures, steering.figures):
        for name in mod.__all__:
            if callable(getattr(mod, name)):
                assert getattr(auralens.figures, name) is getattr(mod, name), (mod.__name__, name)


# ---------------------------------------------------------------------------------- schemas
def test_writers_use_the_declared_columns():
    from auralens.compare import COMPARE_COLUMNS
    from interp.decay import DECAY_COLUMNS
    from probes.fit import TABLE_COLUMNS
    from steering.evaluate import ITEM_COLUMNS, STEERING_COLUMNS

    assert DECAY_COLUMNS == schemas.DECAY.names
    assert TABLE_COLUMNS == schemas.PROBES.names
    assert COMPARE_COLUMNS == schemas.COMPARE.names
    assert (*STEERING_COLUMNS, "format") == schemas.STEERING.names
    assert ITEM_COLUMNS == schemas.STEER_ITEMS.names
    assert all(key == f"{t.stage}/{t.name}" for key, t in schemas.TABLES.items())


def test_decay_tables_come_out_in_their_declared_shape():
    from interp.decay import claim_accuracy_by_step, decay_summary, decay_table

    rng = np.random.default_rng(0)
    ys = [rng.uniform(0, 1, (n, 2, 3)) for n in (5, 7)]
    ss = [np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 2, 2, 3, 3])]
    decay = schemas.DECAY.check(decay_table(ys, ss, top_heads=[(0, 1)], n_boot=50))
    schemas.DECAY_SUMMARY.check(decay_summary(decay))
    empty = claim_accuracy_by_step(schemas.CLAIMS.frame())
    assert tuple(empty.columns) == schemas.CLAIM_ACCURACY.names and len(empty) == 0


def test_a_table_that_drifts_is_an_error_naming_it():
    df = schemas.CLAIM_ACCURACY.frame([(0, 0.5, 0.2, 0.8, 4, 2)])
    assert schemas.CLAIM_ACCURACY.check(df) is df
    with pytest.raises(RunFolderError, match=r"record/claim_accuracy.parquet.*missing \['n_items'\]"):
        schemas.CLAIM_ACCURACY.check(df.drop(columns="n_items"))
    with pytest.raises(RunFolderError, match=r"unexpected \['extra'\]"):
        schemas.CLAIM_ACCURACY.check(df.assign(extra=1))
    with pytest.raises(RunFolderError, match="column 'step' of kind int, found dtype"):
        schemas.CLAIM_ACCURACY.check(df.assign(step="zero"))
    with pytest.raises(RunFolderError, match=r"extra columns \['bogus'\]"):
        schemas.CLAIMS.frame([{"item_id": "a", "bogus": 1}])


# ----------------------------------------------------------------------------------- papers
def test_the_papers_numbers_are_typed_once():
    from interp.papers import REPORTED, reported_rows, reported_summary

    rows = schemas.COMPARE.check(reported_rows())
    assert len(rows) == len(REPORTED) and set(rows["source"]) == {"reported"}
    assert "65.90 -> 74.59" in reported_summary() and "+4.9" in reported_summary()
    needles = ("65.90", "74.59", "31.74", "63.51", "0.6590", "0.7459", "0.3174", "0.6351", "+8.0 points", "+4.9 points")
    found = []
    for path in [*(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")), *ROOT.glob("notebooks/*.ipynb")]:
        rel = path.relative_to(ROOT)
        if rel == Path("interp/papers.py"):
            continue
        text = path.read_text(encoding="utf-8")
        found += [f"{rel}: {n}" for n in needles if n in text]
    assert not found, found


# --------------------------------------------------------------------------------- layering
def _module_imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports at module level (import time)."""
    graph: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            deps = set()
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            graph[name] = {d for d in deps if d.split(".")[0] in PACKAGES}
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_import_cycles_at_import_time():
    graph = _module_imports()
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                pytest.fail(f"import cycle: {' -> '.join(stack[stack.index(d):] + [m, d])}")
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("pkg, never", [
    ("interp", ("probes", "steering", "finetuning", "dashboards", "auralens")),
    ("probes", ("steering", "finetuning", "dashboards", "auralens")),
    ("steering", ("finetuning", "dashboards", "auralens")),
    ("finetuning", ("probes", "steering", "dashboards", "auralens")),
    ("dashboards", ("auralens",)),
])
def test_layering(pkg, never):
    bad = []
    for path in (ROOT / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            bad += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in never]
    assert not bad, bad
