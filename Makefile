# sftpack: `make demo` runs the whole experiment on the embedded sample; `make test` runs the tests.
# Both create .venv (unless a virtual environment is active) and install what they need.

PYTHON ?= python3
# The CPU build by default: an unpinned `torch` can pull a multi-GB CUDA build.
# On a GPU machine: make install TORCH=torch (or your CUDA wheel spec).
TORCH ?= torch==2.13.0
ifdef VIRTUAL_ENV
ENV_DIR := $(VIRTUAL_ENV)
else
ENV_DIR := .venv
endif
PY := $(ENV_DIR)/bin/python
STAMP := $(ENV_DIR)/.sftpack-installed

# prep / train knobs (see `python -m prep --help`, `python -m train --help`)
DATA ?= yahma/alpaca-cleaned
MODE ?= concat
MAX_LENGTH ?= 256
TOKENIZER ?= gpt2
OUT ?= shards/$(MODE)-$(MAX_LENGTH)
SHARDS ?= shards/$(MODE)-$(MAX_LENGTH)
MODEL ?= gpt2
RUN ?= runs/$(notdir $(SHARDS))
TRAIN_ARGS ?=

.PHONY: install test demo shards stats train bench bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(ENV_DIR)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests prep shards train

demo: $(STAMP)
	$(PY) -m train.demo --out runs/demo

shards: $(STAMP)
	$(PY) -m prep --data $(DATA) --mode $(MODE) --max-length $(MAX_LENGTH) --tokenizer $(TOKENIZER) --out $(OUT)

stats: $(STAMP)
	$(PY) -m shards stats $(wildcard shards/*/)

train: $(STAMP)
	$(PY) -m train --shards $(SHARDS) --model $(MODEL) --out $(RUN) $(TRAIN_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks

bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu

clean:
	rm -rf runs reports benchmarks/work $(wildcard shards/*/)
