# The two commands a newcomer needs: `make run` and `make test`. Each does its own set-up.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_DIR := .broker-dev
BROKER_LISTEN ?= 127.0.0.1:7443
BROKER_STORE ?= memory://

.PHONY: proxy-venv venv run run-vault test lint typecheck proto unit integration demo clean dev-pki deps-system node-deps bench bench-profile soak

venv: $(STAMP)

# Reinstalls only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

proto: $(STAMP)
	@$(BIN)/python tools/genproto.py

dev-pki: $(STAMP)
	@$(BIN)/broker dev init --dir $(DEV_DIR)

run: dev-pki
	@$(BIN)/broker serve --config examples/dev/broker.yaml --listen $(BROKER_LISTEN) --store $(BROKER_STORE)

# `make run` with the signing keys in a local OpenBao's Transit (dev mode, in memory): starts
# OpenBao on 127.0.0.1:8200 (BROKER_VAULT_PORT), then the broker with examples/dev/vault.yaml;
# Ctrl-C stops both (docs/vault.md).
BROKER_VAULT_PORT ?= 8200
run-vault: dev-pki
	@$(BIN)/python tools/dev_vault.py --port $(BROKER_VAULT_PORT) -- $(BIN)/broker serve \
	  --config examples/dev/broker.yaml --overlay examples/dev/vault.yaml \
	  --listen $(BROKER_LISTEN) --store $(BROKER_STORE)

# The whole story, narrated: an agent, the dev MCP servers (examples/), and `make run`'s broker
# (started in the background for the demo if none answers on $(BROKER_LISTEN)).
demo: dev-pki node-deps
	@BROKER_ADDR=$(BROKER_LISTEN) $(BIN)/python examples/demo.py

# The integration tests start their own redis-server and PostgreSQL processes (never the ones
# that may be running); their binaries come from Debian when missing (apt-get when root).
SYSTEM_PKGS := $(if $(shell command -v redis-server),,redis-server) \
  $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql)
deps-system:
	@pkgs="$(strip $(SYSTEM_PKGS))"; [ -z "$$pkgs" ] || { \
	  if [ "$$(id -u)" = 0 ]; then echo "installing $$pkgs"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkgs >/dev/null; \
	  else echo "missing: $$pkgs (e.g. sudo apt-get install $$pkgs)"; exit 1; fi; }

# The npm MCP servers and the TypeScript SDK client the tests and the demo run (package.json,
# exact versions in package-lock.json). `npm ci` only when node_modules is missing or the lock
# changed; node and npm come from Debian when missing (apt-get when root). `make run` needs none.
NODE_STAMP := node_modules/.installed
node-deps: $(NODE_STAMP)

$(NODE_STAMP): package.json package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then echo "installing nodejs npm"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	  else echo "missing: node, npm (e.g. sudo apt-get install nodejs npm)"; exit 1; fi; }
	@npm ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

lint: $(STAMP)
	@$(BIN)/ruff check broker tests examples tools bench
	@$(BIN)/ruff format --check broker tests examples tools bench

typecheck: $(STAMP)
	@$(BIN)/mypy

test: venv deps-system node-deps lint typecheck
	@$(BIN)/python -m pytest

unit: $(STAMP)
	@$(BIN)/python -m pytest tests/unit

integration: $(STAMP) deps-system node-deps
	@$(BIN)/python -m pytest tests/integration

# Starts redis-server, the broker (Redis store, one worker per core) and OpenBao (raft) in a temp
# dir, measures (docs/performance.md), writes bench/results.json and bench/results.png. ~2-3 min.
bench: $(STAMP) deps-system node-deps proxy-venv
	@$(BIN)/python -m bench

# The plain MCP proxy the bench compares broker gateway with (mcp-proxy from PyPI pins mcp<2, so
# it cannot share .venv with the MCP SDK 2.x): its own virtualenv, made once.
PROXY_VENV := .venv-proxy
proxy-venv: $(PROXY_VENV)/bin/mcp-proxy

$(PROXY_VENV)/bin/mcp-proxy:
	@$(PY) -m venv $(PROXY_VENV)
	@$(PROXY_VENV)/bin/python -m pip install -q 'mcp-proxy==0.13.0'

# N minutes (SOAK_MINUTES, default 30) at half load on the memory and Redis stores: RSS, fds,
# tasks and Redis keys sampled; growth, p99 first/last five minutes, leftovers (docs/performance.md).
soak: $(STAMP) deps-system
	@$(BIN)/python -m bench.soak

# Where a mint's time goes: py-spy on one worker under mint load -> bench/profile.txt.
bench-profile: $(STAMP) deps-system
	@$(BIN)/python -m bench profile

clean:
	rm -rf $(VENV) node_modules .mypy_cache .pytest_cache .ruff_cache build *.egg-info
