"""The peer of our RandAugment pipeline: timm's own PIL transforms on the benchmark's JPEGs.

Per image, what timm's training loader does to it with ``--aa rand-m7-mstd0.5-inc1`` ("ResNet
strikes back"'s): decode with PIL, torchvision's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3,
bilinear) to 224 px, a horizontal flip with odds 1/2, timm's RandAugment (``rand_augment_transform``
with the hparams ``transforms_factory`` gives it: translate_const 0.45 of the size, ImageNet's mean
as the fill, filters drawn from bilinear and bicubic), and the uint8 array (where our pipeline
ends with ``pixel_ops=device``). The crop is written out here from torchvision's rule, as
torchvision needs torch; timm's ``auto_augment.py`` imports only PIL and numpy, so it is loaded
from the installed timm package by path without importing timm (and torch):

  pip install --no-deps timm==1.0.31
  taskset -c 0 python benchmarks/timm_pil_loader.py --images=512 [--workers=1]

Prints one JSON line: images_per_sec over the timed images (the first 16 per worker untimed).
"""

import argparse
import importlib.util
import json
import math
import multiprocessing
import pathlib
import random
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from resnet_jax import benchmark  # write_benchmark_jpegs: the same JPEGs as ours

WARMUP = 16


def timm_auto_augment():
  """timm's data/auto_augment.py as a module, without running timm's package __init__."""
  spec = importlib.util.find_spec('timm')
  if spec is None:
    sys.exit('timm is not installed: pip install --no-deps timm==1.0.31')
  path = pathlib.Path(spec.origin).parent / 'data' / 'auto_augment.py'
  module_spec = importlib.util.spec_from_file_location('timm_auto_augment', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def random_resized_crop(image, size, rng):
  """torchvision's RandomResizedCrop on a PIL image: its get_params, then resize (bilinear)."""
  width, height = image.size
  area = width * height
  log_ratio = (math.log(3 / 4), math.log(4 / 3))
  for _ in range(10):
    target = area * rng.uniform(0.08, 1.0)
    ratio = math.exp(rng.uniform(*log_ratio))
    w = round(math.sqrt(target * ratio))
    h = round(math.sqrt(target / ratio))
    if 0 < w <= width and 0 < h <= height:
      top, left = rng.randint(0, height - h), rng.randint(0, width - w)
      break
  else:  # the central crop, its ratio clipped to [3/4, 4/3]
    w, h = width, height
    if width / height < 3 / 4:
      h = round(width / (3 / 4))
    elif width / height > 4 / 3:
      w = round(height * (4 / 3))
    top, left = (height - h) // 2, (width - w) // 2
  return image.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)


def run(paths, size, seed):
  """Images/s of one worker over ``paths`` (after WARMUP untimed images)."""
  aa = timm_auto_augment()
  mean = tuple(min(255, round(255 * x)) for x in (0.485, 0.456, 0.406))
  policy = aa.rand_augment_transform(
    'rand-m7-mstd0.5-inc1', {'translate_const': int(size * 0.45), 'img_mean': mean}
  )
  rng = random.Random(seed)
  random.seed(seed)  # timm's ops draw from the random module

  def one(path):
    with Image.open(path) as f:
      image = f.convert('RGB')
    image = random_resized_crop(image, size, rng)
    if rng.random() < 0.5:
      image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(policy(image), np.uint8)

  for path in paths[:WARMUP]:
    one(path)
  start = time.perf_counter()
  for path in paths[WARMUP:]:
    one(path)
  return (len(paths) - WARMUP) / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=512, help='per worker, warm-up included')
  parser.add_argument('--workers', type=int, default=1, help='processes (DataLoader workers)')
  parser.add_argument('--image-size', type=int, default=224)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    benchmark.write_benchmark_jpegs(tmp, count=256)
    files = sorted((pathlib.Path(tmp) / 'train' / 'photos').glob('*.jpg'))
    paths = [str(files[i % len(files)]) for i in range(args.images)]
    jobs = [(paths, args.image_size, seed) for seed in range(args.workers)]
    if args.workers == 1:
      rates = [run(*jobs[0])]
    else:
      with multiprocessing.Pool(args.workers) as pool:
        rates = pool.starmap(run, jobs)
  print(json.dumps({'images_per_sec': sum(rates), 'workers': args.workers}))


if __name__ == '__main__':
  main()
