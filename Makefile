# Two commands for a new user:  `make run` (set up + default pipeline)  and  `make test` (set up + tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RECIPE ?= configs/default.yaml

.PHONY: setup anchors run quick run-lm quick-lm shapes-lm teacher-lm teacher-s2s devdocs run-s2s quick-s2s test test-slow lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and exactly pinned: its CPU build comes from the local wheel, not a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

# The tools a user would pick instead of a student, for the causal-LM benchmark's anchors (compress/tasks/causal_lm/anchors.py):
# ONNX Runtime GenAI and llama.cpp's runtimes in the venv (llama.cpp is compiled: several minutes), GenAI's model
# builder in a venv of its own (it needs transformers >= 5), llama.cpp's converter from the same source archive.
ANCHOR_VENV := .venv-anchor-builder
anchors: $(BIN)/.anchors $(ANCHOR_VENV)/.installed .anchors/llama.cpp/SOURCE

$(BIN)/.anchors: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,anchors]"
	touch $@

$(ANCHOR_VENV)/.installed: compress/tasks/causal_lm/anchor-builder.txt
	$(PYTHON) -m venv $(ANCHOR_VENV)
	$(ANCHOR_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(ANCHOR_VENV)/bin/python -m pip install --quiet -r compress/tasks/causal_lm/anchor-builder.txt
	touch $@

.anchors/llama.cpp/SOURCE: $(BIN)/.installed
	$(BIN)/python -m compress.tasks.causal_lm.anchors fetch-llama-cpp .anchors/llama.cpp

run: setup
	HF_HUB_OFFLINE=1 $(BIN)/edge-compress run $(RECIPE)

quick: setup
	HF_HUB_OFFLINE=1 $(BIN)/edge-compress run configs/quick.yaml

run-lm: setup anchors devdocs    # the causal-LM default: the committed teacher (models/devdocs-llama) compressed, anchors
	HF_HUB_OFFLINE=1 $(BIN)/edge-compress run configs/lm.yaml

quick-lm: setup
	HF_HUB_OFFLINE=1 $(BIN)/edge-compress run configs/lm-quick.yaml

# The post-training path at the sizes people ship: random-weight decoders of SmolLM2-135M's, Qwen2.5-0.5B's and
# Llama-3.2-1B's published shapes (compress/tasks/causal_lm/shapes.py) exported, quantized to int4, benchmarked
# against PyTorch, optimum and GenAI's int4, and bundled (configs/lm-ptq-shapes.yaml); wall time and peak RSS of
# each command in $(SHAPES_DIR)/NAME.*-time.txt. SHAPES=... picks others (shapes.py lists them).
SHAPES ?= smollm2-135m qwen2.5-0.5b llama-3.2-1b
SHAPES_DIR ?= runs/shapes
shapes-lm: setup anchors devdocs
	@for s in $(SHAPES); do \
	  set -e; mkdir -p $(SHAPES_DIR); \
	  /usr/bin/time -f "%e s wall, %M KB peak RSS" -o $(SHAPES_DIR)/$$s.build-time.txt \
	    $(BIN)/python -m compress.tasks.causal_lm.shapes $$s --corpus data/devdocs/train.jsonl.gz --out $(SHAPES_DIR)/$$s; \
	  HF_HUB_OFFLINE=1 /usr/bin/time -f "%e s wall, %M KB peak RSS" -o $(SHAPES_DIR)/$$s.run-time.txt \
	    $(BIN)/edge-compress run configs/lm-ptq-shapes.yaml --set teacher.path=$(CURDIR)/$(SHAPES_DIR)/$$s --out runs/shape-$$s; \
	  /usr/bin/time -f "%e s wall, %M KB peak RSS" -o $(SHAPES_DIR)/$$s.bundle-time.txt \
	    $(BIN)/edge-compress bundle runs/shape-$$s --target host --out $(SHAPES_DIR)/$$s.bundle; \
	done

# The seq2seq anchor's runtime (CTranslate2) in the venv.
$(BIN)/.ctranslate2: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,ctranslate2]"
	touch $@

run-s2s: setup $(BIN)/.ctranslate2    # the seq2seq default: the committed models/ding-bart compressed, data/ding
	HF_HUB_OFFLINE=1 $(BIN)/edge-compress run configs/s2s.yaml

quick-s2s: setup
	HF_HUB_OFFLINE=1 $(BIN)/edge-compress run configs/s2s-quick.yaml

# Train the seq2seq default's teacher (configs/s2s-teacher.yaml, in runs/ding-teacher) and publish it into
# models/ding-bart with its model card: 7 epochs (9,338 steps of 64 pairs) took 59.7 minutes on 2 CPU cores, about
# 66 minutes with the export, benchmark and float16 scoring of the published weights.
teacher-s2s: setup $(BIN)/.ctranslate2
	HF_HUB_OFFLINE=1 $(BIN)/python -m compress.tasks.seq2seq.publish configs/s2s-teacher.yaml models/ding-bart

# Train the causal-LM default's teacher from its recipe into models/devdocs-llama, with its model card (measured
# wall time, held-out curve, commit). On 2 CPU cores one epoch of configs/lm-teacher.yaml took 29 to 43 minutes
# (1.5 to 2.3 s per step of 16 blocks); a GPU takes it in minutes (the same recipe, bf16).
teacher-lm: setup devdocs
	HF_HUB_OFFLINE=1 $(BIN)/python -m compress.tasks.causal_lm.publish configs/lm-teacher.yaml models/devdocs-llama

# The teacher's corpus, built from three pinned Debian packages (apt-get download; data/devdocs/README.md).
devdocs: data/devdocs/train.jsonl.gz
data/devdocs/train.jsonl.gz: data/devdocs/prepare.py
	$(PYTHON) data/devdocs/prepare.py

test: setup
	$(BIN)/ruff check compress export benchmarks tests
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=15

test-slow: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check compress export benchmarks tests

clean:
	rm -rf runs $(VENV) $(ANCHOR_VENV) .anchors *.egg-info
