"""The command line on checkpoints whose processors need torchvision (LLaVA-OneVision, Video-LLaVA,
LLaVA-NeXT-Video, Qwen2-VL, Qwen2.5-VL: transformers' video processors are torchvision's): a tiny
random model of each family saved with its real processor at the model's sizes, then `eval` on
images of three sizes, `show` on a 4-frame video and `demo`. Beside this machine's CPU torch there is
no torchvision, so these skip in `.venv`; `make test` runs them again in `.venv-video` (`make
video-env`: torch 2.14.1 and torchvision 0.29.1, a CUDA build that runs on the CPU)."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from transformers.utils import is_torchvision_available

from sparsevlm.toy.families import IMAGE, SPECIAL, tiny_processor, tiny_vlm
from test_cli import run

pytestmark = pytest.mark.skipif(not is_torchvision_available(),
                                reason="needs torchvision beside torch: `make video-env`, then run it with .venv-video")

FAMILIES = ("onevision", "video-llava", "next-video", "qwen2-vl", "qwen2.5-vl")


def checkpoint(family: str, tmp_path) -> str:
    tiny_vlm(family).save_pretrained(tmp_path / family)
    tiny_processor(family).save_pretrained(tmp_path / family)
    return str(tmp_path / family)


def template(family: str, video: bool = False) -> str:
    """The --prompt of a question about one image (or video): Qwen frames the span with its start and end tokens."""
    image, vid, start, end = SPECIAL[family]
    token = vid if video else image
    return f"{start} {token} {end} {{question}}" if family.startswith("qwen") else f"{token} {{question}}"


def images(tmp_path, sizes=((16, 32), (40, 20), (32, 32))) -> str:
    rng = np.random.default_rng(0)
    lines = []
    for i, (h, w) in enumerate(sizes):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "question": "what color is it ?", "answer": "red"}))
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "q.jsonl")


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_reads_images_of_three_sizes_with_the_familys_processor(family, capsys, tmp_path):
    common = ["--model", checkpoint(family, tmp_path), "--data", images(tmp_path), "--prompt", template(family)]
    code, _, err = run(capsys, "eval", *common, "--method", "sparsevlm", "--budget", "64", "--quiet",
                       "--out", str(tmp_path / "rows.csv"))
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "rows.csv")
    visual = rows["visual_tokens"].map(lambda v: json.loads(v)[0])
    assert len(rows) == 3 and (rows["equivalent_tokens"] < visual).all()
    if family.startswith("qwen"):  # its visual tokens follow the image's size
        assert visual.nunique() > 1


@pytest.mark.parametrize("family", FAMILIES)
def test_show_draws_a_video_frame_by_frame(family, capsys, tmp_path):
    rng = np.random.default_rng(1)
    frames = []
    for i in range(4):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(tmp_path / f"f{i}.png")
        frames.append(str(tmp_path / f"f{i}.png"))
    code, out, err = run(capsys, "show", "--model", checkpoint(family, tmp_path), "--video", *frames,
                         "--question", "what color is it ?", "--prompt", template(family, video=True),
                         "--budget", "64", "--out", str(tmp_path / "kept.png"))
    assert code == 0, err
    assert out.startswith("dense :") and "sparsevlm:" in out and (tmp_path / "kept.png").stat().st_size > 0


def test_demo_compares_methods_on_a_qwen2_5_vl_checkpoint(capsys, tmp_path):
    common = ["--model", checkpoint("qwen2.5-vl", tmp_path), "--data", images(tmp_path), "--prompt",
              template("qwen2.5-vl")]
    code, _, err = run(capsys, "demo", *common, "--presets", "64", "--methods", "random", "fastv", "visionzip",
                       "--quiet", "--out", str(tmp_path / "demo"))
    assert code == 0, err
    table = pd.read_csv(tmp_path / "demo" / "table.csv", index_col=0)
    assert list(table.index) == ["dense", "sparsevlm 64", "random 64", "fastv 64"]  # VisionZip-style: no [CLS]


def test_the_skipped_gpu_cell_of_notebook_12_runs_on_a_local_checkpoint(tmp_path):
    """Notebook 12's Qwen2.5-VL cell (`nbval-skip`: weights and a GPU) with stand-ins: the tiny
    Qwen2.5-VL checkpoint and its processor (whose chat template frames an image as the real one
    does), the CPU, a local image for the URL, the preset scaled to its 4 layers."""
    import torch

    import sparsevlm
    from helpers import run_skipped_cells

    Image.fromarray(np.full((40, 24, 3), 200, np.uint8)).save(tmp_path / "picture.png")
    stand_ins = {'"Qwen/Qwen2.5-VL-7B-Instruct"': repr(checkpoint("qwen2.5-vl", tmp_path)), '"cuda"': '"cpu"',
                 "torch.bfloat16": "torch.float32", "num_layers=28": "num_layers=4",
                 "https://upload.wikimedia.org/wikipedia/commons/4/47/PNG_transparency_demonstration_1.png":
                 str(tmp_path / "picture.png")}
    scope = run_skipped_cells("12_beyond_llava.ipynb", stand_ins, 1, {"torch": torch, "sparsevlm": sparsevlm},
                              only_skipped=True)
    rep = sparsevlm.report(scope["model"])
    n_image = int((scope["inputs"]["input_ids"] == IMAGE).sum())  # the placeholders the chat template's image became
    assert n_image > 1 and rep.n_visual[0] == n_image and rep.visual_out[0, -1] < n_image
