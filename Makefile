# Two commands: `make serve` (install + serve the bundled model) and `make test` (install + lint + type-check + tests).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: install tools data test lint serve screenshot operator-token clean pretrain-bench retrain ablation

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Installs again only when pyproject.toml changed since the last install (so `make serve` starts at once).
INSTALLED := $(VENV)/.installed
install: $(INSTALLED)
$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,ray,otel]'
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# System tools the tests use (promtool and prometheus, docker-compose; chromium for the web page test; kubectl, whose
# built-in kustomize renders the Kubernetes manifests offline), from Debian when missing and root; elsewhere the tests
# that need them skip and say so.
DEPLOY_TOOLS := prometheus promtool docker-compose chromium kubectl
tools:
	@missing=""; for tool in $(DEPLOY_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing prometheus docker-compose chromium kubectl (missing:$$missing)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			prometheus docker-compose chromium kubectl >/dev/null; } || echo "WARNING: apt-get install failed; tests will skip"; \
	else echo "note: missing$$missing (not root or no apt-get): tests/deploy skips the checks that need them"; fi

# The moving Fashion-MNIST benchmark reads Debian's dataset-fashion-mnist (the real images, MIT licence; never
# downloaded at run time). Installed here when missing and root; elsewhere the tests that need it skip and say so.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
data:
	@if [ -f $(FASHION_MNIST) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing dataset-fashion-mnist"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			dataset-fashion-mnist >/dev/null; } || echo "WARNING: apt-get install dataset-fashion-mnist failed"; \
	else echo "note: $(FASHION_MNIST) missing: install Debian's dataset-fashion-mnist (tests that need it skip)"; fi

test: tools data lint
	$(BIN)/pytest -q

# With no GPU (no nvidia-smi, or ADAFOCUS_DEVICE=cpu) and no batch settings given: the CPU-sized batches that
# docs/benchmarks.md recommends there (8/8 instead of the GPU-sized 32/64 defaults).
serve: install
	@if [ -z "$${ADAFOCUS_MAX_BATCH:-}$${ADAFOCUS_MAX_ACTIVE:-}" ] && \
		{ [ "$${ADAFOCUS_DEVICE:-auto}" = cpu ] || ! nvidia-smi -L >/dev/null 2>&1; }; then \
		echo "no GPU: CPU-sized batches (ADAFOCUS_MAX_BATCH=8 ADAFOCUS_MAX_ACTIVE=8; set them to override)"; \
		export ADAFOCUS_MAX_BATCH=8 ADAFOCUS_MAX_ACTIVE=8; fi; \
	exec $(BIN)/adafocus serve

# The README's picture of the web page (docs/web-ui.png): the shipped model answering a benchmark clip in headless
# Chromium (`make tools` installs it). Run it again after the shipped bundle changes.
screenshot: install
	$(BIN)/adafocus synth --out build/screenshot-clips --count 4 --seed 2
	$(PY) -m tests.service.http.browser --bundle model/bundles/default --video build/screenshot-clips/clip_000001.mp4 \
		--out docs/web-ui.png

# The token that guards PUT /budget in the compose stack (a Docker secret; never part of the image).
operator-token:
	@test -s service/deploy/secrets/operator_token || \
		{ python3 -c "import secrets; print(secrets.token_hex(32))" > service/deploy/secrets/operator_token && \
		echo "wrote service/deploy/secrets/operator_token"; }

# ---- training (issue 24). RUN prefixes every long command (here: RUN="flock /tmp/adafocus-bench.lock nice -n 5").
RUN ?=
TRAIN_DIR ?= runs
# Still vs clip encoder pretraining (docs/benchmarks.md, section 9a): each run one stage from scratch; samples/s in its
# state.json, the accuracy it reaches on test clips from `adafocus diagnose` (f_G's head on whole clips, f_L's head on a
# cube centred on the product). The 1500- and 400-step still runs get the clip runs' wall-clock.
PRETRAIN_RUNS ?= pretrain_local:150 pretrain_local_still:150 pretrain_local_still:400 pretrain_glance_clip:150 \
	pretrain_glance:150 pretrain_glance:1500
# and the glance at the retrain's settings: $(RUN) adafocus train ... $(GLANCE_PRETRAIN) (section 9a's last row)
pretrain-bench: install data
	@for run in $(PRETRAIN_RUNS); do d=$(TRAIN_DIR)/pretrain-bench/$$(echo $$run | tr : _); \
		$(RUN) $(BIN)/adafocus train --config default --data fashion --stages $$run --no-progress \
			--run-dir $$d --resume --out $$d/bundle && \
		$(RUN) $(BIN)/adafocus diagnose --bundle $$d/bundle --seed 4242 --count 512 --json > $$d/diagnose.json || exit 1; \
	done

# The next shipped recipe (issue 24), ONE resumable command: every stage checkpoints (every 50 steps and at its end)
# in $(TRAIN_DIR)/retrain; run it again after a kill and it continues where it stopped (same clips, same draws), then
# calibrates (budgets, card with the served-path table, Figure 6). It never touches model/bundles/default: copy
# $(TRAIN_DIR)/retrain/bundle there after reviewing its card. Expected duration: docs/benchmarks.md, section
# "Issue 24: the retrain".
RETRAIN_STAGES ?= pretrain_local_still:4000,placement:2000,policy:1500,deep_feature:1500
RETRAIN_FLAGS ?= --placement-weight 1.0 --workers 1 --threads 1
# The glance pretrains on stills first, in its own run: it learns only at a higher lr and batch than the other stages
# (docs/benchmarks.md, section 9a), and a run has one lr; the main run starts from its weights.
GLANCE_PRETRAIN ?= --stages pretrain_glance:1500 --lr 0.003 --batch-size 64 --train-seed 1
retrain: install data
	$(RUN) $(BIN)/adafocus train --config default --data fashion $(GLANCE_PRETRAIN) --workers 1 --threads 1 \
		--run-dir $(TRAIN_DIR)/retrain/glance --resume --out $(TRAIN_DIR)/retrain/glance/bundle --no-progress
	$(RUN) $(BIN)/adafocus train --config default --data fashion --train-seed 0 --stages $(RETRAIN_STAGES) \
		$(RETRAIN_FLAGS) --init-from $(TRAIN_DIR)/retrain/glance/bundle/weights.safetensors \
		--run-dir $(TRAIN_DIR)/retrain --resume --out $(TRAIN_DIR)/retrain/bundle --no-progress
	$(RUN) $(BIN)/adafocus calibrate --bundle $(TRAIN_DIR)/retrain/bundle --calib-seed 1 --test-seed 2 \
		--report $(TRAIN_DIR)/retrain/eval_test.json
	$(RUN) $(BIN)/adafocus diagnose --bundle $(TRAIN_DIR)/retrain/bundle --seed 5550123 --count 1024 \
		--json > $(TRAIN_DIR)/retrain/diagnose.json

# The paper's ablation at equal budget: deep-feature gradient (Eq. 5-6) vs pixel interpolation (Eq. 2-4) vs random
# placement, every row from the same start: the shipped recipe's still-pretrained encoders (the retrain's glance run,
# then the local encoder) and its placement curriculum, without the REINFORCE stage and without the placement term in
# the rows (each row is the paper's objective alone). ABLATION_STEPS steps each, seeds 0 and 1; each row calibrated on
# 512 calibration clips (seed 30) and evaluated on the same 1,024 test clips (seed 31). Resumable too. One thread per
# run: once the start run has finished, two seeds can run side by side on two cores
# (`make ablation ABLATION_SEEDS=0 & make ablation ABLATION_SEEDS=1`).
ABLATION_STEPS ?= 800
ABLATION_START ?= pretrain_local_still:4000,placement:2000
ABLATION_SEEDS ?= 0 1
ABLATION_FLAGS ?= --workers 1 --threads 1
ablation: install data
	$(RUN) $(BIN)/adafocus train --config default --data fashion $(GLANCE_PRETRAIN) --workers 1 --threads 1 \
		--run-dir $(TRAIN_DIR)/retrain/glance --resume --out $(TRAIN_DIR)/retrain/glance/bundle --no-progress
	$(RUN) $(BIN)/adafocus train --config default --data fashion --stages $(ABLATION_START) $(ABLATION_FLAGS) --no-progress \
		--init-from $(TRAIN_DIR)/retrain/glance/bundle/weights.safetensors \
		--run-dir $(TRAIN_DIR)/ablation/start --resume --out $(TRAIN_DIR)/ablation/start/bundle
	@for seed in $(ABLATION_SEEDS); do for row in deep_feature pixel random; do d=$(TRAIN_DIR)/ablation/$$row-seed$$seed; \
		$(RUN) $(BIN)/adafocus train --config default --data fashion --stages $$row:$(ABLATION_STEPS) --seed $$seed \
			$(ABLATION_FLAGS) \
			--init-from $(TRAIN_DIR)/ablation/start/bundle/weights.safetensors --run-dir $$d --resume \
			--out $$d/bundle --no-progress && \
		$(RUN) $(BIN)/adafocus calibrate --bundle $$d/bundle --calib-count 512 --calib-seed 30 --test-count 1024 \
			--test-seed 31 --served-count 0 --report $$d/eval.json || exit 1; \
	done; done
	$(RUN) $(BIN)/adafocus ablation --runs $(TRAIN_DIR)/ablation

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
