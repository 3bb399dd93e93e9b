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

# The main job: IMPALA on Pong (V-trace actor-critic, one update per batch; shallow network,
# T=5, B=8, Adam with epsilon 1e-3, frames centred), the learner in this process and actor
# processes over loopback gRPC; it prints what it runs and what to expect first. Ctrl-C stops it with a checkpoint;
# running it again resumes. The paper's exact setting: GIN_FILE=atari/pong_shallow.gin.
# TRAIN_ARGS adds flags, e.g. TRAIN_ARGS='--gin_bindings=Launcher.num_actors=4'.
GIN_FILE ?= atari/pong_shallow_adam_t5_b8_centred.gin
LOGDIR ?= logs/$(basename $(notdir $(GIN_FILE)))
train: $(STAMP)
	$(BIN)/python -m impala_tf.train --gin_file=$(GIN_FILE) --logdir=$(LOGDIR) $(TRAIN_ARGS)

timing: $(STAMP)
	$(BIN)/python experiments/time_learner_update.py

clean:
	rm -rf $(VENV) logs .pytest_cache *.egg-info
