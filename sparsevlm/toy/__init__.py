"""The embedded default: a tiny LLaVA trained on synthetic visual questions, its evaluation
split, and a planted tensor example. Everything loads offline from `data/`."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..utils import shipped_path
from .data import IMAGE, QUESTION_TYPES, REGION_TYPES, make_dataset, naming_words, prompt
from .tensors import planted_example, walkthrough

# LLaVA-1.5-7B prunes after layers 2, 6, 15 (presets) or 2, 6, 15, 19 (rank mode) of 32, i.e.
# early, early, middle, later. The toy model has 8 layers and its layer 1 is where question words
# learn to look at what they name, so the same shape maps onto layers 1, 2, 4 (and 5). Budgets
# scale with the visual tokens: 576 -> 64, so 192/128/96/64 become about 21/14/11/7.
TOY_LAYERS = (1, 2, 4)
TOY_RANK_LAYERS = (1, 2, 4, 5)
TOY_VISUAL = 64
TOY_NUM_LAYERS = 8
TOY_RANK_SCALE = 13.5 * TOY_VISUAL / 576  # 1.5: the reference's keep-per-rank, scaled
CHECKPOINT = shipped_path("data", "toy-llava")
VIDEO_CHECKPOINT = shipped_path("data", "toy-video")
EVAL_SEED, EVAL_IMAGES = 20_250_501, 200


def preset(tokens: int, **overrides):
    """`SparseVLMConfig.preset(tokens)` scaled to the toy model: layers 1, 2, 4, budgets × 64/576."""
    from ..config import SparseVLMConfig

    return SparseVLMConfig.preset(tokens, n_visual=TOY_VISUAL, num_layers=TOY_NUM_LAYERS, **overrides)


def rank_config(**overrides):
    """The paper's rank mode on the toy model: layers 1, 2, 4, 5, scale 13.5 × 64/576."""
    from ..config import SparseVLMConfig

    return SparseVLMConfig(**{"pruning_layers": TOY_RANK_LAYERS, "scale": TOY_RANK_SCALE, **overrides})


def load(path: str | Path = CHECKPOINT, dtype=None):
    """(model, processor) of a toy checkpoint, from local files only, model in eval mode: the image
    model (LlavaForConditionalGeneration) or the video model (LlavaOnevisionForConditionalGeneration),
    told apart by the folder's config."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaOnevisionForConditionalGeneration
    from transformers.utils import logging

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"path={str(path)!r} holds no checkpoint (config.json missing); "
                                "train one with `python -m sparsevlm.toy.train --out PATH`")
    bar = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # the weight-loading bar goes to stderr; the model is tiny
    try:
        kind = json.loads((path / "config.json").read_text()).get("model_type")
        cls = LlavaOnevisionForConditionalGeneration if kind == "llava_onevision" else LlavaForConditionalGeneration
        model = cls.from_pretrained(path, local_files_only=True, dtype=dtype)
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    finally:
        if bar:
            logging.enable_progress_bar()
    return model.eval(), processor


def load_video(path: str | Path = VIDEO_CHECKPOINT, dtype=None):
    """(model, processor) of the embedded video model (`data/toy-video`): clips go in through
    `sparsevlm.toy.video.clip_inputs`, or as records of `video_eval_split` to `sparsevlm.eval.evaluate`."""
    return load(path, dtype)


def video_eval_split(path: str | Path = VIDEO_CHECKPOINT, limit: int | None = None) -> list[dict]:
    """The shipped video evaluation split (500 questions on 125 clips), re-rendered and checked
    against its digest: records with video, prompt, question, answer, type, focus, clip_id."""
    from .video import video_eval_split as split

    return split(path, limit)


def images_digest(images) -> str:
    return hashlib.sha256(images.tobytes()).hexdigest()


def write_eval_split(path: str | Path = CHECKPOINT, seed: int = EVAL_SEED, n_images: int = EVAL_IMAGES) -> None:
    """Freeze the evaluation split: its questions, answers, focus and the digest of its images."""
    samples, images = make_dataset(n_images, seed)
    questions = [{"image_id": s.image_id, "type": s.qtype, "question": s.question, "answer": s.answer,
                  "focus": list(s.focus)} for s in samples]
    doc = {"seed": seed, "n_images": n_images, "images_sha256": images_digest(images), "questions": questions}
    Path(path, "eval_split.json").write_text(json.dumps(doc) + "\n")


def eval_split(path: str | Path = CHECKPOINT, limit: int | None = None) -> list[dict]:
    """The shipped evaluation split as records for `sparsevlm.eval.evaluate`: image (uint8 array),
    prompt, question, answer, type, focus, image_id. Images are re-rendered from the stored seed and
    checked against the stored digest."""
    doc = json.loads(Path(path, "eval_split.json").read_text())
    samples, images = make_dataset(doc["n_images"], doc["seed"])
    if images_digest(images) != doc["images_sha256"]:
        raise RuntimeError("the evaluation images re-rendered here differ from the shipped split "
                           "(a NumPy random-stream change?); re-run sparsevlm.toy.write_eval_split")
    records = [{**q, "image": images[q["image_id"]], "prompt": prompt(q["question"])} for q in doc["questions"]]
    return records[:limit] if limit is not None else records


__all__ = ["load", "load_video", "video_eval_split", "VIDEO_CHECKPOINT", "preset", "rank_config", "TOY_LAYERS", "TOY_RANK_LAYERS", "eval_split", "write_eval_split", "make_dataset", "planted_example", "walkthrough",
           "IMAGE", "QUESTION_TYPES", "REGION_TYPES", "CHECKPOINT", "naming_words"]
