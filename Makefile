# `make demo` and `make test` each set up what they need on a fresh machine: a project .venv with
# alkit installed in editable mode, torch / torchvision at the pair in constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo_out
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/alkit demo --out $(DEMO)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(DEMO) .pytest_cache .hypothesis mlflow.db mlruns
