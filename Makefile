# Two commands: `make serve` (install + serve the bundled model) and `make test` (install + lint + type-check + tests).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: install tools data test lint serve screenshot operator-token clean

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

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
