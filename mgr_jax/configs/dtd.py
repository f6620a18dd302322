"""DTD (47 textures; partition 1: train1 + val1 / test1):
the paper's protocol (section 4.1), ResNet-18 from ImageNet weights.

Official file in data.manual_dir: dtd-r1.0.1.tar.gz (docs/datasets.md).

    python -m converters.torchvision_resnet resnet18-f37072fd.pth weights/resnet18_imagenet
    python -m mgr_jax.main --config=configs/dtd.py --workdir=runs/dtd \
        --config.data.manual_dir=data/dtd \
        --config.model.init_checkpoint=weights/resnet18_imagenet

The first run prepares the archives once into data.prepared_dir (default
data/dtd/prepared), then reads them with grain.
Subsets: --config.data.subset_fraction=0.1; real-data augmentation:
--config.data.augment=trivialaugment (randaugment, augmix).
"""

from mgr_jax.configs import paper


def get_config():
    return paper.get_config("dtd")
