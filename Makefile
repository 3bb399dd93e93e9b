# impala_tf: `make test` and `make train` work on a fresh machine with only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Test processes in parallel (pytest-xdist); each TF process gets its share of the cores.
TEST_WORKERS ?= 2

.PHONY: install test train timing clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) tests

# Until the actor-learner runtime lands this is a learner-only smoke run: the real update
# of experiments/atari/shallow.gin on random Pong-shaped batches (no environment, no actors).
train: $(STAMP)
	$(BIN)/python -m impala_tf.learner_smoke --gin_file=atari/shallow.gin --num_updates=30 --logdir=logs/learner_smoke

timing: $(STAMP)
	$(BIN)/python experiments/time_learner_update.py

clean:
	rm -rf $(VENV) logs .pytest_cache *.egg-info
