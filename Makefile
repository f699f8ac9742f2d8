# `make demo` and `make test` work on a fresh machine: they create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A plain `torch` would pull a multi-GB CUDA build; this pin takes the local CPU build where one
# is on disk. Override on a GPU machine, e.g. `make test TORCH=torch==2.13.0+cu128`.
TORCH ?= torch==2.13.0
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg --nbval-cell-timeout 300

.PHONY: install demo test unit notebooks bench run-notebooks lab clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

demo: install
	$(VENV)/bin/sparsevlm demo

# Latency and memory of every method on the embedded model (CPU); results/bench_toy_cpu.{csv,json}.
# On a GPU: make bench BENCH_ARGS="--model llava-1.5-7b-shaped --device cuda --dtype bfloat16"
BENCH_ARGS ?=
bench: install
	$(VENV)/bin/sparsevlm bench --out results $(BENCH_ARGS)

unit: install
	$(PY) -m pytest tests

notebooks: install
	$(PY) -m pytest $(NBVAL) notebooks

test: install
	$(PY) -m pytest tests $(NBVAL) notebooks

# Re-execute every notebook in place (after a library change), storing fresh outputs for nbval.
run-notebooks: install
	$(PY) notebooks/execute.py notebooks/*.ipynb

lab: install
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
