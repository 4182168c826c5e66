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
from auralens.interp import schemas
from auralens.interp.errors import RunFolderError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("interp", "probes", "steering", "finetuning", "dashboards", "auralens")  # repository folders
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
    from auralens.interp.loading import load_model
    from auralens.probes.figures import accuracy_by_layer
    from auralens.steering.formats import export

    assert auralens.load_model is load_model and auralens.export_vector is export
    assert auralens.figures.accuracy_by_layer is accuracy_by_layer
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        auralens.nope  # noqa: B018


def test_figures_namespace_gathers_every_package_figure():
    import auralens.interp.figures
    import auralens.probes.figures
    import auralens.steering.figures

    for mod in (auralens.interp.figures, auralens.probes.figures, auralens.steering.figures):
        for name in mod.__all__:
            if callable(getattr(mod, name)):
                assert getattr(auralens.figures, name) is getattr(mod, name), (mod.__name__, name)


# ---------------------------------------------------------------------------------- schemas
def test_writers_use_the_declared_columns():
    from auralens.compare import COMPARE_COLUMNS
    from auralens.interp.decay import DECAY_COLUMNS
    from auralens.probes.tables import TABLE_COLUMNS
    from auralens.steering.evaluate import ITEM_COLUMNS, STEERING_COLUMNS

    assert DECAY_COLUMNS == schemas.DECAY.names
    assert TABLE_COLUMNS == schemas.PROBES.names
    assert COMPARE_COLUMNS == schemas.COMPARE.names
    assert (*STEERING_COLUMNS, "format") == schemas.STEERING.names
    assert ITEM_COLUMNS == schemas.STEER_ITEMS.names
    assert all(key == f"{t.stage}/{t.name}" for key, t in schemas.TABLES.items())


def test_decay_tables_come_out_in_their_declared_shape():
    from auralens.interp.decay import claim_accuracy_by_step, decay_summary, decay_table

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
    from auralens.interp.papers import REPORTED, reported_rows, reported_summary

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
#: repository folder -> the import name it installs as (pyproject's package-dir)
FOLDERS = {"interp": "auralens.interp", "probes": "auralens.probes", "steering": "auralens.steering",
           "finetuning": "auralens.finetuning", "dashboards": "auralens.dashboards", "auralens": "auralens"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    return ".".join(parts[:-1] if rel.name == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST, module: str, is_pkg: bool):
    """Every import in a module: at module level and inside functions (``if TYPE_CHECKING:``
    blocks left out: they never run).  Yields (node, imported module names)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            yield node, [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            yield node, [base, *(f"{base}.{a.name}" for a in node.names)]


def _module_imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports, at import time or inside a function."""
    graph: dict[str, set[str]] = {}
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            name = _module_name(path)
            tree = ast.parse(path.read_text(encoding="utf-8"))
            graph[name] = {d for _, names in _imports(tree, name, path.name == "__init__.py") for d in names}
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_import_cycles_including_function_level_imports():
    graph = _module_imports()
    assert "auralens.steering.apply" in graph and "auralens.interp.runs" in graph
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join([*stack[stack.index(d):], m, d] if d in stack else [m, d]))
            elif d not in state:
                visit(d, [*stack, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_cycle_check_sees_function_level_and_relative_imports():
    src = "import os\ndef f():\n    from auralens.interp import runs\n    from . import vector\n"
    names = {n for _, ns in _imports(ast.parse(src), "auralens.steering.apply", False) for n in ns}
    assert {"auralens.interp.runs", "auralens.steering.vector", "os"} <= names


@pytest.mark.parametrize("pkg, never", [
    ("interp", ("probes", "steering", "finetuning", "dashboards", "auralens")),
    ("probes", ("steering", "finetuning", "dashboards", "auralens")),
    ("steering", ("finetuning", "dashboards", "auralens")),
    ("finetuning", ("probes", "steering", "dashboards", "auralens")),
    ("dashboards", ("auralens",)),
])
def test_layering(pkg, never):
    """``auralens.interp`` is the ground floor; the top package ``auralens`` (cli, stages,
    compare, demo) may import everything, nothing below imports it."""
    bad = []
    for path in (ROOT / pkg).rglob("*.py"):
        name = _module_name(path)
        for _, names in _imports(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py"):
            for n in names:
                parts = n.split(".")
                if parts[0] != "auralens":
                    continue
                floor = parts[1] if len(parts) > 1 and parts[1] in FOLDERS and parts[1] != "auralens" else "auralens"
                if floor in never:
                    bad.append(f"{path.relative_to(ROOT)}: {n}")
    assert not bad, bad


def test_old_top_level_names_are_not_installed():
    """The packages import as ``auralens.interp`` ...; a bare ``interp`` is not ours."""
    code = ("import importlib.util, json; print(json.dumps([importlib.util.find_spec(n) is not None "
            "for n in ('interp', 'probes', 'steering', 'finetuning', 'dashboards')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert json.loads(out.stdout) == [False] * 5
    out = subprocess.run([sys.executable, "-c", "import auralens.interp, auralens.steering, auralens.probes, "
                          "auralens.dashboards, auralens.finetuning"], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_imports(tree: ast.AST, module: str, is_pkg: bool, project: set[str]) -> list[str]:
    """The private names (``_x``, not ``__x__``) ``module`` imports from another project module,
    absolutely or relatively, at module level or inside a function."""
    found = []
    for node, names in _imports(tree, module, is_pkg):
        if isinstance(node, ast.ImportFrom):
            base = names[0]
            if base in project and base != module:
                found += [f"{a.name} from {base}" for a in node.names if _private(a.name)]
        else:
            found += [n for n in names if n.split(".")[0] == "auralens" and any(map(_private, n.split(".")))]
    return found


def test_no_module_imports_a_private_name_from_another():
    """A name another module needs is public there (no underscore); ``_x`` stays in its module."""
    project = set(_module_imports())
    bad = []
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            name = _module_name(path)
            bad += [f"{path.relative_to(ROOT)}: {imp}" for imp in _private_imports(tree, name, path.name == "__init__.py", project)]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_the_private_import_check_sees_relative_absolute_and_function_level_imports():
    src = ("from auralens.interp.runs import open_run, _fill\n"
           "from . import _vector_helper, __version__\n"
           "import json as _json\n"
           "def f():\n    from .apply import _AnswerMask\n    import auralens.steering._hidden\n")
    project = {"auralens.interp.runs", "auralens.steering", "auralens.steering.apply", "auralens.steering.vector"}
    found = _private_imports(ast.parse(src), "auralens.steering.vector", False, project)
    assert sorted(found) == ["_AnswerMask from auralens.steering.apply", "_fill from auralens.interp.runs",
                             "_vector_helper from auralens.steering", "auralens.steering._hidden"]
    # a module may import its own package's dunders and alias stdlib modules privately
    assert _private_imports(ast.parse("from . import __version__\nimport json as _json\n"),
                            "auralens.steering.vector", False, project) == []


# ----------------------------------------------------------------------------- shape checks
def test_shapes_are_checked_under_pytest():
    """tests/conftest.py puts the jaxtyping shapes of the public tensor APIs under check: a tensor
    whose named dimension disagrees with another argument's is refused at the call."""
    import torch
    from jaxtyping import TypeCheckError

    from auralens.interp.attention_yield import audio_yield

    query, key = torch.randn(2, 4, 1, 8), torch.randn(2, 4, 6, 8)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 1:3] = True
    assert audio_yield(query, key, mask).shape == (2, 1, 4, 1)  # [batch, q, head, bin]
    with pytest.raises(TypeCheckError, match="audio_yield"):
        audio_yield(query, key, torch.zeros(3, 6, dtype=torch.bool))  # batch 3, the query's is 2
    with pytest.raises(TypeCheckError, match="audio_yield"):
        audio_yield(query, key, mask.long())  # Bool[...]: an integer mask is refused too


def test_the_shape_checker_checks_only_shape_annotations():
    from typing import Literal

    from jaxtyping import Float

    from auralens.testing.shapes import has_shape

    assert has_shape(Float[np.ndarray, "batch d_model"])
    assert has_shape(dict[str, Float[np.ndarray, "batch d_model"]] | None)
    assert not has_shape(int) and not has_shape(Literal["a", "b"]) and not has_shape("Float[Tensor, 'b']")


# ------------------------------------------------------------------- lazy imports, honestly
#: third-party libraries slow enough to import that a light module may defer them
HEAVY_LIBRARIES = ("torch", "transformers", "nnsight", "transformer_lens", "streamlit", "trl", "accelerate",
                   "peft", "pandas", "plotly", "sklearn", "scipy", "pyarrow", "datasets", "mistral_common")
HEAVY_MODULES = ("safetensors.torch",)


def _is_heavy_name(name: str) -> bool:
    return name.split(".")[0] in HEAVY_LIBRARIES or any(name == m or name.startswith(m + ".") for m in HEAVY_MODULES)


def _top_level_imports(tree: ast.Module) -> set[str]:
    """What a module imports when it is imported (``if TYPE_CHECKING:`` left out)."""
    out: set[str] = set()
    for node in tree.body:
        if _is_type_checking(node):
            continue
        for x in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(x, ast.Import):
                out |= {a.name for a in x.names}
            elif isinstance(x, ast.ImportFrom) and x.module and not x.level:
                out |= {x.module} | {f"{x.module}.{a.name}" for a in x.names}
    return out


def _heavy_modules() -> tuple[dict[str, bool], dict[str, ast.Module]]:
    """Project module -> whether importing it imports a heavy library (its module-level closure)."""
    trees = {_module_name(p): ast.parse(p.read_text(encoding="utf-8"))
             for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")}
    heavy: dict[str, bool] = {}

    def visit(m: str) -> bool:
        if m not in heavy:
            heavy[m] = False
            deps = _top_level_imports(trees[m]) | {".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)}
            heavy[m] = any(_is_heavy_name(d) or (d in trees and d != m and visit(d)) for d in deps)
        return heavy[m]

    for m in trees:
        visit(m)
    return heavy, trees


def test_function_level_imports_only_defer_something_heavy():
    """An import inside a function is there for one reason: a light module (``auralens --help``,
    the stage configs the CLI is built from) deferring a heavy one (torch & co, or a project
    module that imports them).  Anything else belongs at module level, where the cycle check and
    a reader see it.  Optional dependencies (an import inside ``try:``) are exempt."""
    heavy, trees = _heavy_modules()
    assert heavy["auralens.interp.attention_yield"] and not heavy["auralens.cli"]
    bad = []
    for m, tree in trees.items():
        tries = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for n in ast.walk(t)}
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in tries:
                    continue
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    names = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
                deferred_heavy = any(_is_heavy_name(n) or heavy.get(n, False) for n in names)
                if heavy[m] or not deferred_heavy:
                    bad.append(f"{m}:{node.lineno}: {ast.unparse(node)}"
                               + (" (the module is heavy already)" if heavy[m] else " (nothing heavy deferred)"))
    assert not bad, "function-level imports that defer nothing heavy:\n" + "\n".join(bad)


def test_auralens_help_imports_no_torch():
    code = ("import sys, json\nfrom typer.testing import CliRunner\nfrom auralens.cli import app\n"
            "r = CliRunner().invoke(app, ['--help'])\n"
            "print(json.dumps([r.exit_code, sorted(m for m in ('torch', 'transformers', 'pandas') if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [0, []]
