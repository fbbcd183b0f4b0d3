#!/usr/bin/env bash
# The training input pipeline beside the plain tf.data baseline (whole decode, resize, crop, flip)
# on the same JPEGs and cores, alternated in one run; prints a markdown table of img/s and ratios.
#   bash benchmarks/input_side_by_side.sh [ROUNDS]
# Each round times resnet_jax's pipeline as configured (pixel_ops=device: it ends at uint8 crops),
# the same with --config.pixel_ops=host (lighting, normalisation and flip on the host too), the
# same with RandAugment (2 ops at magnitude 9, torchvision's default), with TrivialAugmentWide,
# with AutoAugment (ImageNet's policy) and with timm's RandAugment (rand-m7-mstd0.5-inc1, "ResNet
# strikes back"'s) on the uint8 crops, the baseline, and the peer: timm's own PIL loader with the
# same RandAugment (benchmarks/timm_pil_loader.py; needs pip install --no-deps timm==1.0.31, else
# its columns read nan). CORES=N gives tf.data N threads and the peer N worker processes (default
# 1, pinned to the first N cores with taskset); STEPS=N batches of 128 per timing (default 16; the
# peer times 32 x STEPS images per worker). On a shared VM a timing moves 5-10% between runs:
# compare the ratios of one round, not img/s across runs or machines.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cores=${CORES:-1}
steps=${STEPS:-16}
rate() {
  taskset -c "0-$((cores - 1))" python3 -m resnet_jax.benchmark --config=configs/fake.py \
    --cores="$cores" --steps="$steps" --config.batch_size=128 "$@" 2>/dev/null \
    | python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['images_per_sec'])"
}
peer() {
  taskset -c "0-$((cores - 1))" python3 benchmarks/timm_pil_loader.py --workers="$cores" \
    --images=$((steps * 32)) 2>/dev/null \
    | python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['images_per_sec'])" \
    || echo nan
}
echo "| round | device img/s | host img/s | RandAugment img/s | TrivialAugment img/s | AutoAugment img/s | timm RandAugment img/s | baseline img/s | timm's PIL img/s | device / baseline | host / baseline | RandAugment / baseline | TrivialAugment / baseline | AutoAugment / baseline | timm RandAugment / baseline | timm RandAugment / timm's PIL |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for ((r = 1; r <= rounds; r++)); do
  device=$(rate --mode=input)
  host=$(rate --mode=input --config.pixel_ops=host)
  rand=$(rate --mode=input --config.augment_policy=randaugment)
  trivial=$(rate --mode=input --config.augment_policy=trivialaugment)
  auto=$(rate --mode=input --config.augment_policy=autoaugment)
  timm=$(rate --mode=input --config.augment_policy=randaugment_timm --config.randaugment_magnitude=7 \
    --config.randaugment_magnitude_std=0.5 --config.randaugment_increasing=True)
  base=$(rate --mode=input_baseline)
  pil=$(peer)
  python3 -c "nan = float('nan'); print(f'| $r | {$device:,.0f} | {$host:,.0f} | {$rand:,.0f} | {$trivial:,.0f} | {$auto:,.0f} | {$timm:,.0f} | {$base:,.0f} | {$pil:,.0f} | {$device/$base:.2f} | {$host/$base:.2f} | {$rand/$base:.2f} | {$trivial/$base:.2f} | {$auto/$base:.2f} | {$timm/$base:.2f} | {$timm/$pil:.2f} |')"
done
