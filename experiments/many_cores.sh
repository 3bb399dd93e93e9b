#!/usr/bin/env bash
# A machine with many cores, CPU only (the learner on its cores too):
#   PY=python3 bash experiments/many_cores.sh [OUT_DIR] [PARTS...]
# PARTS (default: all three):
#   scaling  the physical limit's parts at this core count (env, forward, learner), then
#            end-to-end frames/s of `python -m impala_tf.train` on atari/pong_shallow.gin
#            with ACTOR_COUNTS actor processes (default: 2, half the cores, all but two);
#   modes    end-to-end with all but two cores' worth of actors in each inference mode
#            (Launcher.inference: actor, central), then central inference with twice as
#            many of its light actor processes;
#   ingest   the ingest stage with 256 actor streams.
# Figures go to OUT_DIR (default many_cores/) as JSON; docs/scaling.md has those measured.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-many_cores}
shift || true
PARTS=${*:-scaling modes ingest}
PY=${PY:-.venv/bin/python}
CORES=$(nproc)
ACTORS=$(( CORES > 4 ? CORES - 2 : 2 ))
COUNTS=${ACTOR_COUNTS:-2,$(( CORES / 2 )),$ACTORS}
SECONDS_PER_STAGE=${SECONDS_PER_STAGE:-12}
BENCH="$PY -m impala_tf.tools.benchmark --gin_file=atari/pong_shallow.gin --seconds=$SECONDS_PER_STAGE"
mkdir -p "$OUT"
echo "== $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname): $CORES cores; $PARTS"
for part in $PARTS; do
  case $part in
    scaling)
      $BENCH --stages=env,forward,learner --scaling --scaling_actors="$COUNTS" \
        --scaling_devices=1 --inference=actor --json="$OUT/pong_shallow_scaling.json" ;;
    modes)
      $BENCH --stages=env,forward,learner,end_to_end --inference=actor,central \
        --gin_bindings="Launcher.num_actors = $ACTORS" --json="$OUT/pong_shallow_modes.json"
      $BENCH --stages= --scaling --scaling_actors=$(( 2 * ACTORS )) --scaling_devices=1 \
        --inference=central --json="$OUT/pong_shallow_central_more.json" | grep "end-to-end (" ;;
    ingest)
      $BENCH --stages=ingest --ingest_actors=256 \
        --json="$OUT/pong_shallow_ingest256.json" | tail -n 4 ;;
    *) echo "many_cores.sh: unknown part $part (scaling, modes, ingest)"; exit 2 ;;
  esac
done
echo "== done: figures in $OUT/"
