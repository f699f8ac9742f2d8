"""sparsevlm as an lmms-eval model (issue #17): the benchmarks the field reports, with any method.

    python -m lmms_eval eval --model sparsevlm --model_args pretrained=PATH,method=sparsevlm,budget=128 \\
        --tasks pope,gqa --batch_size 8

Installing `sparsevlm[eval]` registers the model through lmms-eval's entry-point group
`lmms_eval.models` (`manifest` below). `model_args`: `pretrained` (a local checkpoint folder of a
family `sparsify` supports, or `toy`, the embedded model: the default), `method` (`dense`,
`sparsevlm` or a baseline, as `sparsevlm eval --method`), `budget` (a LLaVA-1.5 preset, 192 / 128 /
96 / 64, scaled to the model; SparseVLM without a budget runs its rank mode), `tokens` (equivalent
tokens instead of a preset), `device`, `dtype`, `prompt` (a template with `{question}`; default:
the processor's chat template, else LLaVA-1.5's, the toy's own for the toy) and `max_new_tokens`.

`generate_until` runs batches of `--batch_size` requests, left-padded, each sample pruned with its
own counts (batched = each sample alone is a property of the library, tested); `loglikelihood`
scores a continuation in one forward of context + continuation (so the continuation's words are
among SparseVLM's text raters, as in any one-forward likelihood). Each call logs the
sparsification report — visual tokens, equivalent tokens, prefill FLOPs against dense — through
lmms-eval's metric log, so it lands in the results file under "throughput" beside the scores.

`write_toy_task(folder)` writes a local lmms-eval task built from the embedded evaluation split
(800 questions; `sparsevlm_toy` exact match, `sparsevlm_toy_choice` multiple choice by likelihood)
that loads with no hub: `--include_path folder --tasks sparsevlm_toy`.
"""
from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

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
        try:
            self.model, self.processor = load_model(None if pretrained == "toy" else pretrained, device, dtype)
        except CliError as e:
            raise _fail(f"pretrained={pretrained}", str(e)) from None
        try:
            self.cfg = method_config(self.model, method, budget, tokens)
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
        if pretrained == "toy":
            from .toy.data import prompt

            return prompt("{question}")
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
    def _prompt(self, context: str, n_images: int) -> str:
        if self.template is None:
            content = [{"type": "image"}] * n_images + [{"type": "text", "text": context}]
            return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                      add_generation_prompt=True)
        return self.template.replace("<image>", "<image>" * n_images, 1).format(question=context)

    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = [v for v in (visuals if isinstance(visuals, (list, tuple)) else [visuals]) if v is not None]
        if not visuals:
            raise ValueError(f"task {task!r}, document {doc_id}: no image; sparsevlm prunes visual tokens and "
                             f"evaluates image questions only")
        if any(isinstance(v, str) for v in visuals):
            raise ValueError(f"task {task!r}, document {doc_id}: a video path; the lmms-eval model of sparsevlm "
                             f"reads images (videos: use the Python API with a processor's frames)")
        return [v.convert("RGB") if hasattr(v, "convert") else v for v in visuals]

    def _inputs(self, texts: list[str], images: list[list]):
        flat = [im for ims in images for im in ims]
        self.processor.tokenizer.padding_side = "left"
        return self.processor(images=flat, text=texts, return_tensors="pt", padding=True).to(self._device)

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
            for first in range(0, len(idx), self.batch_size):
                chunk = idx[first:first + self.batch_size]
                texts, images = [], []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    ims = self._visuals(doc_to_visual, task, split, doc_id)
                    texts.append(self._prompt(context, len(ims)))
                    images.append(ims)
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
                inputs = self._inputs(texts, images)
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
        for first in range(0, len(requests), self.batch_size):
            chunk = list(range(first, min(first + self.batch_size, len(requests))))
            texts, images, n_cont = [], [], []
            for i in chunk:
                context, target, doc_to_visual, doc_id, task, split = requests[i].args
                doc = self.task_dict[task][split][doc_id]
                cont = target if isinstance(target, str) else target(doc)
                ims = self._visuals(doc_to_visual, task, split, doc_id)
                prompt = self._prompt(context, len(ims))
                whole = tok(prompt + cont, add_special_tokens=False)["input_ids"]
                n = len(whole) - len(tok(prompt, add_special_tokens=False)["input_ids"])
                if n < 1:
                    raise ValueError(f"task {task!r}, document {doc_id}: the continuation {cont!r} adds no token")
                texts.append(prompt + cont)
                images.append(ims)
                n_cont.append(n)
            inputs = self._inputs(texts, images)
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


def write_toy_task(folder, limit: int | None = None) -> Path:
    """Write the embedded evaluation split as two local lmms-eval tasks into `folder`:
    `sparsevlm_toy` (generate the answer; exact match of its first word, as `sparsevlm eval`) and
    `sparsevlm_toy_choice` (pick the answer among those its question type allows, by likelihood).
    Images are re-rendered from the split's seed when the task runs. Returns the folder."""
    from . import toy

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = json.loads(Path(toy.CHECKPOINT, "eval_split.json").read_text())
    rows = doc["questions"][:limit] if limit is not None else doc["questions"]
    data = folder / "sparsevlm_toy.jsonl"
    data.write_text("".join(json.dumps({k: q[k] for k in ("image_id", "type", "question", "answer")}) + "\n"
                            for q in rows))
    (folder / "utils.py").write_text("from sparsevlm.lmms import (doc_to_choice, doc_to_target, doc_to_text, "
                                     "doc_to_visual, process_results)  # noqa: F401\n")
    (folder / "sparsevlm_toy.yaml").write_text(TASK_YAML.format(
        suffix="", data=data.resolve(), output_type="generate_until", extra=GENERATE, metric="exact_match"))
    (folder / "sparsevlm_toy_choice.yaml").write_text(TASK_YAML.format(
        suffix="_choice", data=data.resolve(), output_type="multiple_choice", extra=CHOICE, metric="acc"))
    return folder


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
