# sftpack: `make demo` runs the whole experiment on the embedded sample; `make test` runs the tests.
# Both create .venv (unless a virtual environment is active) and install what they need.

PYTHON ?= python3
# The CPU build by default, from PyTorch's CPU wheel index where it is reachable: on Linux the
# default registry's `torch` is the multi-GB CUDA build. On a GPU machine: make install TORCH=torch
# (or your CUDA wheel spec), which skips the CPU index. torch already in the environment is kept.
TORCH ?= torch==2.13.0
TORCH_INDEX ?= $(if $(filter command line environment,$(origin TORCH)),,https://download.pytorch.org/whl/cpu)
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
NPROC ?= 1
PROMPT ?= Give three tips for staying healthy.
DEMO_DIR ?= runs/demo
DEMO_MODES ?= padding packed concat
DEMO_MAX_LENGTH ?= 256
DEMO_STEPS ?= 40
DEMO_PREP_ARGS ?=
DEMO_REPORT_ARGS ?=
DEMO_TRAIN_ARGS ?= --model tiny --max-steps $(DEMO_STEPS) --warmup-steps 5 --learning-rate 1e-3 \
	--eval-interval 10 --log-interval 5 --no-progress
# HellaSwag-format items written for this repo (README, Data): the demo scores each run on them offline
DEMO_EVAL_ARGS ?= --hellaswag-data train/assets/hellaswag_demo.jsonl
# make eval: lm-eval tasks on run folders (their best/), model folders or hub ids
EVAL_RUNS ?= $(RUN)
TASKS ?= hellaswag
EVAL_ARGS ?=

.PHONY: install test demo demo-readme shards stats train eval generate bench bench-gpu clean

install: $(STAMP)

# torch is installed only where there is none, and pinned while the project installs, so that
# neither a stale stamp nor a dependency resolve ever replaces the torch an environment has.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(ENV_DIR)
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "install: keeping torch $$($(PY) -c 'import torch; print(torch.__version__)') of $(ENV_DIR)"; \
	elif [ -n "$(TORCH_INDEX)" ] && $(PY) -c "import urllib.request as u; u.urlopen('$(TORCH_INDEX)/torch/', timeout=15)" 2>/dev/null; then \
	  echo "install: $(TORCH), the CPU build, from $(TORCH_INDEX)"; \
	  $(PY) -m pip install -q --extra-index-url $(TORCH_INDEX) "$(TORCH)"; \
	else \
	  echo "install: $(TORCH) from the default package index$(if $(TORCH_INDEX), ($(TORCH_INDEX) is unreachable; on Linux this can be a CUDA build))"; \
	  $(PY) -m pip install -q "$(TORCH)"; \
	fi
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(ENV_DIR)/.sftpack-torch 2>/dev/null
	$(PY) -m pip install -q -c $(ENV_DIR)/.sftpack-torch -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests prep shards train sftcli

# The seed's experiment, CPU-sized: same data, validation split and hyperparameters for the
# three layouts; a tiny random-initialised GPT-2 (the real tokenizer) so it ends in minutes.
demo: $(STAMP)
	@rm -rf $(DEMO_DIR)
	@for mode in $(DEMO_MODES); do \
	  $(PY) -m prep --data sample --mode $$mode --max-length $(DEMO_MAX_LENGTH) --out $(DEMO_DIR)/shards/$$mode \
	    $(DEMO_PREP_ARGS) >/dev/null || exit 1; \
	  echo "prep  $$mode: $(DEMO_DIR)/shards/$$mode"; done
	@for mode in $(DEMO_MODES); do \
	  echo "train $$mode: $(DEMO_DIR)/$$mode"; \
	  $(PY) -m train --shards $(DEMO_DIR)/shards/$$mode --out $(DEMO_DIR)/$$mode $(DEMO_TRAIN_ARGS) || exit 1; done
	$(PY) -m train.eval $(addprefix $(DEMO_DIR)/,$(DEMO_MODES)) --tasks hellaswag $(DEMO_EVAL_ARGS)
	$(PY) -m train.report $(addprefix $(DEMO_DIR)/,$(DEMO_MODES)) --out $(DEMO_DIR)/report $(DEMO_REPORT_ARGS)

# `make demo`, then its results table and findings into README.md
demo-readme: demo
	$(PY) -m train.report $(addprefix $(DEMO_DIR)/,$(DEMO_MODES)) --out $(DEMO_DIR)/report --readme README.md

shards: $(STAMP)
	$(PY) -m prep --data $(DATA) --mode $(MODE) --max-length $(MAX_LENGTH) --tokenizer $(TOKENIZER) --out $(OUT)

stats: $(STAMP)
	$(PY) -m shards stats $(wildcard shards/*/)

train: $(STAMP)
ifeq ($(NPROC),1)
	$(PY) -m train --shards $(SHARDS) --model $(MODEL) --out $(RUN) $(TRAIN_ARGS)
else
	$(ENV_DIR)/bin/torchrun --nproc_per_node $(NPROC) -m train --shards $(SHARDS) --model $(MODEL) --out $(RUN) $(TRAIN_ARGS)
endif

# lm-eval on each run's best/ into RUN/eval.json (lm_eval comes with the dev extra; alone: pip install -e '.[eval]')
eval: $(STAMP)
	$(PY) -m train.eval $(EVAL_RUNS) --tasks $(TASKS) $(EVAL_ARGS)

generate: $(STAMP)
	$(PY) -m train.generate $(RUN)/best "$(PROMPT)"

bench: $(STAMP)
	$(PY) -m benchmarks
	$(PY) -m benchmarks --markdown benchmarks/results.json --readme README.md

bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu

clean:
	rm -rf runs reports benchmarks/work $(wildcard shards/*/)
