#!/usr/bin/env bash
# The GPU check, from a clean checkout on a machine with an NVIDIA GPU, in about 5 minutes:
#   bash experiments/device_check.sh [OUT_DIR]
# 1. installs (make install, then TensorFlow's CUDA wheels: tensorflow[and-cuda]), unless
#    PY names an interpreter that already has them (a machine without network access);
# 2. confirms that the learner's step runs on the GPU (its variables live there and one
#    update changes them);
# 3. trains Catch with the learner on the GPU and the actors on CPUs (mean return);
# 4. prints Pong frames/s for atari/pong_shallow.gin and atari/experts_deep.gin with the
#    learner on the GPU: the learner's update loop alone and end to end with actors on the
#    host's cores (python -m impala_tf.tools.benchmark --gpu).
# Every figure goes to OUT_DIR (default device_check/) as JSON, dated; docs/scaling.md has
# the ones measured so far.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-device_check}
mkdir -p "$OUT"
INSTALL=${PY:+no}
PY=${PY:-.venv/bin/python}
CORES=$(nproc)
ACTORS=$(( CORES > 4 ? CORES - 2 : 2 ))  # leave two cores to the learner's host side
echo "== $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname): $CORES cores, $ACTORS actors"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || {
  echo "device_check: no NVIDIA GPU (nvidia-smi failed)"; exit 1; }

if [ -z "$INSTALL" ]; then
  echo "== 1. install"
  make install
  TF_VERSION=$($PY -c "import importlib.metadata as m; print(m.version('tensorflow'))")
  $PY -m pip install --quiet "tensorflow[and-cuda]==$TF_VERSION"
else
  echo "== 1. install: skipped, PY=$PY"
fi

echo "== 2. the learner's step on the GPU"
$PY experiments/accelerator_step.py --device=GPU | tee "$OUT/gpu_step.txt"

echo "== 3. Catch, the learner on the GPU"
rm -rf "$OUT/catch"
$PY -m impala_tf.train --gin_file=catch.gin --logdir="$OUT/catch" --max_frames=300000 \
  --gin_bindings="Launcher.num_actors = $ACTORS" | tail -n 3
$PY - "$OUT/catch/metrics.jsonl" <<'EOF'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
returns = [r["episode_return_mean"] for r in records if r["episodes"]]
print(f"Catch: mean return {returns[-1]:.2f} at {records[-1]['env_frames']:,} frames "
      f"({records[-1]['fps']:,.0f} frames/s)")
EOF

echo "== 4. Pong frames/s, the learner on the GPU"
for gin in atari/pong_shallow.gin atari/experts_deep.gin; do
  name=$(basename "$gin" .gin)
  $PY -m impala_tf.tools.benchmark --gin_file="$gin" --gpu --seconds=${SECONDS_PER_STAGE:-20} \
    --stages=learner,end_to_end --gin_bindings="Launcher.num_actors = $ACTORS" \
    --json="$OUT/benchmark_$name.json" | tail -n 12
done
echo "== done: figures in $OUT/"
