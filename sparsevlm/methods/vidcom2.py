"""VidCom2 (Liu et al., EMNLP 2025, arXiv 2505.14454), before the language model: a frame that is more
unique in its video gets a larger share of the budget; within a frame, its most distinctive tokens stay."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import MethodConfig, check_number
from .before_llm import unmerged
from .video import VideoMethod, allocate, check_video, frame_starts

#: bandwidths of the multi-scale Gaussian similarity (VidCom2's code: 2^-3 .. 2^1)
ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class VidCom2Config(MethodConfig):
    """VidCom2 (Liu et al., "Video Compression Commander: Plug-and-Play Inference Acceleration for
    Video Large Language Models", EMNLP 2025, arXiv 2505.14454; code github.com/xuyang-liu16/VidCom2):
    before the language model, on the visual embeddings (L2-normalised). A token's likeness to a centre
    c is the multi-scale Gaussian kernel Σ_α exp(−‖x − c‖² / 2α). A frame's uniqueness is minus the mean
    likeness of its tokens to the video's mean token. Frame weights are 1 + p_f − mean(p), with
    p = softmax(uniqueness / `temperature`). The budget, max(1, round(retention · n)) of a sample's n
    visual tokens, is shared among frames in proportion to weight × size (at most a frame's size). Each
    frame keeps the tokens least like both the video's and its own mean token.

    Differs from the code: frames of different sizes share by weight × size (the code has one size);
    all channels are used (the code keeps the half with the lowest variance)."""

    retention: float = 0.25
    temperature: float = 0.01
    positions: str = "compact"

    def __post_init__(self) -> None:
        check_video(self)
        check_number("temperature", self.temperature, 0, low_open=True)


def likeness(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Multi-scale Gaussian similarity Σ_α exp(−‖x − c‖² / 2α) of each row to `centre`.
    Shapes: x (n, D), centre (D,) or (n, D) -> (n,)."""
    d2 = (x - centre).pow(2).sum(-1)
    return sum(torch.exp(-d2 / (2 * a)) for a in ALPHAS)


def frame_budgets(x: torch.Tensor, sizes: list[int], keep: int, temperature: float = 0.01) -> list[int]:
    """VidCom2's frame compression adjustment: each frame's share of `keep` tokens. Uniqueness u_f is
    minus the mean likeness of frame f's tokens to the video's mean token; weights 1 + p_f − mean(p),
    p = softmax(u / temperature); shares in proportion to weight × size, capped at the frame's size.
    Shapes: x (n, D) the sample's visual embeddings, frame after frame -> one int per frame."""
    xn = F.normalize(x.float(), dim=-1)
    like = likeness(xn, xn.mean(0))  # (n,) to the video's mean token
    u = torch.stack([-like[s:s + k].mean() for s, k in zip(frame_starts(sizes), sizes)])  # (F,)
    p = torch.softmax((u - u.max()) / temperature, dim=0)
    weight = (1 + p - p.mean()).tolist()
    return allocate(keep, [w * k for w, k in zip(weight, sizes)], sizes)


def vidcom2_select(x: torch.Tensor, sizes: list[int], budgets: list[int]) -> torch.Tensor:
    """VidCom2's token selection: each frame keeps its `budgets[f]` tokens of lowest likeness to the
    video's mean token plus likeness to its frame's mean token (ties to the lower index).
    Shapes: x (n, D) -> kept (n,) bool."""
    xn = F.normalize(x.float(), dim=-1)
    like = likeness(xn, xn.mean(0))
    kept = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for s, k, q in zip(frame_starts(sizes), sizes, budgets):
        score = like[s:s + k] + likeness(xn[s:s + k], xn[s:s + k].mean(0))
        kept[s + torch.sort(score, stable=True).indices[:q]] = True
    return kept


class VidCom2(VideoMethod):
    cfg: VidCom2Config
    name, config = "vidcom2", VidCom2Config

    def reduce_video(self, x, sizes, keep):
        return unmerged(x, vidcom2_select(x, sizes, frame_budgets(x, sizes, keep, self.cfg.temperature)))
