# Two entry points: `make demo` (set up, run the main job) and `make test` (set up, run the suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench results gpu-check clean

$(STAMP): requirements.txt setup.py $(wildcard csrc/*.cpp)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m margreg_fast experiment blockmnist --seeds 0 1 2 --weights-file margreg_fast/kit/configs/blockmnist_weights.json --threads 1 --jobs 2 --out runs/demo

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/bench_head.py

# Rerun every benchmark the README quotes; write benchmarks/results/ and the README's tables.
results: $(STAMP)
	benchmarks/regenerate.sh $(PY)

# On a CUDA machine, with its own Python (no .venv): make gpu-check OUT=dir [PYTHON=python3]
gpu-check:
	scripts/gpu_check.sh $(or $(OUT),gpu-check) $(PYTHON)

clean:
	rm -rf $(VENV) build *.egg-info margreg_fast/*.so
