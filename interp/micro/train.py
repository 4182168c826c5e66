"""Train `micro` on cafe in all three answer formats (seeded, 2 CPU cores, <= 20 minutes).

Plain teacher-forced next-token training on (audio, question) -> answer text, loss on the
answer tokens only.  Written by hand because it is a dozen lines around ``model(...).loss``;
the model, processor and optimiser are the real transformers / torch ones.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from auralens.interp.cafe.formats import FORMATS, render_target
from auralens.interp.cafe.questions import make_item
from auralens.interp.errors import ConfigError
from auralens.interp.micro.build import MicroConfig, build_model, build_processor
from auralens.interp.prompts import build_inputs


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
    save_every: int = 250  # checkpoint (weights + optimizer + RNG, no pickle) every N steps; resume continues from it

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.max_minutes <= 0:
            raise ConfigError(
                f"TrainConfig: expected steps, batch_size >= 1 and lr, max_minutes > 0, found steps={self.steps}, "
                f"batch_size={self.batch_size}, lr={self.lr}, max_minutes={self.max_minutes}"
            )
        if len(self.format_weights) != len(FORMATS) or min(self.format_weights) < 0:
            raise ConfigError(f"format_weights: expected {len(FORMATS)} non-negative weights, found {self.format_weights}")


def make_batch(processor, items, formats, *, with_targets: bool = True, render=render_target):
    """Tokenise prompts (+ targets, ``render(item, fmt)``) and featurise the audio exactly as
    inference does."""
    import torch


    targets = [render(it, f) for it, f in zip(items, formats)] if with_targets else None
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


# ------------------------------------------------------------------ pickle-free resume state
OPT_TENSORS = "optimizer.safetensors"  # optimizer state tensors (+ the torch CPU RNG state)
OPT_JSON = "optimizer.json"  # optimizer structure: param groups, non-tensor state, numpy RNG state
_LEGACY_OPT = "optimizer.pt"  # written by older versions (torch.save); read only with weights_only=True


def _jsonable(value, where: str):
    """``value`` as JSON (tuples tagged so they come back as tuples), or a ValueError: an
    optimizer whose state cannot be written without pickle is refused, not pickled."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_jsonable(v, where) for v in value]}
    if isinstance(value, list):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _jsonable(v, where) for k, v in value.items()}
    raise ValueError(f"optimizer state {where}: expected tensors or JSON values, found {type(value).__name__}")


def _unjson(value):
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_unjson(v) for v in value["__tuple__"])
        return {k: _unjson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unjson(v) for v in value]
    return value


def save_optimizer(folder: str | Path, opt, *, rng: np.random.Generator | None = None, torch_rng: bool = True) -> None:
    """Write ``opt.state_dict()`` without pickle: every tensor into ``optimizer.safetensors``,
    everything else (param groups, scalar state) into ``optimizer.json``.  Also the torch CPU RNG
    state (a uint8 tensor, in the safetensors file) and ``rng``'s numpy bit-generator state (JSON)."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_json: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                # clone: safetensors refuses tensors that share storage
                tensors[f"state.{pid}.{k}"] = v.detach().cpu().clone().contiguous()
            else:
                state_json.setdefault(str(pid), {})[k] = _jsonable(v, f"{pid}.{k}")
    groups = []
    for i, g in enumerate(sd["param_groups"]):
        row = {}
        for k, v in g.items():
            if torch.is_tensor(v):  # e.g. a tensor learning rate
                tensors[f"group.{i}.{k}"] = v.detach().cpu().clone().contiguous()
            else:
                row[k] = _jsonable(v, f"param_groups[{i}].{k}")
        groups.append(row)
    if torch_rng:
        tensors["rng.torch_cpu"] = torch.get_rng_state()
    meta = {"format": "auralens-optimizer/1", "optimizer": type(opt).__name__, "param_groups": groups,
            "state": state_json, "numpy_rng": _jsonable(rng.bit_generator.state, "numpy_rng") if rng is not None else None}
    save_file(tensors, str(folder / OPT_TENSORS))
    (folder / OPT_JSON).write_text(json.dumps(meta, indent=1))


def has_optimizer(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / OPT_TENSORS).exists() or (folder / _LEGACY_OPT).exists()


def load_optimizer(folder: str | Path, opt, *, rng: np.random.Generator | None = None) -> bool:
    """Restore what :func:`save_optimizer` wrote into ``opt`` (and the torch CPU RNG and ``rng``
    when they were saved).  Returns whether ``rng``'s state was restored (False for a legacy file)."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / OPT_JSON).exists() and (folder / _LEGACY_OPT).exists():
        # A checkpoint from before the safetensors format: torch.save'd state dict.  Read only
        # through torch's restricted unpickler (weights_only=True: tensors and plain containers,
        # never arbitrary objects).  The next save rewrites it as safetensors + JSON.
        opt.load_state_dict(torch.load(folder / _LEGACY_OPT, weights_only=True))
        return False
    tensors = load_file(str(folder / OPT_TENSORS))
    if not (folder / OPT_JSON).exists():
        # finetune's earlier GRPO checkpoints: state tensors only, keyed "<param id>.<name>";
        # the param groups are the current optimizer's
        state_only: dict[int, dict] = {}
        for key, v in tensors.items():
            pid, k = key.split(".", 1)
            state_only.setdefault(int(pid), {})[k] = v
        opt.load_state_dict({"state": state_only, "param_groups": opt.state_dict()["param_groups"]})
        return False
    meta = json.loads((folder / OPT_JSON).read_text())
    if meta.get("optimizer") != type(opt).__name__:
        raise ValueError(f"{folder / OPT_JSON}: expected {type(opt).__name__} state, found {meta.get('optimizer')}")
    groups = [_unjson(g) for g in meta["param_groups"]]
    state: dict[int, dict] = {int(pid): _unjson(st) for pid, st in meta["state"].items()}
    for key, v in tensors.items():
        kind, rest = key.split(".", 1)
        if kind == "state":
            pid, k = rest.split(".", 1)
            state.setdefault(int(pid), {})[k] = v
        elif kind == "group":
            i, k = rest.split(".", 1)
            groups[int(i)][k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})
    if "rng.torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng.torch_cpu"])
    if rng is not None and meta.get("numpy_rng") is not None:
        rng.bit_generator.state = _unjson(meta["numpy_rng"])
        return True
    return False


def save_checkpoint(folder: str | Path, model, processor, *, json_files: dict, opt=None,
                    rng: np.random.Generator | None = None) -> None:
    """Checkpoint: weights (safetensors), processor, JSON files and, with ``opt``, the optimizer
    state (safetensors + JSON, see :func:`save_optimizer`; with ``rng``, its state too), written
    to a temporary folder that replaces ``folder`` only when complete.  Nothing is pickled."""

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    if opt is not None:
        save_optimizer(tmp, opt, rng=rng)
    for name, obj in json_files.items():
        (tmp / name).write_text(json.dumps(obj, indent=2, default=str))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _save(out_dir: Path, model, processor, opt, info: dict, rng: np.random.Generator | None = None) -> None:
    """A training checkpoint (see :func:`save_checkpoint`) with ``training.json``."""
    save_checkpoint(out_dir, model, processor, json_files={"training.json": info}, opt=opt, rng=rng)


def finalize(out_dir: str | Path) -> None:
    """Drop the optimizer / RNG resume state from a finished checkpoint (what gets committed)."""
    for name in (OPT_TENSORS, OPT_JSON, _LEGACY_OPT):
        p = Path(out_dir) / name
        if p.exists():
            p.unlink()


@dataclass
class _RunState:
    """Where a run stands: the step it starts from, its per-step losses so far, the minutes its
    earlier sessions trained and its resume history (all empty for a fresh run)."""

    start: int = 0
    losses: list = field(default_factory=list)
    minutes_before: float = 0.0
    history: list = field(default_factory=list)


def _initial_model(mcfg: MicroConfig, init_from: str | Path | None):
    """``(model, processor)``: the checkpoint ``init_from`` (float32), or a fresh `micro` built
    from ``mcfg``."""
    import torch

    if init_from is not None:
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        processor = AutoProcessor.from_pretrained(init_from)
        model = Qwen2AudioForConditionalGeneration.from_pretrained(init_from, dtype=torch.float32)
    else:
        processor = build_processor(mcfg)
        model = build_model(processor, mcfg)
    return model, processor


def _cafe_items(data_seed: int) -> Callable[[int, int], list]:
    """The plain training items: ``batch_items(first, n)`` -> cafe items of seeds
    ``data_seed * 100000 + first + i``."""

    def batch_items(first: int, n: int) -> list:
        return [make_item(data_seed * 100_000 + first + i) for i in range(n)]

    return batch_items


def _is_resuming(out_dir: Path, resume: bool) -> bool:
    """Whether this run continues an interrupted one in ``out_dir`` (``resume`` and resume state
    there); a ConfigError for ``resume`` on a finished run."""
    resuming = resume and has_optimizer(out_dir)
    if resume and not resuming and (out_dir / "training.json").exists():
        raise ConfigError(
            f"--resume: {out_dir} holds a finished run (its resume state was dropped when it completed); "
            "expected an interrupted run; choose another --out to train again"
        )
    return resuming


def _reload_weights(model, out_dir: Path):
    """``out_dir``'s saved weights in ``model``'s class, with ``model``'s frozen parameters frozen."""
    import torch

    # from_pretrained maps the checkpoint's saved key names back onto the module tree
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    model = type(model).from_pretrained(out_dir, dtype=torch.float32)
    for n, p in model.named_parameters():  # loading does not keep requires_grad_(False)
        p.requires_grad_(n not in frozen)
    return model


def _resumed_state(out_dir: Path, cfg: TrainConfig, extra_info: dict | None) -> _RunState:
    """The interrupted run's state from its ``training.json``; a ConfigError where this run's
    config, organism knobs or step count do not continue it."""
    info = json.loads((out_dir / "training.json").read_text())
    # knobs that may change between sessions; `steps` may grow: the cosine schedule is then
    # laid over the new total from the step reached (a warm restart, recorded in "history")
    runtime = {"max_minutes", "threads", "save_every", "steps"}
    old_cfg = {k: v for k, v in info.get("train_config", {}).items() if k not in runtime}
    new_cfg = {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items() if k not in runtime}
    old_knobs, new_knobs = info.get("knobs"), json.loads(json.dumps((extra_info or {}).get("knobs")))
    if old_knobs != new_knobs:
        raise ConfigError(
            f"--resume: {out_dir} was trained with organism knobs {old_knobs}; this run asks for {new_knobs}"
        )
    if old_cfg != new_cfg or cfg.steps < info["steps_done"]:
        raise ConfigError(
            f"--resume: {out_dir} was trained with {old_cfg} for {info['steps_done']} steps; "
            f"this run asks for {new_cfg} and {cfg.steps} steps"
        )
    history = info.get("history", []) + [{"resumed_at_step": info["steps_done"], "steps": cfg.steps}]
    return _RunState(start=info["steps_done"], losses=info.get("losses", []),
                     minutes_before=info.get("minutes", 0.0), history=history)


def _format_stream(cfg: TrainConfig, out_dir: Path, opt, *, resuming: bool, start: int):
    """``(rng, fmt_p)``: the answer-format draws' generator and probabilities.  A resumed run
    also restores the saved optimizer state and RNG streams (torch's and the format draws'), so
    it draws what an unbroken one would; a legacy checkpoint without them fast-forwards the
    format stream by ``start`` steps."""
    rng = np.random.default_rng([cfg.seed, 0])
    fmt_p = np.array(cfg.format_weights) / sum(cfg.format_weights)
    if resuming and not load_optimizer(out_dir, opt, rng=rng):
        rng = np.random.default_rng([cfg.seed, 0])
        for _ in range(start):
            rng.choice(FORMATS, size=cfg.batch_size, p=fmt_p)
    return rng, fmt_p


def _lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup over ``cfg.warmup`` steps, then cosine decay to 5% of ``cfg.lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _train_step(model, processor, opt, items: list, fmts: list, *, lr: float, loss_fn: Callable | None,
                render: Callable) -> float:
    """One optimiser step at learning rate ``lr`` on ``items`` in answer formats ``fmts``
    (gradients clipped to norm 1); returns the loss."""
    import torch

    batch, labels = make_batch(processor, items, fmts, render=render)
    for g in opt.param_groups:
        g["lr"] = lr
    loss = model(**batch, labels=labels).loss if loss_fn is None else loss_fn(model, batch, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def _training_info(cfg: TrainConfig, mcfg: MicroConfig, state: _RunState, minutes: float, step_done: int,
                   extra_info: dict | None) -> dict:
    """``training.json``: the configs, progress after ``step_done`` steps (``minutes`` in all
    sessions), the losses and the resume history, with ``extra_info`` merged in."""
    losses = state.losses
    return {
        "train_config": asdict(cfg),
        "micro_config": asdict(mcfg),
        "steps_done": step_done,
        "items_seen": step_done * cfg.batch_size,
        "minutes": round(minutes, 2),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "loss_every_50": [round(float(np.mean(losses[i : i + 50])), 4) for i in range(0, len(losses), 50)],
        "losses": [round(x, 5) for x in losses],
        "history": state.history,
        **(extra_info or {}),
    }


def train(out_dir: str | Path, cfg: TrainConfig = TrainConfig(), mcfg: MicroConfig = MicroConfig(), progress=True,
          resume: bool = False, *, init_from: str | Path | None = None,
          batch_items: Callable[[int, int], list] | None = None, extra_info: dict | None = None,
          loss_fn: Callable | None = None, attn_implementation: str | None = None,
          render: Callable | None = None):
    """Train (or, with ``init_from``, continue training an existing checkpoint: the organisms
    start from the healthy `micro` and keep its tokenizer).  ``batch_items(first_index, n)``
    replaces the plain cafe items (it must be a pure function of its arguments, so a resumed run
    draws what an unbroken one would); ``extra_info`` is merged into ``training.json``;
    ``loss_fn(model, batch, labels)`` replaces the plain LM loss (e.g. adds an attention penalty,
    with ``attn_implementation="eager"`` so the attention weights exist); ``render(item, fmt)``
    replaces the reference target text."""
    import torch

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    model, processor = _initial_model(mcfg, init_from)
    if batch_items is None:
        batch_items = _cafe_items(cfg.data_seed)
    resuming = _is_resuming(out_dir, resume)
    if resuming:
        model = _reload_weights(model, out_dir)
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    state = _resumed_state(out_dir, cfg, extra_info) if resuming else _RunState()
    model.train()
    rng, fmt_p = _format_stream(cfg, out_dir, opt, resuming=resuming, start=state.start)

    t0 = time.time()
    bar = tqdm(total=cfg.steps, initial=state.start, desc="micro train", unit="step") if progress else None

    def minutes() -> float:
        return state.minutes_before + (time.time() - t0) / 60

    def info(step_done: int) -> dict:
        return _training_info(cfg, mcfg, state, minutes(), step_done, extra_info)

    step = state.start
    for step in range(state.start, cfg.steps):
        items = batch_items(step * cfg.batch_size, cfg.batch_size)
        fmts = list(rng.choice(FORMATS, size=cfg.batch_size, p=fmt_p))
        state.losses.append(_train_step(model, processor, opt, items, fmts, lr=_lr_at(cfg, step), loss_fn=loss_fn,
                                        render=render or render_target))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(state.losses[-20:]):.3f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            model.eval()
            _save(out_dir, model, processor, opt, info(step + 1), rng)
            model.train()
        if minutes() > cfg.max_minutes:
            break
    if bar is not None:
        bar.close()
    model.eval()
    _save(out_dir, model, processor, opt, info(step + 1), rng)
    return model, processor
