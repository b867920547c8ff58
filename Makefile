# The two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use: PyTorch first (TORCH, the CPU build pinned for this machine;
# on a GPU machine use e.g. `make TORCH=torch`), then this package (ddpm-tool) with its dev extra.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/ddpm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	# a peer of benchmarks/quality/peers.py; its torchvision does not install beside this torch, and it runs without
	$(BIN)/python -m pip install -q --no-deps denoising-diffusion-pytorch==2.3.4
	touch $@

demo: $(BIN)/ddpm
	$(BIN)/ddpm demo

test: $(BIN)/ddpm
	$(BIN)/python -m pytest -n auto

clean:
	rm -rf $(VENV) .pytest_cache
