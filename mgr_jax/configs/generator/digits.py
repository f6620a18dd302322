"""A small conditional StyleGAN2-ADA for the embedded digits dataset, trained in JAX.

    python -m mgr_jax.gan.train --config=configs/generator/digits.py --workdir=runs/gen

Trains on D only (the training part of the protocol split of configs/default.py; never D_val or
test), on the images exactly as the classifier sees them: 16x16 RGB, mapped from [0, 1] to G's
[-1, 1]. The shipped generator `mgr_jax/assets/digits_stylegan2/` was made with this file
(docs/generator_training.md; the metric classifier's milestones, the default config's, were
written out here later, unchanged). Fields follow the official StyleGAN2-ADA names where one exists.
"""
import ml_collections

from mgr_jax.configs import default


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0  # initialisation, latents, noise, augmentation and data order
    # Length of training in thousands of real images shown (the official unit).
    config.total_kimg = 250.0
    config.batch_size = 32
    # Batch of the metric classifier's evaluation passes.
    config.eval_batch_size = 256

    # The dataset and its split exactly as configs/default.py has them (D = the training part).
    config.data = default.get_config().data
    config.data.augment = "none"  # GAN augmentation is DiffAugment below, not real_augment

    # G: the models.stylegan2.Generator fields; c_dim comes from the dataset.
    config.generator = ml_collections.ConfigDict()
    config.generator.z_dim = 64
    config.generator.w_dim = 64
    config.generator.mapping_layers = 2
    config.generator.resolution = 16  # = data.image_size
    config.generator.img_channels = 3
    # Channels at resolution r: min(channel_base / r, channel_max): 64, 32, 16 at 4, 8, 16.
    config.generator.channel_base = 256
    config.generator.channel_max = 64
    config.generator.architecture = "skip"
    config.generator.conv_clamp = 0.0  # 0: no clamp (float32 throughout)

    # D: models.stylegan2.discriminator.Discriminator.
    config.discriminator = ml_collections.ConfigDict()
    config.discriminator.architecture = "resnet"
    config.discriminator.channel_base = 256
    config.discriminator.channel_max = 64
    config.discriminator.cmap_dim = 0  # 0: the channels at 4x4 (official default)
    config.discriminator.mapping_layers = 8  # official D mapping depth
    config.discriminator.mbstd_group_size = 4
    config.discriminator.mbstd_num_channels = 1
    config.discriminator.conv_clamp = 0.0

    # Adam of both networks (official: lr 0.0025, betas (0, 0.99), eps 1e-8).
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.g_lr = 0.0025
    config.optimizer.d_lr = 0.0025
    config.optimizer.betas = (0.0, 0.99)
    config.optimizer.eps = 1e-8

    config.loss = ml_collections.ConfigDict()
    # R1 weight; the official 'auto' rule 0.0002 * res^2 / batch gives 0.0016 here.
    config.loss.r1_gamma = 0.01
    config.loss.r1_interval = 16  # lazy R1 every 16 iterations
    config.loss.style_mixing_prob = 0.9
    # Path-length regularisation: off at this resolution (official: weight 2, interval 4).
    # G's Adam gets the lazy-regularisation correction only when it is on (the official
    # loop applies it even at weight 0).
    config.loss.pl_weight = 0.0
    config.loss.pl_interval = 4
    config.loss.pl_batch_shrink = 2
    config.loss.pl_decay = 0.01

    # G_ema half-life in kimg, and its ramp-up (official 'auto': batch * 10 / 32, 0.05).
    config.ema_kimg = config.batch_size * 10 / 32
    config.ema_rampup = 0.05

    # DiffAugment of everything D sees: ops from color, translation, cutout ("" = none).
    config.augment = ml_collections.ConfigDict()
    config.augment.policy = "color,translation,cutout"
    config.augment.translation_ratio = 0.125
    config.augment.cutout_ratio = 0.5

    # Progress line every log_every_kimg; checkpoint, sample grid and metrics every
    # snapshot_every_kimg (and at the end).
    config.log_every_kimg = 1.0
    config.snapshot_every_kimg = 25.0

    # Quality metrics per snapshot, in the feature space of a classifier trained on D with the
    # base default config (trained once into metric.classifier_dir and reused).
    config.metric = ml_collections.ConfigDict()
    config.metric.enabled = True
    # The classifier's full config (the data split and the fields below are set from this file).
    config.metric.classifier = default.get_config()
    config.metric.classifier_dir = ""  # "" = <workdir>/metric_classifier
    # Its schedule: 15 epochs, lr decayed at epochs 6, 9 and 11 (configs/default.py's
    # milestones; its own run is 12 epochs). Another classifier_num_epochs scales them.
    config.metric.classifier_num_epochs = 15
    config.metric.classifier_lr_milestones = (6, 9, 11)
    config.metric.classifier_width = 0.25
    config.metric.num_samples = 1000  # generated samples (classes uniform, fixed seed)

    # Sample grid: one row per class, `cols` fixed latents, nearest upscaling by `zoom`.
    config.samples = ml_collections.ConfigDict()
    config.samples.cols = 10
    config.samples.zoom = 4
    return config
