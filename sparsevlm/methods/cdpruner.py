"""CDPruner (Zhang et al., NeurIPS 2025, arXiv 2506.10967), before the language model: greedy MAP
of a determinantal point process whose kernel is conditioned on the instruction."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import POSITIONS, MethodConfig, check_choice, check_count, check_number
from .before_llm import KeepPreLLM, cosine


@dataclass(frozen=True)
class CDPrunerConfig(MethodConfig):
    """CDPruner (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for
    Token Pruning in MLLMs", NeurIPS 2025, arXiv 2506.10967; code github.com/Theia-4869/CDPruner):
    before the language model, keep the `keep` visual tokens chosen by greedy MAP inference of a
    determinantal point process whose kernel is conditioned on the instruction:
    L = diag(q) · S · diag(q), S the cosine similarity of the visual embeddings, q = exp(α · r)
    with α = θ / (2(1 − θ)) (q = r when θ = 1) and r each token's relevance — its mean cosine
    similarity to the instruction's embeddings, min–max normalised per sample. Fast greedy MAP
    (incremental Cholesky, O(n · keep²) per sample). Default 64 tokens, θ = 0.5."""

    keep: int = 64
    theta: float = 0.5
    positions: str = "compact"

    def __post_init__(self) -> None:
        check_choice("positions", self.positions, POSITIONS)
        check_count("keep", self.keep)
        check_number("theta", self.theta, 0, 1, low_open=True)


def dpp_greedy_map(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy MAP inference of a DPP with kernel L (Chen, Zhang & Zhou, NeurIPS 2018): add, k times,
    the item with the largest gain in log det L_S, i.e. the largest d_i² = L_ii − ‖c_i‖², updating
    the rows c_i of the incremental Cholesky factor: e_i = (L_ji − ⟨c_j, c_i⟩) / d_j, d_i² −= e_i².
    O(n · k²). Shapes: kernel (n, n) symmetric PSD -> kept (n,) bool, exactly min(k, n) items.

    Once the kernel's rank is spent (every gain below `1e-4 · max L_ii`: more items than the
    embedding's width, or repeated items), no item adds volume. Chen et al.'s code stops there; this
    one keeps what was asked for, adding the remaining items by quality L_ii, so that the count is
    the planned one and keep ≥ n keeps everything."""
    n = kernel.shape[0]
    k = min(k, n)
    c = kernel.new_zeros(k, n)
    quality = kernel.diagonal().clone()
    d2 = quality.clone()
    eps = 1e-4 * quality.max().clamp(min=1e-12)
    # an exhausted item ranks below every item with a gain, and among the exhausted by its quality
    spare = quality / (quality.max().clamp(min=1e-12) * 2)  # in [0, 1/2]
    kept = torch.zeros(n, dtype=torch.bool, device=kernel.device)
    slots = torch.arange(n, device=kernel.device)
    for i in range(k):
        key = torch.where(d2 > eps, 1 + d2, spare).masked_fill(kept, -float("inf"))
        j = key.argmax().view(1)
        kept = kept | (slots == j)
        dj = d2.index_select(0, j)
        scale = torch.where(dj > eps, dj.clamp(min=eps).rsqrt(), torch.zeros_like(dj))
        e = (kernel.index_select(0, j)[0] - c[:i].index_select(1, j)[:, 0] @ c[:i]) * scale
        c[i] = e
        d2 = d2 - e * e
    return kept


def conditional_kernel(x: torch.Tensor, text: torch.Tensor, theta: float) -> torch.Tensor:
    """CDPruner's kernel L = diag(q) S diag(q): S the cosine similarity of the visual embeddings,
    r = mean cosine similarity to the instruction's embeddings, min–max normalised; q = exp(α r),
    α = θ / (2(1 − θ)), or q = r when θ = 1. Shapes: x (n, D), text (m, D) -> (n, n)."""
    r = cosine(x, text).mean(-1) if len(text) else x.new_zeros(x.shape[0], dtype=torch.float)
    r = (r - r.min()) / (r.max() - r.min() + 1e-6)
    q = r if theta == 1 else torch.exp(theta / (2 * (1 - theta)) * r)
    return q[:, None] * cosine(x, x) * q[None, :]


class CDPruner(KeepPreLLM):
    cfg: CDPrunerConfig
    name, config = "cdpruner", CDPrunerConfig
    needs_text = True

    def select(self, x, cls, text):
        return dpp_greedy_map(conditional_kernel(x, text, self.cfg.theta), self.cfg.keep)
