# dcgan_xai: `make train`, `make test`, `make test-full`, `make lint`, `make bench`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install dev train test test-slow test-full lint format bench clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PY) -m pip install -q -e '.[dev,slurm,parallel]'
	touch $@

install: $(VENV)/.base

dev: $(VENV)/.dev

# The paper's run on a GPU; the CPU-sized demo where no GPU is present.
train: $(VENV)/.base
	@if $(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		$(PY) -m dcgan_xai.train experiment=mnist64 $(ARGS); \
	else \
		echo "No GPU found: running the CPU-sized demo experiment=mnist64_cpu_noise (the paper recipe at this size: experiment=mnist64_cpu; the full run is: $(PY) -m dcgan_xai.train experiment=mnist64 trainer.accelerator=cpu)"; \
		$(PY) -m dcgan_xai.train experiment=mnist64_cpu_noise $(ARGS); \
	fi

test: $(VENV)/.dev
	$(PY) -m pytest -q

test-slow: $(VENV)/.dev
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]

test-full: $(VENV)/.dev
	$(PY) -m pytest -q -m "slow or not slow"

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check dcgan_xai tests benchmarks
	$(VENV)/bin/ruff format --check dcgan_xai tests benchmarks
	$(VENV)/bin/mypy

format: $(VENV)/.dev
	$(VENV)/bin/ruff check --fix dcgan_xai tests benchmarks
	$(VENV)/bin/ruff format dcgan_xai tests benchmarks

bench: $(VENV)/.base
	$(PY) -m benchmarks.bench_gradcam
	$(PY) -m benchmarks.bench_train

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
