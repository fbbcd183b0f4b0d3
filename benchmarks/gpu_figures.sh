#!/usr/bin/env bash
# The accelerator figures of PERFORMANCE.md in one call (~8 minutes on an H100/H200), for a session
# that is lent a GPU for a few minutes: versions, the alternative lowerings checked against lax
# (tests/backend_check.py), then the device-only train step (img/s, MFU, compile) of the rows
# PERFORMANCE.md keeps. Needs JAX with its CUDA plugin and flax; not TensorFlow.
#   bash benchmarks/gpu_figures.sh [OUT_DIR]
# OUT_DIR (default: $OUT, else /tmp/gpu_figures) gets each command's output and, with TRACE=1, a
# jax.profiler trace of ResNet-50's forward + backward (step_anatomy.py). STEPS (default 30) sets
# the timed steps; MODELS (default "resnet50 resnet18 resnet152") the rows after ResNet-50's pair.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-${OUT:-/tmp/gpu_figures}}
steps=${STEPS:-30}
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$out/versions.txt"
python3 tests/backend_check.py 2>&1 | tee "$out/backend_check.txt" | grep -v '^ok ' || true
train_step() {  # MODEL BATCH: one JSON line of the device-only train step, bf16
  python3 -m resnet_jax.benchmark --config=configs/fake.py --mode=train --steps="$steps" \
    --config.model="$1" --config.batch_size="$2" --config.half_precision=True 2>/dev/null | tail -1
}
# ResNet-50 twice: the spread between two runs is part of the figure.
for model in resnet50 resnet50 ${MODELS:-resnet18 resnet152}; do
  train_step "$model" 256 | tee -a "$out/train_step.jsonl"
done
if [[ ${TRACE:-0} == 1 ]]; then
  python3 benchmarks/step_anatomy.py --model=resnet50 --batch=256 --dtype=bfloat16 \
    --trace-dir="$out/trace" 2>&1 | tee "$out/step_anatomy.txt"
fi
