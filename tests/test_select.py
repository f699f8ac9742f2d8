import torch

from sparsevlm.select import compact_positions, gather, mask_to_index, plan_layout, topk_mask
from sparsevlm.select import put, visual_of


def test_topk_per_sample_counts_and_ties_go_to_the_lower_index():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2, 0.5], [0.9, 0.1, 0.8, 0.0, 0.7]])
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    keep = topk_mask(scores, valid, torch.tensor([2, 4]))
    assert keep.tolist() == [[False, True, True, False, False], [True, True, True, False, False]]


def test_mask_to_index_and_put():
    mask = torch.tensor([[0, 1, 0, 1], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    idx, valid = mask_to_index(mask)
    assert idx.tolist() == [[1, 3, 0], [0, 1, 2], [0, 0, 0]]
    assert valid.tolist() == [[True, True, False], [True, True, True], [False, False, False]]
    out = put(torch.zeros(3, 4, dtype=torch.long), idx, valid, torch.tensor([[7, 8, 9]] * 3))
    assert out.tolist() == [[0, 7, 0, 8], [7, 8, 9, 0], [0, 0, 0, 0]]


def test_layout_puts_recycled_tokens_after_the_visual_span_and_left_pads():
    # Sample 0: [s v v v t t], drops v at 2, one recycled token. Sample 1: [pad s v v t], drops both v.
    keep = torch.tensor([[1, 1, 0, 1, 1, 1], [0, 1, 0, 0, 1, 0]], dtype=torch.bool)
    anchor = torch.tensor([3, 3])  # last visual position
    ins_valid = torch.tensor([[True, False], [True, True]])
    layout = plan_layout(keep, anchor, ins_valid)
    x = torch.arange(12).reshape(2, 6) * 10
    ins = torch.tensor([[100, 101], [200, 201]])
    out = layout.apply(x, ins)
    assert out.tolist()[0] == [0, 10, 30, 100, 40, 50]
    assert layout.valid.tolist()[1] == [False, False, True, True, True, True]
    assert out.tolist()[1][2:] == [70, 200, 201, 100]
    assert compact_positions(layout.valid).tolist() == [[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]]
    # Tokens that stay are found where they went (the text at 4, 5 and 1, 4), as `apply` puts them.
    old = torch.tensor([[4, 5, 1], [1, 4, 4]])
    assert layout.moved(old).tolist() == [[4, 5, 1], [2, 5, 5]]
    assert (gather(out, layout.moved(old)) == gather(x, old)).all()
    # Which are visual: the input's visual positions (1–3 and 2–3) and the inserted tokens (index −1).
    vis0 = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    index = layout.apply_ints([(torch.arange(6).expand(2, 6), -1)], K=2)[0]
    assert index.tolist()[0] == [0, 1, 3, -1, 4, 5] and index.tolist()[1][2:] == [1, -1, -1, 4]  # (2 of padding)
    assert visual_of(index, layout.valid, vis0).tolist() == [[False, True, True, True, False, False],
                                                              [False, False, False, True, True, False]]


def test_gather_feature_rows():
    x = torch.arange(24.0).reshape(2, 4, 3)
    out = gather(x, torch.tensor([[3, 0], [1, 1]]))
    assert torch.equal(out[0], x[0, [3, 0]]) and torch.equal(out[1], x[1, [1, 1]])


def test_a_budget_split_among_spans_by_size_keeps_each_spans_best():
    from sparsevlm.select import split_budget, visual_spans

    groups = torch.tensor([[0] * 7 + [1] * 2 + [2]])
    valid = torch.ones(1, 10, dtype=torch.bool)
    assert split_budget(torch.tensor([5]), groups, valid, 3).tolist() == [[4, 1, 0]]  # 3.5, 1.0, 0.5: ties low
    assert split_budget(torch.tensor([10]), groups, valid, 3).tolist() == [[7, 2, 1]]
    scores = torch.tensor([[9., 8, 7, 6, 5, 4, 3, 2, 1, 0]])
    keep = topk_mask(scores, valid, torch.tensor([[4, 1, 0]]), groups)
    assert keep.nonzero()[:, 1].tolist() == [0, 1, 2, 3, 7]  # the best of each span, not the best overall
    vis = torch.tensor([[0, 1, 1, 0, 1, 1, 1, 1]]).bool()
    assert visual_spans(vis).tolist() == [[-1, 0, 0, -1, 1, 1, 1, 1]]
    assert visual_spans(vis, torch.tensor([[0, 4, 4, 9, 10, 10, 12, 12]])).tolist() == [[-1, 0, 0, -1, 1, 1, 2, 2]]
