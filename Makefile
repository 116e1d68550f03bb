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
# The demo's model and schedule: every layout trains on the same number of supervised tokens
# (DEMO_SUPERVISED_TOKENS; `python -m shards steps` turns it into each layout's optimizer steps,
# with warm-up 1/DEMO_WARMUP_DIVISOR of them and DEMO_EVALS evaluations), so the schedules match
# in tokens and the report compares the layouts at equal supervised tokens seen. Why these values:
# - the `tiny-untied` shape (train/model.py): `tiny` (2 layers, 64 wide) with an LM head of its own.
#   A CPU step is dominated by the 50k-token LM head, which runs only on labelled positions, so a
#   step costs about the same per supervised token in every layout: equal tokens is also equal
#   compute. Wider (n_embd 128) or narrower (32) models learned no faster per CPU second, nor did
#   4 layers per token (7.074 vs 7.035 at 86k). Untying the head was the lever: at 180k tokens
#   (unigram baseline 7.217; packed's own 7.186) the tied `tiny` got concat 6.724 and 6.803 (two
#   seeds), padding 6.760, packed 6.831 (0.36 to 0.49 below the baseline); `tiny-untied`, same data,
#   schedule and seeds, got concat 6.715 and 6.725, padding 6.588, packed 6.672 (0.49 to 0.63 below).
#   At 64 dimensions one matrix serving as both the input and the output embedding learned slower.
# - batch 2 rows at a peak learning rate of 4e-3: more updates per supervised token. Single concat
#   runs of the tied model (best validation loss; unigram baseline 7.217):
#     120k tokens: batch 2 at 4e-3 6.890, at 3e-3 6.931; batch 4 at 6e-3 6.975;
#     170k tokens: batch 2 at 4e-3 6.723, at 6e-3 6.854; batch 4 at 6e-3 6.912.
#   AdamW beta2 0.95 (nanoGPT's) did not help (6.703 and 6.951 for two concat seeds, against 6.737
#   and 6.878). Rows of 512 (batch 1, the same tokens a step) did worse for concat (0.32 below the
#   baseline against 0.49) and about as well for packed (0.39 against 0.36).
# - dropout 0: under two epochs the model is under-fitting, where dropout only slows the fit.
# - 190k supervised tokens (about two epochs of the sample) and 3 evaluations a run (one, with its
#   checkpoints, costs about 6 s of a 250 s run): what four runs, prep, the lm-eval step and the
#   report fit into 10 minutes on 2 idle cores with a margin, runs two at a time (below). 200k
#   tokens with 4 evaluations took 558 s and 596 s in two runs (the machine's speed varies), all
#   four runs 0.55 to 0.64 below the baseline; three padding seeds there gave 0.55, 0.60, 0.61
#   below. The fused AdamW (train/step.py) made room for it: torch's default CPU update took a
#   quarter of a `tiny-untied` step.
DEMO_MODEL ?= tiny-untied
DEMO_SUPERVISED_TOKENS ?= 190000
DEMO_BATCH_SIZE ?= 2
DEMO_LEARNING_RATE ?= 4e-3
DEMO_WARMUP_DIVISOR ?= 20
DEMO_EVALS ?= 3
# One layout is trained again with another seed: the report's seed-to-seed spread, the scale
# below which it calls no difference between layouts. Empty DEMO_SEED_MODE skips it.
DEMO_SEED_MODE ?= concat
DEMO_SECOND_SEED ?= 1338
DEMO_PREP_ARGS ?=
DEMO_REPORT_ARGS ?=
DEMO_TRAIN_ARGS ?= --model $(DEMO_MODEL) --batch-size $(DEMO_BATCH_SIZE) --learning-rate $(DEMO_LEARNING_RATE) \
	--dropout 0 --log-interval 5 --no-progress --eval-batch-size 16
# Preps and runs go DEMO_JOBS at a time, each run on DEMO_THREADS torch threads (the cores shared
# out): on 2 cores, two 1-thread runs did 1.4x the steps of one 2-thread run in the same wall
# time (a trial of whole 80-step commands, alternated), start-up and evaluation included. The
# report says which runs shared the machine when it gives their throughput.
DEMO_JOBS ?= 2
DEMO_THREADS ?= $(shell $(PY) -c "import os; n = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') \
	else os.cpu_count(); print(max(1, n // $(DEMO_JOBS)))")
# each layout's steps for the token budget, then its warm-up and evaluation interval (shell)
DEMO_SCHEDULE = steps=$$($(PY) -m shards steps $(DEMO_DIR)/shards/$$mode --supervised-tokens $(DEMO_SUPERVISED_TOKENS) \
	  --batch-size $(DEMO_BATCH_SIZE)) || exit 1; \
	schedule="--max-steps $$steps --warmup-steps $$((steps / $(DEMO_WARMUP_DIVISOR))) \
	  --eval-interval $$(( (steps + $(DEMO_EVALS) - 1) / $(DEMO_EVALS) ))"
DEMO_SEED_RUN := $(DEMO_DIR)/$(DEMO_SEED_MODE)-seed$(DEMO_SECOND_SEED)
DEMO_RUNS = $(addprefix $(DEMO_DIR)/,$(DEMO_MODES)) $(if $(DEMO_SEED_MODE),$(DEMO_SEED_RUN))
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
	@if [ -f "$(CORPUS_DIR)/.built" ]; then exit 0; fi; mkdir -p "$(CORPUS_DIR)" || exit 1; \
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
# plus a second seed of one layout; a tiny random-initialised GPT-2 (the real tokenizer).
# The report states the wall time from the first prep to the report, install excluded.
demo: $(STAMP)
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR) && date +%s > $(DEMO_DIR)/started
	@$(MAKE) --no-print-directory -j$(DEMO_JOBS) --output-sync=target $(addsuffix /summary.json,$(DEMO_RUNS))
	$(PY) -m train.eval $(DEMO_RUNS) --tasks hellaswag $(DEMO_EVAL_ARGS)
	$(PY) -m train.report $(DEMO_RUNS) --out $(DEMO_DIR)/report --started $$(cat $(DEMO_DIR)/started) $(DEMO_REPORT_ARGS)

# The demo's pieces, DEMO_JOBS at a time: a layout's shard set, and a run folder named after its
# layout (padding, ..., or concat-seed1338 for the second seed). A shard set is kept, not removed as
# an intermediate file: the report reads it (prep writes it whole or not at all).
.PRECIOUS: $(DEMO_DIR)/shards/%/manifest.json
$(DEMO_DIR)/shards/%/manifest.json:
	@$(PY) -m prep --data sample --mode $* --max-length $(DEMO_MAX_LENGTH) --out $(DEMO_DIR)/shards/$* \
	  $(DEMO_PREP_ARGS) >/dev/null
	@echo "prep  $*: $(DEMO_DIR)/shards/$*"

.SECONDEXPANSION:
$(DEMO_DIR)/%/summary.json: $(DEMO_DIR)/shards/$$(firstword $$(subst -seed, ,$$*))/manifest.json
	@mode=$(firstword $(subst -seed, ,$*)); $(DEMO_SCHEDULE); echo "train $*: $(DEMO_DIR)/$* ($$schedule)"; \
	  OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) -m train --shards $(DEMO_DIR)/shards/$$mode --out $(DEMO_DIR)/$* \
	    $$schedule $(DEMO_TRAIN_ARGS) $(if $(findstring -seed,$*),--seed $(DEMO_SECOND_SEED))

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
	$(PY) -m benchmarks --markdown benchmarks/results.json --readme README.md

bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu

clean:
	rm -rf runs reports benchmarks/work $(wildcard shards/*/)

# docs/templates.md's table of llama.cpp's template corpus, from the corpus test's own run (needs `make corpus`)
template-table: $(STAMP) corpus
	$(PY) -m tests.template_corpus --readme docs/templates.md
