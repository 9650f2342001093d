# Two commands for a fresh machine:
#   make demo   sets up .venv and runs `sasg compare` on the embedded MNIST-5k (the main job)
#   make test   sets up .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/sasg compare --out runs/demo --overwrite

test: $(BIN)/.installed
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
