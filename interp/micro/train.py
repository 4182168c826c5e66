"""Train `micro` on cafe in all three answer formats (seeded, 2 CPU cores, <= 20 minutes).

Plain teacher-forced next-token training on (audio, question) -> answer text, loss on the
answer tokens only.  Written by hand because it is a dozen lines around ``model(...).loss``;
the model, processor and optimiser are the real transformers / torch ones.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from interp.cafe.formats import FORMATS, render_target
from interp.micro.build import MicroConfig, build_model, build_processor


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    max_minutes: float = 19.0
    seed: int = 0
    data_seed: int = 1  # train items: cafe seeds data_seed*100000 + i (eval uses other seeds)
    format_weights: tuple[float, float, float] = (0.3, 0.3, 0.4)  # direct, cot, structured
    threads: int = 2
    save_every: int = 250  # checkpoint (weights + optimizer) every N steps; resume continues from it

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.max_minutes <= 0:
            raise ValueError(f"invalid TrainConfig: {self}")
        if len(self.format_weights) != len(FORMATS) or min(self.format_weights) < 0:
            raise ValueError(f"format_weights: expected {len(FORMATS)} non-negative weights, found {self.format_weights}")


def make_batch(processor, items, formats, *, with_targets: bool = True):
    """Tokenise prompts (+ targets) and featurise the audio exactly as inference does."""
    import torch

    from interp.prompts import build_inputs

    targets = [render_target(it, f) for it, f in zip(items, formats)] if with_targets else None
    batch = build_inputs(processor, items, formats, targets=targets)
    if not with_targets:
        return batch, None
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    # mask everything up to and including the assistant header: loss on the answer only
    start_id = processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    for r in range(labels.shape[0]):
        starts = (batch["input_ids"][r] == start_id).nonzero().flatten()
        last = int(starts[-1]) + 2  # "<|im_start|> assistant \n"
        labels[r, : last + 1] = -100
    return batch, torch.as_tensor(labels)


def _save(out_dir: Path, model, processor, opt, info: dict) -> None:
    """Checkpoint: weights (safetensors), processor, optimizer state and progress, each written
    to a temporary folder that replaces the previous checkpoint only when complete."""
    import shutil

    import torch

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    # optimizer moments: a torch file is unavoidable here; it is read back with weights_only=True
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "training.json").write_text(json.dumps(info, indent=2))
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def finalize(out_dir: str | Path) -> None:
    """Drop the optimizer state from a finished checkpoint (what gets committed)."""
    p = Path(out_dir) / "optimizer.pt"
    if p.exists():
        p.unlink()


def train(out_dir: str | Path, cfg: TrainConfig = TrainConfig(), mcfg: MicroConfig = MicroConfig(), progress=True,
          resume: bool = False):
    import torch

    from interp.cafe.questions import make_item

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    processor = build_processor(mcfg)
    model = build_model(processor, mcfg)
    start, losses, minutes_before, history = 0, [], 0.0, []
    resuming = resume and (out_dir / "optimizer.pt").exists()
    if resuming:
        # from_pretrained maps the checkpoint's saved key names back onto the module tree
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        model = type(model).from_pretrained(out_dir, dtype=torch.float32)
        for n, p in model.named_parameters():  # loading does not keep requires_grad_(False)
            p.requires_grad_(n not in frozen)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    if resuming:
        info = json.loads((out_dir / "training.json").read_text())
        # knobs that may change between sessions; `steps` may grow: the cosine schedule is then
        # laid over the new total from the step reached (a warm restart, recorded in "history")
        runtime = {"max_minutes", "threads", "save_every", "steps"}
        old_cfg = {k: v for k, v in info.get("train_config", {}).items() if k not in runtime}
        new_cfg = {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items() if k not in runtime}
        if old_cfg != new_cfg or cfg.steps < info["steps_done"]:
            raise ValueError(
                f"--resume: {out_dir} was trained with {old_cfg} for {info['steps_done']} steps; "
                f"this run asks for {new_cfg} and {cfg.steps} steps"
            )
        history = info.get("history", []) + [{"resumed_at_step": info["steps_done"], "steps": cfg.steps}]
        opt.load_state_dict(torch.load(out_dir / "optimizer.pt", weights_only=True))
        start, losses, minutes_before = info["steps_done"], info.get("losses", []), info.get("minutes", 0.0)
    model.train()
    rng = np.random.default_rng([cfg.seed, 0])
    fmt_p = np.array(cfg.format_weights) / sum(cfg.format_weights)
    for _ in range(start):  # fast-forward the format stream so a resumed run draws what an unbroken one would
        rng.choice(FORMATS, size=cfg.batch_size, p=fmt_p)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))

    t0 = time.time()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="micro train", unit="step")

    def info(step_done: int) -> dict:
        return {
            "train_config": asdict(cfg),
            "micro_config": asdict(mcfg),
            "steps_done": step_done,
            "items_seen": step_done * cfg.batch_size,
            "minutes": round(minutes_before + (time.time() - t0) / 60, 2),
            "final_loss": float(np.mean(losses[-50:])) if losses else None,
            "loss_every_50": [round(float(np.mean(losses[i : i + 50])), 4) for i in range(0, len(losses), 50)],
            "losses": [round(x, 5) for x in losses],
            "history": history,
        }

    step = start
    for step in range(start, cfg.steps):
        base = step * cfg.batch_size
        items = [make_item(cfg.data_seed * 100_000 + base + i) for i in range(cfg.batch_size)]
        fmts = list(rng.choice(FORMATS, size=cfg.batch_size, p=fmt_p))
        batch, labels = make_batch(processor, items, fmts)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(**batch, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            model.eval()
            _save(out_dir, model, processor, opt, info(step + 1))
            model.train()
        if minutes_before + (time.time() - t0) / 60 > cfg.max_minutes:
            break
    if bar is not None:
        bar.close()
    model.eval()
    _save(out_dir, model, processor, opt, info(step + 1))
    return model, processor
