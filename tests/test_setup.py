"""The project's promises about itself: dependency lists agree, notebooks are checkable by nbval."""
import json
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower()


def test_environment_yml_installs_what_pyproject_declares():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(pip) == sorted(declared), "environment.yml and pyproject.toml list different requirements"
    assert len({_name(s) for s in declared}) == len(declared)


def test_constraints_pin_every_requirement_inside_its_declared_range():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pins = {canonicalize_name(k): v for k, v in pins.items()}
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name == "torch":  # pinned by the Makefile's TORCH, so GPU machines can pick their build
            assert name not in pins
            continue
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {spec}"


def test_top_level_layout():
    for name in ["sparsevlm", "notebooks", "data", "tests", "environment.yml", "pyproject.toml",
                 "Makefile", "README.md", ".ci/run"]:
        assert (ROOT / name).exists(), name
    assert "make test" in (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def notebook_problems(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    problems = []
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name")
    if kernel != "python3":
        problems.append(f"kernel {kernel!r}, expected 'python3'")
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or not "".join(cell["source"]).strip():
            continue
        if "nbval-skip" in cell.get("metadata", {}).get("tags", []):
            continue
        if cell.get("execution_count") is None:
            problems.append(f"cell {i} was never executed")
        # Text only: base64 image data can spell "0x…" or "/tmp/" by chance.
        text = [{k: v for k, v in o.get("data", {}).items() if not k.startswith("image/")} | {
            k: v for k, v in o.items() if k != "data"} for o in cell.get("outputs", [])]
        if re.search(r"/tmp/|/root/|/home/|/work/|0x[0-9a-f]{6,}", json.dumps(text)):
            problems.append(f"cell {i} output holds a machine path or memory address")
    return problems


def test_notebooks_are_executed_and_portable():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    problems = {nb.name: p for nb in notebooks if (p := notebook_problems(nb))}
    assert not problems, problems


def test_wheel_carries_the_model_and_runs_outside_the_checkout(tmp_path):
    """`pip install .` (not editable): the wheel holds the embedded model, its evaluation split and
    the committed results; installed in a fresh virtual environment and imported from a folder
    outside the repository, it loads the model and answers from the package's own files."""
    import subprocess
    import sys
    import sysconfig
    import zipfile

    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next(dist.glob("sparsevlm_course-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ["sparsevlm/data/toy-llava/model.safetensors", "sparsevlm/data/toy-llava/eval_split.json",
                   "sparsevlm/data/toy-llava/MODEL_CARD.md", "sparsevlm/results/bench_toy_cpu.json", "sparsevlm/course.py",
                   "sparsevlm/data/toy-video/model.safetensors", "sparsevlm/data/toy-video/MODEL_CARD.md",
                   "sparsevlm/data/toy-video/results.json"]:
        assert needed in names, needed
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    # The dependencies (torch, transformers, ...) come from this environment's site-packages as a plain
    # path entry (its .pth files, among them the editable install of the checkout, are not processed).
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    code = ("import sparsevlm, torch; from sparsevlm import toy, bench\n"
            "model, processor = toy.load(); rec = toy.eval_split(limit=1)[0]\n"
            "x = processor(images=rec['image'], text=rec['prompt'], return_tensors='pt')\n"
            "out = model.generate(**x, max_new_tokens=1, do_sample=False)\n"
            "print(sparsevlm.__file__); print(toy.CHECKPOINT); print(bench.RESULTS)\n"
            "print(processor.tokenizer.decode(out[0, -1:]).strip() == rec['answer'])")
    run = subprocess.run([py, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True)
    module, checkpoint, results, right = run.stdout.split()
    for path in (module, checkpoint, results):
        assert path.startswith(str(venv)) and not path.startswith(str(ROOT)), path
    assert right == "True"


def test_the_skipped_gpu_cells_of_notebook_11_run_on_a_local_checkpoint(tmp_path, monkeypatch):
    """The cells CI skips (`nbval-skip`: weights and a GPU) are the first a user with a GPU runs, so
    they run here with stand-ins: the embedded checkpoint for llava-1.5-7b-hf, the CPU in float32,
    one of its images as my_image.jpg, the presets scaled to its 8 layers, and the bench on the toy
    model (two methods, one round)."""
    import torch
    from PIL import Image

    from sparsevlm import toy

    from helpers import run_skipped_cells

    stand_ins = {'"llava-hf/llava-1.5-7b-hf"': repr(str(toy.CHECKPOINT)), '"cuda"': '"cpu"',
                 "torch.bfloat16": "torch.float32",
                 "sparsevlm.SparseVLMConfig.preset(": "toy.preset(",  # the presets scaled to its 8 layers
                 'bench.run("llava-1.5-7b-shaped"': 'bench.run("toy"',
                 'dtype="bfloat16", out="../results")': 'out="bench", repeats=1, warmup=0, new_tokens=2, '
                                                        'methods=["sparsevlm", "fastv"])'}
    Image.fromarray(toy.eval_split(limit=1)[0]["image"]).save(tmp_path / "my_image.jpg")
    monkeypatch.chdir(tmp_path)
    scope = run_skipped_cells("11_real_llava.ipynb", stand_ins, 3, {"toy": toy})
    assert scope["model"].dtype == torch.float32 and not hasattr(scope["model"], "_sparsevlm")  # unsparsified after
    assert list(scope["table"].index) == ["dense", "sparsevlm 192", "fastv 192", "sparsevlm 128", "fastv 128",
                                          "sparsevlm 64", "fastv 64"]
    assert (tmp_path / "bench" / "bench_toy_cpu.csv").exists()
