# The two commands of the quick start: `make run` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := redis-server redis-tools haproxy nginx wrk

.PHONY: run test lint bench deps clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/apigate run --config examples/apigate.yaml --demo-upstream 127.0.0.1:9001

# Integration tests need real servers; install them when missing (as root, or with sudo).
deps:
	@missing=""; \
	for tool in redis-server redis-cli haproxy nginx wrk; do \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null \
	  || { echo "could not install:$$missing (install them and re-run)"; exit 1; }; \
	fi

test: $(VENV)/.installed-test deps
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: $(VENV)/.installed-test deps
	$(BIN)/python bench/proxy_vs_nginx.py
	$(BIN)/python bench/limits_overhead.py
	$(BIN)/python bench/limiter_vs_limits.py
	$(BIN)/python bench/fastify_vs_apigate.py
	$(BIN)/python bench/jwt_cost.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
