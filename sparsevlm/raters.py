"""Text raters (paper §3.2): the text tokens that relate to the image rate the visual tokens.

Relevance of text token t: softmax over the text tokens of the similarity V·Tᵀ between the visual
and text embeddings entering the language model, averaged over the visual tokens. The paper's
raters are the text tokens whose relevance is above the mean relevance.

"Above" means above by more than float noise: a token within `TIE_RTOL` × mean of the mean is not
a rater. The reference compares with a bare `>`, which lets rounding decide near-ties, and rounding
depends on the batch a sample sits in (padding changes the order of sums): without the margin a
sample's raters could differ alone and batched. Beyond the margin the two rules agree.

A sample whose prompt has a single text token after the image has no token above the mean: that
token's relevance is the mean. Rather than leave the image unrated, the "mean" rule then falls back
to the last text token, as rule "last" does. A sample with no text after the image has no rater at all:
it keeps every visual token, and the report says so in its notes.
"""
from __future__ import annotations

import torch

from .config import RATER_RULES

#: relative margin above the mean relevance that makes a rater (float32 rounding of the relevance
#: of a few hundred visual tokens is ~1e-6 relative; see the module docstring)
TIE_RTOL = 1e-5


def text_candidates(vis_mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Text tokens that may rate: valid, not visual, and after the first visual token.

    Shapes: vis_mask (B, L) bool, valid (B, L) bool -> (B, L) bool.
    """
    after_image = vis_mask.cumsum(-1) > 0  # (B, L)
    return after_image & ~vis_mask & valid


def text_relevance(embeds: torch.Tensor, vis_mask: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Relevance of each text token to the image: mean over visual tokens of softmax_text(V·Tᵀ).

    Computed over the whole (L × L) similarity with the non-visual rows and non-text columns masked,
    so that no count has to be read from the device to size it.
    Shapes: embeds (B, L, D), vis_mask (B, L), text_mask (B, L) -> relevance (B, L), 0 off text.
    """
    x = embeds.float()
    # (B, L rows, L columns), only text columns
    sim = torch.bmm(x, x.transpose(1, 2)).masked_fill_(~text_mask.view(len(x), 1, -1), float("-inf"))
    prob = sim.softmax(-1).nan_to_num_(0.0)  # samples without text give 0
    prob.masked_fill_(~vis_mask.view(*vis_mask.shape, 1), 0.0)  # visual rows only
    rel = prob.sum(1) / vis_mask.sum(-1, keepdim=True).clamp(min=1)
    return rel.masked_fill_(~text_mask, 0.0)  # (B, L)


def select_raters(embeds: torch.Tensor, vis_mask: torch.Tensor, valid: torch.Tensor, rule: str = "mean"):
    """The rater tokens of every sample.

    rule "mean": relevance above the mean relevance of the sample's text tokens (paper), by more
    than float noise (`TIE_RTOL`);
    "all": every text token after the image; "last": the last valid token only.
    Padded positions and visual tokens are never raters.

    Shapes: embeds (B, L, D), vis_mask (B, L) bool, valid (B, L) bool
            -> rater_mask (B, L) bool, relevance (B, L) float.
    """
    if rule not in RATER_RULES:
        raise ValueError(f"rule={rule!r} is not supported; allowed: {', '.join(map(repr, RATER_RULES))}")
    text_mask = text_candidates(vis_mask, valid)  # (B, L)
    relevance = text_relevance(embeds, vis_mask, text_mask)  # (B, L)
    if rule == "all":
        return text_mask, relevance
    if rule == "last":
        return _last(text_mask), relevance
    n_text = text_mask.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
    mean = relevance.sum(-1, keepdim=True) / n_text  # (B, 1); relevance is 0 off text
    raters = (relevance > mean * (1 + TIE_RTOL)) & text_mask
    unrated = ~raters.any(-1, keepdim=True)  # (B, 1): e.g. one text token, whose relevance is the mean
    return raters | (unrated & _last(text_mask)), relevance


def _last(text_mask: torch.Tensor) -> torch.Tensor:
    """The last text token of each sample: (B, L) bool -> (B, L) bool (none where there is no text)."""
    pos = torch.arange(text_mask.shape[1], device=text_mask.device)
    last = torch.where(text_mask, pos, -1).amax(-1)  # (B,); -1 when no text
    return (pos[None, :] == last[:, None]) & text_mask
