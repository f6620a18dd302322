"""Oxford-IIIT Pets (37 breeds; trainval / test):
the paper's protocol (section 4.1), ResNet-18 from ImageNet weights.

Official files in data.manual_dir: images.tar.gz, annotations.tar.gz (docs/datasets.md).

    python -m converters.torchvision_resnet resnet18-f37072fd.pth weights/resnet18_imagenet
    python -m mgr_jax.main --config=configs/pets.py --workdir=runs/pets \
        --config.data.manual_dir=data/pets \
        --config.model.init_checkpoint=weights/resnet18_imagenet

The first run prepares the archives once into data.prepared_dir (default
data/pets/prepared), then reads them with grain.
Subsets: --config.data.subset_fraction=0.1; real-data augmentation:
--config.data.augment=trivialaugment (randaugment, augmix).
"""

from mgr_jax.configs import paper


def get_config():
    return paper.get_config("pets")
