"""Select and gather (paper §3.2-3.3): turn per-sample decisions into shorter, batched sequences.

Deciding (scores -> kept positions) is split from applying (gathering hidden states, positions,
masks). Samples of a batch keep different numbers of tokens; the shorter sequences are
left-padded again, the convention of `generate()`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


#: Profiler range of the library's reads of device values (`host_ints`, `host_copy`).
HOST_READ = "sparsevlm::host_read"
#: Work on values already copied to the host (`host_copy`): what it reads waits for no device.
ON_HOST = "sparsevlm::on_host"


_ARANGE: dict = {}


def arange(n: int, device) -> torch.Tensor:
    """0..n−1 as a long tensor: a view of one kept per device (a slice costs one small op, a new
    `torch.arange` a few). Read-only: never write into it."""
    device = torch.device(device)
    kept = _ARANGE.get(device)
    if kept is None or len(kept) < n:
        kept = _ARANGE[device] = torch.arange(max(n, 2 * len(kept) if kept is not None else 1024), device=device)
    return kept[:n]


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of every sample: out[b, i] = x[b, idx[b, i]].

    Shapes: x (B, L, *rest), idx (B, N) -> (B, N, *rest).
    """
    if x.dim() == 2:
        return x.gather(1, idx)
    index = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:])
    return x.gather(1, index)


def put(base: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A copy of `base` with out[b, idx[b, i]] = values[b, i] wherever valid[b, i].

    Shapes: base (B, L), idx (B, N), valid (B, N), values (B, N) -> (B, L).
    """
    B, L = base.shape
    spare = torch.cat([base, base.new_zeros(B, 1)], dim=1)  # invalid entries land in a spare column
    return spare.scatter(1, idx.where(valid, L), values.to(base.dtype))[:, :L]


def mask_to_index(mask: torch.Tensor, width: int | None = None):
    """Positions where `mask` is true, ascending, padded at the end.

    `width`: N, when the caller knows an upper bound on the count (no host read); default: the
    largest count (one read of a device value). Shapes: mask (B, L) bool -> idx (B, N) long (0 where
    padded), valid (B, N) bool.
    """
    if width is None:
        width = host_ints(mask.sum(-1).max())[0] if mask.numel() else 0
    # A stable sort of the negated mask puts the true positions first, in ascending order; the sorted
    # values then say which of the first `width` places are padding.
    padded, idx = torch.sort(~mask, dim=-1, stable=True)  # (B, L)
    padded, idx = padded[:, :width], idx[:, :width]  # (B, N)
    return idx.masked_fill_(padded, 0), padded.logical_not_()


def host_ints(*values: torch.Tensor) -> list[int]:
    """Device integers read on the host in one transfer: the only place the method waits for the
    device. Counted by `sparsevlm bench --profile` as one host read (its "sparsevlm::host_read" range)."""
    with torch.profiler.record_function(HOST_READ):
        return torch.stack([v.reshape(()) for v in values]).long().tolist() if values else []


def host_counts(counts: dict) -> dict:
    """Per-sample device integers {name: (B,)} copied to the host in one transfer (one wait for the
    device, counted like `host_ints`): {name: list of B ints}."""
    with torch.profiler.record_function(HOST_READ):
        rows = torch.stack([c.long() for c in counts.values()]).tolist() if counts else []
    return dict(zip(counts, rows))


def host_copy(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Device tensors copied to the host in one transfer (one wait for the device, counted like
    `host_ints`), each with its shape and dtype (integers below 2^53 and float32 survive exactly)."""
    with torch.profiler.record_function(HOST_READ):
        flat = torch.cat([t.reshape(-1).double() for t in tensors]).cpu()
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view(t.shape).to(t.dtype))
        start += t.numel()
    return out


def to_device(values, device, dtype=None) -> torch.Tensor:
    """Host numbers (a list, nested lists or a host tensor) as a tensor on `device`, copied without
    waiting: `torch.tensor(values, device="cuda")` copies synchronously, which stalls the host until
    the GPU has drained its queue (and `torch.cuda.set_sync_debug_mode` flags it). From pageable host
    memory CUDA stages the data before the call returns, so the host tensor may go at once."""
    t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    return t.to(device, non_blocking=True)


def score_order(scores: torch.Tensor, valid: torch.Tensor):
    """Valid entries from the highest score down (ties to the lower index), invalid ones last:
    `order` (the entries in that order) and `rank` (each entry's place in it). Shapes: scores (B, V),
    valid (B, V) bool -> order (B, V) long, rank (B, V) long."""
    s = torch.where(valid, scores.float(), float("-inf"))
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices  # (B, V)
    rank = torch.empty_like(order).scatter_(-1, order, arange(s.shape[1], s.device).expand(*order.shape))
    return order, rank


def one_hot(index: torch.Tensor, n: int) -> torch.Tensor:
    """`F.one_hot` without its range check, which reads the device twice (min and max) on a CPU.
    Shapes: index (...) long in 0..n−1 -> (..., n) long."""
    return (index[..., None] == torch.arange(n, device=index.device)).long()


def topk_mask(scores: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, groups: torch.Tensor | None = None):
    """The k[b] highest-scoring valid entries of every sample; ties go to the lower index. With
    `groups`, the k[b, g] highest of each group g instead.

    Shapes: scores (B, V), valid (B, V) bool, k (B,) long -> keep (B, V) bool;
            groups (B, V) long in 0..G−1, k (B, G) -> keep (B, V).
    """
    order, rank = score_order(scores, valid)
    if groups is None:
        return (rank < k[:, None]) & valid
    g = groups.clamp(min=0).gather(-1, order)  # (B, V) group of each entry, best first
    member = one_hot(g, k.shape[-1])  # (B, V, G)
    within = (member.cumsum(1) * member).sum(-1) - 1  # rank inside its group
    return torch.zeros_like(valid).scatter(-1, order, within < k.gather(-1, g)) & valid


def split_budget(k: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Split each sample's k[b] among its groups in proportion to their sizes, by largest
    remainders (ties to the lower group). Shapes: k (B,), groups (B, V), valid (B, V) -> (B, G) long."""
    sizes = (one_hot(groups.clamp(min=0), n_groups) * valid[..., None]).sum(1).double()  # (B, G)
    exact = k[:, None].double() * sizes / sizes.sum(-1, keepdim=True).clamp(min=1)
    quota = exact.floor()
    left = (k.double() - quota.sum(-1)).round()  # (B,) seats still to give
    rank = topk_mask(exact - quota, sizes > quota, left.long())  # largest remainders first
    return (quota + rank.double()).long()


@dataclass(frozen=True)
class Layout:
    """Where each slot of the new sequence comes from.

    `src[b, i]` indexes the concatenation [old sequence (L) ; inserted tokens (K)]; `valid` is
    false on left padding; `key` the sorted keys of old and inserted tokens (old token i: i·`stride`;
    the new sequence is their last L'), from which `moved` finds where old tokens went.
    Shapes: src (B, L'), valid (B, L'), key (B, L + K).
    """

    src: torch.Tensor
    valid: torch.Tensor
    key: torch.Tensor | None = None
    stride: int = 1

    def moved(self, idx: torch.Tensor) -> torch.Tensor:
        """Where tokens of the old sequence that stay (at `idx`, (B, N)) are in the new one (B, N)."""
        cut = self.key.shape[1] - self.src.shape[1]
        return torch.searchsorted(self.key, idx * self.stride).sub_(cut).clamp_(0, self.src.shape[1] - 1)

    def apply(self, x: torch.Tensor, inserted: torch.Tensor | None = None) -> torch.Tensor:
        """Gather a per-token tensor (hidden states, position ids, ...) into the new layout; the
        inserted tokens get `inserted`, or, for a 2-D `x`, a number for all of them.

        Shapes: x (B, L, *rest), inserted (B, K, *rest) or None -> (B, L', *rest).
        """
        if isinstance(inserted, (int, float, bool)):  # K = the keys past the old sequence
            x = torch.nn.functional.pad(x, (0, self.key.shape[1] - x.shape[1]), value=inserted)
        elif inserted is not None:
            x = torch.cat([x, inserted.to(x.dtype)], dim=1)
        return gather(x, self.src)

    def apply_ints(self, columns: list, K: int = 0) -> list[torch.Tensor]:
        """Several per-token tensors of integers or booleans in one gather: `columns` holds
        (x (B, L), fill) pairs, fill being what the K inserted tokens get (a number, or (B, K)).
        Returns each gathered (B, L'), in its own dtype."""
        if len(columns) == 1:  # one tensor: gathered as it is
            (x, f), = columns
            return [self.apply(x, f if K else None)]
        packed = torch.stack([x for x, _ in columns], -1)  # (B, L, C) long
        if K:  # what the inserted tokens get, column by column (made on the device: nothing to copy)
            fill = torch.stack([f.to(packed.dtype) if isinstance(f, torch.Tensor)
                                else packed.new_full((packed.shape[0], K), int(f)) for _, f in columns], -1)
            packed = torch.cat([packed, fill], dim=1)  # (B, L + K, C)
        out = gather(packed, self.src).unbind(-1)
        return [o != 0 if x.dtype == torch.bool else o.to(x.dtype) for o, (x, _) in zip(out, columns)]


def plan_layout(keep: torch.Tensor, anchor: torch.Tensor | None, insert_valid: torch.Tensor | None = None,
                width: int | None = None) -> Layout:
    """Plan the shorter sequence: kept tokens in their order, then the inserted tokens placed
    right after position `anchor[b]` (the last visual position), left-padded to the longest.
    `width`: the longest new sequence when the caller knows it (planned before the first layer);
    default: read from the device (one host read).

    Shapes: keep (B, L) bool (false for dropped tokens and padding), anchor (B,) long (read only
            when tokens are inserted), insert_valid (B, K) bool or None -> Layout with src (B, L').
    """
    B, L = keep.shape
    K = 0 if insert_valid is None else insert_valid.shape[1]
    dev = keep.device
    # Integer sort keys: old token i -> i·(K+1); inserted token j -> anchor·(K+1) + 1 + j.
    # Tokens that do not survive get key -1 so that they sort first and become the padding.
    key = (arange(L, dev) * (K + 1)).where(keep, -1)  # (B, L)
    if K:
        ins_key = (anchor.view(B, 1) * (K + 1) + 1 + arange(K, dev)).masked_fill_(~insert_valid, -1)
        key = torch.cat([key, ins_key], dim=1)  # (B, L + K)
    if width is None:
        width = host_ints((key >= 0).sum(-1).max())[0]
    key, src = torch.sort(key, dim=-1, stable=True)  # (B, L + K)
    cut = L + K - width
    if dev.type != "cpu":  # a free check where it runs asynchronously: the longest fills the width exactly
        fits = key[:, cut].max() >= 0
        torch._assert_async(fits & (key[:, cut - 1].max() < 0) if cut else fits,
                            "the planned length differs from what the method kept")
    return Layout(src=src[:, cut:], valid=key[:, cut:] >= 0, key=key, stride=K + 1)


def visual_of(index: torch.Tensor, valid: torch.Tensor, vis0: torch.Tensor) -> torch.Tensor:
    """Which tokens of a pruned sequence are visual: inserted ones (`index` −1) and those at a visual
    input position. Shapes: index (B, L') input position of each token, valid (B, L'), vis0 (B, L)
    the input's visual tokens -> (B, L') bool."""
    return ((index < 0) | vis0.gather(1, index.clamp(min=0))) & valid


def visual_spans(vis_mask: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
    """Which span each visual token belongs to, numbered from 0 in each sample (−1 off visual): a
    span is a run of consecutive visual tokens (one image), cut where `frames` (e.g. M-RoPE's
    temporal position) changes (one video frame). Shapes: vis_mask (B, L), frames (B, L) -> (B, L)."""
    prev = torch.nn.functional.pad(vis_mask, (1, 0))[:, :-1]
    start = vis_mask & ~prev
    if frames is not None:
        start |= vis_mask & prev & (frames != torch.nn.functional.pad(frames, (1, 0))[:, :-1])
    return (start.long().cumsum(-1) - 1).where(vis_mask, -1)


def compact_positions(valid: torch.Tensor) -> torch.Tensor:
    """Positions 0..n−1 over the valid tokens of each sample (padding gets 0), as `generate()`
    numbers a left-padded prompt. Shapes: valid (B, L) -> (B, L) long."""
    return valid.cumsum(-1, dtype=torch.long).sub_(1).clamp_(min=0)
