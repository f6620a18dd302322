"""Stanford Cars with the paper's protocol (section 4.1): ResNet-18 from ImageNet weights.

    python -m converters.torchvision_resnet resnet18-f37072fd.pth weights/resnet18_imagenet
    python -m mgr_jax.main --config=configs/cars.py --workdir=runs/cars \
        --config.data.manual_dir=/data/cars --config.model.init_checkpoint=weights/resnet18_imagenet

Subsets of Table 1b: `--config.data.subset_fraction=0.1` (0.25, 0.5, 0.75).
"""
from configs import default


def get_config():
    config = default.get_config()
    config.num_epochs = 200
    config.batch_size = 64
    config.synthetic_batch_size = 64
    config.eval_batch_size = 128
    config.optimizer.lr = 0.01
    config.optimizer.lr_milestones = (60, 120, 160)
    config.data.name = "cars"
    config.data.image_size = 224
    config.data.manual_dir = "data/cars"
    config.model.arch = "resnet18"
    config.model.width = 1.0
    config.model.cifar_stem = False
    config.model.init_checkpoint = "weights/resnet18_imagenet"
    config.log_every_steps = 20
    return config
