# Entry points for a fresh machine (Python 3.11, pip, gcc):
#   make demo   - the whole pipeline on the shipped sample data, on the CPU
#   make test   - the test suite
#   make lint   - the import rule (import-linter) and ruff
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install

$(BIN)/orizuru: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the local CPU wheel; installing it first keeps every later step from pulling a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[all,test]"
	touch $(BIN)/orizuru

install: $(BIN)/orizuru

demo: install
	$(BIN)/orizuru demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check orizuru tests bench
