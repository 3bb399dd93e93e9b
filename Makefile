# impala_tf: `make test` and `make train` work on a fresh machine with only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Test processes in parallel (pytest-xdist); each TF process gets its share of the cores.
TEST_WORKERS ?= 2

.PHONY: install test test-random test-tf220 bazel-test mutate catch train timing clean

$(STAMP): requirements.txt pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# In file order; `make test-random` runs the suite in a random order (pytest-randomly; its
# seed is printed first, SEED=N repeats an order): no test may depend on another's leftovers.
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -p no:randomly tests

SEED ?= $(shell date +%s)
test-random: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -p randomly --randomly-seed=$(SEED) tests

# The core tests on TensorFlow 2.20, the version of the newest TPU build (requirements-tpu.txt):
# a second virtualenv, .venv-tf2.20, with that file's pins and the CPU build of the same
# TensorFlow in place of tensorflow-tpu and libtpu. CI runs it after `make test`.
VENV_TF220 := .venv-tf2.20
STAMP_TF220 := $(VENV_TF220)/.installed-stamp
TF220_TESTS := tests/test_vtrace.py tests/test_train_step.py tests/test_learner.py \
	tests/test_central_inference.py tests/test_distribute.py tests/test_inference_step.py \
	tests/test_end_to_end.py::test_catch_learns_with_actor_processes

$(STAMP_TF220): requirements-tpu.txt pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV_TF220)
	$(VENV_TF220)/bin/python -m pip install --quiet --upgrade pip
	sed -e 's/^tensorflow-tpu==/tensorflow==/' -e '/^libtpu==/d' requirements-tpu.txt \
		> $(VENV_TF220)/requirements-cpu.txt
	$(VENV_TF220)/bin/python -m pip install --quiet -r $(VENV_TF220)/requirements-cpu.txt
	$(VENV_TF220)/bin/python -m pip install --quiet --no-deps -e .
	touch $(STAMP_TF220)

test-tf220: $(STAMP_TF220)
	$(VENV_TF220)/bin/python -c 'import tensorflow as tf; assert tf.__version__.startswith("2.20."), tf.__version__; print("TensorFlow", tf.__version__)'
	$(VENV_TF220)/bin/python -m pytest -n $(TEST_WORKERS) -p no:randomly $(TF220_TESTS)

# The fast tests under Bazel (Debian's bazel-bootstrap, installed when missing), offline
# when ../shared/third_party/bazel holds the repositories Bazel pins; see bazel/test.sh.
BAZEL_OFFLINE ?= ../shared/third_party/bazel
bazel-test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash bazel/test.sh $(BAZEL_OFFLINE)

# Mutation testing of the core modules (V-trace, losses, the train step, PopArt, the batcher,
# specs, frames and their packing, validation, the codec, the unroll builder) with their own
# tests: mutmut, configured in pyproject.toml's [tool.mutmut]; about an hour on 2 cores; not
# part of CI. Prints the score per module (experiments/mutation_scores.py); docs/testing.md
# records the last run and what each survivor is. `$(BIN)/mutmut show NAME` shows a mutant.
MUTMUT_VERSION ?= 3.8.1
mutate: $(STAMP)
	$(BIN)/python -m pip install --quiet mutmut==$(MUTMUT_VERSION)
	rm -rf mutants
	$(BIN)/mutmut run --max-children $(TEST_WORKERS) || true
	$(BIN)/python experiments/mutation_scores.py

# The first run: IMPALA on Catch (catch.gin, 300k frames, about 90 s on 2 cores with the
# evaluation; the return climbs from about -0.5 to 0.99), then 100 evaluation games and curves.png.
# Running it again resumes the finished run (and stops at once): rm -rf logs/catch first.
catch: $(STAMP)
	$(BIN)/python -m impala_tf.train --gin_file=catch.gin --logdir=logs/catch
	$(BIN)/python -m impala_tf.evaluate --logdir=logs/catch --num_episodes=100
	$(BIN)/python -m impala_tf.plot logs/catch

# The main job: IMPALA on Pong (V-trace actor-critic, one update per batch; shallow network,
# T=5, B=8, Adam with epsilon 1e-3, frames centred), the learner in this process and actor
# processes over loopback gRPC, for FRAMES emulator frames (12M: the budget its result was
# measured on, about 70-80 min on 2 cores), then EVAL_EPISODES evaluation games (30; the
# paper's conditions, no-op starts and whole games, but the paper plays 200) and
# LOGDIR/curves.png. FRAMES=2e8 is the paper's budget (the learning-rate schedule is the
# paper's 200M either way). Ctrl-C stops it with a checkpoint; running it again resumes.
# The paper's exact setting: GIN_FILE=atari/pong_shallow.gin.
# TRAIN_ARGS adds flags, e.g. TRAIN_ARGS='--gin_bindings=Launcher.num_actors=4'.
GIN_FILE ?= atari/pong_shallow_adam_t5_b8_centred.gin
LOGDIR ?= logs/$(basename $(notdir $(GIN_FILE)))
FRAMES ?= 12e6
EVAL_EPISODES ?= 30
train: $(STAMP)
	@echo "make train: $(GIN_FILE) for $(FRAMES) frames into $(LOGDIR), then an evaluation" \
	  "($(EVAL_EPISODES) games) and $(LOGDIR)/curves.png. Ctrl-C stops with a checkpoint;" \
	  "running it again resumes. FRAMES=2e8 is the paper's budget."
	$(BIN)/python -m impala_tf.train --gin_file=$(GIN_FILE) --logdir=$(LOGDIR) \
	  --max_frames=$(FRAMES) $(TRAIN_ARGS)
	$(BIN)/python -m impala_tf.evaluate --logdir=$(LOGDIR) --num_episodes=$(EVAL_EPISODES)
	$(BIN)/python -m impala_tf.plot $(LOGDIR)

timing: $(STAMP)
	$(BIN)/python experiments/time_learner_update.py

clean:
	rm -rf $(VENV) $(VENV_TF220) logs .pytest_cache *.egg-info .bazel-deps mutants
	-command -v bazel >/dev/null && bazel --batch clean --expunge
