"""micro-heads-dense (issue 21, item 3): planted specialist heads among heads that all listen.

- the recipes validate, draw three distinct planted sets from their seeds, and bad knobs are refused;
- :func:`audio_yield_deviation` (the loss holding the other heads at a fixed yield) matches a numpy sum;
- :func:`planted_recovery` with and without the ``listens`` floor on a synthetic heads table
  where the floor changes the answer, checked against a by-hand ranking;
- on the committed weights, the non-planted heads' mean audio yield at the last prompt token
  is >= 0.05 on held-out items, and at most two of the 11 are below the 1% ``listens`` floor
  (measured, not designed: layer-0 heads (0, 1) and/or (0, 3) stay near 0 -- one in seeds 0
  and 1, two in seed 2 -- while the others sit at ~0.05-0.12).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from auralens.interp.errors import ConfigError
from auralens.interp.listening import heads_table
from auralens.interp.micro import WEIGHTS_DIR
from auralens.interp.micro.organisms import DENSE_RECIPES, RECIPES, OrganismConfig, planted_recovery, planted_set
from auralens.organisms.train import audio_yield_deviation, last_prompt_mask, query_masks

FOLDERS = {"micro-heads-dense": "heads-dense", "micro-heads-dense-s1": "heads-dense-s1",
           "micro-heads-dense-s2": "heads-dense-s2"}


def test_dense_recipes_validate_and_differ():
    sets = set()
    for name, cfg in DENSE_RECIPES.items():
        assert RECIPES[name] is cfg
        assert cfg.other_yield_target == pytest.approx(0.08) and cfg.penalty > 0 and cfg.listen_floor > 0
        assert len(cfg.listen_heads) == 5 and len(set(cfg.listen_heads)) == 5
        assert cfg.listen_heads == planted_set(cfg.planted_seed)
        assert all(0 <= layer < 4 and 0 <= head < 4 for layer, head in cfg.listen_heads)
        sets.add(cfg.listen_heads)
    assert len(sets) == 3  # three seeds, three planted sets
    assert len({c.data_seed for c in DENSE_RECIPES.values()}) == 3
    # the existing micro-heads recipe is untouched: penalty towards 0, no target
    assert RECIPES["micro-heads"].other_yield_target is None


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_bad_target_refused(bad):
    with pytest.raises(ConfigError, match="other_yield_target"):
        dataclasses.replace(DENSE_RECIPES["micro-heads-dense"], other_yield_target=bad)
    with pytest.raises(ConfigError, match="other_yield_target"):
        OrganismConfig(name="x", other_yield_target=0.08)  # no listen_heads


def test_planted_set_seeded():
    assert planted_set(7) == planted_set(7)
    assert planted_set(7) != planted_set(8)
    with pytest.raises(ConfigError, match="planted_set"):
        planted_set(0, k=17)


def test_audio_yield_deviation_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    B, H, Q, K, L = 2, 4, 5, 7, 3
    att = [torch.softmax(torch.as_tensor(rng.normal(size=(B, H, Q, K))), -1) for _ in range(L)]
    audio = torch.as_tensor(rng.random((B, K)) < 0.5)
    qmask = torch.as_tensor(rng.random((B, Q)) < 0.6)
    hmask = torch.as_tensor(rng.random((L, H)) < 0.5)
    got = float(audio_yield_deviation(att, audio, qmask, hmask, 0.08))
    terms = []
    for layer in range(L):
        a = att[layer].numpy()
        for b in range(B):
            for h in range(H):
                for q in range(Q):
                    if hmask[layer, h] and qmask[b, q]:
                        terms.append(abs(a[b, h, q][audio[b].numpy()].sum() - 0.08))
    assert got == pytest.approx(float(np.mean(terms)), rel=1e-9)


def test_planted_recovery_with_and_without_floor():
    # 16 heads; planted = 0..4.  Heads 5, 6 score best on both signals but do not listen
    # (yield 0): with the floor they rank last (5/5), without it they take two top-5 places.
    L, H = 4, 4
    corr = np.linspace(0.0, -0.5, L * H)
    contrast = np.linspace(0.0, -0.5, L * H)
    order = [5, 6, 0, 1, 2, 3, 4] + list(range(7, 16))  # best first
    for pos, idx in enumerate(order):
        corr[idx] = 1.0 - 0.05 * pos
        contrast[idx] = 2.0 - 0.1 * pos
    yield_ = np.full(L * H, 0.1)
    yield_[[5, 6]] = 0.0
    table = heads_table(correlation=corr.reshape(L, H), contrast=contrast.reshape(L, H),
                        mean_yield=yield_.reshape(L, H))
    planted = [(i // H, i % H) for i in range(5)]
    assert planted_recovery(table, planted, floor=True) == 1.0
    # by hand: the top-5 by the signal alone are 5, 6, 0, 1, 2 -> 3 of 5 planted
    assert planted_recovery(table, planted, floor=False) == pytest.approx(3 / 5)
    # the same table without mean_yield: its own rank is the unfloored one
    plain = heads_table(correlation=corr.reshape(L, H), contrast=contrast.reshape(L, H))
    assert planted_recovery(plain, planted, floor=True) == pytest.approx(3 / 5)
    with pytest.raises(ConfigError, match="planted_recovery"):
        planted_recovery(table, [], floor=False)
    with pytest.raises(ConfigError, match="corr_rank"):
        planted_recovery(table[["layer", "head", "rank"]], planted, floor=False)


def _last_prompt_yields(folder, n: int = 6):
    torch = pytest.importorskip("torch")
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from auralens.interp.cafe.questions import make_item
    from auralens.interp.micro.train import make_batch

    processor = AutoProcessor.from_pretrained(folder)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(folder, attn_implementation="eager").eval()
    items = [make_item(9_100_000 + i) for i in range(n)]  # no training seed is in this range
    batch, labels = make_batch(processor, items, ["direct"] * n)
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    cfg = DENSE_RECIPES["micro-heads-dense"]
    audio, _ = query_masks(batch, labels, cfg, 0, audio_id)
    last = last_prompt_mask(labels)
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    amask = audio[:, None, None, :].to(out.attentions[0].dtype)
    per = [((a * amask).sum(-1))[:, :, :][last[:, None, :].expand(-1, a.shape[1], -1)].reshape(n, -1).mean(0)
           for a in out.attentions]  # [layer][head]: mean yield at the last prompt token
    return torch.stack(per).numpy()


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_trained_non_planted_heads_listen(name):
    folder = WEIGHTS_DIR / FOLDERS[name]
    if not (folder / "model.safetensors").exists():
        pytest.skip(f"{name} not trained (auralens organisms train {name} --out {folder})")
    y = _last_prompt_yields(folder)
    planted = set(DENSE_RECIPES[name].listen_heads)
    others = [float(y[layer, head]) for layer in range(y.shape[0]) for head in range(y.shape[1])
              if (layer, head) not in planted]
    assert float(np.mean(others)) >= 0.05, others
    assert sum(v < 0.01 for v in others) <= 2, others  # the floor drops at most two non-planted heads
