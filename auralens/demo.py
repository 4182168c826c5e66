"""`auralens demo`: every stage on the embedded `micro` model, each into its own run folder
under ``--out`` (eval/, record/, probe/, steer/, compare/), with a printed summary.

``--out`` is then what ``auralens dashboard`` and ``auralens report`` open: each stage folder
sits directly in it (the steering vector the steer and compare stages use is written to
``vectors/``, an input, not a run folder)."""

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
    console = Console()
    if not console.is_terminal:  # piped into a log: rich would fold the table into 80 columns
        console = Console(width=140)
    console.print(t)


def run_demo(*, out: Path, n: int = 60, resume: bool = False, command: str = "auralens demo", fast: bool = False) -> dict:
    """Run every stage on ``n`` items into ``out``; returns each stage's summary.

    ``fast``: a smoke run for tests (about a minute at ``n=6`` on one CPU thread): shorter
    generations, 100 bootstrap resamples, 3-fold probes on at least 24 items, the steering
    vector fitted on 16 items.  The numbers mean little; the folders have every table."""
    import torch
    from rich.console import Console

    from auralens.interp.loading import load_model

    torch.manual_seed(0)
    out = Path(out)
    t0 = time.time()
    n_boot = 100 if fast else 300  # probes and compare (the other stages keep their own default unless fast)
    gen_tokens = 48 if fast else 96
    quick = {"n_boot": n_boot} if fast else {}
    lm = load_model("micro")
    results: dict = {}

    # --- stage 1: accuracy per tier and format, with audio and with silence ------------------
    from auralens.interp.evaluate import stage_eval

    res = stage_eval(model="micro", data="cafe", n=n, out=out / "eval", resume=resume, command=command, lm=lm, batch_size=32,
                     **({"max_new_tokens": gen_tokens, "quiet": True} if fast else {}))
    results["eval"] = res
    acc = res["accuracy"]
    rows = []
    for fmt in ("direct", "cot", "structured", "all_formats"):
        r = acc["real"].get(fmt, {})
        s = acc.get("silence", {}).get(fmt, {})
        rows.append([fmt, r.get("perception", float("nan")), r.get("temporal", float("nan")),
                     r.get("multihop", float("nan")), s.get("all", float("nan"))])
    _table(f"micro on cafe (n={n}): accuracy with audio, and with silence", ["format", "perception", "temporal", "multihop", "silence (all)"], rows)

    # --- stage 2: perception decay (per-head audio yield across reasoning steps) --------------
    from auralens.interp.record import stage_record

    rec = stage_record(model="micro", data="cafe", n=n, fmt="cot", out=out / "record", resume=resume, lm=lm,
                       batch_size=30, max_new_tokens=gen_tokens, top_k=4, quiet=fast, **quick)
    results["record"] = rec
    all_curve = {r["step"]: r for r in rec["all_curve"]}
    _table(
        f"perception decay on micro: mean audio yield by reasoning step (top-{len(rec['top_heads'])} heads "
        f"{rec['top_heads']} vs all heads, 95% CI)",
        ["step", "top-k yield", "top-k CI", "all-heads yield", "items"],
        [[r["step"], r["mean_yield"], f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
          all_curve.get(r["step"], {}).get("mean_yield", float("nan")), r["n"]] for r in rec["topk_curve"]],
    )
    td = rec["topk_decay"]
    Console().print(f"top-k decay: slope {td.get('slope', float('nan')):+.4f} per step, last/first "
                    f"{td.get('last_first_ratio', float('nan')):.2f}; errors: {rec['error_shares']}")

    # --- stage 3: probes (where audio attributes live, by layer and step) -------------------
    from auralens.probes.stage import stage_probe

    pr = stage_probe(model="micro", data="cafe", n=max(n, 24) if fast else n, out=out / "probe", resume=resume, lm=lm,
                     seed=7, quiet=True, n_bootstrap=n_boot, **({"n_folds": 3, "max_new_tokens": gen_tokens} if fast else {}))
    results["probe"] = pr
    rows = []
    for attr, d in (pr.get("attributes") or {}).items():
        b = d["best"]
        dec = d.get("decay") or {}
        falls = {True: "falls", False: "holds", None: "-"}[dec.get("falls")]
        rows.append([attr, b["layer"], b["position"], b["accuracy"], b["control_accuracy"], b["selectivity"], falls])
    if rows:
        _table("probes on micro: best layer per attribute", ["attribute", "layer", "position", "accuracy", "control", "selectivity", "over steps"], rows)

    # --- stage 4: audio-minus-silence steering, against controls ---------------------------
    from auralens.steering.pipeline import stage_steer_eval, stage_steer_fit

    # the vector is the steer stage's input: beside the run folders, not inside one (a stage
    # folder holds only what its stage wrote, and the dashboard finds it at <out>/steer)
    vec_path = out / "vectors" / "audio_minus_silence.safetensors"
    stage_steer_fit(model="micro", data="cafe", n=16 if fast else 48, layers=None, positions="last_prompt",
                    out_vector=vec_path, seed=11, lm=lm)
    st = stage_steer_eval(model="micro", data="cafe", n=n, vector=vec_path, alphas=[0.0, 1.0, 2.0, 4.0], out=out / "steer",
                          resume=resume, seed=7, formats=("direct",), lm=lm, quiet=True, batch_size=30, **quick)
    results["steer"] = st
    b = st["best"]
    ctrl = "; ".join(f"{k}: {v.get('delta', float('nan')):+.3f}" for k, v in (b.get("controls") or {}).items()
                     if isinstance(v, dict))
    Console().print(
        f"steering (layer {b['layer']}, alpha {b['alpha']}, {b['positions']}): accuracy {b['baseline_accuracy']:.3f} -> "
        f"{b['accuracy']:.3f}, gain {b['delta']:+.3f} (95% CI [{b['delta_ci'][0]:+.3f}, {b['delta_ci'][1]:+.3f}], "
        f"n={b['n']}; {b.get('selection', 'chosen on these items, optimistic')}); controls at the same setting: "
        f"{ctrl or 'n/a'}"
    )

    # --- stage 5: steering vs fine-tuning (MPAR²- and HyPeR-style) on an organism -------------
    from auralens.interp.micro.organisms import available as _available

    org = "micro-prior"  # the text-prior organism: conflict items are where listening is repaired or not
    if _available(org):
        from auralens.compare import stage_compare

        cmp = stage_compare(base=org, data="cafe-neutral:test,cafe-conflict:test", n=n, out=out / "compare",
                            resume=resume, seed=7, quiet=True, batch_size=30, max_new_tokens=gen_tokens, top_k=4,
                            n_boot=n_boot, n_cal=16 if fast else 32, n_dev=16 if fast else 32, betas=(0.0, 2.0, 4.0))
        results["compare"] = cmp
        org_sum = cmp["organisms"][org]
        rows = []
        for system, per in org_sum["systems"].items():
            row = [system, org_sum["formats"][system]]
            for cond in ("cafe-neutral:test", "cafe-conflict:test"):
                acc, gain = (per[cond].get("accuracy") or {}), (per[cond].get("gain_vs_base") or {})
                row += [acc.get("value", float("nan")),
                        f"{gain['value']:+.3f} [{gain['ci'][0]:+.3f}, {gain['ci'][1]:+.3f}]" if gain.get("ci") else ""]
            row.append((per["cafe-conflict:test"].get("forwards_per_item") or {}).get("value"))
            row.append(org_sum["training"][system]["minutes"])
            rows.append(row)
        _table(f"steering vs fine-tuning on {org} (held-out test items, n={n} per condition; measured)",
               ["system", "format", "neutral", "gain", "conflict", "gain", "fwd/item", "train min"], rows)
        from auralens.interp.papers import reported_summary

        Console().print(f"reported in the papers (not measured here; other models and benchmarks): {reported_summary()}")
    else:
        Console().print(f"compare stage skipped: no {org} weights (run `auralens organisms train {org}`)")

    # --- stage 6: the toolkit against model organisms with planted deficits ------------------
    from auralens.organisms import summary_rows, validate
    from auralens.interp.micro.organisms import ORGANISMS, available

    have = [name for name in ORGANISMS if available(name)]
    if have:
        org = validate(organisms=("micro", *have), n=12 if fast else n, n_cal=12 if fast else n,
                       probes=not fast, keep=out / "organisms", resume=resume, min_claims=2 if fast else 20)
        results["organisms"] = org
        _table(f"what the toolkit finds: healthy micro vs the organisms (held-out items, n={12 if fast else n}; "
               "full checks: `auralens organisms validate`)",
               ["model", "conflict gap (neutral − conflict)", "listening heads recovered", "decay onset (yield / claims)",
                "claims before − after k"], summary_rows(org))
    else:
        Console().print("organisms stage skipped: no organism weights (run `auralens organisms train NAME`)")

    results["seconds"] = round(time.time() - t0, 1)
    Console().print(f"demo finished in {results['seconds']} s; run folders under {out}/")
    return results
