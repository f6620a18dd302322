"""Your own images:
the paper's protocol (section 4.1), ResNet-18 from ImageNet weights.

data.manual_dir holds one folder of images per class (<class>/*.jpg|png), or
train/<class>/... and test/<class>/... for an official test split. Without those,
data.test_fraction (20 %) of each class, drawn with data.split_seed, is the test split;
D / D_val = 9:1 of the rest as for the paper datasets. No preparing step.

    python -m converters.torchvision_resnet resnet18-f37072fd.pth weights/resnet18_imagenet
    python -m mgr_jax.main --config=configs/imagefolder.py --workdir=runs/imagefolder \
        --config.data.manual_dir=data/imagefolder \
        --config.model.init_checkpoint=weights/resnet18_imagenet

Files are read in place.
Subsets: --config.data.subset_fraction=0.1; real-data augmentation:
--config.data.augment=trivialaugment (randaugment, augmix).
"""

from mgr_jax.configs import paper


def get_config():
    return paper.get_config("imagefolder")
