# `make demo` and `make test` work on a fresh machine: they create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A plain `torch` would pull a multi-GB CUDA build; this pin takes the local CPU build where one
# is on disk. Override on a GPU machine, e.g. `make test TORCH=torch==2.13.0+cu128`.
TORCH ?= torch==2.13.0
# The versions `make test` was last run against (CI installs exactly these; the notebooks' stored
# outputs are compared with nbval). `make test CONSTRAINTS=` tests against the newest releases instead;
# `make lock` rewrites the file from the current environment after a passing run.
CONSTRAINTS ?= constraints.txt
# lmms-eval without its declared dependencies (torchvision/timm: see pyproject's [eval] extra).
LMMS_EVAL ?= lmms-eval==0.7.3
# transformers' video processors (LLaVA-OneVision, Video-LLaVA, LLaVA-NeXT-Video, Qwen2/2.5-VL) are
# torchvision's, and the package index has no torchvision that loads beside the CPU torch above: a second
# environment, with torch 2.14.1 and torchvision 0.29.1 (a CUDA build, ~6 GB installed, that runs on the CPU),
# runs the tests that load those processors (tests/test_processors.py, and lmms-eval's on the newer families
# and on video checkpoints: VIDEO_TESTS; in .venv they skip).
# `make test VIDEO_VENV=` leaves it out (on Linux x86_64, PyPI's builds are several GB to download).
VIDEO_VENV ?= .venv-video
VIDEO_TORCH ?= torch==2.14.1 torchvision==0.29.1
VIDEO_TESTS := tests/test_processors.py tests/test_lmms.py -k "processor or newer_families or video_documents_on_checkpoints"
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg --nbval-cell-timeout 300

.PHONY: install demo test unit versions notebooks bench gpu-check run-notebooks lab lock clean docs browser video-env test-video readme

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(wildcard $(CONSTRAINTS))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --no-deps "$(LMMS_EVAL)"
	$(PY) -m pip install -q -e ".[dev,eval,docs]" $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

video-env: $(VIDEO_VENV)/.installed

$(VIDEO_VENV)/.installed: pyproject.toml $(wildcard $(CONSTRAINTS))
	test -x $(VIDEO_VENV)/bin/python || $(PYTHON) -m venv $(VIDEO_VENV)
	$(VIDEO_VENV)/bin/python -m pip install -q --upgrade pip
	$(VIDEO_VENV)/bin/python -m pip install -q $(VIDEO_TORCH)
	$(VIDEO_VENV)/bin/python -m pip install -q --no-deps "$(LMMS_EVAL)"
	$(VIDEO_VENV)/bin/python -m pip install -q -e ".[dev,eval]" $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $@

test-video: video-env
	$(VIDEO_VENV)/bin/python -m pytest -q -p no:cacheprovider $(VIDEO_TESTS)

demo: install
	$(VENV)/bin/sparsevlm demo

# Latency and memory of every method on the embedded model (CPU); results/bench_toy_cpu.{csv,json}.
# On a GPU: make bench BENCH_ARGS="--model llava-1.5-7b-shaped --device cuda --dtype bfloat16"
BENCH_ARGS ?=
bench: install
	$(VENV)/bin/sparsevlm bench --out results $(BENCH_ARGS)

# On a CUDA machine whose Python already has torch (a CUDA build) and this library's requirements
# (no venv is made: `make gpu-check PYTHON=python3`): the GPU checks of tests/test_gpu.py (waits for
# the device, GPU decisions against the CPU's), then the LLaVA-1.5-7B-shaped bench in bfloat16 into
# results/ (bench_llava-1.5-7b-shaped_cuda.{csv,json}; ~15 GB of GPU memory).
gpu-check:
	$(PYTHON) -m pytest -q tests/test_gpu.py
	$(PYTHON) -m sparsevlm.bench --model llava-1.5-7b-shaped --device cuda --dtype bfloat16 --out results $(BENCH_ARGS)

unit: install
	$(PY) -m pytest tests

# The unit tests against older transformers releases (~5 min each), each installed on its own in
# build/ and put ahead of the venv's: pyproject's floor is the oldest that passes.
TRANSFORMERS_VERSIONS ?= 5.19.0 5.20.2 5.21.1 5.22.2 5.23.0
versions: install
	for v in $(TRANSFORMERS_VERSIONS); do \
	  $(PY) -m pip install -q --no-deps --target build/transformers-$$v transformers==$$v && \
	  PYTHONPATH=build/transformers-$$v $(PY) -m pytest -q -p no:cacheprovider tests || exit 1; done

notebooks: install
	$(PY) -m pytest $(NBVAL) notebooks

# The course website from the notebooks' stored outputs (never re-executed), warnings as errors.
# Open it with: python -m http.server -d docs/_build/html  (then http://localhost:8000/)
docs: install
	$(PY) -m sphinx -W --keep-going -q -b html -c docs . docs/_build/html

# The README's result figures and the site pages' tables, regenerated from results/ and
# data/toy-llava/results.json (tests/test_readme.py fails when they differ).
readme: install
	$(PY) docs/readme.py

# Debian's chromium for tests/test_docs.py (root installs it; otherwise those tests say they skip).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "no chromium here: tests/test_docs.py will skip (apt-get install chromium)"

test: install docs browser $(if $(VIDEO_VENV),video-env)
	$(PY) -m pytest tests $(NBVAL) notebooks
	$(if $(VIDEO_VENV),$(VIDEO_VENV)/bin/python -m pytest -q -p no:cacheprovider $(VIDEO_TESTS))

# Re-execute every notebook in place (after a library change), storing fresh outputs for nbval.
run-notebooks: install
	$(PY) notebooks/execute.py notebooks/*.ipynb

lab: install
	$(VENV)/bin/jupyter lab notebooks

lock:
	{ echo "# Generated by \`make lock\` (torch is pinned by the Makefile's TORCH)."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(torch|nvidia-.*|triton)=='; } > constraints.txt

clean:
	rm -rf $(VENV) $(VIDEO_VENV) *.egg-info .pytest_cache
