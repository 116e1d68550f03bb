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
NPROC ?= 1
PROMPT ?= Give three tips for staying healthy.
DEMO_DIR ?= runs/demo
DEMO_MODES ?= padding packed concat
DEMO_MAX_LENGTH ?= 256
# The demo's model and schedule: chosen so that every layout learns beyond token frequencies
# (best validation loss at least 0.5 nats below the unigram baseline) inside 10 minutes on 2 CPU
# cores, four runs included. See the comment above `demo` for why these values.
DEMO_MODEL ?= tiny
DEMO_STEPS ?= 40
DEMO_BATCH_SIZE ?= 16
DEMO_LEARNING_RATE ?= 1e-3
DEMO_WARMUP_STEPS ?= 5
DEMO_EVAL_INTERVAL ?= 10
# One layout is trained again with another seed: the report's seed-to-seed spread, the scale
# below which it calls no difference between layouts. Empty DEMO_SEED_MODE skips it.
DEMO_SEED_MODE ?= concat
DEMO_SECOND_SEED ?= 1338
DEMO_PREP_ARGS ?=
DEMO_REPORT_ARGS ?=
DEMO_TRAIN_ARGS ?= --model $(DEMO_MODEL) --max-steps $(DEMO_STEPS) --batch-size $(DEMO_BATCH_SIZE) \
	--learning-rate $(DEMO_LEARNING_RATE) --warmup-steps $(DEMO_WARMUP_STEPS) --eval-interval $(DEMO_EVAL_INTERVAL) \
	--log-interval 5 --no-progress
DEMO_SEED_RUN := $(DEMO_DIR)/$(DEMO_SEED_MODE)-seed$(DEMO_SECOND_SEED)
DEMO_RUNS = $(addprefix $(DEMO_DIR)/,$(DEMO_MODES)) $(if $(DEMO_SEED_MODE),$(DEMO_SEED_RUN))

.PHONY: install test demo demo-readme shards stats train generate bench bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(ENV_DIR)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests prep shards train sftcli

# The seed's experiment, CPU-sized: same data, validation split, optimizer and schedule for the
# three layouts (equal optimizer steps; the report says what that means in supervised tokens),
# plus a second seed of one layout; a tiny random-initialised GPT-2 (the real tokenizer).
# The report states the wall time from the first prep to the report, install excluded.
demo: $(STAMP)
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR) && date +%s > $(DEMO_DIR)/started
	@for mode in $(DEMO_MODES); do \
	  $(PY) -m prep --data sample --mode $$mode --max-length $(DEMO_MAX_LENGTH) --out $(DEMO_DIR)/shards/$$mode \
	    $(DEMO_PREP_ARGS) >/dev/null || exit 1; \
	  echo "prep  $$mode: $(DEMO_DIR)/shards/$$mode"; done
	@for mode in $(DEMO_MODES); do \
	  echo "train $$mode: $(DEMO_DIR)/$$mode"; \
	  $(PY) -m train --shards $(DEMO_DIR)/shards/$$mode --out $(DEMO_DIR)/$$mode $(DEMO_TRAIN_ARGS) || exit 1; done
ifneq ($(DEMO_SEED_MODE),)
	@echo "train $(DEMO_SEED_MODE), seed $(DEMO_SECOND_SEED): $(DEMO_SEED_RUN)"
	@$(PY) -m train --shards $(DEMO_DIR)/shards/$(DEMO_SEED_MODE) --out $(DEMO_SEED_RUN) $(DEMO_TRAIN_ARGS) \
	  --seed $(DEMO_SECOND_SEED)
endif
	$(PY) -m train.report $(DEMO_RUNS) --out $(DEMO_DIR)/report --started $$(cat $(DEMO_DIR)/started) $(DEMO_REPORT_ARGS)

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

generate: $(STAMP)
	$(PY) -m train.generate $(RUN)/best "$(PROMPT)"

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks
	$(PY) -m benchmarks --markdown benchmarks/results.json --readme README.md

bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu

clean:
	rm -rf runs reports benchmarks/work $(wildcard shards/*/)
