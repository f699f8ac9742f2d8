"""Synthetic clips for the embedded video model: 8 frames of the toy world's 4×4 grid, a mostly
static scene in which one object may move, one may change colour and up to two may appear.

Everything is procedural and seeded: `make_clips(n, seed)` returns the same clips and questions on
every machine. The background and each object's size, offset and shade are drawn once per clip,
so a patch that nothing touches is pixel-identical from frame to frame (`patch_repeats`).

Each question carries its *focus*: the video tokens it is about, as `frame * CELLS_PER_FRAME + cell`
(the model pools each cell's 2×2 patches into one token; see `data/toy-video/MODEL_CARD.md`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import CELL, CELLS, COLORS, GRID, IMAGE, PATCH, SHAPES, paint, shape_mask

FRAMES = 8
CELLS_PER_FRAME = GRID * GRID  # one pooled video token per grid cell
VIDEO_SYSTEM = "answer the question about the video ."
VIDEO_TOKEN = "<video>"
VIDEO_QUESTION_TYPES = ("color_first", "color_last", "where_last", "moves", "changes", "appears_after",
                        "count_frames", "count_appear")
#: types that one frame answers, types that need several frames, and counting over time
SINGLE_FRAME, MULTI_FRAME, COUNTING = VIDEO_QUESTION_TYPES[:3], VIDEO_QUESTION_TYPES[3:6], VIDEO_QUESTION_TYPES[6:]
VIDEO_WORDS = [VIDEO_TOKEN, "video", "frame", "frames", "first", "last", "which", "moves", "changes", "appears",
               "appear", "after", "in"]


@dataclass(frozen=True)
class Track:
    """One object over the clip: its shape, and per frame its cell and colour (None: not visible)."""
    shape: str
    cells: tuple
    colors: tuple

    def visible(self, f: int) -> bool:
        return self.cells[f] is not None


@dataclass(frozen=True)
class Clip:
    tracks: tuple[Track, ...]
    mover: int | None  # index into tracks
    changer: int | None
    appearers: tuple[int, ...]  # in order of appearance (distinct frames)


@dataclass(frozen=True)
class VideoSample:
    clip_id: int
    clip: Clip
    qtype: str
    question: str
    answer: str
    focus: tuple[int, ...]  # video tokens (frame * 16 + cell) the question is about


def token(frame: int, cell: int) -> int:
    return frame * CELLS_PER_FRAME + cell


def _neighbours(cell: int) -> list[int]:
    r, c = divmod(cell, GRID)
    return [(r + dr) * GRID + c + dc for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
            if 0 <= r + dr < GRID and 0 <= c + dc < GRID]


def make_clip(rng: np.random.Generator) -> Clip:
    """2–4 objects present throughout; with probability 0.8 one of them moves to a free neighbouring
    cell at a frame in 1..7, with 0.8 another changes colour at such a frame; then 0, 1 or 2 objects
    (probabilities 0.2, 0.3, 0.5) appear in free cells, at distinct frames."""
    colors, n = list(COLORS), int(rng.integers(2, 5))
    cells = [int(c) for c in rng.choice(GRID * GRID, size=n, replace=False)]
    objs = [[str(rng.choice(SHAPES)), [c] * FRAMES, [str(rng.choice(colors))] * FRAMES] for c in cells]
    used = set(cells)
    mover = changer = None
    if rng.random() < 0.8:
        movable = [i for i, c in enumerate(cells) if any(nb not in used for nb in _neighbours(c))]
        if movable:
            mover = int(movable[int(rng.integers(len(movable)))])
            free = [nb for nb in _neighbours(cells[mover]) if nb not in used]
            dest, t = int(free[int(rng.integers(len(free)))]), int(rng.integers(1, FRAMES))
            objs[mover][1] = [cells[mover]] * t + [dest] * (FRAMES - t)
            used.add(dest)
    if rng.random() < 0.8 and n > (mover is not None):
        changer = int(rng.choice([i for i in range(n) if i != mover]))
        old = objs[changer][2][0]
        new, t = str(rng.choice([c for c in colors if c != old])), int(rng.integers(1, FRAMES))
        objs[changer][2] = [old] * t + [new] * (FRAMES - t)
    k = int(rng.choice(3, p=[0.2, 0.3, 0.5]))
    times = sorted(int(t) for t in rng.choice(np.arange(1, FRAMES), size=k, replace=False))
    free = [c for c in range(GRID * GRID) if c not in used]
    appear_cells = [int(c) for c in rng.choice(free, size=k, replace=False)]
    appearers = []
    for t, c in zip(times, appear_cells):
        unseen = [s for s in SHAPES if all(o[0] != s for o in objs)]  # a new shape when one is left
        shape, color = str(rng.choice(unseen or list(SHAPES))), str(rng.choice(colors))
        objs.append([shape, [None] * t + [c] * (FRAMES - t), [None] * t + [color] * (FRAMES - t)])
        appearers.append(len(objs) - 1)
    tracks = tuple(Track(s, tuple(cs), tuple(cols)) for s, cs, cols in objs)
    return Clip(tracks, mover, changer, tuple(appearers))


def render_clip(clip: Clip, rng: np.random.Generator) -> np.ndarray:
    """uint8 (FRAMES, IMAGE, IMAGE, 3): one noisy background and one drawing of each object
    (size, offset, shade drawn once), painted wherever and in whatever colour the object has in
    each frame."""
    background = np.full((IMAGE, IMAGE, 3), 30, dtype=np.float64) + rng.normal(0, 6, (IMAGE, IMAGE, 3))
    looks = []
    for t in clip.tracks:
        cy, cx = CELL / 2 + rng.uniform(-1.5, 1.5), CELL / 2 + rng.uniform(-1.5, 1.5)
        looks.append((shape_mask(t.shape, cy, cx, rng.uniform(7.0, 9.5)), rng.uniform(0.85, 1.0)))
    frames = []
    for f in range(FRAMES):
        img = background.copy()
        for t, (mask, shade) in zip(clip.tracks, looks):
            if t.visible(f):
                paint(img, t.cells[f], mask, COLORS[t.colors[f]], shade)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)


def _tokens(clip: Clip, keep) -> tuple[int, ...]:
    """Video tokens of the (track, frame) pairs for which `keep(track, frame)` holds."""
    return tuple(sorted({token(f, t.cells[f]) for t in clip.tracks for f in range(FRAMES)
                         if t.visible(f) and keep(t, f)}))


def _pick(items, rng):
    return items[int(rng.integers(len(items)))]


def ask_video(clip: Clip, qtype: str, rng: np.random.Generator) -> tuple[str, str, tuple[int, ...]] | None:
    """One question of `qtype` about `clip`: (question, answer, focus), or None if the clip cannot
    carry that type (e.g. no shape occurs once)."""
    tracks = clip.tracks
    unique = [i for i, t in enumerate(tracks) if sum(u.shape == t.shape for u in tracks) == 1]
    last = FRAMES - 1
    if qtype in ("color_first", "color_last", "where_last"):
        if not unique:
            return None
        special = clip.changer if qtype != "where_last" else clip.mover  # ask about the event half the time
        i = special if special in unique and rng.random() < 0.5 else _pick(unique, rng)
        t = tracks[i]
        f = 0 if qtype == "color_first" else last
        focus = (token(f, t.cells[f]),) if t.visible(f) else ()
        which = "first" if f == 0 else "last"
        if qtype == "where_last":
            return f"where is the {t.shape} in the last frame", CELLS[t.cells[f]], focus
        return f"what color is the {t.shape} in the {which} frame", t.colors[f] or "nothing", focus
    if qtype in ("moves", "changes"):
        i = clip.mover if qtype == "moves" else clip.changer
        q = "which shape moves" if qtype == "moves" else "which shape changes color"
        if i is None:
            return q, "nothing", _tokens(clip, lambda t, f: True)
        return q, tracks[i].shape, _tokens(clip, lambda t, f: t is tracks[i])
    if qtype == "appears_after":
        named = [j for j, i in enumerate(clip.appearers) if i in unique]
        if not named:
            return None
        followed = [j for j in named if j + 1 < len(clip.appearers)]
        j = _pick(followed if followed and rng.random() < 0.7 else named, rng)
        after = clip.appearers[j + 1] if j + 1 < len(clip.appearers) else None
        about = {clip.appearers[j], after} - {None}
        answer = tracks[after].shape if after is not None else "nothing"
        return (f"what appears after the {tracks[clip.appearers[j]].shape}", answer,
                _tokens(clip, lambda t, f: any(t is tracks[i] for i in about)))
    if qtype == "count_frames":
        if rng.random() < 0.15:  # a combination that may never be seen
            color, shape = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
        else:  # one an object shows in some frame, most often an object that changes or appears
            events = [i for i in (clip.changer, *clip.appearers) if i is not None]
            t = tracks[_pick(events, rng) if events and rng.random() < 0.6 else int(rng.integers(len(tracks)))]
            color, shape = _pick([c for c in t.colors if c is not None], rng), t.shape
        match = lambda t, f: t.shape == shape and t.colors[f] == color  # noqa: E731
        n = sum(any(t.visible(f) and match(t, f) for t in tracks) for f in range(FRAMES))
        return f"in how many frames is there a {color} {shape}", str(n), _tokens(clip, match)
    if qtype == "count_appear":
        return ("how many objects appear", str(len(clip.appearers)),
                _tokens(clip, lambda t, f: any(t is tracks[i] for i in clip.appearers)))
    raise ValueError(f"qtype={qtype!r} is not a video question type; allowed: {', '.join(VIDEO_QUESTION_TYPES)}")


def video_prompt(question: str) -> str:
    """The text the model reads: system words, the video, the question (one <video> word, which
    `clip_inputs` expands into one token per video token)."""
    return f"<s> {VIDEO_SYSTEM} {VIDEO_TOKEN} {question} ? answer :"


def make_clips(n_clips: int, seed: int, questions_per_clip: int = 4):
    """`n_clips` clips with `questions_per_clip` questions each (types drawn uniformly among those
    the clip can carry). Returns (samples, clips uint8 (n_clips, FRAMES, IMAGE, IMAGE, 3))."""
    rng = np.random.default_rng(seed)
    samples, videos = [], []
    for i in range(n_clips):
        clip = make_clip(rng)
        videos.append(render_clip(clip, rng))
        samples += ask_clip(i, clip, rng, questions_per_clip)
    return samples, np.stack(videos)


def ask_clip(clip_id: int, clip: Clip, rng, questions: int) -> list[VideoSample]:
    """`questions` questions about one clip, of distinct types drawn in random order."""
    out = []
    for qtype in rng.permutation(VIDEO_QUESTION_TYPES):
        if len(out) == questions:
            break
        q = ask_video(clip, str(qtype), rng)
        if q is not None:
            out.append(VideoSample(clip_id, clip, str(qtype), *q))
    return out


def word_targets(samples, n_tokens: int = FRAMES * CELLS_PER_FRAME) -> list[dict[int, tuple[int, ...]]]:
    """For each question, the video tokens each of its words names: a colour or shape word the
    tokens showing it (a shape after a colour: that phrase, "red circle"), "first"/"last" every token
    of that frame. Returns per question {word index: tokens}."""
    out = []
    for s in samples:
        words, named = s.question.split(), {}
        for j, w in enumerate(words):
            if w in COLORS:
                named[j] = _tokens(s.clip, lambda t, f: t.colors[f] == w)
            elif w in SHAPES:
                color = words[j - 1] if j and words[j - 1] in COLORS else None
                named[j] = _tokens(s.clip, lambda t, f: t.shape == w and color in (None, t.colors[f]))
            elif w in ("first", "last"):
                f = 0 if w == "first" else FRAMES - 1
                named[j] = tuple(range(token(f, 0), token(f, 0) + CELLS_PER_FRAME))
        out.append(named)
    return out


def object_tokens(clip: Clip) -> tuple[int, ...]:
    """The video tokens that show an object."""
    return _tokens(clip, lambda t, f: True)


def repeated(videos: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """Whether each patch × patch block is pixel-identical to the same block in the previous frame.
    videos: uint8 (N, F, H, W, 3) -> bool (N, F-1, H / patch · W / patch), blocks row by row."""
    n, f, h, w, _ = videos.shape
    p = videos.reshape(n, f, h // patch, patch, w // patch, patch, 3)
    return (p[:, 1:] == p[:, :-1]).all(axis=(3, 5, 6)).reshape(n, f - 1, -1)


def patch_repeats(videos: np.ndarray, patch: int = PATCH) -> float:
    """Share of the vision tower's patches (patch × patch pixels) that are pixel-identical to the
    same patch in the previous frame, over all consecutive frame pairs. videos: uint8 (N, F, H, W, 3)."""
    return float(repeated(videos, patch).mean())


def token_similarity(features, n_frames: int = FRAMES):
    """Cosine similarity of the same video token in consecutive frames. features: (N, F·T[+1], D)
    (a closing newline token, if any, is ignored) -> (N, F-1, T)."""
    import torch

    per = features.shape[1] // n_frames
    x = features[:, :n_frames * per].reshape(features.shape[0], n_frames, per, -1)
    return torch.nn.functional.cosine_similarity(x[:, 1:], x[:, :-1], dim=-1)


def tokens_per_video(config, n_frames: int = FRAMES) -> int:
    """How many video tokens a clip of `n_frames` becomes in a model (`frame_layout`)."""
    from ..models.llava import frame_layout

    side, lead, newline = frame_layout(config)
    return n_frames * (lead + side * side) + int(newline)


def frames_to_pixels(videos: np.ndarray, mean, std):
    """uint8 (N, F, H, W, 3) -> normalised float (N, F, 3, H, W), per frame as the image processor
    normalises an image (rescale to [0, 1], subtract the mean, divide by the std)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(videos)).float() / 255.0
    x = (x - torch.tensor(mean)) / torch.tensor(std)
    return x.permute(0, 1, 4, 2, 3).contiguous()


def clip_inputs(processor, videos, prompts, config) -> dict:
    """Model inputs for clips: each prompt's <video> word expanded into the model's video tokens,
    tokenised and left-padded, and `pixel_values_videos` normalised with the processor's image
    statistics. transformers' video processors need torchvision; this needs only NumPy and torch."""
    if len(videos) != len(prompts):
        raise ValueError(f"videos and prompts must pair up; got {len(videos)} videos and {len(prompts)} prompts")
    n = tokens_per_video(config, np.asarray(videos[0]).shape[0])
    for p in prompts:
        if p.count(VIDEO_TOKEN) != 1:
            raise ValueError(f"each prompt needs exactly one {VIDEO_TOKEN} word; got {p!r}")
    text = [p.replace(VIDEO_TOKEN, " ".join([VIDEO_TOKEN] * n)) for p in prompts]
    ip = processor.image_processor
    inputs = processor.tokenizer(text, return_tensors="pt", padding=True)
    inputs["pixel_values_videos"] = frames_to_pixels(np.stack([np.asarray(v) for v in videos]), ip.image_mean,
                                                     ip.image_std)
    return inputs


def video_vocabulary() -> list[str]:
    """The image model's words, then the words videos add (their ids extend the image model's)."""
    from .data import vocabulary

    return list(dict.fromkeys(vocabulary() + VIDEO_WORDS))


def video_config(image_config, max_positions: int = 256):
    """A LLaVA-OneVision config around the image model's parts: its CLIP tower and Llama language model
    (the vocabulary extended by `VIDEO_WORDS`), each frame's 8×8 patches pooled 2×2 to one token per
    grid cell, one newline token closing the video."""
    from transformers import LlamaConfig, LlavaOnevisionConfig

    vocab = video_vocabulary()
    text = image_config.text_config.to_dict()
    text.update(vocab_size=len(vocab), max_position_embeddings=max_positions)
    for k in ("architectures", "_name_or_path", "transformers_version", "model_type"):
        text.pop(k, None)
    return LlavaOnevisionConfig(
        vision_config=image_config.vision_config.to_dict(), text_config=LlamaConfig(**text),
        image_token_id=vocab.index("<image>"), video_token_id=vocab.index(VIDEO_TOKEN), vision_feature_layer=-1,
        vision_feature_select_strategy="default", image_grid_pinpoints=[[IMAGE, IMAGE]],
        projector_hidden_act=image_config.projector_hidden_act, tie_word_embeddings=False)


EVAL_SEED, EVAL_CLIPS = 20_261_206, 125  # 500 questions


def clips_digest(videos) -> str:
    return hashlib.sha256(np.ascontiguousarray(videos).tobytes()).hexdigest()


def write_video_split(path, seed: int = EVAL_SEED, n_clips: int = EVAL_CLIPS) -> None:
    """Freeze the video evaluation split: its questions, answers, focus and the digest of its frames."""
    samples, videos = make_clips(n_clips, seed)
    questions = [{"clip_id": s.clip_id, "type": s.qtype, "question": s.question, "answer": s.answer,
                  "focus": list(s.focus)} for s in samples]
    doc = {"seed": seed, "n_clips": n_clips, "frames_sha256": clips_digest(videos), "questions": questions}
    Path(path, "eval_split.json").write_text(json.dumps(doc) + "\n")


def video_eval_split(path, limit: int | None = None) -> list[dict]:
    """The video evaluation split as records for `sparsevlm.eval.evaluate`: video (uint8 (F, H, W, 3)),
    prompt, question, answer, type, focus, clip_id (also as image_id, for `focus_mass`). Frames are
    re-rendered from the stored seed and checked against the stored digest."""
    doc = json.loads(Path(path, "eval_split.json").read_text())
    _, videos = make_clips(doc["n_clips"], doc["seed"])
    if clips_digest(videos) != doc["frames_sha256"]:
        raise RuntimeError("the evaluation clips re-rendered here differ from the shipped split "
                           "(a NumPy random-stream change?); re-run sparsevlm.toy.video.write_video_split")
    records = [{**q, "image_id": q["clip_id"], "video": videos[q["clip_id"]], "prompt": video_prompt(q["question"])}
               for q in doc["questions"]]
    return records[:limit] if limit is not None else records


def redundancy(model, processor, videos) -> dict:
    """Temporal redundancy of clips (uint8 (N, F, H, W, 3)) on `model`: the share of tower patches
    and of grid cells (one pooled video token each) pixel-identical to the previous frame, and the
    mean cosine similarity of the same token in consecutive frames — at the vision tower's output
    (per patch) and entering the language model (per pooled token, the newline left out) — over
    all tokens, over those whose pixels repeat and over those whose pixels changed."""
    import torch

    ip = processor.image_processor
    pixels = frames_to_pixels(videos, ip.image_mean, ip.image_std)
    with torch.no_grad():
        out = model.model.get_video_features(pixel_values_videos=pixels, output_hidden_states=True)
        tower = out.hidden_states[-1][:, 1:].reshape(len(videos), -1, out.hidden_states[-1].shape[-1])
        pooled = out.pooler_output
    same_patch, same_cell = torch.from_numpy(repeated(videos)), torch.from_numpy(repeated(videos, CELL))
    out = {"patch_repeat_fraction": round(float(same_patch.float().mean()), 4),
           "cell_repeat_fraction": round(float(same_cell.float().mean()), 4)}
    for name, cos, same in (("tower_patch_cosine", token_similarity(tower), same_patch),
                            ("video_token_cosine", token_similarity(pooled), same_cell)):
        out[name] = {"all": round(float(cos.mean()), 4), "repeated": round(float(cos[same].mean()), 4),
                     "changed": round(float(cos[~same].mean()), 4)}
    return out
