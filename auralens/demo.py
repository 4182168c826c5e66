"""`auralens demo`: every stage on the embedded `micro` model, each into its own run folder
under ``--out`` (eval/, record/, probe/, steer/, compare/), with a printed summary.

``--out`` is then what ``auralens dashboard`` and ``auralens report`` open: each stage folder
sits directly in it (the steering vector the steer and compare stages use is written to
``vectors/``, an input, not a run folder)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from auralens.compare import stage_compare
from auralens.interp.errors import ConfigError
from auralens.interp.evaluate import stage_eval
from auralens.interp.loading import load_model
from auralens.interp.micro import ORGANISMS, available
from auralens.interp.papers import reported_summary
from auralens.interp.record import stage_record
from auralens.interp.smol import NAME as SMOL
from auralens.interp.smol.assemble import check_parts
from auralens.interp.spoken import write_spoken_dataset
from auralens.organisms import summary_rows, validate
from auralens.probes.stage import stage_probe
from auralens.steering.stage_eval import stage_steer_eval
from auralens.steering.stage_fit import stage_steer_fit


def _table(title: str, columns: list[str], rows: list[list]) -> None:

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r])
    console = Console()
    if not console.is_terminal:  # piped into a log: rich would fold the table into 80 columns
        console = Console(width=140)
    console.print(t)


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """What every demo stage shares: the model, the output folder and the run's sizes.

    ``fast``: a smoke run (shorter generations, 100 bootstrap resamples, smaller probe and
    steering fits); ``n_boot`` is the probes' and compare's resamples (the other stages keep
    their own default unless ``fast``, see :attr:`quick`); ``gen_tokens`` the generated tokens."""

    lm: Any
    out: Path
    n: int
    resume: bool
    command: str
    fast: bool

    @property
    def n_boot(self) -> int:
        return 100 if self.fast else 300

    @property
    def gen_tokens(self) -> int:
        return 48 if self.fast else 96

    @property
    def quick(self) -> dict[str, int]:
        """``n_boot`` for the stages that keep their own default outside a fast run."""
        return {"n_boot": self.n_boot} if self.fast else {}


def demo_eval(s: DemoSettings) -> dict:
    """Stage 1: accuracy per tier and format, with audio and with silence."""
    res = stage_eval(model="micro", data="cafe", n=s.n, out=s.out / "eval", resume=s.resume, command=s.command, lm=s.lm,
                     batch_size=32, **({"max_new_tokens": s.gen_tokens, "quiet": True} if s.fast else {}))
    acc = res["accuracy"]
    rows = []
    for fmt in ("direct", "cot", "structured", "all_formats"):
        r = acc["real"].get(fmt, {})
        sil = acc.get("silence", {}).get(fmt, {})
        rows.append([fmt, r.get("perception", float("nan")), r.get("temporal", float("nan")),
                     r.get("multihop", float("nan")), sil.get("all", float("nan"))])
    _table(f"micro on cafe (n={s.n}): accuracy with audio, and with silence", ["format", "perception", "temporal", "multihop", "silence (all)"], rows)
    return res


def demo_record(s: DemoSettings) -> dict:
    """Stage 2: perception decay (per-head audio yield across reasoning steps)."""
    rec = stage_record(model="micro", data="cafe", n=s.n, fmt="cot", out=s.out / "record", resume=s.resume, lm=s.lm,
                       batch_size=30, max_new_tokens=s.gen_tokens, top_k=4, quiet=s.fast, **s.quick)
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
    return rec


def demo_probe(s: DemoSettings) -> dict:
    """Stage 3: probes (where audio attributes live, by layer and step)."""
    pr = stage_probe(model="micro", data="cafe", n=max(s.n, 24) if s.fast else s.n, out=s.out / "probe", resume=s.resume,
                     lm=s.lm, seed=7, quiet=True, n_bootstrap=s.n_boot,
                     **({"n_folds": 3, "max_new_tokens": s.gen_tokens} if s.fast else {}))
    rows = []
    for attr, d in (pr.get("attributes") or {}).items():
        b = d["best"]
        dec = d.get("decay") or {}
        falls = {True: "falls", False: "holds", None: "-"}[dec.get("falls")]
        rows.append([attr, b["layer"], b["position"], b["accuracy"], b["control_accuracy"], b["selectivity"], falls])
    if rows:
        _table("probes on micro: best layer per attribute", ["attribute", "layer", "position", "accuracy", "control", "selectivity", "over steps"], rows)
    return pr


def demo_steer(s: DemoSettings) -> dict:
    """Stage 4: audio-minus-silence steering, against controls."""

    # the vector is the steer stage's input: beside the run folders, not inside one (a stage
    # folder holds only what its stage wrote, and the dashboard finds it at <out>/steer)
    vec_path = s.out / "vectors" / "audio_minus_silence.safetensors"
    stage_steer_fit(model="micro", data="cafe", n=16 if s.fast else 48, layers=None, positions="last_prompt",
                    out_vector=vec_path, seed=11, lm=s.lm)
    st = stage_steer_eval(model="micro", data="cafe", n=s.n, vector=vec_path, betas=[0.0, 1.0, 2.0, 4.0], out=s.out / "steer",
                          resume=s.resume, seed=7, formats=("direct",), lm=s.lm, quiet=True, batch_size=30, **s.quick)
    b = st["best"]
    ctrl = "; ".join(f"{k}: {v.get('delta', float('nan')):+.3f}" for k, v in (b.get("controls") or {}).items()
                     if isinstance(v, dict))
    Console().print(
        f"steering (layer {b['layer']}, beta {b['beta']}, {b['positions']}): accuracy {b['baseline_accuracy']:.3f} -> "
        f"{b['accuracy']:.3f}, gain {b['delta']:+.3f} (95% CI [{b['delta_ci'][0]:+.3f}, {b['delta_ci'][1]:+.3f}], "
        f"n={b['n']}; {b.get('selection', 'chosen on these items, optimistic')}); controls at the same setting: "
        f"{ctrl or 'n/a'}"
    )
    return st

def demo_compare(s: DemoSettings, org: str) -> dict:
    """Stage 5: steering vs fine-tuning (MPAR²- and HyPeR-style) on organism ``org``."""

    cmp = stage_compare(base=org, data="cafe-neutral:test,cafe-conflict:test", n=s.n, out=s.out / "compare",
                        resume=s.resume, seed=7, quiet=True, batch_size=30, max_new_tokens=s.gen_tokens, top_k=4,
                        n_boot=s.n_boot, n_cal=16 if s.fast else 32, n_dev=16 if s.fast else 32, betas=(0.0, 2.0, 4.0))
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
    _table(f"steering vs fine-tuning on {org} (held-out test items, n={s.n} per condition; measured)",
           ["system", "format", "neutral", "gain", "conflict", "gain", "fwd/item", "train min"], rows)
    Console().print(f"reported in the papers (not measured here; other models and benchmarks): {reported_summary()}")
    return cmp


def demo_organisms(s: DemoSettings, have: list[str]) -> dict:
    """Stage 6: the toolkit against the model organisms ``have`` (planted deficits) and healthy micro."""
    k = 12 if s.fast else s.n
    org = validate(organisms=("micro", *have), n=k, n_cal=k, probes=not s.fast, keep=s.out / "organisms",
                   resume=s.resume, min_claims=2 if s.fast else 20)
    _table(f"what the toolkit finds: healthy micro vs the organisms (held-out items, n={k}; "
           "full checks: `auralens organisms validate`)",
           ["model", "conflict gap (neutral − conflict)", "listening heads recovered", "decay onset (yield / claims)",
            "claims before − after k"], summary_rows(org))
    return org


def demo_smol(s: DemoSettings) -> dict | None:
    """A short `smol-audio` section: the real-weights LALM (Whisper-base + SmolLM2-135M-Instruct +
    the trained projector) on cafe and on espeak-ng spoken items, with audio and with silence.
    Skipped, saying why, where a pretrained package, the trained parts or espeak-ng is missing."""
    try:
        check_parts()
    except ConfigError as exc:
        Console().print(f"smol-audio section skipped: {exc}")
        return None
    n = min(s.n, 40)
    data = s.out / "data" / "spoken"
    if shutil.which("espeak-ng") is None:
        Console().print("smol-audio spoken items skipped: espeak-ng is not installed (apt-get install espeak-ng)")
    elif not (data / "questions.jsonl").is_file():
        write_spoken_dataset(data, n, seed=1)
    lm = load_model(SMOL, device="cpu", dtype="float32")
    res = {"cafe": stage_eval(model=SMOL, data="cafe", n=n, formats=("direct",), out=s.out / "smol-eval-cafe",
                              resume=s.resume, command=s.command, lm=lm, batch_size=8, quiet=True)}
    if (data / "questions.jsonl").is_file():
        res["spoken"] = stage_eval(model=SMOL, data=str(data), n=n, formats=("direct",), out=s.out / "smol-eval-spoken",
                                   resume=s.resume, command=s.command, lm=lm, batch_size=8, quiet=True)
    rows = []
    for name, r in res.items():
        acc = r["accuracy"]
        rows.append([name, acc["real"]["direct"]["all"], acc.get("silence", {}).get("direct", {}).get("all", float("nan")),
                     r["chance"]["all"], r["extraction"]["real/direct"]["none"]])
    _table(f"smol-audio (real pretrained weights, trained projector), direct answers, n={n}",
           ["data", "with audio", "with silence", "chance", "unparsed answers"], rows)
    return res


def run_demo(*, out: Path, n: int = 60, resume: bool = False, command: str = "auralens demo", fast: bool = False) -> dict:
    """Run every stage on ``n`` items into ``out``; returns each stage's summary.

    ``fast``: a smoke run for tests (about a minute at ``n=6`` on one CPU thread): shorter
    generations, 100 bootstrap resamples, 3-fold probes on at least 24 items, the steering
    vector fitted on 16 items.  The numbers mean little; the folders have every table."""
    import torch

    torch.manual_seed(0)
    out = Path(out)
    t0 = time.time()
    s = DemoSettings(lm=load_model("micro"), out=out, n=n, resume=resume, command=command, fast=fast)
    results: dict = {"eval": demo_eval(s), "record": demo_record(s), "probe": demo_probe(s), "steer": demo_steer(s)}
    org = "micro-prior"  # the text-prior organism: conflict items are where listening is repaired or not
    if available(org):
        results["compare"] = demo_compare(s, org)
    else:
        Console().print(f"compare stage skipped: no {org} weights (run `auralens organisms train {org}`)")
    if not fast:  # assembling smol-audio takes about a minute once; the smoke run leaves it out
        results["smol-audio"] = demo_smol(s)
    have = [name for name in ORGANISMS if available(name)]
    if have:
        results["organisms"] = demo_organisms(s, have)
    else:
        Console().print("organisms stage skipped: no organism weights (run `auralens organisms train NAME`)")
    results["seconds"] = round(time.time() - t0, 1)
    Console().print(f"demo finished in {results['seconds']} s; run folders under {out}/")
    return results
