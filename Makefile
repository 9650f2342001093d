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
	@echo "==> creating $(VENV) and installing sasg, torch 2.13.0 (CPU) and the test tools (about a minute; pip lists each package)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar off $(if $(wildcard $(WHEELS)),--find-links $(WHEELS)) -e '.[test]'
	touch $@
	@echo "==> installed in $(VENV)"

# The kernels' machine code, built after the install and again whenever a kernel source changes
# (numba's cache notices an edit to a kernel's own file, not to the helpers it inlines).
$(BIN)/.kernels: $(BIN)/.installed $(wildcard src/sasg/kernels/*.py)
	@echo "==> compiling sasg's kernels into numba's cache (up to a minute on a busy 2-core machine)"
	$(BIN)/python -m sasg.kernels
	touch $@

# One torch thread per process unless OMP_NUM_THREADS is set: many small kernels, often on shared
# cores (the CLI does the same by itself; pytest's processes need it from here).
demo: $(BIN)/.kernels
	$(BIN)/sasg compare --out runs/demo --overwrite

# Two pytest processes, a test file each at a time (pytest-xdist's loadfile: a file's fixtures are
# built once): half the suite's time is tests that start ranks and wait on them, which the other
# process fills (9 min 53 s -> 7 min 33 s on a 2-core VM). TEST_PROCESSES=0 runs it in one process.
TEST_PROCESSES ?= 2
test: $(BIN)/.kernels
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/pytest $(if $(filter 0,$(TEST_PROCESSES)),,-n $(TEST_PROCESSES) --dist loadfile)

bench: $(BIN)/.kernels
	$(BIN)/python benchmarks/compress.py --quick
	$(BIN)/python benchmarks/simulator.py --quick --no-resnet

clean:
	rm -rf $(VENV) runs .pytest_cache
