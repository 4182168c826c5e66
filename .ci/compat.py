#!/usr/bin/env python3
"""`make compat`: the recorder, steering and probe tests against the newest releases.

Builds a throwaway venv (``.venv-compat``) from ``requirements.lock``, then upgrades the
fast-moving packages (those in ``interp/compat.py``'s TESTED table) to their newest releases —
or, with ``--oldest``, to the oldest release of each tested range — installs auralens without
its dependency bounds, runs the tests that lean on private library behaviour and prints a table:
package, locked version, version under test, inside the tested range?, and each test file's
result.  Not part of `make test` or CI: landing must not depend on what upstream released that
day.  Run it at the start of a session; fix what it finds in interp/compat.py.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = [
    "tests/unit/test_compat.py",
    "tests/unit/test_attention_yield.py",
    "tests/integration/test_record.py",
    "tests/unit/test_steering_apply.py",
    "tests/unit/test_steering_directions.py",
    "tests/unit/test_probe_collect.py",
    "tests/unit/test_probe_fit.py",
]


def tested_ranges() -> dict[str, tuple[str, str]]:
    """TESTED from interp/compat.py, read without importing the package (no deps needed here)."""
    tree = ast.parse((ROOT / "interp" / "compat.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "TESTED":
            return ast.literal_eval(node.value)
    raise SystemExit("interp/compat.py: expected a TESTED table, found none")


def norm(name: str) -> str:
    """A distribution name as the lock is read (PEP 503-ish: lower case, '_' -> '-')."""
    return name.lower().replace("_", "-")


def locked() -> dict[str, str]:
    out = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            out[norm(m.group(1))] = m.group(2)
    return out


def vkey(v: str) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in re.findall(r"\d+", v)[:3])


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oldest", action="store_true", help="Test the oldest release of each tested range instead of the newest.")
    ap.add_argument("--venv", default=None, help="Throwaway venv folder (default .venv-compat or .venv-compat-oldest).")
    ap.add_argument("--python", default=sys.executable, help="Python used to create the venv.")
    ap.add_argument("--json", dest="json_out", default=None, help="Also write the table as JSON to this file.")
    args = ap.parse_args()

    ranges = tested_ranges()
    lock = locked()
    venv = Path(args.venv or (ROOT / (".venv-compat-oldest" if args.oldest else ".venv-compat")))
    if venv.exists():
        shutil.rmtree(venv)
    sh([args.python, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    # Same guard as the Makefile: the local CPU torch stays; no torchvision/torchaudio.
    (venv / "constraints.txt").write_text("torch==2.13.0\ntorchvision==0.0.0\ntorchaudio==0.0.0\n")
    (venv / "pip.conf").write_text(f"[install]\nconstraint = {venv.resolve() / 'constraints.txt'}\n")
    env = {**os.environ, "PIP_CONFIG_FILE": str(venv / "pip.conf")}
    quiet = ["--quiet", "--disable-pip-version-check"]
    sh([py, "-m", "pip", "install", *quiet, "torch==2.13.0"], env=env)
    fast = set(ranges)
    fast_norm = {norm(n) for n in ranges}  # the lock's names are normalised (mistral_common -> mistral-common)
    base = [f"{n}=={v}" for n, v in lock.items() if n not in fast_norm and n != "torch"]
    req = venv / "base.txt"
    req.write_text("\n".join(base) + "\n")
    sh([py, "-m", "pip", "install", *quiet, "-r", str(req)], env=env)
    if args.oldest:
        wanted = [f"{n}=={lo}.*" if lo.count(".") == 1 else f"{n}=={lo}" for n, (lo, _) in ranges.items()]
    else:
        wanted = sorted(fast)
    sh([py, "-m", "pip", "install", *quiet, "--upgrade", *wanted], env=env)
    sh([py, "-m", "pip", "install", *quiet, "--no-deps", "-e", str(ROOT)], env=env)

    got = {}
    for name in ranges:
        r = subprocess.run([py, "-c", f"from importlib.metadata import version; print(version({name!r}))"],
                           capture_output=True, text=True)
        got[name] = r.stdout.strip() or "missing"

    results = {}
    for f in TEST_FILES:
        r = subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", f], cwd=ROOT,
                           env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
        last = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
        results[f] = {"passed": r.returncode == 0, "summary": last}
        if r.returncode != 0:
            print(r.stdout[-4000:], r.stderr[-2000:], sep="\n")

    mode = "oldest in tested range" if args.oldest else "newest release"
    print(f"\nmake compat ({mode})\n")
    print("| package | locked | under test | inside tested range [lo, hi) |")
    print("|---|---|---|---|")
    rows = []
    for name, (lo, hi) in ranges.items():
        v = got[name]
        inside = v != "missing" and vkey(lo) <= vkey(v) < vkey(hi)
        locked_v = lock.get(norm(name), "-")
        rows.append({"package": name, "locked": locked_v, "under_test": v, "tested_range": [lo, hi], "inside": inside})
        print(f"| {name} | {locked_v} | {v} | {'yes' if inside else 'NO: raise the bound once the tests pass'} |")
    print("\n| test file | result |\n|---|---|")
    for f, res in results.items():
        print(f"| {f} | {'pass' if res['passed'] else 'FAIL'}: {res['summary']} |")
    ok = all(r["passed"] for r in results.values())
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"mode": mode, "packages": rows, "tests": results, "passed": ok}, indent=2))
    print("\nall passed" if ok else "\nFAILURES: fix interp/compat.py (or bound the package) before raising a range")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
