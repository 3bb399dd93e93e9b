#!/usr/bin/env bash
# Actor scaling on a machine with many cores, CPU only (the learner on its cores too):
#   PY=python3 bash experiments/many_cores.sh [OUT_DIR] [ACTOR_COUNTS]
# 1. the physical limit's parts at this machine's core count (env, forward, learner);
# 2. end-to-end frames/s of `python -m impala_tf.train` on atari/pong_shallow.gin with each
#    count of actor processes in ACTOR_COUNTS (default: 2, half the cores, all but two);
# 3. the ingest stage with 256 actor streams.
# Figures go to OUT_DIR (default many_cores/) as JSON; docs/scaling.md has those measured.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-many_cores}
PY=${PY:-.venv/bin/python}
CORES=$(nproc)
COUNTS=${2:-2,$(( CORES / 2 )),$(( CORES > 4 ? CORES - 2 : 2 ))}
SECONDS_PER_STAGE=${SECONDS_PER_STAGE:-12}
mkdir -p "$OUT"
echo "== $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname): $CORES cores; actors $COUNTS"
$PY -m impala_tf.tools.benchmark --gin_file=atari/pong_shallow.gin \
  --seconds="$SECONDS_PER_STAGE" --stages=env,forward,learner --scaling \
  --scaling_actors="$COUNTS" --scaling_devices=1 --json="$OUT/pong_shallow_scaling.json"
$PY -m impala_tf.tools.benchmark --gin_file=atari/pong_shallow.gin \
  --seconds="$SECONDS_PER_STAGE" --stages=ingest --ingest_actors=256 \
  --json="$OUT/pong_shallow_ingest256.json" | tail -n 4
echo "== done: figures in $OUT/"
