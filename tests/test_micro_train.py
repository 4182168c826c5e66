"""micro training: checkpoints resume exactly where they stopped."""

import json

import torch
from safetensors.torch import load_file

from interp.micro.build import MicroConfig
from interp.micro.train import TrainConfig, train

SMALL = MicroConfig(layers=2, d_model=32, heads=2, kv_heads=1, ffn=64, d_audio=32, audio_layers=1)


def test_resume_continues_from_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    full, _ = train(tmp_path / "full", TrainConfig(steps=4, batch_size=2, save_every=2, threads=1, warmup=1), SMALL,
                    progress=False)
    # a run stopped after its first checkpoint (time budget), then resumed
    train(tmp_path / "part", TrainConfig(steps=4, batch_size=2, save_every=2, threads=1, warmup=1, max_minutes=1e-9),
          SMALL, progress=False)
    assert json.loads((tmp_path / "part" / "training.json").read_text())["steps_done"] == 1
    # the saved checkpoint loads back with every weight (saved key names differ from module names)
    resumed, _ = train(tmp_path / "part", TrainConfig(steps=4, batch_size=2, save_every=2, threads=1, warmup=1),
                       SMALL, progress=False, resume=True)
    info = json.loads((tmp_path / "part" / "training.json").read_text())
    assert info["steps_done"] == 4 and info["history"][0]["resumed_at_step"] == 1
    # the resumed run sees the same batches with the same weights: identical per-step losses
    full_info = json.loads((tmp_path / "full" / "training.json").read_text())
    assert info["losses"] == full_info["losses"]
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert not resumed.model.audio_tower.embed_positions.weight.requires_grad  # stays frozen
    assert len(load_file(tmp_path / "part" / "model.safetensors")) == len(a)
