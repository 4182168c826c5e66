"""Align `smol-audio`: train its projector and audio-token embedding rows, everything pretrained frozen.

Cheap on 2 CPU cores because (1) the Whisper encoder is frozen, so its outputs are computed once
per training item and cached (through the model's own audio path: a hook on the projector's
input stops the forward there), (2) the loss is taken on the answer tokens only and the 49k-row
``lm_head`` is applied to those positions alone, (3) bf16 autocast where it is faster on this CPU
(``--bf16``, measured: see the README).  The training forward is the model's own merge (audio
features scattered into the ``<|AUDIO|>`` positions of the input embeddings), checked in the
tests against ``model(...)``'s logits.  Seeded, checkpointed every ``save_every`` steps (no
pickle), resumable with ``--resume``; knobs and history in ``training.json``.
Written by hand: a projector-only loop over cached features is a few dozen lines and no
trainer library caches a frozen encoder's outputs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from auralens.interp.cafe.formats import render_target
from auralens.interp.cafe.questions import make_item
from auralens.interp.datasets import load_dataset
from auralens.interp.errors import ConfigError
from auralens.interp.micro.train import has_optimizer, load_optimizer, save_optimizer
from auralens.interp.prompts import build_inputs
from auralens.interp.smol.assemble import AUDIO_TOKENS, assemble, cache_dir
from auralens.interp.spoken import write_spoken_dataset

__all__ = ["AlignConfig", "audio_features", "encode_items", "forward_loss", "train_alignment"]

#: cafe training items are cafe seeds CAFE_BASE + i (eval's plain cafe uses data seed*100000 + i with
#: small data seeds; the cue splits start at 9,000,000): disjoint from every evaluated item
CAFE_BASE = 5_000_000
SPOKEN_SEED = 500  # the training folder's spoken items are drawn from this seed (eval folders use others)


@dataclass(frozen=True, kw_only=True)
class AlignConfig:
    steps: int = 1200
    batch_size: int = 8
    lr: float = 2e-3
    warmup: int = 50
    n_cafe: int = 3000
    n_spoken: int = 3000
    seed: int = 0
    bf16: bool = True
    threads: int = 2
    save_every: int = 100
    max_minutes: float = 60.0

    def __post_init__(self) -> None:
        for k in ("steps", "batch_size", "n_cafe", "n_spoken", "save_every", "threads"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < (0 if k.startswith("n_") else 1):
                raise ConfigError(f"--{k.replace('_', '-')}: expected a positive integer, found {v!r}")
        if not self.lr > 0 or not self.max_minutes > 0:
            raise ConfigError(f"--lr/--max-minutes: expected positive numbers, found {self.lr!r}, {self.max_minutes!r}")
        if self.n_cafe + self.n_spoken < self.batch_size:
            raise ConfigError(f"--n-cafe + --n-spoken: expected at least one batch ({self.batch_size}), found "
                              f"{self.n_cafe + self.n_spoken}")


class _Stop(Exception):
    pass


def audio_features(model, batch) -> list:
    """The projector's inputs (one ``[n_audio_tokens, 512]`` tensor per row) through the model's own
    audio path: the forward is stopped by a hook at the projector's input, so the LM never runs."""
    import torch

    got: dict = {}

    def hook(_module, args):
        got["x"] = args[0].detach()
        raise _Stop

    handle = model.model.multi_modal_projector.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        input_features=batch["input_features"], feature_attention_mask=batch["feature_attention_mask"])
    except _Stop:
        pass
    finally:
        handle.remove()
    lengths = model.model.audio_tower._get_feat_extract_output_lengths(batch["feature_attention_mask"].sum(-1))[1]
    return [got["x"][i, : int(n)].clone() for i, n in enumerate(lengths)]


def _items(cfg: AlignConfig, spoken_dir: Path):
    cafe = [make_item(CAFE_BASE + i) for i in range(cfg.n_cafe)]
    spoken = load_dataset(str(spoken_dir)) if cfg.n_spoken else []
    return cafe + spoken[: cfg.n_spoken]


def encode_items(model, processor, items, batch_size: int = 16, *, feature_dtype=None):
    """Per item: (input ids with the answer appended, answer mask, cached audio features, kept in
    ``feature_dtype``: bfloat16 by default, the autocast dtype of training)."""
    import torch

    rows = []
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        targets = [render_target(it, "direct") for it in chunk]
        full = build_inputs(processor, chunk, "direct", targets=targets)
        prompt = build_inputs(processor, chunk, "direct")
        feats = audio_features(model, full)
        for i in range(len(chunk)):
            ids = full["input_ids"][i][full["attention_mask"][i].bool()]
            n_prompt = int(prompt["attention_mask"][i].sum())
            mask = torch.zeros(len(ids), dtype=torch.bool)
            mask[n_prompt:] = True
            rows.append((ids, mask, feats[i].to(feature_dtype or torch.bfloat16)))
    return rows


def forward_loss(model, proj, rows, audio_rows, n_base: int, audio_id: int, bf16: bool):
    """Answer-token cross-entropy of a batch of encoded rows (left-padded here)."""
    import torch
    import torch.nn.functional as F

    lm = model.model.language_model
    width = max(len(r[0]) for r in rows)
    pad = int(model.generation_config.pad_token_id or 0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    tgt = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (r_ids, r_mask, _) in enumerate(rows):
        ids[i, width - len(r_ids):] = r_ids
        att[i, width - len(r_ids):] = 1
        tgt[i, width - len(r_ids):] = r_mask
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        emb = lm.embed_tokens(ids.clamp(max=n_base - 1))
        new = ids >= n_base
        emb = torch.where(new[..., None], audio_rows[(ids - n_base).clamp(min=0)].to(emb.dtype), emb)
        feats = proj(torch.cat([r[2] for r in rows]).float())
        emb = emb.masked_scatter((ids == audio_id)[..., None].expand_as(emb), feats.to(emb.dtype))
        h = lm(inputs_embeds=emb, attention_mask=att).last_hidden_state
        # position t predicts token t+1: the answer tokens' predictions sit one to the left
        pred = torch.zeros_like(tgt)
        pred[:, :-1] = tgt[:, 1:]
        logits = model.lm_head(h[pred])
        loss = F.cross_entropy(logits.float(), ids[tgt])
    return loss


def train_alignment(out: str | Path, cfg: AlignConfig = AlignConfig(), *, resume: bool = False,
                    spoken_dir: str | Path | None = None, log=print) -> dict:
    """Train the projector and audio rows into ``out`` (``trained.safetensors`` + ``training.json``)."""
    import torch
    from safetensors.torch import load_file, save_file

    out = Path(out)
    info_path = out / "training.json"
    if resume and info_path.is_file():
        old = json.loads(info_path.read_text())
        if old.get("config") != asdict(cfg):
            raise ConfigError(f"--resume: {out} was trained with {old.get('config')}; this run asks for {asdict(cfg)}")
        if not has_optimizer(out):
            raise ConfigError(f"--resume: {out} holds a finished run; train into a new folder")
    elif out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"--out {out}: expected an empty or new folder, found files; pass --resume to continue")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    spoken_dir = Path(spoken_dir or cache_dir() / f"spoken-train-{SPOKEN_SEED}-{cfg.n_spoken}")
    if cfg.n_spoken and not (spoken_dir / "questions.jsonl").is_file():
        write_spoken_dataset(spoken_dir, cfg.n_spoken, seed=SPOKEN_SEED)
    model, processor = assemble(seed=cfg.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    tok = processor.tokenizer
    n_base = len(tok) - len(AUDIO_TOKENS)
    audio_id = int(model.config.audio_token_id)
    proj = model.model.multi_modal_projector
    for p in proj.parameters():
        p.requires_grad_(True)
    audio_rows = torch.nn.Parameter(model.model.language_model.embed_tokens.weight[n_base:].detach().clone())
    items = _items(cfg, spoken_dir)
    log(f"encoding {len(items)} items (frozen encoder, cached)")
    rows = encode_items(model, processor, items)
    t_cache = time.time() - t0
    log(f"cached in {t_cache:.0f} s")
    params = list(proj.parameters()) + [audio_rows]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    start, history = 0, []
    out.mkdir(parents=True, exist_ok=True)
    if resume and has_optimizer(out):
        state = load_file(str(out / "trained.safetensors"))
        proj.load_state_dict({k.removeprefix("multi_modal_projector."): v for k, v in state.items()
                              if k.startswith("multi_modal_projector.")})
        audio_rows.data.copy_(state["audio_rows"])
        load_optimizer(out, opt, rng=rng)
        info = json.loads(info_path.read_text())
        start, history = info["steps_done"], info["history"]
        log(f"resumed at step {start}")

    def save(step: int, done: bool) -> None:
        tensors = {f"multi_modal_projector.{k}": v.detach().contiguous() for k, v in proj.state_dict().items()}
        tensors["audio_rows"] = audio_rows.detach().clone().contiguous()
        tmp = out / "trained.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(out / "trained.safetensors")
        if not done:
            save_optimizer(out, opt, rng=rng)
        info = {"model": "smol-audio", "command": "auralens smol train", "config": asdict(cfg), "steps_done": step,
                "finished": done, "history": history, "items": {"cafe_seeds": [CAFE_BASE, CAFE_BASE + cfg.n_cafe],
                                                                 "spoken_seed": SPOKEN_SEED, "n_spoken": cfg.n_spoken},
                "trainable": "multi_modal_projector + 3 audio-token embedding rows; all pretrained weights frozen",
                "cache_seconds": round(t_cache, 1), "wall_seconds": round(time.time() - t0, 1)}
        tmpj = out / "training.json.tmp"
        tmpj.write_text(json.dumps(info, indent=1) + "\n")
        tmpj.replace(info_path)
        if done:
            for name in ("optimizer.safetensors", "optimizer.json"):
                (out / name).unlink(missing_ok=True)

    order = rng.permutation(len(rows))
    losses: list[float] = []
    step = start
    for step in range(start, cfg.steps):
        if (time.time() - t0) / 60 > cfg.max_minutes:
            log(f"stopping at step {step}: --max-minutes {cfg.max_minutes} reached")
            break
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = [order[(step * cfg.batch_size + j) % len(rows)] for j in range(cfg.batch_size)]
        loss = forward_loss(model, proj, [rows[i] for i in idx], audio_rows, n_base, audio_id, cfg.bf16)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss))
        if (step + 1) % 20 == 0:
            history.append({"step": step + 1, "loss": round(float(np.mean(losses[-20:])), 4),
                            "minutes": round((time.time() - t0) / 60, 2)})
            log(f"step {step + 1} loss {np.mean(losses[-20:]):.4f} lr {lr:.2e} {(time.time() - t0) / 60:.1f} min")
        if (step + 1) % cfg.save_every == 0:
            save(step + 1, False)
    else:
        step = cfg.steps
    save(step if step < cfg.steps else cfg.steps, True)
    return json.loads(info_path.read_text())
