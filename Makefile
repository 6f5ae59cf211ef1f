# `make demo` and `make test` set everything up on a fresh machine (Python >= 3.10 on PATH).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.musiclit-installed

.PHONY: install demo test test-fast test-gpu lint bench clean

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt -e ".[prep,wandb,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m musiclit demo

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not gpu" -q

# on a machine with a CUDA GPU: dtypes on the GPU (asserted), peak memory and step time of the released
# architectures at random init (printed); MUSICLIT_GPU_ARCHS=small,medium picks the architectures
test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu -s -q -rs tests/test_gpu.py

test-fast: $(STAMP)
	$(PY) -m pytest -m "not gpu and not slow" -q -x

lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check musiclit tests tools
	$(VENV)/bin/ruff format --check musiclit tests tools

clean:
	rm -rf $(VENV) outputs runs .pytest_cache
