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
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    max_minutes: float = 19.0
    seed: int = 0
    data_seed: int = 1  # train items: cafe seeds data_seed*100000 + i (eval uses other seeds)
    format_weights: tuple[float, float, float] = (0.25, 0.25, 0.5)  # direct, cot, structured
    threads: int = 2

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


def train(out_dir: str | Path, cfg: TrainConfig = TrainConfig(), mcfg: MicroConfig = MicroConfig(), progress=True):
    import torch

    from interp.cafe.questions import make_item

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    processor = build_processor(mcfg)
    model = build_model(processor, mcfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))

    t0 = time.time()
    losses = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, desc="micro train", unit="step")
    next_item = 0
    step = 0
    for step in range(cfg.steps):
        items = [make_item(cfg.data_seed * 100_000 + next_item + i) for i in range(cfg.batch_size)]
        next_item += cfg.batch_size
        fmts = list(rng.choice(FORMATS, size=cfg.batch_size, p=np.array(cfg.format_weights) / sum(cfg.format_weights)))
        batch, labels = make_batch(processor, items, fmts)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(**batch, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if (time.time() - t0) / 60 > cfg.max_minutes:
            break
    if bar is not None:
        bar.close()
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "training.json").write_text(
        json.dumps(
            {
                "train_config": asdict(cfg),
                "micro_config": asdict(mcfg),
                "steps_done": step + 1,
                "items_seen": next_item,
                "minutes": round((time.time() - t0) / 60, 2),
                "final_loss": float(np.mean(losses[-50:])),
                "loss_every_50": [round(float(np.mean(losses[i : i + 50])), 4) for i in range(0, len(losses), 50)],
            },
            indent=2,
        )
    )
    return model, processor
