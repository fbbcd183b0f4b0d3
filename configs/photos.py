"""The ImageNet recipe, scaled to 32 px, on JPEG crops of scikit-learn's two bundled photos.

An offline smoke run of the whole ImageNet data path: the paper's scale augmentation (shorter
side in [256, 480] / 224 x 32 = [37, 69]), PCA colour noise and per-pixel mean on real JPEGs
decoded window-only; then centre, 10-crop and multi-scale testing (sizes 224..640 / 224 x 32) of
the same checkpoint. The task (which photo, which quadrant of it) checks the pipeline end to end,
not the paper's numbers.

Hardware: a 2-core CPU; about 2 minutes to train, 1 to evaluate each protocol.

  python -m resnet_jax.main --config=configs/photos.py --workdir=/tmp/photos
  python -m resnet_jax.evaluate --config=configs/photos.py --workdir=/tmp/photos \\
    --config.eval_mode=multiscale
"""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset = 'photos'
  c.train_split, c.eval_split = 'train', 'test'
  # The CIFAR ResNet-20 (stride 4): at 32 px an ImageNet net's last feature map is 1x1, and
  # whole-image testing at larger sizes would meet maps it never trained on.
  c.model = 'cifar_resnet20'
  c.photos_num_examples = (1024, 256)
  c.image_size = 32
  c.eval_resize = 37
  c.scale_range = (37, 69)
  c.multiscale_sizes = (32, 37, 55, 69, 91)
  c.mean_image_examples = 0  # all training images
  c.batch_size = 64
  c.learning_rate = 0.1
  c.lr_reference_batch = 256
  c.num_epochs = 12
  c.schedule = 'cosine'
  c.warmup_epochs = 1
  c.log_every = 8
  c.eval_every = 32
  c.checkpoint_every = 64
  return c
