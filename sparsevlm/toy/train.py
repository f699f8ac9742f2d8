"""Train the embedded toy model (see data/toy-llava/MODEL_CARD.md for the exact commands):

    python -m sparsevlm.toy.train --out stage1
    python -m sparsevlm.toy.train --init stage1 --seed 1 --steps 2500 --lr 3e-4 --out stage2
    python -m sparsevlm.toy.train --init stage2 --seed 2 --steps 2500 --lr 3e-4 --ground-phrases --out stage3
    python -m sparsevlm.toy.train --init stage3 --seed 3 --steps 2500 --lr 3e-4 --ground-phrases \
        --focus-layer 3 --out stage4
    python -m sparsevlm.toy.train --init stage4 --seed 4 --steps 2500 --lr 5e-4 --ground-phrases \
        --focus-layer 3 --out data/toy-llava

Recipe (deterministic given --seed; see the model card for what it means):
1. Vision tower, as LLaVA's pre-trained CLIP: a per-patch objective — predict each patch's colour,
   shape, row and column from its output token — then freeze it.
2. Projector + language model: cross-entropy on the answer word and end-of-sequence, plus a
   grounding loss (weight --ground-weight) on head 0 of two layers: in layer --ground-layer each
   question word that names something visible (a colour, a shape, a cell; with --ground-phrases a
   shape word after a colour word names the phrase, "red circle") attends to the patches it names;
   in layer --focus-layer (default: the next one) the last prompt token attends to the patches the
   question is about. Each is a cross-entropy between the head's attention, renormalised over the
   visual tokens, and the normalised target patches. Background-token dropout (--drop-background):
   on a share of the questions a random fraction of the visual tokens that show no object and that
   the question does not name are hidden (masked, positions renumbered around them).
3. Optionally continue from a checkpoint (--init) with fresh data (another --seed) and a lower
   learning rate.
4. Optionally align the projector with the word embeddings (--align-steps, --align-weight), as
   LLaVA-1.5 first trains its projector on captions: each patch's projected token is read through
   the language model's embedding matrix (logits = token · Eᵀ) and trained towards the words that
   describe it — its object's colour, shape (singular and plural) and cell, or only its cell for
   empty background — with label smoothing over those describing words only (no patch is ever
   described by "what", "?" or ":"). First --align-steps steps train the projector alone on
   this loss (language model frozen), then the recipe above adds it with weight --align-weight.

Video (`--video`; data/toy-video/MODEL_CARD.md has the exact command): the image model's tower,
projector and language model placed in LLaVA-OneVision (each frame's patches pooled 2×2, one token
per grid cell). Tower and projector stay frozen, so a pool of --clips clips is encoded once; the
language model trains on fresh questions about them with the same answer, grounding and
background-dropout losses. A clip's questions share one copy of it in a packed row (`video_pack`).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

from ..select import compact_positions
from ..utils import seed_everything
from .data import (CELLS, COLORS, GRID, PATCHES, SHAPES, cell_patches, make_dataset, naming_words, prompt,
                   vocabulary)
from .model import build_config, build_processor

VOCAB = {w: i for i, w in enumerate(vocabulary())}


def image_stats(seed: int, n: int = 512):
    """Per-channel mean and std of the generated images (as CLIP's processor uses ImageNet's)."""
    _, images = make_dataset(n, seed + 7, questions_per_image=1)
    x = images.reshape(-1, 3) / 255.0
    return x.mean(0).round(4).tolist(), x.std(0).round(4).tolist()


def to_pixels(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W), as the processor computes it."""
    x = torch.from_numpy(images).float() / 255.0
    x = (x - torch.tensor(mean)) / torch.tensor(std)
    return x.permute(0, 3, 1, 2).contiguous()


def image_objects(samples) -> dict[int, tuple]:
    """The objects of each image in a batch of questions (several questions share an image)."""
    return {s.image_id: s.objects for s in samples}


def patch_targets(samples, n_images):
    """Per-patch colour (0 = none), shape (0 = none) of the object in the patch's grid cell."""
    color = torch.zeros(n_images, PATCHES * PATCHES, dtype=torch.long)
    shape = torch.zeros_like(color)
    for image, objects in image_objects(samples).items():
        for o in objects:
            color[image, list(cell_patches(o.cell))] = list(COLORS).index(o.color) + 1
            shape[image, list(cell_patches(o.cell))] = SHAPES.index(o.shape) + 1
    return color, shape


def train_tower(model, args, mean, std, log):
    tower = model.model.vision_tower
    d = tower.config.hidden_size
    heads = torch.nn.ModuleDict({"color": torch.nn.Linear(d, len(COLORS) + 1), "shape": torch.nn.Linear(d, len(SHAPES) + 1),
                                 "row": torch.nn.Linear(d, PATCHES), "col": torch.nn.Linear(d, PATCHES)})
    opt = torch.optim.AdamW(list(tower.parameters()) + list(heads.parameters()), lr=args.lr)
    idx = torch.arange(PATCHES * PATCHES)
    row, col = (idx // PATCHES).expand(args.tower_batch, -1), (idx % PATCHES).expand(args.tower_batch, -1)
    for step in range(args.tower_steps):
        samples, images = make_dataset(args.tower_batch, args.seed * 100_003 + step, questions_per_image=1)
        color, shape = patch_targets(samples, len(images))
        h = tower(pixel_values=to_pixels(images, mean, std), output_hidden_states=True).hidden_states[-1][:, 1:]
        logits = {k: head(h) for k, head in heads.items()}
        targets = {"color": color, "shape": shape, "row": row, "col": col}
        loss = sum(F.cross_entropy(logits[k].flatten(0, 1), targets[k].flatten()) for k in heads)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == args.tower_steps:
            acc = {k: round((logits[k].argmax(-1) == targets[k]).float().mean().item(), 3) for k in heads}
            log(f"tower {step + 1}/{args.tower_steps} loss {loss.item():.3f} acc {acc}")
    tower.requires_grad_(False)
    return acc


def lm_batch(samples, images, mean, std, phrases: bool = False):
    """Teacher-forced batch: left-padded prompt + answer; returns inputs, targets, focus."""
    seqs = [[VOCAB[w] for w in prompt(s.question).replace("<image>", " ".join(["<image>"] * PATCHES ** 2)).split()]
            + [VOCAB[s.answer]] for s in samples]
    L = max(map(len, seqs))
    ids = torch.full((len(seqs), L), VOCAB["<pad>"], dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, L - len(s):] = torch.tensor(s)
        mask[b, L - len(s):] = 1
    answer = torch.tensor([VOCAB[s.answer] for s in samples])
    focus = torch.zeros(len(samples), PATCHES ** 2)
    for b, s in enumerate(samples):
        focus[b, list(s.focus)] = 1.0
    image_of = torch.tensor([s.image_id for s in samples])
    return ids, mask, to_pixels(images, mean, std), image_of, answer, focus, word_targets(samples, ids, phrases)


def word_targets(samples, ids, phrases: bool = False):
    """For every question word that names something visible — a colour, a shape, a cell — the
    patches it names. With `phrases`, a shape word after a colour word names the phrase ("red
    circle": the red circles only; nothing if there is none). Shapes: ids (B, L) -> targets
    (B, L, V), all zero for other tokens."""
    targets = torch.zeros(*ids.shape, PATCHES ** 2)
    L = ids.shape[1]
    for b, s in enumerate(samples):
        words = s.question.split()
        first = L - 4 - len(words)  # question words sit before "? answer :" and the answer word
        for j, w in enumerate(words):
            if w in COLORS:
                objs = [o for o in s.objects if o.color == w]
            elif w.rstrip("s") in SHAPES:
                objs = [o for o in s.objects if o.shape == w.rstrip("s")]
                if phrases and j > 0 and words[j - 1] in COLORS:
                    objs = [o for o in objs if o.color == words[j - 1]]
            elif w in CELLS:
                targets[b, first + j, list(cell_patches(CELLS.index(w)))] = 1.0
                continue
            else:
                continue
            for o in objs:
                targets[b, first + j, list(cell_patches(o.cell))] = 1.0
    return targets


def drop_background(samples, ids, mask, focus, words, rate: float, generator) -> torch.Tensor:
    """Background-token dropout: for a share `rate` of the questions, hide a random fraction (uniform
    in [0, 1]) of the visual tokens that show no object and that the question does not name, by
    zeroing them in the attention mask (positions are then renumbered around them, as compact
    pruning does). The model learns that empty background carries nothing and that a location is
    read from a token's content rather than its position. Returns the new mask."""
    free = []
    for b, s in enumerate(samples):
        keep = {p for o in s.objects for p in cell_patches(o.cell)} | set(s.focus)
        keep |= set(words[b].sum(0).nonzero().flatten().tolist())
        free.append(sorted(set(range(PATCHES ** 2)) - keep))
    return hide_tokens(mask, (ids == VOCAB["<image>"]).long().argmax(1), free, rate, generator)


def hide_tokens(mask, first, free, rate: float, generator) -> torch.Tensor:
    """For a share `rate` of the rows, zero a random fraction (uniform in [0, 1]) of the visual tokens
    listed in `free[b]` (offsets from row b's first visual position `first[b]`). Returns the new mask."""
    mask = mask.clone()
    for b, offsets in enumerate(free):
        if torch.rand((), generator=generator).item() >= rate:
            continue
        offsets = torch.tensor(offsets, dtype=torch.long)
        n = int(round(torch.rand((), generator=generator).item() * len(offsets)))
        hide = offsets[torch.randperm(len(offsets), generator=generator)[:n]]
        mask[b, first[b] + hide] = 0
    return mask


def patch_words(samples, n_images, smoothing: float = 0.1, objects: bool = False) -> torch.Tensor:
    """Per-patch description as a distribution over the vocabulary: the words naming the object in
    the patch's cell (colour, shape, plural shape, cell; with `objects` also the word "objects") or
    only the cell for empty background, mixed with `smoothing` spread evenly over the words that can
    describe a patch (colours, shapes, cells). Words that describe no patch ("what", "?", ":")
    get no mass: a patch is never described by them. Shapes: -> (n_images, V, vocab)."""
    target = torch.zeros(n_images, PATCHES ** 2, len(VOCAB))
    for cell in range(GRID * GRID):
        target[:, list(cell_patches(cell)), VOCAB[CELLS[cell]]] = 1.0
    for image, objs in image_objects(samples).items():
        for o in objs:
            for w in (o.color, o.shape, o.shape + "s") + (("objects",) if objects else ()):
                target[image, list(cell_patches(o.cell)), VOCAB[w]] = 1.0
    target = target / target.sum(-1, keepdim=True)
    content = torch.zeros(len(VOCAB))
    content[[VOCAB[w] for w in naming_words()]] = 1.0
    return (1 - smoothing) * target + smoothing * content / content.sum()


def alignment_loss(model, vis, targets) -> torch.Tensor:
    """Cross-entropy between each projected patch read through the word embeddings
    (softmax over the vocabulary of token · Eᵀ) and its description. Shapes: vis (N, V, D_vision),
    targets (N, V, vocab)."""
    feats = model.model.multi_modal_projector(vis)  # (N, V, D)
    logits = feats @ model.get_input_embeddings().weight.T  # (N, V, vocab)
    return -(targets * logits.log_softmax(-1)).sum(-1).mean()


def tower_tokens(model, pixels) -> torch.Tensor:
    with torch.no_grad():
        return model.model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-1][:, 1:]


def align_projector(model, args, mean, std, log) -> float:
    """LLaVA-like first stage: only the projector trains, on the patch descriptions."""
    proj = model.model.multi_modal_projector
    opt = torch.optim.AdamW(proj.parameters(), lr=args.align_lr, weight_decay=0.0)
    for step in range(args.align_steps):
        samples, images = make_dataset(args.tower_batch, args.seed * 100_019 + 50_000 + step, questions_per_image=1)
        loss = alignment_loss(model, tower_tokens(model, to_pixels(images, mean, std)),
                              patch_words(samples, len(images), objects=args.align_objects))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == args.align_steps:
            log(f"align {step + 1}/{args.align_steps} loss {loss.item():.3f}")
    return loss.item()


def embed(model, ids, pixels, image_of, vis=None):
    """Embeddings entering the language model, running the frozen tower once per image (not once
    per question) and the trainable projector on its output, spliced in as LlavaModel does."""
    vis = tower_tokens(model, pixels) if vis is None else vis
    feats = model.model.multi_modal_projector(vis)[image_of]  # (B, V, D)
    embeds = model.get_input_embeddings()(ids)
    slot = (ids == VOCAB["<image>"])[..., None]
    return embeds.masked_scatter(slot, feats.to(embeds.dtype))


def grounding_loss(layer, captured, ids, mask, position_embeddings, query_pos, targets, visual_id: int = VOCAB["<image>"],
                   allowed=None):
    """Cross-entropy between head 0's attention from each query position, renormalised over the
    visual tokens (id `visual_id`), and the normalised target patches. Shapes: query_pos (B, R),
    targets (B, R, V). The attention is causal over `mask` (B, L), or follows `allowed` (B, 1, L, L)
    where given. Zero when no query has a target."""
    B, L = ids.shape
    hd = layer.head_dim
    q = captured["q"].view(B, L, -1, hd).transpose(1, 2)[:, :1]  # head 0: (B, 1, L, Dh)
    k = captured["k"].view(B, L, -1, hd).transpose(1, 2)[:, :1]
    rope = sys.modules[type(layer).__module__].apply_rotary_pos_emb
    q, k = rope(q, k, *position_embeddings)
    q = q.gather(2, query_pos[:, None, :, None].expand(-1, 1, -1, hd))  # (B, 1, R, Dh)
    has = targets.sum(-1) > 0  # (B, R)
    if not has.any():
        return q.sum() * 0.0
    vis_idx = torch.stack([(row == visual_id).nonzero().flatten() for row in ids])  # (B, V)
    # Head 0's causal attention over the sequence (padding and hidden tokens blocked), then its visual
    # columns. Written out here, differentiably: the library's `rater_attention` works in place.
    logits = (q[:, 0] @ k[:, 0].transpose(1, 2)) * layer.scaling  # (B, R, L)
    if allowed is None:
        blocked = (torch.arange(L) > query_pos[..., None]) | ~mask.bool()[:, None, :]
    else:
        blocked = ~allowed[:, 0].gather(1, query_pos[..., None].expand(-1, -1, L))
    attn = logits.masked_fill(blocked, float("-inf")).softmax(-1)
    attn = attn.gather(-1, vis_idx[:, None, :].expand(-1, attn.shape[1], -1))  # (B, R, V)
    p = attn / attn.sum(-1, keepdim=True).clamp(min=1e-9)
    target = targets / targets.sum(-1, keepdim=True).clamp(min=1)
    return -(target * p.clamp(min=1e-9).log()).sum(-1)[has].mean()


def grounding_layers(args, num_layers: int) -> int:
    """The focus layer (default: the one after --ground-layer), checked against the model's layers."""
    focus_at = args.ground_layer + 1 if args.focus_layer is None else args.focus_layer
    if not 0 <= args.ground_layer < focus_at < num_layers:
        raise ValueError(f"need 0 <= --ground-layer < --focus-layer < {num_layers} (the model's layers), got "
                         f"--ground-layer {args.ground_layer}, --focus-layer {focus_at}")
    return focus_at


def lm_optimizer(model, lr: float, steps: int):
    """AdamW on the trainable parameters: 100 warm-up steps, then cosine decay to 0 at `steps`."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return params, opt, sched


def capture_grounded(model, args):
    """Hooks keeping the queries and keys of the two grounded layers (--ground-layer, --focus-layer)
    and the rotary embeddings, for `grounding_loss`. Returns (word layer, focus layer, captured, hooks)."""
    text = model.model.language_model
    focus_at = grounding_layers(args, len(text.layers))
    word_layer, focus_layer = text.layers[args.ground_layer].self_attn, text.layers[focus_at].self_attn
    captured = {"word": {}, "focus": {}, "pe": None}
    hooks = []
    for name, attn in (("word", word_layer), ("focus", focus_layer)):
        for proj in ("q", "k"):
            hooks.append(getattr(attn, f"{proj}_proj").register_forward_hook(
                lambda m, i, o, name=name, proj=proj: captured[name].__setitem__(proj, o)))
    hooks.append(word_layer.register_forward_pre_hook(
        lambda m, a, kw: captured.__setitem__("pe", kw["position_embeddings"]), with_kwargs=True))
    return word_layer, focus_layer, captured, hooks


def answer_and_grounding(model, embeds, ids, mask, answer, words, focus, grounded, visual_id: int = VOCAB["<image>"],
                         n_words: int = 8):
    """One teacher-forced forward pass: logits of the answer and end-of-sequence positions (B, 2,
    vocab), their cross-entropy, and the grounding loss — question words (the last `n_words`) attend
    to what they name at the word layer, the last prompt token to the question's focus at the focus
    layer, where it can read those words. `grounded`: `capture_grounded`'s layers and captures."""
    word_layer, focus_layer, captured = grounded
    positions = compact_positions(mask.bool())  # as generate() numbers a left-padded prompt
    logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                   logits_to_keep=2).logits  # (B, 2, vocab)
    answer_loss = F.cross_entropy(logits[:, 0], answer) + F.cross_entropy(
        logits[:, 1], torch.full_like(answer, VOCAB["</s>"]))
    B, L = ids.shape
    word_pos = torch.arange(L - 4 - n_words, L - 4).expand(B, -1)  # before "? answer :" and the answer
    last = torch.full((B, 1), L - 2)
    ground = grounding_loss(word_layer, captured["word"], ids, mask, captured["pe"], word_pos,
                            words.gather(1, word_pos[..., None].expand(-1, -1, words.shape[-1])), visual_id) + \
        grounding_loss(focus_layer, captured["focus"], ids, mask, captured["pe"], last, focus[:, None], visual_id)
    return logits, answer_loss, ground


def optimise(loss, params, opt, sched) -> None:
    """One step: gradients, clipped to norm 1, AdamW, learning-rate schedule."""
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()


def log_progress(history, step: int, steps: int, start: float, log) -> None:
    if (step + 1) % 50 == 0 or step + 1 == steps:
        a, g, c = np.mean(history[-50:], axis=0)
        log(f"step {step + 1}/{steps} answer loss {a:.3f} grounding {g:.3f} train acc {c:.3f} "
            f"({time.time() - start:.0f} s)")


def train(args, log=print) -> dict:
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    torch.use_deterministic_algorithms(True)
    start = time.time()
    if args.init:  # continue from a checkpoint: its frozen tower, projector, LM and normalisation
        from transformers import AutoProcessor

        model = LlavaForConditionalGeneration.from_pretrained(args.init, local_files_only=True)
        ip = AutoProcessor.from_pretrained(args.init, local_files_only=True).image_processor
        mean, std = list(ip.image_mean), list(ip.image_std)
        model.model.vision_tower.requires_grad_(False)
        tower_acc = json.loads(Path(args.init, "training.json").read_text()).get("tower_acc")
    else:
        mean, std = image_stats(args.seed)
        model = LlavaForConditionalGeneration(build_config(layers=args.layers, hidden=args.hidden))
        tower_acc = train_tower(model, args, mean, std, log)
    model.config._attn_implementation = "sdpa"
    align_loss = align_projector(model, args, mean, std, log) if args.align_steps else None
    params, opt, sched = lm_optimizer(model, args.lr, args.steps)
    word_layer, focus_layer, captured, hooks = capture_grounded(model, args)
    model.train()
    gen = torch.Generator().manual_seed(args.seed + 1)
    history = []
    for step in range(args.steps):
        samples, images = make_dataset(args.batch_images, args.seed * 1_000_003 + 10_000 + step, args.questions)
        ids, mask, pixels, image_of, answer, focus, words = lm_batch(samples, images, mean, std, args.ground_phrases)
        if args.drop_background > 0:
            mask = drop_background(samples, ids, mask, focus, words, args.drop_background, gen)
        vis = tower_tokens(model, pixels)
        logits, answer_loss, ground = answer_and_grounding(
            model, embed(model, ids, pixels, image_of, vis), ids, mask, answer, words, focus,
            (word_layer, focus_layer, captured))
        loss = answer_loss + args.ground_weight * ground
        if args.align_weight > 0:  # keep the projected patches readable as the words describing them
            loss = loss + args.align_weight * alignment_loss(
                model, vis, patch_words(samples, len(images), objects=args.align_objects))
        optimise(loss, params, opt, sched)
        acc = (logits[:, 0].argmax(-1) == answer).float().mean().item()
        history.append((answer_loss.item(), ground.item(), acc))
        log_progress(history, step, args.steps, start, log)
    for h in hooks:
        h.remove()
    model.eval()
    return {"model": model, "processor": build_processor(mean, std), "tower_acc": tower_acc, "align_loss": align_loss,
            "seconds": time.time() - start, "final_train_acc": float(np.mean([h[2] for h in history[-100:]]))}


def video_model_from(image, seed: int):
    """A LLaVA-OneVision video model holding the image model's tower, projector, language model and
    head; the rows of the words videos add start at the mean word embedding (plus noise of 0.02)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from .video import video_config

    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(video_config(image.config))
    state = image.state_dict()
    g = torch.Generator().manual_seed(seed)
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        old = state[key]
        new = old.mean(0) + 0.02 * torch.randn(model.config.text_config.vocab_size - len(old), old.shape[1], generator=g)
        state[key] = torch.cat([old, new])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing != ["model.image_newline"] or unexpected:
        raise RuntimeError(f"the image model does not map onto the video model: missing {missing}, unexpected {unexpected}")
    return model


def video_features(model, videos, mean, std, batch: int = 32) -> torch.Tensor:
    """The frozen tower, projector and 2× pooling on uint8 clips (N, F, H, W, 3): (N, F·16, D), the
    video tokens before the closing newline."""
    from .video import frames_to_pixels

    with torch.no_grad():
        return torch.cat([model.model.get_video_features(pixel_values_videos=frames_to_pixels(videos[i:i + batch], mean, std))
                          .pooler_output[:, :-1] for i in range(0, len(videos), batch)])


def video_pack(samples, vocab, rate: float, generator) -> dict:
    """Teacher-forced batch in which each clip's questions share one copy of the clip: a row is the
    system words and the clip's video tokens, then each question with "? answer :" and its answer.
    A block mask lets each question see the clip and itself only, and each question's positions
    continue from the clip's: every question is computed exactly as alone after that prefix (the
    prefix is computed once instead of once per question). Background dropout (`rate`) hides, per
    clip, a random fraction of the video tokens that show no object and that none of its questions
    names or is about (masked as keys, positions renumbered around them).

    Returns ids (B, L), allowed (B, 1, L, L) bool, positions (B, L), and per question (B, Q): the
    positions of ":" and of the answer, the answer id and a validity mask; word queries (B, W) with
    their targets (B, W, V) and the ":" targets (B, Q, V) over the V video tokens (newline last)."""
    from .video import CELLS_PER_FRAME, FRAMES, VIDEO_TOKEN, object_tokens, video_prompt, word_targets

    n_vis = FRAMES * CELLS_PER_FRAME + 1  # the pooled tokens and the closing newline
    by_clip: dict[int, list] = {}
    for sample, named in zip(samples, word_targets(samples)):
        by_clip.setdefault(sample.clip_id, []).append((sample, named))
    prefix = video_prompt("").split(VIDEO_TOKEN)[0].split() + [VIDEO_TOKEN] * n_vis
    first_vis = prefix.index(VIDEO_TOKEN)
    rows = []
    for group in by_clip.values():
        keep = set(object_tokens(group[0][0].clip))
        for sample, named in group:
            keep |= set(sample.focus) | {t for toks in named.values() for t in toks}
        free = sorted(set(range(FRAMES * CELLS_PER_FRAME)) - keep)
        hidden = hide_tokens(torch.ones(1, len(prefix), dtype=torch.long), [first_vis], [free], rate, generator)[0]
        rows.append((group, hidden))
    Q = max(len(g) for g, _ in rows)
    L = max(len(prefix) + sum(len(s.question.split()) + 4 for s, _ in g) for g, _ in rows)
    W = max(len(s.question.split()) for g, _ in rows for s, _ in g)
    B = len(rows)
    ids = torch.full((B, L), vocab["<pad>"], dtype=torch.long)
    allowed = torch.zeros(B, L, L, dtype=torch.bool)
    positions = torch.zeros(B, L, dtype=torch.long)
    out = {k: torch.zeros(B, Q, dtype=torch.long) for k in ("colon", "answer_pos", "answer")}
    out["valid"] = torch.zeros(B, Q, dtype=torch.bool)
    word_pos, word_tgt = torch.zeros(B, Q * W, dtype=torch.long), torch.zeros(B, Q * W, n_vis)
    focus_tgt = torch.zeros(B, Q, n_vis)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    for b, (group, hidden) in enumerate(rows):
        P = len(prefix)
        ids[b, :P] = torch.tensor([vocab[w] for w in prefix])
        kept = hidden.bool()
        allowed[b, :P, :P] = causal[:P, :P] & kept[None, :]
        positions[b, :P] = kept.long().cumsum(0) - 1
        start = P
        for q, (sample, named) in enumerate(group):
            words = sample.question.split()
            seg = words + ["?", "answer", ":", sample.answer]
            end = start + len(seg)
            ids[b, start:end] = torch.tensor([vocab[w] for w in seg])
            allowed[b, start:end, :P] = kept[None, :]
            allowed[b, start:end, start:end] = causal[:len(seg), :len(seg)]
            positions[b, start:end] = int(kept.sum()) + torch.arange(len(seg))
            out["colon"][b, q], out["answer_pos"][b, q] = end - 2, end - 1
            out["answer"][b, q], out["valid"][b, q] = vocab[sample.answer], True
            focus_tgt[b, q, list(event_focus(sample))] = 1.0
            word_pos[b, q * W:q * W + len(words)] = start + torch.arange(len(words))
            for j, toks in named.items():
                word_tgt[b, q * W + j, list(toks)] = 1.0
            start = end
    allowed |= torch.eye(L, dtype=torch.bool)  # padding and hidden rows see themselves (no empty softmax)
    return {"ids": ids, "allowed": allowed[:, None], "positions": positions, **out, "word_pos": word_pos,
            "word_tgt": word_tgt, "focus_tgt": focus_tgt, "events": event_labels([g for g, _ in rows], rows),
            "first_vis": first_vis}


#: what a video token shows, judged from its frame and the frames before it (a causal model can know no more):
#: an empty cell, a cell an object has left, an object as it was in the first frame, one that has moved,
#: one whose colour has changed, one absent from the first frame
EVENT_ROLES = ("empty", "vacated", "static", "moved", "changed", "appeared")


def event_labels(groups, rows) -> torch.Tensor:
    """Per row, the role (`EVENT_ROLES`) of each video token; -100 (ignored) on tokens hidden by
    background dropout. A role only names what frames up to the token's own show: the mover's tokens
    before it moves are "static". Shapes: -> (B, FRAMES · 16)."""
    from .video import CELLS_PER_FRAME, FRAMES, token

    labels = torch.zeros(len(groups), FRAMES * CELLS_PER_FRAME, dtype=torch.long)
    for b, (group, hidden) in enumerate(rows):
        clip = group[0][0].clip
        for f in range(FRAMES):
            for t in clip.tracks:
                if f and t.visible(0) and all(u.cells[f] != t.cells[0] for u in clip.tracks):
                    labels[b, token(f, t.cells[0])] = EVENT_ROLES.index("vacated")
        for t in clip.tracks:
            for f in range(FRAMES):
                if not t.visible(f):
                    continue
                role = "appeared" if not t.visible(0) else "moved" if t.cells[f] != t.cells[0] else \
                    "changed" if t.colors[f] != t.colors[0] else "static"
                labels[b, token(f, t.cells[f])] = EVENT_ROLES.index(role)
        vis_hidden = hidden[-FRAMES * CELLS_PER_FRAME - 1:-1] == 0
        labels[b, vis_hidden] = -100
    return labels


def event_focus(sample) -> tuple[int, ...]:
    """The ":" grounding target of a question in training: its focus, except that "moves" and
    "changes" point at the subject's tokens after the event, the only ones that can show it."""
    from .video import FRAMES, token

    clip = sample.clip
    i = clip.mover if sample.qtype == "moves" else clip.changer if sample.qtype == "changes" else None
    if i is None:
        return sample.focus
    t = clip.tracks[i]
    after = tuple(token(f, t.cells[f]) for f in range(FRAMES)
                  if (t.cells[f] != t.cells[0] if sample.qtype == "moves" else t.colors[f] != t.colors[0]))
    return after or sample.focus


def video_step(model, batch, feats, clip_of, video_id: int, grounded, events=None):
    """One teacher-forced forward pass on a `video_pack` batch: the answer and end-of-sequence
    cross-entropy of every question, and the grounding loss (question words at the word layer, each
    question's ":" at the focus layer). With `events` = (layer, linear head): the event loss, the
    cross-entropy of the head reading each video token's object role (`EVENT_ROLES`) from that
    layer's output. Returns (answer logits (N, vocab) of the valid questions, their answers, answer
    loss, grounding loss, event loss or None)."""
    word_layer, focus_layer, captured = grounded
    ids, valid = batch["ids"], batch["valid"]
    out = model.model.language_model(inputs_embeds=embed_video(model, ids, feats, clip_of, video_id),
                                     attention_mask=batch["allowed"], position_ids=batch["positions"],
                                     use_cache=False, output_hidden_states=events is not None)
    hidden = out.last_hidden_state
    event_loss = None
    if events is not None:
        layer, head = events
        first, n = batch["first_vis"], batch["events"].shape[1]
        event_loss = F.cross_entropy(head(out.hidden_states[layer + 1][:, first:first + n]).flatten(0, 1),
                                     batch["events"].flatten())
    pick = lambda pos: hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))[valid]  # noqa: E731
    logits = model.lm_head(pick(batch["colon"]))
    eos = model.lm_head(pick(batch["answer_pos"]))
    answer = batch["answer"][valid]
    answer_loss = F.cross_entropy(logits, answer) + F.cross_entropy(eos, torch.full_like(answer, VOCAB["</s>"]))
    common = dict(visual_id=video_id, allowed=batch["allowed"])
    ground = grounding_loss(word_layer, captured["word"], ids, None, captured["pe"], batch["word_pos"],
                            batch["word_tgt"], **common) + \
        grounding_loss(focus_layer, captured["focus"], ids, None, captured["pe"], batch["colon"],
                       batch["focus_tgt"] * valid[..., None], **common)
    return logits, answer, answer_loss, ground, event_loss


def embed_video(model, ids, feats, clip_of, video_id: int):
    """Embeddings entering the language model: each clip's precomputed video tokens and the
    (trainable) newline spliced in at the video positions, as LlavaOnevisionModel does."""
    vis = torch.cat([feats[clip_of], model.model.image_newline.expand(len(clip_of), 1, -1)], 1)
    embeds = model.get_input_embeddings()(ids)
    return embeds.masked_scatter((ids == video_id)[..., None], vis.to(embeds.dtype))


def clip_pool(model, n: int, seed: int, mean, std, log, chunk: int = 256):
    """`n` training clips (seeded) and their frozen video tokens, rendered and encoded once."""
    from .video import make_clip, render_clip

    rng = np.random.default_rng(seed)
    clips, feats = [], []
    for start in range(0, n, chunk):
        part = [make_clip(rng) for _ in range(min(chunk, n - start))]
        videos = np.stack([render_clip(c, rng) for c in part])
        clips += part
        feats.append(video_features(model, videos, mean, std))
        log(f"clips {len(clips)}/{n} encoded")
    return clips, torch.cat(feats)


def train_video(args, log=print) -> dict:
    """The video recipe: the image model's parts in LLaVA-OneVision (tower and projector frozen, their
    pooled video tokens computed once for a pool of clips), then the language model trained on fresh
    questions about those clips with the answer, grounding and background-dropout losses above."""
    from transformers import AutoConfig

    from . import CHECKPOINT, load
    from .model import build_tokenizer
    from .video import VIDEO_TOKEN, ask_clip, video_vocabulary

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    torch.use_deterministic_algorithms(True)
    start = time.time()
    init = args.init or CHECKPOINT
    base, processor = load(init)
    mean, std = list(processor.image_processor.image_mean), list(processor.image_processor.image_std)
    if AutoConfig.from_pretrained(init, local_files_only=True).model_type == "llava_onevision":
        model = base  # continue a video model
    else:
        model = video_model_from(base, args.seed)
    model.config._attn_implementation = "sdpa"
    model.model.vision_tower.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(False)
    vocab = {w: i for i, w in enumerate(video_vocabulary())}
    video_id = vocab[VIDEO_TOKEN]
    clips, feats = clip_pool(model, args.clips, args.seed * 1_000_003 + 20_000, mean, std, log)
    events = None
    if args.event_weight > 0:  # a linear probe trained with the model, not kept
        events = (args.event_layer, torch.nn.Linear(model.config.text_config.hidden_size, len(EVENT_ROLES)))
    params, opt, sched = lm_optimizer(torch.nn.ModuleList([model] + ([events[1]] if events else [])), args.lr,
                                      args.steps)
    word_layer, focus_layer, captured, hooks = capture_grounded(model, args)
    model.train()
    gen = torch.Generator().manual_seed(args.seed + 1)
    history = []
    for step in range(args.steps):
        qrng = np.random.default_rng([args.seed, step])
        picked = qrng.choice(len(clips), size=args.batch_clips, replace=False)
        samples = [s for i in picked for s in ask_clip(int(i), clips[int(i)], qrng, args.questions)]
        batch = video_pack(samples, vocab, args.drop_background, gen)
        clip_of = torch.tensor([int(i) for i in picked])
        logits, answer, answer_loss, ground, event_loss = video_step(
            model, batch, feats, clip_of, video_id, (word_layer, focus_layer, captured), events)
        loss = answer_loss + args.ground_weight * ground
        optimise(loss if event_loss is None else loss + args.event_weight * event_loss, params, opt, sched)
        history.append((answer_loss.item(), ground.item(), (logits.argmax(-1) == answer).float().mean().item()))
        log_progress(history, step, args.steps, start, log)
    for h in hooks:
        h.remove()
    model.eval()
    tokenizer = build_tokenizer(video_vocabulary(), video_token=VIDEO_TOKEN)
    return {"model": model, "processor": build_processor(mean, std, tokenizer), "seconds": time.time() - start,
            "final_train_acc": float(np.mean([h[2] for h in history[-100:]]))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", action="store_true",
                   help="train the video model (LLaVA-OneVision around the image model --init, default "
                        "data/toy-llava) on clips; see data/toy-video/MODEL_CARD.md")
    p.add_argument("--out", default=None,
                   help="checkpoint folder to write (default data/toy-llava, with --video data/toy-video)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and order (default 0)")
    p.add_argument("--steps", type=int, default=4500, help="language-model training steps (default 4500)")
    p.add_argument("--tower-steps", type=int, default=300, help="vision-tower steps (default 300)")
    p.add_argument("--tower-batch", type=int, default=64, help="images per vision-tower step (default 64)")
    p.add_argument("--batch-images", type=int, default=16, help="images per language-model step (default 16)")
    p.add_argument("--questions", type=int, default=4, help="questions per image (default 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--layers", type=int, default=8, help="language-model layers (default 8)")
    p.add_argument("--hidden", type=int, default=128, help="language-model width (default 128)")
    p.add_argument("--ground-layer", type=int, default=1, help="layer whose head 0 is grounded (default 1)")
    p.add_argument("--ground-weight", type=float, default=0.5, help="weight of the grounding loss (default 0.5)")
    p.add_argument("--focus-layer", type=int, default=None,
                   help="layer whose head 0 grounds the last prompt token on the question's focus "
                        "(default: --ground-layer + 1)")
    p.add_argument("--ground-phrases", action="store_true",
                   help="ground a shape word after a colour word on the phrase (\"red circle\": the red circles) "
                        "instead of on every object of that shape")
    p.add_argument("--drop-background", type=float, default=0.5,
                   help="share of questions trained with background-token dropout (default 0.5; 0 = off)")
    p.add_argument("--init", default=None,
                   help="continue from this checkpoint folder (skips the tower stage; use another --seed "
                        "for fresh data)")
    p.add_argument("--align-steps", type=int, default=0,
                   help="projector-only steps aligning projected patches with the words describing them, "
                        "before the language-model steps (default 0 = none)")
    p.add_argument("--align-lr", type=float, default=3e-3, help="learning rate of those steps (default 3e-3)")
    p.add_argument("--align-objects", action="store_true",
                   help="describe an object's patches also by the word \"objects\" (what \"how many objects "
                        "are there\" asks about)")
    p.add_argument("--align-weight", type=float, default=0.0,
                   help="weight of that alignment loss during the language-model steps (default 0)")
    p.add_argument("--clips", type=int, default=4000,
                   help="--video: training clips, rendered and encoded once (default 4000)")
    p.add_argument("--batch-clips", type=int, default=16, help="--video: clips per step (default 16)")
    p.add_argument("--event-weight", type=float, default=0.0,
                   help="--video: weight of the event loss — a linear probe on --event-layer's output reads "
                        "each video token's object role (static, moves, changes, appears) (default 0 = off)")
    p.add_argument("--event-layer", type=int, default=2, help="--video: layer of the event loss (default 2)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    args = p.parse_args(argv)
    args.out = args.out or ("data/toy-video" if args.video else "data/toy-llava")
    if args.video:
        return main_video(args)
    layers = args.layers  # checked before the vision-tower stage, from the layer count the model will have
    if args.init:
        try:
            layers = json.loads(Path(args.init, "config.json").read_text())["text_config"]["num_hidden_layers"]
        except (OSError, ValueError, KeyError) as e:
            p.error(f"--init {args.init}: no readable LLaVA config.json ({e.__class__.__name__})")
    try:
        grounding_layers(args, layers)
    except ValueError as e:
        p.error(str(e))
    out = train(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    path = Path(args.out)
    path.mkdir(parents=True, exist_ok=True)
    out["model"].save_pretrained(path)
    out["processor"].save_pretrained(path)
    info = {"args": vars(args), "seconds": round(out["seconds"], 1), "tower_acc": out["tower_acc"],
            "final_train_acc": round(out["final_train_acc"], 4), "align_loss": out["align_loss"],
            "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "python": platform.python_version()}
    if args.init:  # keep the record of the stage this one continued
        info["init_training"] = json.loads(Path(args.init, "training.json").read_text())
    (path / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    print(json.dumps(finalize(path), indent=2))


def main_video(args):
    for name in ("clips", "batch_clips", "steps", "questions"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_clips > args.clips:
        raise SystemExit(f"--batch-clips ({args.batch_clips}) must not exceed --clips ({args.clips})")
    out = train_video(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    path = Path(args.out)
    path.mkdir(parents=True, exist_ok=True)
    out["model"].save_pretrained(path)
    out["processor"].save_pretrained(path)
    info = {"args": vars(args), "seconds": round(out["seconds"], 1), "final_train_acc": round(out["final_train_acc"], 4),
            "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "python": platform.python_version()}
    from . import CHECKPOINT

    init = Path(args.init or CHECKPOINT)
    if (init / "training.json").exists():
        info["init_training"] = json.loads((init / "training.json").read_text())
    (path / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))

    print(json.dumps(finalize_video(path), indent=2))


def finalize(path) -> dict:
    """Freeze the evaluation split beside the checkpoint, evaluate the checkpoint as loaded from
    disk, and record dense accuracy per type, the rater precision (share of SparseVLM's raters that
    name a colour, shape or cell) and the question-dependence of the raters' attention
    (results.json; tests demand that the shipped model reproduces it exactly)."""
    from ..eval import accuracy_by_type, evaluate, focus_mass, question_dependence, rater_precision, rater_words
    from . import eval_split, load, naming_words, write_eval_split

    write_eval_split(path)
    model, processor = load(path)
    records = eval_split(path)
    acc = accuracy_by_type(evaluate(model, processor, records, progress=False))
    results = {"n_questions": len(records), "dense_accuracy": {k: round(float(v), 4) for k, v in acc.items()},
               "rater_precision": round(rater_precision(rater_words(model, processor, records), naming_words()), 4),
               "question_dependence": {}, "focus_mass": {}}
    for layer in range(model.config.text_config.num_hidden_layers):
        fm = focus_mass(model, processor, records, layer)
        results["question_dependence"][layer] = round(question_dependence(fm), 4)
        results["focus_mass"][layer] = round(float(fm["mass"].mean()), 4)
    Path(path, "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results



def finalize_video(path) -> dict:
    """Freeze the video evaluation split beside the checkpoint, evaluate the checkpoint as loaded from
    disk (dense accuracy per type with 95 % bootstrap intervals) and measure temporal redundancy on
    the split's clips (results.json; tests tie the shipped model to it)."""
    from ..eval import accuracy_by_type, accuracy_ci, evaluate
    from . import load
    from .video import (COUNTING, MULTI_FRAME, SINGLE_FRAME, VIDEO_QUESTION_TYPES, redundancy, video_eval_split,
                        write_video_split)

    write_video_split(path)
    model, processor = load(path)
    records = video_eval_split(path)
    df = evaluate(model, processor, records, progress=False)
    acc = accuracy_by_type(df)
    per_type = {}
    for qtype in (*VIDEO_QUESTION_TYPES, "all"):
        part = df if qtype == "all" else df[df["type"] == qtype]
        low, high = accuracy_ci(part)
        per_type[qtype] = {"n": len(part), "accuracy": round(float(acc[qtype]), 4), "low": round(low, 4),
                           "high": round(high, 4)}
    groups = {name: round(float(df[df["type"].isin(types)]["correct"].mean()), 4)
              for name, types in (("single_frame", SINGLE_FRAME), ("multi_frame", MULTI_FRAME), ("counting", COUNTING))}
    videos = np.stack(list({r["clip_id"]: r["video"] for r in records}.values()))  # each clip once
    results = {"n_questions": len(records), "n_clips": len({r["clip_id"] for r in records}),
               "dense_accuracy": {k: v["accuracy"] for k, v in per_type.items()}, "dense_by_type": per_type,
               "dense_by_group": groups, "correct": "".join("1" if c else "0" for c in df["correct"]),
               "redundancy": redundancy(model, processor, videos)}
    Path(path, "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
