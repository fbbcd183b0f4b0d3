"""Every configuration field, with its meaning and default. Recipes override a few of these.

Launch (any recipe; fields override with --config.FIELD=VALUE):
  python -m resnet_jax.main --config=configs/default.py --workdir=/tmp/run
"""

import ml_collections


def get_config():
  """The defaults: the paper's ImageNet ResNet-50 recipe (section 3.4)."""
  c = ml_collections.ConfigDict()

  # --- Data ---------------------------------------------------------------------------------------
  # A TFDS name ('imagenet2012', 'cifar10', 'imagenette', ...), 'folder' (data_dir/train/<class>/*
  # and data_dir/test/<class>/*), 'digits' (scikit-learn's bundled 8x8 digits, offline), 'photos'
  # (JPEG crops of scikit-learn's two bundled photos, 8 classes, offline: an ImageNet-style smoke
  # test) or 'fake' (random images, for throughput measurements only).
  c.dataset = 'imagenet2012'
  # TFDS data_dir or the folder root; local or gs://. '' = TFDS's default (~/tensorflow_datasets).
  c.data_dir = ''
  c.train_split = 'train'  # TFDS split syntax, e.g. 'train[:45000]' for CIFAR's 45k/5k protocol.
  c.eval_split = 'validation'  # e.g. 'train[45000:]' or 'test'.
  # More sets scored at every evaluation beside eval_split, with its protocol (data/eval_sets.py):
  # comma-separated NAME=[DATASET@]SPLIT, DATASET a TFDS name under data_dir (omitted: this
  # dataset) with the net's classes. ImageNet's: 'v2=imagenet_v2@test, minival=train[99%:],
  # real=imagenet2012_real@validation' (ReaL: a prediction is right when it is one of the image's
  # labels; unlabelled images left out; no loss). Logged as NAME/top1_err, NAME/top5_err, ...
  c.eval_sets = ''
  c.num_classes = 0  # 0: read from the dataset's info.
  # Datasets whose split is smaller than this are decoded once and held in host memory.
  c.in_memory_max_bytes = 2 * 1024**3
  c.shuffle_buffer = 16_384  # Only for TFDS datasets stored as TFRecord (no random access).
  c.prefetch_batches = 2  # Global batches prepared ahead of the device.
  c.num_parallel_calls = -1  # tf.data decode/augment parallelism; -1 = AUTOTUNE.
  # Comma-separated class ids ('5,6,7,8,9'): every split keeps only these classes, relabelled 0, 1,
  # ... in this order (a held-out task: pretrain on 0-4, transfer to 5-9). Reads each example's
  # label once: for small datasets with random access. '' = every class.
  c.class_subset = ''
  c.digits_test_fraction = 0.2  # 'digits': held-out fraction (stratified, fixed split seed 0).
  c.photos_num_examples = (2048, 512)  # 'photos': (training, test) crops.
  c.fake_num_examples = 1_281_167  # 'fake': training epoch size (ImageNet's by default).
  c.fake_eval_examples = 10_000  # 'fake': size of any other split.
  # 'folder': False = an unreadable image stops the run naming the file; True = such files are
  # left out at start-up and counted in the log.
  c.skip_bad_images = False

  # --- Augmentation (data/augment.py) -------------------------------------------------------------
  c.image_size = 224  # Side of the training crop / centre test crop.
  # 'scale': the paper's shorter side in scale_range, random image_size crop (ImageNet, 3.4).
  # 'inception': random-resized crop (area_range, aspect_range), modern recipes.
  # 'pad_crop': pad `pad` pixels of zeros and take a random image_size crop (CIFAR, 4.2).
  # 'none': the centre view, no randomness.
  c.train_augment = 'scale'
  c.scale_range = (256, 480)
  c.area_range = (0.08, 1.0)
  c.aspect_range = (3 / 4, 4 / 3)
  c.pad = 4
  c.random_flip = True
  c.lighting_std = 0.1  # AlexNet PCA colour noise std; 0 disables.
  # An augmentation policy on each uint8 training crop, as torchvision's and timm's transforms of
  # these names do to a PIL image (data/auto_augment.py; PIL's arithmetic): 'none'; 'randaugment'
  # (torchvision's: randaugment_ops ops, each uniform over 14, at bin randaugment_magnitude of
  # randaugment_bins); 'trivialaugment' (TrivialAugmentWide: one op at a uniform bin of 31);
  # 'autoaugment' (AutoAugment's ImageNet policy); 'randaugment_timm' (timm's RandAugment, its
  # "rand-m7-n2-mstd0.5-inc1": randaugment_ops ops, each uniform over timm's 15 with replacement
  # and applied with randaugment_op_prob, at level randaugment_magnitude of 10 plus normal noise,
  # clipped to [0, 10]; the geometric ops resample with randaugment_interpolation and fill with
  # channel_mean rounded, timm's img_mean). The draws are keyed on (seed, global position), like
  # the crop's.
  c.augment_policy = 'none'
  c.randaugment_ops = 2
  c.randaugment_magnitude = 9  # torchvision: a bin; timm: a level of 10 (timm's m)
  c.randaugment_bins = 31
  # timm's RandAugment only: the level's noise sd (timm's mstd; inf: uniform in [0, magnitude],
  # timm's mstd > 100), each op's odds (p), its "increasing" op set (inc1: every op grows
  # stronger with the level), and the geometric ops' filter: 'random' (bilinear or bicubic per
  # op, timm's train default), 'bilinear' or 'bicubic'.
  c.randaugment_magnitude_std = 0.0
  c.randaugment_op_prob = 0.5
  c.randaugment_increasing = False
  c.randaugment_interpolation = 'random'
  # Random erasing (Zhong et al. 2020; torchvision's RandomErasing, value 0): with this
  # probability a box of area share in erasing_scale and aspect in erasing_ratio (log-uniform)
  # is set to 0 in the normalised training image, after every other op. 0 disables;
  # torchvision's recipe 0.1.
  c.random_erasing = 0.0
  c.erasing_scale = (0.02, 0.33)
  c.erasing_ratio = (0.3, 3.3)
  # Repeated augmentation (Hoffer et al. 2020): each global batch holds ceil(batch_size / k)
  # examples, k times each (the last ones k - 1 times when k does not divide the batch) with their
  # own draws, the copies spread over the devices; an epoch keeps its steps (so it sees about 1 / k
  # of the examples). 1 = off; torchvision's recipe 4, "ResNet strikes back" 3.
  # Datasets with examples by index only (not TFRecord-only TFDS datasets).
  c.repeated_augmentation = 1
  # Where the training images' per-pixel operations run: PCA lighting, normalization, pad_crop's
  # padding and offset, the flip. 'device': tf.data sends each resized crop rounded to uint8 (a
  # quarter of float32's bytes) with what the example drew, and the train step applies them (XLA
  # fuses them into one pass; data/device_pixels.py). 'host': tf.data applies them and sends float32
  # (the same images but for that rounding: at most 0.5 of 255 before normalisation).
  c.pixel_ops = 'device'
  # 'pixel_mean': subtract the per-pixel mean image of the training split (the paper).
  # 'channel_mean_std': (x - channel_mean) / channel_std (torchvision's pretrained weights).
  c.normalization = 'pixel_mean'
  c.channel_mean = (0.485 * 255, 0.456 * 255, 0.406 * 255)
  c.channel_std = (0.229 * 255, 0.224 * 255, 0.225 * 255)
  # '': <data_dir>/mean_images/<dataset>_<split>_<sizes>_<count>_<content key>.npz. A cache is
  # used only if its stored key matches the data it would normalise (else recomputed).
  c.mean_image_path = ''
  c.mean_image_examples = 50_000  # Training images averaged for the mean image; 0 = all.

  # --- Evaluation views ---------------------------------------------------------------------------
  # 'center': shorter side eval_resize, central image_size crop. '10crop': 4 corners + centre and
  # their flips, softmax averaged. 'multiscale': the whole image at each of multiscale_sizes
  # (shorter side) and its flip, fully-convolutional scores averaged (data/multiscale.py).
  c.eval_mode = 'center'
  c.eval_resize = 256
  # The test crop's side (center, 10crop); 0 = image_size. torchvision's V2 recipe trains at 176
  # and tests 224 crops of 232 (train-test resolution discrepancy, Touvron et al. 2019).
  c.eval_image_size = 0
  c.multiscale_sizes = (224, 256, 384, 480, 640)
  # Aspect-ratio buckets (longer / shorter side) for multiscale: an image's longer side is
  # centre-cropped to the largest bucket not above its ratio, so images of one bucket share a
  # shape and batch together without padding. Ratios listed here are seen whole (square, 4:3,
  # 3:2 cover most of ImageNet); each bucket and orientation compiles one eval step.
  c.multiscale_aspects = (1.0, 1.125, 1.25, 4 / 3, 1.5)
  c.eval_batch_size = 0  # 0: batch_size. Lower it for multiscale (large whole images).

  # --- Model (models/registry.py, models/resnet.py) ----------------------------------------------
  # A name of models/registry.py: resnet18..200, plain*, resnext*, wide_resnet*, resnet50c/d,
  # preact_resnet18..200, cifar_resnet<6n+2>, cifar_plain<6n+2>, cifar_preact_resnet<6n+2, or
  # 9n+2 from 164 with the bottleneck: 164, 1001>; and the paper's comparison nets (torchvision's
  # models/baselines.py): vgg11, vgg13, vgg16, vgg19, vgg11_bn..vgg19_bn, alexnet, googlenet;
  # timm's attention nets seresnet18..152, ecaresnet50d, ecaresnet101d (`python -m
  # resnet_jax.summary --list` prints them all). Or a net of your own, 'package.module:function'
  # (a function returning its constructor arguments; models/registry.py), imported from the
  # working directory or PYTHONPATH. The ResNet fields below do not apply to the comparison nets:
  # set away from their defaults, they are refused.
  c.model = 'resnet50'
  c.shortcut = ''  # '' = the model's default (B for ImageNet nets, A for CIFAR); or 'A', 'B', 'C'.
  c.stride_in_1x1 = False  # True: the paper's original bottleneck (stride on the first 1x1).
  c.zero_init_residual = False
  # torchvision's ResNet arguments for bottleneck nets (resnet50 and deeper): the 3x3 in `groups`
  # channel groups, inner width int(planes * width_per_group / 64) * groups. 0 = the model's own
  # (1 and 64; resnext50_32x4d: 32 and 4; wide_resnet50_2: 1 and 128).
  c.groups = 0
  c.width_per_group = 0
  # For stages 2, 3, 4: True keeps the stage's resolution and dilates its 3x3s instead of striding
  # (output stride 16 with (False, False, True), 8 with (False, True, True)); bottleneck nets.
  c.replace_stride_with_dilation = (False, False, False)
  # Normalisation layers (models/norms.py): 'batch' (BatchNorm); 'group' (GroupNorm, Wu & He 2018:
  # per-example statistics over channel groups, for small per-device batches); 'frozen_batch'
  # (torchvision's FrozenBatchNorm2d: scale, bias and statistics stay as init_from loaded them,
  # untouched by the optimiser; for fine-tuning). bn_momentum concerns BatchNorm only, bn_epsilon
  # every norm.
  c.norm = 'batch'
  c.norm_groups = 32  # GroupNorm's groups (torch's num_groups); must divide every norm's channels.
  # Bag of Tricks (He et al. 2019) for ImageNet nets; resnet50c and resnet50d are named with them.
  # ResNet-C's deep stem: three 3x3 convs (stride 2, then 1, 1) of stem_width, stem_width and 64
  # filters replace the 7x7. ResNet-D's shortcut: a projection averages 2x2 windows, then a 1x1
  # at stride 1. False keeps the model's own.
  c.deep_stem = False
  c.stem_width = 0  # 0 = 32 (timm's); needs the deep stem.
  c.avg_down = False
  # Channel attention in every block, after its last norm, before the addition (timm's
  # attn_layer): 'se' (squeeze-and-excitation, Hu et al. 2018: 1/16 of the channels, rounded to
  # a multiple of 8) or 'eca' (efficient channel attention, Wang et al. 2020: a 1-D conv across
  # the channel means). '' = the model's own (seresnet*: 'se'; ecaresnet*: 'eca'; else none). Not
  # in pre-activation nets.
  c.attention = ''
  # Stochastic depth (Huang et al. 2016; timm's drop_path_rate, "ResNet strikes back" uses 0.05):
  # in training each example drops each block's residual branch with a rate linear in the block's
  # depth, 0 for the first block to this for the last; the kept branch is scaled by 1 / (1 - rate).
  # The draws are keyed on (seed, step, row of the global batch): the same on any number of
  # processes and after a resume. Residual nets only.
  c.drop_path_rate = 0.0
  # The classifier dropout of vgg*, alexnet and googlenet, keyed like stochastic depth. -1 = the
  # net's own (torchvision's: 0.5 VGG and AlexNet, 0.2 GoogLeNet). ResNets have none (their head
  # is a global average pool and one linear layer).
  c.dropout = -1.0
  # GoogLeNet's two auxiliary classifiers (after inception 4a and 4d, training only): the weight
  # of their losses beside the main one (the GoogLeNet paper's 0.3); 0 builds the net without
  # them (torchvision's aux_logits=False). transform_input: torchvision's rescaling of
  # ImageNet-normalised images to the (x - 0.5) / 0.5 its released googlenet weights expect.
  c.aux_loss_weight = 0.3
  c.transform_input = False
  # Compile each stage's identical blocks once (nn.scan): ResNet-152 compiles about as fast as
  # ResNet-50. Same numbers for the same weights; variables stacked under layer{i}_scan, converted
  # to and from the per-block layout on restore and init_from. Costs step time on a GPU (0.62-0.68x
  # on an H100, PERFORMANCE.md); on the CPU the step is as fast or faster.
  c.scan_blocks = False
  # Who runs float32 convolutions' gradients (and grouped ones' forward pass) on a CPU: 'auto' =
  # oneDNN's direct kernels (cpu/onednn.py, built on first use; needs libdnnl-dev and a C++
  # compiler) where they build, else XLA's; 'onednn' = oneDNN or an error; 'xla' = XLA's (what
  # jax.jvp and jax.export of a CPU program need). Ungrouped forward values are XLA's either way,
  # the rest equal to float32 rounding; up to 1.23x faster CPU train steps, ResNeXt's several
  # times (PERFORMANCE.md).
  c.cpu_convolution = 'auto'
  # The project's own C++ kernels for float32 steps on a CPU (cpu/native.py, built on first use;
  # need a C++ compiler with OpenMP): training BatchNorm's per-channel sums in one read of the
  # activations, and the ImageNet stem's max pool. 'auto' = those kernels where they build, else
  # XLA's lowering; 'native' = those kernels or an error; 'xla' = XLA's (what jax.export of a CPU
  # program needs). Equal to float32 rounding (pool values exactly); CPU train steps 1.1-1.3x
  # faster (PERFORMANCE.md).
  c.cpu_kernels = 'auto'
  # Who runs augment_policy's ops in the input pipeline: 'auto' = one C++ TensorFlow op per
  # example (data/policy_kernel.py, built on first use with a C++ compiler) where it builds, else
  # TensorFlow graphs of the same ops; 'native' = the C++ op or an error; 'tensorflow' = the
  # graphs. Both PIL's pixels exactly; the op 2-4x faster (PERFORMANCE.md).
  c.policy_kernel = 'auto'
  # XLA's persistent compilation cache (a local or gs:// directory): a run restarted after
  # preemption, or evaluated again, loads its compiled steps instead of compiling them. '' = off.
  c.compilation_cache_dir = ''
  c.bn_momentum = 0.9  # Weight of the old running average (torch's momentum 0.1).
  c.bn_epsilon = 0.0  # 0 = the net's own: 1e-5 (torchvision's ResNets and VGGs), 1e-3 GoogLeNet.
  # Devices whose batches share BatchNorm statistics: 1 = per device (the paper's 32 images per
  # GPU), 0 = all devices, k = groups of k consecutive devices.
  c.bn_group_size = 1
  c.half_precision = False  # Compute in half_dtype; params, BN statistics, logits stay float32.
  c.half_dtype = 'bfloat16'  # 'bfloat16' (TPU, Ampere+) or 'float16' (dynamic loss scaling).
  c.init_from = ''  # A workdir or a converted checkpoint (resnet_jax.convert) to start from.
  c.init_from_ema = False  # True: start from the workdir's averaged weights (its ema_decay > 0).
  # Comma-separated parameter path prefixes that init_from may leave freshly initialised (e.g.
  # 'fc,layer4'); every other tensor must load. '' = only the classifier head ('fc'), and only
  # when its class count differs.
  c.init_from_skip = ''
  # Fine-tuning (models/param_groups.py). Tensors are named by their path ('layer1_0/conv1/kernel',
  # 'fc/bias'; `python -m resnet_jax.summary MODEL` lists the layers); a PATTERN is a regular
  # expression matched at the start of a name: 'layer1' is stage 1, 'layer3_1/' one block,
  # 'conv1,bn1' the stem, 'fc' the head; under scan_blocks the stacked blocks are matched by their
  # per-block names.
  # freeze: comma-separated patterns of tensors that are not trained (no update, no optimiser
  # state, no gradient computed); 'backbone' = every tensor but the head's (a linear probe).
  # A pattern that names no tensor is an error.
  c.freeze = ''
  # True: a BatchNorm whose scale and bias are frozen normalises by its running statistics in
  # training too and keeps them (timm's freeze); False: batch statistics, updated as usual.
  c.freeze_bn_stats = True
  # Learning-rate multipliers: comma-separated PATTERN=MULT, the first match wins, the rest 1
  # (big_vision's lr_mults); e.g. 'fc=10' or 'layer1=0.1,layer2=0.3'. 0 stops a tensor's updates
  # but keeps its optimiser state (freeze drops it).
  c.lr_mults = ''
  # > 0: layer-wise learning-rate decay (timm's --layer-decay, BEiT's): the stem is layer 0, each
  # residual block the next (VGG/AlexNet: each features_k), the head the last, L in all; layer i
  # learns at layer_decay ** (L - 1 - i) times the rate (times its lr_mults); 0 = off.
  c.layer_decay = 0.0
  # The few-shot linear probe (train/fewshot.py, `python -m resnet_jax.evaluate --fewshot`;
  # big_vision's fewshot_lsr): ridge regression with this L2 strength (big_vision's 2^10) on the
  # pre-logit features of k examples per class of fewshot_train_split (k in fewshot_shots, drawn
  # with seeds 0 .. fewshot_seeds - 1), top-1 accuracy on fewshot_test_split. '' = train_split /
  # eval_split.
  c.fewshot_shots = (1, 5, 10)
  c.fewshot_seeds = 3
  c.fewshot_l2_reg = 1024.0
  c.fewshot_train_split = ''
  c.fewshot_test_split = ''
  # True: every evaluation (of training, and of `evaluate`) runs the probe too; its accuracies
  # (fewshot_{k}shot: the mean over seeds, and each seed's) join the eval record.
  c.fewshot_in_evaluations = False
  # The classifier's initial weights and bias times this as a run starts (after init_from; not on
  # resume): timm's --head-init-scale; 0 is BiT's zero head.
  c.head_init_scale = 1.0
  # configs/recipes/bit_hyperrule.py: the training examples its schedule was picked for; a training
  # split of another size class (< 20k, < 500k, more) is refused at start. 0 = no check.
  c.hyperrule_train_examples = 0

  # --- Optimisation (train/optim.py) --------------------------------------------------------------
  c.batch_size = 256  # Global, over all devices of all processes.
  c.num_epochs = 120.0
  c.num_train_steps = -1  # > 0 wins over num_epochs.
  c.learning_rate = 0.1  # At batch lr_reference_batch; scaled linearly with batch_size.
  c.lr_reference_batch = 256
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 1e-4
  c.weight_decay_bn_and_bias = False  # False: decay conv/dense kernels only.
  c.label_smoothing = 0.0
  # 'sgd' (the paper's; torch's SGD), 'lars' (You et al. 2017: large batches, MLPerf's ResNet-50),
  # 'lamb' (You et al. 2020: "ResNet strikes back") or 'adamw' (torch's AdamW: decoupled weight
  # decay; timm's fine-tuning optimiser), as optax's transforms (train/optim.py).
  # momentum and nesterov are SGD's and LARS's; adam_betas and adam_eps LAMB's and AdamW's.
  c.optimizer = 'sgd'
  c.adam_betas = (0.9, 0.999)
  c.adam_eps = 0.0  # 0: the optimiser's own, timm's Lamb 1e-6, torch's AdamW 1e-8.
  c.lars_trust_coefficient = 0.001
  # False: LARS's and LAMB's layer-wise trust ratio scales conv/dense kernels only; norm scales,
  # shifts and biases take the plain update (timm's and the LARS paper's exclusion).
  c.trust_ratio_bn_and_bias = False
  # > 0: every step's gradients scaled down to at most this global L2 norm (over all tensors)
  # before the optimiser; 0 = off. timm's LAMB clips at 1.0 ("ResNet strikes back").
  c.grad_clip_norm = 0.0
  # Each step's rows as k micro-batches run in turn, their gradients averaged: batch_size images
  # per update with the activation memory of batch_size / k. BatchNorm normalises each
  # micro-batch by its own statistics and updates its running averages once per micro-batch.
  c.grad_accum_steps = 1
  # 'softmax': softmax cross-entropy. 'bce': binary cross-entropy per class, averaged over classes
  # (timm's BinaryCrossEntropy, "ResNet strikes back"); with bce_target_threshold > 0 a (mixed,
  # smoothed) target above it counts as 1, the rest as 0.
  c.loss = 'softmax'
  c.bce_target_threshold = 0.0
  # Mixup and CutMix on the devices over the global batch (data/batch_mixing.py): each step draws
  # once, from (seed, step), whether to mix (mix_prob), which (both alphas > 0: CutMix with
  # mix_switch_prob, torchvision's RandomChoice is 0.5), and Beta(alpha, alpha)'s ratio; each row
  # is mixed with the row before it in the global batch, targets alike. 0 disables either.
  # torchvision's recipe: 0.2 and 1.0; "ResNet strikes back": A1 0.2 and 1.0, A2 and A3 0.1 and 1.0.
  c.mixup_alpha = 0.0
  c.cutmix_alpha = 0.0
  c.mix_prob = 1.0
  c.mix_switch_prob = 0.5
  # A moving average of the weights and BN statistics (train/ema.py), updated every ema_every
  # steps with this decay; 0 = off. Evaluations score the raw and the averaged weights (ema_*
  # fields of metrics.jsonl). ema_warmup: the decay of update n is min(ema_decay,
  # 1 - (1 + n)^(-2/3)) (timm's ModelEmaV3). torchvision's recipe: every 32 steps, decay 0.99998
  # adjusted to 1 - (1 - 0.99998) * batch_size * 32 / epochs.
  c.ema_decay = 0.0
  c.ema_every = 1
  c.ema_warmup = False
  # 'step': x lr_decay_factor at each of lr_boundaries. 'plateau': x lr_decay_factor when the
  # plateau_metric of evaluation has not improved by plateau_min_delta for plateau_patience
  # evaluations (then plateau_cooldown evaluations of rest; never below plateau_min_lr).
  # 'cosine': cosine decay to 0 over the run. 'poly': (1 - t / T) ** poly_power to 0 (MLPerf's
  # LARS). Both decay over the steps after the warm-up.
  c.schedule = 'plateau'
  c.poly_power = 2.0
  c.lr_boundaries = (30.0, 60.0, 90.0)
  c.lr_boundaries_unit = 'epochs'  # 'epochs' or 'steps'.
  c.lr_decay_factor = 0.1
  c.plateau_metric = 'top1_err'  # Or 'top5_err', 'loss', or their ema_ forms (ema_decay > 0).
  c.plateau_patience = 3
  c.plateau_min_delta = 1e-3
  c.plateau_cooldown = 0
  c.plateau_min_lr = 1e-5
  c.warmup_epochs = 0.0  # Linear warmup (Goyal et al.); counted in epochs.
  c.warmup_steps = 0  # The warm-up counted in steps instead (BiT-HyperRule's 100 or 500); 0 = off.
  # Where the warm-up starts, as a fraction of the peak: 0 (Goyal et al.), 0.01 (torchvision's
  # --lr-warmup-decay 0.01).
  c.warmup_start_factor = 0.0
  # > 0: run at warmup_lr_factor x lr until the training error, averaged over windows of
  # warmup_error_window steps, falls below this (the paper's ResNet-110 start: 0.01 until training
  # error < 80%, "about 400 iterations"). Checked on the devices every step, not at log_every.
  c.warmup_until_train_error = 0.0
  c.warmup_lr_factor = 0.1
  c.warmup_error_window = 20

  # --- Parallelism (train/parallel.py) ------------------------------------------------------------
  c.parallelism = 'shard_map'  # 'shard_map' (jit over a global mesh) or 'pmap'.

  # --- Loop, logging, checkpoints -----------------------------------------------------------------
  # The published recipe this config follows (configs/recipes/): resnet_jax.report sets its
  # published number (configs/experiments/paper.py) beside the run's. '' = the model's paper number.
  c.recipe = ''
  c.seed = 0
  c.log_every = 100  # Steps between progress lines / metrics records.
  c.eval_every = -1  # Steps between evaluations; -1 = once per epoch.
  c.checkpoint_every = 1000  # Steps between checkpoints (and always at the end and on SIGTERM).
  c.keep_checkpoints = 3  # Latest checkpoints kept...
  c.keep_best = 1  # ...plus this many best by best_metric.
  # What ranks the best checkpoints: the eval's 'top1_err', or 'ema_top1_err' (the averaged
  # weights' error; needs ema_decay > 0).
  c.best_metric = 'top1_err'
  c.async_checkpoints = True
  # A step whose loss (or, but under float16 loss scaling, gradients) is not finite is never
  # applied, so no checkpoint holds NaNs. 'stop': the first one ends the run with one line (step,
  # learning rate, the last checkpoint), exit code 3, and nothing after the last finite step is
  # saved. 'skip': its batch is consumed without an update and the run goes on, until
  # nonfinite_skip_limit such steps in a row stop it as 'stop' does.
  c.on_nonfinite = 'stop'
  c.nonfinite_skip_limit = 10
  # Steps the host may dispatch ahead of the devices (JAX is asynchronous). Bounds the batches
  # held on the devices and the delay between SIGTERM and its checkpoint; 2 keeps them busy.
  c.steps_in_flight = 2
  # One run per workdir (WORKDIR/run.lock, train/workdir_lock.py): a lock from another host
  # counts as abandoned once its heartbeat is older than lock_stale_seconds.
  c.lock_stale_seconds = 120.0
  c.lock_heartbeat_seconds = 30.0
  # Multi-process jobs (jax.distributed): a process silent this long counts as dead and the others
  # fail rather than wait forever (on the CPU's gloo collectives a dead peer is seen at once);
  # how long processes wait for each other when the job ends.
  c.distributed_heartbeat_seconds = 60
  c.distributed_shutdown_seconds = 120
  return c
