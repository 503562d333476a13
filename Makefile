# Two entry points: `make demo` (set up, run the main job) and `make test` (set up, run the suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo claims claims-confounds claims-resnet claims-animal shortcuts claims-adversarial test bench results docs gpu-check clean

# animal-mnist (MIT) ships the kit's second dataset (kit/data/animal.py reads its files); its wheel
# requires TensorFlow, which those files do not need, so it is installed without dependencies.
$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps animal-mnist==0.4
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

WEIGHTS := margreg_fast/kit/configs/blockmnist_weights.json

# The claims at demo size: 3 seeds, 100 evaluation images, no spurious rows, no fractions, no frontier.
demo: $(STAMP)
	$(PY) -m margreg_fast claims --seeds 0 1 2 --eval-samples 100 --weights-file $(WEIGHTS) --no-spurious --threads 1 --jobs 2 --out runs/demo

# Every claim of the paper with paired intervals (5 seeds, 500 images, fractions and lazy steps, the
# frontier on the same 5 seeds), then a subset rerun under 2 threads against it and the default
# estimator against the exact penalty on a GELU model (no ReLU kinks); copies the outputs into docs/.
# Resumable.
CLAIMS_DIR ?= runs/claims
CLAIMS := --seeds 0 1 2 3 4 --eval-samples 500 --weights-file $(WEIGHTS)
claims: $(STAMP)
	$(PY) -m margreg_fast claims $(CLAIMS) --fractions 0.5 0.25 0.125 --lazy 4 8 --grid 0.1 1 10 --frontier-seeds 0 1 2 3 4 --threads 1 --jobs 2 --quiet --out $(CLAIMS_DIR)
	$(PY) -m margreg_fast claims $(CLAIMS) --schemes none mdr --no-spurious --light --threads 2 --jobs 1 --quiet --out $(CLAIMS_DIR)-threads2 --compare-to $(CLAIMS_DIR)
	$(PY) -m margreg_fast claims $(CLAIMS) --schemes none mdr mdr-exact --activation gelu --no-spurious --light --threads 1 --jobs 2 --quiet --out $(CLAIMS_DIR)-gelu
	scripts/publish_claims.sh $(CLAIMS_DIR) $(CLAIMS_DIR)-threads2 $(CLAIMS_DIR)-gelu

# The confound rows on the claims' own models, after `make claims` (the same plan: nothing is trained
# again; each finished model is evaluated once more and its scale.json / budgets.json kept): the
# scale-free rows and the attack-budget curves, then the claims published with them. Resumable.
claims-confounds: $(STAMP)
	$(PY) -m margreg_fast claims $(CLAIMS) --fractions 0.5 0.25 0.125 --lazy 4 8 --grid 0.1 1 10 --frontier-seeds 0 1 2 3 4 --scale-free --budgets --threads 1 --jobs 2 --quiet --out $(CLAIMS_DIR)
	scripts/publish_claims.sh $(CLAIMS_DIR) $(CLAIMS_DIR)-threads2 $(CLAIMS_DIR)-gelu

# The claim rows (leakage, PGD, density, accuracy, attribution) on the second model, a BatchNorm ResNet
# (width 8; weights searched from 0.001 to 1), and on the second dataset, animal-mnist's silhouettes:
# each scheme's weight chosen on its own validation split, then the claims in resumable commands (the
# ResNet's: seeds 0-2, then 3-4 added), each under 3 hours (benchmarks/results/second_setting_cost.md;
# docs/findings/second-setting.md), with the scale-free rows; the reports are copied into
# docs/results/second_setting/.
claims-resnet: $(STAMP)
	$(PY) -m margreg_fast select blockmnist --model resnet --width 8 --grid 0.001 0.01 0.1 1 --threads 1 --jobs 2 --quiet --out runs/select-resnet --write runs/select-resnet/weights.json
	$(PY) -m margreg_fast claims --seeds 0 1 2 --eval-samples 500 --weights-file runs/select-resnet/weights.json --model resnet --width 8 --no-spurious --scale-free --threads 1 --jobs 2 --quiet --out runs/claims-resnet
	$(PY) -m margreg_fast claims --seeds 0 1 2 3 4 --eval-samples 500 --weights-file runs/select-resnet/weights.json --model resnet --width 8 --no-spurious --scale-free --threads 1 --jobs 2 --quiet --out runs/claims-resnet
	scripts/publish_second_setting.sh resnet runs/select-resnet runs/claims-resnet

claims-animal: $(STAMP)
	$(PY) -m margreg_fast select blockmnist --dataset animal --grid 0.1 1 10 --threads 1 --jobs 2 --quiet --out runs/select-animal --write runs/select-animal/weights.json
	$(PY) -m margreg_fast claims --seeds 0 1 2 3 4 --eval-samples 500 --weights-file runs/select-animal/weights.json --dataset animal --no-spurious --scale-free --threads 1 --jobs 2 --quiet --out runs/claims-animal
	scripts/publish_second_setting.sh animal runs/select-animal runs/claims-animal

# The two shortcuts, robust square and non-robust texture: weights on each task's validation split, the
# claims' spurious rows and the frontier over the grid on both, published into docs/results/shortcuts/.
shortcuts: $(STAMP)
	PYTHON=$(PY) scripts/shortcuts.sh runs/shortcuts

# Adversarial training (pgd-at, TRADES) beside mdr on every claim row, with the scale-free rows and the
# attack-budget curves, at the claims' 10 epochs and at mdr's cost (ADV_EPOCHS, from
# benchmarks/results/train_step_adversarial.md). Run after `make claims`: each
# command starts from hard links of its run directories (cp -l), so only the adversarial points train.
# Resumable; copies the reports into docs/results/adversarial/ (full_*.md, matched_*.md).
ADV_EPOCHS ?= pgd-at=2 trades=2
ADV_PLAN := $(CLAIMS) --schemes none igr joint mdr pgd-at trades --fractions 0.5 0.25 0.125 --lazy 4 8 --grid 0.1 1 10 --frontier-seeds 0 1 2 3 4 --scale-free --budgets --threads 1 --jobs 2 --quiet
claims-adversarial: $(STAMP)
	for d in full matched; do mkdir -p $(CLAIMS_DIR)-adv-$$d/blockmnist $(CLAIMS_DIR)-adv-$$d/spurious; \
	  for e in blockmnist spurious; do if [ -d $(CLAIMS_DIR)/$$e/runs ]; then cp -aln $(CLAIMS_DIR)/$$e/runs $(CLAIMS_DIR)-adv-$$d/$$e/; fi; done; done
	$(PY) -m margreg_fast claims $(ADV_PLAN) --out $(CLAIMS_DIR)-adv-full
	$(PY) -m margreg_fast claims $(ADV_PLAN) --scheme-epochs $(ADV_EPOCHS) --out $(CLAIMS_DIR)-adv-matched
	mkdir -p docs/results/adversarial
	for d in full matched; do for f in claims_table adversarial cheaper compute scale_free budgets claims_seeds; do \
	  cp $(CLAIMS_DIR)-adv-$$d/$$f.md docs/results/adversarial/$${d}_$$f.md; done; done

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q --durations=25 tests

bench: $(STAMP)
	$(PY) benchmarks/bench_head.py

# Rerun every benchmark the documentation shows; write benchmarks/results/.
results: $(STAMP)
	benchmarks/regenerate.sh $(PY)

# The documentation site (mkdocs.yml) into site/, warnings as errors; its results pages include the committed result files.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# On a CUDA machine, with its own Python (no .venv): make gpu-check OUT=dir [PYTHON=python3]
gpu-check:
	scripts/gpu_check.sh $(or $(OUT),gpu-check) $(PYTHON)

clean:
	rm -rf $(VENV) build *.egg-info margreg_fast/*.so
