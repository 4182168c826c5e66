"""bf16 autocast vs fp32 on this CPU: forward + backward of smol-audio's frozen decoder (gradients
flow to the input embeddings, as the projector's do in alignment), batch 8 x 160 tokens, the two
interleaved, median of 5.  Prints one JSON line.  Run: ``.venv/bin/python benchmarks/smol_bf16.py``."""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from auralens.interp.loading import load_model


def main() -> None:
    torch.set_num_threads(2)
    lm = load_model("smol-audio", device="cpu", dtype="float32")
    decoder = lm.model.model.language_model  # the LlamaModel (no LM head), as in alignment
    for p in lm.model.parameters():
        p.requires_grad_(False)
    emb = torch.randn(8, 160, decoder.config.hidden_size, requires_grad=True)

    def step(bf16: bool) -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = decoder(inputs_embeds=emb).last_hidden_state.float().pow(2).mean()
        loss.backward()
        emb.grad = None
        return time.perf_counter() - t

    step(True), step(False)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(5):
        for bf16 in (True, False):
            times[bf16].append(step(bf16))
    res = {"bf16_s": statistics.median(times[True]), "fp32_s": statistics.median(times[False])}
    res["fp32_over_bf16"] = res["fp32_s"] / res["bf16_s"]
    sys.stdout.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
