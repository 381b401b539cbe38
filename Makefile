# Two commands for a new user:  `make run` (set up + default pipeline)  and  `make test` (set up + tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RECIPE ?= configs/default.yaml

.PHONY: setup run quick run-lm quick-lm test test-slow lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and exactly pinned: its CPU build comes from the local wheel, not a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

run: setup
	HF_HUB_OFFLINE=1 $(BIN)/edge-compress run $(RECIPE)

quick: setup
	HF_HUB_OFFLINE=1 $(BIN)/edge-compress run configs/quick.yaml

run-lm: setup    # the causal-LM default: a Llama-style teacher pretrained here, a student, int4/int8, ~45 min
	HF_HUB_OFFLINE=1 $(BIN)/edge-compress run configs/lm.yaml

quick-lm: setup
	HF_HUB_OFFLINE=1 $(BIN)/edge-compress run configs/lm-quick.yaml

test: setup
	$(BIN)/ruff check compress export benchmarks tests
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check compress export benchmarks tests

clean:
	rm -rf runs $(VENV) *.egg-info
