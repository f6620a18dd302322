"""The generator of configs/fashion_transfer.py: configs/generator/digits.py's conditional
StyleGAN2-ADA trained on that task's D only (100 images, 20 per class of Fashion-MNIST 5-9,
16x16; never D_val or test), as the paper trains StyleGAN2-ADA on the reduced data.

    python -m mgr_jax.gan.train --config=configs/generator/fashion_transfer.py \
        --workdir=runs/fmnist_gen
The export (`<workdir>/generator`) is committed as docs/results/fmnist_transfer/weights/generator.
"""
from mgr_jax.configs import fashion_transfer
from mgr_jax.configs.generator import digits


def get_config():
    config = digits.get_config()
    task = fashion_transfer.get_config()
    config.data = task.data
    config.data.augment = "none"  # DiffAugment is the GAN's augmentation
    config.total_kimg = 100.0  # 1,000 passes over the 100 images
    config.snapshot_every_kimg = 25.0
    # The quality metrics' classifier: the task's base run (pretrained backbone, D only).
    classifier = task
    classifier.method = "base"
    config.metric.classifier = classifier
    config.metric.classifier_num_epochs = 30
    # Milestones are given for a 15-epoch schedule and scaled: (9, 18, 24) at 30 epochs.
    config.metric.classifier_lr_milestones = (4.5, 9, 12)
    config.metric.classifier_width = task.model.width
    return config
