"""CUB-200-2011 Birds (200 species; official train / test):
the paper's protocol (section 4.1), ResNet-18 from ImageNet weights.

Official file in data.manual_dir: CUB_200_2011.tgz (docs/datasets.md).

    python -m converters.torchvision_resnet resnet18-f37072fd.pth weights/resnet18_imagenet
    python -m mgr_jax.main --config=configs/birds.py --workdir=runs/birds \
        --config.data.manual_dir=data/birds \
        --config.model.init_checkpoint=weights/resnet18_imagenet

The first run prepares the archives once into data.prepared_dir (default
data/birds/prepared), then reads them with grain.
Subsets: --config.data.subset_fraction=0.1; real-data augmentation:
--config.data.augment=trivialaugment (randaugment, augmix).
"""

from mgr_jax.configs import paper


def get_config():
    return paper.get_config("birds")
