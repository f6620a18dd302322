"""Stanford Cars with the paper's protocol (section 4.1): ResNet-18 from ImageNet weights.

    python -m converters.torchvision_resnet resnet18-f37072fd.pth weights/resnet18_imagenet
    python -m mgr_jax.main --config=configs/cars.py --workdir=runs/cars \
        --config.data.manual_dir=/data/cars --config.model.init_checkpoint=weights/resnet18_imagenet

Subsets of Table 1b: `--config.data.subset_fraction=0.1` (0.25, 0.5, 0.75).
"""

from mgr_jax.configs import paper


def get_config():
    return paper.get_config("cars")
