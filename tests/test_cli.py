"""The `sparsevlm` command line on the embedded model: outputs, files and every error path."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sparsevlm import toy
from sparsevlm.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_demo_writes_the_table_and_plots(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--limit", "16", "--presets", "64", "--methods", "random", "tome",
                       "--quiet", "--out", str(tmp_path))
    assert code == 0
    table = pd.read_csv(tmp_path / "table.csv", index_col=0)
    assert list(table.index) == ["dense", "sparsevlm 64", "random 64", "tome 64"]
    assert list(table.columns) == ["budget", "equivalent_tokens", "accuracy", "acc_low", "acc_high", "retained", "gflops",
                                   "flops_saved", "prefill_ms"]
    assert (table["acc_low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["acc_high"]).all()
    assert table.loc["dense", "retained"] == 1 and table.loc["dense", "flops_saved"] == 0
    assert (table.loc["sparsevlm 64":, "flops_saved"] > 0.3).all() and (table["prefill_ms"] > 0).all()
    assert table.loc["tome 64", "equivalent_tokens"] == 12  # matched to SparseVLM's 11.6
    for f in ("per_type.csv", "accuracy_vs_tokens.png", "accuracy_vs_flops.png", "kept_tokens.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert "16 questions" in out and "\nsparsevlm 64 " in out


def test_eval_prints_accuracy_per_type_and_writes_rows(capsys, tmp_path):
    code, out, _ = run(capsys, "eval", "--method", "fastv", "--budget", "128", "--limit", "8", "--quiet",
                       "--out", str(tmp_path / "rows.csv"))
    assert code == 0 and "FastVConfig(layer=1" in out and "\nall " in out
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert len(rows) == 8 and {"prediction", "correct", "equivalent_tokens", "flops"} <= set(rows.columns)
    # a toy checkpoint named by path (as `python -m sparsevlm.toy.train` writes one) brings its own split
    code, out2, _ = run(capsys, "eval", "--model", str(toy.CHECKPOINT), "--method", "fastv", "--budget", "128",
                        "--limit", "8", "--quiet", "--out", str(tmp_path / "rows2.csv"))
    assert code == 0 and pd.read_csv(tmp_path / "rows2.csv").equals(rows)


def test_eval_toy_video_answers_the_video_split(capsys, tmp_path):
    """`--toy video` loads the embedded video model and its split: the same rows as `evaluate_toy_video`,
    and budgets scaled to the clip's 129 visual tokens."""
    from sparsevlm.eval import evaluate_toy_video
    from sparsevlm.recipes import method_config

    code, out, _ = run(capsys, "eval", "--toy", "video", "--method", "holitom", "--budget", "64", "--limit", "8",
                       "--quiet", "--out", str(tmp_path / "rows.csv"))
    assert code == 0 and "HoliTomConfig(retention=0.178" in out and "\nall " in out
    rows = pd.read_csv(tmp_path / "rows.csv", dtype={"prediction": str, "answer": str}, keep_default_na=False)
    model, processor = toy.load_video()
    cfg = method_config(model, "holitom", 64, n_visual=129)
    direct = evaluate_toy_video(cfg, limit=8, progress=False, model=model, processor=processor)
    assert list(rows["prediction"]) == list(direct["prediction"]) and list(rows["type"]) == list(direct["type"])
    assert (rows["equivalent_tokens"] < 129).all()


def test_demo_toy_video_writes_the_table(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--toy", "video", "--limit", "8", "--presets", "64", "--methods", "dycoke",
                       "--quiet", "--out", str(tmp_path))
    assert code == 0 and "8 questions, 129 visual tokens per video" in out
    table = pd.read_csv(tmp_path / "table.csv", index_col=0)
    assert list(table.index) == ["dense", "sparsevlm 64", "sparsevlm-frame 64", "dycoke 64"]
    assert (table["prefill_ms"] > 0).all() and (tmp_path / "kept_tokens.png").stat().st_size > 0


def test_show_draws_the_kept_tokens(capsys, tmp_path):
    from sparsevlm import toy
    image = toy.eval_split(limit=1)[0]["image"]
    Image.fromarray(image).save(tmp_path / "img.png")
    code, out, _ = run(capsys, "show", "--image", str(tmp_path / "img.png"), "--question", "what color is the circle",
                       "--budget", "64", "--out", str(tmp_path / "fig.png"))
    assert code == 0 and out.startswith("dense : ") and "SparseVLM: visual tokens [64]" in out
    assert (tmp_path / "fig.png").stat().st_size > 0


def test_flops_prints_the_paper_table_and_the_three_counts(capsys):
    code, out, _ = run(capsys, "flops", "--budget", "128")
    assert code == 0 and "tflops_paper" in out
    assert "fvcore" in out and "torch" in out and "formula" in out


def test_bench_writes_csv_and_json(capsys, tmp_path):
    code, out, _ = run(capsys, "bench", "--methods", "sparsevlm", "--budgets", "64", "--repeats", "1", "--warmup", "1",
                       "--new-tokens", "1", "--out", str(tmp_path))
    assert code == 0
    doc = json.loads((tmp_path / "bench_toy_cpu.json").read_text())
    assert {"torch", "transformers", "dtype", "attn_implementation", "cpu"} <= set(doc["machine"])
    assert [r["method"] for r in doc["results"]] == ["dense", "sparsevlm 64"]
    dense, sparse = doc["results"]
    assert dense["overhead_ms"] is None and sparse["overhead_ms"] > 0  # the method's own work, timed
    assert sparse["kv_cache_mb"] < dense["kv_cache_mb"] and sparse["flops_ratio"] < 1
    # (times from one round: only their presence is checked; what the layer clock adds up is checked by
    # test_the_clocks_add_up_the_calls_of_their_modules_alone, with sleeps far above a loaded machine's noise)
    assert doc["machine"]["vision_ms"] > 0 and dense["lm_prefill_ratio"] == 1
    assert dense["layers_ms"] > 0 and dense["layers_ratio"] == 1 and sparse["layers_ms"] > 0
    assert dense["lm_prefill_ms"] > 0 and sparse["lm_prefill_ms"] > 0 and sparse["lm_prefill_ratio"] > 0
    assert pd.read_csv(tmp_path / "bench_toy_cpu.csv").shape[0] == 2
    assert doc["machine"]["prefill_timing"].startswith("rounds")


def test_bench_times_a_batch_of_different_questions(capsys, tmp_path):
    code, _, _ = run(capsys, "bench", "--methods", "sparsevlm", "--budgets", "64", "--repeats", "1", "--warmup", "0",
                     "--new-tokens", "1", "--batch", "3", "--out", str(tmp_path))
    assert code == 0
    doc = json.loads((tmp_path / "bench_toy_b3_cpu.json").read_text())
    assert doc["machine"]["batch"] == 3
    one = json.loads((tmp_path / "bench_toy_b3_cpu.json").read_text())["results"][0]
    assert one["method"] == "dense" and one["kv_cache_mb"] > 0.625 * 2  # three prompts' cache (one: 0.625 MB)


def test_prefill_rounds_time_every_method_once_per_round():
    """Prefill times come from rounds in which every method (and the image features) runs once, in
    turn: a drift of the machine during the run falls on all methods alike."""
    from sparsevlm import toy
    from sparsevlm.bench import prefill_rounds

    model, processor = toy.load()
    rec = toy.eval_split(limit=1)[0]
    inputs = processor(images=rec["image"], text=rec["prompt"], return_tensors="pt")
    calls = []
    model.register_forward_pre_hook(lambda m, a, k: calls.append(getattr(m, "_sparsevlm", None) is not None),
                                    with_kwargs=True)
    layers, lm = {}, {}
    times = prefill_rounds(model, inputs, {"dense": None, "sparsevlm 64": toy.preset(64)}, repeats=3, warmup=1,
                           layers=layers, lm=lm)
    assert set(times) == {"vision", "dense", "sparsevlm 64"} and all(len(t) == 3 for t in times.values())
    assert all(x > 0 for t in times.values() for x in t)
    # dense, then sparsified, in every round (the first untimed); each turn a second, layer-timed prefill
    assert calls == [False, False, True, True] * 4
    assert not hasattr(model, "_sparsevlm")  # each method unpatched after its turn
    for part in (layers, lm):
        assert set(part) == {"dense", "sparsevlm 64"} and all(len(t) == 3 for t in part.values())
        assert all(0 < x for t in part.values() for x in t)
    text = model.model.language_model
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in [text, *text.layers])


def test_the_clocks_add_up_the_calls_of_their_modules_alone():
    """`clock` counts the time inside each call of the modules it is given and nothing else: on the
    decoder layers, a layer made to sleep 20 ms adds 20 ms per call (8 layers: ≥ 160 ms) and a 200 ms
    sleep in the vision tower adds nothing; on the language model, the tower's sleep adds nothing
    and a layer's does."""
    import time

    from sparsevlm import toy
    from sparsevlm.bench import clock, prefill

    model, processor = toy.load()
    rec = toy.eval_split(limit=1)[0]
    inputs = processor(images=rec["image"], text=rec["prompt"], return_tensors="pt")
    text, cpu = model.model.language_model, torch.device("cpu")

    def clocked(modules, slow_module, seconds):
        slow = slow_module.register_forward_hook(lambda m, a, o: time.sleep(seconds))
        with torch.no_grad(), clock(modules, cpu) as spent:
            prefill(model, inputs)
        slow.remove()
        return spent[0]

    slow = [layer.register_forward_hook(lambda m, a, o: time.sleep(0.02)) for layer in text.layers]
    with torch.no_grad(), clock(text.layers, cpu) as spent:
        prefill(model, inputs)
    for h in slow:
        h.remove()
    assert spent[0] >= 0.02 * len(text.layers)
    assert clocked(text.layers, model.model.vision_tower, 0.2) < 0.2
    assert clocked([text], model.model.vision_tower, 0.2) < 0.2
    assert clocked([text], text.layers[3], 0.2) >= 0.2


@pytest.mark.parametrize("argv,message", [
    (["show", "--image", "missing.png", "--question", "what color is the circle"], "--image missing.png: no such file"),
    (["show", "--image", "{bad}", "--question", "what color is the circle"], "not a readable image file"),
    (["show", "--image", "{img}", "--question", "what is the meaning of life"], "does not know 'meaning'"),
    (["show", "--image", "{wide}", "--question", "what color is the circle"],
     "--image {wide}: 16×8 pixels; the embedded model reads its own 96×96 synthetic scenes"),
    (["eval", "--model", "{nollava}"], "model_type 'llama' is not supported; supported: llava, llava_next"),
    (["eval", "--model", "no/such/folder"], "--model no/such/folder: no such folder"),
    (["eval", "--model", "{nosplit}"], "has no eval_split.json (the toy questions)"),
    (["eval", "--method", "tome", "--tokens", "500"], "--tokens 500 is out of range (0, 64]; this model has 64 visual tokens per image"),
    (["eval", "--method", "fastv", "--tokens", "3"], "--tokens 3: tokens=3.0 is out of reach for FastVConfig"),
    (["eval", "--data", "none.jsonl"], "--data none.jsonl: no such file"),
    (["bench", "--text-hidden", "1024"], "text_hidden=1024 narrows the -shaped models only"),
    (["bench", "--batch", "0"], "batch=0: allowed an integer ≥ 1"),
    (["bench", "--profile", "--batch", "2"], "batch=2: --profile counts batches of 1 and 8 itself"),
    (["bench", "--layer-curve", "--profile"], "--layer-curve times one prompt's layers: allowed without --profile"),
    (["bench", "--layer-curve", "--batch", "2"], "--layer-curve times one prompt's layers: allowed without --profile and with batch 1"),
    (["eval", "--data", "{empty}"], "the file holds no records"),
    (["eval", "--data", "{data}", "--prompt", "USER: <image> describe"], "must contain {question} and no other"),
    (["eval", "--data", "{data}", "--prompt", "{question} {lang}"], "(found lang, question)"),
    (["eval", "--model", "{noweights}"], "has config.json but no weights (*.safetensors or *.bin)"),
    (["eval", "--model", "{corrupt}"], "cannot load (Error while deserializing header"),
    (["bench", "--device", "cuda"], "--device cuda: CUDA is not available here"),
    (["eval", "--device", "gpu0"], "--device gpu0: not a torch device"),
    (["eval", "--out", "{bad}/rows.csv"], "cannot write there"),
    (["demo", "--out", "{bad}/folder"], "cannot write there"),
    (["bench", "--out", "{bad}/folder"], "cannot write there"),
    (["show", "--video", "{img}", "{img}", "--question", "what color is the circle"],
     "--video: LlavaForConditionalGeneration reads no video"),
    (["show", "--video", "{img}", "{wide}", "--question", "what color is the circle"],
     "--video: the frames differ in size (8×16, 96×96)"),
    (["show", "--video", "{img}", "{bad}", "--question", "what color is the circle"], "--video {bad}"),
    (["eval", "--toy", "video", "--model", "{nosplit}"], "--toy video runs the embedded video model on its own split; "
                                                       "--model names other weights: give one of them"),
    (["demo", "--toy", "video", "--data", "{data}"], "--data names other questions: give one of them"),
    (["eval", "--toy", "video", "--method", "dycoke", "--tokens", "200"],
     "--tokens 200 is out of range (0, 129]; a clip has 129 visual tokens"),
])
def test_bad_input_gets_one_line_and_exit_1(capsys, tmp_path, argv, message):
    (tmp_path / "bad.png").write_text("not an image")
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(tmp_path / "img.png")  # the embedded model's size
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(tmp_path / "wide.png")
    (tmp_path / "nollava").mkdir()
    (tmp_path / "nollava" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    shutil.copy(toy.CHECKPOINT / "eval_split.json", tmp_path / "nollava")
    (tmp_path / "nosplit").mkdir()  # a LLaVA checkpoint without the toy questions, and no --data
    (tmp_path / "nosplit" / "config.json").write_text(json.dumps({"model_type": "llava"}))
    shutil.copytree(tmp_path / "nosplit", tmp_path / "noweights")  # config and questions, no weights
    shutil.copy(toy.CHECKPOINT / "eval_split.json", tmp_path / "noweights")
    shutil.copytree(toy.CHECKPOINT, tmp_path / "corrupt")  # the embedded model, its weights cut short
    (tmp_path / "corrupt" / "model.safetensors").write_bytes((toy.CHECKPOINT / "model.safetensors").read_bytes()[:1000])
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "data.jsonl").write_text(json.dumps({"image": "img.png", "question": "q", "answer": "a"}) + "\n")
    names = {n: tmp_path / f for n, f in [("bad", "bad.png"), ("img", "img.png"), ("wide", "wide.png"), ("nollava", "nollava"),
                                           ("nosplit", "nosplit"), ("noweights", "noweights"), ("corrupt", "corrupt"),
                                           ("empty", "empty.jsonl"), ("data", "data.jsonl")]}
    for key, path in names.items():  # "{key}" names a file made here; other braces are the user's
        argv = [a.replace("{%s}" % key, str(path)) for a in argv]
    code, out, err = run(capsys, *argv, *(["--limit", "2", "--quiet"] if argv[0] == "eval" else []))
    assert code == 1
    for key in ("bad", "wide"):
        message = message.replace("{%s}" % key, str(names[key]))
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bench_module_refuses_a_device_it_does_not_have(capsys):
    """`python -m sparsevlm.bench` and `bench.run` check the device before loading anything (cuda:99
    exists nowhere: no CUDA here, or fewer GPUs): one line naming the argument, exit status 1."""
    from sparsevlm import bench

    with pytest.raises(ValueError, match=r"device='cuda:99': (CUDA is not available|this machine has)"):
        bench.run(device="cuda:99")
    with pytest.raises(ValueError, match=r"device='gpu0': not a torch device"):
        bench.run(device="gpu0")
    with pytest.raises(SystemExit) as e:
        bench.main(["--device", "cuda:99"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "device='cuda:99'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["demo", "--presets", "100"], ["eval", "--budget", "7"], ["nosuch"],
                                  ["eval", "--dtype", "int8"], ["eval", "--method", "magic"]])
def test_unknown_choices_exit_2_with_one_line(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["eval", "--limit", "0"], ["eval", "--limit", "-1"], ["demo", "--limit", "0"],
                                  ["bench", "--new-tokens", "0"], ["bench", "--repeats", "0"],
                                  ["eval", "--batch-size", "0"]])
def test_counts_below_one_exit_2_with_one_line(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "not allowed; give an integer ≥ 1" in err and len(err.strip().splitlines()) == 1


def test_every_option_has_help():
    from sparsevlm.cli import parser
    top = parser()
    subs = next(a for a in top._actions if a.dest == "command").choices
    assert set(subs) == {"demo", "eval", "bench", "flops", "show"}
    for name, p in subs.items():
        for action in p._actions:
            assert action.help, f"{name} {action.option_strings} has no help"


def test_the_qwen_shaped_bench_builds_its_prompt_and_methods():
    """The Qwen2.5-VL-7B architecture on the meta device: a 672×672 image is 576 tokens of a
    ~695-token prompt, M-RoPE takes original positions, and VisionZip/ToMe-style, VisPruner and
    pooling are skipped."""
    import torch
    import transformers

    from sparsevlm.bench import methods_for, qwen2_5_vl_7b_config, synthetic_inputs

    with torch.device("meta"):
        model = transformers.Qwen2_5_VLForConditionalGeneration(qwen2_5_vl_7b_config())
    inputs = synthetic_inputs(model, n_text=695 - 576 - 8, device="cpu")
    assert inputs["input_ids"].shape == (1, 695) and int((inputs["input_ids"] == 151655).sum()) == 576
    assert inputs["pixel_values"].shape == (48 * 48, 1176) and inputs["image_grid_thw"].tolist() == [[1, 48, 48]]
    skipped = []
    rows = methods_for(model, [128, 64], n_visual=576, log=skipped.append)
    inside = ["sparsevlm", "random", "fastv", "pdrop", "dart", "divprune", "cdpruner"]
    assert list(rows) == ["dense"] + [f"{m} {n}" for n in (128, 64) for m in inside]
    assert all(c.positions == "original" for c in list(rows.values())[1:])
    assert rows["sparsevlm 128"].pruning_layers == (2, 6, 14) and rows["sparsevlm 128"].schedule_of == 576
    assert [s.split(":")[0] for s in skipped] == ["visionzip", "tome", "vispruner", "pooling", "dycoke", "fastvid",
                                                  "vidcom2", "holitom"]  # (the prompt is an image)



@pytest.mark.parametrize("name", ["qwen3-vl-8b-shaped", "internvl3.5-8b-shaped"])
def test_the_8b_shaped_benches_build_their_prompts_and_methods(name):
    """Qwen3-VL-8B and InternVL3.5-8B on the meta device: 8.8 and 8.5 billion parameters; Qwen3-VL's
    768×768 image is 48×48 patches of 16 pixels, 576 tokens after 2×2 merging, with DeepStack from
    tower layers 8/16/24; InternVL's image is 2×2 tiles and a thumbnail of 256 tokens each. The
    tower-attention and video methods are skipped; the presets scale to 36 layers and to N."""
    import torch
    import transformers

    from sparsevlm.bench import internvl3_5_8b_config, methods_for, qwen3_vl_8b_config, synthetic_inputs

    qwen = name.startswith("qwen")
    with torch.device("meta"):
        model = (transformers.Qwen3VLForConditionalGeneration(qwen3_vl_8b_config()) if qwen
                 else transformers.InternVLForConditionalGeneration(internvl3_5_8b_config()))
    params = sum(p.numel() for p in model.parameters()) / 1e9
    assert round(params, 1) == (8.8 if qwen else 8.5) and model.config.text_config.num_hidden_layers == 36
    inputs = synthetic_inputs(model, n_text=695 - 576 - 8, device="cpu")
    n = 576 if qwen else 5 * 256
    ids = inputs["input_ids"]
    assert ids.shape == (1, 6 + n + 2 + 111) and int((ids == model.config.image_token_id).sum()) == n
    if qwen:
        assert model.config.vision_config.deepstack_visual_indexes == [8, 16, 24]
        assert inputs["pixel_values"].shape == (48 * 48, 3 * 2 * 16 * 16)
        assert inputs["image_grid_thw"].tolist() == [[1, 48, 48]]
    else:
        assert inputs["pixel_values"].shape == (5, 3, 448, 448) and "image_grid_thw" not in inputs
    skipped = []
    rows = methods_for(model, [128], n_visual=n, log=skipped.append)
    inside = ["sparsevlm", "random", "fastv", "pdrop", "dart", "divprune", "cdpruner"]
    assert list(rows) == ["dense"] + [f"{m} 128" for m in inside]
    assert rows["sparsevlm 128"].pruning_layers == (3, 7, 17) and rows["sparsevlm 128"].schedule_of == n  # ratios of N
    assert all(c.positions == ("original" if qwen else "compact") for c in list(rows.values())[1:])
    assert [s.split(":")[0] for s in skipped] == ["visionzip", "tome", "vispruner", "pooling", "dycoke", "fastvid",
                                                  "vidcom2", "holitom"]
    with pytest.raises(ValueError, match="text_hidden=1000: allowed a multiple of 512 from 512 to 4096"):
        (qwen3_vl_8b_config if qwen else internvl3_5_8b_config)(1000)

def test_the_gemma_3_12b_shaped_bench_builds_its_prompt_and_methods():
    """Gemma-3-12B on the meta device: 12.2 billion parameters, 48 layers, five sliding to one global.
    Its 896-pixel image is 64 × 64 tower patches averaged into 256 tokens between <start_of_image>
    and <end_of_image>, marked as one bidirectional block by the token types. The tower-attention,
    pooling and video methods are skipped; the presets scale to 48 layers and to N; original positions."""
    import torch
    import transformers

    from sparsevlm.bench import MODELS, gemma3_12b_config, methods_for, synthetic_inputs

    assert "gemma-3-12b-shaped" in MODELS
    with torch.device("meta"):
        model = transformers.Gemma3ForConditionalGeneration(gemma3_12b_config())
    t = model.config.text_config
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 1) == 12.2 and t.num_hidden_layers == 48
    assert t.layer_types.count("full_attention") == 8 and t.layer_types[5] == "full_attention"
    assert t.sliding_window == 1024
    inputs = synthetic_inputs(model, n_text=695 - 576 - 8, device="cpu")
    ids, cfg = inputs["input_ids"], model.config
    assert ids.shape == (1, 6 + 258 + 111) and int((ids == cfg.image_token_id).sum()) == 256
    assert ids[0, 6].item() == cfg.boi_token_id and ids[0, 6 + 257].item() == cfg.eoi_token_id
    assert torch.equal(inputs["token_type_ids"], (ids == cfg.image_token_id).long())
    assert inputs["pixel_values"].shape == (1, 3, 896, 896)
    skipped = []
    rows = methods_for(model, [128], n_visual=256, log=skipped.append)
    inside = ["sparsevlm", "random", "fastv", "pdrop", "dart", "divprune", "cdpruner"]
    assert list(rows) == ["dense"] + [f"{m} 128" for m in inside]
    assert rows["sparsevlm 128"].pruning_layers == (3, 9, 23) and rows["sparsevlm 128"].schedule_of == 256
    assert all(c.positions == "original" for c in list(rows.values())[1:])
    assert [s.split(":")[0] for s in skipped] == ["visionzip", "tome", "vispruner", "pooling", "dycoke", "fastvid",
                                                  "vidcom2", "holitom"]
    with pytest.raises(ValueError, match="text_hidden=1000: allowed a multiple of 480 from 480 to 3840"):
        gemma3_12b_config(1000)
    assert gemma3_12b_config(960).text_config.num_attention_heads == 4  # narrowed: heads of 256 kept


def test_the_video_llava_shaped_bench_builds_the_papers_video_prompt():
    """Video-LLaVA-7B's architecture on the meta device: an 8-frame video is 8 × 257 tokens (each
    frame's [CLS] and 16×16 patches) of a 2,175-token prompt; methods that read the vision tower or
    pool one grid per image are skipped; the narrowed model keeps everything but the text width."""
    import torch
    import transformers

    from sparsevlm.bench import methods_for, synthetic_inputs, video_llava_7b_config

    with torch.device("meta"):
        model = transformers.VideoLlavaForConditionalGeneration(video_llava_7b_config())
    inputs = synthetic_inputs(model, n_text=695 - 576 - 6, device="cpu")
    assert inputs["input_ids"].shape == (1, 6 + 2056 + 113) and int((inputs["input_ids"] == 32001).sum()) == 2056
    assert inputs["pixel_values_videos"].shape == (1, 8, 3, 224, 224) and "pixel_values" not in inputs
    skipped = []
    rows = methods_for(model, [128], n_visual=2056, log=skipped.append, video=True)
    assert list(rows) == ["dense"] + [f"{m} 128" for m in ("sparsevlm", "random", "fastv", "pdrop", "dart",
                                                           "divprune", "cdpruner", "dycoke", "fastvid", "vidcom2",
                                                           "holitom")]
    from sparsevlm import planned_tokens

    assert abs(planned_tokens(rows["sparsevlm 128"], 2056, 32) - 128 * 2056 / 576) < 2  # the preset's share
    assert rows["sparsevlm 128"].positions == "compact"
    assert [s.split(":")[0] for s in skipped] == ["visionzip", "tome", "vispruner", "pooling"]
    narrow = video_llava_7b_config(text_hidden=1024)
    assert (narrow.text_config.hidden_size, narrow.text_config.num_hidden_layers, narrow.vision_config.image_size) == \
        (1024, 32, 224)


def test_eval_and_demo_on_a_llava_next_checkpoint(capsys, tmp_path):
    """Another family through the command line: a tiny LLaVA-NeXT checkpoint with its processor,
    questions in JSONL with images of two sizes; VisionZip-style is refused with the reason."""
    from sparsevlm.toy.families import tiny_processor, tiny_vlm

    tiny_vlm("next").save_pretrained(tmp_path / "next")
    tiny_processor("next").save_pretrained(tmp_path / "next")
    rng = np.random.default_rng(0)
    lines = []
    for i, (h, w) in enumerate([(16, 32), (40, 20), (32, 32)]):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "question": "what color is it ?", "answer": "red"}))
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    common = ["--model", str(tmp_path / "next"), "--data", str(tmp_path / "q.jsonl"), "--prompt", "<image> {question}"]
    code, out, err = run(capsys, "eval", *common, "--method", "sparsevlm", "--budget", "64", "--quiet",
                         "--out", str(tmp_path / "rows.csv"))
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert len(rows) == 3 and (rows["equivalent_tokens"] < rows["visual_tokens"].map(lambda v: eval(v)[0])).all()
    code, _, err = run(capsys, "eval", *common, "--method", "visionzip", "--quiet")
    assert code == 1 and "builds its features from high-resolution crops" in err
    code, out, err = run(capsys, "demo", *common, "--presets", "64", "--methods", "random", "visionzip", "--quiet",
                         "--out", str(tmp_path / "demo"))
    assert code == 0, err
    table = pd.read_csv(tmp_path / "demo" / "table.csv", index_col=0)
    assert list(table.index) == ["dense", "sparsevlm 64", "random 64"]  # VisionZip-style does not apply
    code, out, err = run(capsys, "flops", *common, "--budget", "64")  # fvcore cannot trace NeXT (#32.11)
    assert code == 0, err
    assert "fvcore cannot trace LlavaNextForConditionalGeneration" in out and "counted with torch's" in out
    assert "counter='torch'" not in out + err and "\ntorch " in out and "\nformula " in out
    assert (tmp_path / "demo" / "kept_tokens.png").stat().st_size > 0  # over the whole-image view
    code, out, err = run(capsys, "show", "--model", str(tmp_path / "next"), "--image", str(tmp_path / "1.png"),
                         "--question", "what color is it ?", "--prompt", "<image> {question}", "--budget", "64",
                         "--out", str(tmp_path / "show.png"))
    assert code == 0, err
    assert "SparseVLM: visual tokens [56]" in out and (tmp_path / "show.png").stat().st_size > 0


def test_the_shaped_models_are_built_in_their_dtype_without_a_float32_copy():
    """`random_llava` in bfloat16 makes every weight in bfloat16 from the start (meta device: the
    allocations of LLaVA-1.5-7B's shapes are counted, none made): a float32 copy first would need
    28 GB where the bench promises ~15."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from sparsevlm.bench import llava_1_5_7b_config, random_llava

    class Allocations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.elements = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.empty, torch.ops.aten.empty_strided):
                self.elements[out.dtype] = self.elements.get(out.dtype, 0) + out.numel()
            return out

    with Allocations() as made:
        model = random_llava(llava_1_5_7b_config(), "meta", torch.bfloat16)
    weights = sum(p.numel() for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and 7.0e9 < weights < 7.2e9
    assert made.elements.get(torch.float32, 0) < 1e-3 * weights  # (a few small float32 buffers at most)


def test_method_configs_for_an_m_rope_model_take_original_positions_and_ratios():
    import torch
    import transformers

    from sparsevlm.bench import qwen2_5_vl_7b_config
    from sparsevlm.cli import method_config

    with torch.device("meta"):
        model = transformers.Qwen2_5_VLForConditionalGeneration(qwen2_5_vl_7b_config())
    preset = method_config(model, "sparsevlm", 128)
    assert (preset.positions, preset.schedule_of, preset.pruning_layers) == ("original", 576, (2, 6, 14))
    assert method_config(model, "sparsevlm").positions == "original"  # the rank mode
    assert method_config(model, "fastv", 64).positions == method_config(model, "random", 64).positions == "original"


def test_bench_profile_counts_aten_calls_and_host_reads(capsys, tmp_path):
    code, out, _ = run(capsys, "bench", "--profile", "--methods", "sparsevlm", "--budgets", "64", "--repeats", "1",
                       "--warmup", "0", "--out", str(tmp_path))
    assert code == 0
    table = pd.read_csv(tmp_path / "profile_toy_cpu.csv").set_index(["method", "batch"])
    assert list(table.index) == [(m, b) for b in (1, 8) for m in ("dense", "sparsevlm 64", "sparsevlm rank")]
    dense, sparse = table.loc[("dense", 1)], table.loc[("sparsevlm 64", 1)]
    assert dense["method_aten_calls"] == dense["method_host_reads"] == 0 and dense["host_reads"] >= 1
    assert 0 < sparse["method_aten_calls"] < sparse["aten_calls"] and 0 < sparse["method_host_reads"] <= sparse["host_reads"]
    assert sparse["aten_calls"] > dense["aten_calls"] and 0 < sparse["method_time_share"]
    assert "machine" in json.loads((tmp_path / "profile_toy_cpu.json").read_text())


def test_bench_layer_curve_times_a_layer_by_length_and_records_each_methods_lengths(capsys, tmp_path):
    """`bench --layer-curve`: one decoder layer's time at lengths up to the prompt's (80 tokens on the
    toy), with its FLOPs, and the length each method leaves every layer — the same lengths the
    bench's FLOPs come from (`report_flops` of a sparsified prefill)."""
    from sparsevlm import report, sparsified
    from sparsevlm.flops import dims, prefill_flops, report_flops

    code, out, _ = run(capsys, "bench", "--layer-curve", "--methods", "sparsevlm", "--budgets", "64", "--repeats", "1",
                       "--warmup", "0", "--out", str(tmp_path))
    assert code == 0
    curve = pd.read_csv(tmp_path / "layers_toy_cpu.csv", index_col="tokens")
    assert list(curve.index) == [1, 16, 32, 64, 80] and (curve["layer_ms"] > 0).all()
    assert curve["layer_flops"].is_monotonic_increasing
    doc = json.loads((tmp_path / "layers_toy_cpu.json").read_text())
    lengths, (model, processor) = doc["tokens_per_layer"], toy.load()
    assert lengths["dense"] == [80] * model.config.text_config.num_hidden_layers
    sparse = lengths["sparsevlm 64"]
    assert sparse[0] == 80 and sparse[-1] < 80 and all(a >= b for a, b in zip(sparse, sparse[1:]))
    rec = toy.eval_split(limit=1)[0]
    with torch.no_grad(), sparsified(model, toy.preset(64)):
        model(**processor(images=rec["image"], text=rec["prompt"], return_tensors="pt"))
        expected = report_flops(report(model), **dims(model))
    assert torch.allclose(prefill_flops(torch.tensor([sparse]), **dims(model)), expected)
    assert "sparsevlm 64: layers at " in out and "of its FLOPs" in out and "machine" in doc


def test_predicted_layers_ratio_reads_each_layers_time_off_the_curve():
    """Σ t(n_ℓ) / Σ t(N_ℓ), t linear between the measured lengths; lengths beyond the curve refused."""
    from sparsevlm.bench import predicted_layers_ratio

    curve = pd.DataFrame({"layer_ms": [3.0, 12.0]}, index=pd.Index([1, 10], name="tokens"))  # t(n) = 2 + n
    assert predicted_layers_ratio(curve, [10, 5, 5], [10, 10, 10]) == pytest.approx((12 + 7 + 7) / 36)
    assert predicted_layers_ratio(curve, [10, 10], [10, 10]) == 1
    proportional = pd.DataFrame({"layer_ms": [1.0, 10.0]}, index=[1, 10])  # no fixed cost: the tokens' ratio
    assert predicted_layers_ratio(proportional, [10, 4], [10, 10]) == pytest.approx(14 / 20)
    with pytest.raises(ValueError, match="tokens up to 11: the curve was measured up to 10 only"):
        predicted_layers_ratio(curve, [11], [10])
    with pytest.raises(ValueError, match="tokens has 1 layers and dense 2"):
        predicted_layers_ratio(curve, [5], [10, 10])


def test_layer_curve_runs_on_an_m_rope_language_model():
    """Qwen2-VL's language model (M-RoPE positions) takes plain embeddings for the curve too."""
    from sparsevlm.bench import layer_curve
    from sparsevlm.toy.families import tiny_vlm

    curve = layer_curve(tiny_vlm("qwen2-vl").eval(), [1, 4], repeats=1, warmup=0)
    assert list(curve.index) == [1, 4] and (curve["layer_ms"] > 0).all()
    with pytest.raises(ValueError, match="counts=\\[\\]: allowed a non-empty list of integers ≥ 1"):
        layer_curve(tiny_vlm("qwen2-vl"), [])


@pytest.mark.parametrize("family", ["next", "qwen2-vl", "video-llava", "next-video"])
def test_bench_runs_on_checkpoints_of_other_families(capsys, tmp_path, family):
    from sparsevlm.toy.families import tiny_vlm

    tiny_vlm(family).save_pretrained(tmp_path / family)
    code, out, err = run(capsys, "bench", "--model", str(tmp_path / family), "--methods", "sparsevlm", "fastv",
                         "--budgets", "64", "--repeats", "1", "--warmup", "0", "--new-tokens", "1", "--out", str(tmp_path))
    assert code == 0, err
    table = pd.read_csv(tmp_path / f"bench_{family}_cpu.csv", index_col=0)
    assert list(table.index) == ["dense", "sparsevlm 64", "fastv 64"]
    assert (table.loc["sparsevlm 64":, "flops_ratio"] < 1).all() and (table["kv_cache_mb"] > 0).all()


def test_kept_tokens_are_drawn_for_qwen_images_and_video_frame_by_frame():
    """`show`'s figure for the Qwen family (flattened patches put back on the pixel grid, one grid of
    merged tokens per image) and for videos (one row of panels per frame: Qwen, OneVision, Video-LLaVA,
    LLaVA-NeXT-Video). The counts in the panel titles add up to the tokens each step kept in the
    frames' grids (not OneVision's closing newline, not Video-LLaVA's [CLS] token per frame)."""
    import types

    import torch
    from test_families import video_batch
    from test_qwen_vl import batch as qwen_batch
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import \
        LlavaOnevisionImageProcessorPil

    from sparsevlm import SparseVLMConfig, report, sparsified
    from sparsevlm.cli import kept_figure
    from sparsevlm.toy.families import tiny_vlm

    cfg = SparseVLMConfig.preset(64, pruning_layers=(1, 2), schedule=(20, 10), positions="original")
    onevision = types.SimpleNamespace(image_processor=LlavaOnevisionImageProcessorPil())
    cases = [("qwen2-vl", None, qwen_batch([(1, 8, 12)], [4])[0], 1, 24, 0),
             ("qwen2-vl", None, qwen_batch([(4, 8, 8)], [4], video=True)[0], 4, 16, 0),
             ("onevision", onevision, video_batch(tiny_vlm("onevision"), [4])[0], 4, 4, 0),
             ("video-llava", onevision, video_batch(tiny_vlm("video-llava"), [4])[0], 4, 16, 1),
             ("next-video", onevision, video_batch(tiny_vlm("next-video"), [4])[0], 4, 4, 0)]
    for family, processor, inputs, frames, per_frame, lead in cases:
        model = tiny_vlm(family)
        with sparsified(model, cfg), torch.no_grad():
            model(**inputs)
            rep = report(model)
        fig = kept_figure(model, processor, inputs, rep, "t")
        assert len(fig.axes) == frames * (len(rep.steps) + 1)
        for s, step in enumerate(rep.steps):  # the titles of column s + 1, one per frame
            titles = [fig.axes[f * (len(rep.steps) + 1) + s + 1].get_title() for f in range(frames)]
            here = [int(t.split(":")[1].split()[0]) for t in titles]  # "after layer l:\n<n> here, ..."
            drawn = [k for k in step["kept"][0] if k < frames * (lead + per_frame) and k % (lead + per_frame) >= lead]
            assert sum(here) == len(drawn), (family, titles)


def test_qwen_frames_inverts_the_qwen_image_processor():
    import types

    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from sparsevlm.plots import qwen_frames

    image = (np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)  # a multiple of 8: no resize
    ip = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16, max_pixels=64 * 64)
    out = ip(images=[image], return_tensors="pt")
    vision = types.SimpleNamespace(patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
    frames = qwen_frames(out["pixel_values"], out["image_grid_thw"][0], vision, ip.image_mean, ip.image_std)
    assert frames.shape == (1, 32, 48, 3) and np.abs(frames[0].astype(int) - image).max() <= 1


def test_a_checkpoint_whose_processor_cannot_load_gets_one_line(capsys, tmp_path):
    """Qwen2-VL's processor needs torchvision (its video processor); without it the CLI says so."""
    from transformers.utils import is_torchvision_available

    from sparsevlm.toy.families import tiny_processor, tiny_vlm

    if is_torchvision_available():
        pytest.skip("torchvision is installed here, so the processor loads; runs where torchvision is absent")
    tiny_vlm("qwen2-vl").save_pretrained(tmp_path / "q")
    tiny_processor("next").tokenizer.save_pretrained(tmp_path / "q")
    (tmp_path / "q" / "preprocessor_config.json").write_text(json.dumps(
        {"processor_class": "Qwen2VLProcessor", "image_processor_type": "Qwen2VLImageProcessor"}))
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(tmp_path / "img.png")  # the embedded model's size
    (tmp_path / "q.jsonl").write_text(json.dumps({"image": "img.png", "question": "q", "answer": "a"}) + "\n")
    capsys.readouterr()
    code, _, err = run(capsys, "eval", "--model", str(tmp_path / "q"), "--data", str(tmp_path / "q.jsonl"), "--quiet")
    assert code == 1 and "cannot load its processor" in err and "Torchvision" in err
    assert len(err.strip().splitlines()) == 1


def test_tokens_on_models_whose_visual_tokens_depend_on_the_image_are_a_share_of_576():
    """#32.12: `--tokens` on LLaVA-NeXT once targeted the tower's single view (9 tokens on this tiny
    model, whose images have 24-39); now, as for the Qwen-VLs and InternVL, T counts among 576."""
    from sparsevlm.recipes import CliError, method_config, model_shape
    from sparsevlm.toy.families import tiny_vlm

    for family in ("next", "onevision", "qwen2-vl", "internvl"):
        model = tiny_vlm(family)
        assert model_shape(model)[0] == 576, family
        cfg = method_config(model, "sparsevlm", tokens=300)  # (a 4-layer model keeps 150 at least)
        assert cfg.schedule_of == 576, family
        with pytest.raises(CliError, match=r"out of range \(0, 576\]; this model's visual tokens depend on the image"):
            method_config(model, "fastv", tokens=600)
