# intents-mm: every target creates the virtual environment itself when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint types unit simulate sim-venue distributed bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

types: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	bash scripts/ensure-tools.sh
	$(BIN)/pytest

test: lint types unit

simulate: $(STAMP)
	$(BIN)/intents-mm simulate --duration 120 --seed 7

sim-venue: $(STAMP)
	$(BIN)/intents-mm sim-venue --seed 7

distributed: $(STAMP)
	$(BIN)/intents-mm simulate --distributed --duration 120 --seed 7

bench: $(STAMP)
	$(BIN)/intents-mm bench --mode memory --rate 200 --duration 20

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
