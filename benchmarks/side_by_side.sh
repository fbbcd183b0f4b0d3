#!/usr/bin/env bash
# resnet_jax's train step beside PyTorch's (torchvision's ResNet, SGD), same machine, same batch,
# one after the other in one run; prints a markdown table of img/s and the ratio.
#   pip install torch==2.13.0 && bash benchmarks/side_by_side.sh [STEPS]
# Each line: model, image size, global batch. Override with CASES="cifar_resnet20 32 128;...".
# OURS_FLAGS adds flags to resnet_jax's command, e.g. OURS_FLAGS=--config.cpu_convolution=xla.
# REPEATS=N runs each pair N times in turn (a row each) and adds a row with the median ratio and
# its range: on a shared VM either side's img/s moves 10-30% between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-5}
repeats=${REPEATS:-1}
IFS=';' read -ra cases <<< "${CASES:-cifar_resnet20 32 128;resnet18 224 16;resnet50 224 8}"
read -ra ours_flags <<< "${OURS_FLAGS:-}"
json_field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
echo "| model | image | batch | resnet_jax img/s | PyTorch img/s | resnet_jax / PyTorch | compile s |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for case in "${cases[@]}"; do
  read -r model size batch <<< "$case"
  classes=$([[ $model == cifar* ]] && echo 10 || echo 1000)
  ratios=()
  for ((r = 0; r < repeats; r++)); do
    ours=$(python3 -m resnet_jax.benchmark --config=configs/fake.py --mode=train --steps="$steps" \
      --config.model="$model" --config.image_size="$size" --config.batch_size="$batch" \
      --config.num_classes="$classes" "${ours_flags[@]}" 2>/dev/null)
    theirs=$(python3 benchmarks/pytorch_train_step.py --model="$model" --image-size="$size" \
      --batch="$batch" --num-classes="$classes" --steps="$steps")
    a=$(json_field images_per_sec <<< "$ours")
    b=$(json_field images_per_sec <<< "$theirs")
    c=$(json_field compile_time_s <<< "$ours")
    ratios+=("$(python3 -c "print($a / $b)")")
    python3 -c "print(f'| $model | $size | $batch | {$a:.1f} | {$b:.1f} | {$a/$b:.2f} | {$c:.1f} |')"
  done
  if ((repeats > 1)); then
    python3 -c "import statistics as s; r = [${ratios[*]/%/,}]; print(f'| $model | $size | $batch | median of $repeats | | {s.median(r):.2f} ({min(r):.2f}-{max(r):.2f}) | |')"
  fi
done
