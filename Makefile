# Two commands for a fresh machine:
#   make demo   sets up .venv and runs `sasg compare` on the embedded MNIST-5k (the main job)
#   make test   sets up .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch==2.13.0 comes from the CPU wheel on local disk (an index would serve a multi-GB CUDA build).
WHEELS ?= /opt/wheels

.PHONY: demo test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(if $(wildcard $(WHEELS)),--find-links $(WHEELS)) -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/sasg compare --out runs/demo --overwrite

test: $(BIN)/.installed
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/compress.py --quick
	$(BIN)/python benchmarks/simulator.py --quick --no-resnet

clean:
	rm -rf $(VENV) runs .pytest_cache
