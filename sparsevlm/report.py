"""What the last prefill did: visual tokens per layer, kept indices, raters, recycled tokens and
equivalent tokens counted both ways. Filled by model adapters, read by `sparsevlm.report(model)`."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .budget import equivalent_tokens
from .select import put, visual_of


@dataclass
class Report:
    """Per-sample accounting of one prefill.

    visual_in / visual_out: (B, num_layers) visual tokens entering / leaving each decoder layer
    (recycled tokens count as visual). raters: per sample, positions in the input sequence.
    steps: one dict per pruning layer (layer −1: before the first layer) with "layer", "kept" (per sample, indices into the original
    image grid of the original visual tokens still present), "recycled" (B,) tokens merged in at
    that layer, and the method's own per-sample numbers (e.g. "rank", "keep").
    """

    method: str
    num_layers: int
    n_tokens: torch.Tensor  # (B,) valid prompt tokens
    n_visual: torch.Tensor  # (B,) visual tokens in the prompt
    visual_in: torch.Tensor
    visual_out: torch.Tensor
    raters: list[list[int]] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    dense: bool = False
    reason: str | None = None
    #: (B, L) bool: input positions whose token reached the last layer. The model's outputs are
    #: aligned with the input; at a pruned position the last hidden state is 0 (so are the logits
    #: of a bias-free LM head) and `labels=` leaves the next label out of the loss. None when dense.
    present: torch.Tensor | None = None
    #: what the caller should know about this prefill that is not an error (e.g. right padding)
    notes: list[str] = field(default_factory=list)
    #: wall time of the method's own work in this prefill (raters, scoring, rank, recycling,
    #: re-layout), measured only when the model's state has "timing" set (sparsevlm.bench)
    overhead_seconds: float | None = None

    @property
    def equivalent_tokens(self) -> torch.Tensor:
        """(B,) mean visual tokens per layer, counting each layer's output (the reference's count)."""
        return equivalent_tokens(self.visual_out)

    @property
    def equivalent_tokens_input(self) -> torch.Tensor:
        """(B,) mean visual tokens per layer, counting each layer's input."""
        return equivalent_tokens(self.visual_in)

    def summary(self) -> str:
        if self.dense:
            return f"{self.method}: ran dense ({self.reason})"
        eq = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(self.equivalent_tokens.tolist(),
                                                          self.equivalent_tokens_input.tolist()))
        per_layer = [(s["layer"], (self.visual_out[:, s["layer"]] if s["layer"] >= 0 else self.visual_in[:, 0]).tolist())
                     for s in self.steps]
        notes = "".join(f"; note: {n}" for n in self.notes)
        return (f"{self.method}: visual tokens {self.n_visual.tolist()} -> after layers {per_layer}; "
                f"equivalent tokens (output/input count) {eq}{notes}")


RIGHT_PADDING = ("right padding: inside the language model the shorter sequence is laid out with left padding; "
                 "outputs are returned at the input positions")


UNRATED = "no text token follows the image, so nothing rates its visual tokens; all are kept in samples"


def from_device(method: str, num_layers: int, raw: dict, overhead_seconds: float | None = None) -> Report:
    """The report of a pruned prefill, built when it is asked for (`sparsevlm.report`) from the
    tensors the prefill left on the device, so that the prefill itself never waits to copy them.
    `raw`: "valid", "vis_mask" (B, L) of the input; "raters" (B, L) or None; "layouts": after each
    pruning step s, the input position of each token (−1 for a merged one) and which are valid,
    (B, L_s) each; "counts_in", "counts_out": per layer, the layout it sees / leaves (0: the input's,
    s: after step s); "present" (B, L); "right_padding" () bool; "steps": per pruning step "layer",
    "info" (per-sample tensors), "scores" (B, L_{s−1}) (or (B, V) with "score_index", as in
    `Decision`) or None, "recycled" (B, K) the inserted tokens or None."""
    vis0 = raw["vis_mask"].cpu()
    n_visual = vis0.sum(-1)
    grid0 = (vis0.long().cumsum(-1) - 1).where(vis0, -1)  # each input position's place on the image grid
    # Per layout: the place of each token on the image grid (−1 text, −2 merged) and which are visual.
    places, visual = [grid0], [vis0]
    for index, valid in raw["layouts"]:
        index, valid = index.cpu(), valid.cpu()
        places.append(grid0.gather(1, index.clamp(min=0)).masked_fill_(index < 0, -2))
        visual.append(visual_of(index, valid, vis0))
    counts = [v.sum(-1) for v in visual]
    rep = Report(method=method, num_layers=num_layers, n_tokens=raw["valid"].sum(-1).cpu(), n_visual=n_visual,
                 visual_in=torch.stack([counts[s] for s in raw["counts_in"]], -1),
                 visual_out=torch.stack([counts[s] for s in raw["counts_out"]], -1),
                 raters=[r.nonzero().flatten().tolist() for r in raw["raters"]] if raw["raters"] is not None else [],
                 present=raw["present"].cpu(), overhead_seconds=overhead_seconds)
    for n, s in enumerate(raw["steps"]):
        step = {"layer": s["layer"], **{k: v.cpu() for k, v in s["info"].items()}}
        if s["scores"] is not None:  # scores of the tokens present, placed on the original image grid
            origin, vis = places[n], visual[n]
            if s.get("score_index") is not None:  # scores over the visual tokens: their places first
                idx, ok = (t.cpu() for t in s["score_index"])
                origin, vis = origin.gather(1, idx), vis.gather(1, idx) & ok
            grid = torch.full((len(n_visual), int(n_visual.max())), float("nan"))
            step["scores"] = put(grid, origin, vis & (origin >= 0), s["scores"].float().cpu())
        step["recycled"] = (s["recycled"].sum(-1).cpu() if s["recycled"] is not None
                            else torch.zeros(len(n_visual), dtype=torch.long))
        step["kept"] = [o[m & (o >= 0)].sort().values.tolist() for o, m in zip(places[n + 1], visual[n + 1])]
        rep.steps.append(step)
    if bool(raw["right_padding"]):
        rep.notes.append(RIGHT_PADDING)
    if raw["raters"] is not None:
        unrated = ((n_visual > 0) & ~raw["raters"].cpu().any(-1)).nonzero().flatten().tolist()
        if unrated:
            rep.notes.append(f"{UNRATED} {unrated}")
    return rep


def dense_report(method: str, num_layers: int, n_tokens: torch.Tensor, n_visual: torch.Tensor, reason: str) -> Report:
    counts = n_visual.long()[:, None].expand(-1, num_layers).clone()
    return Report(method=method, num_layers=num_layers, n_tokens=n_tokens, n_visual=n_visual, visual_in=counts,
                  visual_out=counts.clone(), dense=True, reason=reason)


def dense_report_for(model, inputs) -> Report:
    """The report of a dense (unpruned) forward of `inputs` on `model`: every layer sees every visual
    token (image and video tokens). Used where dense runs are accounted like sparsified ones."""
    ids, cfg = inputs["input_ids"], model.config
    tokens = [t for t in (cfg.image_token_id, getattr(cfg, "video_token_id", None)) if t is not None]
    n_visual = sum((ids == t).sum(-1) for t in tokens).cpu()
    mask = inputs.get("attention_mask")
    n_tokens = mask.sum(-1).cpu() if mask is not None else torch.full_like(n_visual, inputs["input_ids"].shape[1])
    return dense_report("dense", model.config.text_config.num_hidden_layers, n_tokens, n_visual, "dense")
