import torch
import pytest

from sparsevlm import rater_attention, visual_scores
from sparsevlm.select import mask_to_index


def full_attention_reference(q, k, valid):
    """Eager attention as the model computes it: the whole L×L matrix, causal + padding mask."""
    B, H, L, Dh = q.shape
    k = k.repeat_interleave(H // k.shape[1], dim=1)
    logits = q @ k.transpose(-1, -2) / Dh ** 0.5
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    allowed = causal[None] & valid[:, None, :]
    probs = logits.masked_fill(~allowed[:, None], float("-inf")).softmax(-1).nan_to_num(0.0)
    return probs.mean(1)  # (B, L, L), averaged over heads


def test_scores_equal_those_read_from_the_full_attention_matrix():
    torch.manual_seed(0)
    B, H, H_kv, L, Dh = 2, 8, 2, 20, 16  # grouped-query attention: 4 query heads per key head
    q, k = torch.randn(B, H, L, Dh), torch.randn(B, H_kv, L, Dh)
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[1, :3] = False  # left padding
    vis = torch.zeros(B, L, dtype=torch.bool)
    vis[:, 4:12] = True
    raters = torch.zeros(B, L, dtype=torch.bool)
    raters[0, [13, 15, 19]] = True
    raters[1, [12, 18]] = True
    full = full_attention_reference(q, k, valid)

    r_idx, r_valid = mask_to_index(raters)
    v_idx, v_valid = mask_to_index(vis)
    q_r = torch.stack([q[b][:, r_idx[b]] for b in range(B)])  # only the raters' queries
    attn = rater_attention(q_r, k, r_idx, r_valid, valid, v_idx, v_valid)
    scores = visual_scores(attn, r_valid)
    for b in range(B):
        expected = full[b][raters[b]][:, vis[b]]  # (R, V)
        n = int(raters[b].sum())
        torch.testing.assert_close(attn[b, :n], expected)
        torch.testing.assert_close(scores[b], expected.mean(0))
    assert (attn[1, 2] == 0).all()  # the padded rater row of sample 1


def test_a_rater_that_looks_at_one_token_gives_it_the_top_score():
    B, H, L, Dh = 1, 2, 8, 4
    k = torch.zeros(B, H, L, Dh)
    k[0, :, 3, 0] = 10.0  # visual token at position 3 has a distinctive key
    q = torch.zeros(B, H, 1, Dh)
    q[0, :, 0, 0] = 10.0  # the rater's query matches it
    vis = torch.zeros(B, L, dtype=torch.bool)
    vis[0, 1:6] = True
    v_idx, v_valid = mask_to_index(vis)
    attn = rater_attention(q, k, torch.tensor([[7]]), torch.ones(1, 1, dtype=torch.bool),
                           torch.ones(B, L, dtype=torch.bool), v_idx, v_valid)
    scores = visual_scores(attn, torch.ones(1, 1, dtype=torch.bool))
    assert scores.argmax().item() == 2  # third visual token = sequence position 3
    assert scores[0, 2] > 0.99


def test_rope_gravity_is_the_logit_of_all_ones_queries_and_keys():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    from sparsevlm.scores import rope_gravity

    Dh, L = 16, 30
    rope = LlamaRotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=Dh))
    positions = torch.arange(L)[None]
    cos, sin = rope(torch.zeros(1, L, Dh), positions)
    ones = torch.ones(1, 1, L, Dh)
    q, k = apply_rotary_pos_emb(ones, ones, cos, sin)
    full = (q @ k.transpose(-1, -2))[0, 0] / Dh ** 0.5  # (L, L)
    raters, vis = torch.tensor([[20, 25, 29]]), torch.tensor([[2, 3, 4, 10]])
    torch.testing.assert_close(rope_gravity(cos, sin, raters, vis)[0], full[raters[0]][:, vis[0]])
    # It depends only on the distance between the two positions.
    torch.testing.assert_close(full[20, 10], full[29, 19])


def test_top_heads_averages_the_heads_that_look_at_the_image_most():
    from sparsevlm.scores import top_heads

    attn = torch.zeros(1, 4, 2, 3)  # (B, H, R, V)
    attn[0, 1] = 0.3
    attn[0, 3] = 0.2
    attn[0, 0] = 0.1
    attn[0, 2, :, 0] = 0.05
    torch.testing.assert_close(top_heads(attn, 2)[0], torch.full((2, 3), 0.25))
    with pytest.raises(ValueError, match="top_heads=5 must be between 1 and the model's 4 attention heads"):
        top_heads(attn, 5)
