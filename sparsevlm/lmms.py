"""sparsevlm as an lmms-eval model (issue #17): the benchmarks the field reports, with any method.

    python -m lmms_eval eval --model sparsevlm --model_args pretrained=PATH,method=sparsevlm,budget=128 \\
        --tasks pope,gqa --batch_size 8

Installing `sparsevlm[eval]` registers the model through lmms-eval's entry-point group
`lmms_eval.models` (`manifest` below). `model_args`: `pretrained` (a local checkpoint folder of a
family `sparsify` supports (found by `models.family_of`, so a new family needs no change here); `toy`,
the embedded image model, the default; or `toy-video`, the embedded video model), `method` (`dense`,
`sparsevlm` or a baseline, as `sparsevlm eval --method`), `budget` (a LLaVA-1.5 preset, 192 / 128 /
96 / 64, scaled to the model; SparseVLM without a budget runs its rank mode), `tokens` (equivalent
tokens instead of a preset), `device`, `dtype`, `prompt` (a template with `{question}`; default:
the processor's chat template, else LLaVA-1.5's, the toy's own for the toys) and `max_new_tokens`.
On `toy-video`, presets and `tokens` are shares of one clip's 129 visual tokens, as in `sparsevlm eval
--toy video`, and `method` may be a video method (DyCoke, FastVID, VidCom2, HoliTom).

Video documents follow lmms-eval's convention for frames: a task whose yaml sets `metadata: task_type:
video` returns one video's frames (images) from `doc_to_visual`, optionally subsampled to
`sample_frames` evenly spaced ones. The embedded video model reads them through
`toy.video.clip_inputs`; a checkpoint through its processor's `videos=` (transformers' video
processors need torchvision). Video files (paths) are refused: decoding them needs decord or PyAV.

`generate_until` runs batches of `--batch_size` requests, left-padded, each sample pruned with its
own counts (batched = each sample alone is a property of the library, tested); `loglikelihood`
scores a continuation in one forward of context + continuation (so the continuation's words are
among SparseVLM's text raters, as in any one-forward likelihood). Each call logs the
sparsification report — visual tokens, equivalent tokens, prefill FLOPs against dense — through
lmms-eval's metric log, so it lands in the results file under "throughput" beside the scores.

`write_toy_task(folder)` writes a local lmms-eval task built from the embedded evaluation split
(800 questions; `sparsevlm_toy` exact match, `sparsevlm_toy_choice` multiple choice by likelihood)
that loads with no hub: `--include_path folder --tasks sparsevlm_toy`. `write_toy_video_task(folder)`
writes `sparsevlm_toy_video` from the video split (500 questions on 125 clips of 8 frames; exact
match), for `pretrained=toy-video`.
"""
from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

#: the embedded models by their `pretrained` name, and which of `recipes.TOYS` each is
TOY_MODELS = {"toy": "image", "toy-video": "video"}
MODEL_ARGS = ("pretrained", "method", "budget", "tokens", "device", "dtype", "prompt", "max_new_tokens", "batch_size")


def manifest():
    """The entry point lmms-eval reads (`lmms_eval.models` group): model id `sparsevlm`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="sparsevlm", simple_class_path="sparsevlm.lmms.SparseVLMEval")


def _fail(arg: str, message: str):
    return ValueError(f"--model_args {arg}: {message}")


class SparseVLMEval(lmms):
    """A Hugging Face VLM, dense or pruned by any method of this library, for lmms-eval."""

    def __init__(self, pretrained: str = "toy", method: str = "sparsevlm", budget=None, tokens=None,
                 device: str = "cpu", dtype: str = "float32", prompt: str | None = None, max_new_tokens=None,
                 batch_size=1, **unknown) -> None:
        super().__init__()
        from . import sparsify
        from .recipes import BUDGETS, DTYPES, METHOD_NAMES, CliError, check_prompt, load_model, method_config

        if unknown:
            raise _fail(",".join(sorted(unknown)), f"unknown; allowed: {', '.join(MODEL_ARGS)}")
        if method not in METHOD_NAMES:
            raise _fail(f"method={method}", f"unknown method; allowed: {', '.join(METHOD_NAMES)}")
        if dtype not in DTYPES:
            raise _fail(f"dtype={dtype}", f"allowed: {', '.join(DTYPES)}")
        budget, tokens = self._number("budget", budget, int), self._number("tokens", tokens, float)
        if budget is not None and budget not in BUDGETS:
            raise _fail(f"budget={budget}", f"no preset; allowed: {', '.join(map(str, BUDGETS))}")
        if budget is not None and tokens is not None:  # the CLI's --budget / --tokens are exclusive too
            raise _fail(f"budget={budget},tokens={tokens:g}", "give one of the two: a preset or equivalent tokens")
        self.batch_size_per_gpu = self._number("batch_size", batch_size, int) or 1
        self.max_new_tokens = self._number("max_new_tokens", max_new_tokens, int)
        if self.batch_size_per_gpu < 1 or (self.max_new_tokens is not None and self.max_new_tokens < 1):
            raise _fail("batch_size / max_new_tokens", "must be integers >= 1")
        try:
            if prompt is not None:
                check_prompt(prompt)
        except CliError as e:
            raise _fail(f"prompt={prompt}", str(e)) from None
        self.toy = TOY_MODELS.get(pretrained)  # None: a checkpoint folder
        try:
            self.model, self.processor = load_model(None if self.toy else pretrained, device, dtype,
                                                    toy_kind=self.toy or "image")
        except CliError as e:
            raise _fail(f"pretrained={pretrained}", str(e)) from None
        from .recipes import clip_tokens

        try:  # the embedded video model: presets are shares of one clip's tokens, as `sparsevlm eval --toy video`
            self.cfg = method_config(self.model, method, budget, tokens,
                                     n_visual=clip_tokens(self.model) if self.toy == "video" else None)
        except CliError as e:
            raise _fail(f"method={method},budget={budget},tokens={tokens}", str(e)) from None
        self.method = method
        self.template = prompt or self._default_template(pretrained)
        if self.cfg is not None:
            sparsify(self.model, self.cfg)
        self._device = next(self.model.parameters()).device  # under torchrun: this process's GPU
        from .eval import close_process_group_at_exit

        close_process_group_at_exit()  # lmms-eval starts gloo to gather results and leaves it open

    @staticmethod
    def _number(name, value, kind):
        if value is None or value == "" or (isinstance(value, str) and value.lower() == "none"):
            return None
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise _fail(f"{name}={value}", f"must be {'an integer' if kind is int else 'a number'}") from None

    def _default_template(self, pretrained):
        if self.toy == "image":
            from .toy.data import prompt

            return prompt("{question}")
        if self.toy == "video":
            from .toy.video import video_prompt

            return video_prompt("{question}")
        if getattr(self.processor, "chat_template", None):
            return None  # the processor's own chat template
        from .recipes import LLAVA_PROMPT

        return LLAVA_PROMPT

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    # ----------------------------------------------------------------- prompts and batches
    def _prompt(self, context: str, visuals, video: bool = False) -> str:
        """The prompt of one document: its images' (or its video's) placeholders and `context`."""
        if self.template is None:
            content = [{"type": "video"}] if video else [{"type": "image"}] * len(visuals)
            return self.processor.apply_chat_template([{"role": "user", "content": content + [
                {"type": "text", "text": context}]}], add_generation_prompt=True)
        if video:  # one placeholder for the clip: the processor (or clip_inputs) expands it
            token = getattr(self.processor, "video_token", None) or "<video>"
            template = self.template if token in self.template else self.template.replace("<image>", token, 1)
            return template.format(question=context)
        return self.template.replace("<image>", "<image>" * len(visuals), 1).format(question=context)

    def _reads_video(self) -> bool:
        return self.toy == "video" or (getattr(self.model.config, "video_token_id", None) is not None
                                       and getattr(self.processor, "video_processor", None) is not None)

    def _visuals(self, request: Instance):
        """(video, visuals) of one request's document: False and its images, or True and its video's
        frames, uint8 (F, H, W, 3) — a document of a task whose metadata says `task_type: video`."""
        _, _, doc_to_visual, doc_id, task, split = request.args
        meta = request.metadata or {}
        where = f"task {task!r}, document {doc_id}"
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = [v for v in (visuals if isinstance(visuals, (list, tuple)) else [visuals]) if v is not None]
        if not visuals:
            raise ValueError(f"{where}: no image; sparsevlm prunes visual tokens and evaluates image and video "
                             f"questions only")
        if any(isinstance(v, str) for v in visuals):
            raise ValueError(f"{where}: a video file ({visuals[0]}); sparsevlm's lmms-eval model reads a video as "
                             f"its frames: a task with `metadata: task_type: video` whose doc_to_visual returns images")
        if meta.get("task_type") != "video":
            if self.toy == "video":
                raise ValueError(f"{where}: an image; pretrained=toy-video reads videos (a task with `metadata: "
                                 f"task_type: video`, e.g. sparsevlm_toy_video)")
            return False, [v.convert("RGB") if hasattr(v, "convert") else v for v in visuals]
        if not self._reads_video():
            raise ValueError(f"{where}: a video; {type(self.model).__name__} reads no video (models that do: "
                             f"LLaVA-OneVision, Video-LLaVA, LLaVA-NeXT-Video, the Qwen-VLs, pretrained=toy-video)")
        import numpy as np

        frames = [np.asarray(v.convert("RGB") if hasattr(v, "convert") else v) for v in visuals]
        if len(frames) == 1 and frames[0].ndim == 4:  # one array of frames
            frames = list(frames[0])
        if any(f.ndim != 3 or f.shape[-1] != 3 for f in frames) or len({f.shape for f in frames}) > 1:
            raise ValueError(f"{where}: a video's frames must be images of one size (H, W, 3); got shapes "
                             f"{sorted({f.shape for f in frames})}")
        if meta.get("sample_frames"):  # as lmms-eval's llava_onevision: evenly spaced frames
            frames = [frames[i] for i in np.linspace(0, len(frames) - 1, int(meta["sample_frames"]), dtype=int)]
        return True, np.stack(frames)

    def _batches(self, requests: list[Instance], idx: list[int]):
        """Batches of at most `batch_size` of the requests `idx`, in order: (indices, video, visuals).
        A batch holds images, or videos of one frame count and size."""
        for first in range(0, len(idx), self.batch_size):
            chunk = idx[first:first + self.batch_size]
            docs, kinds = {i: self._visuals(requests[i]) for i in chunk}, {}
            for i in chunk:
                video, visuals = docs[i]
                kinds.setdefault((video, visuals.shape if video else None), []).append(i)
            for (video, _), part in kinds.items():
                yield part, video, [docs[i][1] for i in part]

    def _inputs(self, texts: list[str], visuals: list, video: bool = False):
        self.processor.tokenizer.padding_side = "left"
        if video and self.toy == "video":  # the embedded video model: as `sparsevlm eval --toy video` builds them
            from .eval import record_inputs

            records = [{"video": v, "prompt": t} for v, t in zip(visuals, texts)]
            return record_inputs(self.processor, records, self.model.config).to(self._device)
        if video:
            return self.processor(videos=list(visuals), text=texts, return_tensors="pt", padding=True).to(self._device)
        # each sample's images as one list: Gemma 3's processor checks them against its prompt's image tokens
        images = [list(ims) for ims in visuals]
        return self.processor(images=images, text=texts, return_tensors="pt", padding=True).to(self._device)

    def _account(self, inputs, stats: dict) -> None:
        """Add one forward's sparsification report to `stats`."""
        from .flops import dims, report_flops
        from .models import report
        from .report import dense_report_for

        dense = dense_report_for(self.model, inputs)
        rep = report(self.model) if self.cfg is not None else dense
        fd = dims(self.model)
        stats["samples"] += len(rep.n_visual)
        stats["visual"] += float(rep.n_visual.sum())
        stats["equivalent"] += float(rep.equivalent_tokens.sum())
        stats["flops"] += float(report_flops(rep, **fd).sum())
        stats["dense_flops"] += float(report_flops(dense, **fd).sum())

    def _log(self, stats: dict, elapsed: float, new_tokens: int) -> None:
        from lmms_eval.models.model_utils.gen_metrics import log_metrics

        n = max(stats["samples"], 1)
        log_metrics(total_elapsed_time=elapsed, total_gen_tokens=new_tokens,
                    avg_speed=new_tokens / elapsed if elapsed > 0 else 0.0,
                    additional_metrics={"sparsevlm_visual_tokens": stats["visual"] / n,
                                        "sparsevlm_equivalent_tokens": stats["equivalent"] / n,
                                        "sparsevlm_flops_ratio": stats["flops"] / max(stats["dense_flops"], 1.0)})

    @staticmethod
    def _stats():
        return {"samples": 0, "visual": 0.0, "equivalent": 0.0, "flops": 0.0, "dense_flops": 0.0}

    # ----------------------------------------------------------------- lmms-eval's interface
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy (or sampled, with a temperature) answers, cut at the task's `until` strings."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):  # one batch never mixes generation settings
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        stats, start, new_total = self._stats(), time.perf_counter(), 0
        for idx in groups.values():
            for chunk, video, visuals in self._batches(requests, idx):
                texts = [self._prompt(requests[i].args[0], v, video) for i, v in zip(chunk, visuals)]
                kwargs = dict(requests[chunk[0]].args[1] or {})
                until = kwargs.pop("until", None) or []
                until = [until] if isinstance(until, str) else list(until)
                temperature = float(kwargs.pop("temperature", 0) or 0)
                gen = {"max_new_tokens": int(kwargs.pop("max_new_tokens", None) or self.max_new_tokens or 32),
                       "do_sample": temperature > 0}
                if temperature > 0:
                    gen["temperature"] = temperature
                    if kwargs.get("top_p") is not None:
                        gen["top_p"] = float(kwargs["top_p"])
                inputs = self._inputs(texts, visuals, video)
                with torch.no_grad():
                    seq = self.model.generate(**inputs, **gen, pad_token_id=self.processor.tokenizer.pad_token_id)
                self._account(inputs, stats)
                new = seq[:, inputs["input_ids"].shape[1]:]
                new_total += int((new != self.processor.tokenizer.pad_token_id).sum())
                for i, text in zip(chunk, self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)):
                    for stop in until:
                        if stop and stop in text:
                            text = text.split(stop)[0]
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        self._log(stats, time.perf_counter() - start, new_total)
        return out

    def loglikelihood(self, requests: list[Instance]) -> list:
        """`likelihoods` as lmms-eval 0.7.3's scorers read them: (−log p, greedy) — its multiple-choice
        scoring takes the *smallest* number (`argmin`, "we return the actual loss"; its `llava_hf`
        returns the mean token loss), so we give the continuation's negative log-likelihood, summed
        over its tokens. Each pair is wrapped in a `GenerationResult`: the evaluator passes every
        answer through `unwrap_generation_output`, which turns a plain tuple into its string (and
        then compares strings); a GenerationResult's `text` comes back as it is."""
        from lmms_eval.api.instance import GenerationResult

        return [GenerationResult(text=(-score, greedy)) for score, greedy in self.likelihoods(requests)]

    def likelihoods(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """log p(continuation | image, context) and whether greedy decoding would produce it, from
        one forward of context + continuation per request (batched, left-padded)."""
        tok = self.processor.tokenizer
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        stats, start = self._stats(), time.perf_counter()
        for chunk, video, visuals in self._batches(requests, list(range(len(requests)))):
            texts, n_cont = [], []
            for i, vis in zip(chunk, visuals):
                context, target, _, doc_id, task, split = requests[i].args
                doc = self.task_dict[task][split][doc_id]
                cont = target if isinstance(target, str) else target(doc)
                prompt = self._prompt(context, vis, video)
                whole = tok(prompt + cont, add_special_tokens=False)["input_ids"]
                n = len(whole) - len(tok(prompt, add_special_tokens=False)["input_ids"])
                if n < 1:
                    raise ValueError(f"task {task!r}, document {doc_id}: the continuation {cont!r} adds no token")
                texts.append(prompt + cont)
                n_cont.append(n)
            inputs = self._inputs(texts, visuals, video)
            with torch.no_grad():
                logits = self.model(**inputs).logits.float()
            self._account(inputs, stats)
            logp = torch.log_softmax(logits[:, :-1], -1)  # position t predicts token t + 1
            targets = inputs["input_ids"][:, 1:]
            for row, (i, n) in enumerate(zip(chunk, n_cont)):
                lp, tgt = logp[row, -n:], targets[row, -n:]
                score = float(lp.gather(-1, tgt[:, None]).sum())
                greedy = bool((lp.argmax(-1) == tgt).all())
                out[i] = (score, greedy)
                self.cache_hook.add_partial("loglikelihood", requests[i].args, out[i])
        self._log(stats, time.perf_counter() - start, 0)
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("sparsevlm's lmms-eval model answers single-round tasks (generate_until, "
                                  "loglikelihood, multiple_choice)")


# --------------------------------------------------------------------- the embedded split as a task
TASK_YAML = """task: sparsevlm_toy{suffix}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
{extra}metric_list:
  - metric: {metric}
    aggregation: mean
    higher_is_better: true
"""
GENERATE = """doc_to_target: answer
process_results: !function utils.process_results
generation_kwargs:
  max_new_tokens: 2
  do_sample: false
"""
CHOICE = """doc_to_target: !function utils.doc_to_target
doc_to_choice: !function utils.doc_to_choice
target_delimiter: " "
"""


def _write_split(folder: Path, checkpoint, name: str, visual_key: str, limit: int | None) -> Path:
    """An embedded split's questions as `folder/name.jsonl` (each row's `visual_key`, type, question and
    answer; the first `limit`), beside the `utils.py` the task yamls import. Returns the jsonl's path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = json.loads(Path(checkpoint, "eval_split.json").read_text())["questions"][:limit]
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({k: q[k] for k in (visual_key, "type", "question", "answer")}) + "\n"
                            for q in rows))
    (folder / "utils.py").write_text("from sparsevlm.lmms import (doc_to_choice, doc_to_target, doc_to_text, "
                                     "doc_to_visual, process_results, video_doc_to_visual)  # noqa: F401\n")
    return data


def write_toy_task(folder, limit: int | None = None) -> Path:
    """Write the embedded evaluation split as two local lmms-eval tasks into `folder`:
    `sparsevlm_toy` (generate the answer; exact match of its first word, as `sparsevlm eval`) and
    `sparsevlm_toy_choice` (pick the answer among those its question type allows, by likelihood).
    Images are re-rendered from the split's seed when the task runs. Returns the folder."""
    from . import toy

    folder = Path(folder)
    data = _write_split(folder, toy.CHECKPOINT, "sparsevlm_toy", "image_id", limit)
    (folder / "sparsevlm_toy.yaml").write_text(TASK_YAML.format(
        suffix="", data=data.resolve(), output_type="generate_until", extra=GENERATE, metric="exact_match"))
    (folder / "sparsevlm_toy_choice.yaml").write_text(TASK_YAML.format(
        suffix="_choice", data=data.resolve(), output_type="multiple_choice", extra=CHOICE, metric="acc"))
    return folder


VIDEO_TASK_YAML = """task: sparsevlm_toy_video
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.video_doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
process_results: !function utils.process_results
generation_kwargs:
  max_new_tokens: 2
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  task_type: video
"""


def write_toy_video_task(folder, limit: int | None = None) -> Path:
    """Write the embedded video evaluation split as a local lmms-eval task into `folder`:
    `sparsevlm_toy_video` (generate the answer; exact match of its first word, as `sparsevlm eval
    --toy video`), for `pretrained=toy-video`. Each document's visual is its clip's 8 frames (images;
    `metadata: task_type: video`), re-rendered from the split's seed when the task runs. Returns the folder."""
    from . import toy

    folder = Path(folder)
    data = _write_split(folder, toy.VIDEO_CHECKPOINT, "sparsevlm_toy_video", "clip_id", limit)
    (folder / "sparsevlm_toy_video.yaml").write_text(VIDEO_TASK_YAML.format(data=data.resolve()))
    return folder


@lru_cache(maxsize=1)
def _toy_clips() -> dict:
    """{clip id: its frames as images} of the video split (re-rendered and checked by `toy.video_eval_split`)."""
    from . import toy
    from PIL import Image

    return {r["clip_id"]: [Image.fromarray(f) for f in r["video"]] for r in toy.video_eval_split()}


def video_doc_to_visual(doc):
    return _toy_clips()[doc["clip_id"]]


@lru_cache(maxsize=1)
def _toy_images():
    from . import toy
    from PIL import Image

    doc = json.loads(Path(toy.CHECKPOINT, "eval_split.json").read_text())
    images = toy.make_dataset(doc["n_images"], doc["seed"])[1]
    return [Image.fromarray(im) for im in images]


@lru_cache(maxsize=1)
def _answers_by_type() -> dict:
    from . import toy

    doc = json.loads(Path(toy.CHECKPOINT, "eval_split.json").read_text())
    out: dict[str, set] = {}
    for q in doc["questions"]:
        out.setdefault(q["type"], set()).add(q["answer"])
    return {t: sorted(a) for t, a in out.items()}


def doc_to_visual(doc):
    return [_toy_images()[doc["image_id"]]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_choice(doc):
    return _answers_by_type()[doc["type"]]


def doc_to_target(doc):
    return doc_to_choice(doc).index(doc["answer"])


def process_results(doc, results):
    text = results[0].strip()
    return {"exact_match": float((text.split(" ")[0] if text else "") == doc["answer"])}
