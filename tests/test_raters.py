import pytest
import torch

from sparsevlm import select_raters
from sparsevlm.raters import text_relevance
from sparsevlm.raters import text_candidates


def planted(seed=0, L=10, D=8):
    """System token, 4 visual tokens (positions 1-4), 5 text tokens; text tokens 6 and 8 are
    copies of visual tokens, so they relate to the image and must be the raters."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, L, D, generator=g) * 0.1
    vis = torch.zeros(1, L, dtype=torch.bool)
    vis[0, 1:5] = True
    emb[0, 1:5] = torch.eye(D)[:4] * 4
    emb[0, 6] = emb[0, 1] + emb[0, 2]
    emb[0, 8] = emb[0, 3] + emb[0, 4]
    return emb, vis, torch.ones(1, L, dtype=torch.bool)


def test_text_tokens_that_match_the_image_become_raters():
    emb, vis, valid = planted()
    raters, rel = select_raters(emb, vis, valid)
    assert raters[0].nonzero().flatten().tolist() == [6, 8]
    # Relevance is a distribution over the text tokens, averaged over visual tokens.
    assert rel[0, 5:].sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (rel[0, :5] == 0).all()


def test_relevance_equals_the_definition():
    emb, vis, valid = planted(seed=3)
    text = text_candidates(vis, valid)
    rel = text_relevance(emb, vis, text)
    v, t = emb[0, vis[0]], emb[0, text[0]]
    expected = (v @ t.T).softmax(-1).mean(0)
    torch.testing.assert_close(rel[0, text[0]], expected)


def test_rules_all_and_last():
    emb, vis, valid = planted()
    all_raters, _ = select_raters(emb, vis, valid, rule="all")
    assert all_raters[0].nonzero().flatten().tolist() == [5, 6, 7, 8, 9]
    last, _ = select_raters(emb, vis, valid, rule="last")
    assert last[0].nonzero().flatten().tolist() == [9]
    with pytest.raises(ValueError, match="rule='first'.*'mean', 'all', 'last'"):
        select_raters(emb, vis, valid, rule="first")


def test_batch_with_left_padding_equals_samples_alone():
    lengths = [10, 12, 15]  # different prompt lengths, left-padded to the longest
    samples = [planted(seed=s, L=n) for s, n in enumerate(lengths)]
    L = max(lengths)
    emb = torch.full((3, L, 8), 5.0)  # padding content must not matter
    vis = torch.zeros(3, L, dtype=torch.bool)
    valid = torch.zeros(3, L, dtype=torch.bool)
    for b, ((e, v, m), n) in enumerate(zip(samples, lengths)):
        emb[b, L - n:], vis[b, L - n:], valid[b, L - n:] = e[0], v[0], m[0]
    raters, rel = select_raters(emb, vis, valid)
    for b, ((e, v, m), n) in enumerate(zip(samples, lengths)):
        r1, rel1 = select_raters(e, v, m)
        assert torch.equal(raters[b, L - n:], r1[0]) and not raters[b, :L - n].any()
        torch.testing.assert_close(rel[b, L - n:], rel1[0])


def test_padding_and_visual_tokens_are_never_raters():
    emb, vis, valid = planted()
    valid = valid.clone()
    valid[0, 6] = False  # the strongest text token is padding
    raters, _ = select_raters(emb, vis, valid, rule="all")
    assert not raters[0, 6] and not (raters & vis).any() and not raters[0, 0]


def test_no_image_means_no_raters():
    emb, _, valid = planted()
    raters, rel = select_raters(emb, torch.zeros_like(valid), valid)
    assert not raters.any() and (rel == 0).all()


def test_a_single_text_token_rates_and_a_prompt_without_text_is_kept_whole_with_a_note():
    """#32.8: one text token after the image has the mean relevance, so the paper's rule finds no
    rater; the mean rule falls back to the last text token, and the schedule prunes as planned. With
    no text after the image nothing rates: every visual token is kept and the report says so."""
    import sparsevlm
    from helpers import prompt_ids, tiny_llava
    from sparsevlm.methods import planned_counts

    emb, vis, valid = planted()
    one = valid.clone()
    one[0, 6:] = False  # a single text token (position 5) after the image
    raters, _ = select_raters(emb, vis, one)
    assert raters[0].nonzero().flatten().tolist() == [5]

    model = tiny_llava("llama")
    cfg = sparsevlm.SparseVLMConfig(mode="schedule", pruning_layers=(1, 3), schedule=(20, 8))
    _, planned_out = planned_counts(cfg, 64, 6)
    g = torch.Generator().manual_seed(1)
    for text_len in (0, 1):
        ids = prompt_ids(text_len, 0)[None]
        x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(1, 3, 32, 32, generator=g)}
        with torch.no_grad(), sparsevlm.sparsified(model, cfg):
            model(**x)
            rep = sparsevlm.report(model)
        if text_len:
            assert rep.visual_out[0].tolist() == planned_out and not rep.notes
        else:
            assert rep.visual_out[0].tolist() == [64] * 6
            assert rep.notes == ["no text token follows the image, so nothing rates its visual tokens; all are kept "
                                 "in samples [0]"]
