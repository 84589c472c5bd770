# Two entry points for a fresh machine with Python 3.11 (see README.md):
#   make train   set up .venv and run the main job (the tiny VersatileFFN GPT on the bundled corpus)
#   make test    set up .venv and run the test suite
# TORCH_SPEC pins the CPU build used here and in CI; on a GPU machine use the Dockerfile instead.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# make gpu-wheels: the wheels a GPU node without network needs besides its own CUDA torch (launch/gpu_wheels.py).
GPU_PYTHON ?= 3.12
# GPU_ARCH=aarch64 for GH200 nodes.
GPU_ARCH ?= x86_64
GPU_PLATFORM ?= manylinux_2_28_$(GPU_ARCH)
GPU_WHEELS ?= .gpu-wheels

.PHONY: setup train test test-all lint clean gpu-wheels

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

train: setup
	$(VENV)/bin/vffn-pretrain $(ARGS)

# pytest's exit code 5 ("no tests collected") counts as a failure. The few end-to-end runs marked `slow`
# (benchmark --quick runs, the offline GPU-wheel install: about 9 minutes together) run with SLOW=1 or
# `make test-all`.
SLOW ?=
MARKS := $(if $(SLOW),,-m "not slow")
# Test workers (pytest-xdist): most tests keep one core busy, so two fill a 2-core machine. Tests are handed out
# one by one, except those that must stay on one worker (tests/scheduling.py, used by --dist loadscope; pytest 9
# breaks xdist 3.8's loadgroup). JOBS=0 runs the suite in this process.
JOBS ?= 2
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(JOBS) --dist loadscope $(MARKS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

test-all:
	$(MAKE) test SLOW=1

gpu-wheels: setup
	$(PY) launch/gpu_wheels.py --dest $(GPU_WHEELS) --python-version $(GPU_PYTHON) --platform $(GPU_PLATFORM)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs outputs multirun .cache .pytest_cache
