import pytest
import torch

from sparsevlm import density_peak_clusters, recycle
from sparsevlm.recycle import merge_clusters


def blobs(centres, per, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = [c + spread * torch.randn(per, c.numel(), generator=g) for c in centres]
    labels = torch.arange(len(centres)).repeat_interleave(per)
    perm = torch.randperm(len(labels), generator=g)
    return torch.cat(pts)[perm], labels[perm]


def same_partition(a, b):
    return all(((a == a[i]) == (b == b[i])).all() for i in range(len(a)))


def test_well_separated_clusters_are_recovered():
    centres = [torch.tensor([5.0, 0, 0, 0]), torch.tensor([0, 5.0, 0, 0]), torch.tensor([0, 0, 5.0, 0])]
    x, labels = blobs(centres, per=7)
    assign, centre_idx = density_peak_clusters(x[None], torch.ones(1, 21, dtype=torch.bool), torch.tensor([3]))
    assert same_partition(assign[0], labels)
    assert sorted(labels[centre_idx[0]].tolist()) == [0, 1, 2]  # one centre per blob
    merged = merge_clusters(x[None], assign, 3, "mean")[0]
    for c in range(3):
        torch.testing.assert_close(merged[c], x[assign[0] == c].mean(0))
    summed = merge_clusters(x[None], assign, 3, "sum")[0]
    torch.testing.assert_close(summed, merged * 7)


def test_ties_are_broken_by_index_not_by_noise():
    x = torch.tensor([[0.0, 0], [0, 0], [3, 3], [3, 3]])[None]  # exact duplicates: equal densities
    a1, c1 = density_peak_clusters(x, torch.ones(1, 4, dtype=torch.bool), torch.tensor([2]))
    a2, c2 = density_peak_clusters(x, torch.ones(1, 4, dtype=torch.bool), torch.tensor([2]))
    assert torch.equal(a1, a2) and torch.equal(c1, c2)
    assert sorted(c1[0].tolist()) == [0, 2]  # the lower index of each duplicate pair
    assert same_partition(a1[0], torch.tensor([0, 0, 1, 1]))


def test_recycle_counts_follow_the_reference_rule():
    torch.manual_seed(0)
    P = 47
    pruned, scores = torch.randn(1, P, 8), torch.rand(1, P)
    r = recycle(pruned, scores, torch.ones(1, P, dtype=torch.bool))
    m = int(P * 0.3) + 1  # 15 recycled tokens ...
    assert (r.assign[0] >= 0).sum().item() == m
    assert r.tokens.shape[1] == int(m / 10) + 1 == 2  # ... into 2 clusters
    # The recycled ones are the highest-scoring pruned tokens.
    assert set((r.assign[0] >= 0).nonzero().flatten().tolist()) == set(scores[0].topk(m).indices.tolist())
    for c in range(2):
        torch.testing.assert_close(r.tokens[0, c], pruned[0, r.assign[0] == c].mean(0))
        assert r.assign[0, r.centre[0, c]] == c


def test_batched_recycling_equals_samples_alone():
    torch.manual_seed(1)
    sizes = [30, 0, 11, 64]
    P = max(sizes)
    pruned, scores = torch.randn(4, P, 6), torch.rand(4, P)
    valid = torch.arange(P)[None, :] < torch.tensor(sizes)[:, None]
    r = recycle(pruned, scores, valid)
    for b, n in enumerate(sizes):
        one = recycle(pruned[b:b + 1, :n], scores[b:b + 1, :n], valid[b:b + 1, :n])
        k = one.tokens.shape[1]
        assert r.valid[b].sum().item() == k == (0 if n == 0 else int((int(n * 0.3) + 1) / 10) + 1)
        torch.testing.assert_close(r.tokens[b, :k], one.tokens[0])
        assert torch.equal(r.assign[b, :n], one.assign[0]) and (r.assign[b, n:] == -1).all()


@pytest.mark.parametrize("how", ["mean", "sum"])
def test_merge_ignores_tokens_outside_clusters(how):
    x = torch.ones(1, 3, 2)
    out = merge_clusters(x, torch.tensor([[0, -1, 0]]), 1, how)
    expected = [[[1.0, 1.0]]] if how == "mean" else [[[2.0, 2.0]]]
    assert out.tolist() == expected


def test_one_cluster_is_density_peaks_with_one_neighbour():
    """`cluster_merge` with one cluster skips the distances: with one neighbour (the token itself) every
    density is 1, so the first token is the centre and all join it — the same as density peaks computes,
    for any valid tokens (not only a prefix), samples without tokens, and ties."""
    from sparsevlm.recycle import cluster_merge

    g = torch.Generator().manual_seed(0)
    for trial in range(50):
        B, M, D = 4, int(torch.randint(1, 9, (1,), generator=g)), 5
        x = torch.randint(-2, 3, (B, M, D), generator=g).float()  # small integers: ties happen
        valid = torch.rand(B, M, generator=g) < 0.7
        valid[0] = False  # a sample without tokens
        c = valid.any(-1).long()
        tokens, centres, assign = cluster_merge(x, valid, c, 1)
        ref_assign, ref_centres = density_peak_clusters(x, valid, c, 1)
        assert torch.equal(assign, ref_assign) and torch.equal(centres, ref_centres), trial
        assert torch.equal(tokens, merge_clusters(x, ref_assign, 1))
