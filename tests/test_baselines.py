"""Baselines on a hand-made attention pattern whose answer is known."""
import pytest
import torch

from sparsevlm import FastVConfig, PDropConfig, RandomConfig
from sparsevlm.methods import PruneInput, build


def planted_input():
    """sys, 5 visual tokens (positions 1-5), 2 text tokens. Every query looks for key e0, which
    only visual token 3 has; the last token looks for e1, which only visual token 5 has."""
    L, Dh = 8, 4
    k = torch.zeros(1, 1, L, Dh)
    k[0, 0, 3, 0] = 10.0
    k[0, 0, 5, 1] = 10.0
    q = torch.zeros(1, 1, L, Dh)
    q[0, 0, :, 0] = 10.0
    q[0, 0, -1] = torch.tensor([0.0, 10.0, 0, 0])
    vis = torch.zeros(1, L, dtype=torch.bool)
    vis[0, 1:6] = True
    cos, sin = torch.ones(1, L, Dh), torch.zeros(1, L, Dh)
    return PruneInput(step=0, layer=2, hidden=torch.randn(1, L, 6), valid=torch.ones(1, L, dtype=torch.bool),
                      vis_mask=vis, queries=q, keys=k, scaling=1.0, position_embeddings=(cos, sin), token_state={})


def kept_visual(decision, inp):
    return (decision.keep & inp.vis_mask)[0].nonzero().flatten().tolist()


@pytest.mark.parametrize("cfg,expected", [
    (FastVConfig(prune_ratio=0.8), [3]),  # most attention from all tokens
    (FastVConfig(prune_ratio=0.8, rater="last"), [5]),  # the last token's choice
    (PDropConfig(pruning_layers=(2,), keep_ratio=0.2), [5]),  # last instruction token
    # 2 kept. Attention received, summed over rows: token 3 ≈ 4 (rows 3-6), token 5 ≈ 1 (row 7),
    # token 1 = 1/2 + 1/3 (rows 1, 2 spread uniformly over what they see), token 2 = 1/3.
    (FastVConfig(prune_ratio=0.6), [3, 5]),
])
def test_kept_tokens_on_a_hand_made_pattern(cfg, expected):
    inp = planted_input()
    dec = build(cfg).prune(inp)
    assert kept_visual(dec, inp) == expected
    assert dec.keep[0, [0, 6, 7]].all()  # system and text tokens are never pruned


def test_random_keeps_exactly_the_budget():
    inp = planted_input()
    dec = build(RandomConfig(pruning_layers=(2,), schedule=(2,))).prune(inp)
    assert len(kept_visual(dec, inp)) == 2


@pytest.mark.parametrize("kwargs,field", [
    (dict(prune_ratio=1.0), "prune_ratio"), (dict(rater="first"), "rater"), (dict(layer=-1), "layer")])
def test_fastv_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}="):
        FastVConfig(**kwargs)


def test_pdrop_config_validation():
    with pytest.raises(ValueError, match="^keep_ratio="):
        PDropConfig(keep_ratio=0)
    with pytest.raises(ValueError, match="^pruning_layers="):
        PDropConfig(pruning_layers=(16, 8))
