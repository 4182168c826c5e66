"""`auralens demo`: every stage on the embedded `micro` model, each into its own run folder
under ``--out`` (eval/, record/, probe/, steer/, compare/), with a printed summary."""

from __future__ import annotations

import time
from pathlib import Path


def _table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r])
    Console().print(t)


def run_demo(*, out: Path, n: int = 60, resume: bool = False, command: str = "auralens demo") -> dict:
    import torch

    from interp.loading import load_model

    torch.manual_seed(0)
    out = Path(out)
    t0 = time.time()
    lm = load_model("micro")
    results: dict = {}

    # --- stage 1: accuracy per tier and format, with audio and with silence ------------------
    from auralens.stages import stage_eval

    res = stage_eval(model="micro", data="cafe", n=n, out=out / "eval", resume=resume, command=command, lm=lm, batch_size=32)
    results["eval"] = res
    acc = res["accuracy"]
    rows = []
    for fmt in ("direct", "cot", "structured", "all_formats"):
        r = acc["real"].get(fmt, {})
        s = acc.get("silence", {}).get(fmt, {})
        rows.append([fmt, r.get("perception", float("nan")), r.get("temporal", float("nan")),
                     r.get("multihop", float("nan")), s.get("all", float("nan"))])
    _table(f"micro on cafe (n={n}): accuracy with audio, and with silence", ["format", "perception", "temporal", "multihop", "silence (all)"], rows)

    results["seconds"] = round(time.time() - t0, 1)
    from rich.console import Console

    Console().print(f"demo finished in {results['seconds']} s; run folders under {out}/")
    return results
