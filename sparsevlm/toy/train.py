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

from ..scores import rater_attention
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
    mask = mask.clone()
    vis_pos = (ids == VOCAB["<image>"]).long().argmax(1)  # first visual position per row
    for b, s in enumerate(samples):
        if torch.rand((), generator=generator).item() >= rate:
            continue
        keep = {p for o in s.objects for p in cell_patches(o.cell)} | set(s.focus)
        keep |= set(words[b].sum(0).nonzero().flatten().tolist())
        free = torch.tensor(sorted(set(range(PATCHES ** 2)) - keep), dtype=torch.long)
        n = int(round(torch.rand((), generator=generator).item() * len(free)))
        hide = free[torch.randperm(len(free), generator=generator)[:n]]
        mask[b, vis_pos[b] + hide] = 0
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


def grounding_loss(layer, captured, ids, mask, position_embeddings, query_pos, targets):
    """Cross-entropy between head 0's attention from each query position, renormalised over the
    visual tokens, and the normalised target patches. Shapes: query_pos (B, R), targets (B, R, V)."""
    B, L = ids.shape
    hd = layer.head_dim
    q = captured["q"].view(B, L, -1, hd).transpose(1, 2)[:, :1]  # head 0: (B, 1, L, Dh)
    k = captured["k"].view(B, L, -1, hd).transpose(1, 2)[:, :1]
    rope = sys.modules[type(layer).__module__].apply_rotary_pos_emb
    q, k = rope(q, k, *position_embeddings)
    q = q.gather(2, query_pos[:, None, :, None].expand(-1, 1, -1, hd))  # (B, 1, R, Dh)
    has = targets.sum(-1) > 0  # (B, R)
    vis_idx = torch.stack([(row == VOCAB["<image>"]).nonzero().flatten() for row in ids])  # (B, V)
    attn = rater_attention(q, k, query_pos, has, mask.bool(), vis_idx, torch.ones_like(vis_idx, dtype=torch.bool),
                           layer.scaling)  # (B, R, V)
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
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
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
    model.train()
    gen = torch.Generator().manual_seed(args.seed + 1)
    history = []
    for step in range(args.steps):
        samples, images = make_dataset(args.batch_images, args.seed * 1_000_003 + 10_000 + step, args.questions)
        ids, mask, pixels, image_of, answer, focus, words = lm_batch(samples, images, mean, std, args.ground_phrases)
        if args.drop_background > 0:
            mask = drop_background(samples, ids, mask, focus, words, args.drop_background, gen)
        positions = compact_positions(mask.bool())  # as generate() numbers a left-padded prompt
        vis = tower_tokens(model, pixels)
        logits = model(inputs_embeds=embed(model, ids, pixels, image_of, vis), attention_mask=mask,
                       position_ids=positions, use_cache=False, logits_to_keep=2).logits  # (B, 2, vocab)
        answer_loss = F.cross_entropy(logits[:, 0], answer) + F.cross_entropy(
            logits[:, 1], torch.full_like(answer, VOCAB["</s>"]))
        # Question words attend to what they name (layer g); the last prompt token to the question's
        # focus (a later layer, where it can read those words).
        B, L = ids.shape
        word_pos = torch.arange(L - 12, L - 4).expand(B, -1)  # the question's last words (max 8)
        last = torch.full((B, 1), L - 2)
        ground = grounding_loss(word_layer, captured["word"], ids, mask, captured["pe"], word_pos,
                                words.gather(1, word_pos[..., None].expand(-1, -1, words.shape[-1]))) + \
            grounding_loss(focus_layer, captured["focus"], ids, mask, captured["pe"], last, focus[:, None])
        loss = answer_loss + args.ground_weight * ground
        if args.align_weight > 0:  # keep the projected patches readable as the words describing them
            loss = loss + args.align_weight * alignment_loss(
                model, vis, patch_words(samples, len(images), objects=args.align_objects))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        acc = (logits[:, 0].argmax(-1) == answer).float().mean().item()
        history.append((answer_loss.item(), ground.item(), acc))
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            a, g, c = np.mean(history[-50:], axis=0)
            log(f"step {step + 1}/{args.steps} answer loss {a:.3f} grounding {g:.3f} train acc {c:.3f} "
                f"({time.time() - start:.0f} s)")
    for h in hooks:
        h.remove()
    model.eval()
    return {"model": model, "processor": build_processor(mean, std), "tower_acc": tower_acc, "align_loss": align_loss,
            "seconds": time.time() - start, "final_train_acc": float(np.mean([h[2] for h in history[-100:]]))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/toy-llava", help="checkpoint folder to write (default data/toy-llava)")
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
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    main()
