.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: help run test test-fast lint fmt index serve-embedder serve-reranker up up-cpu down bench clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

run: ## Set up .venv, index data/ if there is no index, serve the gateway on :8000
	scripts/run.sh

test: ## Set up .venv with dev tools and run the whole test suite (needs redis-server)
	scripts/test.sh

test-fast: ## Only the tests that load no real weights and start no processes
	scripts/test.sh -m "not slow"

lint: ## ruff and mypy
	scripts/bootstrap.sh --dev
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

fmt: ## Format and autofix
	$(VENV)/ruff format .
	$(VENV)/ruff check --fix .

index: ## Index data/corpus.jsonl into the default collection (idempotent)
	scripts/bootstrap.sh
	$(VENV)/semsearch index data/corpus.jsonl

serve-embedder: ## Run the embedder service on :8001
	$(VENV)/semsearch serve embedder

serve-reranker: ## Run the reranker service on :8002
	$(VENV)/semsearch serve reranker

up: ## The full stack with docker compose, on an NVIDIA GPU (needs deploy/compose/.env)
	cd deploy/compose && docker compose up -d

up-cpu: ## The full stack with docker compose, CPU only
	cd deploy/compose && docker compose -f compose.yml -f compose.cpu.yml up -d

down: ## Stop the compose stack (volumes are kept)
	cd deploy/compose && docker compose -f compose.yml -f compose.cpu.yml down

bench: ## The serving benchmark (about 15 minutes; writes bench/results/serving.json)
	scripts/bootstrap.sh --dev
	$(VENV)/python -m bench.serving

clean: ## Remove the local index and caches (keeps .venv)
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
