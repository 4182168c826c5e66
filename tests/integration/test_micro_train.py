"""micro training: checkpoints resume exactly where they stopped."""

import json

import torch
from safetensors.torch import load_file

from auralens.interp.micro.build import MicroConfig
from auralens.interp.micro.train import TrainConfig, train

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


def test_checkpoints_hold_no_pickle_and_resume_is_bit_identical(tmp_path, monkeypatch):
    """Weights and optimizer tensors are safetensors, everything else JSON; resuming never calls
    torch.load / pickle, and the resumed run ends bit-identical to an unbroken one."""
    import pickle

    from auralens.interp.micro.train import finalize

    cfg = dict(steps=4, batch_size=2, save_every=2, threads=1, warmup=1)
    full, _ = train(tmp_path / "full", TrainConfig(**cfg), SMALL, progress=False)
    train(tmp_path / "part", TrainConfig(**cfg, max_minutes=1e-9), SMALL, progress=False)
    names = {p.name for p in (tmp_path / "part").iterdir()}
    assert {"model.safetensors", "optimizer.safetensors", "optimizer.json", "training.json"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".bin", ".pkl", ".pickle"))]

    def no_pickle(*a, **k):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    resumed, _ = train(tmp_path / "part", TrainConfig(**cfg), SMALL, progress=False, resume=True)
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for folder in ("full", "part"):
        finalize(tmp_path / folder)
        assert not list((tmp_path / folder).glob("optimizer.*"))


def test_optimizer_state_round_trips_exactly(tmp_path):
    import numpy as np

    from auralens.interp.micro.train import load_optimizer, save_optimizer

    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2, betas=(0.9, 0.98))
    for _ in range(3):
        lin(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    rng = np.random.default_rng(5)
    rng.random(7)
    save_optimizer(tmp_path, opt, rng=rng)
    want_torch, want_np = torch.randn(3), rng.random(3)

    lin2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(lin2.parameters(), lr=0.5)
    rng2 = np.random.default_rng(0)
    torch.manual_seed(123)
    assert load_optimizer(tmp_path, opt2, rng=rng2)
    assert torch.equal(torch.randn(3), want_torch) and np.array_equal(rng2.random(3), want_np)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"] and isinstance(s2["param_groups"][0]["betas"], tuple)
    for pid in s1["state"]:
        for k, v in s1["state"][pid].items():
            assert torch.equal(v, s2["state"][pid][k]), (pid, k)


def test_legacy_torch_checkpoint_is_read_with_weights_only(tmp_path, monkeypatch):
    from auralens.interp.micro.train import has_optimizer, load_optimizer

    lin = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(lin.parameters())
    lin(torch.ones(1, 2)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    assert has_optimizer(tmp_path)
    calls = []
    real = torch.load

    def spy(*a, **k):
        calls.append(k.get("weights_only"))
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    opt2 = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    assert load_optimizer(tmp_path, opt2) is False
    assert calls == [True]
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
