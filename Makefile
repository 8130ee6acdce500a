# Lookalike: `make demo` and `make test` work on a fresh machine (they create the venv themselves).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DB ?= data/lookalike.lancedb
export HF_HUB_OFFLINE := 1

.PHONY: install demo lint test test-fast clean-db

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[cpu,test,distributed]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/lookalike ingest data/samples --split train --db $(DB)
	$(BIN)/lookalike search data/queries/sandal_test_00008.png -k 5 --predict --db $(DB)

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

clean-db:
	rm -rf $(DB)
