# Two commands: `make serve` (install + serve the bundled model) and `make test` (install + lint + type-check + tests).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: install tools data test lint serve operator-token clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# System tools the deployment tests use (promtool and prometheus, docker-compose), from Debian when missing and root;
# elsewhere tests/deploy skips the checks that need them and says so.
DEPLOY_TOOLS := prometheus promtool docker-compose
tools:
	@missing=""; for tool in $(DEPLOY_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing prometheus docker-compose (missing:$$missing)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			prometheus docker-compose >/dev/null; } || echo "WARNING: apt-get install failed; tests/deploy will skip"; \
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

serve: install
	$(BIN)/adafocus serve

# The token that guards PUT /budget in the compose stack (a Docker secret; never part of the image).
operator-token:
	@test -s service/deploy/secrets/operator_token || \
		{ python3 -c "import secrets; print(secrets.token_hex(32))" > service/deploy/secrets/operator_token && \
		echo "wrote service/deploy/secrets/operator_token"; }

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
