"""finetuning — the MPAR²-style recipe: SFT on perception → reasoning → review traces, then GRPO.

The recipe of Mao et al. (MPAR², arXiv 2603.02266; their code is not public), re-implemented
for any model :func:`auralens.interp.loading.load_model` can load, and sized so the default run on the
embedded ``micro`` fits in 30 minutes on 2 CPU cores::

    from auralens.finetuning.config import FinetuneConfig
    from auralens.finetuning.recipe import finetune

    info = finetune("micro", "interp/micro/weights/mpar2", FinetuneConfig())   # `auralens micro finetune`

1. **SFT** (``sft_steps`` steps of ``sft_batch_size``): teacher-forced next-token loss on the
   structured traces of fresh cafe items (``render_target(item, "structured")``: ``<perception>``
   one claim line per sound, ``<reasoning>``, ``<review>``, ``answer : X``), loss on the answer
   tokens only; the batches are built by :func:`auralens.interp.micro.train.make_batch`.
2. **GRPO** (``grpo_steps`` steps): per step ``grpo_prompts`` fresh cafe prompts, ``group_size``
   completions each sampled at ``temperature`` (full distribution: no top-k / top-p), each
   scored by :func:`auralens.finetuning.rewards.trace_rewards`; advantages
   ``A = (r − mean_group) / (std_group + 1e-4)`` (unbiased std, as TRL and DeepSeekMath); loss per completion token
   ``−min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) + β·KL``, with ``ρ`` the ratio to the sampling policy
   (1 at the single update per batch the default makes, so the clip only acts when
   ``grpo_iterations > 1``) and ``KL`` the k3 estimator ``exp(q − p) − (q − p) − 1`` against the
   frozen SFT model ``q``; averaged over all completion tokens of the batch (``loss_type="dapo"``,
   TRL's default; the paper's per-completion average, ``"grpo"``, gives the tokens a wrong
   completion shares with right ones a net push ``Σ A_i / len_i`` ≠ 0 — in one dev run on micro,
   lr 1e-4, it produced duplicated section tags and "chirp down" → "chirp up" flips, dev
   accuracy 0.83 against 0.88 with ``"dapo"`` at the same settings; at lr 2e-4 the two were
   within noise, 0.89 and 0.87).  No value model.  Log-probs use the logits divided by the
   sampling temperature (checked equal, to 1e-6, to the sampler's own log-probs).

Modules:

- :mod:`auralens.finetuning.config`   :class:`FinetuneConfig` (the recipe's knobs, validated), seed blocks,
                             the measured step times
- :mod:`auralens.finetuning.items`    the training items (:func:`~auralens.finetuning.items.train_item`:
                             one cafe item per seed under ``cue_mix``)
- :mod:`auralens.finetuning.rewards`  perception / consistency / answer / format rewards of a generated
                             trace and their geometric mean
- :mod:`auralens.finetuning.sft`      phase 1 on TRL's ``SFTTrainer`` (:func:`~auralens.finetuning.sft.run_sft`)
- :mod:`auralens.finetuning.grpo`     phase 2's pieces: sampling, completion log-probs, advantages, the
                             clipped loss with its KL penalty, one update
                             (:func:`~auralens.finetuning.grpo.grpo_update` with a
                             :class:`~auralens.finetuning.grpo.GRPOUpdateConfig` and a
                             :class:`~auralens.finetuning.grpo.GRPOBatch`)
- :mod:`auralens.finetuning.recipe`   :func:`~auralens.finetuning.recipe.finetune`: both phases, checkpoints,
                             resume, compute estimate, the final folder
- :mod:`auralens.finetuning.lora`     LoRA (``FinetuneConfig.lora_r > 0``, peft): adapters on the
                             decoder's linear projections only (resolved from the architecture
                             table), trained by both phases, merged into the final folder

**LoRA** (``lora_r > 0``; 0, the default, is the full fine-tune): every weight but the adapters is
frozen; SFT (TRL's Trainer takes the peft model as it is) and GRPO (AdamW over the adapters only;
the reference is a frozen copy of the SFT adapter model) train the same adapters; the work folder's
checkpoints hold the adapter (``adapter_model.safetensors``) and its optimizer moments; the final
folder holds merged weights, so it loads with ``load_model`` and every stage runs on it unchanged.
For ``smol-audio`` (Whisper-base + SmolLM2-135M, 30 decoder layers)::

    auralens micro finetune --base smol-audio --out runs/smol-mpar2 --lora-r 16 --minutes 45 --threads 2
    auralens compare --base smol-audio --mpar2 train --sft train --lora-r 16 --ft-minutes 45 ...

Imports :mod:`interp` only (the micro model's batches and pickle-free optimizer state come from
:mod:`auralens.interp.micro.train`); :mod:`interp` never imports this package.  Importing it imports
nothing heavy (torch, transformers and trl only when a function runs).

**On a real checkpoint** (Qwen2-Audio-7B-Instruct, or a Qwen2.5-Omni-7B thinker, on a GPU)::

    cfg = FinetuneConfig(sft_steps=500, sft_batch_size=8, lr=1e-5, grpo_steps=300, grpo_prompts=8,
                         group_size=8, grpo_lr=1e-6, kl_coef=0.04, temperature=1.0,
                         max_new_tokens=256, max_minutes=600, dtype="bfloat16", threads=8)
    finetune("Qwen/Qwen2-Audio-7B-Instruct", "runs/qwen2-audio-mpar2", cfg)

The code path is the same (``load_model`` → the processor's chat template → ``make_batch`` /
``generate`` / ``model(**batch)``); on a GPU the SFT Trainer runs on CUDA (bf16 follows
``dtype``).  Full fine-tuning of 8B parameters needs ~4×80 GB with AdamW; on one GPU pass
``lora_r`` (e.g. 16).  The rewards need cafe ground truth
(``item.scene``); to train on other data, supply items with a scene dict in the cafe shape or
replace :func:`~auralens.finetuning.rewards.trace_rewards`.
"""
