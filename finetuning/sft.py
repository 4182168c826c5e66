"""Phase 1 of :mod:`finetuning`: supervised fine-tuning on structured traces, on TRL's
:class:`trl.SFTTrainer` (``skip_prepare_dataset``, our collator = ``make_batch``, which returns
``input_features`` / ``feature_attention_mask`` that the Trainer passes straight to
``model(**batch)``).  The Trainer's own checkpoints (pickles) are never written."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from auralens.finetuning.config import SEED_BLOCK, FinetuneConfig
from auralens.finetuning.items import train_item
from auralens.interp.micro.train import make_batch

__all__ = ["run_sft"]


def run_sft(lm, cfg: FinetuneConfig, *, work_dir: Path, max_minutes: float, progress: bool = True) -> dict[str, Any]:
    """Phase 1 on TRL's SFTTrainer: structured traces of ``sft_steps * sft_batch_size`` fresh cafe
    items, batches from :func:`auralens.interp.micro.train.make_batch`.  Trains ``lm.model`` in place."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    n_items = cfg.sft_steps * cfg.sft_batch_size
    seeds = [cfg.data_seed * SEED_BLOCK + i for i in range(n_items)]
    tokens = {"n": 0}

    def collate(rows):
        items = [train_item(cfg, int(r["seed"])) for r in rows]
        batch, labels = make_batch(lm.processor, items, ["structured"] * len(items))
        tokens["n"] += int(batch["attention_mask"].sum())
        return {**batch, "labels": labels}

    t0 = time.time()
    last = {"t": t0}

    class Deadline(TrainerCallback):
        """Stop when the next step (as long as the last one) would end past ``max_minutes``: on a
        model whose steps take tens of seconds (smol-audio) the cap holds to within a step."""

        def on_step_end(self, args, state, control, **kw):
            now = time.time()
            step_s, last["t"] = now - last["t"], now
            if (now - t0 + step_s) / 60 > max_minutes:
                control.should_training_stop = True
            return control

    on_cpu = lm.device.type == "cpu"
    args = SFTConfig(
        output_dir=str(work_dir / "trl"), max_steps=cfg.sft_steps, per_device_train_batch_size=cfg.sft_batch_size,
        learning_rate=cfg.lr, lr_scheduler_type="cosine", warmup_steps=max(1, cfg.sft_steps // 20),
        weight_decay=0.0, max_grad_norm=1.0, seed=cfg.seed, data_seed=cfg.seed,
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False, report_to=[],
        use_cpu=on_cpu, save_strategy="no", logging_steps=1, dataloader_num_workers=0, disable_tqdm=not progress,
        bf16=(not on_cpu and cfg.dtype == "bfloat16"), fp16=False, activation_checkpointing=False,
    )
    trainer = SFTTrainer(model=lm.model, args=args, train_dataset=Dataset.from_dict({"seed": seeds}),
                         data_collator=collate, processing_class=lm.processor, callbacks=[Deadline()])
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # the per-step log lines
    use_cache = lm.model.config.get_text_config().use_cache
    trainer.train()
    shutil.rmtree(work_dir / "trl", ignore_errors=True)
    # The Trainer (accelerate's prepare) leaves a wrapped ``forward`` in the instance's __dict__,
    # bound to this instance: a deepcopy of the model (GRPO's reference) would keep calling
    # *this* model's forward, and the KL to the reference would be identically zero.
    lm.model.__dict__.pop("forward", None)
    if getattr(lm.model, "is_activation_checkpointing", False):
        lm.model.activation_checkpointing_disable()
    lm.model.config.get_text_config().use_cache = use_cache
    lm.model.eval()
    torch.set_num_threads(cfg.threads)  # the Trainer may change it
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    return {"steps": int(trainer.state.global_step), "losses": [round(x, 5) for x in losses],
            "tokens": tokens["n"], "minutes": round((time.time() - t0) / 60, 3)}
