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
# The demo's model and schedule (docs/demo.md: the trials behind each value)
DEMO_MODEL ?= tiny-untied
DEMO_SUPERVISED_TOKENS ?= 190000
DEMO_BATCH_SIZE ?= 2
DEMO_LEARNING_RATE ?= 4e-3
DEMO_WARMUP_DIVISOR ?= 20
DEMO_EVALS ?= 3
# DEMO_SEED_MODE is trained with DEMO_SEEDS seeds (1337, 1338, ...): the report's noise threshold.
# The report calls a difference between layouts only from 3 seeds on; 2 (the default, measured within the
# demo's 10 minutes on 2 cores) give the spread and call nothing: `make demo DEMO_SEEDS=3` for a call.
DEMO_SEED_MODE ?= concat
DEMO_SEEDS ?= 2
DEMO_EXTRA_SEEDS = $(shell seq 1338 $$((1336 + $(DEMO_SEEDS))))
# 1: also padding with batches grouped by length (run padding-grouped, train --group-by-length), the way users
# pad; off by default: whether a fifth run fits the demo's 10 minutes on 2 cores is not measured
DEMO_GROUPED ?=
DEMO_PREP_ARGS ?=
DEMO_REPORT_ARGS ?=
DEMO_TRAIN_ARGS ?= --model $(DEMO_MODEL) --batch-size $(DEMO_BATCH_SIZE) --learning-rate $(DEMO_LEARNING_RATE) \
	--dropout 0 --log-interval 5 --no-progress --eval-batch-size 16
# preps and runs DEMO_JOBS at a time, each run on DEMO_THREADS torch threads (docs/demo.md: why)
DEMO_JOBS ?= 2
DEMO_THREADS ?= $(shell $(PY) -c "import os; n = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') \
	else os.cpu_count(); print(max(1, n // $(DEMO_JOBS)))")
# each layout's steps for the token budget, then its warm-up and evaluation interval (shell)
DEMO_SCHEDULE = steps=$$($(PY) -m shards steps $(DEMO_DIR)/shards/$$mode --supervised-tokens $(DEMO_SUPERVISED_TOKENS) \
	  --batch-size $(DEMO_BATCH_SIZE)) || exit 1; \
	schedule="--max-steps $$steps --warmup-steps $$((steps / $(DEMO_WARMUP_DIVISOR))) \
	  --eval-interval $$(( (steps + $(DEMO_EVALS) - 1) / $(DEMO_EVALS) ))"
DEMO_SEED_RUNS = $(foreach seed,$(DEMO_EXTRA_SEEDS),$(DEMO_DIR)/$(DEMO_SEED_MODE)-seed$(seed))
DEMO_RUNS = $(addprefix $(DEMO_DIR)/,$(DEMO_MODES)) $(if $(DEMO_GROUPED),$(DEMO_DIR)/padding-grouped) \
	$(if $(DEMO_SEED_MODE),$(DEMO_SEED_RUNS))
# HellaSwag-format items written for this repo (README, Data): the demo scores each run on them offline
DEMO_EVAL_ARGS ?= --hellaswag-data train/assets/hellaswag_demo.jsonl
# make corpus: real tokenizers for tests/test_real_tokenizers.py, built once into CORPUS_DIR (tests/real_tokenizers.py)
CORPUS_DIR ?= $(HOME)/.cache/sftpack/llama-cpp-python-0.3.36
export SFTPACK_CORPUS := $(CORPUS_DIR)
CORPUS_SDIST := llama_cpp_python-0.3.36
# make eval: lm-eval tasks on run folders (their best/), model folders or hub ids
EVAL_RUNS ?= $(RUN)
TASKS ?= hellaswag
EVAL_ARGS ?=

.PHONY: install test corpus template-table demo demo-readme shards stats train eval generate bench bench-gpu clean

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

# One worker per core (pytest-xdist, in the dev extra; auto: the physical cores): most tests run
# one torch thread or wait on a child process, so a single worker leaves cores idle.
# --dist loadscope keeps a module's tests on one worker, so its module-scoped fixtures (shard
# sets, runs) are built once. TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= auto

test: $(STAMP) corpus
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope tests prep shards train sftcli

# llama.cpp's vocab-only GGUF files (with reference ids) from the llama-cpp-python sdist on PyPI,
# converted once to saved tokenizers; offline, one line says the corpus tests will be skipped.
# --no-binary for this package only: with :all: pip builds the sdist's build requirements (cmake ...)
# from source to read its metadata, 10 minutes where a wheel takes seconds.
corpus: $(STAMP)
	@mkdir -p "$(CORPUS_DIR)" || exit 1; \
	if [ ! -f "$(CORPUS_DIR)/vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf" ]; then \
	  if ! $(PY) -m pip download -q --no-binary llama-cpp-python --no-deps --timeout 20 --retries 1 \
	      llama-cpp-python==0.3.36 -d "$(CORPUS_DIR)" >/dev/null 2>&1; then \
	    echo "corpus: llama-cpp-python==0.3.36 sdist not downloadable (offline?); the real-tokenizer corpus tests will be skipped"; \
	    exit 0; fi; \
	  tar -xzf "$(CORPUS_DIR)/$(CORPUS_SDIST).tar.gz" -C "$(CORPUS_DIR)" --strip-components=1 --wildcards \
	    '$(CORPUS_SDIST)/vendor/llama.cpp/models/ggml-vocab-*' && rm -f "$(CORPUS_DIR)/$(CORPUS_SDIST).tar.gz" || exit 1; \
	fi; \
	$(PY) -m tests.real_tokenizers build

# The seed's experiment, CPU-sized: same data, validation split, optimizer and schedule shape for
# the three layouts (equal supervised tokens, so each layout its own number of steps),
# plus more seeds of one layout (DEMO_SEEDS); a tiny random-initialised GPT-2 (the real tokenizer).
# The report states the wall time from the first prep to the report, install excluded.
demo: $(STAMP)
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR) && date +%s > $(DEMO_DIR)/started
	@$(MAKE) --no-print-directory -j$(DEMO_JOBS) --output-sync=target $(addsuffix /summary.json,$(DEMO_RUNS))
	$(PY) -m train.eval $(DEMO_RUNS) --tasks hellaswag $(DEMO_EVAL_ARGS)
	$(PY) -m train.report $(DEMO_RUNS) --out $(DEMO_DIR)/report --started $$(cat $(DEMO_DIR)/started) $(DEMO_REPORT_ARGS)

# The demo's pieces, DEMO_JOBS at a time: a layout's shard set, and a run folder named after its
# layout (padding, ..., or concat-seed1338 for another seed). A shard set is kept, not removed as
# an intermediate file: the report reads it (prep writes it whole or not at all).
.PRECIOUS: $(DEMO_DIR)/shards/%/manifest.json
$(DEMO_DIR)/shards/%/manifest.json:
	@$(PY) -m prep --data sample --mode $* --max-length $(DEMO_MAX_LENGTH) --out $(DEMO_DIR)/shards/$* \
	  $(DEMO_PREP_ARGS) >/dev/null
	@echo "prep  $*: $(DEMO_DIR)/shards/$*"

.SECONDEXPANSION:
$(DEMO_DIR)/%/summary.json: $(DEMO_DIR)/shards/$$(firstword $$(subst -seed, ,$$(subst -grouped,,$$*)))/manifest.json
	@mode=$(firstword $(subst -seed, ,$(subst -grouped,,$*))); $(DEMO_SCHEDULE); echo "train $*: $(DEMO_DIR)/$* ($$schedule)"; \
	  OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) -m train --shards $(DEMO_DIR)/shards/$$mode --out $(DEMO_DIR)/$* \
	    $$schedule $(DEMO_TRAIN_ARGS) $(if $(findstring -seed,$*),--seed $(lastword $(subst -seed, ,$*))) \
	    $(if $(findstring -grouped,$*),--group-by-length)

# `make demo` with its report's table, findings and loss curves written into README.md
demo-readme:
	$(MAKE) demo DEMO_REPORT_ARGS="$(DEMO_REPORT_ARGS) --readme README.md"

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
	$(PY) -m benchmarks --markdown benchmarks/results.json --readme README.md --readme docs/benchmarks.md

bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu

clean:
	rm -rf runs reports benchmarks/work $(wildcard shards/*/)

# docs/templates.md's table of llama.cpp's template corpus, from the corpus test's own run (needs `make corpus`)
template-table: $(STAMP) corpus
	$(PY) -m tests.template_corpus --readme docs/templates.md
