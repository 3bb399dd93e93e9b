#!/usr/bin/env bash
# The TPU check, ready for the first TPU (none has run impala_tf yet), in about 10 minutes:
#   bash experiments/tpu_check.sh [OUT_DIR]
# On a Cloud TPU VM (tpu-vm-tf-2.20.0-pjrt), as is. On a pod slice (the -pod runtime), on
# worker 0 only, with the slice's name: TPU_ADDRESS=my-v4-32 TPU_LOAD_LIBRARY=0 bash ...
# 1. installs requirements-tpu.txt (tensorflow-tpu, libtpu) into .venv-tpu, unless PY names
#    an interpreter that already has them;
# 2. one update with the batch split over every TPU core, the variables on the cores, and
#    central inference's step on the first core (experiments/accelerator_step.py);
# 3. trains Catch with the learner on the TPU and the actors on the host's CPUs (mean return);
# 4. prints Pong frames/s for atari/pong_shallow.gin with the learner on the TPU, end to end
#    in both inference modes (actor, central), and the learner loop's own cost per update.
# Every figure goes to OUT_DIR (default tpu_check/); docs/scaling.md says what to expect.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-tpu_check}
mkdir -p "$OUT"
TPU_ADDRESS=${TPU_ADDRESS:-local}
INSTALL=${PY:+no}
PY=${PY:-.venv-tpu/bin/python}
CORES=$(nproc)
ACTORS=$(( CORES > 8 ? CORES - 4 : 4 ))  # the learner's host side keeps four cores
BATCH=${BATCH:-32}  # a multiple of the slice's cores (32 on a v3-32, 16 on a v4-32)
TPU=(--gin_bindings="make_strategy.kind = 'tpu'"
     --gin_bindings="make_strategy.tpu_address = '$TPU_ADDRESS'")
echo "== $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname): $CORES cores, $ACTORS actors, TPU $TPU_ADDRESS"

if [ -z "$INSTALL" ]; then
  echo "== 1. install"
  python3 -m venv .venv-tpu
  $PY -m pip install --quiet -r requirements-tpu.txt
  $PY -m pip install --quiet --no-deps -e .
else
  echo "== 1. install: skipped, PY=$PY"
fi

echo "== 2. the learner's step and central inference on the TPU cores"
$PY experiments/accelerator_step.py --device=TPU --tpu_address="$TPU_ADDRESS" \
  --batch_size="$BATCH" | tee "$OUT/tpu_step.txt"

echo "== 3. Catch, the learner on the TPU"
rm -rf "$OUT/catch"
$PY -m impala_tf.train --gin_file=catch.gin --logdir="$OUT/catch" --max_frames=300000 \
  "${TPU[@]}" --gin_bindings="RunConfig.batch_size = $BATCH" \
  --gin_bindings="Launcher.num_actors = $ACTORS" | tail -n 3
$PY - "$OUT/catch/metrics.jsonl" <<'PYEOF'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
returns = [r["episode_return_mean"] for r in records if r["episodes"]]
print(f"Catch: mean return {returns[-1]:.2f} at {records[-1]['env_frames']:,} frames "
      f"({records[-1]['fps']:,.0f} frames/s)")
PYEOF

echo "== 4. Pong frames/s, the learner on the TPU, both inference modes"
$PY -m impala_tf.tools.benchmark --gin_file=atari/pong_shallow.gin \
  --seconds=${SECONDS_PER_STAGE:-30} --stages=end_to_end,loop --inference=actor,central \
  "${TPU[@]}" --gin_bindings="RunConfig.batch_size = $BATCH" \
  --gin_bindings="Launcher.num_actors = $ACTORS" --json="$OUT/benchmark_pong.json" | tail -n 8
echo "== done: figures in $OUT/"
