import pytest
import torch

import sparsevlm
from sparsevlm import SparseVLMConfig, attention_rank, equivalent_tokens, rank_keep_count
from sparsevlm.budget import keep_count, layer_counts
from sparsevlm.budget import schedule_keep_count
from sparsevlm.recycle import recycle_counts


def test_rank_of_hand_made_attention_matrices_with_padding():
    rank1 = torch.outer(torch.tensor([1.0, 2.0, 3.0]), torch.rand(6))  # (R=3, V=6), rank 1
    rank3 = torch.eye(3, 6) + 0.1
    attn = torch.zeros(2, 4, 7)  # padded to 4 raters, 7 visual tokens
    attn[0, :3, :6] = rank1
    attn[1, :3, :6] = rank3
    rv = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    vv = torch.tensor([[1] * 6 + [0], [1] * 6 + [0]], dtype=torch.bool)
    assert attention_rank(attn, rv, vv).tolist() == [1, 3]
    assert attention_rank(attn[1:, :3, :6], rv[1:, :3], vv[1:, :6]).tolist() == [3]


def test_rank_keep_count_reference_form():
    n = torch.tensor([576, 576, 576, 10])
    rank = torch.tensor([5, 42, 576, 9])
    # 13.5·5 = 67.5 -> 67; 13.5·42 = 567; full rank keeps all; capped at n − 1.
    assert rank_keep_count(rank, n, 13.5).tolist() == [67, 567, 576, 9]
    assert rank_keep_count(torch.tensor([3]), torch.tensor([100]), 2.0, bias=4.5).tolist() == [10]
    assert rank_keep_count(torch.tensor([3]), torch.tensor([100]), 1.0, bias=-10).tolist() == [0]


def test_rank_keep_count_paper_deletion_form():
    # Delete int(λ·(n − rank)) tokens: λ = 0.5, n = 576, rank 20 -> delete 278, keep 298.
    assert rank_keep_count(torch.tensor([20]), torch.tensor([576]), 0.5, form="delete").tolist() == [298]
    assert rank_keep_count(torch.tensor([576]), torch.tensor([576]), 1.0, form="delete").tolist() == [576]
    with pytest.raises(ValueError, match="form='ratio'"):
        rank_keep_count(torch.tensor([1]), torch.tensor([2]), 1.0, form="ratio")


def test_schedule_keep_count_keeps_everything_when_the_budget_is_larger():
    cfg = SparseVLMConfig.preset(192)
    n = torch.tensor([576, 250, 40])
    prompt = torch.tensor([576, 576, 576])
    assert keep_count(cfg, 0, n, n_prompt=prompt).tolist() == [300, 250, 40]
    assert keep_count(cfg, 2, n, n_prompt=prompt).tolist() == [110, 110, 40]
    with pytest.raises(ValueError, match="rank is required"):
        keep_count(SparseVLMConfig(), 0, n)


def test_the_host_plan_and_the_tensors_count_alike():
    """The prefill plans counts on the host with Python ints; tensors (the batch API, rank mode) use
    the same formula: they agree everywhere, roundings included."""
    n = torch.arange(0, 2400)
    for budget, of in ((192, None), (64, 576), (300, 576), (7, 100)):
        prompt = n.flip(0) + 1
        expected = schedule_keep_count(budget, n, prompt if of else None, of).tolist()
        assert [schedule_keep_count(budget, a, b, of) for a, b in zip(n.tolist(), prompt.tolist())] == expected
    for ratio, cluster in ((0.3, 0.1), (0.5, 0.25), (0.07, 0.33)):
        m, c = recycle_counts(n, ratio, cluster)
        assert [recycle_counts(a, ratio, cluster) for a in n.tolist()] == list(zip(m.tolist(), c.tolist()))


def test_a_preset_keeps_the_references_ratios_when_the_visual_count_varies():
    """LLaVA-NeXT images, several images, video: 300 of 576 becomes 600 of 1152 and 150 of 288."""
    cfg = SparseVLMConfig.preset(192)
    assert cfg.schedule_of == 576
    prompt = torch.tensor([1152, 288, 2])
    assert keep_count(cfg, 0, prompt, n_prompt=prompt).tolist() == [600, 150, 1]
    absolute = cfg.replace(schedule_of=None)  # the same counts for every sample
    assert keep_count(absolute, 0, prompt).tolist() == [300, 288, 2]
    ins, outs = sparsevlm.planned_counts(cfg.replace(recycle=False), 1152, 32)
    assert outs[2] == 600 and outs[6] == 400 and outs[15] == 220  # 300/200/110 of 576, doubled
    with pytest.raises(ValueError, match="schedule_of=0 must be None"):
        cfg.replace(schedule_of=0)
    with pytest.raises(ValueError, match="schedule_of=576 is only used with mode='schedule'"):
        SparseVLMConfig(schedule_of=576)


def test_equivalent_tokens_of_the_192_preset_both_ways():
    n = torch.tensor([576])
    after = {2: torch.tensor([300]), 6: torch.tensor([200]), 15: torch.tensor([110])}
    counts_in, counts_out = layer_counts(n, 32, after)
    # Reference (each layer's output): 2·576 + 4·300 + 9·200 + 17·110 = 6022 -> 188.19
    assert equivalent_tokens(counts_out).item() == pytest.approx(6022 / 32)
    # Each layer's input: 3·576 + 4·300 + 9·200 + 16·110 = 6488 -> 202.75
    assert equivalent_tokens(counts_in).item() == pytest.approx(6488 / 32)
    assert counts_in[0, 3].item() == 300 and counts_out[0, 2].item() == 300
    with pytest.raises(ValueError, match=r"pruning layers \[40\]"):
        layer_counts(n, 32, {40: torch.tensor([1])})
